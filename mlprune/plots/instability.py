"""Linear mode connectivity: error and loss along an interpolation path, instability vs spawn point."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from .style import ci_errors, new_figure, series_figure, series_style

STABLE_BELOW = 0.02  # Frankle et al. 2020: a network is stable to SGD noise when its instability is < 2 %


def plot_interpolation(
    alphas: Sequence[float],
    curves: Mapping[str, Mapping[str, Sequence]],
    title: str | None = None,
    bn_reset: bool = False,
) -> Figure:
    """Error (left, %) and loss (right) along the linear path from a (α = 0) to b (α = 1).

    ``curves``: ``{split: {"error": [...], "loss": [...]}}`` per α (split ``test``, and ``train``
    when measured). The dotted line joins the endpoints' errors: the instability is the largest
    gap above the endpoints' mean.
    """
    fig = new_figure(10.0, 4.2)
    ax_error, ax_loss = fig.subplots(1, 2)
    x = np.asarray(alphas, dtype=float)
    colors = {"test": "#1565c0", "train": "#ef6c00"}
    for split, values in curves.items():
        error = 100.0 * np.asarray([np.nan if v is None else v for v in values["error"]], dtype=float)
        loss = np.asarray([np.nan if v is None else v for v in values["loss"]], dtype=float)
        color = colors.get(split, "#424242")
        ax_error.plot(x, error, marker="o", markersize=3, color=color, label=split)
        ax_error.plot([x[0], x[-1]], [error[0], error[-1]], linestyle=":", color=color, linewidth=1)
        ax_loss.plot(x, loss, marker="o", markersize=3, color=color, label=split)
    ax_error.set_xlabel("α  (0 = a, 1 = b)")
    ax_error.set_ylabel("error (%)")
    ax_loss.set_xlabel("α  (0 = a, 1 = b)")
    ax_loss.set_ylabel("loss (cross-entropy)")
    for ax in (ax_error, ax_loss):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    note = " (BatchNorm statistics recomputed at every α)" if bn_reset else ""
    fig.suptitle((title or "Linear interpolation") + note, fontsize=10)
    return fig


def plot_instability_vs_spawn(levels: Mapping[str, Sequence[Mapping]], title: str | None = None) -> Figure:
    """Instability (%) vs the spawn point k (iterations, symmetric log axis), one line per sparsity level.

    ``levels``: ``{level label: [{"iteration", "mean", "n", "seeds", "ci_low", "ci_high"}]}`` with
    instabilities as fractions; the bars are the 95% intervals over seeds (none from one seed). The dashed line is the 2 % threshold; a filled marker is a stable point
    (mean < 2 %), a hollow one an unstable point (the figure of Frankle et al. 2020).
    """
    fig, ax, _ = series_figure(len(levels))
    top = 100.0 * STABLE_BELOW
    spawn_points = set()
    for i, (label, points) in enumerate(levels.items()):
        points = sorted(points, key=lambda p: p["iteration"])
        spawn_points.update(p["iteration"] for p in points)
        ns = sorted({int(p["n"]) for p in points})
        label = f"{label} (n={ns[0]})" if len(ns) == 1 else f"{label} (n={ns[0]}–{ns[-1]})"
        if all(p.get("seeds") == 1 for p in points):
            label += ", 1 seed: no interval"
        x = np.asarray([p["iteration"] for p in points], dtype=float)
        y = 100.0 * np.asarray([p["mean"] for p in points], dtype=float)
        errors = ci_errors(points)
        e = np.zeros((2, len(points))) if errors is None else errors
        style = series_style(i, len(levels))
        color = style["color"]
        ax.errorbar(
            x, y, yerr=errors, capsize=3, linewidth=1.4, color=color, linestyle=style.get("linestyle", "-"), label=label
        )
        stable = y < top
        ax.plot(x[stable], y[stable], linestyle="none", marker="o", markersize=7, color=color)
        ax.plot(
            x[~stable], y[~stable], linestyle="none", marker="o", markersize=7, markerfacecolor="white", color=color
        )
        if np.isfinite(y).any():
            top = max(top, float(np.nanmax(y + e[1])))
    ax.axhline(100.0 * STABLE_BELOW, linestyle="--", color="#616161", linewidth=1)
    ax.annotate(
        "stable below 2 %",
        (0.01, 100.0 * STABLE_BELOW),
        xycoords=("axes fraction", "data"),
        xytext=(0, 3),
        textcoords="offset points",
        fontsize=8,
        color="#616161",
    )
    ax.set_xscale("symlog", linthresh=10)
    if spawn_points:  # a tick at every spawn point, in plain iterations
        ax.xaxis.set_major_locator(FixedLocator(sorted(spawn_points)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.0f}"))
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]), top=top * 1.15 + 0.5)
    ax.set_xlabel("spawn point k (iterations; symmetric log scale)")
    ax.set_ylabel("instability (%): max test error on the path − mean of the ends")
    ax.set_title(title or "Instability vs spawn point (filled: stable, < 2 %)")
    ax.grid(True, which="major", alpha=0.3)
    if levels:
        ax.legend(
            fontsize=8,
            loc="best",
            title="sparsity level (n = seeds × pairs; bars: 95% CI over seeds)",
            title_fontsize=8,
        )
    return fig
