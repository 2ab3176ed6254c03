"""What a recipe's workflow run carries: its plans, the lineage of its states, its figures.

`workflow_files` is what ``mlprune run`` / ``sweep`` log on their workflow run:
``plan.json`` (the plans, each node with its key, round, branch, role and the run
id it reached: what `mlprune report` groups by), ``lineage.svg`` / ``lineage.html``
(the DAG of the states reached and all their parents) and, when asked, the
recipe's figures (the report's sections on the recipe's states, `recipe_figures`; `mlprune run`
draws them after it returns, in the background: `log_workflow_figures`). Imports neither torch nor
matplotlib: a run that computed nothing logs its plan and lineage without loading them. A fully
cached run's record is written by `record_workflow`, in the background too.
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
    known = store.runs_by_id(run_ids)  # these runs and, by the look-ups below, their parents: never every state

    def fetch(run_id):
        try:
            return store.run(run_id)
        except SpecError:
            return None

    runs = lineage.ancestors(run_ids, known, fetch)
    nodes, edges = lineage.lineage_graph(runs.values())
    return {
        "lineage.svg": lineage.lineage_svg(nodes, edges, base="/", title=title),
        "lineage.html": lineage.lineage_html(
            nodes, edges, title=title, base="/", file_base=(ui_url or default_ui(store.tracking_uri)), subtitle=subtitle
        ),
    }


def plan_json(plans, reached: list[dict[str, str]]) -> str:
    """plan.json: every plan with the run id each of its nodes reached (``reached``: per plan {node: run id})."""
    recorded = []
    for plan, nodes in zip(plans, reached):
        data = plan.to_json()
        data["reached"] = dict(nodes)
        recorded.append(data)
    return json.dumps({"plans": recorded}, indent=1, default=str)


def workflow_files(
    store, plans, reached: list[dict[str, str]], *, figures: bool = True, ui_url: str | None = None, warn=None
) -> dict[str, bytes | str]:
    """Files for a workflow run: plan.json, the lineage of the states reached, and (one plan, `figures`)
    the recipe's figures. `reached`: per plan {node name: run id}."""
    warn = warn or (lambda message: warnings.warn(message, ReportWarning, stacklevel=2))
    files: dict[str, bytes | str] = {PLAN_FILE: plan_json(plans, reached)}
    recorded = json.loads(files[PLAN_FILE])["plans"]
    run_ids = [r for nodes in reached for r in nodes.values()]
    if not run_ids:
        return files
    names = " ".join(dict.fromkeys(p.recipe for p in plans))
    files.update(
        lineage_files(
            store,
            run_ids,
            ui_url=ui_url,
            title=f"Lineage: {names} (experiment {store.experiment_name})",
            subtitle=f"the states {names} reached and all their parents",
        )
    )
    if figures and len(plans) == 1:
        try:
            files.update(recipe_figures(store, recorded[0], warn))
        except Exception as error:  # noqa: BLE001 - figures are a by-product: the plan and lineage still matter
            warn(
                f"no figures on the workflow run ({type(error).__name__}: {error}); its plan and lineage are "
                f"logged, `mlprune report` draws the figures from the store"
            )
    return files


def recipe_figures(store, recorded: dict, warn) -> dict[str, bytes]:
    """``{"figures/<run_file>": png}``: the report's sections (those drawn on workflow runs) on the states
    one recipe run reached: accuracy vs remaining, sanity checks, instability vs spawn point, mask
    similarity, inside the network (``figures/inside/...``), structure, stability and weight evolution."""
    from .common import Page, StateLoader
    from .sections import SectionContext, render
    from .series import Collection, series_of_plan

    recipe = recorded["recipe"]
    runs = {r.info.run_id: r for r in store.valid_finished(store.runs_by_id(recorded["reached"].values()).values())}
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


def record_workflow(payload: dict) -> str:
    """The workflow record of a fully cached run (a background task, see `mlprune.background`): nothing
    when a workflow run already records these states reached with these parameters, or only the link
    from `mlflow run`'s run to it; else a workflow run (or `mlflow run`'s, in the states' experiment)
    with plan.json, states.json, params.json and the lineage. Returns the workflow run's id.

    `payload`: tracking_uri, experiment_id, recipe (the label), params, plans (`Plan.to_json()`),
    reached (per plan {node: run id}), states ({label/node: run id}), launcher (run id or None).
    """
    from ..plan import Plan
    from ..store import Store, WorkflowRun
    from ..store.experiments import store_lock
    from ..store.workflow import launcher_elsewhere, link_launcher, record_digest

    store = Store(tracking_uri=payload["tracking_uri"], experiment_id=payload["experiment_id"])
    plans = [Plan.from_json(p) for p in payload["plans"]]
    recipe, params, launcher = payload["recipe"], payload["params"], payload.get("launcher") or ""
    digest = record_digest(plan_json(plans, payload["reached"]), params)
    store.client  # noqa: B018 - opened before the lock (opening a sqlite store takes that lock itself)
    with store_lock(store.tracking_uri):  # two cached runs of one recipe at once: one record
        existing = WorkflowRun.find_record(store, recipe, digest)
        if existing is not None and (not launcher or launcher_elsewhere(store, launcher)):
            if launcher:
                link_launcher(store, launcher, existing, recipe)
            return existing
        workflow = WorkflowRun(store, recipe=recipe, params=params, launcher=launcher)
        ok = False
        try:
            workflow.record(payload["states"], workflow_files(store, plans, payload["reached"], figures=False))
            ok = True
        finally:
            workflow.end(ok)
    return workflow.run_id


def log_workflow_figures(payload: dict) -> int:
    """The recipe's figures on a workflow run (a background task, see `mlprune.background`): read its
    plan.json, draw `recipe_figures`, write them under figures/. Warnings and failures are recorded
    in the run's ``mlprune.figures`` tag. Returns the number of figures written.

    `payload`: tracking_uri, experiment_id, workflow_run_id.
    """
    from ..names import TAG_FIGURES
    from ..store import Store

    store = Store(tracking_uri=payload["tracking_uri"], experiment_id=payload["experiment_id"])
    run_id = payload["workflow_run_id"]
    notes: list[str] = []
    try:
        recorded = json.loads(store.read_artifact(run_id, PLAN_FILE))["plans"][0]
        files = recipe_figures(store, recorded, notes.append)
        if files:
            store.write_files(run_id, files)
    except Exception as error:  # noqa: BLE001 - said on the run, where its figures were expected
        store.set_tags(run_id, {TAG_FIGURES: f"failed: {type(error).__name__}: {error}"[:4000]})
        raise
    store.set_tags(
        run_id,
        {
            TAG_FIGURES: (
                f"{len(files)} figures" + (f"; {len(notes)} warning(s): " + " | ".join(notes) if notes else "")
            )[:4000]
        },
    )
    return len(files)
