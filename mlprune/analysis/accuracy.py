"""Accuracy vs remaining weights over seeds: the rows of a study aggregated per recipe and round.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import SpecError


_REQUIRED = ("recipe", "round", "remaining", "test_accuracy", "seed")


def _is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return mean, std


def accuracy_vs_remaining(rows: Sequence[Mapping]) -> list[dict]:
    """Aggregate test accuracy over seeds per (recipe, round).

    Each row: ``{"recipe", "round", "remaining" (fraction of prunable weights kept,
    0..1), "test_accuracy" (fraction, 0..1), "seed", optional
    "early_stop_iteration"}``. Rows whose ``test_accuracy`` is None/NaN are
    skipped (e.g. a state not yet evaluated). Returns a list of dicts sorted by
    recipe (first-appearance order) then round::

        {"recipe", "round", "n", "seeds": [...], "remaining", "remaining_std",
         "mean", "std", ["early_stop_iteration", "early_stop_iteration_std",
         "early_stop_n"], ["early_stop_test_accuracy", "early_stop_test_accuracy_std"]}

    ``std`` is the sample standard deviation (ddof=1) over seeds, 0.0 when n == 1
    (look at ``n``). ``remaining`` is the mean over seeds. Two rows with the same
    (recipe, round, seed) are an error.
    """
    groups: dict[tuple, list[Mapping]] = {}
    recipe_order: dict = {}
    for i, row in enumerate(rows):
        missing = [k for k in _REQUIRED if k not in row]
        if missing:
            raise SpecError(f"row {i} lacks {', '.join(missing)}; rows need {', '.join(_REQUIRED)}")
        if _is_missing(row["test_accuracy"]):
            continue
        rem = float(row["remaining"])
        if not 0.0 <= rem <= 1.0:
            raise SpecError(f"row {i}: remaining={rem!r} is not a fraction in [0, 1]")
        recipe_order.setdefault(row["recipe"], len(recipe_order))
        groups.setdefault((row["recipe"], row["round"]), []).append(row)
    out = []
    for (recipe, rnd) in sorted(groups, key=lambda g: (recipe_order[g[0]], g[1])):
        grp = groups[(recipe, rnd)]
        seeds = [r["seed"] for r in grp]
        if len(set(seeds)) != len(seeds):
            dup = sorted({s for s in seeds if seeds.count(s) > 1}, key=str)
            raise SpecError(f"recipe {recipe!r} round {rnd!r} has several rows for seed(s) {dup}")
        acc_mean, acc_std = _mean_std([float(r["test_accuracy"]) for r in grp])
        rem_mean, rem_std = _mean_std([float(r["remaining"]) for r in grp])
        agg = {
            "recipe": recipe,
            "round": rnd,
            "n": len(grp),
            "seeds": seeds,
            "remaining": rem_mean,
            "remaining_std": rem_std,
            "mean": acc_mean,
            "std": acc_std,
        }
        es = [float(r["early_stop_iteration"]) for r in grp if not _is_missing(r.get("early_stop_iteration"))]
        if es:
            agg["early_stop_iteration"], agg["early_stop_iteration_std"] = _mean_std(es)
            agg["early_stop_n"] = len(es)
        at_stop = [float(r["early_stop_test_accuracy"]) for r in grp
                   if not _is_missing(r.get("early_stop_test_accuracy"))]
        if at_stop:
            agg["early_stop_test_accuracy"], agg["early_stop_test_accuracy_std"] = _mean_std(at_stop)
        out.append(agg)
    return out
