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
import math
import re
from pathlib import Path

import yaml

from ..errors import SpecError, shown
from ..reading import read_small_file
from ..spec.limits import MAX_VALUE_CHARS
from .sections import SECTIONS

COMMON_PARAMS = ("dataset", "model", "rounds", "epochs", "amount", "seed", "lr", "batch_size", "data_dir")
_PARAM_REF = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)$")


MAX_RECIPE_BYTES = 1 << 20
MAX_ALIASES = 100
MAX_DEPTH = 40
MAX_NODES = 100_000  # after expanding aliases: a few aliases of aliases are a "billion laughs"


# numbers as people type them, in ASCII digits only: Python's int() and float() would also read '١٢', '１２'
# (other scripts' digits) and '1_0' (underscores) as 12 and 10
_INT_TEXT = re.compile(r"[-+]?[0-9]+", re.ASCII)
_FLOAT_TEXT = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?", re.ASCII)


def parse_number(text: str):
    """'1e-3' -> 0.001, '3' -> 3; None for anything that is not a finite number written in ASCII digits."""
    if _INT_TEXT.fullmatch(text):
        return int(text)
    if not _FLOAT_TEXT.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def parse_value(text: str):
    """A -P value: YAML scalar syntax (3 -> int, 0.2 and 1e-3 -> float, true, null, text)."""
    if len(text) > MAX_VALUE_CHARS:
        raise SpecError(f"parameter value {text[:20]!r}... is {len(text)} characters long; at most {MAX_VALUE_CHARS}")
    try:
        value = safe_load(text, "parameter value")
    except SpecError:
        raise SpecError(f"cannot parse parameter value {shown(text)}") from None
    if isinstance(value, str):
        number = parse_number(value.strip())
        if number is not None:
            return number
    if isinstance(value, (dict, list)):
        raise SpecError(f"parameter value {shown(text)} must be a scalar, not a {type(value).__name__}")
    return value


# YAML 1.1 (PyYAML) reads a float only with a dot and a signed exponent: 1e-3, 1E5 and 2.5e3 would be
# strings, and `lr: 1e-3` a rejected "lr '1e-3'". Plain scalars written like that are numbers here, as in
# YAML 1.2 and as `-P lr=1e-3` already reads them; a quoted '1e-3' stays a string.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$", re.ASCII)
_FLOAT_TAG = "tag:yaml.org,2002:float"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses alias bombs, recursive aliases, deep nesting and duplicate keys."""

    def __init__(self, stream):
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0
        self._open: set[str] = set()  # anchors of the collections being composed (an alias to one recurses)

    def compose_node(self, parent, index):
        anchor = self.peek_event().anchor
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise SpecError(f"more than {MAX_ALIASES} YAML aliases (*name): refused")
            if anchor in self._open:
                raise SpecError(
                    f"line {self.peek_event().start_mark.line + 1}: the alias *{anchor} is inside "
                    f"&{anchor} itself (a structure that contains itself): refused; an alias must "
                    f"name a value that is complete"
                )
            anchor = None
        self._depth += 1
        if anchor is not None:
            self._open.add(anchor)
        try:
            if self._depth > MAX_DEPTH:
                raise SpecError(f"nesting deeper than {MAX_DEPTH} levels: refused")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open.discard(anchor)

    def construct_mapping(self, node, deep=False):
        """A mapping whose keys are all different: with a repeated key the last one would win silently."""
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                    continue  # merged keys (<<: *base) may be overridden: that is what merging is for
                key = self.construct_object(key_node)
                if key in seen:
                    raise SpecError(
                        f"line {key_node.start_mark.line + 1}: duplicate key {shown(key)} (first on line "
                        f"{seen[key] + 1}): a key is given once"
                    )
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 ints and floats also take underscores (1_0 = 10), sexagesimals (1:30 = 90), octal (010 = 8), hex and
# binary: a recipe's numbers are plain decimal ones, anything else stays a string (and an option refuses it)
_INT_TAG = "tag:yaml.org,2002:int"
_BoundedLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag not in (_INT_TAG, _FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_BoundedLoader.add_implicit_resolver(_INT_TAG, re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$", re.ASCII), list("-+0123456789"))
_BoundedLoader.add_implicit_resolver(
    _FLOAT_TAG,
    re.compile(
        r"^(?:[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)"
        r"|\.(?:nan|NaN|NAN))$",
        re.ASCII,
    ),
    list("-+0123456789."),
)
_BoundedLoader.add_implicit_resolver(_FLOAT_TAG, _EXPONENT_FLOAT, list("-+0123456789."))


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
    loader = None
    try:
        loader = _BoundedLoader(text)  # the reader refuses control characters (NUL) right here
        node = loader.get_single_node()
        if node is not None:
            size = _expanded_size(node, {})
            if size > MAX_NODES:
                raise SpecError(f"expands to {size} YAML nodes through its aliases (at most {MAX_NODES}): refused")
        return loader.construct_document(node) if node is not None else None
    except yaml.reader.ReaderError as error:
        code = error.character if isinstance(error.character, int) else ord(error.character)
        raise SpecError(
            f"{where}: character U+{code:04X} (position {error.position}) is not allowed in YAML "
            f"text: control characters such as NUL are refused"
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(error, "problem", None) or error).split())
        raise SpecError(f"{where}:{line} is not valid YAML ({problem})") from None
    except SpecError:
        raise
    except ValueError as error:  # e.g. an int of more than 4300 digits, which Python refuses to read
        raise SpecError(f"{where}: a value cannot be read ({' '.join(str(error).split(';')[0].split())})") from None
    except RecursionError:
        raise SpecError(f"{where}: nesting too deep: refused") from None
    finally:
        if loader is not None:
            loader.dispose()


def parse_assignments(pairs) -> dict:
    """['rounds=3', 'amount=0.1'] -> {'rounds': 3, 'amount': 0.1}."""
    values = {}
    for name, text in _name_value_pairs(pairs, "parameter"):
        try:
            values[name] = parse_value(text)
        except SpecError as error:
            raise SpecError(f"-P {name}: {error}") from None
    return values


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
        if len(text) > MAX_VALUE_CHARS:
            raise SpecError(
                f"option {name}: value {text[:20]!r}... is {len(text)} characters long; at most {MAX_VALUE_CHARS}"
            )
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


_PARSED: dict[tuple[str, str], object] = {}  # (file, text) -> its YAML data, for `_parsed`


def _parsed(text: str, where: str):
    """`safe_load(text, where)`, a copy of the data parsed last time for the same file and text: a sweep
    compiles one recipe file per seed and grid point, and parsing YAML costs far more than copying."""
    key = (where, text)
    if key not in _PARSED:
        if len(_PARSED) >= 64:
            _PARSED.clear()
        _PARSED[key] = safe_load(text, where)
    return copy.deepcopy(_PARSED[key])


def read_recipe(path: str | Path, _seen: tuple = ()) -> dict:
    """The recipe file's mapping, `extends` merged in, top-level keys checked."""
    path = Path(path)
    content = read_small_file(path, MAX_RECIPE_BYTES, "recipe file")  # a FIFO, a device, a loop: one line
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SpecError(f"{path}: not UTF-8 text (byte {error.start}): a recipe is a YAML text file") from None
    try:
        raw = _parsed(text, str(path))
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
        base = raw["extends"]
        if not isinstance(base, str) or not base.strip():
            raise SpecError(f"{path}: extends must be the file name of another recipe (a string), got {shown(base)}")
        read_small_file(path.parent / base, MAX_RECIPE_BYTES, f"{path}: extends: recipe file")
        base_path = (path.parent / base).resolve()
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
            out[key] = {
                name: {**out[key].get(name, {}), **(protocol or {})} for name, protocol in {**out[key], **value}.items()
            }
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
