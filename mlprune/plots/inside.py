"""Inside the network: per-class impact, PIEs, value heatmaps (churn, CKA), learning curves."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..errors import SpecError
from .style import PRUNED_COLOR, as_numpy, new_figure, remaining_axis, series_figure, series_legend, series_style


def plot_class_impact(impacts: Mapping, classes: Sequence, title: str | None = None) -> Figure:
    """Per-class impact of pruning (Hooker et al. 2019), grouped bars: one group per class, one bar
    per pruned population (e.g. round), in percentage points.

    ``impacts``: ``{label: inside.class_impact(...)}`` (``impact``, ``significant``, ``n_*``).
    Below 0: the class lost more recall than the network lost accuracy. A bar that is
    significant (Welch's t-test, p < 0.05) is solid and starred; others are pale.
    """
    labels = list(impacts)
    classes = [str(c) for c in classes]
    fig = new_figure(min(16.0, max(7.0, 2.5 + 0.55 * len(classes) * max(1, len(labels)) ** 0.5)), 4.6)
    ax = fig.add_subplot()
    x = np.arange(len(classes))
    width = 0.8 / max(1, len(labels))
    cmap = matplotlib.colormaps["viridis"]
    tested = False
    for i, label in enumerate(labels):
        result = impacts[label]
        values = 100 * np.asarray(result["impact"], dtype=float)
        significant = np.asarray(result["significant"], dtype=bool)
        tested = tested or bool(np.isfinite(np.asarray(result["p"], dtype=float)).any())
        color = cmap(0.15 + 0.7 * i / max(1, len(labels) - 1))
        offsets = x - 0.4 + width * (i + 0.5)
        ax.bar(
            offsets,
            values,
            width * 0.92,
            color=[color if s else (*color[:3], 0.35) for s in significant] if tested else color,
            label=f"{label} (n={result['n_pruned']} vs {result['n_dense']})",
        )
        for xo, v, s in zip(offsets, values, significant):
            if s:
                ax.annotate(
                    "*", (xo, v), xytext=(0, 1 if v >= 0 else -9), textcoords="offset points", ha="center", fontsize=10
                )
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(classes)
    ax.set_xlabel("class")
    ax.set_ylabel("Δ class recall − Δ accuracy (points)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="best", title="pruned vs dense (networks)", title_fontsize=8)
    note = (
        "solid, *: significant (Welch's t-test, p < 0.05); pale: not"
        if tested
        else "one network per population: no significance test (run several seeds)"
    )
    ax.set_title((title or "Per-class impact of pruning") + f"\n{note}", fontsize=10)
    return fig


def plot_pie_fraction(points: Mapping, title: str | None = None) -> Figure:
    """Fraction of test examples that are PIEs vs remaining weights, one line per series.

    ``points``: ``{series: [(remaining fraction, PIE fraction, n pruned networks), ...]}``.
    Same x axis as :func:`plot_accuracy_vs_remaining` (remaining %, log, 100% on the left).
    """
    fig, ax, many = series_figure(len(points))
    xs_all = []
    for i, (label, pts) in enumerate(points.items()):
        pts = sorted(pts, key=lambda p: -p[0])
        x = np.array([100.0 * p[0] for p in pts])
        y = np.array([100.0 * p[1] for p in pts])
        ns = sorted({int(p[2]) for p in pts})
        ax.plot(
            x,
            y,
            markersize=5,
            linewidth=1.4,
            label=f"{label} (n={'–'.join(map(str, ns[:: max(1, len(ns) - 1)]))})",
            **series_style(i, len(points)),
        )
        xs_all.extend(x[x > 0].tolist())
    ax.set_xscale("log")
    if xs_all:
        remaining_axis(ax, xs_all)
        series_legend(fig, ax, many)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("remaining weights (%, log scale)")
    ax.set_ylabel("PIEs (% of test examples)")
    ax.set_title(title or "Pruning Identified Exemplars: modal label of the pruned networks ≠ of the dense ones")
    ax.grid(True, which="major", alpha=0.3)
    return fig


def plot_pie_gallery(images, entries: Sequence[Mapping], title: str | None = None, columns: int = 8) -> Figure:
    """The first PIEs as images: ``images`` (k, C, H, W) in [0, 1]; ``entries`` their index, true label and
    the dense and pruned modal labels (with agreement)."""
    imgs = as_numpy(images).astype(np.float64)
    k = len(entries)
    if k == 0:
        raise SpecError("plot_pie_gallery needs at least one PIE")
    columns = min(columns, k)
    rows = math.ceil(k / columns)
    fig = new_figure(1.45 * columns + 0.4, 1.75 * rows + 0.7)
    for i, entry in enumerate(entries):
        ax = fig.add_subplot(rows, columns, i + 1)
        img = imgs[i]
        if img.shape[0] == 1:
            ax.imshow(
                img[0], cmap="gray_r" if img.mean() < 0.5 else "gray", vmin=0.0, vmax=1.0, interpolation="nearest"
            )
        else:
            ax.imshow(np.clip(np.transpose(img[:3], (1, 2, 0)), 0.0, 1.0), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(
            f"#{entry['index']} true {entry['label']}\ndense {entry['dense_label']} "
            f"({100 * entry['dense_agreement']:.0f}%)\npruned {entry['pruned_label']} "
            f"({100 * entry['pruned_agreement']:.0f}%)",
            fontsize=7,
            pad=2,
        )
    fig.suptitle(title or "Pruning Identified Exemplars", fontsize=10)
    return fig


def plot_value_heatmap(
    matrix,
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    *,
    what: str,
    title: str | None = None,
    limits: tuple = (0.0, None),
    cmap: str = "viridis",
    axis_labels: tuple[str, str] = ("", ""),
) -> Figure:
    """Annotated heatmap of a rows × columns matrix of one quantity (``what``: the colorbar label);
    NaN cells are grey. ``limits``: (vmin, vmax) of the colours, vmax None: the largest value (at least
    1e-9 above vmin). ``axis_labels``: (x, y)."""
    (vmin, vmax), (xlabel, ylabel) = limits, axis_labels
    mat = as_numpy(matrix).astype(np.float64)
    if mat.shape != (len(row_labels), len(column_labels)):
        raise SpecError(f"plot_value_heatmap: a {mat.shape} matrix for {len(row_labels)} × {len(column_labels)} labels")
    finite = mat[np.isfinite(mat)]
    top = vmax if vmax is not None else max(float(finite.max()) if finite.size else vmin + 1.0, vmin + 1e-9)
    rows, cols = mat.shape
    fig = new_figure(
        min(16.0, max(5.0, 2.6 + 0.75 * cols + 0.06 * max(len(str(r)) for r in row_labels))),
        min(14.0, max(3.2, 1.6 + 0.45 * rows)),
    )
    ax = fig.add_subplot()
    im = ax.imshow(
        np.ma.masked_invalid(mat),
        cmap=matplotlib.colormaps[cmap].with_extremes(bad=PRUNED_COLOR),
        vmin=vmin,
        vmax=top,
        interpolation="nearest",
        aspect="auto",
    )
    fig.colorbar(im, ax=ax, label=what, shrink=0.85)
    ax.set_xticks(np.arange(cols))
    ax.set_yticks(np.arange(rows))
    ax.set_xticklabels(
        [str(c) for c in column_labels], rotation=30 if cols > 5 else 0, ha="right" if cols > 5 else "center"
    )
    ax.set_yticklabels([str(r) for r in row_labels])
    if rows * cols <= 400:
        for i in range(rows):
            for j in range(cols):
                v = mat[i, j]
                light = np.isfinite(v) and (v - vmin) / (top - vmin) > 0.55
                ax.text(
                    j,
                    i,
                    "–" if not np.isfinite(v) else f"{v:.3f}" if abs(v) < 1 else f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8 if cols <= 10 else 6,
                    color="black" if light else "white",
                )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or what, fontsize=10)
    return fig


def plot_learning_curves(curves: Mapping, title: str | None = None) -> Figure:
    """Per-epoch learning curves of several trainings: accuracy (left) and loss (right); test solid,
    train dashed, one color per training.

    ``curves``: ``{label: {"test_accuracy": [(epoch, v)], "train_accuracy": [...], "test_loss": [...],
    "train_loss": [...]}}`` (any may be missing).
    """
    fig = new_figure(12.0, 4.3)
    axes = fig.subplots(1, 2)
    cmap = matplotlib.colormaps["viridis"]
    for i, (label, series) in enumerate(curves.items()):
        color = cmap(0.1 + 0.75 * i / max(1, len(curves) - 1))
        for ax, kind in zip(axes, ("accuracy", "loss")):
            for split, style in (("test", "-"), ("train", "--")):
                points = series.get(f"{split}_{kind}") or []
                if not points:
                    continue
                epochs, values = zip(*points)
                scale = 100.0 if kind == "accuracy" else 1.0
                ax.plot(
                    epochs,
                    scale * np.asarray(values, dtype=float),
                    linestyle=style,
                    color=color,
                    marker="." if len(epochs) <= 30 else None,
                    label=label if split == "test" else None,
                )
    for ax, kind in zip(axes, ("accuracy (%)", "loss (cross-entropy)")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(kind)
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = axes[0].get_legend_handles_labels()
    handles += [
        Line2D([], [], color="black", linestyle="-", label="test"),
        Line2D([], [], color="black", linestyle="--", label="train (batches as trained on)"),
    ]
    fig.legend(handles=handles, fontsize=8, loc="outside right center")
    fig.suptitle(title or "Learning curves", fontsize=11)
    return fig
