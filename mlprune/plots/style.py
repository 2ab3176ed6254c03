"""What every figure shares: a fresh Agg figure (no pyplot), the pruned-weight grey, the diverging
weight colormap, percent axes of remaining weights (log scale), series styles and legends.
"""

from __future__ import annotations

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
    return {"color": matplotlib.colormaps["tab20"](i % 20), "marker": MARKERS[i % len(MARKERS)],
            "linestyle": ("-", "--", ":")[(i // 20) % 3]}


def series_figure(n: int) -> tuple:
    """Figure and axes for n series: the legend goes to the right of the axes when there are many."""
    many = n > 6
    fig = new_figure(7.5 + (4.0 if many else 0.0), max(4.8, 1.2 + 0.19 * n) if many else 4.8)
    return fig, fig.add_subplot(), many


def series_legend(fig, ax, many: bool) -> None:
    if many:
        fig.legend(*ax.get_legend_handles_labels(), fontsize=7.5, loc="outside right upper",
                   title="recipe (seeds)", title_fontsize=8)
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
