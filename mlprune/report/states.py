"""The report's Python API on states: masks and weights compared across states.

Works on ``ExperimentState`` objects, or anything with ``run_id``, ``masks``,
``weights`` and ``spec``:

- :func:`mask_similarity` -- Jaccard of the kept weights of two states, per layer and overall;
- :func:`jaccard_table` -- the Jaccard matrix of several states (methods x rounds, seeds);
- :func:`structure` -- entirely pruned units per layer vs random pruning at the same sparsity;
- :func:`stability` / :func:`trajectories` -- how masks and weights move across rounds.

States of different architectures raise a one-line ``SpecError`` naming both.
"""

from __future__ import annotations

import numpy as np

from .. import analysis
from ..errors import SpecError


def _name(state) -> str:
    return str(getattr(state, "run_id", state))[:8]


def _model(state) -> str:
    """The state's model, with its model options when it has any: ``lenet`` or ``conv2 {'width': 2}``."""
    root = (getattr(state, "spec", None) or {}).get("root", {})
    options = root.get("model_options") or {}
    return str(root.get("model", "?")) + (f" {options}" if options else "")


def mask_similarity(a, b) -> dict:
    """Jaccard of the kept weights of two states: ``{"overall": J, "per_layer": {param: J}}``.

    States of different architectures (another model, other model options, other tensors) raise a one-line
    ``SpecError`` naming both: masks of equal shapes of two models are not the same weights.
    """
    both = f"cannot compare state {_name(a)} ({_model(a)}) with state {_name(b)} ({_model(b)})"
    try:
        similarity = analysis.jaccard(a.masks, b.masks)
    except SpecError as error:
        raise SpecError(f"{both}: {error}") from None
    if _model(a) != _model(b) and "?" not in (_model(a), _model(b)):
        raise SpecError(f"{both}: states of different architectures")
    return similarity


def jaccard_table(states, labels=None, layer: str | None = None) -> tuple[np.ndarray, list[str]]:
    """Pairwise Jaccard matrix of several states (``layer``: one parameter, default overall)."""
    states = list(states)
    _check_compatible(states)
    labels = [_name(s) for s in states] if labels is None else list(labels)
    return analysis.jaccard_matrix([s.masks for s in states], labels, layer=layer)


def _check_compatible(states) -> None:
    for other in states[1:]:
        a, b = states[0].masks, other.masks
        if set(a) != set(b) or any(tuple(a[n].shape) != tuple(b[n].shape) for n in a):
            mask_similarity(states[0], other)  # raises the one-line architecture message


_KINDS_CACHE: dict[str, dict[str, str]] = {}


def layer_kinds(masks, model: str | None = None) -> dict[str, str]:
    """Ordered ``{param: "conv" | "linear"}`` of the masked parameters, in the model's layer order.

    Taken from ``models.prunable`` of the named architecture when it can be built,
    else inferred from the mask shapes (>= 3 dims: conv) in name order.
    """
    order: dict[str, str] = {}
    if model:
        if model not in _KINDS_CACHE:
            try:
                from .. import models

                channels, size = models.model_input(model)
                side = max(size or 32, 32)
                built = models.build_model(model, num_classes=10, input_shape=(channels or 3, side, side))
                _KINDS_CACHE[model] = models.prunable(built)
            except Exception:  # unknown or unbuildable here: fall back to the shapes
                _KINDS_CACHE[model] = {}
        order = _KINDS_CACHE[model]
    kinds = {n: k for n, k in order.items() if n in masks}
    for name in sorted(masks):
        if name not in kinds:
            kinds[name] = "conv" if masks[name].dim() >= 3 else "linear"
    return kinds


def structure(state, store=None) -> dict:
    """``analysis.emergent_structure`` of a state's masks, layers in the model's order.

    Each layer is compared with random pruning of the granularity that pruned it, read from
    the state's lineage (``store``, default the state's experiment's): a layer only ever
    pruned by structured (slice) methods against random structured pruning, any other
    against random unstructured pruning. Without a store to read the lineage from, every
    layer is compared with random unstructured pruning (the paper's baseline).
    """
    kinds = layer_kinds(state.masks, _model(state))
    store = store if store is not None else getattr(getattr(state, "experiment", None), "store", None)
    structured = pruned_structurally(state.spec, store.spec, kinds) if store is not None and state.spec else {}
    return analysis.emergent_structure(state.masks, kinds, structured={p for p, s in structured.items() if s})


def pruned_structurally(spec: dict, spec_of, kinds: dict[str, str]) -> dict[str, bool]:
    """``{param: True}`` for the layers every prune step in a state's lineage removed whole slices of.

    ``spec`` is the state's state.json, ``spec_of(run_id)`` reads another's (``Store.spec``).
    A layer some step pruned weight by weight is False; a layer never pruned is absent. A
    transplanted mask carries the lineage of the state it came from.
    """
    from ..pruning import METHODS, layer_plan
    from ..spec.steps import kind_of

    chain = []
    while spec is not None:
        chain.append(spec)
        spec = spec_of(spec["parent_run"]) if spec.get("parent_run") else None
    out: dict[str, bool] = {}
    for spec in reversed(chain):  # from the root down: the steps in the order they ran
        for step in spec.get("steps") or []:
            kind, options = kind_of(step)
            if kind.mask_source is not None:  # a transplanted mask: the structure of the state it came from
                source = (spec.get("inputs") or {}).get(kind.mask_source)
                for param, flag in (
                    pruned_structurally(spec_of(source["run_id"]), spec_of, kinds) if source else {}
                ).items():
                    out[param] = out.get(param, True) and flag
            if not kind.new_masks:
                continue
            for param, config in layer_plan(kinds, options).items():
                if not config.get("skip"):
                    out[param] = out.get(param, True) and METHODS[config["method"]].structured
    return out


def stability(states) -> dict:
    """``analysis.weight_stability`` across states (rounds), e.g. ``[trained, round 1, round 2]``."""
    states = list(states)
    _check_compatible(states)
    return analysis.weight_stability([s.weights for s in states], [s.masks for s in states])


def trajectories(states, param: str, k: int = 20):
    """``analysis.weight_trajectories``: k sampled weights of ``param`` across the states, NaN once pruned."""
    states = list(states)
    _check_compatible(states)
    return analysis.weight_trajectories([s.weights for s in states], [s.masks for s in states], param, k=k)
