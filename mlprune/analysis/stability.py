"""Weight stability across rounds: masks' Jaccard, cosine and relative L2 change of kept weights,
sampled weight trajectories.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..errors import SpecError
from .similarity import check_same_architecture, jaccard


def _check_series(weight_series, mask_series) -> list[str]:
    if len(weight_series) != len(mask_series):
        raise SpecError(f"weight_series has {len(weight_series)} states but mask_series has {len(mask_series)}")
    if not mask_series:
        raise SpecError("weight_series / mask_series are empty; need at least one state")
    names = list(mask_series[0])
    for t, (w, m) in enumerate(zip(weight_series, mask_series)):
        check_same_architecture(mask_series[0], m)
        for name in names:
            if name not in w:
                raise SpecError(f"state {t} has a mask for {name!r} but no such weight")
            if tuple(w[name].shape) != tuple(m[name].shape):
                raise SpecError(
                    f"state {t}: weight {name!r} has shape {tuple(w[name].shape)}, mask has {tuple(m[name].shape)}"
                )
    return names


def _cos_rel(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    a = a.double()
    b = b.double()
    na = float(a.norm())
    nb = float(b.norm())
    cos = float((a * b).sum()) / (na * nb) if na > 0 and nb > 0 else math.nan
    rel = float((b - a).norm()) / na if na > 0 else math.nan
    return cos, rel


def weight_stability(
    weight_series: Sequence[Mapping[str, torch.Tensor]],
    mask_series: Sequence[Mapping[str, torch.Tensor]],
) -> dict:
    """How masks and kept weights change between consecutive states (rounds).

    For each transition t -> t+1 (lists of length ``len(states) - 1``), per layer
    and overall (all prunable weights together):

    - ``jaccard``: Jaccard of the kept sets of masks t and t+1;
    - ``cosine``: cosine similarity between the weights at t and t+1, restricted
      to the weights kept in BOTH masks;
    - ``relative_l2``: ||w_{t+1} - w_t|| / ||w_t|| on the same weights;
    - ``n_common``: how many weights are kept in both.

    ``cosine`` / ``relative_l2`` are ``nan`` when undefined (no common weights or
    a zero norm). Returns ``{"transitions": ["0->1", ...], "jaccard": {"overall":
    [...], "per_layer": {name: [...]}}, "cosine": {...}, "relative_l2": {...},
    "n_common": {...}}``.
    """
    names = _check_series(weight_series, mask_series)
    T = len(mask_series)
    measures = ("jaccard", "cosine", "relative_l2", "n_common")
    out: dict = {"transitions": [f"{t}->{t + 1}" for t in range(T - 1)]}
    for key in measures:
        out[key] = {"overall": [], "per_layer": {n: [] for n in names}}
    for t in range(T - 1):
        m0, m1 = mask_series[t], mask_series[t + 1]
        w0, w1 = weight_series[t], weight_series[t + 1]
        jac = jaccard(m0, m1)
        out["jaccard"]["overall"].append(jac["overall"])
        a_all, b_all = [], []
        for name in names:
            out["jaccard"]["per_layer"][name].append(jac["per_layer"][name])
            common = (m0[name].bool() & m1[name].bool()).flatten()
            a = w0[name].detach().flatten()[common]
            b = w1[name].detach().flatten()[common]
            a_all.append(a)
            b_all.append(b)
            cos, rel = _cos_rel(a, b)
            out["cosine"]["per_layer"][name].append(cos)
            out["relative_l2"]["per_layer"][name].append(rel)
            out["n_common"]["per_layer"][name].append(int(common.sum()))
        a = torch.cat(a_all) if a_all else torch.zeros(0)
        b = torch.cat(b_all) if b_all else torch.zeros(0)
        cos, rel = _cos_rel(a, b)
        out["cosine"]["overall"].append(cos)
        out["relative_l2"]["overall"].append(rel)
        out["n_common"]["overall"].append(int(a.numel()))
    return out


def weight_trajectories(
    weight_series: Sequence[Mapping[str, torch.Tensor]],
    mask_series: Sequence[Mapping[str, torch.Tensor]],
    param: str,
    k: int = 20,
    generator: torch.Generator | None = None,
    return_indices: bool = False,
):
    """Values of ``k`` sampled weights of ``param`` across the states, NaN once pruned.

    The weights are drawn uniformly without replacement among those kept in the
    first state (all of them if fewer than ``k``) using ``generator`` (default: a
    fresh generator seeded 0, so the sample is reproducible; the global RNG is
    never touched), and returned in flat-index order. Row i, column t is the value
    of weight i in state t; from the first state in which the weight is masked
    onward it is NaN (even if a later mask revives it), so a plotted line ends
    where the weight was pruned. Returns a float64 array of shape
    ``(k', len(states))``; with ``return_indices=True`` also the flat indices.
    """
    _check_series(weight_series, mask_series)
    if param not in mask_series[0]:
        raise SpecError(f"unknown parameter {param!r}; allowed: {', '.join(sorted(mask_series[0]))}")
    if k < 0:
        raise SpecError(f"k must be >= 0, got {k}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    kept0 = torch.nonzero(mask_series[0][param].flatten().bool()).flatten()
    perm = torch.randperm(kept0.numel(), generator=generator)[:k]
    idx = kept0[perm].sort().values
    T = len(weight_series)
    values = np.full((idx.numel(), T), np.nan, dtype=np.float64)
    alive = torch.ones(idx.numel(), dtype=torch.bool)
    for t in range(T):
        alive &= mask_series[t][param].flatten().bool()[idx]
        w = weight_series[t][param].detach().flatten()[idx].double().numpy()
        values[:, t] = np.where(alive.numpy(), w, np.nan)
    if return_indices:
        return values, idx.numpy()
    return values
