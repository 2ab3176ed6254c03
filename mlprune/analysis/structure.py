"""Emergent structure: entirely pruned units per layer vs what random pruning of the same
structure would give at the same sparsity.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from fractions import Fraction

import numpy as np
import torch

from ..errors import SpecError


def prob_unit_pruned(n: int, k: int, s: int) -> float:
    """P(a given unit of ``s`` weights is entirely pruned) under random unstructured pruning.

    With ``n`` weights of which ``k`` are kept uniformly at random, the kept set
    avoids a fixed group of ``s`` weights with probability C(n-s, k) / C(n, k)
    (hypergeometric) = prod_{i<s} (n-k-i) / (n-i). Computed with exact integer
    arithmetic for small ``n`` and as a sum of ``log1p`` terms otherwise.
    """
    if not (0 <= k <= n and 0 <= s <= n):
        raise SpecError(f"prob_unit_pruned needs 0 <= k, s <= n; got n={n}, k={k}, s={s}")
    if s == 0 or k == 0:
        return 1.0
    if k > n - s:
        return 0.0
    if n <= 4096:
        return float(Fraction(math.comb(n - s, k), math.comb(n, k)))
    i = np.arange(s, dtype=np.float64)
    logp = math.fsum(np.log1p(-k / (n - i)).tolist())
    return math.exp(logp)


def _alive_along(m: torch.Tensor, dim: int) -> torch.Tensor:
    return m.transpose(0, dim).reshape(m.shape[dim], -1).any(dim=1)


def _slice_structure(m: torch.Tensor) -> tuple:
    """The dims along which a mask is made of whole slices: (), (0,), (1,) or (0, 1)."""
    if m.dim() < 2 or bool(m.all()):
        return ()
    shape = [1] * m.dim()
    along = []
    keep = {}
    for dim in (0, 1):
        view = list(shape)
        view[dim] = -1
        keep[dim] = _alive_along(m, dim).view(view)
        if torch.equal(m, keep[dim].expand_as(m)):
            along.append(dim)
    if along:
        return tuple(along)
    if torch.equal(m, (keep[0] & keep[1]).expand_as(m)):
        return (0, 1)
    return ()


_UNITS = {
    ("conv", 0): "output channels (filters)",
    ("conv", 1): "input channels",
    ("linear", 0): "output neurons",
    ("linear", 1): "input features",
}


def emergent_structure(
    masks: Mapping[str, torch.Tensor], kinds: Mapping[str, str] | None = None, *, structured: Iterable[str] = ()
) -> dict[str, dict]:
    """Entirely-pruned units per layer vs what random pruning of the same granularity would give.

    For each masked parameter (in ``kinds`` order, then any others), for dim 0
    (output channels / neurons) and dim 1 (input channels / features): a unit is
    the slice ``w[i]`` resp. ``w[:, j]``; it is *entirely pruned* when all its
    weights are masked. Returns::

        {name: {"kind": "conv"|"linear", "output_layer": bool, "n_weights": N,
                "n_kept": K, "sparsity": 1 - K/N,
                "dim0": {"unit": "output channels (filters)", "units": n,
                         "unit_size": s, "pruned_units": p, "observed": p/n,
                         "expected": C(N-s, K)/C(N, K), "ratio": observed/expected},
                "dim1": {...}}}

    The baseline is random pruning *of the same structure* at the same per-layer
    sparsity (``entry["baseline"]``). ``structured`` names the parameters that were
    pruned by removing whole slices (structured methods only: the caller knows from
    the lineage, `report.structure` reads it); their masks' slice dims are read from
    the masks. Any other parameter is compared with random unstructured pruning:
    inferring structure from the mask alone would mistake a very sparse unstructured
    mask (a single kept weight is a "product of slices") for a structured one.

    - weight-by-weight (unstructured) pruning: random unstructured pruning; ``expected`` is the exact
      probability that a given unit is entirely pruned when K of the layer's N
      weights are kept uniformly at random, i.e. the expected fraction of entirely
      pruned units;
    - a mask made of whole slices along dim d (structured pruning): random
      structured pruning removing as many slices along d; units along d are pruned
      by construction (expected = observed: ratio 1), units along the other dim
      only if every slice goes. Comparing such a mask with unstructured random
      pruning would report astronomical ratios that say nothing (granularity, not
      emergence);
    - whole slices along both dims: random structured pruning along both.

    ``ratio`` is ``observed / expected``; when ``expected`` is 0 it is ``inf`` if
    some unit is pruned and ``nan`` (undefined) otherwise. Parameters with fewer
    than 2 dimensions only get ``dim0``. ``kinds`` (``models.prunable``) names
    the layer kind; without an entry the kind is inferred ("conv" for >= 3 dims).
    """
    kinds = dict(kinds or {})
    structured = set(structured)
    last = next(reversed(kinds)) if kinds else None
    order = [n for n in kinds if n in masks] + [n for n in masks if n not in kinds]
    out: dict[str, dict] = {}
    for name in order:
        m = masks[name].bool()
        kind = kinds.get(name) or ("conv" if m.dim() >= 3 else "linear")
        n_w = int(m.numel())
        n_k = int(m.sum())
        entry: dict = {
            "kind": kind,
            "output_layer": name == last,
            "n_weights": n_w,
            "n_kept": n_k,
            "sparsity": (n_w - n_k) / n_w if n_w else 0.0,
        }
        structure = _slice_structure(m) if name in structured else ()
        entry["baseline"] = {
            (): "random unstructured",
            (0,): "random structured (dim 0)",
            (1,): "random structured (dim 1)",
            (0, 1): "random structured (dims 0 and 1)",
        }[structure]
        for dim in (0, 1):
            if dim < m.dim() and m.shape[dim] != 0:
                entry[f"dim{dim}"] = _units_along(m, dim, kind, structure)
        out[name] = entry
    return out


def _units_along(m: torch.Tensor, dim: int, kind: str, structure: tuple) -> dict:
    """`emergent_structure`'s entry of the units along `dim` of the bool mask `m` (`structure`: the dims it
    was pruned along as whole slices, () for weight by weight)."""
    n_w, n_k = int(m.numel()), int(m.sum())
    units = int(m.shape[dim])
    size = n_w // units
    alive = m.transpose(0, dim).reshape(units, -1).any(dim=1)
    pruned = int((~alive).sum())
    observed = pruned / units
    if not structure:
        expected = prob_unit_pruned(n_w, n_k, size)
    elif dim in structure:
        expected = observed  # the same number of slices removed at random: pruned by construction
    else:  # a unit across the removed slices is entirely pruned only when every slice is
        expected = float(all(_alive_along(m, d).sum() == 0 for d in structure))
    if expected > 0:
        ratio = observed / expected
    else:
        ratio = math.inf if pruned else math.nan
    return {
        "unit": _UNITS.get((kind, dim), f"dim {dim} slices"),
        "units": units,
        "unit_size": size,
        "pruned_units": pruned,
        "observed": observed,
        "expected": expected,
        "ratio": ratio,
    }


def nm_pattern(masks: Mapping[str, torch.Tensor], n: int = 2, m: int = 4) -> dict:
    """{layer: {"groups", "following"}}: of the groups of `m` consecutive inputs (a weight's dim 1, at each
    output and kernel position), how many keep at most `n` weights; layers whose input size does not
    divide by `m` are left out (the N:M pattern does not apply to them)."""
    out = {}
    for name, mask in masks.items():
        if mask.dim() < 2 or mask.shape[1] % m:
            continue
        groups = mask.to(torch.bool).movedim(1, -1).reshape(-1, m).sum(dim=1)
        out[name] = {"groups": int(groups.numel()), "following": int((groups <= n).sum())}
    return out


def follows_nm(masks: Mapping[str, torch.Tensor], n: int = 2, m: int = 4) -> bool:
    """Whether every layer the N:M pattern applies to follows it (and one does)."""
    layers = nm_pattern(masks, n, m)
    return bool(layers) and all(v["following"] == v["groups"] for v in layers.values())
