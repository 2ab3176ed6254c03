"""Sweeps: recipes x seeds x a grid of parameters, each compiled (validated) before anything runs."""

from __future__ import annotations

import itertools
import math
import re

from ..errors import SpecError, shown
from ..plan import Plan, lead_with_seed
from ..spec.limits import MAX_SEEDS, MAX_STATES
from ..spec.options import MAX_SEED
from .compile import compile_recipe
from .files import parse_value


def parse_seeds(text: str | None) -> list[int]:
    """'0-9' -> [0..9]; '0,3,7' -> [0, 3, 7]; '1-3,8' -> [1, 2, 3, 8]; at most `MAX_SEEDS` seeds."""
    if text is None:
        return []
    allowed = (
        f"--seeds must look like 0-9, 0,3,7 or 1-3,8 (integers in 0..{MAX_SEED}, ranges low-high, at most "
        f"{MAX_SEEDS} seeds)"
    )
    seeds: dict[int, None] = {}  # ordered, and a membership test that does not grow with the count
    for part in str(text).split(","):
        match = re.fullmatch(r"\s*([0-9]{1,19})\s*(?:-\s*([0-9]{1,19})\s*)?", part, re.ASCII)
        if match is None:
            raise SpecError(f"{allowed}; got {shown(text)}")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if high < low or high > MAX_SEED:
            raise SpecError(f"{allowed}; got {shown(text)}")
        too_many = SpecError(f"--seeds {shown(text)} gives more than {MAX_SEEDS} seeds; at most {MAX_SEEDS}")
        if high - low >= MAX_SEEDS:  # refused before the range is spelled out
            raise too_many
        seeds.update(dict.fromkeys(range(low, high + 1)))
        if len(seeds) > MAX_SEEDS:
            raise too_many
    return list(seeds)


def parse_grid(pairs) -> list[dict]:
    """['amount=0.1,0.2', 'epochs=5'] -> the cartesian product [{amount: 0.1, epochs: 5}, {amount: 0.2, ...}]."""
    axes: dict[str, list] = {}
    for pair in pairs or ():
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise SpecError(f"sweep parameter {pair!r} must look like name=value or name=v1,v2,...")
        values = []
        for item in text.split(","):
            if not item.strip():
                raise SpecError(f"sweep parameter {pair!r} has an empty value; write name=v1,v2,...")
            try:
                values.append(parse_value(item.strip()))
            except SpecError as error:
                raise SpecError(f"sweep parameter {name!r}: {error}") from None
        if name in axes:
            raise SpecError(f"sweep parameter {name!r} is given twice; list its values once: {name}=v1,v2")
        axes[name] = values
    points = math.prod(len(values) for values in axes.values())
    if points > MAX_STATES:  # every point is at least one state
        raise SpecError(f"sweep parameters give {points} combinations; a sweep plans at most {MAX_STATES} states")
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def sweep_plans(recipes, seeds: list[int], grid: list[dict], *, load_state=None) -> list[tuple[str, Plan]]:
    """[(label, plan)] for every recipe x seed x grid point; every one validated before anything runs."""
    plans, states = [], 0
    for recipe in recipes:
        for seed in seeds or [None]:
            for point in grid or [{}]:
                overrides = {**point, **({"seed": seed} if seed is not None else {})}
                plan = compile_recipe(recipe, overrides, load_state=load_state)
                if len(seeds) > 1:
                    lead_with_seed(plan)
                label = " ".join([plan.recipe] + [f"{k}={v}" for k, v in overrides.items()])
                plans.append((label, plan))
                states += len(plan.nodes)
                if states > MAX_STATES:
                    raise SpecError(
                        f"the sweep plans more than {MAX_STATES} states ({len(plans)} plans so far); "
                        f"a sweep is at most {MAX_STATES} states: fewer seeds or values"
                    )
    return plans
