"""Mask computation: pure tensor functions (effective weights, amount, previous mask) -> new mask.

The rules (amounts, rounding, small layers, tie-breaking, step specs) are documented in
the package docstring (`mlprune.pruning`); the methods' entries are `pruning.METHODS`.
"""

from __future__ import annotations

import math

import torch

from ..errors import SpecError
from .budgets import keep_counts, pool_density
from .catalog import DISTRIBUTIONS, METHODS, check_amount, check_dim, norm_order, prune_count
from .prune_step import layer_plan, resolve_prune_step


def checked_weight_and_mask(weight, mask):
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise SpecError(f"weight must be a floating-point tensor, got {type(weight).__name__}")
    if mask is None:
        mask = torch.ones_like(weight, dtype=torch.bool)
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(weight.shape):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise SpecError(f"mask shape {shape} does not match weight shape {tuple(weight.shape)}")
    mask = mask.detach().to(torch.bool)
    w = weight.detach().masked_fill(~mask, 0.0)  # effective weights, whatever came in
    return w, mask


def require_generator(method, generator):
    if not isinstance(generator, torch.Generator):
        raise SpecError(f"method {method!r} needs a torch.Generator, got {generator!r}")


def _no_options(method, options):
    if options:
        key = sorted(options)[0]
        raise SpecError(f"unknown option {key!r} for {method}; allowed: none")


def _other_dims(t, dim):
    return [d for d in range(t.dim()) if d != dim]


def _slices_alive(mask, dim):
    """Bool vector along `dim`: slice still has a kept entry (torch: mask.sum(...) != 0)."""
    return mask.any(dim=tuple(_other_dims(mask, dim))) if mask.dim() > 1 else mask.clone()


def _apply_slice_keep(mask, dim, keep_slices):
    shape = [1] * mask.dim()
    shape[dim] = -1
    return mask & keep_slices.view(shape)


# --------------------------------------------------------------------------- method implementations
# Single-weight methods: (candidate values, k, generator) -> (indices to prune, keep score: higher = keep).
def choose_smallest_magnitude(values, k, generator):
    score = values.abs()
    return torch.topk(score, k, largest=False).indices, score


def choose_at_random(values, k, generator):
    prob = torch.rand(values.shape, generator=generator, dtype=values.dtype)
    return torch.topk(prob, k).indices, -prob


# Slice methods: (remaining slices along dim, k, generator, options) -> indices (into them) to keep.
def keep_largest_norm(slices, dim, k, generator, options):
    norm = torch.linalg.vector_norm(slices, ord=norm_order(options["n"]), dim=_other_dims(slices, dim))
    return torch.topk(norm, slices.shape[dim] - k, largest=True).indices


def keep_at_random(slices, dim, k, generator, options):
    return _random_survivors(slices.shape[dim], k, generator)


def _random_survivors(count: int, k: int, generator):
    """The indices of `count` slices or units kept when `k` of them, drawn uniformly, go."""
    gone = torch.topk(torch.rand(count, generator=generator), k, largest=False).indices
    keep = torch.ones(count, dtype=torch.bool)
    keep[gone] = False
    return keep.nonzero().squeeze(1)


# Coupled pruning (pruning.structure): (one vector of effective weights per channel unit, k, generator,
# options) -> indices of the units to keep. A unit's slices may differ in size, so they come as a list.
def unit_norm(vector, n):
    """The Ln norm of a unit's weights per entry: ``||v||_n / ||1||_n`` (n=1: mean |w|, n=2: root mean
    square, inf: max |w|, -inf: min |w|). Units of one group can differ in size (a ResNet channel that
    runs through three stages has more filters than one that starts in the last); per entry, size
    alone does not decide. Units of equal size rank exactly as by their Ln norm."""
    order = norm_order(n)
    norm = torch.linalg.vector_norm(vector, ord=order)
    if order in (math.inf, -math.inf):
        return norm
    return norm / float(vector.numel()) ** (1.0 / order)


def keep_largest_unit_norm(vectors, k, generator, options):
    norms = [unit_norm(v, options["n"]) for v in vectors]
    sizes = {v.numel() for v in vectors}
    if len(sizes) == 1:  # equal sizes: the plain Ln norm, exactly as layer-wise slice pruning ranks
        norms = [torch.linalg.vector_norm(v, ord=norm_order(options["n"])) for v in vectors]
    return torch.topk(torch.stack(norms), len(vectors) - k, largest=True).indices


def keep_units_at_random(vectors, k, generator, options):
    return _random_survivors(len(vectors), k, generator)


def _entry(method, structured: bool):
    entry = METHODS[method]
    if entry.structured != structured:
        raise SpecError(f"method {method!r} does not prune {'slices' if structured else 'single weights'}")
    return entry


def _unstructured(method, weight, amount, mask, generator, options, note_out=None):
    entry = _entry(method, False)
    _no_options(method, options)
    check_amount(amount)
    if entry.random:
        require_generator(method, generator)
    w, mask = checked_weight_and_mask(weight, mask)
    flat = mask.reshape(-1)
    cand = flat.nonzero().squeeze(1)  # == torch's t[mask == 1] order
    k, note = prune_count(amount, cand.numel(), "weights")
    if note_out is not None:
        note_out.update(unit="weights", remaining=int(cand.numel()), pruned=k, note=note)
    new = mask.clone()
    if k > 0:
        idx, _ = entry.load()(w.reshape(-1)[cand], k, generator)
        new.view(-1)[cand[idx]] = False
    return new


def _structured(method, weight, amount, mask, generator, options, note_out=None):
    entry = _entry(method, True)
    unknown = sorted(set(options) - set(entry.option_names))
    if unknown:
        raise SpecError(f"unknown option {unknown[0]!r} for {method}; allowed: {', '.join(entry.option_names)}")
    options = {o.name: o.check(options.get(o.name, o.default), o.name) for o in entry.options}
    check_amount(amount)
    dim = check_dim(options["dim"], weight)
    if entry.random:
        require_generator(method, generator)
    w, mask = checked_weight_and_mask(weight, mask)
    alive = _slices_alive(mask, dim)
    idx_alive = alive.nonzero().squeeze(1)
    rc = int(idx_alive.numel())
    k, note = prune_count(amount, rc, f"slices along dim {dim}")
    if note_out is not None:
        note_out.update(unit=f"slices along dim {dim}", remaining=rc, pruned=k, note=note)
    if k == 0:
        return mask.clone()
    keep = torch.zeros(w.shape[dim], dtype=torch.bool)
    keep[idx_alive[entry.load()(w.index_select(dim, idx_alive), dim, k, generator, options)]] = True
    return _apply_slice_keep(mask, dim, keep)


def _pattern(method, weight, mask, options, note_out=None):
    """A pattern method (N:M) on one layer; its options are checked and defaulted by the catalog entry."""
    entry = METHODS[method]
    unknown = sorted(set(options) - set(entry.option_names))
    if unknown:
        raise SpecError(f"unknown option {unknown[0]!r} for {method}; allowed: {', '.join(entry.option_names)}")
    options = {o.name: o.check(options.get(o.name, o.default), o.name) for o in entry.options}
    w, mask = checked_weight_and_mask(weight, mask)
    new, note = entry.load()(w, mask, options)
    if note_out is not None:
        remaining = int(mask.sum())
        note_out.update(unit="weights", remaining=remaining, pruned=remaining - int(new.sum()), note=note)
    return new


def compute_mask(method, weight, amount, mask, *, generator=None, **options):
    """New bool mask of `weight` after pruning `amount` more with `method` (one layer)."""
    entry = METHODS[method]
    if entry.scores_network or entry.scored:
        raise SpecError(f"method {method!r} scores the whole network; use prune_masks(..., scores=...)")
    if entry.pattern:
        return _pattern(method, weight, mask, options)
    if entry.structured:
        return _structured(method, weight, amount, mask, generator, options)
    return _unstructured(method, weight, amount, mask, generator, options)


def l1_unstructured(weight, amount, mask=None, *, generator=None, **options):
    """Prune the `amount` smallest-|w| still-unpruned weights (torch L1Unstructured)."""
    return compute_mask("l1_unstructured", weight, amount, mask, generator=generator, **options)


def random_unstructured(weight, amount, mask=None, *, generator=None, **options):
    """Prune `amount` still-unpruned weights uniformly at random (torch RandomUnstructured)."""
    return compute_mask("random_unstructured", weight, amount, mask, generator=generator, **options)


def ln_structured(weight, amount, mask=None, *, generator=None, **options):
    """Remove the `amount` remaining slices along `dim` with the smallest L_n norm."""
    return compute_mask("ln_structured", weight, amount, mask, generator=generator, **options)


def random_structured(weight, amount, mask=None, *, generator=None, **options):
    """Remove `amount` remaining slices along `dim` chosen uniformly at random."""
    return compute_mask("random_structured", weight, amount, mask, generator=generator, **options)


def transplant_mask(masks, source_masks):
    """`masks & source_masks` per layer (never revives); names and shapes must match."""
    _same_names(masks, source_masks, "source masks")
    out = {}
    for name, m in masks.items():
        s = source_masks[name]
        if tuple(s.shape) != tuple(m.shape):
            raise SpecError(f"source mask {name!r} has shape {tuple(s.shape)}, expected {tuple(m.shape)}")
        out[name] = m.detach().to(torch.bool) & s.detach().to(torch.bool)
    return out


def _same_names(expected, got, what):
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(map(repr, missing))}")
        if extra:
            parts.append(f"unexpected {', '.join(map(repr, extra))}")
        raise SpecError(f"{what} do not match the prunable parameters: {'; '.join(parts)}")


# --------------------------------------------------------------------------- a whole step
def prune_masks(weights, masks, kinds, step, *, generator, report=None, scores=None):
    """Apply one prune step to all selected layers; returns a full new masks dict.

    weights: effective weights (at least every name in `masks`); masks: current masks,
    one per prunable parameter (keys == kinds); step: a prune step spec (resolved or
    not). For score methods (``METHODS[m].scores_network``) pass ``scores(masks) -> {name: keep
    scores}``, the network's scores under the given masks (``pruning.scores.network_scores``).
    If `report` is a dict it is filled with ``{name: {...}}`` per layer: method,
    amount, scope, unit, remaining (before), pruned, and a note when rounding gave 0
    or keep-at-least-one capped the count; skipped layers get ``{"skip": True, "pruned": 0}``.
    """
    step = resolve_prune_step(step)
    _same_names(kinds, masks, "masks")
    for name in masks:
        if name not in weights:
            raise SpecError(f"weights have no tensor for prunable parameter {name!r}")
        if tuple(weights[name].shape) != tuple(masks[name].shape):
            raise SpecError(
                f"weights[{name!r}] has shape {tuple(weights[name].shape)}, mask has {tuple(masks[name].shape)}"
            )
    plan = layer_plan(kinds, step)
    random_used = [p["method"] for p in plan.values() if "method" in p and METHODS[p["method"]].random]
    if random_used:
        require_generator(random_used[0], generator)
    scored = [name for name in kinds if "method" in plan[name] and METHODS[plan[name]["method"]].scored]
    valued = [
        name
        for name in kinds
        if "method" in plan[name]
        and METHODS[plan[name]["method"]].structured
        and METHODS[plan[name]["method"]].scores_network
    ]
    if scored and scores is None and METHODS[step["method"]].weight_scorer:
        scores = _weight_scores(step, weights)
    if (scored or valued) and scores is None:
        raise SpecError(f"method {step['method']!r} scores the network: prune_masks needs scores=")
    values = _slice_values(step, plan, valued, scores(masks)) if valued else {}
    new = {name: m.detach().to(torch.bool).clone() for name, m in masks.items()}
    rep = {}

    pool = [name for name in kinds if plan[name].get("scope") == "global" and name not in scored]
    if pool:
        _prune_pool(step["method"], step["amount"], pool, weights, masks, new, generator, rep)
    budgeted = [name for name in kinds if plan[name].get("distribution") and name not in scored]
    counts = _budget_counts(step, kinds, budgeted, masks) if budgeted else {}

    for name in kinds:
        cfg = plan[name]
        if cfg.get("skip"):
            rep[name] = {"skip": True, "pruned": 0}
            continue
        if cfg["scope"] == "global" or name in scored:
            continue
        info = {}
        entry = METHODS[cfg["method"]]
        options = {k: cfg[k] for k in entry.option_names}
        try:
            if entry.structured:
                new[name] = _structured(
                    cfg["method"], values.get(name, weights[name]), cfg["amount"], masks[name], generator, options, info
                )
            elif entry.pattern:
                new[name] = _pattern(cfg["method"], weights[name], masks[name], options, info)
            elif name in counts:
                new[name] = _counted(cfg["method"], weights[name], counts[name], masks[name], generator, info)
            else:
                new[name] = _unstructured(cfg["method"], weights[name], cfg["amount"], masks[name], generator, {}, info)
        except SpecError as e:
            raise SpecError(f"layer {name!r}: {e}") from None
        rep[name] = {**{k: v for k, v in cfg.items()}, **info}
    if scored:  # after the other layers: the network is scored as it will be
        budget = _budget_counts(step, kinds, scored, new) if plan[scored[0]].get("distribution") else None
        _prune_by_scores(step, plan, scored, new, scores, rep, budget)
    if report is not None:
        for name in kinds:
            report[name] = {k: v for k, v in rep[name].items() if v is not None}
    return new


def _weight_scores(step, weights):
    """``scores(masks)`` of a method that scores the weights alone (LAMP)."""
    entry = METHODS[step["method"]]
    scorer = entry.load_weight_scorer()
    options = {k: step[k] for k in entry.option_names if k in step}

    def scores(masks):
        return scorer({name: weights[name].detach() * mask for name, mask in masks.items()}, masks, options)

    return scores


def _slice_values(step, plan, valued, computed):
    """{layer: the values a slice method with a scorer ranks its slices by} (Taylor's w·∂L/∂w, BN-scale's
    |γ|); a selected layer the scorer has no values for is a one-line SpecError."""
    for name in valued:
        if name not in computed:
            entry = METHODS[plan[name]["method"]]
            raise SpecError(f"layer {name!r}: method {entry.name!r} cannot score it: {entry.unscored or 'no scores'}")
    return {name: computed[name] for name in valued}


def _budget_counts(step, kinds, budgeted, masks) -> dict:
    """{layer: weights to remove} of the layers a distribution's budget shares the step's amount between."""
    remaining = {name: int(masks[name].sum()) for name in budgeted}
    total = sum(remaining.values())
    try:
        k, _ = prune_count(step["amount"], total, "weights of the layers the distribution shares")
    except SpecError as e:
        raise SpecError(f"distribution {step['distribution']} over {', '.join(budgeted)}: {e}") from None
    shapes = {name: tuple(masks[name].shape) for name in budgeted}
    names = list(kinds)
    densities = DISTRIBUTIONS[step["distribution"]].load()(shapes, pool_density(shapes, total - k), names[0], names[-1])
    keep = keep_counts(densities, shapes, remaining)
    return {name: remaining[name] - keep[name] for name in budgeted}


def _counted(method, weight, count, mask, generator, info):
    """A single-weight method removing exactly `count` remaining weights of a layer (a budget's share)."""
    remaining = int(mask.sum())
    if count <= 0:
        info.update(unit="weights", remaining=remaining, pruned=0, note="the budget keeps the layer as it is")
        return mask.detach().to(torch.bool).clone()
    return _unstructured(method, weight, count, mask, generator, {}, info)


def _prune_pool(method, amount, pool, weights, masks, new, generator, rep):
    """Global scope: one threshold over the concatenated remaining weights of `pool`."""
    w_parts, cand_parts, sizes = [], [], []
    for name in pool:
        w, m = checked_weight_and_mask(weights[name], masks[name])
        cand = m.reshape(-1).nonzero().squeeze(1)
        cand_parts.append(cand)
        w_parts.append(w.reshape(-1)[cand])
        sizes.append(int(cand.numel()))
    values = torch.cat(w_parts)
    total = int(values.numel())
    try:
        k, note = prune_count(amount, total, "weights in the global pool")
    except SpecError as e:
        raise SpecError(f"global scope over {', '.join(pool)}: {e}") from None
    gone = torch.zeros(total, dtype=torch.bool)
    if k > 0:
        idx, score = METHODS[method].load()(values, k, generator)
        gone[idx] = True
    start = 0
    for name, cand, size in zip(pool, cand_parts, sizes):
        seg = slice(start, start + size)
        layer_note = note
        if size > 0 and bool(gone[seg].all()):
            best = start + int(torch.argmax(score[seg]))
            gone[best] = False
            layer_note = "keep-at-least-one: spared the layer's last weight"
        pruned = int(gone[seg].sum())
        if pruned:
            new[name].view(-1)[cand[gone[seg]]] = False
        rep[name] = {
            "method": method,
            "amount": amount,
            "scope": "global",
            "unit": "weights",
            "remaining": size,
            "pruned": pruned,
            "note": layer_note,
        }
        start += size


# --------------------------------------------------------------------------- score methods
def schedule_counts(start: int, final: int, iterations: int) -> list[int]:
    """Weights remaining after each of `iterations` score-and-prune iterations: ``start`` shrinks
    to ``final`` on an exponential schedule (SynFlow's: after iteration j of n the remaining
    fraction is ``(final / start) ** (j / n)``), rounded, the last one exactly ``final``."""
    if iterations < 1 or not 0 <= final <= start:
        raise SpecError(f"cannot go from {start} to {final} weights in {iterations} iterations")
    if start == 0:
        return [0] * iterations
    ratio = final / start
    counts = [int(round(start * ratio ** (j / iterations))) for j in range(1, iterations)] + [final]
    return [max(final, min(start, c)) for c in counts]


def _select_by_score(score_parts, mask_parts, k, invert):
    """Indices (into the concatenated candidates) of the `k` remaining weights to prune: the lowest
    keep scores (the highest with `invert`). Candidates in flattened order, layer after layer."""
    values = torch.cat([s.reshape(-1)[m.reshape(-1)] for s, m in zip(score_parts, mask_parts)])
    if not bool(torch.isfinite(values).all()):
        raise SpecError("pruning scores are not finite (NaN or overflow); the network cannot be scored as it is")
    return torch.topk(values, k, largest=invert).indices


def _prune_by_scores(step, plan, scored, new, scores, rep, budget=None):
    """Score methods: iterations of (score the network under the current masks, prune to the
    schedule's count). Scope global: the scored layers are one pool (one exact threshold, no
    layer is spared: layer collapse shows as a layer with sparsity 1); scope layer: each layer
    is brought to its own count (keep-at-least-one, as the other methods); a distribution's
    `budget` ({layer: weights to remove}): each layer to its share."""
    method = METHODS[step["method"]]
    iterations = step.get("iterations", 1)
    invert = bool(step.get("invert", False))
    scope = plan[scored[0]]["scope"]
    groups = [scored] if scope == "global" else [[name] for name in scored]
    targets, notes = [], []
    for group in groups:
        remaining = sum(int(new[name].sum()) for name in group)
        unit = "weights in the global pool" if scope == "global" else "weights"
        try:
            k, note = (budget[group[0]], None) if budget is not None else prune_count(step["amount"], remaining, unit)
        except SpecError as e:
            raise SpecError(
                f"{'global scope over ' + ', '.join(group) if scope == 'global' else 'layer ' + repr(group[0])}: {e}"
            ) from None
        targets.append(schedule_counts(remaining, remaining - k, iterations))
        notes.append(note)
    before = {name: int(new[name].sum()) for name in scored}
    for j in range(iterations):
        current = scores(new)
        for group, counts in zip(groups, targets):
            k = sum(int(new[name].sum()) for name in group) - counts[j]
            if k <= 0:
                continue
            masks = [new[name] for name in group]
            gone = _select_by_score(
                [current[name].detach().to("cpu", torch.float64) for name in group], masks, k, invert
            )
            start = 0
            for name, mask in zip(group, masks):
                cand = mask.reshape(-1).nonzero().squeeze(1)
                mine = gone[(gone >= start) & (gone < start + cand.numel())] - start
                updated = mask.clone()
                updated.view(-1)[cand[mine]] = False
                new[name] = updated
                start += cand.numel()
    for group, note in zip(groups, notes):
        for name in group:
            kept = int(new[name].sum())
            layer_note = note if note is not None else None
            if kept == 0 and before[name] > 0:
                layer_note = "layer collapse: every weight of the layer was pruned"
            rep[name] = {
                "method": method.name,
                "amount": step["amount"],
                "scope": scope,
                "unit": "weights",
                "remaining": before[name],
                "pruned": before[name] - kept,
                "note": layer_note,
                "iterations": iterations,
                "distribution": step.get("distribution"),
            }
