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


# ---- gradual pruning: the sparsity a training prunes to, at each pruning step ------------------------


def agp_shape(progress: float) -> float:
    """Zhu & Gupta's s_t = s_f + (s_i - s_f)(1 - progress)^3, as the share of the way from s_i to s_f."""
    return 1.0 - (1.0 - progress) ** 3


def linear_shape(progress: float) -> float:
    return progress


def pruning_steps(start: int, end: int, every: int) -> list[int]:
    """The iterations at which gradual pruning prunes: start, start + every, ..., and always end
    (Zhu & Gupta's t0, t0 + Δt, ..., t0 + nΔt; a window that is not a multiple of Δt ends at `end`)."""
    steps = list(range(start, end, every))
    return steps + [end]


def target_sparsity(i: int, start: int, end: int, initial: float, final: float, shape) -> float:
    """The sparsity due at pruning step `i` (an iteration in [start, end]) of a window start..end."""
    progress = 1.0 if end == start else min(max((i - start) / (end - start), 0.0), 1.0)
    return initial + (final - initial) * shape(progress)
