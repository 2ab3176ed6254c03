"""Pruning: the method catalog and the prune step spec (pure Python; the tensor maths are in `masks`).

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

This package's ``__init__`` is the catalog and the spec rules; it imports no torch, so
recipes are planned and validated without it. The tensor maths are in
``pruning.masks`` (``compute_mask``, ``prune_masks``, ``transplant_mask``, also
reachable here).

Methods: one ``Method`` entry each in ``METHODS`` (``l1_unstructured``,
``random_unstructured``, ``ln_structured`` (options ``n`` in 1, 2, inf, -inf --
``"inf"``/``"-inf"`` strings or float infinities -- and ``dim``),
``random_structured`` (``dim``), and the score methods ``snip``, ``grasp``,
``synflow``). An entry says whether the method removes single weights or whole slices,
whether it draws random numbers, which options it takes (a ``spec.options.Schema``) and
where its implementation is. Taking the mask of another state is the step kind
``transplant`` (a recipe's ``prune: {method: from_state, from: ...}`` is one): the caller
loads that state's masks and calls ``transplant_mask``.

Score methods (``Method.scorer``; ``pruning.scores``): their keep scores come from the
network (SNIP's gradients, GraSP's Hessian-gradient product, SynFlow's data-free flow),
so the caller passes ``scores=`` to ``prune_masks``. Their scope defaults to
``global``; the selection is exact (``round(amount * remaining)`` of the pool, the
lowest scores, or the highest with ``invert``), done in ``iterations`` rounds on an
exponential schedule for SynFlow, and spares no layer (layer collapse shows as a
layer with sparsity 1; with ``scope: layer`` each layer keeps at least one weight).
Overrides in ``layers`` may skip a layer or use a non-score method; a score method
prunes all its layers together.

More methods (docs/pruning.md has each paper's formula): ``lamp`` scores weights from the
weights alone (``Method.weight_scorer``, selected like the score methods, ``global`` by
default); ``nm`` is a *pattern* (granularity ``"pattern"``: N of every M consecutive inputs,
its amount ``1 - n/m``); ``fpgm``, ``taylor`` and ``bn_scale`` are slice methods, the last two
ranking values their scorer computes from the network (``w · ∂L/∂w``, ``|γ|``) instead of the
weights. The prune option ``distribution`` (``pruning.catalog.DISTRIBUTIONS``) names the two
scopes (``uniform`` = layer, ``global``) and two layer budgets (``uniform_plus``, ``erk``;
``pruning.budgets``) that give each layer of the pool its own count.

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
                                       #   random_structured, snip, grasp, synflow
     "amount": 0.2,                    # required
     "scope": "layer",                 # or "global" (unstructured methods only)
     "n": 1, "dim": 1,                 # ln_structured: n and dim; random_structured: dim
     "include": ["*"], "exclude": [],  # selectors of the layers this step prunes
     "bias": False,                    # True -> SpecError (bias pruning not supported yet)
     "coupled": False,                 # structured methods: remove whole channels with everything
                                       #   they feed or belong to (pruning.structure); in the key
                                       #   only when true
     "layers": {<selector>: {"method": ..., "amount": ..., "n": ..., "dim": ...,
                             "skip": bool}},
     "seed": <int>}                    # kept only when given and a random method is used;
                                       # absent: derived from the state's key by the DAG

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

from .catalog import METHODS, SELECTOR_TOKENS, Method, method_options, n_to_prune
from .prune_step import layer_plan, prune_schema, resolve_prune_step

__all__ = [
    "METHODS",
    "Method",
    "prune_schema",
    "SELECTOR_TOKENS",
    "resolve_prune_step",
    "layer_plan",
    "n_to_prune",
    "method_options",
    "compute_mask",
    "prune_masks",
    "transplant_mask",
]

_TENSOR_API = (
    "compute_mask",
    "prune_masks",
    "transplant_mask",
    "l1_unstructured",
    "random_unstructured",
    "ln_structured",
    "random_structured",
)


def __getattr__(name):
    # the tensor functions live in pruning.masks (torch); reachable here without importing torch early
    if name in _TENSOR_API:
        from . import masks

        return getattr(masks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
