"""The lineage DAG as a matplotlib figure (the same layout as `lineage`'s SVG)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch
from matplotlib.path import Path

from ..lineage import BOX_H, BOX_W, KIND_COLORS, OTHER_KIND_COLOR, dag_geometry, kind_key, node_lines
from .style import new_figure


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
    fig = new_figure(width, height)
    ax = fig.add_subplot()
    edge_color, other_color = "#455a64", "#8e24aa"
    for _p, _c, role, pts, (lx, ly) in curves:
        primary = role == "primary"
        path = Path(pts, [Path.MOVETO, Path.CURVE4, Path.CURVE4, Path.CURVE4])
        ax.add_patch(
            FancyArrowPatch(
                path=path,
                arrowstyle="-|>",
                mutation_scale=9,
                color=edge_color if primary else other_color,
                linestyle="-" if primary else (0, (4, 3)),
                linewidth=1.2 if primary else 0.9,
                alpha=1.0 if primary else 0.6,
                zorder=1,
            )
        )
        if not primary:
            ax.text(
                lx,
                ly,
                role,
                fontsize=fontsize - 1,
                color=other_color,
                ha="center",
                va="center",
                bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.85),
                zorder=2,
            )
    for node in nodes:
        x, y = layout[node["id"]]
        ax.add_patch(
            FancyBboxPatch(
                (x - BOX_W / 2, y - BOX_H / 2),
                BOX_W,
                BOX_H,
                boxstyle="round,pad=0,rounding_size=0.06",
                fc=KIND_COLORS.get(kind_key(node), OTHER_KIND_COLOR),
                ec="#37474f",
                lw=0.8,
                zorder=3,
            )
        )
        lines = node_lines(node)
        ax.text(x, y, "\n".join(lines), ha="center", va="center", fontsize=fontsize, zorder=4, linespacing=1.25)
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
        handles.append(
            Line2D([], [], color=other_color, linestyle=(0, (4, 3)), label="other parent (labelled with its role)")
        )
    fig.legend(handles=handles, fontsize=7.5, loc="outside lower center", ncols=min(len(handles), 7), frameon=False)
    ax.set_title(title or f"Experiment DAG ({len(nodes)} states)")
    return fig
