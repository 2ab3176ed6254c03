"""The top-level keys of a recipe file (`SECTIONS`) and what a key that adds states sees (`RecipeContext`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SpecError
from ..plan import Node, PlanBuilder
from ..registry import Registry, load_impl


@dataclass(frozen=True)
class Section:
    """One top-level key of a recipe file.

    ``impl`` (``"module:function"``), for keys that add states to the plan on their own:
    ``fn(value, recipe: RecipeContext)`` is called after the rounds are planned, in the order
    of the entries. Keys without one are read by `compile_recipe` itself.
    """

    name: str
    help: str
    impl: str = ""

    def load(self):
        return load_impl(self.impl)


@dataclass
class RecipeContext:
    """What a recipe section sees: the plan so far and the recipe's resolved values."""

    where: str  # the file, for messages
    spec: dict  # the recipe's keys, parameters substituted
    params: dict
    builder: PlanBuilder
    root: Node
    trained: dict  # round -> the round's trained node (0: the first training)
    pruned: dict  # round -> the round's prune node
    retrain: dict  # the rounds' train options

    def checked(self, key: str, fn, *args, **kwargs):
        """fn(*args, **kwargs), its SpecError prefixed with the file and `key`."""
        try:
            return fn(*args, **kwargs)
        except SpecError as error:
            raise SpecError(f"{self.where}: {key}: {error}") from None


SECTIONS: Registry[Section] = Registry("recipe key")
for _name, _help in (
    ("name", "the recipe's name (defaults to the file name)"),
    ("description", "what the experiment is, for people"),
    ("extends", "another recipe file (relative path) whose keys this one overrides"),
    ("params", "parameters and their defaults; override with -P name=value"),
    ("protocols", "named parameter sets, chosen with -P protocol=<name>"),
    ("root", "the initialized network: model, dataset, init, seed, data options"),
    ("train", "the first training (train step options)"),
    ("rounds", "how many prune -> reinit -> retrain rounds"),
    ("prune", "the prune step of every round"),
    ("schedule", "per-round overrides of the prune step: a list of {rounds: 'A-B', prune: {...}}"),
    ("reinit", "the reinit step of every round (null: none, the pruned weights are retrained)"),
    ("retrain", "train step options for the rounds (defaults to train)"),
    (
        "mask_epoch",
        "prune from the state after this many epochs of each training (an early mask; the full "
        "training is a side branch)",
    ),
    (
        "controls",
        "sibling branches off every pruned state: a list of sanity checks by name (layer_shuffle, "
        "reinit, invert) or of {name, reinit?, prune?, retrain?}",
    ),
):
    SECTIONS.add(Section(_name, _help))
SECTIONS.add(
    Section(
        "cka",
        "linear CKA of every round's trained network vs the dense one (round 0), layer by layer: "
        "true, or cka options {probe_size, batch_size, seed}",
        "mlprune.recipes.compile:plan_cka",
    )
)
SECTIONS.add(
    Section(
        "one_shot",
        "prune one state (root: pruning at initialization) once per method and sparsity "
        "and train each: {from?, sparsities, methods, controls?, reinit?, train?}",
        impl="mlprune.recipes.one_shot:one_shot_section",
    )
)
SECTIONS.add(
    Section(
        "spawn",
        "instability analysis: copies of spawn points that differ only in data_order_seed, "
        "and the interpolation between every pair: {copies, at, levels, seeds, train, "
        "interpolate}",
        impl="mlprune.recipes.spawn:spawn_section",
    )
)
