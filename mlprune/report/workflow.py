"""What a recipe's workflow run carries: its plans, the lineage of its states, its figures.

`workflow_files` is what ``mlprune run`` / ``sweep`` log on their workflow run:
``plan.json`` (the plans, each node with its key, round, branch, role and the run
id it reached: what `mlprune report` groups by), ``lineage.svg`` / ``lineage.html``
(the DAG of the states reached and all their parents) and, when asked, the
recipe's figures (the report's sections on the recipe's states, `recipe_figures`). Imports neither torch nor matplotlib: a run that
computed nothing logs its plan and lineage without loading them.
"""

from __future__ import annotations

import json
import warnings

from .. import lineage
from ..errors import SpecError
from ..names import PLAN_FILE
from .common import ReportWarning, default_ui


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
                                             file_base=(ui_url or default_ui(store.tracking_uri)),
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
            files.update(recipe_figures(store, recorded[0], warn))
        except Exception as error:  # noqa: BLE001 - figures are a by-product: the plan and lineage still matter
            warn(f"no figures on the workflow run ({type(error).__name__}: {error}); its plan and lineage are "
                 f"logged, `mlprune report` draws the figures from the store")
    return files


def recipe_figures(store, recorded: dict, warn) -> dict[str, bytes]:
    """``{"figures/<run_file>": png}``: the report's sections (those drawn on workflow runs) on the states
    one recipe run reached: accuracy vs remaining, sanity checks, instability vs spawn point, mask
    similarity, inside the network (``figures/inside/...``), structure, stability and weight evolution."""
    from .common import Page, StateLoader
    from .sections import SectionContext, render
    from .series import Collection, series_of_plan

    recipe = recorded["recipe"]
    reached = set(recorded["reached"].values())
    runs = {r.info.run_id: r for r in store.states() if r.info.run_id in reached}
    all_series = series_of_plan(recorded, runs)
    for s in all_series.values():
        s.label = recipe if s.branch == "main" else f"{recipe} / {s.branch}"
        s.base_label = recipe
    collection = Collection(store, runs, list(all_series.values()), [], [], {})
    page = Page(None)
    render(page, SectionContext(collection, StateLoader(store, runs, warn), warn, recipe=recipe), workflow_run=True)
    files = {}
    for figure in page.figures:
        files.setdefault(f"figures/{figure['run_file']}", figure["png"])
    return files
