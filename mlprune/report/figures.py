"""Matplotlib figures for pruning experiments (the report's and the workflow runs').

Every ``plot_*`` function builds and returns its own ``matplotlib.figure.Figure``
(Agg canvas attached, constrained layout); nothing goes through ``pyplot``, so no
global figure state leaks between calls and nothing needs closing. Callers log a
figure with ``mlflow.log_figure(fig, "name.png")`` or ``fig.savefig(path)``.

Conventions: weights and masks are tensors (or arrays) of one parameter,
``True`` in a mask = kept. Pruned weights are drawn in grey (``PRUNED_COLOR``),
which a diverging colormap (white at 0) never produces, so a pruned weight is
never confused with a kept weight that is zero. Accuracies and remaining
fractions come in as fractions (0..1) and are shown in percent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch
from matplotlib.path import Path
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from ..errors import SpecError
from ..lineage import KIND_COLORS, OTHER_KIND_COLOR, dag_geometry, kind_key, node_lines
from ..lineage import BOX_H as _BOX_H
from ..lineage import BOX_W as _BOX_W

__all__ = [
    "plot_conv_filters",
    "plot_fc_weights",
    "plot_biases",
    "plot_bias_panels",
    "plot_weight_evolution",
    "plot_jaccard_heatmap",
    "plot_accuracy_vs_remaining",
    "plot_structure",
    "plot_early_stop_vs_remaining",
    "plot_stability",
    "plot_dag",
    "plot_class_impact",
    "plot_pie_fraction",
    "plot_pie_gallery",
    "plot_value_heatmap",
    "plot_learning_curves",
    "plot_interpolation",
    "plot_instability_vs_spawn",
]

PRUNED_COLOR = "#9e9e9e"


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained", dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def _weight_cmap():
    return matplotlib.colormaps["RdBu_r"].with_extremes(bad=PRUNED_COLOR)


def _symmetric_limit(values: np.ndarray) -> float:
    finite = np.abs(values[np.isfinite(values)]) if values.size else values
    v = float(finite.max()) if finite.size else 0.0
    return v if v > 0 else 1.0


def _short(name: str) -> str:
    return name[: -len(".weight")] if name.endswith(".weight") else name


# ------------------------------------------------------------------------ weights


def plot_conv_filters(weight, mask=None, title: str | None = None, *, channel: str = "first",
                      max_filters: int = 64) -> Figure:
    """Grid of the filters of a conv weight ``(out, in, kh, kw)``, pruned weights grey.

    ``channel="first"`` shows input channel 0 of each filter; ``"mean"`` the mean
    over input channels of the effective weights (a pixel is grey only if it is
    pruned in every input channel). At most ``max_filters`` filters are shown (the
    title says how many there are). A shared colorbar gives the weight value,
    symmetric around 0 (white).
    """
    w = _np(weight).astype(np.float64)
    if w.ndim != 4:
        raise SpecError(f"plot_conv_filters needs a 4-d conv weight (out, in, kh, kw); got shape {w.shape}")
    m = np.ones(w.shape, dtype=bool) if mask is None else _np(mask).astype(bool)
    if m.shape != w.shape:
        raise SpecError(f"mask shape {m.shape} does not match weight shape {w.shape}")
    if channel not in ("first", "mean"):
        raise SpecError(f"unknown channel {channel!r}; allowed: first, mean")
    out_ch, in_ch, kh, kw = w.shape
    if channel == "first":  # the first input channel that is not entirely pruned: something to see
        alive = m.transpose(1, 0, 2, 3).reshape(in_ch, -1).any(axis=1)
        first = int(np.argmax(alive)) if alive.any() else 0
        imgs = np.ma.masked_array(w[:, first], mask=~m[:, first])
        how = (f"input channel {first}" + (f" (0-{first - 1} entirely pruned)" if first else "")
               if in_ch > 1 else "single input channel")
    else:
        eff = (w * m).mean(axis=1)
        imgs = np.ma.masked_array(eff, mask=~m.any(axis=1))
        how = f"mean over {in_ch} input channels"
    shown = min(out_ch, max_filters)
    ncols = max(1, math.ceil(math.sqrt(shown)))
    nrows = math.ceil(shown / ncols)
    cell = 1.15 if max(kh, kw) <= 7 else 1.6
    fig = _figure(max(6.5, ncols * cell + 1.6), nrows * cell + 1.3)
    vmax = _symmetric_limit(np.ma.filled(imgs, np.nan))
    cmap = _weight_cmap()
    axes = []
    im = None
    filter_pruned = ~m.reshape(out_ch, -1).any(axis=1)
    for i in range(shown):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        im = ax.imshow(imgs[i], cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{i}" + (" (pruned)" if filter_pruned[i] else ""), fontsize=7, pad=2,
                     color="#b71c1c" if filter_pruned[i] else "black")
        axes.append(ax)
    fig.colorbar(im, ax=axes, label="weight value", shrink=0.8)
    n_pruned = int(filter_pruned.sum())
    head = title or "Conv filters"
    more = f", first {shown} of {out_ch}" if shown < out_ch else ""
    fig.suptitle(f"{head}\n{out_ch} filters {kh}×{kw}, {how}{more}; "
                 f"{n_pruned} {'filter' if n_pruned == 1 else 'filters'} entirely pruned", fontsize=10, wrap=True)
    if mask is not None:
        fig.legend(handles=[Patch(facecolor=PRUNED_COLOR, label="pruned weight")], loc="outside lower left",
                   fontsize=8, frameon=False)
    return fig


def plot_fc_weights(weight, mask=None, title: str | None = None) -> Figure:
    """Heatmap of a linear weight ``(out, in)`` (higher dims are flattened), pruned entries grey."""
    w = _np(weight).astype(np.float64)
    if w.ndim < 2:
        raise SpecError(f"plot_fc_weights needs a weight with >= 2 dims; got shape {w.shape}")
    m = np.ones(w.shape, dtype=bool) if mask is None else _np(mask).astype(bool)
    if m.shape != w.shape:
        raise SpecError(f"mask shape {m.shape} does not match weight shape {w.shape}")
    flat = w.ndim > 2
    w2 = w.reshape(w.shape[0], -1)
    m2 = m.reshape(m.shape[0], -1)
    data = np.ma.masked_array(w2, mask=~m2)
    vmax = _symmetric_limit(np.ma.filled(data, np.nan))
    out_n, in_n = w2.shape
    width = min(14.0, max(6.0, 4.0 + in_n / 60))
    height = min(10.0, max(3.5, 2.0 + out_n / 40))
    fig = _figure(width, height)
    ax = fig.add_subplot()
    im = ax.imshow(data, cmap=_weight_cmap(), vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="weight value")
    ax.set_xlabel("input feature" + (" (flattened)" if flat else ""))
    ax.set_ylabel("output neuron")
    kept = int(m2.sum())
    ax.set_title(f"{title or 'Weights'}: {out_n}×{in_n}, "
                 f"{kept}/{m2.size} kept ({100 * kept / max(1, m2.size):.1f}%)")
    if mask is not None:
        fig.legend(handles=[Patch(facecolor=PRUNED_COLOR, label="pruned")], loc="outside lower right",
                   fontsize=8, frameon=False)
    return fig


def plot_biases(bias, title: str | None = None) -> Figure:
    """Bar chart of a bias vector (one bar per output unit)."""
    b = _np(bias).astype(np.float64).reshape(-1)
    fig = _figure(min(14.0, max(5.0, 2.0 + b.size / 12)), 3.5)
    ax = fig.add_subplot()
    colors = np.where(b >= 0, "#c62828", "#1565c0")
    ax.bar(np.arange(b.size), b, color=colors, width=0.85)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("output unit")
    ax.set_ylabel("bias value")
    ax.set_title(f"{title or 'Biases'} ({b.size} units)")
    if b.size <= 30:
        ax.set_xticks(np.arange(b.size))
    ax.set_xlim(-0.7, b.size - 0.3)
    return fig


def plot_bias_panels(biases: Mapping, title: str | None = None) -> Figure:
    """All bias vectors of a network in one figure: one bar chart per layer, stacked."""
    items = [(name, _np(b).astype(np.float64).reshape(-1)) for name, b in biases.items()]
    if not items:
        raise SpecError("plot_bias_panels needs at least one bias vector")
    widest = max(b.size for _, b in items)
    fig = _figure(min(14.0, max(6.0, 2.5 + widest / 12)), 0.4 + 1.75 * len(items))
    axes = fig.subplots(len(items), 1, squeeze=False)[:, 0]
    for ax, (name, b) in zip(axes, items):
        ax.bar(np.arange(b.size), b, color=np.where(b >= 0, "#c62828", "#1565c0"), width=0.85)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xlim(-0.7, b.size - 0.3)
        ax.set_ylabel("bias", fontsize=8)
        ax.set_title(f"{name} ({b.size} units)", fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
    axes[-1].set_xlabel("output unit")
    fig.suptitle(title or "Biases", fontsize=10)
    return fig


def plot_weight_evolution(trajectories, rounds_labels: Sequence | None = None,
                          title: str | None = None) -> Figure:
    """Value of each sampled weight across rounds; a line ends where its weight was pruned.

    ``trajectories`` is ``(n_weights, n_rounds)`` with NaN where a weight is pruned
    (``analysis.weight_trajectories``). Weights kept to the last round are blue,
    weights pruned on the way orange with an × on their last kept value.
    """
    tr = np.atleast_2d(_np(trajectories).astype(np.float64))
    n, T = tr.shape
    labels = [str(r) for r in (rounds_labels if rounds_labels is not None else range(T))]
    if len(labels) != T:
        raise SpecError(f"{len(labels)} rounds_labels for {T} rounds")
    fig = _figure(min(14.0, max(6.0, 3.0 + 0.6 * T)), 4.5)
    ax = fig.add_subplot()
    x = np.arange(T)
    kept_color, pruned_color = "#1f77b4", "#ff7f0e"
    n_kept = n_pruned = 0
    for row in tr:
        finite = np.isfinite(row)
        if not finite.any():
            continue
        last = int(np.nonzero(finite)[0].max())
        survived = last == T - 1
        color = kept_color if survived else pruned_color
        n_kept += survived
        n_pruned += not survived
        ax.plot(x, row, color=color, alpha=0.75, linewidth=1.2, marker="." if T <= 30 else None,
                markersize=4)
        if not survived:
            ax.plot([x[last]], [row[last]], marker="x", color=color, markersize=7, mew=1.8)
    ax.axhline(0.0, color="black", linewidth=0.6, alpha=0.6)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=30 if max((len(s) for s in labels), default=0) > 4 else 0,
                       ha="right" if max((len(s) for s in labels), default=0) > 4 else "center")
    ax.set_xlim(-0.3, T - 0.7)
    ax.set_xlabel("round")
    ax.set_ylabel("weight value")
    ax.set_title(title or f"Evolution of {n} sampled weights")
    ax.legend(handles=[
        Line2D([], [], color=kept_color, label=f"kept to the last round ({n_kept})"),
        Line2D([], [], color=pruned_color, marker="x", mew=1.8,
               label=f"pruned on the way ({n_pruned});\n× = last round kept"),
    ], fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.grid(True, alpha=0.3)
    return fig


# ---------------------------------------------------------------------- analyses


def plot_jaccard_heatmap(matrix, labels: Sequence[str], title: str | None = None) -> Figure:
    """Annotated heatmap of a Jaccard matrix (color scale fixed to 0..1)."""
    mat = _np(matrix).astype(np.float64)
    n = mat.shape[0]
    if mat.shape != (n, n) or len(labels) != n:
        raise SpecError(f"plot_jaccard_heatmap needs an n×n matrix and n labels; got {mat.shape}, {len(labels)}")
    size = min(11.0, max(4.5, 1.5 + 0.55 * n))
    fig = _figure(size + 1.2, size)
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
                ax.text(j, i, "–" if not np.isfinite(v) else f"{v:.2f}", ha="center", va="center",
                        fontsize=fs, color="black" if np.isfinite(v) and v > 0.55 else "white")
    ax.set_xlabel("state")
    ax.set_ylabel("state")
    ax.set_title(title or "Mask similarity (Jaccard of kept weights)")
    return fig


_NICE_PERCENTS = [100, 70, 50, 30, 20, 10, 7, 5, 3, 2, 1, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01]


def _pct(v: float, _pos=None) -> str:
    return f"{v:g}"


_FINE_PERCENTS = [100, 90, 80, 70, 60, 50, 40, 30, 20, 15, 10, 7, 5, 3, 2, 1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01]
_MARKERS = "osD^v<>ph*"


def _series_style(i: int, n: int) -> dict:
    """Distinct color / marker / line style for series i of n (tab10, then tab20 and dashes)."""
    if n <= 10:
        return {"color": matplotlib.colormaps["tab10"](i % 10), "marker": "o"}
    return {"color": matplotlib.colormaps["tab20"](i % 20), "marker": _MARKERS[i % len(_MARKERS)],
            "linestyle": ("-", "--", ":")[(i // 20) % 3]}


def _series_figure(n: int) -> tuple:
    """Figure and axes for n series: the legend goes to the right of the axes when there are many."""
    many = n > 6
    fig = _figure(7.5 + (4.0 if many else 0.0), max(4.8, 1.2 + 0.19 * n) if many else 4.8)
    return fig, fig.add_subplot(), many


def _series_legend(fig, ax, many: bool) -> None:
    if many:
        fig.legend(*ax.get_legend_handles_labels(), fontsize=7.5, loc="outside right upper",
                   title="recipe (seeds)", title_fontsize=8)
    else:
        ax.legend(fontsize=8, loc="best", title="recipe (seeds)", title_fontsize=8)


def _remaining_axis(ax, xs: list) -> None:
    """Log x axis of remaining %, reversed (100% on the left), with readable ticks."""
    hi, lo = max(xs), min(xs)
    ax.set_xlim(hi * 1.25, lo / 1.25)
    ticks = [t for t in _NICE_PERCENTS if lo / 1.25 <= t <= hi * 1.25]
    if len(ticks) < 4:
        ticks = [t for t in _FINE_PERCENTS if lo / 1.25 <= t <= hi * 1.25]
    if len(ticks) < 2:
        ticks = sorted({hi, lo}, reverse=True)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(_pct))
    ax.xaxis.set_minor_locator(NullLocator())


def plot_accuracy_vs_remaining(aggregated: Sequence[Mapping], title: str | None = None) -> Figure:
    """Test accuracy vs remaining weights, one line per recipe, mean ± std over seeds.

    ``aggregated`` is ``analysis.accuracy_vs_remaining(rows)``. The x axis is the
    percentage of prunable weights remaining on a log scale, reversed like the
    lottery-ticket papers (100% on the left). The legend gives n (seeds); error
    bars only where there are at least 2 seeds. A dashed line of each recipe's
    color marks its dense accuracy (round 0), the reference every round is read
    against.
    """
    recipes: dict = {}
    for a in aggregated:
        recipes.setdefault(a["recipe"], []).append(a)
    fig, ax, many = _series_figure(len(recipes))
    xs_all = []
    dense_drawn = set()
    for i, (recipe, pts) in enumerate(recipes.items()):
        pts = sorted(pts, key=lambda a: -a["remaining"])
        x = np.array([100.0 * a["remaining"] for a in pts])
        y = np.array([100.0 * a["mean"] for a in pts])
        e = np.array([100.0 * a["std"] if a["n"] >= 2 else np.nan for a in pts])  # no spread from one seed
        ok = x > 0  # 0% remaining cannot sit on a log axis
        ns = sorted({int(a["n"]) for a in pts})
        n_txt = f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}–{ns[-1]}"
        style = _series_style(i, len(recipes))
        ax.errorbar(x[ok], y[ok], yerr=None if np.isnan(e).all() else np.nan_to_num(e[ok]), markersize=4,
                    capsize=3, linewidth=1.4, label=f"{recipe} ({n_txt})", **style)
        dense = [a for a in pts if a.get("round") == 0]
        if dense and round(dense[0]["mean"], 6) not in dense_drawn:  # recipes sharing a dense state: one line
            dense_drawn.add(round(dense[0]["mean"], 6))
            ax.axhline(100.0 * dense[0]["mean"], color=style["color"], linestyle="--", linewidth=0.9, alpha=0.7)
        xs_all.extend(x[ok].tolist())
    if dense_drawn:
        ax.plot([], [], color="#616161", linestyle="--", linewidth=0.9, label="dense (round 0) accuracy")
    ax.set_xscale("log")
    if xs_all:
        _remaining_axis(ax, xs_all)  # reversed: 100% on the left
        _series_legend(fig, ax, many)
    ax.set_xlabel("remaining weights (%, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or "Test accuracy vs remaining weights (mean ± std over seeds)")
    ax.grid(True, which="major", alpha=0.3)
    return fig


def plot_accuracy_vs_speedup(rows: Sequence[Mapping], title: str | None = None) -> Figure:
    """Test accuracy vs measured speedup (dense / compact latency, batch 64), one line per structured
    recipe, mean ± std over seeds; each point is labelled with its round (r0: dense, speedup 1).

    ``rows`` is ``report.series.speedup_table(collection)[0]``.
    """
    recipes: dict = {}
    for row in rows:
        recipes.setdefault(row["recipe"], []).append(row)
    fig, ax, many = _series_figure(len(recipes))
    for i, (recipe, pts) in enumerate(recipes.items()):
        pts = sorted(pts, key=lambda r: r["round"])
        x = np.array([r["speedup"] for r in pts])
        y = np.array([100.0 * r["mean"] for r in pts])
        ns = sorted({int(r["n"]) for r in pts})
        n_txt = f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}–{ns[-1]}"
        ax.errorbar(x, y, xerr=[r["speedup_std"] for r in pts], yerr=[100.0 * r["std"] for r in pts],
                    markersize=4, capsize=3, linewidth=1.4, label=f"{recipe} ({n_txt})",
                    **_series_style(i, len(recipes)))
        for r, xi, yi in zip(pts, x, y):
            ax.annotate(f"r{r['round']}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axvline(1.0, color="#999", linewidth=0.8, linestyle=":")
    if recipes:
        _series_legend(fig, ax, many)
    ax.set_xlabel("measured speedup (dense / compact latency, batch 64)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or "Test accuracy vs measured speedup, structured recipes (mean ± std over seeds)")
    ax.grid(True, alpha=0.3)
    return fig


def plot_structure(emergent: Mapping[str, Mapping], title: str | None = None) -> Figure:
    """Observed vs expected-random fraction of entirely pruned units per layer (grouped bars).

    ``emergent`` is ``analysis.emergent_structure(masks, kinds)``. Left panel:
    output units (dim 0: filters / neurons); right panel: input units (dim 1:
    input channels / features). The number above a pair is observed / expected.
    """
    fig = _figure(min(16.0, max(8.0, 3.0 + 1.3 * len(emergent))), 4.6)
    axes = fig.subplots(1, 2, sharey=True)
    panels = [("dim0", "output units (filters / neurons)"), ("dim1", "input units (channels / features)")]
    for ax, (dim, what) in zip(axes, panels):
        names = [n for n, e in emergent.items() if dim in e]
        x = np.arange(len(names))
        obs = np.array([emergent[n][dim]["observed"] for n in names], dtype=float)
        exp = np.array([emergent[n][dim]["expected"] for n in names], dtype=float)
        bw = 0.38
        ax.bar(x - bw / 2, 100 * obs, bw, label="observed", color="#d84315")
        ax.bar(x + bw / 2, 100 * exp, bw, label="expected (random, same structure and sparsity)",
               color="#90a4ae", hatch="//", edgecolor="white")
        for i, n in enumerate(names):
            r = emergent[n][dim]["ratio"]
            if r is None or (isinstance(r, float) and math.isnan(r)):
                continue
            txt = "∞×" if math.isinf(r) else (f"{r:.2g}×" if r < 1000 else ">1000×")
            ax.annotate(txt, (x[i], 100 * max(obs[i], exp[i])), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=7)
        structured = [emergent[n].get("baseline", "").startswith("random structured") for n in names]
        ax.set_xticks(x)
        ax.set_xticklabels([_short(n) + ("*" if s else "") for n, s in zip(names, structured)],
                           rotation=30, ha="right")
        ax.set_xlabel("layer (* pruned structurally: vs random structured pruning)" if any(structured) else "layer")
        ax.set_title(what, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    top = max([100 * max(e[d]["observed"], e[d]["expected"]) for e in emergent.values()
               for d in ("dim0", "dim1") if d in e] + [0.0])
    axes[0].set_ylim(0, min(108.0, max(5.0, 1.2 * top + 2.0)))
    axes[0].set_ylabel("units entirely pruned (%)")
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle(title or "Emergent structure: entirely pruned units vs random pruning of the same structure",
                 fontsize=11)
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
    fig = _figure(12.0 + (4.0 if many else 0.0), 4.6)
    axes = fig.subplots(1, 2)
    xs_all = []
    panels = (("early_stop_iteration", 1.0, "early-stopping iteration\n(lowest validation loss)"),
              ("early_stop_test_accuracy", 100.0, "test accuracy at early stopping (%)"))
    for ax, (key, scale, what) in zip(axes, panels):
        for i, (recipe, pts) in enumerate(recipes.items()):
            pts = sorted([a for a in pts if key in a], key=lambda a: -a["remaining"])
            if not pts:
                continue
            x = np.array([100.0 * a["remaining"] for a in pts])
            y = scale * np.array([a[key] for a in pts], dtype=float)
            e = scale * np.array([a.get(f"{key}_std", 0.0) for a in pts], dtype=float)
            ok = x > 0
            ns = sorted({int(a.get("early_stop_n", a["n"])) for a in pts})
            n_txt = f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}–{ns[-1]}"
            ax.errorbar(x[ok], y[ok], yerr=e[ok], markersize=4, capsize=3, linewidth=1.4,
                        label=f"{recipe} ({n_txt})", **_series_style(i, len(recipes)))
            xs_all.extend(x[ok].tolist())
        ax.set_xscale("log")
        ax.set_xlabel("remaining weights (%, log scale)")
        ax.set_ylabel(what)
        ax.grid(True, which="major", alpha=0.3)
    if xs_all:
        for ax in axes:
            _remaining_axis(ax, xs_all)
        if many:
            fig.legend(*axes[0].get_legend_handles_labels(), fontsize=7.5, loc="outside right upper",
                       title="recipe (seeds)", title_fontsize=8)
        else:
            axes[0].legend(fontsize=8, loc="best", title="recipe (seeds)", title_fontsize=8)
    else:
        axes[0].text(0.5, 0.5, "no state has an early-stopping iteration\n(it needs a validation split: "
                               "val_size > 0)", transform=axes[0].transAxes, ha="center", va="center", fontsize=10,
                     color="#555555")
    fig.suptitle(title or "Learning speed: early stopping vs remaining weights (mean ± std over seeds)",
                 fontsize=11)
    return fig


def plot_stability(stability: Mapping, rounds_labels: Sequence | None = None,
                   title: str | None = None) -> Figure:
    """Weight stability across rounds: three panels over the transitions t -> t+1.

    ``stability`` is ``analysis.weight_stability(weights, masks)``. Panels: Jaccard
    of consecutive masks (kept weights), cosine similarity and relative L2 change
    of the weights kept in both. One thin line per layer, the overall value thick
    and black. ``rounds_labels`` name the states (one more than the transitions).
    """
    transitions = list(stability["transitions"])
    T = len(transitions)
    if rounds_labels is not None:
        labels = [str(r).split(" (")[0] for r in rounds_labels]  # "r3 (51.2%)" -> "r3": short ticks
        if len(labels) != T + 1:
            raise SpecError(f"{len(labels)} rounds_labels for {T} transitions (need {T + 1})")
        xt = [f"{labels[t]}→{labels[t + 1].lstrip('r')}" for t in range(T)]
    else:
        xt = [t.replace("->", "→") for t in transitions]
    every = max(1, math.ceil(T / 8))  # at most ~8 tick labels a panel: they never overlap
    xt = [label if t % every == 0 or t == T - 1 else "" for t, label in enumerate(xt)]
    fig = _figure(min(16.0, max(10.0, 4.0 + 0.9 * T * 3)), 4.4)
    axes = fig.subplots(1, 3)
    panels = [("jaccard", "mask overlap (Jaccard)", (0.0, 1.05)),
              ("cosine", "cosine similarity\nof weights kept in both", (None, None)),
              ("relative_l2", "relative change ‖w′−w‖ / ‖w‖\nof weights kept in both", (0.0, None))]
    x = np.arange(T)
    cmap = matplotlib.colormaps["tab10"]
    handles = []
    for ax, (key, what, (lo, hi)) in zip(axes, panels):
        for i, (name, values) in enumerate(stability[key]["per_layer"].items()):
            line, = ax.plot(x, np.asarray(values, dtype=float), marker=".", linewidth=1.0, alpha=0.8,
                            color=cmap(i % 10), label=_short(name))
            if key == "jaccard":
                handles.append(line)
        line, = ax.plot(x, np.asarray(stability[key]["overall"], dtype=float), marker="o", linewidth=2.4,
                        color="black", label="overall")
        if key == "jaccard":
            handles.append(line)
        ax.set_xticks(x)
        ax.set_xticklabels(xt, rotation=30 if T > 4 else 0, ha="right" if T > 4 else "center", fontsize=8)
        ax.tick_params(axis="x", length=3)
        ax.set_xlim(-0.3, max(T - 0.7, 0.3))
        if key == "cosine":  # values crowd just below 1: zoom in, keeping 1 in view
            vals = np.asarray([v for vs in stability[key]["per_layer"].values() for v in vs]
                              + list(stability[key]["overall"]), dtype=float)
            vals = vals[np.isfinite(vals)]
            low = float(vals.min()) if vals.size else 0.0
            lo = max(-1.0, low - 0.1 * (1.0 - low) - 0.002)
            hi = 1.0 + 0.04 * (1.0 - lo)
        ax.set_ylim(bottom=lo, top=hi)
        ax.set_title(what, fontsize=9.5)
        ax.set_xlabel("rounds")
        ax.grid(True, alpha=0.3)
    fig.legend(handles=handles, fontsize=8, loc="outside right center", title="layer", title_fontsize=8)
    fig.suptitle(title or "Weight stability across rounds", fontsize=11)
    return fig


# ---------------------------------------------------------------------------- DAG


def plot_dag(nodes: Sequence[Mapping], edges: Sequence[Sequence], title: str | None = None) -> Figure:
    """The experiment DAG as a figure: layered top-down layout (root at the top).

    ``nodes``: dicts ``{"id", "label" (kind), "accuracy", "sparsity"}`` (accuracy
    and sparsity are fractions, may be None); ``edges``: ``(parent_id, child_id,
    role)``. Primary edges are solid arrows; other roles (``weights``, ``mask``...)
    dashed, curved, labelled with the role. Same layout as :func:`dag_svg`.
    """
    layout, curves, (x_lo, x_hi, y_lo, y_hi) = dag_geometry(nodes, edges)
    span_x, span_y = x_hi - x_lo, y_hi - y_lo
    want_w = 1.8 * (span_x + 0.3) + 0.4
    width = min(60.0, max(6.0, want_w))
    height = min(60.0, max(3.0, 0.95 * (span_y + 0.6) + 1.2))
    fontsize = 7.5 * min(1.0, width / want_w)
    fig = _figure(width, height)
    ax = fig.add_subplot()
    edge_color, other_color = "#455a64", "#8e24aa"
    for p, c, role, pts, (lx, ly) in curves:
        primary = role == "primary"
        path = Path(pts, [Path.MOVETO, Path.CURVE4, Path.CURVE4, Path.CURVE4])
        ax.add_patch(FancyArrowPatch(
            path=path, arrowstyle="-|>", mutation_scale=9,
            color=edge_color if primary else other_color,
            linestyle="-" if primary else (0, (4, 3)), linewidth=1.2 if primary else 0.9,
            alpha=1.0 if primary else 0.6, zorder=1,
        ))
        if not primary:
            ax.text(lx, ly, role, fontsize=fontsize - 1, color=other_color, ha="center", va="center",
                    bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.85), zorder=2)
    for node in nodes:
        x, y = layout[node["id"]]
        ax.add_patch(FancyBboxPatch((x - _BOX_W / 2, y - _BOX_H / 2), _BOX_W, _BOX_H,
                                    boxstyle="round,pad=0,rounding_size=0.06", fc=KIND_COLORS.get(kind_key(node), OTHER_KIND_COLOR),
                                    ec="#37474f", lw=0.8, zorder=3))
        lines = node_lines(node)
        ax.text(x, y, "\n".join(lines), ha="center", va="center", fontsize=fontsize, zorder=4,
                linespacing=1.25)
    ax.set_xlim(x_lo - 0.15, x_hi + 0.15)
    ax.set_ylim(y_hi + 0.15, y_lo - 0.15)  # depth grows downwards
    ax.axis("off")
    kinds_present = []
    for node in nodes:
        key = kind_key(node)
        if key and key not in kinds_present:
            kinds_present.append(key)
    handles = [Patch(facecolor=KIND_COLORS[k], edgecolor="#37474f", label=k) for k in kinds_present]
    handles.append(Line2D([], [], color=edge_color, label="primary parent"))
    if any(cv[2] != "primary" for cv in curves):
        handles.append(Line2D([], [], color=other_color, linestyle=(0, (4, 3)),
                              label="other parent (labelled with its role)"))
    fig.legend(handles=handles, fontsize=7.5, loc="outside lower center", ncols=min(len(handles), 7),
               frameon=False)
    ax.set_title(title or f"Experiment DAG ({len(nodes)} states)")
    return fig


# ------------------------------------------------------------ inside the network (issue 21)


def plot_class_impact(impacts: Mapping, classes: Sequence, title: str | None = None) -> Figure:
    """Per-class impact of pruning (Hooker et al. 2019), grouped bars: one group per class, one bar
    per pruned population (e.g. round), in percentage points.

    ``impacts``: ``{label: inside.class_impact(...)}`` (``impact``, ``significant``, ``n_*``).
    Below 0: the class lost more recall than the network lost accuracy. A bar that is
    significant (Welch's t-test, p < 0.05) is solid and starred; others are pale.
    """
    labels = list(impacts)
    classes = [str(c) for c in classes]
    fig = _figure(min(16.0, max(7.0, 2.5 + 0.55 * len(classes) * max(1, len(labels)) ** 0.5)), 4.6)
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
        ax.bar(offsets, values, width * 0.92, color=[color if s else (*color[:3], 0.35) for s in significant]
               if tested else color, label=f"{label} (n={result['n_pruned']} vs {result['n_dense']})")
        for xo, v, s in zip(offsets, values, significant):
            if s:
                ax.annotate("*", (xo, v), xytext=(0, 1 if v >= 0 else -9), textcoords="offset points",
                            ha="center", fontsize=10)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(classes)
    ax.set_xlabel("class")
    ax.set_ylabel("Δ class recall − Δ accuracy (points)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="best", title="pruned vs dense (networks)", title_fontsize=8)
    note = ("solid, *: significant (Welch's t-test, p < 0.05); pale: not" if tested
            else "one network per population: no significance test (run several seeds)")
    ax.set_title((title or "Per-class impact of pruning") + f"\n{note}", fontsize=10)
    return fig


def plot_pie_fraction(points: Mapping, title: str | None = None) -> Figure:
    """Fraction of test examples that are PIEs vs remaining weights, one line per series.

    ``points``: ``{series: [(remaining fraction, PIE fraction, n pruned networks), ...]}``.
    Same x axis as :func:`plot_accuracy_vs_remaining` (remaining %, log, 100% on the left).
    """
    fig, ax, many = _series_figure(len(points))
    xs_all = []
    for i, (label, pts) in enumerate(points.items()):
        pts = sorted(pts, key=lambda p: -p[0])
        x = np.array([100.0 * p[0] for p in pts])
        y = np.array([100.0 * p[1] for p in pts])
        ns = sorted({int(p[2]) for p in pts})
        ax.plot(x, y, markersize=5, linewidth=1.4, label=f"{label} (n={'–'.join(map(str, ns[::max(1, len(ns) - 1)]))})",
                **_series_style(i, len(points)))
        xs_all.extend(x[x > 0].tolist())
    ax.set_xscale("log")
    if xs_all:
        _remaining_axis(ax, xs_all)
        _series_legend(fig, ax, many)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("remaining weights (%, log scale)")
    ax.set_ylabel("PIEs (% of test examples)")
    ax.set_title(title or "Pruning Identified Exemplars: modal label of the pruned networks ≠ of the dense ones")
    ax.grid(True, which="major", alpha=0.3)
    return fig


def plot_pie_gallery(images, entries: Sequence[Mapping], title: str | None = None, columns: int = 8) -> Figure:
    """The first PIEs as images: ``images`` (k, C, H, W) in [0, 1]; ``entries`` their index, true label and
    the dense and pruned modal labels (with agreement)."""
    imgs = _np(images).astype(np.float64)
    k = len(entries)
    if k == 0:
        raise SpecError("plot_pie_gallery needs at least one PIE")
    columns = min(columns, k)
    rows = math.ceil(k / columns)
    fig = _figure(1.45 * columns + 0.4, 1.75 * rows + 0.7)
    for i, entry in enumerate(entries):
        ax = fig.add_subplot(rows, columns, i + 1)
        img = imgs[i]
        if img.shape[0] == 1:
            ax.imshow(img[0], cmap="gray_r" if img.mean() < 0.5 else "gray", vmin=0.0, vmax=1.0,
                      interpolation="nearest")
        else:
            ax.imshow(np.clip(np.transpose(img[:3], (1, 2, 0)), 0.0, 1.0), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"#{entry['index']} true {entry['label']}\ndense {entry['dense_label']} "
                     f"({100 * entry['dense_agreement']:.0f}%)\npruned {entry['pruned_label']} "
                     f"({100 * entry['pruned_agreement']:.0f}%)", fontsize=7, pad=2)
    fig.suptitle(title or "Pruning Identified Exemplars", fontsize=10)
    return fig


def plot_value_heatmap(matrix, row_labels: Sequence[str], column_labels: Sequence[str], *, what: str,
                       title: str | None = None, vmin: float = 0.0, vmax: float | None = None,
                       cmap: str = "viridis", xlabel: str = "", ylabel: str = "") -> Figure:
    """Annotated heatmap of a rows × columns matrix of one quantity (``what``: the colorbar label);
    NaN cells are grey. ``vmax`` None: the largest value (at least 1e-9 above vmin)."""
    mat = _np(matrix).astype(np.float64)
    if mat.shape != (len(row_labels), len(column_labels)):
        raise SpecError(f"plot_value_heatmap: a {mat.shape} matrix for {len(row_labels)} × {len(column_labels)} labels")
    finite = mat[np.isfinite(mat)]
    top = vmax if vmax is not None else max(float(finite.max()) if finite.size else vmin + 1.0, vmin + 1e-9)
    rows, cols = mat.shape
    fig = _figure(min(16.0, max(5.0, 2.6 + 0.75 * cols + 0.06 * max(len(str(r)) for r in row_labels))),
                  min(14.0, max(3.2, 1.6 + 0.45 * rows)))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(mat), cmap=matplotlib.colormaps[cmap].with_extremes(bad=PRUNED_COLOR),
                   vmin=vmin, vmax=top, interpolation="nearest", aspect="auto")
    fig.colorbar(im, ax=ax, label=what, shrink=0.85)
    ax.set_xticks(np.arange(cols))
    ax.set_yticks(np.arange(rows))
    ax.set_xticklabels([str(c) for c in column_labels], rotation=30 if cols > 5 else 0,
                       ha="right" if cols > 5 else "center")
    ax.set_yticklabels([str(r) for r in row_labels])
    if rows * cols <= 400:
        for i in range(rows):
            for j in range(cols):
                v = mat[i, j]
                light = np.isfinite(v) and (v - vmin) / (top - vmin) > 0.55
                ax.text(j, i, "–" if not np.isfinite(v) else f"{v:.3f}" if abs(v) < 1 else f"{v:.2f}",
                        ha="center", va="center", fontsize=8 if cols <= 10 else 6,
                        color="black" if light else "white")
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
    fig = _figure(12.0, 4.3)
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
                ax.plot(epochs, scale * np.asarray(values, dtype=float), linestyle=style, color=color,
                        marker="." if len(epochs) <= 30 else None,
                        label=label if split == "test" else None)
    for ax, kind in zip(axes, ("accuracy (%)", "loss (cross-entropy)")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(kind)
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = axes[0].get_legend_handles_labels()
    handles += [Line2D([], [], color="black", linestyle="-", label="test"),
                Line2D([], [], color="black", linestyle="--", label="train (batches as trained on)")]
    fig.legend(handles=handles, fontsize=8, loc="outside right center")
    fig.suptitle(title or "Learning curves", fontsize=11)
    return fig


# ------------------------------------------------------------- linear mode connectivity

STABLE_BELOW = 0.02  # Frankle et al. 2020: a network is stable to SGD noise when its instability is < 2 %


def plot_interpolation(alphas: Sequence[float], curves: Mapping[str, Mapping[str, Sequence]],
                       title: str | None = None, bn_reset: bool = False) -> Figure:
    """Error (left, %) and loss (right) along the linear path from a (α = 0) to b (α = 1).

    ``curves``: ``{split: {"error": [...], "loss": [...]}}`` per α (split ``test``, and ``train``
    when measured). The dotted line joins the endpoints' errors: the instability is the largest
    gap above the endpoints' mean.
    """
    fig = _figure(10.0, 4.2)
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

    ``levels``: ``{level label: [{"iteration", "mean", "std", "n"}]}`` with instabilities as
    fractions. The dashed line is the 2 % threshold; a filled marker is a stable point
    (mean < 2 %), a hollow one an unstable point (the figure of Frankle et al. 2020).
    """
    fig, ax, _ = _series_figure(len(levels))
    top = 100.0 * STABLE_BELOW
    spawn_points = set()
    for i, (label, points) in enumerate(levels.items()):
        points = sorted(points, key=lambda p: p["iteration"])
        spawn_points.update(p["iteration"] for p in points)
        ns = sorted({int(p["n"]) for p in points})
        label = f"{label} (n={ns[0]})" if len(ns) == 1 else f"{label} (n={ns[0]}–{ns[-1]})"
        x = np.asarray([p["iteration"] for p in points], dtype=float)
        y = 100.0 * np.asarray([p["mean"] for p in points], dtype=float)
        e = 100.0 * np.asarray([p["std"] for p in points], dtype=float)
        style = _series_style(i, len(levels))
        color = style["color"]
        ax.errorbar(x, y, yerr=e, capsize=3, linewidth=1.4, color=color, linestyle=style.get("linestyle", "-"),
                    label=label)
        stable = y < top
        ax.plot(x[stable], y[stable], linestyle="none", marker="o", markersize=7, color=color)
        ax.plot(x[~stable], y[~stable], linestyle="none", marker="o", markersize=7, markerfacecolor="white",
                color=color)
        if np.isfinite(y).any():
            top = max(top, float(np.nanmax(y + e)))
    ax.axhline(100.0 * STABLE_BELOW, linestyle="--", color="#616161", linewidth=1)
    ax.annotate("stable below 2 %", (0.01, 100.0 * STABLE_BELOW), xycoords=("axes fraction", "data"),
                xytext=(0, 3), textcoords="offset points", fontsize=8, color="#616161")
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
        ax.legend(fontsize=8, loc="best", title="sparsity level (n = seeds × pairs)", title_fontsize=8)
    return fig
