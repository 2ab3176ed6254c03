"""Spawned copies and the interpolations between them: instability analysis, planned.

Frankle, Dziugaite, Roy & Carbin (2020, "Linear Mode Connectivity and the Lottery Ticket
Hypothesis") ask whether a network at a point of its training, the *spawn point*, is stable
to SGD noise: train copies of it that differ only in their data order and look at the test
error along the straight line between the trained copies. Here that is a DAG:

    spawn point ── train (data_order_seed s1) ── copy1 ─┐
               └── train (data_order_seed s2) ── copy2 ─┴─ interpolate (an analysis, parents a and b)

- `spawn_copies`: N children of any state, trained with the same options except
  ``data_order_seed``: siblings that differ only in SGD noise.
- `interpolate_pairs`: an ``interpolate`` analysis state for every pair of copies.
- `spawn_section`: the recipe key ``spawn``. Spawn points are times t of the recipe's
  first training, at sparsity levels (rounds): level 0 spawns from that training stopped
  at t (the root at t = 0), a level r >= 1 from a state with round r's mask and the first
  training's weights at t (a rewind to t). The copies continue the schedule from t.

    spawn:
      copies: 2                          # per spawn point (>= 2 to interpolate)
      at: [0it, 100it, 500it, 2ep]       # spawn points (also a string "0it,100it,500it,2ep")
      levels: [0, last]                  # rounds to spawn at (default: every round, 0 = dense)
      seeds: [1, 2]                      # their data_order_seeds (default: root seed + 1, + 2, ...)
      train: {...}                       # the copies' training (default: train at level 0, retrain at r >= 1)
      interpolate: {alphas: 30}          # options of each pair's interpolation; false: none

Every copy and interpolation is a plan node, so the executor runs them as independent tasks
(in parallel under dask) and a re-run finds them by key. Pure Python: no torch, no mlflow.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from ..errors import SpecError
from ..plan import Naming, Node, PlanBuilder
from ..spec.limits import MAX_COPIES
from ..spec.options import integer, seed_value
from ..spec.steps import INTERPOLATE_SCHEMA, TRAIN_SCHEMA, resolve_interpolate
from ..spec.times import parse_time
from .sections import RecipeContext

SPAWN_OPTIONS = ("copies", "at", "levels", "seeds", "train", "interpolate")
LAST = "last"  # in `levels`: the recipe's last round


@dataclass(frozen=True)
class Spawn:
    """A checked ``spawn`` mapping."""

    copies: int
    at: tuple  # canonical time texts, in the order given
    levels: tuple  # rounds, ascending
    seeds: tuple | None  # None: derived from the root seed
    train: dict | None  # None: the recipe's train (level 0) / retrain (levels >= 1)
    interpolate: dict | None  # None: no interpolation


def default_seeds(root_seed: int, copies: int) -> list[int]:
    """The copies' data_order_seeds unless given: root seed + 1, + 2, ...: never the data order the
    root's own trainings use (the root seed), and different for every root seed."""
    return [root_seed + i for i in range(1, copies + 1)]


def _times(value) -> tuple:
    if isinstance(value, str):
        value = [part for part in (p.strip() for p in value.split(",")) if part]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise SpecError(
            f"at must be a non-empty list of times (e.g. [0it, 100it, 2ep]) or a comma-separated string, got {value!r}"
        )
    times, seen = [], {}
    for item in value:
        time = parse_time(item, "spawn point")
        same = next((t for t in seen if (t.is_zero and time.is_zero) or t == time), None)
        if same is not None:
            raise SpecError(f"spawn point {item!r} is given twice (as {seen[same]!r} too)")
        seen[time] = item
        times.append(str(time))
    return tuple(times)


def _levels(value, rounds: int) -> tuple:
    if value is None:
        return tuple(range(rounds + 1))
    if not isinstance(value, (list, tuple)) or not value:
        raise SpecError(
            f"levels must be a non-empty list of rounds (0 = the dense network, {LAST!r} = the "
            f"last round), got {value!r}"
        )
    levels = set()
    for item in value:
        if item == LAST:
            levels.add(rounds)
            continue
        if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item <= rounds:
            raise SpecError(f"level {item!r} is not a round of this recipe: allowed 0..{rounds} or {LAST!r}")
        levels.add(item)
    return tuple(sorted(levels))


def check_copies(copies, seeds=None) -> tuple[int, tuple | None]:
    """(copies, seeds) checked: copies an int >= 1; seeds None or one distinct data_order_seed per copy."""
    copies = integer(1, MAX_COPIES)(copies, "copies")
    if seeds is not None:
        if not isinstance(seeds, (list, tuple)) or len(seeds) != copies:
            raise SpecError(f"seeds must be a list of {copies} data_order_seeds (one per copy), got {seeds!r}")
        seeds = tuple(seed_value(s, "seeds") for s in seeds)
        if len(set(seeds)) != len(seeds):
            raise SpecError(f"seeds {list(seeds)} repeat a seed: two copies with one data order are one state")
    return copies, seeds


def parse_spawn(value, rounds: int) -> Spawn:
    """A checked `Spawn` from a recipe's ``spawn`` value; a one-line SpecError for anything else."""
    if not isinstance(value, dict):
        raise SpecError(f"must be a mapping of {', '.join(SPAWN_OPTIONS)}, got {value!r}")
    unknown = sorted(set(value) - set(SPAWN_OPTIONS))
    if unknown:
        raise SpecError(f"unknown spawn option {unknown[0]!r}; allowed: {', '.join(SPAWN_OPTIONS)}")
    copies, seeds = check_copies(value.get("copies", 2), value.get("seeds"))
    if "at" not in value:
        raise SpecError("needs 'at': the spawn points, times of the first training (e.g. [0it, 100it, 2ep])")
    at = _times(value["at"])
    train = value.get("train")
    if train is not None and not isinstance(train, dict):
        raise SpecError(f"train must be a mapping of train options, got {train!r}")
    interpolate = value.get("interpolate", {})
    if interpolate is False:
        interpolate = None
    elif interpolate is None:
        interpolate = {}
    if interpolate is not None:
        if not isinstance(interpolate, dict):
            raise SpecError(f"interpolate must be a mapping of interpolate options or false, got {interpolate!r}")
        pairing = sorted({"b", *INTERPOLATE_SCHEMA["b"].aliases} & set(interpolate))
        if pairing:
            raise SpecError(f"interpolate takes no {pairing[0]!r}: every pair of copies is interpolated")
        resolve_interpolate({**interpolate, "b": "parent"})  # checks the options now
        if copies < 2:
            raise SpecError("interpolating needs copies >= 2 (or interpolate: false)")
    return Spawn(copies, at, _levels(value.get("levels"), rounds), seeds, train, interpolate)


def copy_train(train: dict, at: str | None = None) -> dict:
    """A copy's train options: `train` without its data order (each copy gets its own), without
    checkpoints, and continuing the schedule from `at` when given."""
    order = TRAIN_SCHEMA["data_order_seed"]
    drop = {order.name, *order.aliases, "checkpoints"}
    options = {k: v for k, v in dict(train).items() if k not in drop}
    if at is not None:
        options.pop("schedule_from", None)
        if not parse_time(at).is_zero:
            options["schedule_from"] = str(parse_time(at))
    return options


def spawn_copies(
    builder: PlanBuilder, point: Node, train: dict, seeds, naming: Naming, *, at: str | None = None
) -> list[Node]:
    """`len(seeds)` children of `point`, each trained with `train` and its own data_order_seed.

    `at`: the time of the schedule `point` is at (the copies continue from there); None: as
    `train` says. Nodes ``<name>.copy<i>`` (i from 1), role ``copy``.
    """
    options = copy_train(train, at)
    name_of = TRAIN_SCHEMA["data_order_seed"].name
    return [
        builder.child(
            f"{naming.name}.copy{i}",
            point,
            [{"train": {**options, name_of: seed}}],
            round=naming.round,
            branch=naming.branch,
            role="copy",
            label=f"{naming.label} copy{i} s{seed}",
        )
        for i, seed in enumerate(seeds, 1)
    ]


def interpolate_pairs(builder: PlanBuilder, copies: list[Node], options: dict, naming: Naming) -> list[Node]:
    """An ``interpolate`` analysis for every pair (i < j) of `copies`: a = copy i (its parent), b = copy j.
    Nodes ``<name>.interpolate<i>-<j>``, role ``interpolation``."""
    return [
        builder.child(
            f"{naming.name}.interpolate{i}-{j}",
            a,
            [{"interpolate": {**options, "b": f"state:{b.name}"}}],
            round=naming.round,
            branch=naming.branch,
            role="interpolation",
            label=f"{naming.label} lmc {i}-{j}",
        )
        for (i, a), (j, b) in itertools.combinations(enumerate(copies, 1), 2)
    ]


def spawn_section(value, recipe: RecipeContext) -> None:
    """The recipe key ``spawn`` (see the module docs): spawn points, copies and interpolations."""
    rounds = max(recipe.trained)
    spawn = recipe.checked("spawn", parse_spawn, value, rounds)
    builder = recipe.builder
    seeds = list(spawn.seeds or default_seeds(recipe.root.root["seed"], spawn.copies))
    for level in spawn.levels:
        train = spawn.train if spawn.train is not None else (recipe.spec["train"] if level == 0 else recipe.retrain)
        for at in spawn.at:
            name, label = f"spawn{level}@{at}", f"r{level} @{at}"
            if level == 0:
                point = (
                    recipe.root
                    if parse_time(at).is_zero
                    else recipe.checked(f"spawn (at {at})", builder.training_point, recipe.trained[0], at)
                )
            else:
                point = recipe.checked(
                    f"spawn (level {level}, at {at})",
                    builder.child,
                    name,
                    recipe.pruned[level],
                    [{"reinit": {"strategy": "rewind", "to": "root", "at": at}}],
                    round=level,
                    role="spawn",
                    label=f"r{level} spawn@{at}",
                )
            naming = Naming(name, label, level)
            copies = recipe.checked(
                f"spawn.train (level {level}, at {at})", spawn_copies, builder, point, train, seeds, naming, at=at
            )
            if spawn.interpolate is not None:
                recipe.checked("spawn.interpolate", interpolate_pairs, builder, copies, spawn.interpolate, naming)
