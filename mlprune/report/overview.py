"""The report's frame: the lineage of every state and the table of every state."""

from __future__ import annotations

from html import escape

from .. import lineage
from ..names import TAG_KIND
from .common import Page, fmt, html_table, metric
from .sections import SectionContext


def lineage_section(page: Page, ctx: SectionContext) -> None:
    """The DAG of every state (inline SVG): solid arrows primary parents, dashed other sources."""
    ui = ctx.ui_url.rstrip("/")
    nodes, edges = lineage.lineage_graph(ctx.collection.runs.values())
    for line in lineage.cycle_warnings(edges):  # drawn, marked, never followed
        ctx.note(line)
    svg = lineage.lineage_svg(nodes, edges, base=ui)
    page.section("lineage", "Lineage",
                 f'<p class="meta">Every state of the experiment; solid arrows: primary parent, dashed: weights / '
                 f"mask sources. Nodes link to their runs in the MLflow UI at {escape(ui)}.</p>"
                 f'<div class="dag" data-kind="dag">{svg}</div>')
    page.numbers["lineage"] = {"nodes": nodes, "edges": edges}


def states_section(page: Page, ctx: SectionContext) -> None:
    collection = ctx.collection
    rows = []
    in_series = {}
    for series in collection.series:
        for rnd, run_id in series.trained.items():
            in_series.setdefault(run_id, f"{series.label} r{rnd}")
        for rnd, run_id in series.pruned.items():
            in_series.setdefault(run_id, f"{series.label} prune r{rnd}")
    for run_id, run in collection.runs.items():
        rows.append([f"<code>{run_id[:12]}</code>", escape(run.info.run_name or ""),
                     escape(run.data.tags.get(TAG_KIND, "?")), escape(in_series.get(run_id, "–")),
                     fmt(metric(run, "test_accuracy"), True), fmt(metric(run, "sparsity"), True)])
    page.section("states", "States", html_table(["run", "name", "kind", "series / round", "test accuracy", "sparsity"],
                                         rows))
