"""Instability vs spawn point: the report section and the recipe figure (Frankle et al. 2020, the
central figure of "Linear Mode Connectivity and the Lottery Ticket Hypothesis").

An interpolation state between two spawned copies (step ``interpolate``) carries its
``instability`` and the ``spawn_iteration`` k the copies started from; its parent a is a copy,
whose ``sparsity`` gives the level. Per recipe series (seeds aggregate), per level and k: the
mean ± std of the instability over seeds and pairs of copies, stable where the mean < 2 %.
Interpolations made outside recipes are grouped the same way under "outside recipes".
"""

from __future__ import annotations

import math
from html import escape

import numpy as np

from .. import plots as plotting
from ..analysis import statistics
from ..names import M_INSTABILITY, M_SPARSITY, M_SPAWN_ITERATION, TAG_PARENT_RUN
from .common import Page, html_table
from .sections import SectionContext
from .series import Collection

OUTSIDE = "outside recipes"


def _metric(run, name):
    value = run.data.metrics.get(name) if run is not None else None
    return None if value is None or not math.isfinite(value) else float(value)


def instability_rows(collection: Collection) -> list[dict]:
    """One row per interpolation state between spawned copies: series label, remaining fraction of
    the copies, spawn iteration, instability, seed, run id (each state once: its first series)."""
    rows, seen = [], set()

    def add(run_id, label, seed):
        run = collection.runs.get(run_id)
        if run is None or run_id in seen:
            return
        instability, k = _metric(run, M_INSTABILITY), _metric(run, M_SPAWN_ITERATION)
        copy = collection.runs.get(run.data.tags.get(TAG_PARENT_RUN, ""))
        sparsity = _metric(copy, M_SPARSITY)
        if instability is None or k is None or sparsity is None:
            return
        seen.add(run_id)
        rows.append(
            {
                "series": label,
                "remaining": 1.0 - sparsity,
                "iteration": int(k),
                "instability": instability,
                "seed": seed,
                "run_id": run_id,
            }
        )

    for series in collection.series:
        for run_id in series.analyses:
            add(run_id, series.label, series.seed)
    for run_id in collection.runs:
        add(run_id, OUTSIDE, None)
    return rows


def instability_table(rows: list[dict]) -> list[dict]:
    """Mean ± std (ddof 1, 0 for one value) of the instability per (series, remaining level, k), with n
    (seeds × pairs) and ``stable``: mean < 2 %; ``seeds`` and the 95% interval (``ci_low``, ``ci_high``) of
    the mean over seeds of each seed's mean over its pairs (pairs of one seed share their copies: not
    independent), None from one seed."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["series"], round(row["remaining"], 6), row["iteration"]), []).append(row)
    out = []
    for (series, remaining, k), group in sorted(groups.items(), key=lambda g: (g[0][0], -g[0][1], g[0][2])):
        values = np.asarray([r["instability"] for r in group], dtype=np.float64)
        mean = float(values.mean())
        by_seed: dict[str, list[float]] = {}
        for r in group:
            by_seed.setdefault(str(r["seed"]), []).append(r["instability"])
        over_seeds = statistics.summarize([sum(v) / len(v) for v in by_seed.values()])
        out.append(
            {
                "series": series,
                "remaining": remaining,
                "iteration": k,
                "mean": mean,
                "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
                "n": int(values.size),
                "seeds": len(by_seed),
                "ci_low": over_seeds["ci_low"],
                "ci_high": over_seeds["ci_high"],
                "stable": mean < plotting.STABLE_BELOW,
                "run_ids": [r["run_id"] for r in group],
            }
        )
    return out


def level_label(remaining: float) -> str:
    return "dense (100%)" if remaining >= 1.0 else f"{100 * remaining:.3g}% remaining"


def instability_figures(table: list[dict]) -> dict[str, object]:
    """{series label: Figure} of instability vs spawn point, one line per sparsity level."""
    out = {}
    for series in dict.fromkeys(row["series"] for row in table):
        levels: dict[str, list] = {}
        for row in table:
            if row["series"] == series:
                levels.setdefault(level_label(row["remaining"]), []).append(row)
        out[series] = plotting.plot_instability_vs_spawn(
            levels, title=f"{series}: instability vs spawn point (filled: stable, < 2 %)"
        )
    return out


def instability_section(page: Page, ctx: SectionContext) -> None:
    """The report section: the figure per recipe series and the table behind it."""
    table = instability_table(instability_rows(ctx.collection))
    page.numbers["instability_vs_spawn"] = table
    if not table:
        return  # no instability analysis in this experiment: no section
    html = [
        "<p>Copies of each spawn point (the first training stopped at iteration k, with the level's "
        "mask) were trained to the end with different data orders; the instability is the largest test "
        "error on the straight line between two trained copies minus the mean of their own errors "
        "(Frankle et al. 2020). Stable (filled markers): instability &lt; 2 %.</p>"
    ]
    for series, fig in instability_figures(table).items():
        html.append(
            page.figure(
                fig,
                f"instability_{series}",
                f"{series}: instability vs spawn point k per sparsity "
                f"level, mean and 95% CI over seeds (each seed's mean over its pairs of copies)",
                "instability_vs_spawn",
                run_file=None if len(html) > 1 else "instability_vs_spawn.png",
            )
        )
    rows = [
        [
            escape(r["series"]),
            escape(level_label(r["remaining"])),
            str(r["iteration"]),
            f"{100 * r['mean']:.2f}% ± {100 * r['std']:.2f}",
            (
                f"[{100 * r['ci_low']:.2f}, {100 * r['ci_high']:.2f}]"
                if r["ci_low"] is not None
                else "1 seed: no interval"
            ),
            str(r["n"]),
            str(r["seeds"]),
            "stable" if r["stable"] else "unstable",
        ]
        for r in table
    ]
    html.append(
        html_table(
            [
                "series",
                "level",
                "spawn point k (it)",
                "instability (mean ± std)",
                "95% CI over seeds",
                "n (seeds × pairs)",
                "seeds",
                "stable (< 2 %)",
            ],
            rows,
        )
    )
    page.section("instability", "Instability vs spawn point (linear mode connectivity)", "".join(html))
