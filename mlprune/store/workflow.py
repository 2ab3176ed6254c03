"""The workflow run: the run a recipe or a sweep works in, beside the states it reaches.

It is not a state. It is named after the recipe, carries the recipe's parameters,
and records ``plan.json`` (every plan node with its key, round, branch and the run
id it reached), ``states.json``, the lineage files and the recipe's figures. It
lives in the states' experiment, so ``mlprune report <experiment>`` finds it.
Under ``mlflow run``, MLflow has already opened a run (in the experiment
``--experiment-name`` names, else MLflow's Default): when that is the states'
experiment it is the workflow run; otherwise a workflow run is opened beside the
states and the two are linked both ways (tags and descriptions).
"""

from __future__ import annotations

import json
import os

from ..names import (
    PARAMS_FILE,
    PLAN_FILE,
    STATES_FILE,
    TAG_HEARTBEAT,
    TAG_KEY,
    TAG_NOTE,
    TAG_RECIPE,
    TAG_RECORD,
    TAG_RUN_NAME,
    TAG_STATES,
    TAG_VERSION,
    TAG_WORKFLOW,
)
from ..version import __version__
from .claims import claim_tags, process_gone
from .ui import mark_model_training

TAG_LAUNCHER = "mlprune.launcher"  # on a workflow run: the `mlflow run` run that started it


class WorkflowRun:
    """`launcher`: the run of `mlflow run` that started this process (default: MLFLOW_RUN_ID)."""

    def __init__(self, store, *, recipe: str, params: dict, launcher: str | None = None):
        from mlflow.entities import Param

        self.store = store
        self.client = store.client
        self.params = params
        launcher = launcher if launcher is not None else os.environ.get("MLFLOW_RUN_ID")
        launcher_run = _launcher_run(store, launcher)
        if launcher_run is not None and launcher_run.info.experiment_id == store.experiment_id:
            self.run_id, self.owned = launcher, False
            # `mlflow run` logged the entry point's own parameters ('' = recipe default) already
            self.client.log_batch(self.run_id, tags=_tags({TAG_RECIPE: recipe, TAG_RUN_NAME: recipe}))
            return
        fail_abandoned_runs(store)
        # the host and pid of this process: a later run that finds it gone marks this run FAILED
        tags = {
            TAG_RECIPE: recipe,
            TAG_VERSION: __version__,
            **{k: v for k, v in claim_tags().items() if k != TAG_HEARTBEAT},
        }
        if launcher_run is not None:
            tags[TAG_LAUNCHER] = launcher
            tags[TAG_NOTE] = (
                f"**mlprune workflow run** of `{recipe}`, started by `mlflow run` "
                f"([its run]({store.ui_link(launcher, launcher_run.info.experiment_id)}))."
            )
        self.run_id = self.client.create_run(store.experiment_id, run_name=recipe, tags=tags).info.run_id
        mark_model_training(self.client, store.experiment_id)  # an experiment made by others opens on its runs too
        self.owned = True
        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        if launcher_run is not None:  # the link back, on the run MLflow opened
            link_launcher(store, launcher, self.run_id, recipe)

    def record(self, states: dict[str, str], files: dict[str, bytes | str] | None = None) -> None:
        """Store {plan node: state run id} as states.json, the parameters, and any other files."""
        payload = {STATES_FILE: json.dumps(states, indent=1), PARAMS_FILE: params_json(self.params)}
        payload.update(files or {})
        self.store.write_files(self.run_id, payload)
        tags = {TAG_STATES: str(len(set(states.values())))}
        if PLAN_FILE in payload:
            tags[TAG_RECORD] = record_digest(payload[PLAN_FILE], self.params)
        self.client.log_batch(self.run_id, tags=_tags(tags))

    @staticmethod
    def find_record(store, recipe: str, digest: str) -> str | None:
        """The FINISHED workflow run of `recipe` whose plan.json and params.json have this digest, or None."""
        tags = {TAG_RECORD: digest, TAG_RECIPE: recipe}
        view = store.view
        if view is not None:
            runs = view.search([store.experiment_id], tags=tags, status="FINISHED", data=False, limit=1)
        else:
            from mlflow.entities import ViewType

            where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
            runs = store.client.search_runs(
                [store.experiment_id],
                f"{where} and attributes.status = 'FINISHED'",
                ViewType.ACTIVE_ONLY,
                max_results=1,
            )
        return runs[0].info.run_id if runs else None

    def end(self, ok: bool) -> None:
        from mlflow.entities import RunStatus

        if self.owned:
            self.client.set_terminated(self.run_id, RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED))


def fail_abandoned_runs(store) -> list[str]:
    """Mark FAILED (the reason in ``mlprune.error``) every RUNNING run of the store's experiment whose
    process on this host is gone (killed, crashed): workflow runs and state claims, which would
    otherwise stay RUNNING forever (a claim is also taken over when its key is next needed).

    Runs of processes on other hosts are marked when a state claim of theirs is taken over
    (`claims.Claims.live_claims`). Returns the run ids marked."""
    runs = store.running()
    marked = []
    for run in runs:
        reason = process_gone(run.data.tags)
        if reason is None:
            continue
        # a state claim gets the words the claim protocol writes when it takes a dead one over
        what = "stale claim taken over" if TAG_KEY in run.data.tags else "abandoned workflow run"
        store.fail(run.info.run_id, f"{what}: {reason}")
        marked.append(run.info.run_id)
    return marked


def _launcher_run(store, launcher: str | None):
    if not launcher:
        return None
    try:
        return store.run(launcher)
    except Exception:  # noqa: BLE001 - not in this store: nothing to link
        return None


def launcher_elsewhere(store, launcher: str | None) -> bool:
    """Is `launcher` a run of this store outside the states' experiment (`mlflow run` without
    --experiment-name puts it in MLflow's Default)? Then it is linked to the workflow run, not one."""
    run = _launcher_run(store, launcher)
    return run is not None and run.info.experiment_id != store.experiment_id


def link_launcher(store, launcher: str, workflow_run_id: str, recipe: str) -> None:
    """On the run `mlflow run` opened (in another experiment): the recipe and a link to the workflow run."""
    note = (
        f"**mlprune**: recipe `{recipe}`; its states and workflow run are in experiment "
        f"`{store.experiment_name}`: [workflow run]({store.ui_link(workflow_run_id)})."
    )
    store.client.log_batch(
        launcher, tags=_tags({TAG_RECIPE: recipe, TAG_RUN_NAME: recipe, TAG_WORKFLOW: workflow_run_id, TAG_NOTE: note})
    )


def params_json(params: dict) -> str:
    return json.dumps(params, indent=1, sort_keys=True, default=str)


def record_digest(plan_json: str | bytes, params: dict) -> str:
    """What identifies a workflow run's record: the states each plan node reached (plan.json), the parameters."""
    import hashlib

    plan = plan_json.encode() if isinstance(plan_json, str) else plan_json
    return hashlib.sha256(plan + b"\0" + params_json(params).encode()).hexdigest()


def _tags(values: dict):
    from mlflow.entities import RunTag

    return [RunTag(k, str(v)) for k, v in values.items()]
