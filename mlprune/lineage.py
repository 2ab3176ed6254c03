"""The lineage of an experiment: its state runs as a DAG, drawn as SVG and as an HTML page.

Nodes are state runs (runs tagged ``mlprune.key``), labelled with their kind
(``mlprune.kind``), ``test_accuracy`` and ``sparsity``. Edges go from each
parent to the child: ``mlflow.parentRunId`` is the ``primary`` edge, each
``mlprune.parent.<role>`` tag an edge with that role (``weights`` for a
rewind's weights source, ``mask`` for a transplanted mask). A parent that is not
among the runs (deleted, or in another experiment) is still drawn, as a
``missing`` node, so every parent of every state shows.

Tags are anyone's to edit in the MLflow UI, so the graph is built for what it is, not what it should
be: a ``mlflow.parentRunId`` that closes a cycle (a state its own parent, or an ancestor's child)
keeps its edge, with the role ``cycle`` instead of ``primary``, so nothing follows it and every
state is still drawn; `cycle_warnings` names the runs of each such edge.

The functions here work on MLflow ``Run`` objects however they were obtained
(``store.Store`` on the client side, the tracking server's own store in
``mlflow_plugin``): this module imports neither mlflow, nor torch, nor
matplotlib, so the tracking server serves lineage pages without loading them.
The DAG layout is here too (the report's matplotlib drawing uses it).

Links go to the MLflow UI: ``<ui base>#/experiments/<experiment id>/runs/<run id>``.

Why one file: the tracking server imports it to serve lineage pages, and everything it needs (graph,
layout, SVG, HTML) is here with nothing heavier than the standard library.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from html import escape
from xml.sax.saxutils import quoteattr

from . import lineage_lanes as lanes
from .errors import SpecError
from .names import (
    M_SPARSITY,
    M_TEST_ACCURACY,
    PARAM_BRANCH,
    PARAM_DATASET,
    PARAM_MODEL,
    PARAM_RECIPE,
    PARAM_ROUND,
    PARAM_SEED,
    TAG_KEY,
    TAG_KIND,
    TAG_PARENT_PREFIX,
    TAG_PARENT_RUN,
    TAG_RUN_NAME,
)

MISSING = "missing"
CYCLE = "cycle"  # the role of a primary edge that closes a cycle: drawn, never followed
KIND_COLORS = {
    "init": "#cfd8dc",
    "train": "#c8e6c9",
    "prune": "#ffe0b2",
    "reinit": "#e1bee7",
    "analysis": "#b3e5fc",
}
OTHER_KIND_COLOR = "#eeeeee"

__all__ = [
    "lineage_graph",
    "cycle_warnings",
    "primary_parents",
    "ancestors",
    "run_link",
    "lineage_svg",
    "lineage_html",
    "is_state",
    "dag_layout",
    "dag_svg",
]


def is_state(run) -> bool:
    """Whether an MLflow run is an mlprune state (it carries a content key)."""
    return bool(run.data.tags.get(TAG_KEY))


def _finite(value):
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _parents(run) -> list[tuple[str, str]]:
    """[(parent run id, role)] of a state run: the primary parent first, then roles by name."""
    tags = run.data.tags
    out = []
    if tags.get(TAG_PARENT_RUN):
        out.append((tags[TAG_PARENT_RUN], "primary"))
    for key in sorted(tags):
        if key.startswith(TAG_PARENT_PREFIX) and tags[key]:
            out.append((tags[key], key[len(TAG_PARENT_PREFIX) :]))
    return out


_STUDY_PARAMS = {
    "seed": PARAM_SEED,
    "round": PARAM_ROUND,
    "branch": PARAM_BRANCH,
    "recipe": PARAM_RECIPE,
    "model": PARAM_MODEL,
    "dataset": PARAM_DATASET,
}


def _study(run) -> dict:
    """A state's seed, round, branch, recipe, model and dataset (its params; None where not recorded)."""
    params = getattr(run.data, "params", None) or {}
    out = {key: params.get(name) for key, name in _STUDY_PARAMS.items()}
    if out["seed"] is None and "init.seed" in params:  # a root recorded before the study params
        out["seed"] = params["init.seed"]
    if out["round"] is not None:
        try:
            out["round"] = int(out["round"])
        except ValueError:
            out["round"] = None
    return out


def lineage_graph(runs: Iterable) -> tuple[list[dict], list[tuple[str, str, str]]]:
    """``(nodes, edges)`` of the state runs among ``runs`` (other runs are ignored).

    A node: ``{"id": run id, "label": kind, "accuracy": test_accuracy or None,
    "sparsity": sparsity or None, "name": run name, "experiment_id": ...,
    "status": ..., "missing": False}``, in start-time order (parents first).
    An edge: ``(parent run id, child run id, role)``, role ``"primary"`` for
    ``mlflow.parentRunId``, else the ``mlprune.parent.<role>`` suffix. Parents
    that are not among the runs become nodes with ``label "missing"`` and
    ``"missing": True``.
    """
    states = [r for r in runs if is_state(r)]
    states.sort(key=lambda r: (r.info.start_time or 0, r.info.run_id))
    nodes: list[dict] = []
    known: dict[str, dict] = {}
    for run in states:
        if run.info.run_id in known:
            continue
        node = {
            "id": run.info.run_id,
            "label": run.data.tags.get(TAG_KIND, "?"),
            "accuracy": _finite(run.data.metrics.get(M_TEST_ACCURACY)),
            "sparsity": _finite(run.data.metrics.get(M_SPARSITY)),
            "name": run.data.tags.get(TAG_RUN_NAME) or getattr(run.info, "run_name", "") or "",
            "experiment_id": run.info.experiment_id,
            "status": run.info.status,
            "missing": False,
            **_study(run),
        }
        known[node["id"]] = node
        nodes.append(node)
    edges: list[tuple[str, str, str]] = []
    missing: list[dict] = []
    for run in states:
        for parent, role in _parents(run):
            if parent not in known:
                node = {
                    "id": parent,
                    "label": MISSING,
                    "accuracy": None,
                    "sparsity": None,
                    "name": "(not in this experiment)",
                    "experiment_id": run.info.experiment_id,
                    "status": None,
                    "missing": True,
                }
                known[parent] = node
                missing.append(node)
            edge = (parent, run.info.run_id, role)
            if edge not in edges:
                edges.append(edge)
    return missing + nodes, _cut_cycles([n["id"] for n in missing + nodes], edges)


def _cut_cycles(order: list[str], edges: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """`edges` with each primary edge that closes a cycle given the role CYCLE: in each cycle, the edge
    into its first node in `order` (the oldest state: the one that was there first)."""
    parent: dict[str, str] = {}
    for p, c, role in edges:
        if role == "primary":
            parent.setdefault(c, p)
    rank = {node: k for k, node in enumerate(order)}
    cut: set[str] = set()
    done: set[str] = set()
    for start in order:
        path, on_path, cur = [], set(), start
        while cur is not None and cur not in done and cur not in on_path:
            on_path.add(cur)
            path.append(cur)
            cur = parent.get(cur) if cur not in cut else None
        if cur is not None and cur in on_path:  # the walk came back to itself: a cycle
            cycle = path[path.index(cur) :]
            cut.add(min(cycle, key=lambda node: rank.get(node, len(rank))))
        done.update(path)
    if not cut:
        return edges
    return [
        (p, c, CYCLE) if role == "primary" and c in cut and parent.get(c) == p else (p, c, role) for p, c, role in edges
    ]


def cycle_warnings(edges: Iterable[Sequence]) -> list[str]:
    """One line per edge `lineage_graph` cut out of a cycle, naming both runs."""
    return [
        (
            f"state {c[:8]} is its own parent (its {TAG_PARENT_RUN} tag names itself)"
            if p == c
            else f"the parent {p[:8]} of state {c[:8]} ({TAG_PARENT_RUN}) descends from it: a cycle"
        )
        + f"; that edge is marked '{CYCLE}' and not followed"
        for p, c, role in edges
        if role == CYCLE
    ]


def primary_parents(edges: Iterable[Sequence]) -> dict[str, str]:
    """{child: parent} of the followed primary edges (cut cycles are not among them)."""
    out: dict[str, str] = {}
    for p, c, role in edges:
        if role == "primary":
            out.setdefault(c, p)
    return out


def ancestors(run_ids: Iterable[str], runs_by_id: Mapping[str, object], fetch=None) -> dict[str, object]:
    """The runs of ``run_ids`` and of all their parents (every role), by run id.

    ``runs_by_id`` holds the runs already at hand; ``fetch(run_id)`` (optional)
    returns another run or None. A parent found nowhere is left out (the graph
    then draws it as ``missing``).
    """
    out: dict[str, object] = {}
    todo = list(run_ids)
    while todo:
        run_id = todo.pop()
        if run_id in out:
            continue
        run = runs_by_id.get(run_id)
        if run is None and fetch is not None:
            run = fetch(run_id)
        if run is None:
            continue
        out[run_id] = run
        todo.extend(parent for parent, _ in _parents(run))
    return out


def run_link(experiment_id, run_id: str, base: str = "/") -> str:
    """Link to a run's page in the MLflow UI, e.g. ``/#/experiments/1/runs/abc``."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


# ---------------------------------------------------------------------------- layout and SVG


def _dag_check(nodes: Sequence[Mapping], edges: Sequence[Sequence]) -> tuple[list, list]:
    ids = [n["id"] for n in nodes]
    if len(set(ids)) != len(ids):
        dup = sorted({str(i) for i in ids if ids.count(i) > 1})
        raise SpecError(f"DAG nodes have duplicate ids: {', '.join(dup)}")
    known = set(ids)
    norm = []
    for e in edges:
        if len(e) not in (2, 3):
            raise SpecError(f"DAG edge {e!r} is not (parent_id, child_id, role)")
        parent, child = e[0], e[1]
        role = e[2] if len(e) == 3 else "primary"
        for end in (parent, child):
            if end not in known:
                raise SpecError(f"DAG edge {tuple(e)!r} names unknown node {end!r}")
        norm.append((parent, child, str(role)))
    return ids, norm


def dag_layout(nodes: Sequence[Mapping], edges: Sequence[Sequence]) -> dict:
    """Layered tree layout: ``{node id: (x, depth)}``, x in column units (>= 0).

    Depth is the number of primary edges from a root (a node without a primary
    parent). The first primary parent of a node is its tree parent; leaves take
    consecutive columns (in node order) and a parent sits centred over its
    children, so nodes of one depth are at least one column apart and primary
    edges do not cross. Non-primary edges (weights / mask sources) do not move
    nodes. A cycle of primary edges is a ``SpecError``.
    """
    ids, norm = _dag_check(nodes, edges)
    order = {i: k for k, i in enumerate(ids)}
    parent: dict = {}
    for p, c, role in norm:
        if role == "primary" and c not in parent:
            parent[c] = p
    children: dict = {i: [] for i in ids}
    for c in ids:  # node order, so children come in node order
        if c in parent:
            children[parent[c]].append(c)
    # depth, with cycle detection
    depth: dict = {}
    for start in ids:
        path = []
        seen = set()
        cur = start
        while cur not in depth and cur in parent:
            if cur in seen:
                raise SpecError(f"DAG has a cycle of primary edges through {cur!r}")
            seen.add(cur)
            path.append(cur)
            cur = parent[cur]
        base = depth.get(cur, 0)
        if cur not in depth:
            depth[cur] = 0
        for k, node in enumerate(reversed(path), start=1):
            depth[node] = base + k
    # x: leaves in DFS order, parents centred over children (iterative post-order)
    x: dict = {}
    next_col = 0
    roots = [i for i in ids if i not in parent]
    for root in roots:
        stack = [(root, False)]
        while stack:
            node, done = stack.pop()
            kids = children[node]
            if not kids:
                x[node] = float(next_col)
                next_col += 1
            elif done:
                x[node] = (x[kids[0]] + x[kids[-1]]) / 2.0
            else:
                stack.append((node, True))
                for kid in sorted(kids, key=order.get, reverse=True):
                    stack.append((kid, False))
    return {i: (x[i], depth[i]) for i in ids}


def node_lines(node: Mapping, max_chars: int = 22) -> list[str]:
    label = str(node.get("label", node["id"]))
    if len(label) > max_chars:
        label = label[: max_chars - 1] + "…"
    lines = [label]
    stats = []
    acc = node.get("accuracy")
    if acc is not None and not (isinstance(acc, float) and math.isnan(acc)):
        stats.append(f"acc {100 * float(acc):.1f}%")
    sp = node.get("sparsity")
    if sp is not None and not (isinstance(sp, float) and math.isnan(sp)):
        stats.append(f"sparsity {100 * float(sp):.1f}%")
    lines.extend(stats)
    return lines


def kind_key(node: Mapping) -> str | None:
    """The KIND_COLORS key of a node: its label, or the first step of a step list "a+b"."""
    label = str(node.get("label", ""))
    if label in KIND_COLORS:
        return label
    first = label.split("+")[0].strip()
    return first if first in KIND_COLORS else None


def _kind_color(node: Mapping) -> str:
    key = kind_key(node)
    return KIND_COLORS[key] if key else OTHER_KIND_COLOR


# Shared DAG geometry, in layout units: one column = 1, one depth row = 1.
BOX_W, BOX_H = 0.82, 0.56
_PX_COL, _PX_ROW = 184, 92  # SVG pixels per unit
_MARGIN = 24  # SVG pixels


def _edge_curve(p: tuple, c: tuple, primary: bool) -> tuple[list, tuple]:
    """Cubic Bezier (4 points) from parent box to child box, and a label position.

    Primary edges leave the bottom of the parent and enter the top of the child
    (an S curve). Other edges leave and enter on the side facing the child (right
    when the child is not left of the parent), bulging outwards more the longer
    they are, so edges to one source fan out instead of overlapping; the label
    sits at the curve's midpoint, its outermost point.
    """
    (x0, y0), (x1, y1) = p, c
    if primary:
        sy, ey = y0 + BOX_H / 2, y1 - BOX_H / 2
        my = (sy + ey) / 2
        pts = [(x0, sy), (x0, my), (x1, my), (x1, ey)]
        return pts, (x1, my)
    if y0 == y1:  # same depth: arc over the top, through the gap between rows
        top = y0 - BOX_H / 2
        cy = top - 0.32
        pts = [(x0, top), (x0, cy), (x1, cy), (x1, top)]
        return pts, ((x0 + x1) / 2, 0.25 * top + 0.75 * cy)
    side = -1.0 if x1 < x0 else 1.0
    sx, ex = x0 + side * BOX_W / 2, x1 + side * BOX_W / 2
    bulge = 0.12 + 0.07 * abs(y1 - y0) + 0.03 * abs(x1 - x0)
    cx = (max(sx, ex) if side > 0 else min(sx, ex)) + side * bulge
    pts = [(sx, y0), (cx, y0), (cx, y1), (ex, y1)]
    lx = 0.125 * sx + 0.75 * cx + 0.125 * ex
    return pts, (lx, (y0 + y1) / 2)


def dag_geometry(nodes, edges):
    """Layout, edges with their curves, and the bounding box (layout units) of it all."""
    layout = dag_layout(nodes, edges)
    _, norm = _dag_check(nodes, edges)
    curves = [(p, c, role, *_edge_curve(layout[p], layout[c], role == "primary")) for p, c, role in norm]
    xs = [x for x, _ in layout.values()] or [0.0]
    ys = [y for _, y in layout.values()] or [0]
    x_lo, x_hi = min(xs) - BOX_W / 2, max(xs) + BOX_W / 2
    y_lo = min(ys) - BOX_H / 2
    for *_, (lx, ly) in curves:
        # a cubic lies in the hull of its control points; its midpoint is 3/4 of the way out
        x_lo = min(x_lo, lx - 0.3)
        x_hi = max(x_hi, lx + 0.3)
        y_lo = min(y_lo, ly - 0.1)
    bbox = (x_lo, x_hi, y_lo, max(ys) + BOX_H / 2)
    return layout, curves, bbox


def dag_svg(
    nodes: Sequence[Mapping],
    edges: Sequence[Sequence],
    link: Callable[[str], str] | None = None,
    title: str | None = None,
    highlight: str | None = None,
) -> str:
    """Standalone SVG (a string) of the experiment DAG, each node a link.

    Same layout as :func:`plot_dag` (root on top, one column per leaf, so width
    grows with the breadth of the tree). Each node is ``<a href=link(id)>`` around
    a rounded box with its kind, accuracy and sparsity (the full id and label in a
    ``<title>`` tooltip); without ``link`` nodes are not wrapped in ``<a>``. Each
    edge is one ``<path class="edge edge-<role>">``; primary edges solid, other
    roles dashed, curved outwards on the side facing the child and labelled
    with the role.
    """
    layout, curves, (x_lo, x_hi, y_lo, y_hi) = dag_geometry(nodes, edges)
    top = _MARGIN + (28 if title else 0)
    width = int(round(2 * _MARGIN + (x_hi - x_lo) * _PX_COL))
    height = int(round(top + _MARGIN + (y_hi - y_lo) * _PX_ROW))
    box_w, box_h = BOX_W * _PX_COL, BOX_H * _PX_ROW

    def px(pt):
        return _MARGIN + (pt[0] - x_lo) * _PX_COL, top + (pt[1] - y_lo) * _PX_ROW

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="lineage" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif">',
        "<style>"
        ".edge{fill:none;stroke-width:1.4}"
        ".edge-primary{stroke:#455a64}"
        ".edge-other{stroke:#8e24aa;stroke-dasharray:6 4;stroke-opacity:0.6;stroke-width:1.1}"
        ".edge-label{font-size:10px;fill:#8e24aa;paint-order:stroke;stroke:#fff;stroke-width:3px}"
        ".node rect{stroke:#37474f;stroke-width:1}"
        ".node text{font-size:11px;fill:#212121}"
        ".node .kind{font-weight:bold}"
        "a:hover rect{stroke-width:2.5;stroke:#0d47a1}"
        ".node.current rect{stroke-width:4;stroke:#d50000}"
        "</style>",
        "<defs>"
        '<marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#455a64"/></marker>'
        '<marker id="arrow-other" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#8e24aa"/></marker>'
        "</defs>",
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    if title:
        out.append(f'<text x="{_MARGIN}" y="{_MARGIN + 8}" font-size="15" font-weight="bold">{escape(title)}</text>')
    # edges first, nodes on top
    labels = []
    for p, c, role, pts, lab in curves:
        primary = role == "primary"
        cls = "edge-primary" if primary else "edge-other"
        role_cls = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in role)
        (ax_, ay), (bx, by), (cx_, cy_), (dx, dy) = (px(q) for q in pts)
        d = f"M{ax_:.1f},{ay:.1f} C{bx:.1f},{by:.1f} {cx_:.1f},{cy_:.1f} {dx:.1f},{dy:.1f}"
        dash = "" if primary else ' stroke-dasharray="6 4"'
        marker = "arrow" if primary else "arrow-other"
        out.append(
            f'<path class="edge {cls} edge-{role_cls}" d="{d}"{dash} marker-end="url(#{marker})">'
            f"<title>{escape(f'{role}: {p} -> {c}')}</title></path>"
        )
        if not primary:
            lx, ly = px(lab)
            labels.append(
                f'<text class="edge-label" x="{lx:.1f}" y="{ly + 3.5:.1f}" text-anchor="middle">{escape(role)}</text>'
            )
    out.extend(labels)
    for node in nodes:
        cx, cy = px(layout[node["id"]])
        lines = node_lines(node)
        tip = f"{node.get('label', '')} — {node['id']}"
        current = " current" if node["id"] == highlight else ""
        g = [
            f'<g class="node{current}" data-id={quoteattr(str(node["id"]))}>',
            f"<title>{escape(tip)}</title>",
            f'<rect x="{cx - box_w / 2:.1f}" y="{cy - box_h / 2:.1f}" width="{box_w:.1f}" height="{box_h:.1f}" '
            f'rx="7" fill="{_kind_color(node)}"/>',
        ]
        y = cy - (len(lines) - 1) * 7 + 4
        for k, line in enumerate(lines):
            cls = ' class="kind"' if k == 0 else ""
            g.append(f'<text{cls} x="{cx:.1f}" y="{y + 14 * k:.1f}" text-anchor="middle">{escape(line)}</text>')
        g.append("</g>")
        if link is not None:
            out.append(f'<a href={quoteattr(str(link(node["id"])))} target="_top">' + "".join(g) + "</a>")
        else:
            out.append("".join(g))
    out.append("</svg>")
    return "\n".join(out)


def lineage_svg(
    nodes: Sequence[Mapping],
    edges: Sequence[Sequence],
    *,
    base: str | None = "/",
    title: str | None = None,
    highlight: str | None = None,
) -> str:
    """Standalone SVG of the DAG; with ``base`` each node links to its run in the UI at ``base``."""
    link = None
    if base is not None:
        exp_of = {n["id"]: n.get("experiment_id") for n in nodes}

        def link(run_id):
            return run_link(exp_of.get(run_id), run_id, base)

    if lanes.usable(nodes):  # a study: a lane per seed, controls folded
        _dag_check(nodes, edges)
        return lanes.lanes_svg(nodes, edges, link=link, color=_kind_color, title=title, highlight=highlight)
    return dag_svg(nodes, edges, link=link, title=title, highlight=highlight)


_CSS = """
body{font-family:Helvetica,Arial,sans-serif;margin:16px 24px;color:#212121}
h1{font-size:20px;margin:0 0 4px}
.meta{color:#555;margin:0 0 12px;font-size:13px}
.dag{overflow:auto;border:1px solid #ddd;border-radius:6px;padding:4px;background:#fff}
table{border-collapse:collapse;margin-top:16px;font-size:13px}
th,td{border-bottom:1px solid #e0e0e0;padding:4px 10px;text-align:left}
th{background:#f5f5f5}
td.num{text-align:right;font-variant-numeric:tabular-nums}
code{font-size:12px}
#viewer-note{display:none;position:fixed;left:8px;right:8px;bottom:8px;z-index:10;background:#fff8e1;
 border:1px solid #ffcc80;padding:8px 10px;border-radius:6px;font-size:13px;box-shadow:0 2px 8px rgba(0,0,0,.25)}
#viewer-note input{width:100%;font-family:monospace;font-size:12px;margin-top:4px}
.legend span{display:inline-block;margin-right:14px}
.swatch{display:inline-block;width:12px;height:12px;border:1px solid #37474f;border-radius:3px;
 vertical-align:-2px;margin-right:4px}
"""

# Rewrites the UI links when the page is not served by the tracking server itself:
# - inside MLflow's artifact viewer the page is a blob: URL in a sandboxed iframe (scripts only):
#   links get the viewer's origin; a click cannot leave the sandbox, so the run's URL is shown to copy;
# - opened as a file, links go to the tracking server known when the page was written.
_SCRIPT = """
(function(){
  var fileBase = %s;
  var base = null, viewer = false;
  if (location.protocol === "blob:") {
    try { base = new URL(location.href.slice(5)).origin; viewer = true; } catch (e) {}
  } else if (location.protocol === "file:") { base = fileBase; }
  if (!base) return;
  var links = document.querySelectorAll("a[data-ui-path]");
  for (var i = 0; i < links.length; i++) {
    links[i].setAttribute("href", base.replace(/\\/$/, "") + links[i].getAttribute("data-ui-path"));
  }
  if (!viewer) return;
  var note = document.getElementById("viewer-note"), field = document.getElementById("viewer-url");
  document.addEventListener("click", function(ev){
    var a = ev.target.closest ? ev.target.closest("a[data-ui-path]") : null;
    if (!a) return;
    ev.preventDefault();
    note.style.display = "block";
    field.value = a.getAttribute("href");
    field.focus(); field.select();
  });
})();
"""


def _value(value) -> str:
    return "" if value is None else f"{value:.6f}"


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def lineage_html(
    nodes: Sequence[Mapping],
    edges: Sequence[Sequence],
    *,
    title: str,
    base: str = "/",
    file_base: str | None = None,
    subtitle: str = "",
    extra_html: str = "",
    highlight: str | None = None,
) -> str:
    """A self-contained HTML page: the DAG (inline SVG, nodes link to their runs) and a table of states.

    ``base`` is where the MLflow UI is (``/`` when the page is served by the
    tracking server or shown in its artifact viewer). With ``file_base`` the page
    also works outside the server: a script points the links at ``file_base``
    when the page is opened as a file, and at the viewer's origin inside MLflow's
    artifact viewer (where links cannot leave the sandboxed frame: a click shows
    the run's URL to open instead).
    """
    prefix = base.rstrip("/")
    # every link also carries its UI path (data-ui-path), so the script can re-base it
    svg = re.sub(
        r'<a href="([^"]*)"',
        lambda m: f'<a data-ui-path="{m.group(1)[len(prefix) :]}" href="{m.group(1)}"',
        lineage_svg(nodes, edges, base=base, highlight=highlight),
    )
    parents: dict[str, list[str]] = {}
    for p, c, role in ((e[0], e[1], e[2] if len(e) > 2 else "primary") for e in edges):
        parents.setdefault(c, []).append(f"{'parent' if role == 'primary' else role}: {p[:8]}")
    rows = []
    for n in nodes:
        path = f"/#/experiments/{n.get('experiment_id')}/runs/{n['id']}"
        rows.append(
            "<tr>"
            f'<td><a class="run-link" data-ui-path="{escape(path)}" href="{escape(prefix + path)}" target="_top">'
            f"<code>{escape(n['id'][:12])}</code></a></td>"
            f"<td>{escape(str(n.get('name') or ''))}</td>"
            + "".join(
                f'<td class="num">{escape(str(n[k]) if n.get(k) is not None else "–")}</td>' for k in ("seed", "round")
            )
            + f"<td>{escape(str(n.get('branch') or '–'))}</td><td>{escape(str(n.get('label', '')))}</td>"
            f'<td class="num" data-value="{_value(n.get("accuracy"))}">{_pct(n.get("accuracy"))}</td>'
            f'<td class="num" data-value="{_value(n.get("sparsity"))}">{_pct(n.get("sparsity"))}</td>'
            f"<td>{escape(', '.join(parents.get(n['id'], [])) or '–')}</td></tr>"
        )
    legend = "".join(
        f'<span><i class="swatch" style="background:{c}"></i>{escape(k)}</span>' for k, c in KIND_COLORS.items()
    )
    n_states = sum(1 for n in nodes if not n.get("missing"))
    n_missing = len(nodes) - n_states
    other = sum(1 for e in edges if len(e) > 2 and e[2] != "primary")
    meta = (
        f"{n_states} states, {len(edges)} edges ({other} from extra parents: weights / mask sources)"
        + (f", {n_missing} parents not in this experiment" if n_missing else "")
        + " · click a node to open its run in the MLflow UI"
    )
    script = f"<script>{_SCRIPT % json.dumps(file_base)}</script>" if file_base is not None else ""
    script += f"<script>{lanes.SCRIPT}</script>"
    if not nodes:
        body = "<p>No finished mlprune states here yet.</p>"
    else:
        body = (
            lanes.viewer(svg)
            + '<table id="states" class="sortable"><thead><tr><th>run</th><th>name</th><th>seed</th><th>round</th>'
            "<th>branch</th><th>kind</th><th>test accuracy</th>"
            f"<th>sparsity</th><th>parents</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_CSS}{lanes.VIEW_CSS}</style></head><body>"
        f"<h1>{escape(title)}</h1>"
        + (f'<p class="meta">{escape(subtitle)}</p>' if subtitle else "")
        + f'<p class="meta">{escape(meta)}</p>'
        f'<p class="meta legend">{legend}<span>solid arrow: primary parent (mlflow.parentRunId); '
        "dashed: extra parent (mlprune.parent.&lt;role&gt;)</span></p>"
        '<div id="viewer-note">MLflow\'s artifact viewer keeps links inside this frame. '
        "Open this run's page in a new tab with this address (selected: copy it), or open this "
        "HTML file directly / the server's lineage page (<code>/mlprune/lineage/</code>, "
        "<code>mlflow server --app-name mlprune</code>) where nodes are plain links."
        '<input id="viewer-url" readonly></div>'
        f"{extra_html}{body}{script}</body></html>\n"
    )
