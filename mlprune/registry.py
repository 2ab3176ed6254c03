"""Registries that dispatch: one entry per method, strategy, model, dataset, step kind.

An entry carries what callers need to know about one choice (structured or
not, which options it takes, whether it needs data or gradients...) and where
its implementation is (``impl="module:attribute"``, imported on first use).
Planning and validation read entries without importing torch; the executor
calls ``entry.load()``. Adding a method is adding one entry (and its function);
nothing else in the package names it.

Registries are open: entries of the same kinds come from other packages through
Python entry points (``group``: ``mlprune.models``, ``mlprune.datasets``,
``mlprune.methods``, ``mlprune.reinit``) or from ``mlprune.register`` in a user's
module (`plugins`: their code's identity, keys, tags; docs/plugins.md). Entry
points are listed once per process (their names only, checked against the
built-ins) and a plugin's module is imported when its name is first used.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from .errors import SpecError, choice_error
from .plugins import (
    KEYED_BY,
    Plugin,
    code_paths,
    described,
    dist_name,
    distribution_of,
    entry_points_of,
    first_line,
    import_remembered_modules,
    load_impl,
    remember_module,
)

__all__ = ["Registry", "load_impl"]  # load_impl: where code is found (plugins), imported from here

E = TypeVar("E")


class Registry(Mapping, Generic[E]):
    """Entries by name; an unknown name is a one-line SpecError listing the known ones.

    ``group``: the entry-point group whose plugins it takes (`GROUPS`); their names are listed
    (and checked against the built-ins) on first use, their modules imported when a name is used.
    """

    def __init__(self, what: str, extra_names: tuple[str, ...] = (), group: str | None = None):
        self.what = what
        self.extra_names = extra_names  # described names that are not entries (e.g. "tv:<name>")
        self.group = group
        self._entries: dict[str, E] = {}
        self._plugins: dict[str, Plugin] = {}
        self._points: dict | None = None  # entry points of `group` by name, found once

    def add(self, entry: E) -> E:
        name = entry.name
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    # ---- plugins ----
    def _entry_points(self) -> dict:
        if self._points is None and self.group:
            points: dict = {}
            for point in entry_points_of(self.group):
                other = points.get(point.name)
                if other is not None and dist_name(other) != dist_name(point):
                    raise SpecError(
                        f"two plugins define {self.what} {point.name!r}: {described(other)} and "
                        f"{described(point)}; uninstall one"
                    )
                if point.name in self._entries:
                    raise SpecError(
                        f"{self.what} plugin {point.name!r} ({described(point)}) shadows the built-in "
                        f"{self.what} {point.name!r} ({getattr(self._entries[point.name], 'impl', '')}); "
                        f"rename the plugin"
                    )
                points[point.name] = point
            self._points = points
        return self._points or {}

    def _load_point(self, name: str) -> Plugin:
        point = self._entry_points()[name]
        try:
            found = point.load()
        except Exception as error:  # noqa: BLE001 - its module fails to import: one line, not a traceback
            raise SpecError(
                f"{self.what} plugin {name!r} ({described(point)}) cannot be imported: {first_line(error)}"
            ) from None
        given = found if isinstance(found, Plugin) else Plugin(found)
        if getattr(given.entry, "name", None) != name:
            raise SpecError(
                f"{self.what} plugin {name!r} ({described(point)}) gives an entry named "
                f"{getattr(given.entry, 'name', given.entry)!r}; the entry point and the entry need "
                f"the same name"
            )
        entry, modules = code_paths(given.entry, self.what)
        dist = dist_name(point)
        version = given.version or (point.dist.version if point.dist is not None else None) or "0"
        return self._checked(
            dataclasses.replace(
                given, entry=entry, version=version, distribution=dist, modules=modules, origin=described(point)
            )
        )

    def _checked(self, found: Plugin) -> Plugin:
        kind = type(next(iter(self._entries.values()), None))
        if self._entries and not isinstance(found.entry, kind):
            raise SpecError(
                f"{self.what} plugin {found.name!r} ({found.origin}) is a "
                f"{type(found.entry).__name__}, not a {kind.__name__}"
            )
        if found.keyed_by not in KEYED_BY:
            raise choice_error(f"{self.what} plugin {found.name!r} keyed_by", found.keyed_by, KEYED_BY)
        self._plugins[found.name] = found
        return found

    def register(self, given: Plugin, caller: str) -> Plugin:
        """An entry from a user's module (`mlprune.register`)."""
        entry, modules = code_paths(given.entry, self.what)
        name = entry.name
        if name in self._entries or name in self._entry_points():
            where = (
                getattr(self._entries[name], "impl", "")
                if name in self._entries
                else described(self._entry_points()[name])
            )
            raise SpecError(
                f"{self.what} {name!r} registered in {caller} shadows the "
                f"{'built-in' if name in self._entries else 'plugin'} {self.what} {name!r} ({where}); "
                f"rename it"
            )
        if not modules:
            raise SpecError(f"{self.what} {name!r} names no code (impl) to run")
        earlier = self._plugins.get(name)
        if earlier is not None and earlier.origin != f"registered in {caller}":  # the same call again: replaced
            raise SpecError(f"{self.what} {name!r} is registered twice: {earlier.origin} and in {caller}; rename one")
        dist, dist_version = distribution_of(modules[0])
        version = given.version or dist_version or getattr(sys.modules.get(modules[0]), "__version__", None) or "0"
        if caller != "__main__":
            remember_module(caller)
        return self._checked(
            dataclasses.replace(
                given,
                entry=entry,
                version=str(version),
                distribution=dist,
                modules=modules,
                origin=f"registered in {caller}",
            )
        )

    def plugin(self, name) -> Plugin | None:
        """The `Plugin` behind `name`, or None for a built-in (or unknown) name."""
        if not isinstance(name, str) or name in self._entries:
            return None
        self._entry_points()
        if name not in self._plugins:
            if name in (self._points or {}):
                return self._load_point(name)
            import_remembered_modules()
        return self._plugins.get(name)

    def forget(self) -> None:
        """List the entry points again on next use and drop the plugins (tests; a changed environment)."""
        self._points = None
        self._plugins.clear()

    def builtins(self) -> dict[str, E]:
        return dict(self._entries)

    # ---- the mapping ----
    def __getitem__(self, name) -> E:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            pass
        found = self.plugin(name)
        if found is None:
            raise choice_error(self.what, name, [*self, *self.extra_names]) from None
        return found.entry

    def __contains__(self, name) -> bool:
        try:
            if name in self._entries or name in self._plugins:
                return True
        except TypeError:
            return False
        return isinstance(name, str) and name in self._entry_points()

    def __iter__(self) -> Iterator[str]:
        names = {**self._entries, **self._plugins, **self._entry_points()}
        return iter(names)

    def __len__(self) -> int:
        return len({**self._entries, **self._plugins, **self._entry_points()})

    def where(self, **flags) -> tuple[str, ...]:
        """Names of the entries whose attributes equal `flags`."""
        return tuple(name for name, entry in self.items() if all(getattr(entry, k) == v for k, v in flags.items()))
