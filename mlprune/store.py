"""The state store: the only module that talks to MLflow.

A state is one MLflow run in one experiment (one experiment = one study).
Tags carry lineage and the content key; artifacts carry the tensors as
safetensors and the resolved spec as JSON; nothing is pickled, so loading a
state cannot run code.

A run is created RUNNING with its key already tagged (that RUNNING run is the
state's *claim*, with a heartbeat tag), receives its artifacts and metrics, and
only then is set FINISHED. A state that fails is set FAILED. Only FINISHED runs
are cache hits.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
import torch  # noqa: E402
from mlflow.entities import Metric, RunStatus, RunTag, ViewType  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from safetensors.torch import load as load_safetensors  # noqa: E402
from safetensors.torch import save as save_safetensors  # noqa: E402

from . import __version__  # noqa: E402
from .errors import SpecError  # noqa: E402

WEIGHTS_FILE = "weights.safetensors"
MASKS_FILE = "masks.safetensors"
STATE_FILE = "state.json"

TAG_KEY = "mlprune.key"
TAG_KIND = "mlprune.kind"
TAG_ROOT = "mlprune.root"
TAG_PARENT_PREFIX = "mlprune.parent."
TAG_VERSION = "mlprune.version"
TAG_HEARTBEAT = "mlprune.heartbeat"
TAG_WORKFLOW = "mlprune.workflow"
TAG_PARENT_RUN = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
TAG_NOTE = "mlflow.note.content"

DEFAULT_EXPERIMENT = "mlprune"


@dataclass(frozen=True)
class StoredState:
    """What a state run holds, read back from the store."""

    run_id: str
    weights: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    spec: dict
    tags: dict[str, str]


def resolve_experiment_name(name: str | None = None) -> str | None:
    """The experiment the states go into: argument, then MLflow's env vars, then 'mlprune'.

    Returns None when MLFLOW_EXPERIMENT_ID names the experiment by id.
    """
    if name:
        return name
    # `mlflow run` without --experiment-name sets id 0 (MLflow's "Default"): that is no choice
    if os.environ.get("MLFLOW_EXPERIMENT_ID") not in (None, "", "0"):
        return None
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def _local_path(uri: str) -> Path | None:
    """The local directory behind an artifact URI, or None if it is remote."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and uri:
        return Path(uri)
    return None


class Store:
    """One MLflow experiment seen as a content-addressed store of states."""

    def __init__(self, experiment: str | None = None, *, tracking_uri: str | None = None,
                 experiment_id: str | None = None, cache_size: int = 16):
        self.tracking_uri = tracking_uri or mlflow.get_tracking_uri()
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        self._experiment = experiment
        self._experiment_id = experiment_id
        self._cache: OrderedDict[str, StoredState] = OrderedDict()
        self._cache_size = cache_size
        self._specs: dict[str, dict] = {}  # finished states never change: safe to keep
        self._lock = threading.Lock()

    # ---- experiments ---------------------------------------------------------------
    @property
    def experiment_id(self) -> str:
        """Resolved (and created if missing) on first use: reading a run by id needs none."""
        if self._experiment_id is None:
            self._experiment_id = self._experiment_id_for(self._experiment)
        return self._experiment_id

    def _experiment_id_for(self, experiment: str | None) -> str:
        name = resolve_experiment_name(experiment)
        if name is None:
            return os.environ["MLFLOW_EXPERIMENT_ID"]
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except mlflow.exceptions.MlflowException:
            # another process created it between our lookup and our create
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    @property
    def experiment_name(self) -> str:
        return self.client.get_experiment(self.experiment_id).name

    # ---- lookups -------------------------------------------------------------------
    def find(self, key: str) -> str | None:
        """Run id of the FINISHED state with this key, or None."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TAG_KEY}` = '{key}' and attributes.status = 'FINISHED'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1,
            order_by=["attributes.start_time ASC"],
        )
        return runs[0].info.run_id if runs else None

    def find_claims(self, key: str) -> list:
        """RUNNING runs holding a claim on this key, oldest first."""
        return self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TAG_KEY}` = '{key}' and attributes.status = 'RUNNING'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=50,
            order_by=["attributes.start_time ASC"],
        )

    def states(self, finished_only: bool = True) -> list:
        """All state runs of the experiment (mlflow Run objects)."""
        status = " and attributes.status = 'FINISHED'" if finished_only else ""
        return self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TAG_KEY}` != ''{status}",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=50000,
            order_by=["attributes.start_time ASC"],
        )

    def runs(self) -> list:
        """Every active run of the experiment, states or not (reports say what they skip)."""
        return self.client.search_runs([self.experiment_id], run_view_type=ViewType.ACTIVE_ONLY,
                                       max_results=50000, order_by=["attributes.start_time ASC"])

    def read_artifact(self, run_id: str, name: str) -> bytes:
        """One artifact file of any run of the store; a one-line SpecError if it has none."""
        return self._artifact_bytes(self.run(run_id), name)

    def log_figures(self, run_id: str, figures: dict) -> None:
        """Log matplotlib figures on a run ({artifact path: Figure}) with MLflow's log_figure."""
        for name, figure in figures.items():
            self.client.log_figure(run_id, figure, name)

    def run(self, run_id: str):
        try:
            return self.client.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            raise SpecError(f"run {run_id!r} not found in the tracking store {self.tracking_uri}") from None

    def state_run(self, run_id: str):
        """The run of a FINISHED mlprune state, or a one-line SpecError."""
        run = self.run(run_id)
        if TAG_KEY not in run.data.tags:
            raise SpecError(f"run {run_id!r} is not an mlprune state (it has no {TAG_KEY} tag)")
        if run.info.status != "FINISHED":
            raise SpecError(f"run {run_id!r} is an mlprune state but {run.info.status}, not FINISHED")
        return run

    # ---- writing -------------------------------------------------------------------
    def create(self, *, key: str, kind: str, name: str, parent_run_id: str | None,
               root_run_id: str | None, extra_parents: dict[str, str], note: str = "") -> str:
        """Create the RUNNING run that will hold a state (its claim)."""
        tags = {
            TAG_KEY: key,
            TAG_KIND: kind,
            TAG_VERSION: __version__,
            TAG_HEARTBEAT: str(time.time()),
        }
        if parent_run_id:
            tags[TAG_PARENT_RUN] = parent_run_id
        if root_run_id:
            tags[TAG_ROOT] = root_run_id
        for role, run_id in extra_parents.items():
            tags[TAG_PARENT_PREFIX + role] = run_id
        workflow = os.environ.get("MLFLOW_RUN_ID")
        if workflow:
            tags[TAG_WORKFLOW] = workflow
        if note:
            tags[TAG_NOTE] = note
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=name)
        return run.info.run_id

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def heartbeat(self, run_id: str) -> None:
        self.client.set_tag(run_id, TAG_HEARTBEAT, str(time.time()))

    def finish(self, run_id: str, *, spec: dict, masks: dict[str, torch.Tensor],
               weights: dict[str, torch.Tensor] | None, metrics: dict[str, float],
               history: dict[str, list[float]] | None = None) -> None:
        """Write a state's artifacts and metrics, then mark its run FINISHED.

        `weights=None` stores a prune-only state that references its parent's
        weights (state.json's `weights_from`); loading resolves them.
        """
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        for name, values in (history or {}).items():
            batch += [Metric(name, float(v), now, step) for step, v in enumerate(values, start=1)]
        for start in range(0, len(batch), 1000):  # MLflow's log_batch limit
            self.client.log_batch(run_id, metrics=batch[start:start + 1000])
        with tempfile.TemporaryDirectory(prefix="mlprune-") as tmp:
            tmp = Path(tmp)
            if weights is not None:
                (tmp / WEIGHTS_FILE).write_bytes(save_safetensors(_contiguous(weights)))
            (tmp / MASKS_FILE).write_bytes(save_safetensors(_contiguous(masks)))
            (tmp / STATE_FILE).write_text(json.dumps(spec, indent=1, sort_keys=True))
            self.client.log_artifacts(run_id, str(tmp))
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))

    def fail(self, run_id: str, reason: str = "") -> None:
        """Mark a state run FAILED so that it is never taken for a finished state."""
        try:
            if reason:
                self.client.set_tag(run_id, "mlprune.error", reason[:4000])
            self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        except Exception:  # the store itself may be what failed; the run stays non-FINISHED
            pass

    def kill(self, run_id: str, reason: str = "") -> None:
        if reason:
            self.client.set_tag(run_id, "mlprune.error", reason[:4000])
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))

    # ---- reading -------------------------------------------------------------------
    def _artifact_bytes(self, run, name: str) -> bytes:
        local = _local_path(run.info.artifact_uri)
        if local is not None and (local / name).exists():
            return (local / name).read_bytes()
        if local is not None:  # a local artifact store without the file: nothing to download
            raise SpecError(f"run {run.info.run_id} has no artifact {name!r}")
        with tempfile.TemporaryDirectory(prefix="mlprune-") as tmp:
            try:
                path = self.client.download_artifacts(run.info.run_id, name, tmp)
            except Exception as error:
                raise SpecError(f"state {run.info.run_id} has no artifact {name!r} ({error})") from None
            return Path(path).read_bytes()

    def spec(self, run_id: str) -> dict:
        """A FINISHED state's resolved spec (state.json), without its tensors."""
        with self._lock:
            if run_id in self._specs:
                return self._specs[run_id]
        spec = json.loads(self._artifact_bytes(self.state_run(run_id), STATE_FILE))
        with self._lock:
            self._specs[run_id] = spec
        return spec

    def load(self, run_id: str) -> StoredState:
        """A FINISHED state's weights (resolved), masks, spec and tags."""
        with self._lock:
            if run_id in self._cache:
                self._cache.move_to_end(run_id)
                return self._cache[run_id]
        run = self.state_run(run_id)
        spec = self.spec(run_id)
        masks = load_safetensors(self._artifact_bytes(run, MASKS_FILE))
        if spec.get("weights_from"):
            source = self.load(spec["weights_from"]).weights
            weights = {name: (t * masks[name] if name in masks else t) for name, t in source.items()}
        else:
            weights = load_safetensors(self._artifact_bytes(run, WEIGHTS_FILE))
        state = StoredState(run_id, weights, masks, spec, dict(run.data.tags))
        with self._lock:
            self._cache[run_id] = state
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return state

    def artifact_files(self, run_id: str) -> dict[str, bytes]:
        """The three artifact files of a state, weights resolved (for `mlprune export`)."""
        state = self.load(run_id)
        run = self.run(run_id)
        return {
            WEIGHTS_FILE: save_safetensors(_contiguous(state.weights)),
            MASKS_FILE: save_safetensors(_contiguous(state.masks)),
            STATE_FILE: self._artifact_bytes(run, STATE_FILE),
        }

    def ui_link(self, run_id: str) -> str:
        """Relative link to a run in the MLflow UI (used in run descriptions)."""
        return f"#/experiments/{self.experiment_id}/runs/{run_id}"


def open_experiment(ref: str, *, tracking_uri: str | None = None) -> Store:
    """The Store of an existing experiment, by name or id; a one-line SpecError if there is none."""
    store = Store(tracking_uri=tracking_uri)
    found = store.client.get_experiment_by_name(str(ref))
    if found is None and str(ref).isdigit():
        try:
            found = store.client.get_experiment(str(ref))
        except mlflow.exceptions.MlflowException:
            found = None
    if found is None or found.lifecycle_stage != "active":
        names = [e.name for e in store.client.search_experiments(max_results=50)]
        raise SpecError(f"no experiment {ref!r} in the tracking store {store.tracking_uri}; "
                        f"experiments: {', '.join(names) or 'none'}")
    return Store(found.name, tracking_uri=store.tracking_uri, experiment_id=found.experiment_id)


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.detach().cpu().contiguous() for name, t in tensors.items()}


class WorkflowRun:
    """The run an entry point works in (MLflow's own under `mlflow run`, else one we open).

    It is not a state: it records the recipe, its parameters and which state
    each plan node reached, and carries the lineage figures.
    """

    def __init__(self, store: Store, *, recipe: str, params: dict):
        self.store = store
        self.client = store.client
        self.run_id = os.environ.get("MLFLOW_RUN_ID")
        self.owned = self.run_id is None
        if self.owned:
            self.run_id = self.client.create_run(store.experiment_id, run_name=f"{recipe} (workflow)",
                                                 tags={"mlprune.recipe": recipe, TAG_VERSION: __version__}).info.run_id
            from mlflow.entities import Param

            self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        else:  # `mlflow run` logged the entry point's own parameters ('' = recipe default) already
            self.client.set_tag(self.run_id, "mlprune.recipe", recipe)
        self.params = params

    def record(self, states: dict[str, str], files: dict[str, bytes | str] | None = None) -> None:
        """Store {plan node: state run id} as states.json, plus any other files (figures)."""
        with tempfile.TemporaryDirectory(prefix="mlprune-") as tmp:
            tmp = Path(tmp)
            (tmp / "states.json").write_text(json.dumps(states, indent=1))
            (tmp / "params.json").write_text(json.dumps(self.params, indent=1, sort_keys=True))
            for name, content in (files or {}).items():
                target = tmp / name
                target.parent.mkdir(parents=True, exist_ok=True)  # e.g. figures/x.png
                if isinstance(content, str):
                    target.write_text(content)
                else:
                    target.write_bytes(content)
            self.client.log_artifacts(self.run_id, str(tmp))

    def end(self, ok: bool) -> None:
        if self.owned:
            status = RunStatus.FINISHED if ok else RunStatus.FAILED
            self.client.set_terminated(self.run_id, RunStatus.to_string(status))
