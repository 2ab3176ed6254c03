"""The criteria of LAMP, N:M, Taylor, FPGM and BN-scale: pure tensor functions (no mlflow, no global RNG).

* ``lamp`` (Lee et al. 2021, "Layer-adaptive sparsity for the magnitude-based pruning"): a weight u
  of a layer whose remaining weights sorted by magnitude are ``w_1, ..., w_n`` (ascending) scores
  ``w_u² / Σ_{v >= u} w_v²``: its squared magnitude over the squared magnitudes of itself and every
  larger remaining weight of its layer. The largest weight of every layer scores 1, so the global
  selection by this score never empties a layer. Pruned weights are no candidates (score 0).
* ``nm`` (N:M semi-structured sparsity, Mishra et al. 2021; Zhou et al. 2021): in every group of M
  consecutive weights along the input dimension (a linear layer's ``in_features``; a conv's input
  channels, at each output channel and kernel position), the N of largest magnitude stay. A pruned
  weight is never kept again, so a group keeps at most N.
* ``fpgm`` (He et al. 2019, "Filter Pruning via Geometric Median"): a slice (a filter along dim 0)
  scores the sum of its Euclidean distances to the layer's other remaining slices; the slices
  nearest the geometric median (the smallest sums) go first: they are the ones the others replace.
* ``taylor`` (Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning"): a slice
  scores ``|Σ_{s in slice} w_s · ∂L/∂w_s|``, the first-order change of the loss when the slice is
  removed, with ``∂L/∂w`` the gradient of the loss summed over the scoring batches.
* ``bn_scale`` (Liu et al. 2017, "Learning Efficient Convolutional Networks through Network
  Slimming"): an output channel scores ``|γ_c|``, the scale of the BatchNorm right after its layer.

The slice criteria rank *values*: for FPGM the effective weights, for Taylor ``w · ∂L/∂w`` and for
BN-scale ``|γ|`` spread over each channel's slice (`pruning.scores`: ``taylor``, ``bn_scale``). The
slice functions have the signatures of `pruning.masks`: ``(remaining slices, dim, k, generator,
options) -> indices to keep`` and, for coupled pruning, ``(one vector per unit, k, generator,
options) -> indices to keep``. ``invert`` keeps the lowest scores instead (a sanity check).
"""

from __future__ import annotations

import torch

from ..errors import SpecError


def lamp_scores(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """LAMP's score of every remaining weight of one layer (float64; 0 where pruned)."""
    squared = (weight.detach().to(torch.float64) ** 2).reshape(-1)
    keep = mask.reshape(-1).to(torch.bool)
    candidates = keep.nonzero().squeeze(1)
    values = squared[candidates]
    order = torch.argsort(values, stable=True)  # ascending: u <= v when w_u² <= w_v²
    ascending = values[order]
    larger = torch.flip(torch.cumsum(torch.flip(ascending, [0]), 0), [0])  # Σ_{v >= u} w_v²
    scores = torch.zeros_like(squared)
    ranked = torch.where(larger > 0, ascending / torch.where(larger > 0, larger, 1.0), 0.0)
    scores[candidates[order]] = ranked
    return scores.reshape(weight.shape)


def lamp(weights: dict, masks: dict, options: dict) -> dict:
    """LAMP's keep scores of every masked layer: {name: scores}."""
    return {name: lamp_scores(weights[name], mask) for name, mask in masks.items()}


def check_nm(n, m, shape=None, name: str = "") -> bool:
    """Whether a weight of `shape` takes the N:M pattern (its input size divides by m); n <= m checked."""
    if not 1 <= n < m:
        raise SpecError(f"invalid N:M pattern {n}:{m}; allowed: 1 <= n < m")
    return shape is None or (len(shape) >= 2 and shape[1] % m == 0)


def nm_mask(weight: torch.Tensor, mask: torch.Tensor, n: int, m: int, invert: bool = False) -> torch.Tensor:
    """The N:M mask of one weight: in each group of `m` consecutive inputs the `n` largest |w| of the
    remaining ones stay (the smallest with `invert`); the input size must divide by `m`."""
    if not check_nm(n, m, tuple(weight.shape)):
        raise SpecError(f"N:M {n}:{m} needs an input size that divides by {m}, got shape {tuple(weight.shape)}")
    moved = weight.detach().abs().to(torch.float64).movedim(1, -1)
    alive = mask.to(torch.bool).movedim(1, -1)
    score = -moved if invert else moved
    score = score.masked_fill(~alive, -torch.inf)  # pruned weights are kept last, then not at all
    groups = score.reshape(-1, m)
    kept = torch.zeros_like(groups, dtype=torch.bool)
    kept.scatter_(1, torch.topk(groups, n, dim=1).indices, True)
    kept = kept.reshape(moved.shape) & alive
    return kept.movedim(-1, 1).contiguous()


def nm_pattern(weight: torch.Tensor, mask: torch.Tensor, options: dict):
    """(new mask, note) of the ``nm`` method for one layer: the N:M mask, or the mask unchanged with a
    note when the layer's input size does not divide by m (it stays as it is)."""
    n, m = options["n"], options["m"]
    if not check_nm(n, m, tuple(weight.shape)):
        inputs = weight.shape[1] if weight.dim() >= 2 else weight.numel()
        return mask.clone(), f"input size {inputs} does not divide by {m}: left as it is"
    return nm_mask(weight, mask, n, m, options.get("invert", False)), None


def _ranked(score: torch.Tensor, k: int, options: dict) -> torch.Tensor:
    """Indices of the ``len(score) - k`` highest scores (the lowest with ``invert``)."""
    return torch.topk(score, score.numel() - k, largest=not options.get("invert", False)).indices


def _flat(slices: torch.Tensor, dim: int) -> torch.Tensor:
    return slices.movedim(dim, 0).reshape(slices.shape[dim], -1)


def fpgm_distances(vectors: torch.Tensor) -> torch.Tensor:
    """FPGM's score of each row: the sum of its Euclidean distances to every row (float64)."""
    rows = vectors.to(torch.float64)
    return torch.cdist(rows, rows, p=2).sum(dim=1)


def keep_fpgm(slices, dim, k, generator, options):
    return _ranked(fpgm_distances(_flat(slices, dim)), k, options)


def keep_fpgm_units(vectors, k, generator, options):
    if len({v.numel() for v in vectors}) > 1:
        raise SpecError(
            "fpgm compares the channels of a group by their distances; the channels of this group "
            "differ in size (a residual group across stages); allowed: a layer-wise fpgm step "
            "(coupled: false) or another method"
        )
    return _ranked(fpgm_distances(torch.stack([v.reshape(-1) for v in vectors])), k, options)


def keep_taylor(values, dim, k, generator, options):
    return _ranked(_flat(values, dim).to(torch.float64).sum(dim=1).abs(), k, options)


def keep_taylor_units(vectors, k, generator, options):
    return _ranked(torch.stack([v.to(torch.float64).sum().abs() for v in vectors]), k, options)


def keep_bn_scale(values, dim, k, generator, options):
    return _ranked(_flat(values, dim).abs().amax(dim=1).to(torch.float64), k, options)


def keep_bn_scale_units(vectors, k, generator, options):
    return _ranked(
        torch.stack(
            [v.abs().amax().to(torch.float64) if v.numel() else torch.zeros((), dtype=torch.float64) for v in vectors]
        ),
        k,
        options,
    )
