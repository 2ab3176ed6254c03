"""A study's curves and matrices: accuracy vs remaining weights (and vs speedup, early stopping), the
sanity-check panels, mask similarity, emergent structure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from ..errors import SpecError
from .style import (
    as_numpy,
    ci_band,
    ci_errors,
    n_text,
    new_figure,
    remaining_axis,
    series_figure,
    series_legend,
    series_style,
    short_name,
)


def plot_jaccard_heatmap(matrix, labels: Sequence[str], title: str | None = None) -> Figure:
    """Annotated heatmap of a Jaccard matrix (color scale fixed to 0..1)."""
    mat = as_numpy(matrix).astype(np.float64)
    n = mat.shape[0]
    if mat.shape != (n, n) or len(labels) != n:
        raise SpecError(f"plot_jaccard_heatmap needs an n×n matrix and n labels; got {mat.shape}, {len(labels)}")
    size = min(11.0, max(4.5, 1.5 + 0.55 * n))
    fig = new_figure(size + 1.2, size)
    ax = fig.add_subplot()
    im = ax.imshow(mat, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, label="Jaccard similarity of kept weights", shrink=0.85)
    ax.set_xticks(np.arange(n))
    ax.set_yticks(np.arange(n))
    fs_labels = max(4.5, min(9.0, 320.0 / max(n, 1)))  # 60 states still fit their labels
    ax.set_xticklabels([str(lab) for lab in labels], rotation=45, ha="right", fontsize=fs_labels)
    ax.set_yticklabels([str(lab) for lab in labels], fontsize=fs_labels)
    if n <= 25:
        fs = 9 if n <= 10 else 7
        for i in range(n):
            for j in range(n):
                v = mat[i, j]
                ax.text(
                    j,
                    i,
                    "–" if not np.isfinite(v) else f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=fs,
                    color="black" if np.isfinite(v) and v > 0.55 else "white",
                )
    ax.set_xlabel("state")
    ax.set_ylabel("state")
    ax.set_title(title or "Mask similarity (Jaccard of kept weights)")
    return fig


def plot_accuracy_vs_remaining(aggregated: Sequence[Mapping], title: str | None = None) -> Figure:
    """Test accuracy vs remaining weights, one line per recipe, the mean over seeds with its 95% confidence
    interval as a band.

    ``aggregated`` is ``analysis.accuracy_vs_remaining(rows)`` (``ci_low``, ``ci_high``: Student-t or
    bootstrap). The x axis is the percentage of prunable weights remaining on a log scale, reversed like
    the lottery-ticket papers (100% on the left). The legend gives n (seeds); one seed draws no band
    ("1 seed: no interval"). A dashed line of each recipe's color marks its dense accuracy (round 0),
    the reference every round is read against.
    """
    recipes: dict = {}
    for a in aggregated:
        recipes.setdefault(a["recipe"], []).append(a)
    fig, ax, many = series_figure(len(recipes))
    xs_all = []
    dense_drawn = set()
    for i, (recipe, pts) in enumerate(recipes.items()):
        pts = sorted(pts, key=lambda a: -a["remaining"])
        x = np.array([100.0 * a["remaining"] for a in pts])
        y = np.array([100.0 * a["mean"] for a in pts])
        ok = x > 0  # 0% remaining cannot sit on a log axis
        style = series_style(i, len(recipes))
        ax.plot(x[ok], y[ok], markersize=4, linewidth=1.4, label=f"{recipe} ({n_text(pts)})", **style)
        ci_band(ax, x, pts, style["color"])
        dense = [a for a in pts if a.get("round") == 0]
        if dense and round(dense[0]["mean"], 6) not in dense_drawn:  # recipes sharing a dense state: one line
            dense_drawn.add(round(dense[0]["mean"], 6))
            ax.axhline(100.0 * dense[0]["mean"], color=style["color"], linestyle="--", linewidth=0.9, alpha=0.7)
        xs_all.extend(x[ok].tolist())
    if dense_drawn:
        ax.plot([], [], color="#616161", linestyle="--", linewidth=0.9, label="dense (round 0) accuracy")
    ax.set_xscale("log")
    if xs_all:
        remaining_axis(ax, xs_all)  # reversed: 100% on the left
        series_legend(fig, ax, many)
    ax.set_xlabel("remaining weights (%, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or "Test accuracy vs remaining weights (mean, 95% CI over seeds)")
    ax.grid(True, which="major", alpha=0.3)
    return fig


def plot_accuracy_vs_cost(
    rows: Sequence[Mapping], x: str, xlabel: str, front: Sequence[Mapping] = (), title: str | None = None
) -> Figure:
    """Test accuracy vs a cost ratio (``x``: compression or theoretical speedup), every series of an
    experiment on one plot (Blalock et al. 2020's figures): x on a log2 axis with ticks 1, 2, 4, 8, 16, 32...,
    the mean over seeds with 95% CI bars (none from one seed), each series' dense accuracy (round 0) as a
    dashed line, and the Pareto front across series (``front``: the points nothing beats on both) as a
    black line through hollow squares. A series with only its dense state (round 0) is the dashed line.

    ``rows``: ``report.series.cost_table(collection)`` (``recipe``, ``round``, ``n``, ``mean``,
    ``ci_low``, ``ci_high`` and ``x``).
    """
    recipes: dict = {}
    for row in rows:
        if row.get(x) is not None and math.isfinite(row[x]) and row[x] > 0:
            recipes.setdefault(row["recipe"], []).append(row)
    recipes = {label: pts for label, pts in recipes.items() if any(r["round"] > 0 for r in pts)}
    fig, ax, many = series_figure(len(recipes))
    dense_drawn = set()
    top = 1.0
    for i, (recipe, pts) in enumerate(recipes.items()):
        pts = sorted(pts, key=lambda r: r[x])
        style = series_style(i, len(recipes))
        e = ci_errors(pts)
        ax.errorbar(
            [r[x] for r in pts],
            [100.0 * r["mean"] for r in pts],
            yerr=e,
            markersize=4,
            capsize=3,
            linewidth=1.4,
            label=f"{recipe} ({n_text(pts)})",
            **style,
        )
        dense = [r for r in pts if r["round"] == 0]
        if dense and round(dense[0]["mean"], 6) not in dense_drawn:
            dense_drawn.add(round(dense[0]["mean"], 6))
            ax.axhline(100.0 * dense[0]["mean"], color="#616161", linestyle="--", linewidth=0.9)
        top = max(top, *(r[x] for r in pts))
    if dense_drawn:
        ax.plot([], [], color="#616161", linestyle="--", linewidth=0.9, label="dense accuracy")
    usable = [r for r in front if r.get(x) is not None and math.isfinite(r[x]) and r[x] > 0]
    if usable:
        ax.plot(
            [r[x] for r in usable],
            [100.0 * r["mean"] for r in usable],
            color="black",
            linewidth=1.0,
            marker="s",
            markersize=7,
            fillstyle="none",
            alpha=0.8,
            label="Pareto front",
            zorder=1,
        )
    ax.set_xscale("log", base=2)
    ticks = [2.0**k for k in range(max(1, math.ceil(math.log2(top))) + 1)]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    if recipes:
        series_legend(fig, ax, many)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or f"Test accuracy vs {xlabel.split(' (')[0]} (mean, 95% CI over seeds)")
    ax.grid(True, which="major", alpha=0.3)
    return fig


def plot_accuracy_vs_speedup(rows: Sequence[Mapping], title: str | None = None) -> Figure:
    """Test accuracy vs measured speedup (dense / compact latency, batch 64), one line per structured
    recipe, the mean and 95% CI of the accuracy over seeds; each point is labelled with its round (r0: dense, speedup 1).

    ``rows`` is ``report.series.speedup_table(collection)[0]``.
    """
    recipes: dict = {}
    for row in rows:
        recipes.setdefault(row["recipe"], []).append(row)
    fig, ax, many = series_figure(len(recipes))
    for i, (recipe, pts) in enumerate(recipes.items()):
        pts = sorted(pts, key=lambda r: r["round"])
        x = np.array([r["speedup"] for r in pts])
        y = np.array([100.0 * r["mean"] for r in pts])
        ax.errorbar(
            x,
            y,
            yerr=ci_errors(pts),
            markersize=4,
            capsize=3,
            linewidth=1.4,
            label=f"{recipe} ({n_text(pts)})",
            **series_style(i, len(recipes)),
        )
        for r, xi, yi in zip(pts, x, y):
            ax.annotate(f"r{r['round']}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axvline(1.0, color="#999", linewidth=0.8, linestyle=":")
    if recipes:
        series_legend(fig, ax, many)
    ax.set_xlabel("measured speedup (dense / compact latency, batch 64)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or "Test accuracy vs measured speedup, structured recipes (mean, 95% CI over seeds)")
    ax.grid(True, alpha=0.3)
    return fig


def plot_structure(emergent: Mapping[str, Mapping], title: str | None = None) -> Figure:
    """Observed vs expected-random fraction of entirely pruned units per layer (grouped bars).

    ``emergent`` is ``analysis.emergent_structure(masks, kinds)``. Left panel:
    output units (dim 0: filters / neurons); right panel: input units (dim 1:
    input channels / features). The number above a pair is observed / expected.
    """
    fig = new_figure(min(16.0, max(8.0, 3.0 + 1.3 * len(emergent))), 4.6)
    axes = fig.subplots(1, 2, sharey=True)
    panels = [("dim0", "output units (filters / neurons)"), ("dim1", "input units (channels / features)")]
    for ax, (dim, what) in zip(axes, panels):
        names = [n for n, e in emergent.items() if dim in e]
        x = np.arange(len(names))
        obs = np.array([emergent[n][dim]["observed"] for n in names], dtype=float)
        exp = np.array([emergent[n][dim]["expected"] for n in names], dtype=float)
        bw = 0.38
        ax.bar(x - bw / 2, 100 * obs, bw, label="observed", color="#d84315")
        ax.bar(
            x + bw / 2,
            100 * exp,
            bw,
            label="expected (random, same structure and sparsity)",
            color="#90a4ae",
            hatch="//",
            edgecolor="white",
        )
        for i, n in enumerate(names):
            r = emergent[n][dim]["ratio"]
            if r is None or (isinstance(r, float) and math.isnan(r)):
                continue
            txt = "∞×" if math.isinf(r) else (f"{r:.2g}×" if r < 1000 else ">1000×")
            ax.annotate(
                txt,
                (x[i], 100 * max(obs[i], exp[i])),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=7,
            )
        structured = [emergent[n].get("baseline", "").startswith("random structured") for n in names]
        ax.set_xticks(x)
        ax.set_xticklabels(
            [short_name(n) + ("*" if s else "") for n, s in zip(names, structured)], rotation=30, ha="right"
        )
        ax.set_xlabel("layer (* pruned structurally: vs random structured pruning)" if any(structured) else "layer")
        ax.set_title(what, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    top = max(
        [100 * max(e[d]["observed"], e[d]["expected"]) for e in emergent.values() for d in ("dim0", "dim1") if d in e]
        + [0.0]
    )
    axes[0].set_ylim(0, min(108.0, max(5.0, 1.2 * top + 2.0)))
    axes[0].set_ylabel("units entirely pruned (%)")
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle(
        title or "Emergent structure: entirely pruned units vs random pruning of the same structure", fontsize=11
    )
    return fig


def plot_early_stop_vs_remaining(aggregated: Sequence[Mapping], title: str | None = None) -> Figure:
    """Learning speed: the early-stopping iteration (lowest validation loss) vs remaining weights (left)
    and the test accuracy at that iteration (right), mean ± std over seeds: the lottery-ticket paper's
    Figure 1 (Frankle & Carbin 2019).

    ``aggregated`` is ``analysis.accuracy_vs_remaining(rows)`` with rows that carry
    ``early_stop_iteration`` (and ``early_stop_test_accuracy``); groups without it are left out.
    Same x axis as :func:`plot_accuracy_vs_remaining` (remaining %, log scale, 100% on the left).
    """
    recipes: dict = {}
    for a in aggregated:
        if "early_stop_iteration" in a:
            recipes.setdefault(a["recipe"], []).append(a)
    many = len(recipes) > 6
    fig = new_figure(12.0 + (4.0 if many else 0.0), 4.6)
    axes = fig.subplots(1, 2)
    xs_all = []
    panels = (
        ("early_stop_iteration", 1.0, "early-stopping iteration\n(lowest validation loss)"),
        ("early_stop_test_accuracy", 100.0, "test accuracy at early stopping (%)"),
    )
    for ax, (key, scale, what) in zip(axes, panels):
        for i, (recipe, pts) in enumerate(recipes.items()):
            pts = sorted([a for a in pts if key in a], key=lambda a: -a["remaining"])
            if not pts:
                continue
            x = np.array([100.0 * a["remaining"] for a in pts])
            y = scale * np.array([a[key] for a in pts], dtype=float)
            e = ci_errors(pts, key, f"{key}_ci_low", f"{key}_ci_high", scale)
            ok = x > 0
            n_txt = n_text(pts, "early_stop_n")
            ax.errorbar(
                x[ok],
                y[ok],
                yerr=None if e is None else e[:, ok],
                markersize=4,
                capsize=3,
                linewidth=1.4,
                label=f"{recipe} ({n_txt})",
                **series_style(i, len(recipes)),
            )
            xs_all.extend(x[ok].tolist())
        ax.set_xscale("log")
        ax.set_xlabel("remaining weights (%, log scale)")
        ax.set_ylabel(what)
        ax.grid(True, which="major", alpha=0.3)
    if xs_all:
        for ax in axes:
            remaining_axis(ax, xs_all)
        if many:
            fig.legend(
                *axes[0].get_legend_handles_labels(),
                fontsize=7.5,
                loc="outside right upper",
                title="recipe (seeds)",
                title_fontsize=8,
            )
        else:
            axes[0].legend(fontsize=8, loc="best", title="recipe (seeds)", title_fontsize=8)
    else:
        axes[0].text(
            0.5,
            0.5,
            "no state has an early-stopping iteration\n(it needs a validation split: val_size > 0)",
            transform=axes[0].transAxes,
            ha="center",
            va="center",
            fontsize=10,
            color="#555555",
        )
    fig.suptitle(title or "Learning speed: early stopping vs remaining weights (mean, 95% CI over seeds)", fontsize=11)
    return fig


def plot_sanity_panels(groups: dict[str, list[str]], rows: list[dict], names: dict[str, str] | None = None):
    """One panel per checked branch: its accuracy-vs-remaining curve (solid) and its controls' (dashed);
    `names`: the legend's name of a series label (its branch)."""
    names = names or {}
    by_label: dict[str, list[dict]] = {}
    for row in rows:
        by_label.setdefault(row["recipe"], []).append(row)
    n = len(groups)
    columns = min(3, n)
    lines = math.ceil(n / columns)
    fig = new_figure(4.6 * columns, 3.6 * lines + 0.4)
    axes = fig.subplots(lines, columns, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, (checked, members) in zip(axes.flat, groups.items()):
        xs_all = []
        for i, label in enumerate(members):
            points = sorted(by_label.get(label, []), key=lambda a: -a["remaining"])
            x = np.array([100.0 * a["remaining"] for a in points])
            y = np.array([100.0 * a["mean"] for a in points])
            e = ci_errors(points)
            ok = x > 0
            name = f"{names.get(label, label)} ({n_text(points)})" if points else names.get(label, label)
            ax.errorbar(
                x[ok],
                y[ok],
                yerr=None if e is None else e[:, ok],
                marker="o",
                markersize=3.5,
                capsize=2,
                linewidth=2.0 if i == 0 else 1.2,
                linestyle="-" if i == 0 else "--",
                color="black" if i == 0 else f"C{(i - 1) % 10}",
                label=name,
            )
            xs_all.extend(x[ok].tolist())
        ax.set_xscale("log")
        if xs_all:
            remaining_axis(ax, xs_all)
        ax.set_title(checked, fontsize=9)
        ax.set_xlabel("remaining weights (%, log scale)", fontsize=8)
        ax.set_ylabel("test accuracy (%)", fontsize=8)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Sanity checks: branch (solid), controls (dashed)\nmean and 95% CI over seeds", fontsize=10)
    return fig
