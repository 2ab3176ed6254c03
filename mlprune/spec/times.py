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

from ..errors import SpecError

_TEXT = re.compile(r"^\s*(\d+)\s*(ep|it)\s*$")
ALLOWED = "an int (epochs) or a string '<N>ep' / '<N>it' (e.g. '160ep', '30000it')"


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
    """A `Time` from an int (epochs), ``"<N>ep"``, ``"<N>it"`` or a `Time`; one-line SpecError else."""
    if isinstance(value, Time):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise SpecError(f"{what} {value!r} is negative; allowed: {ALLOWED}")
        return Time(value, "ep")
    if isinstance(value, str):
        match = _TEXT.match(value)
        if match:
            return Time(int(match.group(1)), match.group(2))
    raise SpecError(f"invalid {what} {value!r}; allowed: {ALLOWED}")


def time_text(value, what: str = "time") -> str:
    """The canonical text of a time (``"500it"``, ``"2ep"``)."""
    return str(parse_time(value, what))
