"""Accuracy vs remaining weights over seeds: the rows of a study aggregated per recipe and round."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import SpecError
from .statistics import summarize

_REQUIRED = ("recipe", "round", "remaining", "test_accuracy", "seed")


def _is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return mean, std


def _add_summary(agg: dict, key: str, summary: dict) -> None:
    agg[key], agg[f"{key}_std"] = summary["mean"], summary["std"]
    agg[f"{key}_ci_low"], agg[f"{key}_ci_high"] = summary["ci_low"], summary["ci_high"]


def accuracy_vs_remaining(rows: Sequence[Mapping], ci: str = "t") -> list[dict]:
    """Aggregate test accuracy over seeds per (recipe, round).

    Each row: ``{"recipe", "round", "remaining" (fraction of prunable weights kept,
    0..1), "test_accuracy" (fraction, 0..1), "seed", optional
    "early_stop_iteration"}``. Rows whose ``test_accuracy`` is None/NaN are
    skipped (e.g. a state not yet evaluated). Returns a list of dicts sorted by
    recipe (first-appearance order) then round::

        {"recipe", "round", "n", "seeds": [...], "values": [...], "remaining", "remaining_std",
         "mean", "std", "se", "ci_low", "ci_high", "ci", ["early_stop_iteration", "early_stop_iteration_std",
         "early_stop_iteration_ci_low", "early_stop_iteration_ci_high", "early_stop_n"],
         ["early_stop_test_accuracy", "..._std", "..._ci_low", "..._ci_high"]}

    ``std`` is the sample standard deviation (ddof=1) over seeds, 0.0 when n == 1
    (look at ``n``); ``se``, ``ci_low``, ``ci_high`` and ``ci`` are `statistics.summarize`'s
    (``ci``: "t" or "bootstrap"; one seed: no interval, None). ``values`` are the seeds'
    accuracies in ``seeds`` order. ``remaining`` is the mean over seeds. Two rows with the same
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
    for recipe, rnd in sorted(groups, key=lambda g: (recipe_order[g[0]], g[1])):
        grp = groups[(recipe, rnd)]
        seeds = [r["seed"] for r in grp]
        if len(set(seeds)) != len(seeds):
            dup = sorted({s for s in seeds if seeds.count(s) > 1}, key=str)
            raise SpecError(f"recipe {recipe!r} round {rnd!r} has several rows for seed(s) {dup}")
        values = [float(r["test_accuracy"]) for r in grp]
        summary = summarize(values, ci)
        rem_mean, rem_std = _mean_std([float(r["remaining"]) for r in grp])
        agg = {
            "recipe": recipe,
            "round": rnd,
            "n": len(grp),
            "seeds": seeds,
            "values": values,
            "remaining": rem_mean,
            "remaining_std": rem_std,
            **{k: summary[k] for k in ("mean", "std", "se", "ci_low", "ci_high", "ci")},
        }
        es = [float(r["early_stop_iteration"]) for r in grp if not _is_missing(r.get("early_stop_iteration"))]
        if es:
            _add_summary(agg, "early_stop_iteration", summarize(es, ci))
            agg["early_stop_n"] = len(es)
        at_stop = [
            float(r["early_stop_test_accuracy"]) for r in grp if not _is_missing(r.get("early_stop_test_accuracy"))
        ]
        if at_stop:
            _add_summary(agg, "early_stop_test_accuracy", summarize(at_stop, ci))
        out.append(agg)
    return out


def pareto_front(points: Sequence[Mapping], x: str, y: str = "mean") -> list[dict]:
    """The points no other point beats on both ``x`` (more is better: compression, speedup) and ``y``
    (accuracy): each kept point has a larger ``y`` than every point with at least its ``x``. Sorted by
    ``x``; points missing either value are not candidates."""
    usable = [
        p
        for p in points
        if p.get(x) is not None and p.get(y) is not None and math.isfinite(float(p[x])) and math.isfinite(float(p[y]))
    ]
    front, best = [], -math.inf
    for point in sorted(usable, key=lambda p: (-float(p[x]), -float(p[y]))):
        if float(point[y]) > best:
            front.append(dict(point))
            best = float(point[y])
    return front[::-1]
