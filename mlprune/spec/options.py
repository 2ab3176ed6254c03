"""Option declarations: the one way to declare an option anywhere in the package.

An `Option` says everything callers need about one option: its default, how a
value is checked and made canonical (`check`, ``(value, name) -> value`` or a
one-line SpecError), whether it is part of the state's key, its help text, and
how it is spelled where users give it as text (a command-line flag, an MLproject
parameter). A `Schema` is the options of one thing: a step kind, a pruning method,
a model, a reinit strategy, the run options, SLURM's options. From it come the
validation and its one-line errors, the canonical dict that keys hash, the
MLproject parameters, the CLI's options and the reference tables in the docs.

Keys and defaults: an option that existed in the first version
is always in the key (``key="always"``), so old keys stay; an option added later
is in the key only when it differs from its default (``key="unless_default"``),
so a new option whose default changes nothing changes no old key; a run option
(device, checkpoints) is never in the key (``key="never"``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import SpecError, choice_error, shown
from .times import ALLOWED as TIME_ALLOWED
from .times import time_text

REQUIRED = object()  # an Option default meaning "must be given"


# ---- value checks: (value, option name) -> canonical value, or a one-line SpecError ------------
def any_value(value, name):
    return value


def integer(minimum: int | None = None, maximum: int | None = None, *, nullable: bool = False):
    """An int (not a bool) in minimum..maximum, both included (None: unbounded)."""

    def check(value, name):
        if value is None and nullable:
            return None
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        if ok and minimum is not None and value < minimum:
            ok = False
        if ok and maximum is not None and value > maximum:
            ok = False
        if not ok:
            bounds = (f" >= {minimum}" if minimum is not None else "") + (
                f" and <= {maximum}" if maximum is not None else ""
            )
            raise SpecError(f"{name} must be an integer{bounds}{' or null' if nullable else ''}, got {shown(value)}")
        return int(value)

    if minimum is not None and maximum is not None:
        check.doc = f"int in {minimum}..{maximum}"
    else:
        check.doc = f"int{f' >= {minimum}' if minimum is not None else ''}"
    check.doc += " or null" if nullable else ""
    return check


def number(minimum: float | None = None, *, positive: bool = False, below: float | None = None):
    """A finite number (kept as float): >= minimum, > 0 with positive, < below."""

    def check(value, name):
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        if ok and minimum is not None and value < minimum:
            ok = False
        if ok and positive and value <= 0:
            ok = False
        if ok and below is not None and value >= below:
            ok = False
        if not ok:
            need = " > 0" if positive else (f" >= {minimum:g}" if minimum is not None else "")
            need += f" and < {below:g}" if below is not None else ""
            raise SpecError(f"{name} must be a finite number{need}, got {shown(value)}")
        return float(value)

    check.doc = "number" + (" > 0" if positive else (f" >= {minimum:g}" if minimum is not None else ""))
    return check


def boolean(value, name):
    if not isinstance(value, bool):
        raise SpecError(f"{name} must be true or false, got {value!r}")
    return value


boolean.doc = "true | false"


def choice(*allowed):
    def check(value, name):
        if value not in allowed:
            raise choice_error(name, value, allowed)
        return value

    check.doc = " | ".join(map(str, allowed))
    return check


def time_value(value, name):
    return time_text(value, name)


time_value.doc = TIME_ALLOWED


MAX_SEED = 2**32 - 1  # torch's CPU generator keeps 32 bits of a seed: 0, 2^32 and 2^62 would be one seed


def seed_value(value, name):
    """A seed: an int in [0, 2^32) (every seed a different stream; larger ones would alias smaller ones)."""
    return integer(0, MAX_SEED)(value, name)


seed_value.doc = "int in [0, 2^32)"


def text(validate=None, doc: str = "text"):
    """A string (anything given is read as its text, stripped); `validate(text, name)` may refuse or
    rewrite it (a one-line SpecError). For free-form values: SLURM words, paths, device names."""

    def check(value, name):
        if value is None or isinstance(value, (dict, list, tuple, set)):
            raise SpecError(f"{name} must be {doc}, got {shown(value)}")
        value = str(value).strip()
        return validate(value, name) if validate is not None else value

    check.doc = doc
    return check


def with_doc(check, doc: str):
    """`check` (a function of (value, name)) with the text the docs show for its allowed values."""
    check.doc = doc
    return check


def optional(check):
    def inner(value, name):
        return None if value is None else check(value, name)

    inner.doc = f"{getattr(check, 'doc', 'value')} or null"
    return inner


@dataclass(frozen=True)
class Option:
    name: str
    default: Any = REQUIRED
    check: Callable[[Any, str], Any] = any_value
    help: str = ""
    key: str = "always"  # "always" | "unless_default" | "never" (see module docs)
    aliases: tuple[str, ...] = ()  # other spellings accepted in recipes and -o
    key_name: str | None = None  # its name in the key material, when it differs (first-version names)
    cli: bool = True  # offered as an MLproject parameter / a command-line option
    # spelled as text (command-line flags, MLproject parameters): see `parse_text`
    parse: Callable[[str, str], Any] | None = None  # (text, flag) -> value; None: the text itself
    metavar: str = ""  # what --help shows for the value
    flag_value: str | None = None  # the value of the bare flag (``--deterministic`` = "true")
    steps: bool = True  # run options: also offered by ``mlprune step`` and the step entry points
    api: bool = True  # run options: a keyword argument of `api.Experiment`
    param: bool = True  # run options: recorded on every state as the param ``run.<name>``
    # what one family of options needs beyond these (a SLURM option's #SBATCH directive, ...), read by the
    # code of that family: meta={"sbatch": "--qos={}"} (no subclass, no second vocabulary)
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def stored_as(self) -> str:
        return self.key_name or self.name

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def doc(self) -> str:
        return getattr(self.check, "doc", "")

    @property
    def flag(self) -> str:
        """Its command-line spelling: ``--checkpoint-every``."""
        return "--" + self.name.replace("_", "-")

    def parse_text(self, given, where: str | None = None):
        """The value given as text (a flag, an MLproject parameter; '' or None: not given, the default),
        checked. Errors name `where` (the flag) when given."""
        if given is None or (isinstance(given, str) and given.strip() == ""):
            return self.default
        value = self.parse(given, where or self.name) if self.parse is not None and isinstance(given, str) else given
        return self.check(value, where or self.name)


@dataclass(frozen=True)
class Schema:
    """The options of one step kind, in declaration order."""

    what: str  # e.g. "train option": used in error messages
    options: tuple[Option, ...]
    by_name: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        names = {}
        for option in self.options:
            for spelling in (option.name, *option.aliases):
                names[spelling] = option
        object.__setattr__(self, "by_name", names)

    def __iter__(self):
        return iter(self.options)

    def __getitem__(self, name: str) -> Option:
        return self.by_name[name]

    def __contains__(self, name) -> bool:
        return name in self.by_name

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.options]

    def canonical_names(self, raw: dict) -> dict:
        """`raw` with aliases replaced by option names; unknown options are a one-line SpecError."""
        if not isinstance(raw, dict):
            raise SpecError(f"{self.what}s must be a mapping, got {raw!r}")
        out = {}
        for given, value in raw.items():
            option = self.by_name.get(given)
            if option is None:
                raise SpecError(f"unknown {self.what} {given!r}; allowed: {', '.join(self.names)}")
            if option.name in out:
                raise SpecError(f"{self.what} {option.name!r} is given twice (as {given!r} too)")
            out[option.name] = value
        return out

    def resolve(self, raw: dict, *, keep: tuple[str, ...] = ()) -> dict:
        """Checked, canonical options in key form: defaults filled, keys named as stored.

        An ``unless_default`` option at its default and every ``never`` option are left
        out (unless named in `keep`).
        """
        values = self.checked(raw)
        out = {}
        for option in self.options:
            value = values[option.name]
            if option.name not in keep:
                if option.key == "never":
                    continue
                if option.key == "unless_default" and value == option.default:
                    continue
            out[option.stored_as] = value
        return out

    def with_options(self, *options: Option, after: str | None = None, what: str | None = None) -> Schema:
        """This schema with `options`: one of an existing name replaces it where it is, a new one goes after
        the option named `after` (default: at the end)."""
        by_name = {o.name: o for o in options}
        out = [by_name.pop(o.name, o) for o in self.options]
        at = out.index(self[after]) + 1 if after is not None else len(out)
        return Schema(what or self.what, tuple(out[:at]) + tuple(by_name.values()) + tuple(out[at:]))

    @classmethod
    def union(cls, what: str, schemas, *, first: tuple = (), last: tuple = ()) -> Schema:
        """One schema of the options of `schemas` (each name once: the first declaration wins),
        `first` before them and `last` after."""
        seen, out = set(), []
        for option in (*first, *(o for schema in schemas for o in schema), *last):
            if option.name not in seen:
                seen.add(option.name)
                out.append(option)
        return cls(what, tuple(out))

    def checked(self, given: dict) -> dict:
        """Every option of this schema, checked, defaults filled, by name (no key policy applied)."""
        given = self.canonical_names(given)
        out = {}
        for option in self.options:
            if option.name in given:
                out[option.name] = option.check(given[option.name], option.name)
            elif option.required:
                raise SpecError(f"{self.what} {option.name!r} is required")
            else:
                out[option.name] = option.default
        return out

    def public(self, stored: dict) -> dict:
        """Key-form options with their public names (for params and display)."""
        by_stored = {o.stored_as: o.name for o in self.options}
        return {by_stored.get(k, k): v for k, v in stored.items()}
