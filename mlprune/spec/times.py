"""Points and lengths of training: ``"<N>ep"`` or ``"<N>it"`` (an int means epochs), as OpenLTH writes them.

A `Time` is an amount of epochs or of iterations (optimizer steps). Which
iteration an epoch count means depends on the data and the batch size, so a
`Time` is turned into iterations only when training runs
(`Time.iterations(per_epoch)`); until then it stays in the unit the user wrote,
and its canonical text (``"500it"``, ``"2ep"``) is what keys hash.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import SpecError, shown
from .limits import MAX_EPOCHS, MAX_ITERATIONS

_TEXT = re.compile(r"^\s*([0-9]+)\s*(ep|it)\s*$")
MAX_AMOUNT = {"ep": MAX_EPOCHS, "it": MAX_ITERATIONS}
ALLOWED = (
    f"an int (epochs) or a string '<N>ep' / '<N>it' (e.g. '160ep', '30000it'), at most {MAX_EPOCHS}ep "
    f"or {MAX_ITERATIONS}it"
)


@dataclass(frozen=True, order=True)
class Time:
    amount: int
    unit: str  # "ep" or "it"

    def __str__(self) -> str:
        return f"{self.amount}{self.unit}"

    @property
    def is_zero(self) -> bool:
        return self.amount == 0

    def iterations(self, per_epoch: int) -> int:
        """The iteration this time means when an epoch has `per_epoch` iterations."""
        return self.amount * per_epoch if self.unit == "ep" else self.amount


def parse_time(value, what: str = "time") -> Time:
    """A `Time` from an int (epochs), ``"<N>ep"``, ``"<N>it"`` or a `Time`; one-line SpecError else.

    Times beyond `MAX_EPOCHS` / `MAX_ITERATIONS` are refused: no study trains that long, and a typo
    that does would train until killed."""
    if isinstance(value, Time):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise SpecError(f"{what} {shown(value)} is negative; allowed: {ALLOWED}")
        return _bounded(value, "ep", value, what)
    if isinstance(value, str):
        match = _TEXT.match(value)
        if match:
            digits, unit = match.groups()
            # int() of thousands of digits is refused by Python itself: the length says it is too long
            amount = int(digits) if len(digits.lstrip("0")) <= 20 else MAX_AMOUNT[unit] + 1
            return _bounded(amount, unit, value, what)
    raise SpecError(f"invalid {what} {shown(value)}; allowed: {ALLOWED}")


def _bounded(amount: int, unit: str, given, what: str) -> Time:
    if amount > MAX_AMOUNT[unit]:
        raise SpecError(f"{what} {shown(given)} is longer than any study trains: at most {MAX_AMOUNT[unit]}{unit}")
    return Time(amount, unit)


def time_text(value, what: str = "time") -> str:
    """The canonical text of a time (``"500it"``, ``"2ep"``)."""
    return str(parse_time(value, what))


CHECKPOINTS_OFF = "off"
DEFAULT_CHECKPOINT_EVERY = "1ep"
_OFF = ("off", "0", "none", "false", "no")


def checkpoint_cadence(value) -> str:
    """The canonical text of a run's checkpoint cadence (run option ``checkpoint_every``): ``"<N>ep"`` or
    ``"<N>it"`` with N >= 1 (an int means epochs), or ``"off"`` (also 0, ``"0ep"``, ``"none"``); None or
    ``""`` is the default, every epoch."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return DEFAULT_CHECKPOINT_EVERY
    if value is False or (isinstance(value, str) and value.strip().lower() in _OFF):
        return CHECKPOINTS_OFF
    allowed = "'<N>ep' or '<N>it' (N >= 1, an int means epochs) or 'off' (0)"
    if isinstance(value, bool):
        raise SpecError(f"checkpoint_every {value!r} is not a cadence; allowed: {allowed}")
    try:
        cadence = parse_time(value.strip() if isinstance(value, str) else value, "checkpoint_every")
    except SpecError:
        raise SpecError(f"checkpoint_every {value!r} is not a cadence; allowed: {allowed}") from None
    return CHECKPOINTS_OFF if cadence.is_zero else str(cadence)
