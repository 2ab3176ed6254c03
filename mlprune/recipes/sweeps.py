"""Sweeps: recipes x seeds x a grid of parameters, each compiled (validated) before anything runs."""

from __future__ import annotations

import itertools
import re

from ..errors import SpecError
from ..plan import Plan
from .compile import compile_recipe
from .files import parse_value


def parse_seeds(text: str | None) -> list[int]:
    """'0-9' -> [0..9]; '0,3,7' -> [0, 3, 7]; '1-3,8' -> [1, 2, 3, 8]."""
    if text is None:
        return []
    seeds: list[int] = []
    for part in str(text).split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None or (match.group(2) is not None and int(match.group(2)) < int(match.group(1))):
            raise SpecError(f"--seeds must look like 0-9, 0,3,7 or 1-3,8 (integers >= 0, ranges low-high); "
                            f"got {text!r}")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        seeds += [seed for seed in range(low, high + 1) if seed not in seeds]
    return seeds


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
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def sweep_plans(recipes, seeds: list[int], grid: list[dict], *, load_state=None) -> list[tuple[str, Plan]]:
    """[(label, plan)] for every recipe x seed x grid point; every one validated before anything runs."""
    plans = []
    for recipe in recipes:
        for seed in seeds or [None]:
            for point in grid or [{}]:
                overrides = {**point, **({"seed": seed} if seed is not None else {})}
                plan = compile_recipe(recipe, overrides, load_state=load_state)
                label = " ".join([plan.recipe] + [f"{k}={v}" for k, v in overrides.items()])
                plans.append((label, plan))
    return plans
