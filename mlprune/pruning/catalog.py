"""The pruning method catalog: `Method` entries, their options, amounts and counts; pure Python, no torch (see `mlprune.pruning`)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from ..errors import SpecError
from ..registry import Registry
from ..spec.limits import MAX_BATCH_SIZE, MAX_NM_GROUP, MAX_PRUNE_ITERATIONS, MAX_SCORE_BATCHES
from ..spec.options import Option, Schema, boolean, integer, number, with_doc

SELECTOR_TOKENS = ("@conv", "@linear", "@output")
AMOUNT_ALLOWED = "a float in (0, 1) (fraction of what remains) or an int >= 1 (count to remove)"


# --------------------------------------------------------------------------- amounts and options
def check_amount(amount, what="pruning amount"):
    """Validate an amount (type and range); returns it unchanged."""
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
        raise SpecError(f"invalid {what} {amount!r}; allowed: {AMOUNT_ALLOWED}")
    if isinstance(amount, numbers.Integral):
        if amount < 1:
            raise SpecError(f"invalid {what} {amount!r}; allowed: {AMOUNT_ALLOWED}")
        return int(amount)
    amount = float(amount)
    if not (0.0 < amount < 1.0):  # also rejects nan
        raise SpecError(f"invalid {what} {amount!r}; allowed: {AMOUNT_ALLOWED}")
    return amount


def prune_count(amount, remaining: int, unit: str = "weights"):
    """(k, note): how many of `remaining` units to prune, and a note for the report."""
    amount = check_amount(amount)
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
    return prune_count(amount, int(remaining))[0]


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


def norm_order(n):
    n = _canonical_n(n)
    return {"inf": math.inf, "-inf": -math.inf}.get(n, n)


def check_dim(dim, weight=None):
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 0:
        raise SpecError(f"invalid dim {dim!r}; allowed: 0 (output channels/neurons) or 1 (inputs)")
    dim = int(dim)
    if weight is not None:
        if weight.dim() < 2:
            raise SpecError(f"structured pruning needs a tensor with >= 2 dims, got shape {tuple(weight.shape)}")
        if dim >= weight.dim():
            raise SpecError(
                f"dim {dim} out of range for weight of shape {tuple(weight.shape)}; allowed: 0..{weight.dim() - 1}"
            )
    return dim


def _check_dim_option(dim, _name="dim"):
    return check_dim(dim)


# --------------------------------------------------------------------------- the catalog
@dataclass(frozen=True)
class Method:
    """One pruning method.

    granularity: "weight" (single weights), "slice" (whole output / input slices along
    ``dim``) or "pattern" (a fixed pattern per layer, N:M: ``impl(weight, mask, options) -> (mask,
    note)``; its amount follows from its options). ``impl``: for "weight" methods a function ``(candidate values, k, generator) ->
    (indices to prune, keep score)``; for "slice" methods ``(remaining slices, k, generator,
    options) -> indices to keep`` (see ``pruning.masks``). ``options``: the `Schema` of what it
    takes beyond method / amount / scope (declared once; the prune step's schema is their union).

    ``scorer``: methods that score the *network* (its gradients on data, or a data-free
    flow) rather than each weight's value: ``"module:function"`` of a function
    ``(model, masks, data, options) -> {param: keep scores}`` (``pruning.scores``). The
    caller hands ``prune_masks`` a ``scores(masks)`` callable built from it; the selection
    is then one exact choice over the layers' remaining weights (``pruning.masks``).
    """

    name: str
    granularity: str
    impl: str = ""
    random: bool = False  # draws from a seeded generator
    options: Schema = Schema("method option", ())
    short: str = ""  # a few characters for run names; {option} is filled in
    help: str = ""
    scorer: str = ""  # scores the network (needs the model and data)
    default_scope: str = "layer"  # the scope when a step does not give one
    unit_impl: str = ""  # slice methods, coupled pruning: (one vector per channel
    #   unit, k, generator, options) -> indices to keep
    weight_scorer: str = ""  # scores from the weights alone: (effective weights, masks,
    #   options) -> {param: keep scores}; selected as `scorer`'s
    unscored: str = ""  # why a slice method with a scorer may have no values for a layer
    scorable: str = ""  # "module:function" (model) -> the layers it can score (checked
    #   before anything runs)

    @property
    def structured(self) -> bool:
        return self.granularity == "slice"

    @property
    def scores_network(self) -> bool:
        return bool(self.scorer)

    @property
    def scored(self) -> bool:
        """A single-weight method whose keep scores come from a scorer (the network's or the weights'):
        its layers are selected together (`pruning.masks`), not weight by weight."""
        return self.granularity == "weight" and bool(self.scorer or self.weight_scorer)

    @property
    def pattern(self) -> bool:
        """A method whose mask follows a fixed pattern (N:M): its amount follows from its options."""
        return self.granularity == "pattern"

    def implied_amount(self, options: dict) -> float:
        """A pattern method's amount: the fraction of a dense layer it prunes (1 - n/m)."""
        if not options["n"] < options["m"]:
            raise SpecError(f"invalid N:M pattern {options['n']}:{options['m']}; allowed: n < m (e.g. 2:4)")
        return 1.0 - options["n"] / options["m"]

    def load_scorable(self):
        from ..registry import load_impl

        return load_impl(self.scorable)

    def load_weight_scorer(self):
        from ..registry import load_impl

        return load_impl(self.weight_scorer)

    def load_scorer(self):
        from ..registry import load_impl

        return load_impl(self.scorer)

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(self.options.names)

    def load(self):
        from ..registry import load_impl

        return load_impl(self.impl)

    def load_units(self):
        from ..registry import load_impl

        return load_impl(self.unit_impl)

    def describe(self, options: dict) -> str:
        """The method's short name with its options filled in ('l1-struct', 'l-inf-struct', 'snip inverted')."""
        return (self.short or self.name).format(**options) + (" inverted" if options.get("invert") else "")


_DIM = Option(
    "dim", 1, with_doc(_check_dim_option, "0 | 1"), "0 = output channels / neurons, 1 = input channels / features"
)
_N = Option("n", 1, with_doc(_canonical_n, "1 | 2 | inf | -inf"), "the norm: 1, 2, inf, -inf")
# score methods (pruning.scores): the data they look at, their iterations, the sanity check
_BATCHES = Option(
    "batches",
    1,
    integer(1, MAX_SCORE_BATCHES),
    "training batches the scores are computed on (the first ones of the root's data order)",
)
_BATCH_SIZE = Option("batch_size", 128, integer(1, MAX_BATCH_SIZE), "examples per scoring batch")
_ITERATIONS = Option(
    "iterations",
    100,
    integer(1, MAX_PRUNE_ITERATIONS),
    "score-and-prune iterations on an exponential schedule of the remaining weights",
)
_TEMPERATURE = Option(
    "temperature",
    200.0,
    number(positive=True),
    "softmax temperature of the loss whose Hessian-gradient product is taken (the GraSP authors' code: 200)",
)
_INVERT = Option("invert", False, boolean, "keep the lowest scores instead of the highest (a sanity check)")


def _options(*options: Option) -> Schema:
    return Schema("method option", options)


# the channel criteria prune filters (output channels) unless told otherwise
_DIM_OUT = Option(
    "dim", 0, with_doc(_check_dim_option, "0 | 1"), "0 = output channels / neurons, 1 = input channels / features"
)
_NM_N = Option("n", 2, integer(1, MAX_NM_GROUP - 1), "N:M: weights kept in each group of m")
_NM_M = Option("m", 4, integer(1, MAX_NM_GROUP), "N:M: the group size, consecutive inputs")


@dataclass(frozen=True)
class Distribution:
    """How a prune step shares out what it keeps between the layers it prunes together (``distribution``).

    ``scope``: the distributions that are a scope of `pruning.masks` (``uniform``: each layer alone,
    ``global``: one threshold); the others give each layer a density of its own: ``impl`` is
    ``"module:function"`` of ``(shapes, density, first, output) -> {layer: density}`` (`pruning.budgets`).
    """

    name: str
    scope: str = ""
    impl: str = ""
    short: str = ""
    help: str = ""

    def load(self):
        from ..registry import load_impl

        return load_impl(self.impl)


DISTRIBUTIONS: Registry[Distribution] = Registry("distribution")
DISTRIBUTIONS.add(
    Distribution(
        "uniform", scope="layer", help="every layer prunes the same fraction of what remains in it (scope: layer)"
    )
)
DISTRIBUTIONS.add(Distribution("global", scope="global", help="one threshold over the layers (scope: global)"))
DISTRIBUTIONS.add(
    Distribution(
        "uniform_plus",
        impl="mlprune.pruning.budgets:uniform_plus_densities",
        short="uniform+",
        help="the target sparsity in every layer but the first (dense) "
        "and the output layer (at most 80 % sparse); Gale et al. 2019",
    )
)
DISTRIBUTIONS.add(
    Distribution(
        "erk",
        impl="mlprune.pruning.budgets:erk_densities",
        short="erk",
        help="Erdős–Rényi-Kernel densities ∝ (Σ shape / Π shape), scaled to the target; "
        "layers that would exceed density 1 dense, the rest re-scaled; Evci et al. 2020",
    )
)


METHODS: Registry[Method] = Registry("pruning method", group="mlprune.methods")
METHODS.add(
    Method(
        "l1_unstructured",
        "weight",
        "mlprune.pruning.masks:choose_smallest_magnitude",
        short="l1",
        help="the smallest |w| among the remaining weights",
    )
)
METHODS.add(
    Method(
        "random_unstructured",
        "weight",
        "mlprune.pruning.masks:choose_at_random",
        random=True,
        short="random",
        help="uniformly among the remaining weights",
    )
)
METHODS.add(
    Method(
        "ln_structured",
        "slice",
        "mlprune.pruning.masks:keep_largest_norm",
        options=_options(_N, _DIM),
        short="l{n}-struct",
        help="whole slices by their Ln norm",
        unit_impl="mlprune.pruning.masks:keep_largest_unit_norm",
    )
)
METHODS.add(
    Method(
        "random_structured",
        "slice",
        "mlprune.pruning.masks:keep_at_random",
        random=True,
        options=_options(_DIM),
        short="random-struct",
        help="whole slices at random",
        unit_impl="mlprune.pruning.masks:keep_units_at_random",
    )
)
# Score methods: pruning at initialization (or at any state); their scores use the masks already there.
METHODS.add(
    Method(
        "snip",
        "weight",
        scorer="mlprune.pruning.scores:snip",
        default_scope="global",
        options=_options(_BATCHES, _BATCH_SIZE, _INVERT),
        short="snip",
        help="|g ⊙ w|: the loss gradient times the weight on data batches (Lee et al. 2019)",
    )
)
METHODS.add(
    Method(
        "mag_grad",
        "weight",
        scorer="mlprune.pruning.scores:mag_grad",
        default_scope="global",
        options=_options(_BATCHES, _BATCH_SIZE, _INVERT),
        short="mag-grad",
        help="|w ⊙ ∂L/∂w| of a trained network, the gradient summed over a few batches "
        "(ShrinkBench's GlobalMagGrad / LayerMagGrad)",
    )
)
METHODS.add(
    Method(
        "grasp",
        "weight",
        scorer="mlprune.pruning.scores:grasp",
        default_scope="global",
        options=_options(_BATCHES, _BATCH_SIZE, _TEMPERATURE, _INVERT),
        short="grasp",
        help="GraSP's S = -(H g) ⊙ w; the weights with the largest S go (Wang et al. 2020)",
    )
)
METHODS.add(
    Method(
        "synflow",
        "weight",
        scorer="mlprune.pruning.scores:synflow",
        default_scope="global",
        options=_options(_ITERATIONS, _INVERT),
        short="synflow",
        help="iterative synaptic flow |∂R/∂w ⊙ w| of the all-ones input through |weights|, "
        "data-free (Tanaka et al. 2020)",
    )
)
# Layer-adaptive magnitude: a score from the weights alone, selected like the score methods (globally by default).
METHODS.add(
    Method(
        "lamp",
        "weight",
        weight_scorer="mlprune.pruning.criteria:lamp",
        default_scope="global",
        options=_options(_INVERT),
        short="lamp",
        help="LAMP: w_u² / Σ_{v >= u} w_v² within the layer (weights sorted by magnitude), then one "
        "global selection (Lee et al. 2021)",
    )
)
# N:M semi-structured: a fixed pattern (its amount is 1 - n/m), per layer.
METHODS.add(
    Method(
        "nm",
        "pattern",
        "mlprune.pruning.criteria:nm_pattern",
        options=_options(_NM_N, _NM_M, _INVERT),
        short="{n}:{m}",
        help="N:M: the n largest |w| of every m consecutive inputs (2:4 is what sparse tensor cores "
        "run); layers whose input size does not divide by m are left dense",
    )
)
# Channel criteria: slice methods; taylor and bn_scale rank values their scorer computes from the network.
METHODS.add(
    Method(
        "fpgm",
        "slice",
        "mlprune.pruning.criteria:keep_fpgm",
        options=_options(_DIM_OUT, _INVERT),
        short="fpgm-struct",
        unit_impl="mlprune.pruning.criteria:keep_fpgm_units",
        help="FPGM: the filters nearest the geometric median (smallest Σ of distances to the "
        "others) go (He et al. 2019)",
    )
)
METHODS.add(
    Method(
        "taylor",
        "slice",
        "mlprune.pruning.criteria:keep_taylor",
        scorer="mlprune.pruning.scores:taylor",
        options=_options(_DIM_OUT, _BATCHES, _BATCH_SIZE, _INVERT),
        short="taylor-struct",
        unit_impl="mlprune.pruning.criteria:keep_taylor_units",
        help="first-order Taylor |Σ_channel w·∂L/∂w| on data batches (Molchanov et al. 2019)",
    )
)
METHODS.add(
    Method(
        "bn_scale",
        "slice",
        "mlprune.pruning.criteria:keep_bn_scale",
        scorer="mlprune.pruning.scores:bn_scale",
        options=_options(_DIM_OUT, _INVERT),
        short="bn-struct",
        unit_impl="mlprune.pruning.criteria:keep_bn_scale_units",
        unscored="no BatchNorm right after it to read |γ| from; exclude it (e.g. include: ['@conv'])",
        scorable="mlprune.pruning.scores:bn_scale_layers",
        help="network slimming: |γ| of the BatchNorm after the channel (Liu et al. 2017); "
        "train with bn_l1 for the paper's L1 penalty on γ",
    )
)


def methods_with_option(option: str) -> list[str]:
    return [m.name for m in METHODS.values() if option in m.option_names]


def method_options() -> Schema:
    """Every method's options, each once (the first method that declares it gives its default and check)."""
    return Schema.union("method option", (m.options for m in METHODS.values()))
