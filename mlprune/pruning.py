"""Mask computation: pure functions (effective weights, amount, previous mask) -> new mask.

Conventions (see docs/architecture.md):

* ``masks`` is a ``dict[str, BoolTensor]`` keyed by parameter name, one entry per
  prunable parameter, ``True`` = kept. ``kinds`` is the ordered
  ``{name: "conv" | "linear"}`` of ``models.prunable``; its last entry is the output
  layer. Weights are *effective* weights (``weight * mask``); every function
  multiplies by the mask again anyway, so a stale dense copy cannot leak in.
* No mlflow, no global RNG: random methods draw from the ``torch.Generator`` they are
  given (and raise ``SpecError`` without one). The generator is consumed layer by
  layer in ``kinds`` order (the global pool first, see below), and only by layers
  that actually prune something this round (as torch does).
* Nothing here mutates its inputs; new masks never revive a pruned weight.

Methods (``METHODS``): ``l1_unstructured``, ``random_unstructured``,
``ln_structured`` (options ``n`` in 1, 2, inf, -inf -- ``"inf"``/``"-inf"`` strings
or float infinities -- and ``dim``), ``random_structured`` (``dim``). Each is
``fn(weight, amount, mask, *, generator=None, **options) -> new bool mask``.
``from_state`` takes the mask of another state: the caller loads it and calls
``transplant_mask`` (or passes ``source_masks=`` to ``prune_masks``).

Amount
------
* a float in (0, 1) is a fraction of what *remains*: of the still-unpruned weights
  (unstructured) or of the not-yet-removed slices along ``dim`` (structured; a slice
  is removed once all its mask entries are False);
* an int >= 1 is a count of what remains to remove (weights or slices).
Rejected with a one-line ``SpecError``: bools, floats <= 0 or >= 1, ints <= 0,
non-numbers, and a count larger than what remains in the layer.

Rounding (identical to ``torch.nn.utils.prune``): ``k = round(amount * remaining)``
with Python's ``round`` (half to even: 0.5 * 5 -> 2) for a fraction, ``k = amount``
for a count. In the first round ``remaining`` is the tensor size (slices along
``dim``), exactly torch's ``round(amount * tensor_size)``; in later rounds it is what
remains, exactly what torch's ``PruningContainer`` does.

Small layers
------------
* ``k == 0`` after rounding (e.g. 0.2 of 2 remaining weights): nothing is pruned in
  that layer this round; no error. ``prune_masks(..., report=d)`` records it
  (``d[name]["note"] == "rounds to 0: nothing pruned"``).
* Keep-at-least-one: a round never removes the last remaining weight (unstructured)
  or the last remaining slice (structured) of a layer: ``k`` is capped at
  ``remaining - 1`` (a count equal to what remains is allowed and capped; a count
  larger than what remains is an error). Torch would empty the layer; we do not
  (layer collapse disconnects the network). Consequently a structured prune along a
  dim of size 1 (e.g. dim=1 of a first conv with one input channel) prunes nothing.
  Recorded in the report as ``"keep-at-least-one: capped from K"``.
* Global scope: the pool loses ``round(amount * pool_remaining)`` weights (capped at
  ``pool_remaining - 1``); if that would empty a layer, the layer keeps its most
  important candidate (largest |w| for L1; for random, the one drawn least likely to
  go) and the pool loses one weight fewer (no compensation elsewhere; recorded).

Tie-breaking (identical to torch, so that the oracle tests match bit for bit)
----------------------------------------------------------------------------
Candidates are the remaining entries / slices in flattened (row-major) order, i.e.
``t[mask]`` for unstructured and ``index_select`` of the remaining slices along
``dim`` for structured -- exactly the slice ``PruningContainer`` hands to the method.
Already-pruned entries are thereby excluded from the candidates (equivalently: they
rank as "pruned first", importance -inf) and never counted among the smallest.
Among the candidates:
* ``l1_unstructured``: ``torch.topk(|w|, k, largest=False)`` -> pruned;
* ``random_unstructured``: ``p = torch.rand(n_candidates, generator)``;
  ``torch.topk(p, k)`` (largest) -> pruned (torch uses ``rand_like`` on the global RNG);
* ``ln_structured``: ``norm = vector_norm(slice, ord=n)`` over all other dims
  (n=-inf: min |w| of the slice); ``torch.topk(norm, remaining - k, largest=True)``
  -> kept (so ties are broken by topk's "keep" choice, as in torch);
* ``random_structured``: ``p = torch.rand(n_slices, generator)``; the k smallest go.
  Torch uses ``p > kthvalue(p, k)``; we use ``topk(p, k, largest=False)``: the same
  set unless two draws tie exactly at the threshold, where torch would prune more
  than k and we prune exactly k.
On CPU, ``topk`` is deterministic, so equal inputs give equal masks.

Prune step spec (recipe files; ``resolve_prune_step`` makes it canonical)
-------------------------------------------------------------------------
::

    {"method": "l1_unstructured",      # required; or random_unstructured, ln_structured,
                                       #   random_structured, from_state
     "amount": 0.2,                    # required (not for from_state)
     "scope": "layer",                 # or "global" (unstructured methods only)
     "n": 1, "dim": 1,                 # ln_structured: n and dim; random_structured: dim
     "include": ["*"], "exclude": [],  # selectors of the layers this step prunes
     "bias": False,                    # True -> SpecError (bias pruning not supported yet)
     "layers": {<selector>: {"method": ..., "amount": ..., "n": ..., "dim": ...,
                             "skip": bool}},
     "seed": <int>}                    # kept only when given and a random method is used;
                                       # absent: derived from the state's key by the DAG
    {"method": "from_state", "state": "<ref>"}   # the DAG resolves <ref>

Selectors are ``fnmatch`` globs on parameter names (``"fc3.weight"``,
``"features.*"``) or the tokens ``@conv``, ``@linear``, ``@output`` (the last
prunable layer). A glob (other than ``*``) that matches no prunable parameter is a
``SpecError`` (typo guard); a token that matches nothing is fine (portable recipes).
A layer is selected when it matches an ``include`` selector and no ``exclude``
selector; overrides never re-select an excluded layer. Overrides are applied in
order, later selectors win; an override inherits the step's method/amount/n/dim
and may change them; ``"amount": 0`` or ``"skip": true`` means "do not prune this
layer this round".

Canonical resolved form (hashed into cache keys): defaults filled; ``n`` only for
ln_structured, ``dim`` only for structured methods (given for a method that does not
use them: ``SpecError``); ``n`` as ``1``, ``2``, ``"inf"`` or ``"-inf"``;
``include``/``exclude`` sorted, de-duplicated lists; ``seed`` kept only if some layer
uses a random method (silently dropped otherwise); ``layers`` becomes an ordered
*list* of ``{"select": sel, ...}`` entries, each the override's full effective
config (``{"select": sel, "skip": True}`` for skips). A list keeps the override order
even when the dict is dumped with ``sort_keys=True``; the list form is accepted as
input too, so resolving is idempotent.

Scope ``global``: the selected layers without an override form one pool pruned with
one threshold (the step's unstructured method and amount, a fraction of what remains
in the pool); layers with a (non-skip) override are pruned on their own, layer-wise.
"""

from __future__ import annotations

import fnmatch
import math
import numbers
from collections.abc import Mapping

import torch

from mlprune.errors import SpecError, choice_error

__all__ = [
    "METHODS",
    "RANDOM_METHODS",
    "STRUCTURED_METHODS",
    "SELECTOR_TOKENS",
    "compute_mask",
    "n_to_prune",
    "transplant_mask",
    "resolve_prune_step",
    "layer_plan",
    "prune_masks",
]

UNSTRUCTURED_METHODS = ("l1_unstructured", "random_unstructured")
STRUCTURED_METHODS = ("ln_structured", "random_structured")
RANDOM_METHODS = ("random_unstructured", "random_structured")
SELECTOR_TOKENS = ("@conv", "@linear", "@output")
_AMOUNT_ALLOWED = "a float in (0, 1) (fraction of what remains) or an int >= 1 (count to remove)"
_N_ALLOWED = (1, 2, "inf", "-inf")


# --------------------------------------------------------------------------- amounts
def _check_amount(amount, what="pruning amount"):
    """Validate an amount (type and range); returns it unchanged."""
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
        raise SpecError(f"invalid {what} {amount!r}; allowed: {_AMOUNT_ALLOWED}")
    if isinstance(amount, numbers.Integral):
        if amount < 1:
            raise SpecError(f"invalid {what} {amount!r}; allowed: {_AMOUNT_ALLOWED}")
        return int(amount)
    amount = float(amount)
    if not (0.0 < amount < 1.0):  # also rejects nan
        raise SpecError(f"invalid {what} {amount!r}; allowed: {_AMOUNT_ALLOWED}")
    return amount


def _count(amount, remaining: int, unit: str = "weights"):
    """(k, note): how many of `remaining` units to prune, and a note for the report."""
    amount = _check_amount(amount)
    if isinstance(amount, int):
        if amount > remaining:
            raise SpecError(
                f"pruning amount {amount} is larger than the {remaining} {unit} that remain; "
                f"allowed: an int <= {remaining} or a fraction in (0, 1)"
            )
        k = amount
    else:
        k = round(amount * remaining)  # torch: round(amount * tensor_size), half to even
    note = None
    if k == 0:
        note = "rounds to 0: nothing pruned"
    elif k > remaining - 1:
        note = f"keep-at-least-one: capped from {k}"
        k = max(remaining - 1, 0)
    return k, note


def n_to_prune(amount, remaining: int) -> int:
    """Number of units (weights or slices) a round removes from `remaining` ones.

    ``round(amount * remaining)`` for a fraction, ``amount`` for a count, capped at
    ``remaining - 1`` (keep at least one); a count above ``remaining`` -> SpecError.
    """
    return _count(amount, int(remaining))[0]


# --------------------------------------------------------------------------- helpers
def _prep(weight, mask):
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


def _need_generator(method, generator):
    if not isinstance(generator, torch.Generator):
        raise SpecError(f"method {method!r} needs a torch.Generator, got {generator!r}")


def _no_options(method, options):
    if options:
        key = sorted(options)[0]
        raise SpecError(f"unknown option {key!r} for {method}; allowed: none")


def _canonical_n(n):
    """1, 2, 'inf' or '-inf' (the canonical spellings) from any accepted spelling."""
    if isinstance(n, str):
        s = n.strip().lower()
        if s in ("inf", "+inf", "infinity"):
            return "inf"
        if s in ("-inf", "-infinity"):
            return "-inf"
        if s in ("1", "2", "1.0", "2.0"):
            return int(float(s))
    elif isinstance(n, numbers.Real) and not isinstance(n, bool):
        if n == math.inf:
            return "inf"
        if n == -math.inf:
            return "-inf"
        if n in (1, 2):
            return int(n)
    raise SpecError(f"invalid norm n {n!r}; allowed: 1, 2, inf, -inf")


def _ord(n):
    n = _canonical_n(n)
    return {"inf": math.inf, "-inf": -math.inf}.get(n, n)


def _check_dim(dim, weight=None):
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 0:
        raise SpecError(f"invalid dim {dim!r}; allowed: 0 (output channels/neurons) or 1 (inputs)")
    dim = int(dim)
    if weight is not None:
        if weight.dim() < 2:
            raise SpecError(
                f"structured pruning needs a tensor with >= 2 dims, got shape {tuple(weight.shape)}"
            )
        if dim >= weight.dim():
            raise SpecError(
                f"dim {dim} out of range for weight of shape {tuple(weight.shape)}; "
                f"allowed: 0..{weight.dim() - 1}"
            )
    return dim


def _other_dims(t, dim):
    return [d for d in range(t.dim()) if d != dim]


def _slices_alive(mask, dim):
    """Bool vector along `dim`: slice still has a kept entry (torch: mask.sum(...) != 0)."""
    return mask.any(dim=tuple(_other_dims(mask, dim))) if mask.dim() > 1 else mask.clone()


def _apply_slice_keep(mask, dim, keep_slices):
    shape = [1] * mask.dim()
    shape[dim] = -1
    return mask & keep_slices.view(shape)


# --------------------------------------------------------------------------- methods
def _unstructured_choice(method, values, k, generator):
    """(indices into `values` to prune, keep-score: higher = more worth keeping)."""
    if method == "l1_unstructured":
        score = values.abs()
        return torch.topk(score, k, largest=False).indices, score
    prob = torch.rand(values.shape, generator=generator, dtype=values.dtype)
    return torch.topk(prob, k).indices, -prob


def _unstructured(method, weight, amount, mask, generator, options, note_out=None):
    _no_options(method, options)
    _check_amount(amount)
    if method in RANDOM_METHODS:
        _need_generator(method, generator)
    w, mask = _prep(weight, mask)
    flat = mask.reshape(-1)
    cand = flat.nonzero().squeeze(1)  # == torch's t[mask == 1] order
    k, note = _count(amount, cand.numel(), "weights")
    if note_out is not None:
        note_out.update(unit="weights", remaining=int(cand.numel()), pruned=k, note=note)
    new = mask.clone()
    if k > 0:
        idx, _ = _unstructured_choice(method, w.reshape(-1)[cand], k, generator)
        new.view(-1)[cand[idx]] = False
    return new


def l1_unstructured(weight, amount, mask=None, *, generator=None, **options):
    """Prune the `amount` smallest-|w| still-unpruned weights (torch L1Unstructured)."""
    return _unstructured("l1_unstructured", weight, amount, mask, generator, options)


def random_unstructured(weight, amount, mask=None, *, generator=None, **options):
    """Prune `amount` still-unpruned weights uniformly at random (torch RandomUnstructured)."""
    return _unstructured("random_unstructured", weight, amount, mask, generator, options)


def _structured(method, weight, amount, mask, generator, n, dim, note_out=None):
    _check_amount(amount)
    dim = _check_dim(dim, weight)
    p = _ord(n) if method == "ln_structured" else None
    if method in RANDOM_METHODS:
        _need_generator(method, generator)
    w, mask = _prep(weight, mask)
    alive = _slices_alive(mask, dim)
    idx_alive = alive.nonzero().squeeze(1)
    rc = int(idx_alive.numel())
    k, note = _count(amount, rc, f"slices along dim {dim}")
    if note_out is not None:
        note_out.update(unit=f"slices along dim {dim}", remaining=rc, pruned=k, note=note)
    if k == 0:
        return mask.clone()
    keep = torch.zeros(w.shape[dim], dtype=torch.bool)
    if method == "ln_structured":
        sub = w.index_select(dim, idx_alive)
        norm = torch.linalg.vector_norm(sub, ord=p, dim=_other_dims(sub, dim))
        keep[idx_alive[torch.topk(norm, rc - k, largest=True).indices]] = True
    else:
        prob = torch.rand(rc, generator=generator)
        gone = torch.topk(prob, k, largest=False).indices
        keep_alive = torch.ones(rc, dtype=torch.bool)
        keep_alive[gone] = False
        keep[idx_alive[keep_alive]] = True
    return _apply_slice_keep(mask, dim, keep)


def ln_structured(weight, amount, mask=None, *, generator=None, n=1, dim=1, **options):
    """Remove the `amount` remaining slices along `dim` with the smallest L_n norm."""
    _no_options("ln_structured", options)
    return _structured("ln_structured", weight, amount, mask, generator, n, dim)


def random_structured(weight, amount, mask=None, *, generator=None, dim=1, **options):
    """Remove `amount` remaining slices along `dim` chosen uniformly at random."""
    _no_options("random_structured", options)
    return _structured("random_structured", weight, amount, mask, generator, None, dim)


METHODS = {
    "l1_unstructured": l1_unstructured,
    "random_unstructured": random_unstructured,
    "ln_structured": ln_structured,
    "random_structured": random_structured,
}
_ALL_METHODS = (*METHODS, "from_state")


def compute_mask(method, weight, amount, mask, *, generator=None, **options):
    """New bool mask of `weight` after pruning `amount` more with `method`."""
    if method == "from_state":
        raise SpecError("method 'from_state' takes its masks from another state; use transplant_mask")
    if method not in METHODS:
        raise choice_error("pruning method", method, _ALL_METHODS)
    return METHODS[method](weight, amount, mask, generator=generator, **options)


def transplant_mask(masks, source_masks):
    """`masks & source_masks` per layer (never revives); names and shapes must match."""
    _same_names(masks, source_masks, "source masks")
    out = {}
    for name, m in masks.items():
        s = source_masks[name]
        if tuple(s.shape) != tuple(m.shape):
            raise SpecError(
                f"source mask {name!r} has shape {tuple(s.shape)}, expected {tuple(m.shape)}"
            )
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


# --------------------------------------------------------------------------- specs
_STEP_KEYS = ("method", "amount", "scope", "n", "dim", "include", "exclude", "bias", "layers", "seed")
_FROM_STATE_KEYS = ("method", "state", "seed")
_OVERRIDE_KEYS = ("method", "amount", "n", "dim", "skip")


def _check_keys(d, allowed, what):
    if not isinstance(d, Mapping):
        raise SpecError(f"{what} must be a mapping, got {d!r}")
    for key in d:
        if key not in allowed:
            raise SpecError(f"unknown key {key!r} in {what}; allowed: {', '.join(allowed)}")


def _check_selector(sel, what):
    if not isinstance(sel, str) or not sel:
        raise SpecError(f"invalid selector {sel!r} in {what}; allowed: a glob on parameter names "
                        f"or one of {', '.join(SELECTOR_TOKENS)}")
    if sel.startswith("@") and sel not in SELECTOR_TOKENS:
        raise choice_error(f"selector token in {what}", sel, SELECTOR_TOKENS)
    return sel


def _selector_list(value, what):
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise SpecError(f"invalid {what} {value!r}; allowed: a list of selectors")
    return sorted({_check_selector(s, what) for s in value})


def _check_method(method, allowed=_ALL_METHODS):
    if not isinstance(method, str) or method not in allowed:
        raise choice_error("pruning method", method, allowed)
    return method


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise SpecError(f"invalid seed {seed!r}; allowed: an int >= 0")
    return int(seed)


def _method_config(method, amount, n, dim, *, n_given, dim_given, where):
    """Canonical {"method", "amount", ["n"], ["dim"]} for one (effective) method."""
    if n_given and method != "ln_structured":
        raise SpecError(f"option 'n' ({n!r}) in {where} applies only to ln_structured, not {method}")
    if dim_given and method not in STRUCTURED_METHODS:
        raise SpecError(f"option 'dim' ({dim!r}) in {where} applies only to structured methods, "
                        f"not {method}")
    cfg = {"method": method, "amount": _check_amount(amount, f"amount in {where}")}
    if method == "ln_structured":
        cfg["n"] = _canonical_n(n)
    if method in STRUCTURED_METHODS:
        cfg["dim"] = _check_dim(dim)
    return cfg


def _raw_layers(layers):
    """[(selector, override dict)] from the dict form or the resolved list form."""
    if isinstance(layers, Mapping):
        return list(layers.items())
    if isinstance(layers, (list, tuple)):
        out = []
        for entry in layers:
            if not isinstance(entry, Mapping) or "select" not in entry:
                raise SpecError(f"invalid layers entry {entry!r}; allowed: a mapping with 'select'")
            out.append((entry["select"], {k: v for k, v in entry.items() if k != "select"}))
        return out
    raise SpecError(f"invalid layers {layers!r}; allowed: a mapping {{selector: override}}")


def _is_zero_amount(a):
    return isinstance(a, numbers.Real) and not isinstance(a, bool) and a == 0


def resolve_prune_step(step: dict) -> dict:
    """Validated, canonical prune step: defaults filled, inapplicable options removed.

    Idempotent: ``resolve_prune_step(resolve_prune_step(s)) == resolve_prune_step(s)``.
    """
    if not isinstance(step, Mapping):
        raise SpecError(f"prune step must be a mapping, got {step!r}")
    if "method" not in step:
        raise SpecError("prune step has no 'method'; allowed: " + ", ".join(_ALL_METHODS))
    method = _check_method(step["method"])

    if method == "from_state":
        _check_keys(step, _FROM_STATE_KEYS, "prune step (from_state)")
        ref = step.get("state")
        if not isinstance(ref, str) or not ref:
            raise SpecError(f"from_state needs 'state': a state reference string, got {ref!r}")
        return {"method": "from_state", "state": ref}

    _check_keys(step, _STEP_KEYS, "prune step")
    if "amount" not in step:
        raise SpecError(f"prune step has no 'amount'; allowed: {_AMOUNT_ALLOWED}")
    scope = step.get("scope", "layer")
    if scope not in ("layer", "global"):
        raise choice_error("scope", scope, ("layer", "global"))
    if scope == "global" and method not in UNSTRUCTURED_METHODS:
        raise SpecError(f"scope 'global' needs an unstructured method, got {method!r}; "
                        f"allowed: {', '.join(UNSTRUCTURED_METHODS)}")
    bias = step.get("bias", False)
    if bias is not False:
        raise SpecError(f"bias pruning not supported yet (bias={bias!r}); allowed: false")

    n_given, dim_given = "n" in step, "dim" in step
    n, dim = step.get("n", 1), step.get("dim", 1)
    if n_given:
        _canonical_n(n)
    if dim_given:
        _check_dim(dim)

    # overrides: each becomes its full effective config
    overrides, methods_used = [], {method}
    for sel, ov in _raw_layers(step.get("layers", {})):
        sel = _check_selector(sel, "layers")
        where = f"layers[{sel!r}]"
        _check_keys(ov, _OVERRIDE_KEYS, where)
        skip = ov.get("skip", False)
        if not isinstance(skip, bool):
            raise SpecError(f"invalid skip {skip!r} in {where}; allowed: true or false")
        if skip or _is_zero_amount(ov.get("amount")):
            extra = [k for k in ov if k not in ("skip", "amount")] + (
                ["amount"] if "amount" in ov and not _is_zero_amount(ov["amount"]) else [])
            if extra:
                raise SpecError(f"{where} skips the layer but also sets {extra[0]!r}; "
                                f"allowed with skip: nothing else")
            overrides.append({"select": sel, "skip": True})
            continue
        ov_method = _check_method(ov.get("method", method), tuple(METHODS))
        if "n" in ov and ov_method != "ln_structured":
            raise SpecError(f"option 'n' ({ov['n']!r}) in {where} applies only to ln_structured, "
                            f"not {ov_method}")
        if "dim" in ov and ov_method not in STRUCTURED_METHODS:
            raise SpecError(f"option 'dim' ({ov['dim']!r}) in {where} applies only to structured "
                            f"methods, not {ov_method}")
        cfg = _method_config(ov_method, ov.get("amount", step["amount"]),
                             ov.get("n", n), ov.get("dim", dim),
                             n_given=False, dim_given=False, where=where)
        overrides.append({"select": sel, **cfg})
        methods_used.add(ov_method)

    if n_given and "ln_structured" not in methods_used:
        raise SpecError(f"option 'n' ({n!r}) applies only to ln_structured, not {method}")
    if dim_given and not methods_used & set(STRUCTURED_METHODS):
        raise SpecError(f"option 'dim' ({dim!r}) applies only to structured methods, not {method}")

    top = _method_config(method, step["amount"], n, dim, n_given=False, dim_given=False,
                         where="prune step")
    out = {**top, "scope": scope,
           "include": _selector_list(step.get("include", ["*"]), "include"),
           "exclude": _selector_list(step.get("exclude", []), "exclude"),
           "bias": False, "layers": overrides}
    # No default seed: absent, the DAG derives one from the child's key (each branch its own draw).
    if step.get("seed") is not None:
        seed = _check_seed(step["seed"])
        if methods_used & set(RANDOM_METHODS):
            out["seed"] = seed
    return out


def _matches(sel, name, kinds, output):
    if sel == "@conv":
        return kinds[name] == "conv"
    if sel == "@linear":
        return kinds[name] == "linear"
    if sel == "@output":
        return name == output
    return fnmatch.fnmatchcase(name, sel)


def layer_plan(kinds, step) -> dict:
    """{name: config} for every layer in `kinds`: what this step does to it.

    Pruned layers: ``{"method", "amount", "scope", ["n"], ["dim"]}`` (scope "global"
    = part of the global pool); others ``{"skip": True}``. from_state steps give
    ``{"method": "from_state", "state": ref}`` for every layer.
    """
    step = resolve_prune_step(step)
    if not kinds:
        return {}
    names = list(kinds)
    if step["method"] == "from_state":
        return {name: {"method": "from_state", "state": step["state"]} for name in names}
    output = names[-1]
    sels = [("include", s) for s in step["include"]] + [("exclude", s) for s in step["exclude"]]
    sels += [("layers", o["select"]) for o in step["layers"]]
    for what, sel in sels:
        if sel != "*" and not sel.startswith("@") and not any(
                fnmatch.fnmatchcase(name, sel) for name in names):
            raise SpecError(f"selector {sel!r} in {what} matches no prunable parameter; "
                            f"allowed: globs over {', '.join(names)} or {', '.join(SELECTOR_TOKENS)}")
    top = {k: step[k] for k in ("method", "amount", "n", "dim") if k in step}
    plan = {}
    for name in names:
        selected = any(_matches(s, name, kinds, output) for s in step["include"]) and not any(
            _matches(s, name, kinds, output) for s in step["exclude"])
        if not selected:
            plan[name] = {"skip": True}
            continue
        chosen = None
        for ov in step["layers"]:
            if _matches(ov["select"], name, kinds, output):
                chosen = ov
        if chosen is None:
            plan[name] = {**top, "scope": step["scope"]}
        elif chosen.get("skip"):
            plan[name] = {"skip": True}
        else:
            plan[name] = {**{k: v for k, v in chosen.items() if k != "select"}, "scope": "layer"}
    return plan


def prune_masks(weights, masks, kinds, step, *, generator, source_masks=None, report=None):
    """Apply one prune step to all selected layers; returns a full new masks dict.

    weights: effective weights (at least every name in `masks`); masks: current masks,
    one per prunable parameter (keys == kinds); step: a prune step spec (resolved or
    not). For ``from_state`` steps pass the other state's masks as `source_masks`.
    If `report` is a dict it is filled with ``{name: {...}}`` per layer: method,
    amount, scope, unit, remaining (before), pruned, and a note when rounding gave 0
    or keep-at-least-one capped the count; skipped layers get ``{"skip": True, "pruned": 0}``.
    """
    step = resolve_prune_step(step)
    _same_names(kinds, masks, "masks")
    if step["method"] == "from_state":
        if source_masks is None:
            raise SpecError(f"from_state step (state {step['state']!r}) needs the source state's masks")
        return transplant_mask(masks, source_masks)
    for name in masks:
        if name not in weights:
            raise SpecError(f"weights have no tensor for prunable parameter {name!r}")
        if tuple(weights[name].shape) != tuple(masks[name].shape):
            raise SpecError(f"weights[{name!r}] has shape {tuple(weights[name].shape)}, "
                            f"mask has {tuple(masks[name].shape)}")
    plan = layer_plan(kinds, step)
    random_used = [p["method"] for p in plan.values() if p.get("method") in RANDOM_METHODS]
    if random_used:
        _need_generator(random_used[0], generator)
    new = {name: m.detach().to(torch.bool).clone() for name, m in masks.items()}
    rep = {}

    pool = [name for name in kinds if plan[name].get("scope") == "global"]
    if pool:
        _prune_pool(step["method"], step["amount"], pool, weights, masks, new, generator, rep)

    for name in kinds:
        cfg = plan[name]
        if cfg.get("skip"):
            rep[name] = {"skip": True, "pruned": 0}
            continue
        if cfg["scope"] == "global":
            continue
        info = {}
        try:
            if cfg["method"] in STRUCTURED_METHODS:
                new[name] = _structured(cfg["method"], weights[name], cfg["amount"], masks[name],
                                        generator, cfg.get("n"), cfg["dim"], info)
            else:
                new[name] = _unstructured(cfg["method"], weights[name], cfg["amount"], masks[name],
                                          generator, {}, info)
        except SpecError as e:
            raise SpecError(f"layer {name!r}: {e}") from None
        rep[name] = {**{k: v for k, v in cfg.items()}, **info}
    if report is not None:
        for name in kinds:
            report[name] = {k: v for k, v in rep[name].items() if v is not None}
    return new


def _prune_pool(method, amount, pool, weights, masks, new, generator, rep):
    """Global scope: one threshold over the concatenated remaining weights of `pool`."""
    w_parts, cand_parts, sizes = [], [], []
    for name in pool:
        w, m = _prep(weights[name], masks[name])
        cand = m.reshape(-1).nonzero().squeeze(1)
        cand_parts.append(cand)
        w_parts.append(w.reshape(-1)[cand])
        sizes.append(int(cand.numel()))
    values = torch.cat(w_parts)
    total = int(values.numel())
    try:
        k, note = _count(amount, total, "weights in the global pool")
    except SpecError as e:
        raise SpecError(f"global scope over {', '.join(pool)}: {e}") from None
    gone = torch.zeros(total, dtype=torch.bool)
    if k > 0:
        idx, score = _unstructured_choice(method, values, k, generator)
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
        rep[name] = {"method": method, "amount": amount, "scope": "global", "unit": "weights",
                     "remaining": size, "pruned": pruned, "note": layer_note}
        start += size
