"""The MLflow UI on a study: it opens on the runs table, with the study's columns, not nested.

What MLflow 3.17's UI reads (its JavaScript bundle, ``mlflow/server/js/build``):

- which view an experiment opens in (GenAI traces or model training) is the browser's *workflow
  type*: the URL's ``workflowType`` query parameter (``machine_learning`` or ``genai``), else what
  the browser last chose (local storage ``mlflow.workflowType_v1``), else GenAI. The experiment tag
  ``mlflow.experimentKind`` is what the UI reads when its workflow-type switch is off (earlier 3.x
  releases); mlprune sets it to ``custom_model_development`` on every experiment it creates or
  runs a recipe in, and its URLs carry ``workflowType=machine_learning``;
- a runs-table view (filter, sort, columns) can be shared: the experiment tag
  ``mlflow.sharedViewState.<key>`` holds it as JSON and ``?viewStateShareKey=<key>`` opens it;
- the table nests child runs under their ``mlflow.parentRunId`` only when it is sorted by
  creation time (or neither sorted nor filtered): sorted by a metric it is flat.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from ..names import (
    EXPERIMENT_KIND,
    M_SPARSITY,
    M_TEST_ACCURACY,
    PARAM_BRANCH,
    PARAM_ROUND,
    PARAM_SEED,
    TAG_EXPERIMENT_KIND,
    TAG_SHARED_VIEW_PREFIX,
    UI_VIEW_KEY,
)

WORKFLOW_TYPE = "machine_learning"  # the UI's model-training view
LOCAL_UI = "http://127.0.0.1:5000"  # `mlflow ui` / `mlflow server` on this machine


def ui_base(tracking_uri: str, ui_url: str | None = None) -> str | None:
    """Where the MLflow UI of a store is: ``ui_url``, else the tracking server itself; None for a local store
    (a file or sqlite store has no UI until someone serves it)."""
    if ui_url:
        return ui_url.rstrip("/")
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return None


def column(kind: str, name: str) -> str:
    """A runs-table column as the UI names it: ``params.`seed```."""
    return f"{kind}.`{name}`"


# the UI shows metrics, then params by name; recipe, model and dataset are a click away (Columns)
STUDY_COLUMNS = [
    column("params", PARAM_SEED),
    column("params", PARAM_ROUND),
    column("params", PARAM_BRANCH),
    column("metrics", M_TEST_ACCURACY),
    column("metrics", M_SPARSITY),
]


def states_view(search_filter: str = "") -> dict:
    """The runs-table view of a study: flat (sorted by sparsity, so rounds come in order), the study's columns."""
    return {
        "searchFilter": search_filter,
        "orderByKey": column("metrics", M_SPARSITY),
        "orderByAsc": True,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "modelVersionFilter": "All Runs",
        "datasetsFilter": [],
        "selectedColumns": STUDY_COLUMNS,
        "columnOrder": [],
        "columnWidths": {},
        "runsHiddenMode": "SHOW_ALL",
        "groupBy": None,
        "runListHidden": False,
    }


def mark_model_training(client, experiment_id: str) -> None:
    """The experiment tag older MLflow UIs read to open an experiment on its runs."""
    client.set_experiment_tag(experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)


def write_states_view(store, search_filter: str = "") -> str:
    """Store the study's runs-table view on the store's experiment (and its model-training kind); returns the
    view's share key."""
    mark_model_training(store.client, store.experiment_id)
    store.client.set_experiment_tag(
        store.experiment_id,
        TAG_SHARED_VIEW_PREFIX + UI_VIEW_KEY,
        json.dumps(states_view(search_filter), separators=(",", ":")),
    )
    return UI_VIEW_KEY


def experiment_url(base: str, experiment_id: str) -> str:
    """The experiment in the UI, opened on its runs."""
    return f"{base.rstrip('/')}/#/experiments/{quote(str(experiment_id))}/runs?workflowType={WORKFLOW_TYPE}"


def states_url(base: str, experiment_id: str, key: str = UI_VIEW_KEY) -> str:
    """The experiment's runs table in the study's view (`write_states_view`)."""
    return f"{experiment_url(base, experiment_id)}&viewStateShareKey={quote(key)}"
