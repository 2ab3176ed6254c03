"""What a recipe's workflow run carries: its plans, the lineage of its states, its figures.

`workflow_files` is what ``mlprune run`` / ``sweep`` log on their workflow run:
``plan.json`` (the plans, each node with its key, round, branch, role and the run
id it reached: what `mlprune report` groups by), ``lineage.svg`` / ``lineage.html``
(the DAG of the states reached and all their parents) and, when asked, the
recipe's figures (`run_figures`). Imports neither torch nor matplotlib: a run that
computed nothing logs its plan and lineage without loading them.
"""

from __future__ import annotations

import json
import warnings

from .. import lineage
from ..errors import SpecError
from ..names import LINEAGE_HTML, LINEAGE_SVG, PLAN_FILE


class ReportWarning(UserWarning):
    """Something in the store was skipped; the rest of the report went on."""


def _default_ui(tracking_uri: str) -> str:
    return tracking_uri if tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"


def lineage_files(store, run_ids, *, title: str, subtitle: str = "", ui_url: str | None = None) -> dict:
    """``lineage.svg`` and ``lineage.html`` of the given states and all their parents.

    Nodes link to their runs at ``/#/experiments/<id>/runs/<run>`` (the tracking
    server that shows the artifact); opened as a file, ``lineage.html`` links to
    ``ui_url`` (default: the tracking server, else ``mlflow ui``'s address).
    Returns ``{}`` when there is no state.
    """
    run_ids = [r for r in run_ids if r]
    if not run_ids:
        return {}
    known = {r.info.run_id: r for r in store.states()}

    def fetch(run_id):
        try:
            return store.run(run_id)
        except SpecError:
            return None

    runs = lineage.ancestors(run_ids, known, fetch)
    nodes, edges = lineage.lineage_graph(runs.values())
    return {
        "lineage.svg": lineage.lineage_svg(nodes, edges, base="/", title=title),
        "lineage.html": lineage.lineage_html(nodes, edges, title=title, base="/",
                                             file_base=(ui_url or _default_ui(store.tracking_uri)),
                                             subtitle=subtitle),
    }


def workflow_files(store, plans, reached: list[dict[str, str]], *, figures: bool = True, ui_url: str | None = None,
                   warn=None) -> dict[str, bytes | str]:
    """Files for a workflow run: plan.json, the lineage of the states reached, and (one plan, `figures`)
    the recipe's figures. `reached`: per plan {node name: run id}."""
    warn = warn or (lambda message: warnings.warn(message, ReportWarning, stacklevel=2))
    files: dict[str, bytes | str] = {}
    recorded = []
    for plan, nodes in zip(plans, reached):
        data = plan.to_json()
        data["reached"] = dict(nodes)
        recorded.append(data)
    files[PLAN_FILE] = json.dumps({"plans": recorded}, indent=1, default=str)
    run_ids = [r for nodes in reached for r in nodes.values()]
    if not run_ids:
        return files
    names = " ".join(dict.fromkeys(p.recipe for p in plans))
    files.update(lineage_files(store, run_ids, ui_url=ui_url,
                               title=f"Lineage: {names} (experiment {store.experiment_name})",
                               subtitle=f"the states {names} reached and all their parents"))
    if figures and len(plans) == 1:
        try:
            from .run_figures import recipe_figures  # matplotlib and torch: only when there are figures to draw

            files.update(recipe_figures(store, recorded[0], warn))
        except Exception as error:  # noqa: BLE001 - figures are a by-product: the plan and lineage still matter
            warn(f"no figures on the workflow run ({type(error).__name__}: {error}); its plan and lineage are "
                 f"logged, `mlprune report` draws the figures from the store")
    return files


