"""Registries that dispatch: one entry per method, strategy, model, dataset, step kind.

An entry carries what callers need to know about one choice (structured or
not, which options it takes, whether it needs data or gradients...) and where
its implementation is (``impl="module:attribute"``, imported on first use).
Planning and validation read entries without importing torch; the executor
calls ``entry.load()``. Adding a method is adding one entry (and its function);
nothing else in the package names it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Generic, Iterator, TypeVar

from .errors import choice_error

E = TypeVar("E")


def load_impl(path: str):
    """The object at ``"package.module:attribute"``."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


class Registry(Mapping, Generic[E]):
    """Entries by name; an unknown name is a one-line SpecError listing the known ones."""

    def __init__(self, what: str, extra_names: tuple[str, ...] = ()):
        self.what = what
        self.extra_names = extra_names  # described names that are not entries (e.g. "tv:<name>")
        self._entries: dict[str, E] = {}

    def add(self, entry: E) -> E:
        name = entry.name
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def __getitem__(self, name) -> E:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise choice_error(self.what, name, [*self._entries, *self.extra_names]) from None

    def __contains__(self, name) -> bool:
        try:
            return name in self._entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def where(self, **flags) -> tuple[str, ...]:
        """Names of the entries whose attributes equal `flags`."""
        return tuple(name for name, entry in self._entries.items()
                     if all(getattr(entry, k) == v for k, v in flags.items()))
