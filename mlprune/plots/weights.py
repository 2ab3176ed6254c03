"""Weights and masks of one parameter, and how weights move across rounds."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ..errors import SpecError
from .style import PRUNED_COLOR, as_numpy, new_figure, short_name, symmetric_limit, weight_cmap


def plot_conv_filters(
    weight, mask=None, title: str | None = None, *, channel: str = "first", max_filters: int = 64
) -> Figure:
    """Grid of the filters of a conv weight ``(out, in, kh, kw)``, pruned weights grey.

    ``channel="first"`` shows input channel 0 of each filter; ``"mean"`` the mean
    over input channels of the effective weights (a pixel is grey only if it is
    pruned in every input channel). At most ``max_filters`` filters are shown (the
    title says how many there are). A shared colorbar gives the weight value,
    symmetric around 0 (white).
    """
    w = as_numpy(weight).astype(np.float64)
    if w.ndim != 4:
        raise SpecError(f"plot_conv_filters needs a 4-d conv weight (out, in, kh, kw); got shape {w.shape}")
    m = np.ones(w.shape, dtype=bool) if mask is None else as_numpy(mask).astype(bool)
    if m.shape != w.shape:
        raise SpecError(f"mask shape {m.shape} does not match weight shape {w.shape}")
    if channel not in ("first", "mean"):
        raise SpecError(f"unknown channel {channel!r}; allowed: first, mean")
    out_ch, in_ch, kh, kw = w.shape
    if channel == "first":  # the first input channel that is not entirely pruned: something to see
        alive = m.transpose(1, 0, 2, 3).reshape(in_ch, -1).any(axis=1)
        first = int(np.argmax(alive)) if alive.any() else 0
        imgs = np.ma.masked_array(w[:, first], mask=~m[:, first])
        how = (
            f"input channel {first}" + (f" (0-{first - 1} entirely pruned)" if first else "")
            if in_ch > 1
            else "single input channel"
        )
    else:
        eff = (w * m).mean(axis=1)
        imgs = np.ma.masked_array(eff, mask=~m.any(axis=1))
        how = f"mean over {in_ch} input channels"
    shown = min(out_ch, max_filters)
    ncols = max(1, math.ceil(math.sqrt(shown)))
    nrows = math.ceil(shown / ncols)
    cell = 1.15 if max(kh, kw) <= 7 else 1.6
    fig = new_figure(max(6.5, ncols * cell + 1.6), nrows * cell + 1.3)
    vmax = symmetric_limit(np.ma.filled(imgs, np.nan))
    cmap = weight_cmap()
    axes = []
    im = None
    filter_pruned = ~m.reshape(out_ch, -1).any(axis=1)
    for i in range(shown):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        im = ax.imshow(imgs[i], cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(
            f"{i}" + (" (pruned)" if filter_pruned[i] else ""),
            fontsize=7,
            pad=2,
            color="#b71c1c" if filter_pruned[i] else "black",
        )
        axes.append(ax)
    fig.colorbar(im, ax=axes, label="weight value", shrink=0.8)
    n_pruned = int(filter_pruned.sum())
    head = title or "Conv filters"
    more = f", first {shown} of {out_ch}" if shown < out_ch else ""
    fig.suptitle(
        f"{head}\n{out_ch} filters {kh}×{kw}, {how}{more}; "
        f"{n_pruned} {'filter' if n_pruned == 1 else 'filters'} entirely pruned",
        fontsize=10,
        wrap=True,
    )
    if mask is not None:
        fig.legend(
            handles=[Patch(facecolor=PRUNED_COLOR, label="pruned weight")],
            loc="outside lower left",
            fontsize=8,
            frameon=False,
        )
    return fig


def plot_fc_weights(weight, mask=None, title: str | None = None) -> Figure:
    """Heatmap of a linear weight ``(out, in)`` (higher dims are flattened), pruned entries grey."""
    w = as_numpy(weight).astype(np.float64)
    if w.ndim < 2:
        raise SpecError(f"plot_fc_weights needs a weight with >= 2 dims; got shape {w.shape}")
    m = np.ones(w.shape, dtype=bool) if mask is None else as_numpy(mask).astype(bool)
    if m.shape != w.shape:
        raise SpecError(f"mask shape {m.shape} does not match weight shape {w.shape}")
    flat = w.ndim > 2
    w2 = w.reshape(w.shape[0], -1)
    m2 = m.reshape(m.shape[0], -1)
    data = np.ma.masked_array(w2, mask=~m2)
    vmax = symmetric_limit(np.ma.filled(data, np.nan))
    out_n, in_n = w2.shape
    width = min(14.0, max(6.0, 4.0 + in_n / 60))
    height = min(10.0, max(3.5, 2.0 + out_n / 40))
    fig = new_figure(width, height)
    ax = fig.add_subplot()
    im = ax.imshow(data, cmap=weight_cmap(), vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="weight value")
    ax.set_xlabel("input feature" + (" (flattened)" if flat else ""))
    ax.set_ylabel("output neuron")
    kept = int(m2.sum())
    ax.set_title(f"{title or 'Weights'}: {out_n}×{in_n}, {kept}/{m2.size} kept ({100 * kept / max(1, m2.size):.1f}%)")
    if mask is not None:
        fig.legend(
            handles=[Patch(facecolor=PRUNED_COLOR, label="pruned")],
            loc="outside lower right",
            fontsize=8,
            frameon=False,
        )
    return fig


def plot_biases(bias, title: str | None = None) -> Figure:
    """Bar chart of a bias vector (one bar per output unit)."""
    b = as_numpy(bias).astype(np.float64).reshape(-1)
    fig = new_figure(min(14.0, max(5.0, 2.0 + b.size / 12)), 3.5)
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
    items = [(name, as_numpy(b).astype(np.float64).reshape(-1)) for name, b in biases.items()]
    if not items:
        raise SpecError("plot_bias_panels needs at least one bias vector")
    widest = max(b.size for _, b in items)
    fig = new_figure(min(14.0, max(6.0, 2.5 + widest / 12)), 0.4 + 1.75 * len(items))
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


def plot_weight_evolution(trajectories, rounds_labels: Sequence | None = None, title: str | None = None) -> Figure:
    """Value of each sampled weight across rounds; a line ends where its weight was pruned.

    ``trajectories`` is ``(n_weights, n_rounds)`` with NaN where a weight is pruned
    (``analysis.weight_trajectories``). Weights kept to the last round are blue,
    weights pruned on the way orange with an × on their last kept value.
    """
    tr = np.atleast_2d(as_numpy(trajectories).astype(np.float64))
    n, T = tr.shape
    labels = [str(r) for r in (rounds_labels if rounds_labels is not None else range(T))]
    if len(labels) != T:
        raise SpecError(f"{len(labels)} rounds_labels for {T} rounds")
    fig = new_figure(min(14.0, max(6.0, 3.0 + 0.6 * T)), 4.5)
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
        ax.plot(x, row, color=color, alpha=0.75, linewidth=1.2, marker="." if T <= 30 else None, markersize=4)
        if not survived:
            ax.plot([x[last]], [row[last]], marker="x", color=color, markersize=7, mew=1.8)
    ax.axhline(0.0, color="black", linewidth=0.6, alpha=0.6)
    ax.set_xticks(x)
    ax.set_xticklabels(
        labels,
        rotation=30 if max((len(s) for s in labels), default=0) > 4 else 0,
        ha="right" if max((len(s) for s in labels), default=0) > 4 else "center",
    )
    ax.set_xlim(-0.3, T - 0.7)
    ax.set_xlabel("round")
    ax.set_ylabel("weight value")
    ax.set_title(title or f"Evolution of {n} sampled weights")
    ax.legend(
        handles=[
            Line2D([], [], color=kept_color, label=f"kept to the last round ({n_kept})"),
            Line2D(
                [],
                [],
                color=pruned_color,
                marker="x",
                mew=1.8,
                label=f"pruned on the way ({n_pruned});\n× = last round kept",
            ),
        ],
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0.0,
    )
    ax.grid(True, alpha=0.3)
    return fig


def plot_stability(stability: Mapping, rounds_labels: Sequence | None = None, title: str | None = None) -> Figure:
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
    fig = new_figure(min(16.0, max(10.0, 4.0 + 0.9 * T * 3)), 4.4)
    axes = fig.subplots(1, 3)
    panels = [
        ("jaccard", "mask overlap (Jaccard)", (0.0, 1.05)),
        ("cosine", "cosine similarity\nof weights kept in both", (None, None)),
        ("relative_l2", "relative change ‖w′−w‖ / ‖w‖\nof weights kept in both", (0.0, None)),
    ]
    x = np.arange(T)
    cmap = matplotlib.colormaps["tab10"]
    handles = []
    for ax, (key, what, (lo, hi)) in zip(axes, panels):
        for i, (name, values) in enumerate(stability[key]["per_layer"].items()):
            (line,) = ax.plot(
                x,
                np.asarray(values, dtype=float),
                marker=".",
                linewidth=1.0,
                alpha=0.8,
                color=cmap(i % 10),
                label=short_name(name),
            )
            if key == "jaccard":
                handles.append(line)
        (line,) = ax.plot(
            x,
            np.asarray(stability[key]["overall"], dtype=float),
            marker="o",
            linewidth=2.4,
            color="black",
            label="overall",
        )
        if key == "jaccard":
            handles.append(line)
        ax.set_xticks(x)
        ax.set_xticklabels(xt, rotation=30 if T > 4 else 0, ha="right" if T > 4 else "center", fontsize=8)
        ax.tick_params(axis="x", length=3)
        ax.set_xlim(-0.3, max(T - 0.7, 0.3))
        if key == "cosine":  # values crowd just below 1: zoom in, keeping 1 in view
            vals = np.asarray(
                [v for vs in stability[key]["per_layer"].values() for v in vs] + list(stability[key]["overall"]),
                dtype=float,
            )
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
