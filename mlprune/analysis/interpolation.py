"""Linear interpolation between two networks: the points of the path, the masked weights at a
point, the barrier (instability) of a curve along it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from ..errors import SpecError


def interpolation_alphas(points: int) -> list[float]:
    """``points`` evenly spaced α in [0, 1], both endpoints included: α_i = i / (points - 1).

    The first is exactly 0.0 and the last exactly 1.0.
    """
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise SpecError(f"an interpolation needs an integer >= 2 of points (both endpoints), got {points!r}")
    return [i / (points - 1) for i in range(points)]


def interpolate_weights(
    a: Mapping[str, torch.Tensor],
    b: Mapping[str, torch.Tensor],
    alpha: float,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The network ``(1 - α)·a + α·b``, masks applied (pruned entries exactly 0 in between; the ends are
    a and b as they are, whose pruned entries are 0 already).

    Every floating-point tensor is interpolated (BatchNorm running statistics too: see
    ``training.loop.recompute_batchnorm`` for why they are then recomputed); other tensors
    (``num_batches_tracked``) are a's. α = 0 gives a's tensors and α = 1 b's, bit for bit: the
    path's endpoints are the two states themselves. In between, ``torch.lerp`` computes the
    same point as the formula to float rounding (where a == b it is exactly a).
    """
    if set(a) != set(b):
        extra = sorted(set(a) ^ set(b))
        raise SpecError(f"cannot interpolate networks with different tensors ({extra[0]!r} is in one only)")
    alpha = float(alpha)
    if not (math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
        raise SpecError(f"alpha must be in [0, 1], got {alpha!r}")
    out = {}
    for name, ta in a.items():
        tb = b[name]
        if tuple(ta.shape) != tuple(tb.shape):
            raise SpecError(f"cannot interpolate {name!r}: shapes {tuple(ta.shape)} and {tuple(tb.shape)} differ")
        if alpha == 0.0 or not ta.is_floating_point():
            out[name] = ta.clone()
        elif alpha == 1.0:
            out[name] = tb.clone()
        else:
            value = torch.lerp(ta, tb.to(ta.dtype), alpha)
            if masks is not None and name in masks:
                value = value.masked_fill(~masks[name].to(torch.bool), 0.0)
            out[name] = value
    return out


def barrier_height(values: Sequence[float]) -> float:
    """The height of the barrier on a path: ``max(values) - (values[0] + values[-1]) / 2``.

    With the test errors at evenly spaced α this is the *instability* of Frankle et al.
    (2020, "Linear Mode Connectivity and the Lottery Ticket Hypothesis"): the largest error
    along the linear path minus the mean of the two endpoints' errors; >= 0, 0 when the
    path is no worse than its ends. With losses, the loss barrier.
    """
    values = [float(v) for v in values]
    if len(values) < 2:
        raise SpecError(f"a barrier needs the values at both endpoints at least, got {len(values)}")
    if any(math.isnan(v) for v in values):
        return float("nan")
    return max(values) - (values[0] + values[-1]) / 2
