"""Reading recipe files: bounded safe YAML, ``extends``, parameters and protocols, ``-P`` values.

A recipe file is YAML data, read with a safe YAML loader: nothing in it runs. A value
that is exactly ``$name`` is replaced by the parameter ``name`` (typed: an int stays an
int); no other substitution exists.

Reading is bounded: a file over 1 MiB, more than 100 YAML aliases, nesting deeper than
40 levels or bytes that are not UTF-8 are one-line errors, before anything is built (a
"billion laughs" alias bomb cannot eat the machine).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml

from ..errors import SpecError
from .sections import SECTIONS

COMMON_PARAMS = ("dataset", "model", "rounds", "epochs", "amount", "seed", "lr", "batch_size", "data_dir")
_PARAM_REF = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)$")


MAX_RECIPE_BYTES = 1 << 20
MAX_ALIASES = 100
MAX_DEPTH = 40
MAX_NODES = 100_000  # after expanding aliases: a few aliases of aliases are a "billion laughs"


def parse_number(text: str):
    """'1e-3' -> 0.001: YAML 1.1 reads a float without a dot as a string; users write numbers so."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return value if text.strip().lower() not in ("nan", "inf", "-inf", "+inf", "infinity", "-infinity") else None


def parse_value(text: str):
    """A -P value: YAML scalar syntax (3 -> int, 0.2 and 1e-3 -> float, true, null, text)."""
    try:
        value = safe_load(text, "parameter value")
    except SpecError:
        raise SpecError(f"cannot parse parameter value {text!r}") from None
    if isinstance(value, str):
        number = parse_number(value.strip())
        if number is not None:
            return number
    if isinstance(value, (dict, list)):
        raise SpecError(f"parameter value {text!r} must be a scalar, not a {type(value).__name__}")
    return value


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses alias bombs and deep nesting while composing."""

    def __init__(self, stream):
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise SpecError(f"more than {MAX_ALIASES} YAML aliases (*name): refused")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise SpecError(f"nesting deeper than {MAX_DEPTH} levels: refused")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _expanded_size(node, memo: dict) -> int:
    """How many nodes `node` stands for once every alias is expanded (shared nodes counted each time)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a node that contains itself counts once (recursive aliases)
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[id(node)] = size
    return size


def safe_load(text: str, where: str):
    """`text` as YAML data through the bounded safe loader; a one-line SpecError naming `where` otherwise."""
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            size = _expanded_size(node, {})
            if size > MAX_NODES:
                raise SpecError(f"expands to {size} YAML nodes through its aliases (at most {MAX_NODES}): refused")
        return loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"{where}:{line} is not valid YAML ({getattr(error, 'problem', None) or error})") from None
    except RecursionError:
        raise SpecError(f"{where}: nesting too deep: refused") from None
    finally:
        loader.dispose()


def parse_assignments(pairs) -> dict:
    """['rounds=3', 'amount=0.1'] -> {'rounds': 3, 'amount': 0.1}."""
    return {name: parse_value(text) for name, text in _name_value_pairs(pairs, "parameter")}


def _name_value_pairs(pairs, what: str):
    """('name', 'text') of each 'name=text'; a one-line SpecError for anything else."""
    for pair in pairs or ():
        name, sep, text = pair.partition("=")
        if not sep or not name.strip():
            raise SpecError(f"{what} {pair!r} must look like name=value")
        yield name.strip(), text


def parse_options(pairs) -> dict:
    """Step options ['amount=0.2', 'include=[@conv]'] -> typed dict; empty values are dropped (= default)."""
    options = {}
    for name, text in _name_value_pairs(pairs, "option"):
        if text.strip() == "":
            continue
        try:
            value = safe_load(text, f"option {name}")
        except SpecError:  # e.g. '@conv' or '[@conv, fc1.weight]': YAML reserves '@'
            stripped = text.strip()
            if stripped.startswith("[") and stripped.endswith("]"):
                value = [item.strip() for item in stripped[1:-1].split(",") if item.strip()]
            else:
                value = stripped
        if isinstance(value, str) and parse_number(value.strip()) is not None:
            value = parse_number(value.strip())
        options[name] = value
    return options


def read_recipe(path: str | Path, _seen: tuple = ()) -> dict:
    """The recipe file's mapping, `extends` merged in, top-level keys checked."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"recipe file {str(path)!r} not found")
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise SpecError(f"{path}: {size} bytes; a recipe file is at most {MAX_RECIPE_BYTES} bytes")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise SpecError(f"{path}: not UTF-8 text (byte {error.start}): a recipe is a YAML text file") from None
    try:
        raw = safe_load(text, str(path))
    except SpecError as error:
        message = str(error)
        raise SpecError(message if message.startswith(str(path)) else f"{path}: {message}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a recipe is a mapping of keys ({', '.join(SECTIONS)})")
    unknown = set(raw) - set(SECTIONS)
    if unknown:
        raise SpecError(f"{path}: unknown key {sorted(unknown)[0]!r}; allowed: {', '.join(SECTIONS)}")
    raw.setdefault("name", path.stem)
    if "extends" in raw:
        base_path = (path.parent / raw["extends"]).resolve()
        if base_path in _seen:
            raise SpecError(f"{path}: 'extends' makes a cycle through {base_path}")
        base = read_recipe(base_path, _seen + (path.resolve(),))
        merged = _merge(base, {k: v for k, v in raw.items() if k != "extends"})
        merged["name"] = raw["name"]
        merged.setdefault("description", base.get("description", ""))
        return merged
    return raw


def _merge(base: dict, override: dict) -> dict:
    """`extends`: the child's keys replace the base's; params merge, and each protocol merges."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if key == "params" and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        elif key == "protocols" and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {name: {**out[key].get(name, {}), **(protocol or {})} for name, protocol in
                        {**out[key], **value}.items()}
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_params(raw: dict, overrides: dict, where: str) -> dict:
    declared = dict(raw.get("params") or {})
    protocols = raw.get("protocols") or {}
    # an empty value means "the recipe's default" (MLproject passes every parameter, '' when unset)
    overrides = {k: v for k, v in overrides.items() if v is not None and v != ""}
    protocol = overrides.pop("protocol", None)
    params = dict(declared)
    if protocol not in (None, "", "default"):
        if protocol not in protocols:
            allowed = ", ".join(["default", *protocols])
            raise SpecError(f"{where}: unknown protocol {protocol!r}; allowed: {allowed}")
        params.update(protocols[protocol])
    unknown = set(overrides) - set(declared)
    if unknown:
        allowed = ", ".join(sorted(set(declared) | {"protocol"}))
        raise SpecError(f"{where}: unknown parameter {sorted(unknown)[0]!r}; allowed: {allowed}")
    params.update(overrides)
    return params


def substitute(value, params: dict, where: str):
    """`value` with every ``$name`` string replaced by the parameter ``name`` (nothing else is substituted)."""
    if isinstance(value, str):
        match = _PARAM_REF.match(value)
        if match:
            if match.group(1) not in params:
                raise SpecError(f"{where}: unknown parameter {value!r}; declared: {', '.join(sorted(params))}")
            return params[match.group(1)]
        return value
    if isinstance(value, dict):
        return {k: substitute(v, params, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, params, f"{where}[{i}]") for i, v in enumerate(value)]
    return value
