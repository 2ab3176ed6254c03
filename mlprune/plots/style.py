"""What every figure shares: a fresh Agg figure (no pyplot), the pruned-weight grey, the diverging
weight colormap, percent axes of remaining weights (log scale), series styles and legends, 95% CI bands and bars.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

PRUNED_COLOR = "#9e9e9e"


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained", dpi=100)
    FigureCanvasAgg(fig)
    return fig


def fitted(text: str, width_inches: float, fontsize: float = 12.0) -> str:
    """`text` wrapped onto lines that fit `width_inches` at `fontsize` (points): a title is never cut."""
    import textwrap

    per_line = max(12, int(width_inches * 72 / (0.56 * fontsize)))
    return "\n".join(textwrap.wrap(text, per_line)) or text


def fit_titles(fig: Figure) -> Figure:
    """Wrap every axes title and the figure's suptitle to the width they have (nothing drawn cut off)."""
    width, _ = fig.get_size_inches()
    for ax in fig.axes:
        room = max(1.0, ax.get_position().width * width)
        for title in (ax.title, ax._left_title, ax._right_title):
            text = title.get_text()
            if text:
                title.set_text("\n".join(fitted(line, room, title.get_fontsize()) for line in text.split("\n")))
    suptitle = getattr(fig, "_suptitle", None)
    if suptitle is not None and suptitle.get_text():
        suptitle.set_text(
            "\n".join(fitted(line, width * 0.96, suptitle.get_fontsize()) for line in suptitle.get_text().split("\n"))
        )
    return fig


def as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def weight_cmap():
    return matplotlib.colormaps["RdBu_r"].with_extremes(bad=PRUNED_COLOR)


def symmetric_limit(values: np.ndarray) -> float:
    finite = np.abs(values[np.isfinite(values)]) if values.size else values
    v = float(finite.max()) if finite.size else 0.0
    return v if v > 0 else 1.0


def short_name(name: str) -> str:
    return name[: -len(".weight")] if name.endswith(".weight") else name


NICE_PERCENTS = [100, 70, 50, 30, 20, 10, 7, 5, 3, 2, 1, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01]


def percent_label(v: float, _pos=None) -> str:
    return f"{v:g}"


FINE_PERCENTS = [100, 90, 80, 70, 60, 50, 40, 30, 20, 15, 10, 7, 5, 3, 2, 1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01]


MARKERS = "osD^v<>ph*"


def series_style(i: int, n: int) -> dict:
    """Distinct color / marker / line style for series i of n (tab10, then tab20 and dashes)."""
    if n <= 10:
        return {"color": matplotlib.colormaps["tab10"](i % 10), "marker": "o"}
    return {
        "color": matplotlib.colormaps["tab20"](i % 20),
        "marker": MARKERS[i % len(MARKERS)],
        "linestyle": ("-", "--", ":")[(i // 20) % 3],
    }


def series_figure(n: int) -> tuple:
    """Figure and axes for n series: the legend goes to the right of the axes when there are many."""
    many = n > 6
    fig = new_figure(7.5 + (4.0 if many else 0.0), max(4.8, 1.2 + 0.19 * n) if many else 4.8)
    return fig, fig.add_subplot(), many


def series_legend(fig, ax, many: bool) -> None:
    if many:
        fig.legend(
            *ax.get_legend_handles_labels(),
            fontsize=7.5,
            loc="outside right upper",
            title="recipe (seeds)",
            title_fontsize=8,
        )
    else:
        ax.legend(fontsize=8, loc="best", title="recipe (seeds)", title_fontsize=8)


def remaining_axis(ax, xs: list) -> None:
    """Log x axis of remaining %, reversed (100% on the left), with readable ticks."""
    hi, lo = max(xs), min(xs)
    ax.set_xlim(hi * 1.25, lo / 1.25)
    ticks = [t for t in NICE_PERCENTS if lo / 1.25 <= t <= hi * 1.25]
    if len(ticks) < 4:
        ticks = [t for t in FINE_PERCENTS if lo / 1.25 <= t <= hi * 1.25]
    if len(ticks) < 2:
        ticks = sorted({hi, lo}, reverse=True)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(percent_label))
    ax.xaxis.set_minor_locator(NullLocator())


CI_BAND = "ci-band"  # the gid of every confidence band (a PolyCollection) the figures draw


def n_text(points: Sequence[Mapping], key: str = "n") -> str:
    """The legend's seeds: "n=5", "n=2–5", or "n=1, 1 seed: no interval"."""
    ns = sorted({int(p.get(key, p["n"])) for p in points})
    if ns == [1]:
        return "n=1, 1 seed: no interval"
    return f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}–{ns[-1]}"


def ci_errors(
    points: Sequence[Mapping], mean: str = "mean", low: str = "ci_low", high: str = "ci_high", scale: float = 100.0
) -> np.ndarray | None:
    """Asymmetric error bars (2 x n) from each point's confidence interval; 0 where a point has none (one
    seed: no bar drawn, never a fake one); None when no point has an interval."""
    if all(p.get(low) is None for p in points):
        return None
    return np.array(
        [
            [scale * (p[mean] - p[low]) if p.get(low) is not None else 0.0 for p in points],
            [scale * (p[high] - p[mean]) if p.get(high) is not None else 0.0 for p in points],
        ]
    )


def ci_band(ax, x, points: Sequence[Mapping], color, scale: float = 100.0) -> None:
    """The 95% interval of consecutive points as a shaded band (gid `CI_BAND`); points without one (a single
    seed) break the band: no zero-width band is drawn."""
    run: list[int] = []
    for index in [*range(len(points)), None]:
        if index is not None and points[index].get("ci_low") is not None and x[index] > 0:
            run.append(index)
            continue
        if len(run) >= 1:
            xs = np.array([x[i] for i in run])
            band = ax.fill_between(
                xs,
                [scale * points[i]["ci_low"] for i in run],
                [scale * points[i]["ci_high"] for i in run],
                color=color,
                alpha=0.18,
                linewidth=0,
            )
            band.set_gid(CI_BAND)
        run = []
