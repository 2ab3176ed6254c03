"""Sanity-check controls: sibling branches off a pruned state (`CONTROLS`, ``controls:`` of a recipe)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SpecError, require
from ..plan import Naming, Node, PlanBuilder
from ..registry import Registry, load_impl


@dataclass(frozen=True)
class Control:
    """A named sanity check (``controls: [layer_shuffle]``): ``impl(prune, reinit, pruned_from)`` returns
    the control's ``{reinit?, prune?}`` for a branch whose own prune step is `prune`, whose reinit is
    `reinit` (None: it trains the pruned weights) and whose pruned state was pruned from the plan node
    named `pruned_from`. ``prune`` in the result is merged over the branch's prune step (a sibling
    pruned state from the same parent); ``reinit`` replaces the branch's."""

    # a registry entry's usual shape (`background`, `runners.evaluations`, `training` have their own alike):
    # each registry's entry type says what its callers need, so they stay separate classes
    name: str
    impl: str
    help: str = ""

    def load(self):
        return load_impl(self.impl)


CONTROLS: Registry[Control] = Registry("control")
CONTROLS.add(
    Control(
        "layer_shuffle",
        "mlprune.recipes.controls:layer_shuffle_control",
        "each layer's mask permuted at random: the same per-layer sparsity, no position; the weights "
        "the branch would start from (Frankle et al. 2021, Su et al. 2020)",
    )
)
CONTROLS.add(
    Control(
        "reinit",
        "mlprune.recipes.controls:reinit_control",
        "the same mask, a fresh initialization (the random-reinit control)",
    )
)
CONTROLS.add(
    Control(
        "invert",
        "mlprune.recipes.controls:invert_control",
        "methods with an invert option (score methods, lamp, nm, the channel criteria): the mask of the inverted "
        "scores (keep the lowest), pruned from the same parent",
    )
)


def _weights_source(reinit: dict | None, pruned_from: str) -> dict:
    """Where the branch's weights come from: its reinit's source, else the state that was pruned."""
    from ..reinit import STRATEGIES

    if reinit and reinit.get("strategy") in STRATEGIES and STRATEGIES[reinit["strategy"]].reads_source:
        return {k: reinit[k] for k in ("to", "at", "epoch") if reinit.get(k) is not None}
    return {"to": "root" if pruned_from == "root" else f"state:{pruned_from}"}


def layer_shuffle_control(prune: dict, reinit: dict | None, pruned_from: str) -> dict:
    # the pruned state's own weights are zero where the new mask may keep: shuffle from the dense source
    return {"reinit": {"strategy": "shuffle", **_weights_source(reinit, pruned_from)}}


def reinit_control(prune: dict, reinit: dict | None, pruned_from: str) -> dict:
    return {"reinit": {"strategy": "random"}}


def invert_control(prune: dict, reinit: dict | None, pruned_from: str) -> dict:
    from ..pruning import METHODS

    method = prune.get("method")
    if method not in METHODS or "invert" not in METHODS[method].option_names:
        users = [m for m, e in METHODS.items() if "invert" in e.option_names]
        raise SpecError(
            f"control 'invert' needs a method that ranks by a score it can invert ({', '.join(users)}); "
            f"the branch prunes with {method!r}"
        )
    return {"prune": {"invert": not prune.get("invert", False)}}


_CONTROL_KEYS = ("name", "reinit", "prune", "retrain")


def resolve_control(control, prune: dict, reinit: dict | None, pruned_from: str, where: str) -> dict:
    """A control as ``{name, reinit?, prune?, retrain?}``: a named one expanded, a mapping checked."""
    if isinstance(control, str):
        if control not in CONTROLS:
            raise SpecError(
                f"{where}: unknown control {control!r}; allowed: {', '.join(CONTROLS)} or a mapping "
                f"{{name, reinit?, prune?, retrain?}}"
            )
        try:
            return {"name": control, **CONTROLS[control].load()(prune, reinit, pruned_from)}
        except SpecError as error:
            raise SpecError(f"{where}: {error}") from None
    require(
        isinstance(control, dict)
        and "name" in control
        and set(control) <= set(_CONTROL_KEYS)
        and ("reinit" in control or "prune" in control),
        f"{where}: must be a control name ({', '.join(CONTROLS)}) or a mapping with name and reinit and/or "
        f"prune (optionally retrain)",
    )
    require(
        isinstance(control["name"], str) and bool(control["name"]) and "/" not in control["name"],
        f"{where}: name must be a non-empty string without '/', got {control['name']!r}",
    )
    require(
        control.get("reinit") is None or isinstance(control["reinit"], dict),
        f"{where}: reinit must be a mapping or null",
    )
    require(
        control.get("prune") is None or isinstance(control["prune"], dict),
        f"{where}: prune must be a mapping of prune options merged over the branch's",
    )
    return dict(control)


def add_control(
    builder: PlanBuilder, control: dict, branch_steps: dict, *, pruned: Node, pruned_from: Node, naming: Naming, checked
) -> Node:
    """The control's trained state (and its own pruned state when it changes the prune step); its nodes
    name the branch they check (``control_of``: the pruned state's branch). `branch_steps`: the checked
    branch's ``prune``, ``reinit`` (or None) and ``train`` options, which the control changes."""
    prune, reinit, train = branch_steps["prune"], branch_steps["reinit"], branch_steps["train"]
    name, round, branch, label = naming.name, naming.round, naming.branch, naming.label
    base = pruned
    if control.get("prune"):
        base = checked(
            "prune",
            builder.child,
            f"prune.{name}",
            pruned_from,
            [{"prune": {**prune, **control["prune"]}}],
            round=round,
            branch=branch,
            role="pruned",
            control_of=pruned.branch,
        )
    own_reinit = control["reinit"] if "reinit" in control else reinit
    steps = ([{"reinit": own_reinit}] if own_reinit else []) + [{"train": dict(control.get("retrain") or train)}]
    return checked(
        "reinit / retrain",
        builder.child,
        name,
        base,
        steps,
        round=round,
        branch=branch,
        role="trained",
        label=label,
        control_of=pruned.branch,
    )
