"""The lineage of an experiment: its state runs as a DAG, drawn as SVG and as an HTML page.

Nodes are state runs (runs tagged ``mlprune.key``), labelled with their kind
(``mlprune.kind``), ``test_accuracy`` and ``sparsity``. Edges go from each
parent to the child: ``mlflow.parentRunId`` is the ``primary`` edge, each
``mlprune.parent.<role>`` tag an edge with that role (``weights`` for a
rewind's weights source, ``mask`` for a transplanted mask). A parent that is not
among the runs (deleted, or in another experiment) is still drawn, as a
``missing`` node, so every parent of every state shows.

The functions here work on MLflow ``Run`` objects however they were obtained
(``store.Store`` on the client side, the tracking server's own store in
``mlflow_plugin``): this module imports neither mlflow nor torch, so the
tracking server can serve lineage pages without loading PyTorch.

Links go to the MLflow UI: ``<ui base>#/experiments/<experiment id>/runs/<run id>``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from html import escape

# The stable tag names (design.md §3); tests check they match store.py's constants.
TAG_KEY = "mlprune.key"
TAG_KIND = "mlprune.kind"
TAG_PARENT_PREFIX = "mlprune.parent."
TAG_PARENT_RUN = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"

MISSING = "missing"

__all__ = ["lineage_graph", "ancestors", "run_link", "lineage_svg", "lineage_html", "is_state"]


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
            out.append((tags[key], key[len(TAG_PARENT_PREFIX):]))
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
            "accuracy": _finite(run.data.metrics.get("test_accuracy")),
            "sparsity": _finite(run.data.metrics.get("sparsity")),
            "name": run.data.tags.get(TAG_RUN_NAME) or getattr(run.info, "run_name", "") or "",
            "experiment_id": run.info.experiment_id,
            "status": run.info.status,
            "missing": False,
        }
        known[node["id"]] = node
        nodes.append(node)
    edges: list[tuple[str, str, str]] = []
    missing: list[dict] = []
    for run in states:
        for parent, role in _parents(run):
            if parent not in known:
                node = {"id": parent, "label": MISSING, "accuracy": None, "sparsity": None,
                        "name": "(not in this experiment)", "experiment_id": run.info.experiment_id,
                        "status": None, "missing": True}
                known[parent] = node
                missing.append(node)
            edge = (parent, run.info.run_id, role)
            if edge not in edges:
                edges.append(edge)
    return missing + nodes, edges


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


def lineage_svg(nodes: Sequence[Mapping], edges: Sequence[Sequence], *, base: str | None = "/",
                title: str | None = None) -> str:
    """Standalone SVG of the DAG; with ``base`` each node links to its run in the UI at ``base``."""
    from .plotting import dag_svg

    link = None
    if base is not None:
        exp_of = {n["id"]: n.get("experiment_id") for n in nodes}

        def link(run_id):
            return run_link(exp_of.get(run_id), run_id, base)

    return dag_svg(nodes, edges, link=link, title=title)


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


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def lineage_html(nodes: Sequence[Mapping], edges: Sequence[Sequence], *, title: str,
                 base: str = "/", file_base: str | None = None, subtitle: str = "",
                 extra_html: str = "") -> str:
    """A self-contained HTML page: the DAG (inline SVG, nodes link to their runs) and a table of states.

    ``base`` is where the MLflow UI is (``/`` when the page is served by the
    tracking server or shown in its artifact viewer). With ``file_base`` the page
    also works outside the server: a script points the links at ``file_base``
    when the page is opened as a file, and at the viewer's origin inside MLflow's
    artifact viewer (where links cannot leave the sandboxed frame: a click shows
    the run's URL to open instead).
    """
    from .plotting import KIND_COLORS

    prefix = base.rstrip("/")
    # every link also carries its UI path (data-ui-path), so the script can re-base it
    svg = re.sub(r'<a href="([^"]*)"',
                 lambda m: f'<a data-ui-path="{m.group(1)[len(prefix):]}" href="{m.group(1)}"',
                 lineage_svg(nodes, edges, base=base))
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
            f"<td>{escape(str(n.get('name') or ''))}</td><td>{escape(str(n.get('label', '')))}</td>"
            f'<td class="num">{_pct(n.get("accuracy"))}</td><td class="num">{_pct(n.get("sparsity"))}</td>'
            f"<td>{escape(', '.join(parents.get(n['id'], [])) or '–')}</td></tr>")
    legend = "".join(f'<span><i class="swatch" style="background:{c}"></i>{escape(k)}</span>'
                     for k, c in KIND_COLORS.items())
    n_states = sum(1 for n in nodes if not n.get("missing"))
    n_missing = len(nodes) - n_states
    other = sum(1 for e in edges if len(e) > 2 and e[2] != "primary")
    meta = (f"{n_states} states, {len(edges)} edges ({other} from extra parents: weights / mask sources)"
            + (f", {n_missing} parents not in this experiment" if n_missing else "")
            + " · click a node to open its run in the MLflow UI")
    script = f"<script>{_SCRIPT % json.dumps(file_base)}</script>" if file_base is not None else ""
    if not nodes:
        body = "<p>No finished mlprune states here yet.</p>"
    else:
        body = (f'<div class="dag">{svg}</div>'
                '<table id="states"><thead><tr><th>run</th><th>name</th><th>kind</th><th>test accuracy</th>'
                f'<th>sparsity</th><th>parents</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
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
