"""The report's frame: the lineage of every state and the table of every state."""

from __future__ import annotations

from html import escape

from .. import lineage, lineage_lanes
from ..names import TAG_KIND
from .common import Page, fmt, html_table, metric
from .sections import SectionContext
from .series import study_answer


def lineage_section(page: Page, ctx: SectionContext) -> None:
    """The DAG of every state (inline SVG): solid arrows primary parents, dashed other sources."""
    ui = ctx.ui_url.rstrip("/")
    nodes, edges = lineage.lineage_graph(ctx.collection.runs.values())
    for line in lineage.cycle_warnings(edges):  # drawn, marked, never followed
        ctx.note(line)
    svg = lineage.lineage_svg(nodes, edges, base=ui)
    page.section(
        "lineage",
        "Lineage",
        f'<p class="meta">Every state of the experiment; solid arrows: primary parent, dashed: weights / '
        f"mask sources. Nodes link to their runs in the MLflow UI at {escape(ui)}.</p>"
        f'<div class="dag-frame" data-kind="dag">{lineage_lanes.viewer(svg)}</div>',
        open=False,
    )
    page.numbers["lineage"] = {"nodes": nodes, "edges": edges}


def answer_section(page: Page, ctx: SectionContext) -> None:
    """What the study answers, first: per recipe the main branch's deepest round, test accuracy per seed and
    mean ± std over seeds beside each control's (the numbers `mlprune compare` and `mlprune sweep` print)."""
    rows = study_answer(ctx.collection)
    page.report["answer"] = rows
    if not rows:
        return
    html = []
    for recipe in dict.fromkeys(row["recipe"] for row in rows):
        group = [row for row in rows if row["recipe"] == recipe]
        seeds = list(dict.fromkeys(seed for row in group for seed in row["seeds"]))[:12]
        head = "".join(f'<th class="num">s{escape(str(seed))}</th>' for seed in seeds)
        body = "".join(
            f"<tr><td>{escape(row['branch'])}</td>"
            + "".join(
                f'<td class="num">{100 * row["seeds"][seed]:.2f}%</td>'
                if seed in row["seeds"]
                else '<td class="num">–</td>'
                for seed in seeds
            )
            + f'<td class="num"><b>{100 * row["mean"]:.2f}%</b> ± {100 * row["std"]:.2f}</td>'
            f'<td class="num">{row["n"]}</td></tr>'
            for row in group
        )
        html.append(
            f"<h3>{escape(recipe)}: round {group[0]['round']}, {100 * group[0]['remaining']:.2f}% of the "
            f"weights remaining</h3>"
            f'<table class="answer"><thead><tr><th>branch</th>{head}<th class="num">mean ± std</th>'
            f'<th class="num">n</th></tr></thead><tbody>{body}</tbody></table>'
        )
    page.section(
        "answer",
        "The study's answer",
        '<p class="meta">Test accuracy at the deepest round of each recipe, per seed and over seeds: the '
        "main branch beside each control.</p>" + "".join(html),
    )


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
        rows.append(
            [
                f"<code>{run_id[:12]}</code>",
                escape(run.info.run_name or ""),
                escape(run.data.tags.get(TAG_KIND, "?")),
                escape(in_series.get(run_id, "–")),
                fmt(metric(run, "test_accuracy"), True),
                fmt(metric(run, "sparsity"), True),
            ]
        )
    page.section(
        "states", "States", html_table(["run", "name", "kind", "series / round", "test accuracy", "sparsity"], rows)
    )
