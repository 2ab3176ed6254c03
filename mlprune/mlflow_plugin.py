"""MLflow plugin entry points (registered in pyproject.toml).

- ``mlflow.app`` ``mlprune`` -> :func:`create_app`: ``mlflow server --app-name mlprune``
  serves the standard MLflow UI and REST API plus lineage pages:
  ``/mlprune/lineage/`` (an index of experiments) and
  ``/mlprune/lineage/<experiment_id>`` (the experiment's DAG of states, every node a
  link to its run in the UI). MLflow 3.x runs an app through uvicorn by default: the
  entry point is a factory (a plain function, so MLflow passes ``--factory``) that
  adds the routes to MLflow's Flask app and returns it wrapped in MLflow's own
  FastAPI app, exactly as the built-in ``basic-auth`` app does; under
  ``--gunicorn-opts`` / ``--waitress-opts`` it returns the Flask app itself.
- ``mlflow.run_context_provider`` -> ``MlpruneRunContext`` (a ``RunContextProvider``
  subclass, made on first access): every run started
  through ``mlflow.start_run`` (and ``mlflow run``'s run) gets an ``mlprune.version`` tag.

This module is imported whenever MLflow loads its run context providers, i.e. in
every process that imports ``mlflow.tracking``: it imports nothing heavy at the
top (no torch, no Flask); the server part loads on first use.
"""

from __future__ import annotations

from html import escape

from .names import LINEAGE_ROUTE, TAG_VERSION
from .version import __version__

_PAGE = 1000


def _context_class():
    # MLflow imports this module *while* it initializes mlflow.tracking (to register the
    # provider): importing mlflow at the top would be circular, so the class is made on
    # first access, when MLflow's RunContextProvider is already importable.
    from mlflow.tracking.context.abstract_context import RunContextProvider

    class MlpruneRunContext(RunContextProvider):
        """Tags runs with the installed mlprune version (``mlprune.version``)."""

        def in_context(self):
            return True

        def tags(self):
            return {TAG_VERSION: __version__}

    MlpruneRunContext.__module__ = __name__
    return MlpruneRunContext


def __getattr__(name):
    if name == "MlpruneRunContext":
        globals()[name] = cls = _context_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _store():
    from mlflow.server.handlers import _get_tracking_store

    return _get_tracking_store()


def _all_runs(store, experiment_id: str, filter_string: str = "") -> list:
    from mlflow.entities import ViewType

    runs, token = [], None
    while True:
        page = store.search_runs(
            [experiment_id],
            filter_string,
            ViewType.ACTIVE_ONLY,
            max_results=_PAGE,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _state_counts(store) -> dict[str, int] | None:
    """{experiment id: active state runs} in one SQL count over the run tags (a SQL store: nothing fetched
    run by run); None for other stores."""
    session_maker = getattr(store, "ManagedSessionMaker", None)
    if session_maker is None:
        return None
    from mlflow.store.tracking.dbmodels.models import SqlRun, SqlTag
    from sqlalchemy import func

    from .names import TAG_KEY

    try:
        with session_maker() as session:
            rows = (
                session.query(SqlRun.experiment_id, func.count(SqlRun.run_uuid))
                .join(SqlTag, SqlTag.run_uuid == SqlRun.run_uuid)
                .filter(SqlTag.key == TAG_KEY, SqlTag.value != "", SqlRun.lifecycle_stage == "active")
                .group_by(SqlRun.experiment_id)
                .all()
            )
    except Exception:  # noqa: BLE001 - a schema this does not know: count run by run
        return None
    return {str(experiment): int(count) for experiment, count in rows}


def _ui_base() -> str:
    from mlflow.server.handlers import _add_static_prefix

    return _add_static_prefix("/")


def lineage_page(experiment_id: str):
    """The lineage page of one experiment (`<experiment id>`) or of one state (`<run id>`: its
    experiment's DAG with that state marked): every FINISHED state, each node a link to its run."""
    from flask import Response
    from mlflow.exceptions import MlflowException

    from . import lineage
    from .store.ui import experiment_url

    store = _store()
    current = None
    if len(experiment_id) == 32 and all(c in "0123456789abcdef" for c in experiment_id):
        try:
            current = store.get_run(experiment_id)
        except MlflowException:
            return Response(f"no run with id {escape(experiment_id)}", status=404, mimetype="text/plain")
        experiment_id = current.info.experiment_id
    try:
        experiment = store.get_experiment(experiment_id)
    except MlflowException:
        experiment = None
    if experiment is None:
        return Response(f"no experiment with id {escape(experiment_id)}", status=404, mimetype="text/plain")
    runs = [
        r for r in _all_runs(store, experiment_id, f"tags.`{lineage.TAG_KEY}` != ''") if r.info.status == "FINISHED"
    ]
    by_id = {r.info.run_id: r for r in runs}

    def fetch(run_id):
        try:
            run = store.get_run(run_id)
        except MlflowException:
            return None
        return run if run.info.status == "FINISHED" else None

    graph_runs = lineage.ancestors(by_id, by_id, fetch)  # parents in other experiments are drawn too
    nodes, edges = lineage.lineage_graph(graph_runs.values())
    base = _ui_base()
    back = (
        f'<p class="meta"><a href="{escape(experiment_url(base, experiment_id))}" target="_top">'
        f'experiment "{escape(experiment.name)}" in the MLflow UI</a> (its runs) · '
        f'<a href="{escape(base.rstrip("/") + LINEAGE_ROUTE)}">all experiments</a></p>'
    )
    broken = lineage.cycle_warnings(edges)  # tags edited into a cycle: drawn and marked, never a 500
    if broken:
        back += (
            '<div class="warnings" style="background:#fff8e1;border:1px solid #ffcc80;padding:4px 14px">'
            "<b>Broken lineage</b><ul>" + "".join(f"<li>{escape(line)}</li>" for line in broken) + "</ul></div>"
        )
    subtitle = f"experiment id {experiment_id} · mlprune {__version__}"
    if current is not None:
        subtitle = f"state {current.info.run_id[:8]} ({current.info.run_name or '?'}), marked in the DAG · " + subtitle
    html = lineage.lineage_html(
        nodes,
        edges,
        title=f"Lineage: {experiment.name}",
        base=base,
        subtitle=subtitle,
        extra_html=back,
        highlight=current.info.run_id if current is not None else None,
    )
    return Response(html, mimetype="text/html")


def lineage_index():
    """Every active experiment with its number of mlprune states and a link to its lineage page."""
    from flask import Response
    from mlflow.entities import ViewType

    from . import lineage

    store = _store()
    experiments, token = [], None
    while True:
        page = store.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=_PAGE, page_token=token)
        experiments.extend(page)
        token = page.token
        if not token:
            break
    base = _ui_base()
    index = base.rstrip("/") + LINEAGE_ROUTE
    rows = []
    counts = _state_counts(store)
    for exp in experiments:
        n = (
            counts.get(exp.experiment_id)
            if counts is not None
            else len(_all_runs(store, exp.experiment_id, f"tags.`{lineage.TAG_KEY}` != ''"))
        )
        n = n or 0
        rows.append(
            f'<tr><td><a class="lineage-link" href="{escape(index + exp.experiment_id)}">{escape(exp.name)}</a></td>'
            f"<td>{escape(exp.experiment_id)}</td><td>{n}</td></tr>"
        )
    html = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>mlprune lineage</title>'
        "<style>body{font-family:Helvetica,Arial,sans-serif;margin:16px 24px}table{border-collapse:collapse}"
        "th,td{border-bottom:1px solid #e0e0e0;padding:4px 12px;text-align:left}th{background:#f5f5f5}"
        "</style></head><body><h1>mlprune lineage</h1>"
        f'<p>Experiments in this tracking store (<a href="{escape(base)}">MLflow UI</a>); '
        "open one to see its DAG of states.</p>"
        "<table><thead><tr><th>experiment</th><th>id</th><th>mlprune states</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></body></html>\n"
    )
    return Response(html, mimetype="text/html")


def add_lineage_routes(app) -> None:
    """Add the lineage pages to a Flask app (MLflow's, normally); idempotent."""
    from mlflow.server.handlers import _add_static_prefix

    route = _add_static_prefix(LINEAGE_ROUTE)
    if any(rule.rule == route for rule in app.url_map.iter_rules()):
        return
    app.add_url_rule(route, "mlprune_lineage_index", lineage_index, methods=["GET"])
    app.add_url_rule(
        route.rstrip("/"), "mlprune_lineage_index_noslash", lineage_index, methods=["GET"], strict_slashes=False
    )
    app.add_url_rule(route + "<experiment_id>", "mlprune_lineage", lineage_page, methods=["GET"])


def create_app(app=None):
    """``mlflow.app`` factory: MLflow's server with the lineage pages added."""
    from mlflow.environment_variables import _MLFLOW_SGI_NAME
    from mlflow.server import app as flask_app

    app = flask_app if app is None else app
    add_lineage_routes(app)
    if _MLFLOW_SGI_NAME.get() == "uvicorn":
        from mlflow.server.fastapi_app import create_fastapi_app

        return create_fastapi_app(app)
    return app


# MlpruneRunContext is made on first access by the module __getattr__ above, invisible to ruff
__all__ = [
    "MlpruneRunContext",  # noqa: F822
    "create_app",
    "add_lineage_routes",
    "lineage_page",
    "lineage_index",
]
