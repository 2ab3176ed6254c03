"""Learning-rate schedules: pure functions of the iteration (no torch, no state).

``lr_factor(i, total, schedule, warmup)`` is the factor of the base LR used for
optimizer step ``i`` (0-based, counted from the start of the whole training, not of
a resumed piece). Times in a schedule are given in iterations here (the loop
converts ``"<N>ep"`` with its iterations per epoch).
"""

from __future__ import annotations

import math


def constant(i: int, total: int, options: dict) -> float:
    return 1.0


def multistep(i: int, total: int, options: dict) -> float:
    """gamma ** (milestones passed): step i uses the decayed LR once i >= milestone (as OpenLTH)."""
    return options["gamma"] ** sum(1 for m in options["milestones"] if i >= m)


def cosine(i: int, total: int, options: dict) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * i / max(total, 1)))


def linear(i: int, total: int, options: dict) -> float:
    return max(0.0, 1.0 - i / max(total, 1))


def lr_factor(i: int, total: int, schedule_fn, options: dict, warmup: int = 0) -> float:
    """The schedule's factor at step i, times a linear warmup from 0 over `warmup` steps (min(1, i / warmup))."""
    factor = schedule_fn(i, total, options)
    if warmup > 0:
        factor *= min(1.0, i / warmup)
    return factor
