"""Analysis of pruning states: pure functions on masks and weights.

Conventions (see docs/architecture.md):

- weights: ``dict[str, Tensor]`` keyed by ``state_dict`` names;
- masks: ``dict[str, BoolTensor]``, one entry per prunable parameter, ``True`` = kept;
- kinds: ordered ``{param name: "conv" | "linear"}`` (``models.prunable``), the last
  entry is the output layer.

Nothing here imports mlflow or touches the global RNG; randomness comes in as a
``torch.Generator``. Bad input raises :class:`mlprune.errors.SpecError` with a
one-line message.

Definitions used throughout (they are part of the contract, tests pin them):

- **sparsity** = masked prunable weights / all prunable weights (from the masks,
  not from counting zeros: a kept weight that happens to be 0.0 is still kept).
- **remaining fraction** = 1 - sparsity.
- **compression ratio** (:func:`compression_ratio`) = prunable weights / kept
  prunable weights. ShrinkBench defines it over *all* parameters (total / nonzero);
  :func:`compression_ratio_all` gives that variant, with non-prunable parameters
  (biases, batch-norm affine parameters, ...) counted as kept and prunable ones
  counted from the masks. A ratio with nothing kept is ``inf``.
- **FLOPs** (:func:`flops`) = multiply-adds of convolution and linear layers for
  one input of batch size 1 (ShrinkBench's convention); biases, activations,
  pooling and normalization are not counted.
- **Jaccard** of two masks = |kept in both| / |kept in either|; 1.0 when neither
  keeps anything (two empty sets are identical).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction

import numpy as np
import torch
from torch import nn

from mlprune.errors import SpecError

__all__ = [
    "sparsity",
    "remaining_fraction",
    "compression_ratio",
    "compression_ratio_all",
    "flops",
    "jaccard",
    "jaccard_matrix",
    "prob_unit_pruned",
    "emergent_structure",
    "weight_stability",
    "weight_trajectories",
    "accuracy_vs_remaining",
    "interpolation_alphas",
    "interpolate_weights",
    "barrier_height",
]


# --------------------------------------------------------------------------- sparsity


def _counts(masks: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """(total prunable weights, kept prunable weights)."""
    total = sum(int(m.numel()) for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return total, kept


def sparsity(masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Fraction of prunable weights masked: globally and per parameter.

    Returns ``{"sparsity": s, "sparsity.<param>": s_param, ...}`` -- the exact
    metric names logged on every state. With no prunable weights at all the
    global sparsity is 0.0; an empty parameter has sparsity 0.0.
    """
    out: dict[str, float] = {}
    total, kept = _counts(masks)
    out["sparsity"] = (total - kept) / total if total else 0.0
    for name, m in masks.items():
        n = int(m.numel())
        out[f"sparsity.{name}"] = (n - int(m.sum())) / n if n else 0.0
    return out


def remaining_fraction(masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of prunable weights kept (1 - global sparsity); 1.0 with no prunable weights."""
    total, kept = _counts(masks)
    return kept / total if total else 1.0


def compression_ratio(masks: Mapping[str, torch.Tensor]) -> float:
    """Prunable weights / kept prunable weights (1.0 when dense, ``inf`` when all pruned)."""
    total, kept = _counts(masks)
    if total == 0:
        return 1.0
    return total / kept if kept else math.inf


def compression_ratio_all(masks: Mapping[str, torch.Tensor], params) -> float:
    """ShrinkBench's compression ratio: all parameters / remaining parameters.

    ``params`` is an ``nn.Module`` (its ``named_parameters()``; buffers such as
    batch-norm running statistics are not parameters and are not counted) or a
    mapping name -> tensor of the parameters to count (floating-point tensors
    only; pass ``dict(model.named_parameters())``, not a ``state_dict`` with
    buffers). Masked parameters count their kept entries; every other parameter
    counts in full (unlike ShrinkBench we do not count accidental zeros as pruned).
    """
    if isinstance(params, nn.Module):
        items = dict(params.named_parameters())
    else:
        items = {k: v for k, v in params.items() if torch.is_floating_point(v)}
    missing = sorted(set(masks) - set(items))
    if missing:
        raise SpecError(f"masks name parameters the model does not have: {', '.join(missing)}")
    total = remaining = 0
    for name, p in items.items():
        total += int(p.numel())
        remaining += int(masks[name].sum()) if name in masks else int(p.numel())
    if total == 0:
        return 1.0
    return total / remaining if remaining else math.inf


# ------------------------------------------------------------------------------ FLOPs

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def flops(model: nn.Module, input_shape: Sequence[int], masks: Mapping[str, torch.Tensor] | None = None) -> dict:
    """Multiply-adds of the convolution and linear layers, dense and masked.

    Counted with forward hooks on one all-zeros input of batch size 1
    (``input_shape`` is ``(C, H, W)``; a leading batch dimension of 1 is also
    accepted). For a convolution each weight is used once per output position:
    dense = weight.numel() x output positions (H x W for Conv2d), masked = kept
    weights x output positions. For a linear layer dense = weight.numel() (times
    the number of positions when the input has extra dimensions), masked = kept
    weights (times positions). Biases, activations, pooling, normalization and
    transposed convolutions are not counted (ShrinkBench's convention). A module
    called twice in a forward pass counts twice. Layers without a mask entry count
    as dense.

    Returns ``{"flops_dense": int, "flops_masked": int, "theoretical_speedup": float}``
    where the speedup is dense / masked (``inf`` if nothing is left, 1.0 for a
    model without conv/linear layers).
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    masks = masks or {}
    counts = {"dense": 0, "masked": 0}
    hooks = []

    def make_hook(wname: str):
        def hook(module, inputs, output):
            w = module.weight
            if isinstance(module, _CONVS):
                positions = output.numel() // output.shape[1]  # batch 1: product of spatial dims
            else:
                positions = output.numel() // module.out_features
            kept = int(masks[wname].sum()) if wname in masks else int(w.numel())
            counts["dense"] += int(w.numel()) * positions
            counts["masked"] += kept * positions

        return hook

    for mname, module in model.named_modules():
        if isinstance(module, (*_CONVS, nn.Linear)) and getattr(module, "weight", None) is not None:
            wname = f"{mname}.weight" if mname else "weight"
            if wname in masks and tuple(masks[wname].shape) != tuple(module.weight.shape):
                raise SpecError(
                    f"mask {wname!r} has shape {tuple(masks[wname].shape)}, weight has {tuple(module.weight.shape)}"
                )
            hooks.append(module.register_forward_hook(make_hook(wname)))
    try:
        ref = next(model.parameters(), None)
        x = torch.zeros((1, *shape), dtype=ref.dtype if ref is not None else torch.float32,
                        device=ref.device if ref is not None else "cpu")
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                model(x)
        finally:
            model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    dense, masked = counts["dense"], counts["masked"]
    if dense == 0:
        speedup = 1.0
    else:
        speedup = dense / masked if masked else math.inf
    return {"flops_dense": dense, "flops_masked": masked, "theoretical_speedup": speedup}


# ---------------------------------------------------------------------------- Jaccard


def _check_same_architecture(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> None:
    if set(a) != set(b):
        only_a = sorted(set(a) - set(b))
        only_b = sorted(set(b) - set(a))
        raise SpecError(
            "states of different architectures: parameters only in the first: "
            f"{', '.join(only_a) or '-'}; only in the second: {', '.join(only_b) or '-'}"
        )
    for name in a:
        if tuple(a[name].shape) != tuple(b[name].shape):
            raise SpecError(
                f"states of different architectures: {name!r} has shape "
                f"{tuple(a[name].shape)} vs {tuple(b[name].shape)}"
            )


def _ratio(inter: int, union: int) -> float:
    return inter / union if union else 1.0


def jaccard(masks_a: Mapping[str, torch.Tensor], masks_b: Mapping[str, torch.Tensor]) -> dict:
    """Jaccard similarity of the KEPT weights of two mask sets.

    ``{"overall": |A∩B| / |A∪B| over all prunable weights, "per_layer": {name: ...}}``;
    a pair where neither keeps anything has Jaccard 1.0. Parameter names and
    shapes must match (else ``SpecError``: "states of different architectures: ...").
    """
    _check_same_architecture(masks_a, masks_b)
    per_layer = {}
    inter_all = union_all = 0
    for name in masks_a:
        a = masks_a[name].bool()
        b = masks_b[name].bool()
        inter = int((a & b).sum())
        union = int((a | b).sum())
        per_layer[name] = _ratio(inter, union)
        inter_all += inter
        union_all += union
    return {"overall": _ratio(inter_all, union_all), "per_layer": per_layer}


def jaccard_matrix(
    mask_list: Sequence[Mapping[str, torch.Tensor]],
    labels: Sequence[str] | None = None,
    layer: str | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Pairwise Jaccard matrix (symmetric, 1.0 on the diagonal) of several mask sets.

    ``layer`` restricts it to one parameter (default: overall over all prunable
    weights). Labels default to "0", "1", ...; returns ``(matrix, labels)``.
    """
    n = len(mask_list)
    labels = [str(i) for i in range(n)] if labels is None else [str(lab) for lab in labels]
    if len(labels) != n:
        raise SpecError(f"jaccard_matrix got {len(labels)} labels for {n} mask sets")
    if layer is not None:
        for masks in mask_list:
            if layer not in masks:
                raise SpecError(f"unknown layer {layer!r}; allowed: {', '.join(sorted(masks))}")
    mat = np.ones((n, n), dtype=float)
    for i in range(n):
        for j in range(i + 1, n):
            res = jaccard(mask_list[i], mask_list[j])
            v = res["overall"] if layer is None else res["per_layer"][layer]
            mat[i, j] = mat[j, i] = v
    return mat, labels


# --------------------------------------------------------------- emergent structure


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
        entry["baseline"] = {(): "random unstructured", (0,): "random structured (dim 0)",
                             (1,): "random structured (dim 1)", (0, 1): "random structured (dims 0 and 1)"}[structure]
        for dim in (0, 1):
            if dim >= m.dim() or m.shape[dim] == 0:
                continue
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
            entry[f"dim{dim}"] = {
                "unit": _UNITS.get((kind, dim), f"dim {dim} slices"),
                "units": units,
                "unit_size": size,
                "pruned_units": pruned,
                "observed": observed,
                "expected": expected,
                "ratio": ratio,
            }
        out[name] = entry
    return out


# ------------------------------------------------------------------ weight stability


def _check_series(weight_series, mask_series) -> list[str]:
    if len(weight_series) != len(mask_series):
        raise SpecError(
            f"weight_series has {len(weight_series)} states but mask_series has {len(mask_series)}"
        )
    if not mask_series:
        raise SpecError("weight_series / mask_series are empty; need at least one state")
    names = list(mask_series[0])
    for t, (w, m) in enumerate(zip(weight_series, mask_series)):
        _check_same_architecture(mask_series[0], m)
        for name in names:
            if name not in w:
                raise SpecError(f"state {t} has a mask for {name!r} but no such weight")
            if tuple(w[name].shape) != tuple(m[name].shape):
                raise SpecError(
                    f"state {t}: weight {name!r} has shape {tuple(w[name].shape)}, "
                    f"mask has {tuple(m[name].shape)}"
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


# ----------------------------------------------------------- accuracy vs remaining

_REQUIRED = ("recipe", "round", "remaining", "test_accuracy", "seed")


def _is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return mean, std


def accuracy_vs_remaining(rows: Sequence[Mapping]) -> list[dict]:
    """Aggregate test accuracy over seeds per (recipe, round).

    Each row: ``{"recipe", "round", "remaining" (fraction of prunable weights kept,
    0..1), "test_accuracy" (fraction, 0..1), "seed", optional
    "early_stop_iteration"}``. Rows whose ``test_accuracy`` is None/NaN are
    skipped (e.g. a state not yet evaluated). Returns a list of dicts sorted by
    recipe (first-appearance order) then round::

        {"recipe", "round", "n", "seeds": [...], "remaining", "remaining_std",
         "mean", "std", ["early_stop_iteration", "early_stop_iteration_std",
         "early_stop_n"], ["early_stop_test_accuracy", "early_stop_test_accuracy_std"]}

    ``std`` is the sample standard deviation (ddof=1) over seeds, 0.0 when n == 1
    (look at ``n``). ``remaining`` is the mean over seeds. Two rows with the same
    (recipe, round, seed) are an error.
    """
    groups: dict[tuple, list[Mapping]] = {}
    recipe_order: dict = {}
    for i, row in enumerate(rows):
        missing = [k for k in _REQUIRED if k not in row]
        if missing:
            raise SpecError(f"row {i} lacks {', '.join(missing)}; rows need {', '.join(_REQUIRED)}")
        if _is_missing(row["test_accuracy"]):
            continue
        rem = float(row["remaining"])
        if not 0.0 <= rem <= 1.0:
            raise SpecError(f"row {i}: remaining={rem!r} is not a fraction in [0, 1]")
        recipe_order.setdefault(row["recipe"], len(recipe_order))
        groups.setdefault((row["recipe"], row["round"]), []).append(row)
    out = []
    for (recipe, rnd) in sorted(groups, key=lambda g: (recipe_order[g[0]], g[1])):
        grp = groups[(recipe, rnd)]
        seeds = [r["seed"] for r in grp]
        if len(set(seeds)) != len(seeds):
            dup = sorted({s for s in seeds if seeds.count(s) > 1}, key=str)
            raise SpecError(f"recipe {recipe!r} round {rnd!r} has several rows for seed(s) {dup}")
        acc_mean, acc_std = _mean_std([float(r["test_accuracy"]) for r in grp])
        rem_mean, rem_std = _mean_std([float(r["remaining"]) for r in grp])
        agg = {
            "recipe": recipe,
            "round": rnd,
            "n": len(grp),
            "seeds": seeds,
            "remaining": rem_mean,
            "remaining_std": rem_std,
            "mean": acc_mean,
            "std": acc_std,
        }
        es = [float(r["early_stop_iteration"]) for r in grp if not _is_missing(r.get("early_stop_iteration"))]
        if es:
            agg["early_stop_iteration"], agg["early_stop_iteration_std"] = _mean_std(es)
            agg["early_stop_n"] = len(es)
        at_stop = [float(r["early_stop_test_accuracy"]) for r in grp
                   if not _is_missing(r.get("early_stop_test_accuracy"))]
        if at_stop:
            agg["early_stop_test_accuracy"], agg["early_stop_test_accuracy_std"] = _mean_std(at_stop)
        out.append(agg)
    return out


# ------------------------------------------------- linear interpolation, instability


def interpolation_alphas(points: int) -> list[float]:
    """``points`` evenly spaced α in [0, 1], both endpoints included: α_i = i / (points - 1).

    The first is exactly 0.0 and the last exactly 1.0.
    """
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise SpecError(f"an interpolation needs an integer >= 2 of points (both endpoints), got {points!r}")
    return [i / (points - 1) for i in range(points)]


def interpolate_weights(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], alpha: float,
                        masks: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
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
