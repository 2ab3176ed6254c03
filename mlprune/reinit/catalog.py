"""The reinit strategy catalog and the reinit step spec; pure Python, no torch (see `mlprune.reinit`)."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import SpecError, choice_error
from ..plugins import PLUGINS_KEY, code_identities
from ..registry import Registry, load_impl
from ..spec.times import parse_time


@dataclass(frozen=True)
class Strategy:
    """One reinit strategy: what it reads and where its function is (``reinit.strategies``)."""

    name: str
    impl: str
    reads_source: bool = False   # reads a weights source (`to`, `at`): a second parent, role "weights"
    random: bool = False         # draws from a seeded generator
    fresh_init: bool = False     # needs a new initialization of the architecture
    options: tuple[str, ...] = ()  # boolean options it takes (False by default, in the key only when true)
    help: str = ""

    def load(self):
        return load_impl(self.impl)


STRATEGIES: Registry[Strategy] = Registry("reinit strategy", group="mlprune.reinit")
STRATEGIES.add(Strategy("rewind", "mlprune.reinit.strategies:rewind", reads_source=True,
                        help="the source's weights, masked (lottery-ticket rewinding)"))
STRATEGIES.add(Strategy("random", "mlprune.reinit.strategies:fresh", random=True, fresh_init=True,
                        help="a fresh initialization (the step's or a derived seed), same mask"))
STRATEGIES.add(Strategy("sign", "mlprune.reinit.strategies:sign", reads_source=True, options=("biases",),
                        help="±1 with the sign of the source's weight (unscaled, as the seed); biases: true "
                             "does the same to the pruned layers' biases (as the seed did)"))
STRATEGIES.add(Strategy("zhou", "mlprune.reinit.strategies:zhou", reads_source=True, options=("biases",),
                        help="std(source layer) × sign(source weight) (Zhou et al. 2019); biases: true "
                             "does the same to the pruned layers' biases (as the seed did)"))
STRATEGIES.add(Strategy("shuffle", "mlprune.reinit.strategies:shuffle", reads_source=True, random=True,
                        help="the source's weights, each layer's mask permuted at random (same sparsity)"))
STRATEGIES.add(Strategy("keep", "mlprune.reinit.strategies:keep", help="unchanged (fine-tuning)"))

_STEP_KEYS = ("strategy", "to", "at", "epoch", "seed", "reset_optimizer", "biases")


def _check_to(to):
    if to in ("root", "parent"):
        return to
    if isinstance(to, str) and to.startswith("state:") and len(to) > len("state:"):
        return to
    raise SpecError(f"invalid rewind target 'to' {to!r}; allowed: 'root', 'parent', 'state:<ref>'")


def resolve_reinit_step(step: dict) -> dict:
    """Validated, canonical reinit step (defaults filled, inapplicable options removed).

    Idempotent: resolving a resolved step returns an equal dict.
    """
    if not isinstance(step, Mapping):
        raise SpecError(f"reinit step must be a mapping, got {step!r}")
    step = {k: v for k, v in step.items() if k != PLUGINS_KEY}  # derived again, never taken as given
    for key in step:
        if key not in _STEP_KEYS:
            raise SpecError(f"unknown key {key!r} in reinit step; allowed: {', '.join(_STEP_KEYS)}")
    if "strategy" not in step:
        raise SpecError("reinit step has no 'strategy'; allowed: " + ", ".join(STRATEGIES))
    strategy = step["strategy"]
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise choice_error("reinit strategy", strategy, STRATEGIES)
    entry = STRATEGIES[strategy]
    out = {"strategy": strategy}
    if entry.reads_source:
        out["to"] = _check_to(step.get("to", "root"))
        epoch, at = step.get("epoch"), step.get("at")
        if epoch is not None:
            if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
                raise SpecError(f"invalid epoch {epoch!r}; allowed: null or an int >= 0")
            if at is not None:
                raise SpecError(f"give the rewind point once: 'at' ({at!r}) or 'epoch' ({epoch!r}), not both")
            at = int(epoch)
        out["at"] = None if at is None else str(parse_time(at, "rewind point 'at'"))
    else:
        for key in ("to", "at", "epoch"):
            if key in step:
                raise SpecError(f"option {key!r} ({step[key]!r}) does not apply to reinit "
                                f"{strategy!r}; allowed for: {', '.join(STRATEGIES.where(reads_source=True))}")
    # No default seed: left out, the executor derives one from the state's key, so each branch
    # draws its own numbers (a default of 0 would make `random` re-create a seed-0 root's init).
    seed = step.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                             or not 0 <= seed < 2 ** 63):
        raise SpecError(f"invalid seed {seed!r}; allowed: an int in [0, 2^63)")
    if entry.random and seed is not None:
        out["seed"] = int(seed)
    for option in ("biases",):
        if option in step and option not in entry.options:
            raise SpecError(f"option {option!r} ({step[option]!r}) does not apply to reinit {strategy!r}; "
                            f"allowed for: {', '.join(n for n, e in STRATEGIES.items() if option in e.options)}")
        value = step.get(option, False)
        if not isinstance(value, bool):
            raise SpecError(f"invalid {option} {value!r}; allowed: true or false")
        if value:  # in the key only when set: old keys stay
            out[option] = True
    reset = step.get("reset_optimizer", True)
    if not isinstance(reset, bool):
        raise SpecError(f"invalid reset_optimizer {reset!r}; allowed: true or false")
    if reset is False:
        # states store weights and masks, not optimizer moments: every train step starts a new optimizer
        raise SpecError("reset_optimizer: false is not supported: each train step starts a fresh optimizer "
                        "(states do not store optimizer moments)")
    out["reset_optimizer"] = reset
    plugins = code_identities([(STRATEGIES, strategy)])
    if plugins:  # only for a plugin strategy: built-in keys stay as they were
        out[PLUGINS_KEY] = plugins
    return out
