"""The HTML report of one experiment: sections of figures and tables, one self-contained page.

`write_report` reads every state of one experiment through ``store.Store``,
groups the states recipes reached into series (`series.collect`), and writes
``report.html`` (figures embedded as base64 PNG, the DAG as inline SVG: it works
offline), ``figures/*.png``, ``report.json`` (per series and round: remaining
fraction, test accuracy and loss, state run id) and ``numbers.json`` (the
numbers behind every figure).

Bad input never ends in a traceback: runs that are not mlprune states, states
that are not FINISHED and states with missing artifacts are skipped with a
warning; states of different architectures are never compared (one matrix per
architecture).
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from html import escape
from pathlib import Path

from .. import lineage_lanes
from ..errors import SpecError
from ..version import __version__
from .common import Page, ReportWarning, StateLoader, default_ui, jsonable
from .sections import SectionContext, render
from .series import Collection, collect

_REPORT_CSS = (
    """
body{font-family:Helvetica,Arial,sans-serif;margin:20px 32px;color:#212121;max-width:1500px}
h1{font-size:24px;margin-bottom:4px} h2{margin-top:36px;border-bottom:2px solid #e0e0e0;padding-bottom:4px}
h3{margin:22px 0 6px;font-size:15px}
.meta{color:#555;font-size:13px}
nav{font-size:13.5px;columns:3 260px;background:#fafafa;border:1px solid #eee;border-radius:6px;
 padding:8px 14px} nav ol{margin:0;padding-left:18px} nav ul{margin:0 0 4px;padding-left:16px;font-size:12.5px}
nav li{break-inside:avoid}
section > details > summary{cursor:pointer;list-style:none} section > details > summary h2{display:inline}
section > details > summary::before{content:"▸ ";color:#9e9e9e} section > details[open] > summary::before{content:"▾ "}
details.group{margin:6px 0 6px 6px;border-left:3px solid #e0e0e0;padding-left:10px}
details.group > summary{cursor:pointer;font-weight:bold;font-size:15px;margin:8px 0}
details.table > summary{cursor:pointer;font-size:13px;color:#1565c0;margin:4px 0}
figure{margin:10px 0 18px} figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:12px;color:#555}
table{border-collapse:collapse;font-size:12.5px;margin:8px 0 16px}
th,td{border-bottom:1px solid #e0e0e0;padding:3px 9px;text-align:left}
th{background:#f5f5f5}
.warnings{background:#fff8e1;border:1px solid #ffcc80;border-radius:6px;padding:8px 14px;font-size:13px}
.dag{overflow:auto;border:1px solid #ddd;border-radius:6px;max-height:720px}
.answer td.num,.answer th.num{text-align:right;font-variant-numeric:tabular-nums}
.note{background:#e3f2fd;border:1px solid #90caf9;border-radius:6px;padding:6px 12px;font-size:13px}
"""
    + lineage_lanes.VIEW_CSS
)


@dataclass
class ReportResult:
    path: Path
    figures: list[dict]
    warnings: list[str]
    numbers: dict
    n_states: int


def write_report(
    experiment: str, out_dir, *, tracking_uri: str | None = None, ui_url: str | None = None, warn=None
) -> ReportResult:
    """Write ``report.html``, ``figures/*.png``, ``report.json`` and ``numbers.json`` into ``out_dir``.

    ``experiment`` is a name or an id. Warnings (skipped runs / states) go to
    ``warn(message)`` (default: ``warnings.warn``) and into the report. Links go
    to the MLflow UI at ``ui_url`` (default: the tracking server, or ``mlflow
    ui``'s http://127.0.0.1:5000 for a local store).
    """
    from ..store import open_experiment

    store = open_experiment(experiment, tracking_uri=tracking_uri)
    if warn is None:

        def warn(message):
            warnings.warn(message, ReportWarning, stacklevel=3)

    started = time.perf_counter()
    collection = collect(store, warn)
    if not collection.runs:
        raise SpecError(
            f"experiment {store.experiment_name!r} holds no finished mlprune states "
            f"({len(collection.skipped['not mlprune states'])} other runs); nothing to report"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    page = Page(out)
    note = note_into(collection, warn)
    loaded = StateLoader(store, collection.runs, note)

    ctx = SectionContext(collection, loaded, note, ui_url=ui_url or default_ui(store.tracking_uri))
    render(page, ctx)
    ui_note = ""
    if not ui_url and not store.tracking_uri.startswith(("http://", "https://")):
        ui_note = (
            f'<p class="note">Links to runs point to the MLflow UI at {escape(ctx.ui_url)}: serve this '
            f"store there with <code>mlflow server --app-name mlprune --backend-store-uri "
            f"{escape(store.tracking_uri)} --port 5000</code>, or write the report with <code>--ui-url "
            f"URL</code> for a UI elsewhere.</p>"
        )

    warn_html = ""
    if collection.warnings:
        warn_html = (
            '<div class="warnings"><b>Skipped</b><ul>'
            + "".join(f"<li>{escape(w)}</li>" for w in collection.warnings)
            + "</ul></div>"
        )
    nav = (
        "<nav><b>Contents</b><ol>"
        + "".join(
            f'<li><a href="#{a}">{escape(h)}</a>'
            + (
                (
                    "<ul>"
                    + "".join(f'<li><a href="#{escape(ga)}">{escape(gt)}</a></li>' for ga, gt in groups[:40])
                    + (f"<li>… {len(groups) - 40} more</li>" if len(groups) > 40 else "")
                    + "</ul>"
                )
                if groups
                else ""
            )
            + "</li>"
            for a, h, _, groups in page.sections
        )
        + "</ol></nav>"
    )
    body = "".join(
        f'<section id="{a}"><details{"" if a in page.closed else " open"}><summary><h2>{escape(h)}</h2>'
        f"</summary>{html}</details></section>"
        for a, h, html, _ in page.sections
    )
    n_series = len({s.label for s in collection.series})
    title = f"mlprune report: {store.experiment_name}"
    document = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_REPORT_CSS}</style></head><body>"
        f"<h1>{escape(title)}</h1>"
        f'<p class="meta">experiment id {escape(store.experiment_id)} · tracking store '
        f"{escape(store.tracking_uri)} · {len(collection.runs)} states · {n_series} recipe series · "
        f"{len(page.figures)} figures · mlprune {escape(__version__)} · {time.strftime('%Y-%m-%d %H:%M')}</p>"
        f"{ui_note}<nav>{nav}</nav>{warn_html}{body}<script>{lineage_lanes.SCRIPT}</script></body></html>\n"
    )
    path = out / "report.html"
    path.write_text(document, encoding="utf-8")
    page.numbers["warnings"] = collection.warnings
    page.numbers["seconds"] = time.perf_counter() - started
    (out / "numbers.json").write_text(json.dumps(jsonable(page.numbers), indent=1, allow_nan=False))
    (out / "report.json").write_text(
        json.dumps(jsonable({**report_json(store, collection), **page.report}), indent=1, allow_nan=False)
    )
    return ReportResult(
        path,
        [{k: v for k, v in f.items() if k not in ("png", "run_file")} for f in page.figures],
        collection.warnings,
        page.numbers,
        len(collection.runs),
    )


def report_json(store, collection: Collection) -> dict:
    """The numbers people plot themselves: per series (recipe, branch, seed), per round: remaining
    fraction, test accuracy, test loss and the state's run id."""
    series = []
    for s in collection.series:
        rounds = []
        for rnd in s.rounds:
            run = collection.runs.get(s.trained[rnd])
            if run is None:
                continue
            metrics = run.data.metrics
            sparsity = metrics.get("sparsity")
            rounds.append(
                {
                    "round": rnd,
                    "remaining": None if sparsity is None else 1.0 - sparsity,
                    "test_accuracy": metrics.get("test_accuracy"),
                    "test_loss": metrics.get("test_loss"),
                    "run_id": s.trained[rnd],
                    "pruned_run_id": s.pruned.get(rnd),
                }
            )
        series.append(
            {
                "label": s.label,
                "recipe": s.recipe,
                "branch": s.branch,
                "seed": s.seed,
                "params": s.params,
                "rounds": rounds,
            }
        )
    return {
        "experiment": store.experiment_name,
        "experiment_id": store.experiment_id,
        "tracking_uri": store.tracking_uri,
        "mlprune_version": __version__,
        "series": series,
    }


def note_into(collection: Collection, warn):
    def note(message):
        if message not in collection.warnings:
            collection.warnings.append(message)
            warn(message)

    return note
