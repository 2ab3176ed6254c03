"""Plugins: catalog entries from outside mlprune, and the identity of their code.

Entries of the kinds mlprune's registries hold (a `Model`, `Dataset`, `Method`, `Strategy`) come
from other packages through Python entry points (`GROUPS`) or from `register` in a user's module.
A `Plugin` wraps one with its version and key policy; its code's digest is the SHA-256 of the
sources of the modules its code fields name and of the modules of their packages these import
(`code_files`: import statements read, nothing run). Resolution puts a plugin's identity (version,
digest) into the resolved root or step that names it (``plugins``), so keys follow the code;
built-in entries add nothing, and built-in keys stay. The states record each plugin's
distribution, version and digest (state.json, tags ``mlprune.plugin.<name>``). docs/plugins.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import sys
from pathlib import Path

from .errors import SpecError, choice_error
from .names import ENV_PLUGIN_MODULES, TAG_KEY, TAG_PLUGIN_PREFIX

# entry-point group -> the registry it extends ("module:attribute", imported when a plugin is registered)
GROUPS = {
    "mlprune.models": "mlprune.models.catalog:MODELS",
    "mlprune.datasets": "mlprune.data.catalog:DATASETS",
    "mlprune.methods": "mlprune.pruning.catalog:METHODS",
    "mlprune.reinit": "mlprune.reinit.catalog:STRATEGIES",
}
IMPL_FIELDS = ("impl", "scorer", "unit_impl")  # entry fields naming code ("module:attribute" or a callable)
KEYED_BY = ("digest", "version")
DIGEST_CHARS = 16
PLUGINS_KEY = "plugins"  # in a resolved root or step: {entry name: identity} of the plugins it uses


def load_impl(path: str):
    """The object at ``"package.module:attribute"`` (``attribute`` may be dotted: ``Class.method``)."""
    module, _, attribute = path.partition(":")
    found = importlib.import_module(module)
    for part in attribute.split("."):
        found = getattr(found, part)
    return found


# ---- the identity of a plugin's code ----------------------------------------------------------

_SOURCES: dict[Path, tuple[tuple, str, tuple]] = {}  # file -> ((mtime, size), sha256, modules it imports)


def _package_base(top: str) -> Path:
    """The directory that holds top-level package (or module) `top` (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec(top)
    if spec is None:
        raise SpecError(f"plugin module {top!r} cannot be found: install the package that holds it")
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0]).parent
    if spec.origin is None or not spec.origin.endswith(".py"):
        raise SpecError(f"plugin module {top!r} has no Python source file to hash ({spec.origin})")
    return Path(spec.origin).parent


def _module_file(base: Path, module: str) -> Path | None:
    path = base.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, module: str, source: bytes) -> tuple[str, ...]:
    """The modules `module` (at `path`) names in its import statements, relative ones resolved."""
    import ast

    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found += [target] + [f"{target}.{alias.name}" for alias in node.names]
    return tuple(found)


def _source(path: Path, module: str) -> tuple[str, tuple]:
    stat = path.stat()
    cached = _SOURCES.get(path)
    if cached is None or cached[0] != (stat.st_mtime_ns, stat.st_size):
        data = path.read_bytes()
        cached = _SOURCES[path] = (
            (stat.st_mtime_ns, stat.st_size),
            hashlib.sha256(data).hexdigest(),
            _imports(path, module, data),
        )
    return cached[1], cached[2]


def code_files(modules) -> dict[str, str]:
    """{module: SHA-256 of its source} of `modules` and every module of the same top-level packages
    that they import, transitively (import statements read from the sources, nothing executed)."""
    seen: dict[str, str] = {}
    todo = list(modules)
    bases: dict[str, Path] = {}
    tops = {m.partition(".")[0] for m in modules}
    while todo:
        module = todo.pop()
        top = module.partition(".")[0]
        if module in seen or top not in tops:
            continue
        if top not in bases:
            bases[top] = _package_base(top)
        path = _module_file(bases[top], module)
        if path is None:  # an attribute imported from a package (`from pkg import name`), not a module
            continue
        seen[module], imported = _source(path, module)
        todo += [m for m in imported if m.partition(".")[0] in tops]
    return dict(sorted(seen.items()))


@dataclasses.dataclass(frozen=True)
class Plugin:
    """A catalog entry from outside mlprune and the identity of its code.

    ``keyed_by="digest"`` (default): keys hold its name, version and the digest of its code
    (`digest`), so editing its code makes new states. ``"version"``: name and version only (edit
    freely; bump the version when results change). ``version``: None takes the distribution's.
    """

    entry: object
    version: str | None = None
    keyed_by: str = "digest"
    distribution: str = ""
    modules: tuple[str, ...] = ()  # the modules its code fields name (hashed with what they import)
    origin: str = ""  # where it came from: "dist version: module:attr" or "registered in m"

    @property
    def name(self) -> str:
        return self.entry.name

    def digest(self) -> str:
        """SHA-256 (16 hex digits) of the sources of the modules its code fields name and of the modules of
        their packages these import (`code_files`)."""
        material = "\n".join(f"{module} {sha}" for module, sha in code_files(self.modules).items())
        return hashlib.sha256(material.encode()).hexdigest()[:DIGEST_CHARS]

    def identity(self) -> dict:
        """What keys hold: its version, and the digest of its code unless it is keyed by version."""
        out = {"version": str(self.version)}
        if self.keyed_by == "digest":
            out["digest"] = self.digest()
        return out


def plugin(entry, *, version: str | None = None, keyed_by: str = "digest") -> Plugin:
    """An entry-point target (or `register` argument) with its version or key policy spelled out."""
    if keyed_by not in KEYED_BY:
        raise choice_error("plugin keyed_by", keyed_by, KEYED_BY)
    return Plugin(entry, None if version is None else str(version), keyed_by)


def code_paths(entry, what: str) -> tuple[object, tuple[str, ...]]:
    """`entry` with callables in its code fields turned into "module:qualname", and their modules."""
    changes, modules = {}, []
    for field in IMPL_FIELDS:
        value = getattr(entry, field, None)
        if callable(value):
            module, qualname = getattr(value, "__module__", None), getattr(value, "__qualname__", "")
            if "<locals>" in qualname:
                raise SpecError(
                    f"{what} {entry.name!r} is defined inside a function ({qualname}): put it at "
                    f"the top level of a module importable on the workers"
                )
            value = changes[field] = f"{module}:{qualname}"
        if isinstance(value, str) and value:
            module = value.partition(":")[0]
            if module == "__main__":
                raise SpecError(
                    f"{what} {entry.name!r} is defined in __main__: put it in a module importable on the workers"
                )
            modules.append(module)
    return (dataclasses.replace(entry, **changes) if changes else entry), tuple(modules)


def distribution_of(module: str) -> tuple[str, str | None]:
    """(distribution name, its version) of the installed package that holds `module`, or ("", None)."""
    import importlib.metadata

    names = importlib.metadata.packages_distributions().get(module.partition(".")[0]) or []
    for name in names:
        try:
            return name, importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "", None


# ---- registries ---------------------------------------------------------------------------------

_POINTS: list = []  # every installed entry point, read once per process (one pass over the distributions)


def entry_points_of(group: str) -> list:
    if not _POINTS:
        import importlib.metadata

        _POINTS.append(importlib.metadata.entry_points())
    return list(_POINTS[0].select(group=group))


def dist_name(point) -> str:
    return point.dist.name if getattr(point, "dist", None) is not None else ""


def described(point) -> str:
    dist = getattr(point, "dist", None)
    where = f"{dist.name} {dist.version}" if dist is not None else "an entry point"
    return f"{where}: {point.value}"


def remember_module(module: str) -> None:
    """Workers started from this process (dask, SLURM) import `module` to find what it registers."""
    known = [m for m in os.environ.get(ENV_PLUGIN_MODULES, "").split(",") if m]
    if module not in known:
        os.environ[ENV_PLUGIN_MODULES] = ",".join([*known, module])


def import_remembered_modules() -> None:
    for module in [m for m in os.environ.get(ENV_PLUGIN_MODULES, "").split(",") if m]:
        if module in sys.modules:
            continue
        try:
            importlib.import_module(module)
        except Exception as error:  # noqa: BLE001 - whatever its import raises is one line
            raise SpecError(
                f"plugin module {module!r} (from ${ENV_PLUGIN_MODULES}) cannot be imported here: {first_line(error)}"
            ) from None


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:300] if text else ''}"


def registry_of(entry):
    """The registry that takes entries of `entry`'s kind (Model, Dataset, Method, Strategy)."""
    for registry in registries():
        kind = type(next(iter(registry.builtins().values())))
        if isinstance(entry, kind):
            return registry
    raise SpecError(
        f"cannot register {type(entry).__name__} {entry!r}; allowed: a Model, Dataset, Method or "
        f"Strategy entry (or mlprune.plugin(entry, version=...))"
    )


def register(entry, *, version: str | None = None, keyed_by: str = "digest", caller: str | None = None):
    """Add a user's entry (a Model, Dataset, Method or Strategy) to its catalog; returns the entry.

    Its code fields may be callables; they and the module calling this must be importable on the
    workers (not ``__main__``) for the processes, dask and SLURM schedulers.
    """
    given = entry if isinstance(entry, Plugin) else plugin(entry, version=version, keyed_by=keyed_by)
    caller = caller or sys._getframe(1).f_globals.get("__name__", "__main__")
    return registry_of(given.entry).register(given, caller).entry


def forget_plugins() -> None:
    """List the entry points again on next use, and drop every plugin (tests; a changed environment)."""
    _POINTS.clear()
    for registry in registries():
        registry.forget()
    _SOURCES.clear()


# ---- plugins in resolved specs, keys and tags ------------------------------------------------------


def code_identities(uses) -> dict:
    """``{name: identity}`` of the plugins among `uses` ((registry, name) pairs); {} when all are built in."""
    out = {}
    for registry, name in uses:
        found = registry.plugin(name)
        if found is not None:
            out[name] = found.identity()
    return dict(sorted(out.items()))


def _record(name: str, identity: dict) -> dict:
    found = find_plugin(name)
    return {
        "distribution": found.distribution if found is not None else "",
        "version": identity["version"],
        "digest": identity.get("digest") or (found.digest() if found is not None else ""),
    }


def used_by(root: dict | None, steps: list) -> dict:
    """{name: identity} of the plugins a resolved root and resolved steps name."""
    used = dict((root or {}).get(PLUGINS_KEY) or {})
    for step in steps:
        for options in step.values():
            used.update((options.get(PLUGINS_KEY) or {}) if isinstance(options, dict) else {})
    return used


def lineage_plugins(root: dict, steps: list, parent_specs: list) -> dict:
    """{name: {distribution, version, digest}} of every plugin a state depends on: its root's, its steps', its
    parents' (their state.json's ``plugins``). Recorded in state.json and tags, not in the key (which holds their
    identities already, through the root, the steps and the parents' keys)."""
    records = {}
    for spec in parent_specs:
        records.update((spec or {}).get(PLUGINS_KEY) or {})
    records.update({name: _record(name, identity) for name, identity in used_by(root, steps).items()})
    return dict(sorted(records.items()))


def plugin_tags(records: dict) -> dict[str, str]:
    """``mlprune.plugin.<name>`` tags: each plugin's distribution, version and digest (JSON)."""
    return {TAG_PLUGIN_PREFIX + name: json.dumps(record, sort_keys=True) for name, record in records.items()}


def plan_plugins(nodes) -> dict:
    """{name: identity} of the plugins the roots and steps of plan nodes use."""
    used = {}
    for node in nodes:
        used.update(used_by(node.root, node.steps))
    return used


def stale_plugin_states(used: dict, stored_tags: list[dict], reached_keys) -> list[str]:
    """Lines on the stored states computed with other code of a plugin the plan uses and that it does not reach
    (`stored_tags`: each finished state's tags)."""
    counts: dict[tuple, int] = {}
    for tags in stored_tags:
        if tags.get(TAG_KEY) in reached_keys:
            continue
        for name, identity in used.items():
            value = tags.get(TAG_PLUGIN_PREFIX + name)
            if value is None:
                continue
            try:
                record = json.loads(value)
            except ValueError:
                continue
            if record.get("version") != identity["version"] or (
                "digest" in identity and record.get("digest") != identity["digest"]
            ):
                other = (name, record.get("version"), record.get("digest"))
                counts[other] = counts.get(other, 0) + 1
    lines = []
    for (name, version, digest), count in sorted(counts.items()):
        now = used[name]
        lines.append(
            f"{count} state{'s were' if count > 1 else ' was'} computed with {name} {version} digest "
            f"{str(digest)[:8]}…; this plan reaches none of them ({name} is now {now['version']}"
            f"{' digest ' + now['digest'][:8] + '…' if 'digest' in now else ''})"
        )
    return lines


def registries() -> list:
    """The four catalogs plugins extend (imported here: a worker may not have needed one yet)."""
    return [load_impl(path) for path in GROUPS.values()]


def find_plugin(name: str) -> Plugin | None:
    """The plugin named `name` in any catalog, or None."""
    return next((found for found in (r.plugin(name) for r in registries()) if found is not None), None)


def installed_plugins() -> list[tuple]:
    """(catalog, name, Plugin or its one-line error) of every plugin this process sees."""
    rows = []
    for registry in registries():
        for name in registry:
            if name in registry.builtins():
                continue
            try:
                rows.append((registry.what, name, registry.plugin(name)))
            except SpecError as error:
                rows.append((registry.what, name, str(error)))
    return rows


def check_portable(used: dict, scheduler: str) -> None:
    """A one-line SpecError when a plugin the plan uses was registered in ``__main__``: workers of `scheduler`
    (other processes) cannot register it again."""
    for name in used:
        found = find_plugin(name)
        if found is not None and found.origin == "registered in __main__":
            what = next(r.what for r in registries() if r.plugin(name) is found)
            raise SpecError(
                f"{what} {name!r} is registered in __main__: workers of --scheduler {scheduler} cannot "
                f"see it; call mlprune.register in a module importable on the workers (or use the sync "
                f"scheduler)"
            )


def identities_here(names) -> dict:
    """{name: identity or an error line} of plugins in this process (what a worker reports)."""
    out = {}
    for name in names:
        try:
            found = find_plugin(name)
            out[name] = found.identity() if found is not None else f"no plugin {name!r} here"
        except SpecError as error:
            out[name] = str(error)
    return out
