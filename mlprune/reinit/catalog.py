"""The reinit strategy catalog and the reinit step spec; pure Python, no torch (see `mlprune.reinit`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import SpecError, choice_error
from ..plugins import PLUGINS_KEY, code_identities
from ..registry import Registry, load_impl
from ..spec.options import REQUIRED, Option, Schema, any_value, boolean, integer, optional, seed_value, time_value
from ..spec.times import parse_time


@dataclass(frozen=True)
class Strategy:
    """One reinit strategy: what it reads and where its function is (``reinit.strategies``)."""

    name: str
    impl: str
    reads_source: bool = False  # reads a weights source (`to`, `at`): a second parent, role "weights"
    random: bool = False  # draws from a seeded generator
    fresh_init: bool = False  # needs a new initialization of the architecture
    options: Schema = Schema("reinit strategy option", ())  # what it takes beyond the step's common options
    help: str = ""

    def load(self):
        return load_impl(self.impl)


# in the key only when set (at its default, a strategy's option leaves old keys as they were)
_BIASES = Option(
    "biases",
    False,
    boolean,
    "sign, zhou: set the pruned layers' biases the same way (as the seed did)",
    key="unless_default",
)
_SIGNED = Schema("reinit strategy option", (_BIASES,))

STRATEGIES: Registry[Strategy] = Registry("reinit strategy", group="mlprune.reinit")
STRATEGIES.add(
    Strategy(
        "rewind",
        "mlprune.reinit.strategies:rewind",
        reads_source=True,
        help="the source's weights, masked (lottery-ticket rewinding)",
    )
)
STRATEGIES.add(
    Strategy(
        "random",
        "mlprune.reinit.strategies:fresh",
        random=True,
        fresh_init=True,
        help="a fresh initialization (the step's or a derived seed), same mask",
    )
)
STRATEGIES.add(
    Strategy(
        "sign",
        "mlprune.reinit.strategies:sign",
        reads_source=True,
        options=_SIGNED,
        help="±1 with the sign of the source's weight (unscaled, as the seed); biases: true "
        "does the same to the pruned layers' biases (as the seed did)",
    )
)
STRATEGIES.add(
    Strategy(
        "zhou",
        "mlprune.reinit.strategies:zhou",
        reads_source=True,
        options=_SIGNED,
        help="std(source layer) × sign(source weight) (Zhou et al. 2019); biases: true "
        "does the same to the pruned layers' biases (as the seed did)",
    )
)
STRATEGIES.add(
    Strategy(
        "shuffle",
        "mlprune.reinit.strategies:shuffle",
        reads_source=True,
        random=True,
        help="the source's weights, each layer's mask permuted at random (same sparsity)",
    )
)
STRATEGIES.add(Strategy("keep", "mlprune.reinit.strategies:keep", help="unchanged (fine-tuning)"))


def _check_to(to, name="to"):
    if to in ("root", "parent"):
        return to
    if isinstance(to, str) and to.startswith("state:") and len(to) > len("state:"):
        return to
    raise SpecError(f"invalid rewind target 'to' {to!r}; allowed: 'root', 'parent', 'state:<ref>'")


def _check_strategy(strategy, name="strategy"):
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise choice_error("reinit strategy", strategy, STRATEGIES)
    return strategy


def _check_reset(reset, name):
    # states store weights and masks, not optimizer moments: every train step starts a new optimizer
    if boolean(reset, name) is False:
        raise SpecError(
            "reset_optimizer: false is not supported: each train step starts a fresh optimizer "
            "(states do not store optimizer moments)"
        )
    return reset


_SOURCE_OPTIONS = ("to", "at", "epoch")  # the weights source of strategies that read one (`reads_source`)


def _build(strategies) -> tuple[Schema, Schema]:
    own = Schema.union("reinit strategy option", (s.options for s in strategies))
    return own, Schema(
        "reinit option",
        (
            Option("strategy", REQUIRED, _check_strategy, " | ".join(s.name for s in strategies)),
            Option("to", "root", any_value, "the weights source: root, parent, state:<node> or a run id"),
            Option("at", None, optional(time_value), "rewind to this time of the first training (to: root)"),
            Option("epoch", None, integer(0, nullable=True), "the same as at: <epoch> (first version)", cli=False),
            # No default seed: left out, the executor derives one from the state's key, so each branch
            # draws its own numbers (a default of 0 would make `random` re-create a seed-0 root's init).
            Option(
                "seed", None, optional(seed_value), "seed of random strategies (default: derived from the state's key)"
            ),
            *own,
            Option(
                "reset_optimizer",
                True,
                _check_reset,
                "every train step starts a fresh optimizer (false is refused)",
                cli=False,
            ),
        ),
    )


_BUILT: dict = {}


def _schemas() -> tuple[Schema, Schema]:
    """(the strategies' own options, the reinit step's options) for the strategies registered now (plugins'
    too), built once per set of strategies."""
    strategies = tuple(STRATEGIES.values())
    marker = tuple(map(id, strategies))
    if marker not in _BUILT:
        _BUILT.clear()
        _BUILT[marker] = (strategies, _build(strategies))  # the strategies kept: their ids stay theirs
    return _BUILT[marker][1]


def reinit_schema() -> Schema:
    """The reinit step's options: strategy, its weights source (to, at, epoch), seed, the strategies' own
    options (their union), reset_optimizer."""
    return _schemas()[1]


def _rewind_point(given: dict):
    """The rewind point of `given` (``at``, or the first version's ``epoch``) as time text, or None."""
    epoch, at = given.get("epoch"), given.get("at")
    if epoch is not None:
        epoch = reinit_schema()["epoch"].check(epoch, "epoch")
        if at is not None:
            raise SpecError(f"give the rewind point once: 'at' ({at!r}) or 'epoch' ({epoch!r}), not both")
        at = epoch
    return None if at is None else str(parse_time(at, "rewind point 'at'"))


def resolve_reinit_step(step: dict) -> dict:
    """Validated, canonical reinit step (`reinit_schema`; defaults filled, inapplicable options removed).

    Idempotent: resolving a resolved step returns an equal dict.
    """
    if not isinstance(step, Mapping):
        raise SpecError(f"reinit step must be a mapping, got {step!r}")
    step = {k: v for k, v in step.items() if k != PLUGINS_KEY}  # derived again, never taken as given
    own_options, schema = _schemas()
    given = schema.canonical_names(step)
    if "strategy" not in given:
        raise SpecError("reinit step has no 'strategy'; allowed: " + ", ".join(STRATEGIES))
    entry = STRATEGIES[_check_strategy(given["strategy"])]
    out = {"strategy": entry.name}
    if entry.reads_source:
        out["to"] = _check_to(given.get("to", "root"))
        out["at"] = _rewind_point(given)
    for key in _SOURCE_OPTIONS if not entry.reads_source else ():
        if key in given:
            raise SpecError(
                f"option {key!r} ({given[key]!r}) does not apply to reinit "
                f"{entry.name!r}; allowed for: {', '.join(STRATEGIES.where(reads_source=True))}"
            )
    seed = schema["seed"].check(given.get("seed"), "seed")
    if entry.random and seed is not None:
        out["seed"] = seed
    for option in own_options:
        if option.name in given and option.name not in entry.options:
            users = ", ".join(n for n, e in STRATEGIES.items() if option.name in e.options)
            raise SpecError(
                f"option {option.name!r} ({given[option.name]!r}) does not apply to reinit "
                f"{entry.name!r}; allowed for: {users}"
            )
    out.update(entry.options.resolve({k: v for k, v in given.items() if k in entry.options}))
    out["reset_optimizer"] = schema["reset_optimizer"].check(given.get("reset_optimizer", True), "reset_optimizer")
    plugins = code_identities([(STRATEGIES, entry.name)])
    if plugins:  # only for a plugin strategy: built-in keys stay as they were
        out[PLUGINS_KEY] = plugins
    return out
