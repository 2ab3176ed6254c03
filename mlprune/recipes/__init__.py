"""Recipe files: schema, validation with file/key errors, parameters, and the plan they compile to.

A recipe is YAML data (`files`: bounded safe reading, ``extends``, params and protocols,
``-P`` values) compiled to a `plan.Plan` of keyed nodes (`compile`: the rounds; the keys
that add states on their own are `sections.SECTIONS` entries: ``cka`` in `compile`,
``one_shot`` in `one_shot`, ``spawn`` in `spawn`). `controls` holds the named sanity checks
(`CONTROLS`), `sweeps` the recipe x seed x grid products. Planning imports no torch.

The children import each other, never this module: it only re-exports their public names.
"""

from .compile import compile_recipe, plan_cka
from .controls import CONTROLS, Control, add_control, resolve_control
from .files import (
    COMMON_PARAMS,
    MAX_ALIASES,
    MAX_DEPTH,
    MAX_NODES,
    MAX_RECIPE_BYTES,
    parse_assignments,
    parse_number,
    parse_options,
    parse_value,
    read_recipe,
    resolve_params,
    safe_load,
)
from .one_shot import one_shot_section
from .sections import SECTIONS, RecipeContext, Section
from .spawn import check_copies, default_seeds, interpolate_pairs, spawn_copies, spawn_section
from .sweeps import parse_grid, parse_seeds, sweep_plans

__all__ = [
    "CONTROLS",
    "COMMON_PARAMS",
    "Control",
    "MAX_ALIASES",
    "MAX_DEPTH",
    "MAX_NODES",
    "MAX_RECIPE_BYTES",
    "SECTIONS",
    "RecipeContext",
    "Section",
    "add_control",
    "check_copies",
    "compile_recipe",
    "default_seeds",
    "interpolate_pairs",
    "one_shot_section",
    "parse_assignments",
    "parse_grid",
    "parse_number",
    "parse_options",
    "parse_seeds",
    "parse_value",
    "plan_cka",
    "read_recipe",
    "resolve_control",
    "resolve_params",
    "safe_load",
    "spawn_copies",
    "spawn_section",
    "sweep_plans",
]
