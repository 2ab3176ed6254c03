"""Compiling a recipe to a plan: the rounds, their schedule, mask checkpoints and controls, then the sections.

    name: lt_structuredL1
    description: Lottery ticket, L1-structured pruning of input channels.
    params: {rounds: 2, amount: 0.2, epochs: 2, seed: 0, dataset: digits, model: lenet,
             lr: 0.01, batch_size: 32}
    protocols: {paper: {dataset: mnist, rounds: 20, epochs: 30}}   # -P protocol=paper
    root: {model: $model, dataset: $dataset, seed: $seed}
    train: {epochs: $epochs, lr: $lr, batch_size: $batch_size}
    rounds: $rounds
    prune: {method: ln_structured, n: 1, dim: 1, amount: $amount}
    reinit: {strategy: rewind, to: root}

compiles to the plan root -> train -> (prune -> reinit+train) x rounds
(`compile_recipe`, a `plan.Plan` of keyed nodes built with `plan.PlanBuilder`). Keys that add
states on their own (``cka``, ``one_shot``, ``spawn``) are `sections.SECTIONS` entries, called
after the rounds.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

from ..errors import SpecError, require, shown
from ..plan import Naming, Plan, PlanBuilder
from ..spec.limits import MAX_ROUNDS
from ..spec.times import parse_time
from .controls import add_control, resolve_control
from .files import read_recipe, resolve_params, substitute
from .sections import SECTIONS, RecipeContext


def plan_cka(value, recipe: RecipeContext) -> None:
    """`cka:` one analysis state per round: the round's trained state (a) vs the first training (b).

    Round 0 is the dense network against itself (CKA 1 by definition, a check of the estimator).
    """
    if value is False:
        return
    options = {} if value is True else value
    if not isinstance(options, dict) or "b" in options or "with" in options:
        raise SpecError(
            f"{recipe.where}: cka: must be true or a mapping of cka options (probe_size, batch_size, "
            f"seed); the reference is always round 0, got {value!r}"
        )
    dense = recipe.trained[0]
    for rnd, trained in sorted(recipe.trained.items()):
        recipe.checked(
            "cka",
            recipe.builder.child,
            f"cka{rnd}",
            trained,
            [{"cka": {**options, "b": f"state:{dense.name}"}}],
            round=rnd,
            role="cka",
            label=f"r{rnd} cka vs dense" if rnd else "cka dense vs itself",
        )


def _round_ranges(text, rounds: int, where: str) -> range:
    """The rounds of a schedule entry, cut to the recipe's 1..rounds (rounds beyond it do not exist)."""
    if isinstance(text, int) and not isinstance(text, bool):
        require(1 <= text <= rounds, f"{where}: round {text} is not a round of this recipe (1..{rounds})")
        return range(text, text + 1)
    half = (rounds + 1) // 2  # the first half gets the odd round
    if text == "first_half":
        return range(1, half + 1)
    if text == "second_half":
        return range(half + 1, rounds + 1)
    match = re.match(r"^\s*([0-9]{1,18})\s*-\s*([0-9]{1,18}|end)\s*$", str(text))
    require(
        match is not None, f"{where}: rounds must be 3, '1-10', '11-end', first_half or second_half; got {shown(text)}"
    )
    start = int(match.group(1))
    stop = rounds if match.group(2) == "end" else int(match.group(2))
    if match.group(2) != "end":  # an explicit range: low to high, and some round of this recipe in it
        require(start <= stop, f"{where}: {shown(text)} is reversed; write low-high, e.g. '{stop}-{start}'")
        require(
            start <= rounds and stop >= 1, f"{where}: {shown(text)} names no round of this recipe (rounds 1..{rounds})"
        )
    return range(max(start, 1), min(stop, rounds) + 1)


def _int_param(value, where: str, minimum: int = 0, maximum: int | None = None) -> int:
    require(
        isinstance(value, int)
        and not isinstance(value, bool)
        and value >= minimum
        and (maximum is None or value <= maximum),
        f"{where}: must be an integer >= {minimum}{f' and <= {maximum}' if maximum is not None else ''}, "
        f"got {shown(value)}",
    )
    return value


def compile_recipe(path: str | Path, overrides: dict | None = None, *, load_state=None) -> Plan:
    """Validate a recipe file with parameters and compile it to a plan of keyed nodes.

    Every step is resolved here (so a bad value fails before anything runs), with the
    file and key in the message. ``load_state(run_id) -> plan.StateInfo`` resolves
    ``state:<run id>`` references (the store's); without it only plan nodes can be named.

    Node names: ``root``, ``train``, ``prune<r>``, ``round<r>`` (the round's retrained
    state), ``round<r>.<control>``, ``<node>@<time>`` (checkpoints: ``mask_epoch`` masks,
    rewind points). Nodes carry their round, branch and role (``trained``, ``pruned``,
    ``control``, ``checkpoint``), which the report reads.
    """
    raw = read_recipe(path)
    where = str(path)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None and v != ""}
    params = resolve_params(raw, overrides, where)
    spec = substitute({k: v for k, v in raw.items() if k not in ("params", "protocols")}, params, where)
    builder = PlanBuilder(raw["name"], load_state=load_state, params=params, overrides=overrides)
    rounds = _Rounds(builder, spec, where)
    root, trained_by_round, pruned_by_round = rounds.build()
    context = RecipeContext(where, spec, params, builder, root, trained_by_round, pruned_by_round, rounds.retrain)
    for section in SECTIONS.values():
        if section.impl and spec.get(section.name) is not None:
            section.load()(spec[section.name], context)
    return builder.build()


class _Rounds:
    """A recipe's lineage: root -> train -> (prune -> reinit + retrain, and the controls) x rounds, its keys
    checked first (in the order their errors are reported)."""

    def __init__(self, builder: PlanBuilder, spec: dict, where: str):
        self.builder, self.spec, self.where = builder, spec, where
        require(isinstance(spec.get("root"), dict), f"{where}: root: required mapping (model, dataset, seed, ...)")
        self.root_spec = dict(spec["root"])
        self.data_dir = self.root_spec.pop("data_dir", None) or builder.plan.params.get("data_dir")
        self.rounds = _int_param(spec.get("rounds", 0), f"{where}: rounds", maximum=MAX_ROUNDS)
        require(isinstance(spec.get("train"), dict), f"{where}: train: required mapping of train options")
        self.train = dict(spec["train"])
        self.retrain = dict(spec.get("retrain") or self.train)
        self.reinit = spec.get("reinit")
        require(self.reinit is None or isinstance(self.reinit, dict), f"{where}: reinit: must be a mapping or null")
        if self.rounds:
            require(
                isinstance(spec.get("prune"), dict) or spec.get("schedule"), f"{where}: prune: required when rounds > 0"
            )
        self.prune_of_round = self._prune_steps()
        self.mask_epoch = spec.get("mask_epoch")
        self.mask_at = self._mask_at()
        self.controls = spec.get("controls") or []
        require(
            isinstance(self.controls, list),
            f"{where}: controls: must be a list of control names or {{name, reinit?, prune?, retrain?}}",
        )

    def checked(self, key, fn, *args, **kwargs):
        """fn(*args, **kwargs), its SpecError naming the recipe file and `key`."""
        try:
            return fn(*args, **kwargs)
        except SpecError as error:
            raise SpecError(f"{self.where}: {key}: {error}") from None

    def _prune_steps(self) -> dict:
        """{round: its prune options}: ``prune``, with each ``schedule`` entry's merged over its rounds."""
        prune_of_round = {r: copy.deepcopy(self.spec.get("prune") or {}) for r in range(1, self.rounds + 1)}
        for i, entry in enumerate(self.spec.get("schedule") or []):
            key = f"schedule[{i}]"
            require(
                isinstance(entry, dict) and set(entry) <= {"rounds", "prune"} and "prune" in entry,
                f"{self.where}: {key}: must be a mapping with 'rounds' and 'prune'",
            )
            for r in _round_ranges(entry.get("rounds", f"1-{self.rounds}"), self.rounds, f"{self.where}: {key}.rounds"):
                if r in prune_of_round:
                    prune_of_round[r] = {**prune_of_round[r], **entry["prune"]}
        return prune_of_round

    def _mask_at(self) -> str | None:
        """The time of ``mask_epoch`` (the early masks the next round prunes from), checked; None without."""
        mask_epoch = self.mask_epoch
        if mask_epoch is None:
            return None
        for key, options in (("train", self.train), ("retrain", self.retrain)):
            epochs = options.get("epochs", options.get("steps", 1))
            require(
                isinstance(mask_epoch, int)
                and not isinstance(mask_epoch, bool)
                and isinstance(epochs, int)
                and 1 <= mask_epoch <= epochs,
                f"{self.where}: mask_epoch: must be an int in 1..{key} epochs ({epochs}), got {mask_epoch!r}",
            )
        return str(parse_time(mask_epoch))

    def with_mask_checkpoint(self, options: dict) -> dict:
        """The train step, emitting the early-mask state (mask_epoch) as a checkpoint."""
        epochs = options.get("epochs", options.get("steps", 1))
        if self.mask_epoch is None or self.mask_epoch == epochs:
            return {"train": options}
        return {"train": {**options, "checkpoints": [self.mask_epoch]}}

    def mask_source(self, node):
        """Where the next round's mask comes from: the trained node, or its mask_epoch checkpoint."""
        emitted = [self.builder.node(name) for name in node.emits] if self.mask_at is not None else []
        return next((n for n in emitted if n.at == self.mask_at), node)

    def build(self) -> tuple:
        """(the root node, {round: trained node}, {round: pruned node}) of the lineage, added to the plan."""
        builder, checked = self.builder, self.checked
        root = checked("root", builder.root, "root", self.root_spec, data_dir=self.data_dir, role="root")
        trained = checked(
            "train",
            builder.child,
            "train",
            root,
            [self.with_mask_checkpoint(self.train)],
            round=0,
            role="trained",
            label="train",
        )
        trained_by_round, pruned_by_round = {0: trained}, {}
        previous = self.mask_source(trained)
        reinit_steps = [{"reinit": self.reinit}] if self.reinit else []
        for r in range(1, self.rounds + 1):
            pruned = checked(
                f"prune (round {r})",
                builder.child,
                f"prune{r}",
                previous,
                [{"prune": self.prune_of_round[r]}],
                round=r,
                role="pruned",
            )
            retrained = checked(
                "reinit / retrain" if reinit_steps else "retrain",
                builder.child,
                f"round{r}",
                pruned,
                reinit_steps + [self.with_mask_checkpoint(self.retrain)],
                round=r,
                role="trained",
            )
            trained_by_round[r], pruned_by_round[r] = retrained, pruned
            self._controls(r, pruned, previous)
            previous = self.mask_source(retrained)
        return root, trained_by_round, pruned_by_round

    def _controls(self, r: int, pruned, previous) -> None:
        """Round `r`'s controls: each a branch beside the main one, from the same pruned state."""
        steps = {"prune": self.prune_of_round[r], "reinit": self.reinit, "train": self.retrain}
        for i, entry in enumerate(self.controls):
            control = resolve_control(
                entry, self.prune_of_round[r], self.reinit, previous.name, f"{self.where}: controls[{i}]"
            )
            add_control(
                self.builder,
                control,
                steps,
                pruned=pruned,
                pruned_from=previous,
                naming=Naming(f"round{r}.{control['name']}", None, r, control["name"]),
                checked=lambda key, fn, *a, _i=i, **k: self.checked(f"controls[{_i}]: {key}", fn, *a, **k),
            )
