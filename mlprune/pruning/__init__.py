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
``random_structured`` (``dim``), ``from_state``, and the score methods ``snip``,
``grasp``, ``synflow``). An entry says whether the method removes single weights or
whole slices, whether it draws random numbers, which options it takes and where its
implementation is. ``from_state`` takes the mask of another state: the caller loads it
and calls ``transplant_mask`` (or passes ``source_masks=`` to ``prune_masks``).

Score methods (``Method.scorer``; ``pruning.scores``): their keep scores come from the
network (SNIP's gradients, GraSP's Hessian-gradient product, SynFlow's data-free flow),
so the caller passes ``scores=`` to ``prune_masks``. Their scope defaults to
``global``; the selection is exact (``round(amount * remaining)`` of the pool, the
lowest scores, or the highest with ``invert``), done in ``iterations`` rounds on an
exponential schedule for SynFlow, and spares no layer (layer collapse shows as a
layer with sparsity 1; with ``scope: layer`` each layer keeps at least one weight).
Overrides in ``layers`` may skip a layer or use a non-score method; a score method
prunes all its layers together.

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
     "coupled": False,                 # structured methods: remove whole channels with everything
                                       #   they feed or belong to (pruning.structure); in the key
                                       #   only when true
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
from dataclasses import dataclass, field

from ..errors import SpecError, choice_error, shown
from ..registry import Registry
from ..spec.limits import MAX_BATCH_SIZE, MAX_PRUNE_ITERATIONS, MAX_SCORE_BATCHES

__all__ = [
    "METHODS", "Method", "SELECTOR_TOKENS", "resolve_prune_step", "layer_plan", "n_to_prune",
    "compute_mask", "prune_masks", "transplant_mask",
]

SELECTOR_TOKENS = ("@conv", "@linear", "@output")
_AMOUNT_ALLOWED = "a float in (0, 1) (fraction of what remains) or an int >= 1 (count to remove)"


# --------------------------------------------------------------------------- amounts and options
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


def _canonical_n(n, _name="n"):
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


def _check_dim_option(dim, _name="dim"):
    return _check_dim(dim)


# --------------------------------------------------------------------------- the catalog
@dataclass(frozen=True)
class MethodOption:
    """An option a method takes beyond method/amount/scope: its default and check."""

    name: str
    default: object
    check: object  # (value, name) -> canonical value
    help: str = ""


@dataclass(frozen=True)
class Method:
    """One pruning method.

    granularity: "weight" (single weights), "slice" (whole output / input slices along
    ``dim``) or "transplant" (the mask of another state). ``impl``: for "weight" methods
    a function ``(candidate values, k, generator) -> (indices to prune, keep score)``;
    for "slice" methods ``(remaining slices, k, generator, options) -> indices to keep``
    (see ``pruning.masks``).

    ``scorer``: methods that score the *network* (its gradients on data, or a data-free
    flow) rather than each weight's value: ``"module:function"`` of a function
    ``(model, masks, data, options) -> {param: keep scores}`` (``pruning.scores``). The
    caller hands ``prune_masks`` a ``scores(masks)`` callable built from it; the selection
    is then one exact choice over the layers' remaining weights (``pruning.masks``).
    """

    name: str
    granularity: str
    impl: str = ""
    random: bool = False                          # draws from a seeded generator
    options: tuple[MethodOption, ...] = ()
    short: str = ""                               # a few characters for run names; {option} is filled in
    help: str = ""
    scorer: str = ""                              # scores the network (needs the model and data)
    default_scope: str = "layer"                  # the scope when a step does not give one
    unit_impl: str = ""                           # slice methods, coupled pruning: (one vector per channel
                                                  #   unit, k, generator, options) -> indices to keep

    @property
    def structured(self) -> bool:
        return self.granularity == "slice"

    @property
    def scores_network(self) -> bool:
        return bool(self.scorer)

    def load_scorer(self):
        from ..registry import load_impl

        return load_impl(self.scorer)

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.options)

    def load(self):
        from ..registry import load_impl

        return load_impl(self.impl)

    def load_units(self):
        from ..registry import load_impl

        return load_impl(self.unit_impl)

    def describe(self, options: dict) -> str:
        """The method's short name with its options filled in ('l1-struct', 'l-inf-struct', 'snip inverted')."""
        return (self.short or self.name).format(**options) + (" inverted" if options.get("invert") else "")


def _bounded_count(maximum: int):
    """An int in 1..maximum (the bound: far beyond any real use, spec.limits)."""
    def check(value, name):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= maximum:
            raise SpecError(f"invalid {name} {shown(value)}; allowed: an int in 1..{maximum}")
        return int(value)
    check.doc = f"int in 1..{maximum}"
    return check


def _flag(value, name):
    if not isinstance(value, bool):
        raise SpecError(f"invalid {name} {value!r}; allowed: true or false")
    return value


def _positive_number(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise SpecError(f"invalid {name} {value!r}; allowed: a finite number > 0")
    return float(value)


_DIM = MethodOption("dim", 1, _check_dim_option,
                    "0 = output channels / neurons, 1 = input channels / features")
_N = MethodOption("n", 1, _canonical_n, "the norm: 1, 2, inf, -inf")
# score methods (pruning.scores): the data they look at, their iterations, the sanity check
_BATCHES = MethodOption("batches", 1, _bounded_count(MAX_SCORE_BATCHES),
                        "training batches the scores are computed on (the first ones of the root's data order)")
_BATCH_SIZE = MethodOption("batch_size", 128, _bounded_count(MAX_BATCH_SIZE), "examples per scoring batch")
_ITERATIONS = MethodOption("iterations", 100, _bounded_count(MAX_PRUNE_ITERATIONS),
                           "score-and-prune iterations on an exponential schedule of the remaining weights")
_TEMPERATURE = MethodOption("temperature", 200.0, _positive_number,
                            "softmax temperature of the loss whose Hessian-gradient product is taken "
                            "(the GraSP authors' code: 200)")
_INVERT = MethodOption("invert", False, _flag, "keep the lowest scores instead of the highest (a sanity check)")

METHODS: Registry[Method] = Registry("pruning method")
METHODS.add(Method("l1_unstructured", "weight", "mlprune.pruning.masks:choose_smallest_magnitude", short="l1",
                   help="the smallest |w| among the remaining weights"))
METHODS.add(Method("random_unstructured", "weight", "mlprune.pruning.masks:choose_at_random", random=True,
                   short="random", help="uniformly among the remaining weights"))
METHODS.add(Method("ln_structured", "slice", "mlprune.pruning.masks:keep_largest_norm", options=(_N, _DIM),
                   short="l{n}-struct", help="whole slices by their Ln norm",
                   unit_impl="mlprune.pruning.masks:keep_largest_unit_norm"))
METHODS.add(Method("random_structured", "slice", "mlprune.pruning.masks:keep_at_random", random=True,
                   options=(_DIM,), short="random-struct", help="whole slices at random",
                   unit_impl="mlprune.pruning.masks:keep_units_at_random"))
METHODS.add(Method("from_state", "transplant", short="transplant",
                   help="the mask of another state (`from`: a state)"))
# Score methods: pruning at initialization (or at any state); their scores use the masks already there.
METHODS.add(Method("snip", "weight", scorer="mlprune.pruning.scores:snip", default_scope="global",
                   options=(_BATCHES, _BATCH_SIZE, _INVERT), short="snip",
                   help="|g ⊙ w|: the loss gradient times the weight on data batches (Lee et al. 2019)"))
METHODS.add(Method("grasp", "weight", scorer="mlprune.pruning.scores:grasp", default_scope="global",
                   options=(_BATCHES, _BATCH_SIZE, _TEMPERATURE, _INVERT), short="grasp",
                   help="GraSP's S = -(H g) ⊙ w; the weights with the largest S go (Wang et al. 2020)"))
METHODS.add(Method("synflow", "weight", scorer="mlprune.pruning.scores:synflow", default_scope="global",
                   options=(_ITERATIONS, _INVERT), short="synflow",
                   help="iterative synaptic flow |∂R/∂w ⊙ w| of the all-ones input through |weights|, "
                        "data-free (Tanaka et al. 2020)"))


def _with_option(option: str) -> list[str]:
    return [m.name for m in METHODS.values() if option in m.option_names]


def _method_options() -> dict[str, MethodOption]:
    found = {}
    for method in METHODS.values():
        for option in method.options:
            found.setdefault(option.name, option)
    return found


# --------------------------------------------------------------------------- specs
_COMMON_KEYS = ("method", "amount", "scope", "include", "exclude", "bias", "coupled", "layers", "seed")
_FROM_STATE_KEYS = ("method", "state", "seed")


def _step_keys() -> tuple[str, ...]:
    return (*_COMMON_KEYS[:3], *_method_options(), *_COMMON_KEYS[3:])


def _override_keys() -> tuple[str, ...]:
    return ("method", "amount", *_method_options(), "skip")


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


def _check_method(method, layerwise=False):
    if not isinstance(method, str) or method not in METHODS or (
            layerwise and METHODS[method].granularity == "transplant"):
        allowed = [m for m in METHODS if not (layerwise and METHODS[m].granularity == "transplant")]
        raise choice_error("pruning method", method, allowed)
    return method


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2 ** 63:
        raise SpecError(f"invalid seed {seed!r}; allowed: an int in [0, 2^63)")
    return int(seed)


def _not_applicable(option, value, where, method):
    users = _with_option(option)
    what = users[0] if len(users) == 1 else ("structured methods" if option == "dim" else ", ".join(users))
    return SpecError(f"option {option!r} ({value!r}) in {where} applies only to {what}, not {method}")


def _method_config(method, amount, given: dict, where):
    """Canonical {"method", "amount", <the method's options>} for one (effective) method."""
    entry = METHODS[method]
    for option, value in given.items():
        if option not in entry.option_names:
            raise _not_applicable(option, value, where, method)
    cfg = {"method": method, "amount": _check_amount(amount, f"amount in {where}")}
    for option in entry.options:
        cfg[option.name] = option.check(given.get(option.name, option.default), option.name)
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
        raise SpecError("prune step has no 'method'; allowed: " + ", ".join(METHODS))
    method = _check_method(step["method"])
    entry = METHODS[method]

    if entry.granularity == "transplant":
        _check_keys(step, _FROM_STATE_KEYS, f"prune step ({method})")
        ref = step.get("state")
        if not isinstance(ref, str) or not ref:
            raise SpecError(f"{method} needs 'state': a state reference string, got {ref!r}")
        return {"method": method, "state": ref}

    _check_keys(step, _step_keys(), "prune step")
    if "amount" not in step:
        raise SpecError(f"prune step has no 'amount'; allowed: {_AMOUNT_ALLOWED}")
    scope = step.get("scope", entry.default_scope)
    if scope not in ("layer", "global"):
        raise choice_error("scope", scope, ("layer", "global"))
    if scope == "global" and entry.granularity != "weight":
        raise SpecError(f"scope 'global' needs an unstructured method, got {method!r}; "
                        f"allowed: {', '.join(METHODS.where(granularity='weight'))}")
    bias = step.get("bias", False)
    if bias is not False:
        raise SpecError(f"bias pruning not supported yet (bias={bias!r}); allowed: false")
    coupled = step.get("coupled", False)
    if not isinstance(coupled, bool):
        raise SpecError(f"invalid coupled {coupled!r}; allowed: true or false")

    # method options given at the top level apply to the step's method and are inherited by
    # overrides; each is checked where it is given, and must apply to some method used
    top_options = {name: step[name] for name in _method_options() if name in step}
    for name, value in top_options.items():
        _method_options()[name].check(value, name)

    # overrides: each becomes its full effective config
    overrides, methods_used = [], {method}
    for sel, ov in _raw_layers(step.get("layers", {})):
        sel = _check_selector(sel, "layers")
        where = f"layers[{sel!r}]"
        _check_keys(ov, _override_keys(), where)
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
        ov_method = _check_method(ov.get("method", method), layerwise=True)
        if METHODS[ov_method].scores_network:
            # one score method prunes its layers together (one pass through the network per iteration)
            others = [m for m, e in METHODS.items() if e.granularity != "transplant" and not e.scores_network]
            raise SpecError(f"{where} uses score method {ov_method!r}; a score method prunes all its layers "
                            f"together (the step's scope says how), so an override may skip a layer or use "
                            f"another method: {', '.join(others)}")
        own = {name: ov[name] for name in _method_options() if name in ov}
        for name, value in own.items():
            if name not in METHODS[ov_method].option_names:
                raise _not_applicable(name, value, where, ov_method)
        inherited = {name: value for name, value in top_options.items()
                     if name in METHODS[ov_method].option_names}
        cfg = _method_config(ov_method, ov.get("amount", step["amount"]), {**inherited, **own}, where)
        overrides.append({"select": sel, **cfg})
        methods_used.add(ov_method)

    for name, value in top_options.items():
        if not any(name in METHODS[m].option_names for m in methods_used):
            users = _with_option(name)
            what = users[0] if len(users) == 1 else ("structured methods" if name == "dim" else ", ".join(users))
            raise SpecError(f"option {name!r} ({value!r}) applies only to {what}, not {method}")

    top = _method_config(method, step["amount"],
                         {k: v for k, v in top_options.items() if k in entry.option_names}, "prune step")
    out = {**top, "scope": scope,
           "include": _selector_list(step.get("include", ["*"]), "include"),
           "exclude": _selector_list(step.get("exclude", []), "exclude"),
           "bias": False, "layers": overrides}
    if "*" in out["exclude"] or not out["include"]:
        raise SpecError(f"prune step excludes every layer (include {out['include']}, exclude {out['exclude']}): "
                        f"it would prune nothing; allowed: exclude selectors that leave a layer to prune")
    if coupled:  # in the key only when true: every existing prune step keeps its key
        unstructured = sorted(m for m in methods_used if not METHODS[m].structured)
        if unstructured:
            raise SpecError(f"coupled pruning removes whole channels; method {unstructured[0]!r} prunes single "
                            f"weights (allowed with coupled: {', '.join(METHODS.where(granularity='slice'))})")
        out["coupled"] = True
    # No default seed: absent, the executor derives one from the child's key (each branch its own draw).
    if step.get("seed") is not None:
        seed = _check_seed(step["seed"])
        if any(METHODS[m].random for m in methods_used):
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

    Pruned layers: ``{"method", "amount", "scope", <method options>}`` (scope "global"
    = part of the global pool); others ``{"skip": True}``. Transplant steps give
    ``{"method": "from_state", "state": ref}`` for every layer.
    """
    step = resolve_prune_step(step)
    if not kinds:
        return {}
    names = list(kinds)
    if METHODS[step["method"]].granularity == "transplant":
        return {name: {"method": step["method"], "state": step["state"]} for name in names}
    output = names[-1]
    sels = [("include", s) for s in step["include"]] + [("exclude", s) for s in step["exclude"]]
    sels += [("layers", o["select"]) for o in step["layers"]]
    for what, sel in sels:
        if sel != "*" and not sel.startswith("@") and not any(
                fnmatch.fnmatchcase(name, sel) for name in names):
            raise SpecError(f"selector {sel!r} in {what} matches no prunable parameter; "
                            f"allowed: globs over {', '.join(names)} or {', '.join(SELECTOR_TOKENS)}")
    top = {k: step[k] for k in ("method", "amount", *METHODS[step["method"]].option_names)}
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
    if all(config.get("skip") for config in plan.values()):
        raise SpecError(f"prune step selects no layer to prune (include {step['include']}, exclude "
                        f"{step['exclude']}{', layer overrides that skip' if step['layers'] else ''}): it would "
                        f"prune nothing; layers: {', '.join(names)}")
    return plan


_TENSOR_API = ("compute_mask", "prune_masks", "transplant_mask", "l1_unstructured", "random_unstructured",
               "ln_structured", "random_structured")


def __getattr__(name):
    # the tensor functions live in pruning.masks (torch); reachable here without importing torch early
    if name in _TENSOR_API:
        from . import masks

        return getattr(masks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
