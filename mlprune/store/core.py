"""`Store`: one MLflow experiment seen as a content-addressed store of states.

A state is one MLflow run: created RUNNING with its key tagged (its claim, see
`claims`), given its artifacts, params and metrics, and only then set FINISHED.
A state that fails is set FAILED; only FINISHED runs without an
``mlprune.invalid`` tag are states. Every read is checked (`artifacts`): a state
whose files or key do not match what was recorded is an `IntegrityError`, and
`invalidate` marks it so that the next run recomputes it.

Why one file: `Store` is one class over one experiment whose reads and writes share its caches
(verified specs, finished runs, loaded states) and their lock; what is not the store's own state
lives beside it (claims, artifacts, experiments, checkpoints, workflow runs).
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

from ..errors import SpecError
from ..names import (
    MASKS_FILE,
    STATE_FILE,
    TAG_ERROR,
    TAG_INVALID,
    TAG_KEY,
    TAG_KIND,
    TAG_PARENT_PREFIX,
    TAG_PARENT_RUN,
    TAG_ROOT,
    TAG_VERSION,
    TAG_WORKFLOW,
    WEIGHTS_FILE,
)
from ..version import __version__
from . import artifacts
from .artifacts import IntegrityError
from .claims import Claims, claim_tags
from .experiments import check_sqlite_file, one_line, open_client, read_only, sqlite_path, unknown_experiment
from .experiments import experiment_id as resolve_experiment_id
from .experiments import tracking_uri as default_tracking_uri
from .lookups import Lookups
from .sqlview import SqliteView

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# against a tracking server MLflow prints a progress bar per artifact read and a URL per run ended:
# noise in the output of every state (and of every dask worker)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


@dataclass(frozen=True)
class Record:
    """What a state's run records besides its files: final metrics, per-epoch histories ({name: [(step,
    value)]}), params and tags."""

    metrics: dict[str, float]
    history: dict[str, list] | None = None
    params: dict | None = None
    tags: dict | None = None


@dataclass(frozen=True)
class StoredState:
    """What a state run holds, read back from the store (integrity checked)."""

    run_id: str
    weights: dict
    masks: dict
    spec: dict
    tags: dict


def recomputed_key(spec: dict) -> str | None:
    """The key a state's spec (state.json) determines, or None for a spec without one."""
    from ..spec.keys import root_key, state_key

    if spec.get("kind") == "init" or not spec.get("parent_key"):
        return root_key(spec["root"]) if "root" in spec and not spec.get("steps") else None
    return state_key(spec["parent_key"], spec["steps"], {r: s["key"] for r, s in (spec.get("inputs") or {}).items()})


class Store(Lookups):
    """One MLflow experiment of one tracking store, as a store of states.

    ``create=False``: read-only use; a missing experiment is a one-line error, never created.
    """

    def __init__(
        self,
        experiment: str | None = None,
        *,
        tracking_uri: str | None = None,
        experiment_id: str | None = None,
        cache_size: int = 16,
        create: bool = True,
    ):
        self.tracking_uri = default_tracking_uri(tracking_uri)
        self._client = None
        self._client_lock = threading.Lock()
        self._view: SqliteView | None = None
        self._view_final = False  # whether `_view` is the answer for good
        path = sqlite_path(self.tracking_uri)
        if path is not None and path.exists():
            # an existing sqlite store: its look-ups read the file (`view`); MLflow is opened on first write
            check_sqlite_file(path)
        else:
            self._client = open_client(self.tracking_uri)  # a server (checked now), or a store to create
        self._experiment = experiment
        self._experiment_id = experiment_id
        self._create = create
        self.claims = Claims(self)
        self._cache: OrderedDict[str, StoredState] = OrderedDict()
        self._cache_size = cache_size
        self._specs: dict[str, dict] = {}  # verified specs of FINISHED states: they never change
        self._runs: dict[str, object] = {}  # FINISHED runs seen by a look-up: their info never changes
        self._created: dict[str, tuple[str, dict]] = {}  # run id -> (artifact URI, tags) of runs we created
        self._layouts: dict[str, tuple | None] = {}  # root run id -> its (weights, masks) layout, None if broken
        self._lock = threading.Lock()

    # ---- MLflow and the sqlite view ------------------------------------------------------------
    @property
    def client(self):
        """MLflow's client on the store, opened on first use (a cached run may never need it)."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = open_client(self.tracking_uri)
        return self._client

    @property
    def read_only(self) -> bool:
        """Whether this is a local sqlite store that cannot be written (reads work; writes are one line)."""
        path = sqlite_path(self.tracking_uri)
        return path is not None and path.exists() and read_only(path)

    @property
    def view(self) -> SqliteView | None:
        """Reads of a local sqlite store without MLflow (`sqlview`), or None (servers, other schemas)."""
        if not self._view_final:
            self._view = SqliteView.open(self.tracking_uri)
            # no view yet of a store MLflow has not created (or migrated) yet: asked again later
            self._view_final = (
                self._view is not None or self._client is not None or sqlite_path(self.tracking_uri) is None
            )
        return self._view

    # ---- experiments -----------------------------------------------------------------------
    @property
    def experiment_id(self) -> str:
        """Resolved (and created if missing, unless read-only) on first use."""
        if self._experiment_id is None:
            found = self._experiment_from_view()
            if found is not None:
                self._experiment_id = found
                return found
            try:
                self._experiment_id = resolve_experiment_id(
                    self.client, self.tracking_uri, self._experiment, create=self._create
                )
            except SpecError:
                raise
            except Exception as error:  # noqa: BLE001 - any store failure is one line for the user
                raise SpecError(f"tracking store {self.tracking_uri}: {one_line(error)}") from None
        return self._experiment_id

    def _experiment_from_view(self) -> str | None:
        """The id of the named experiment when the view finds it active (else MLflow decides: creates
        it, or says why not)."""
        from .experiments import resolve_experiment_name

        view = self.view
        if view is None:
            return None
        name = resolve_experiment_name(self._experiment)
        if name is None:  # MLFLOW_EXPERIMENT_ID
            return None
        found = view.experiment(name=name)
        return found.experiment_id if found is not None and found.lifecycle_stage == "active" else None

    @property
    def experiment_name(self) -> str:
        view = self.view
        found = view.experiment(experiment_id=self.experiment_id) if view is not None else None
        return found.name if found is not None else self.client.get_experiment(self.experiment_id).name

    # ---- writing ----------------------------------------------------------------------------
    def create(
        self,
        *,
        key: str,
        kind: str,
        name: str,
        parent_run_id: str | None,
        root_run_id: str | None,
        extra_parents: dict[str, str],
        workflow: str | None = None,
        tags: dict | None = None,
    ) -> str:
        """Create the RUNNING run that will hold a state (its claim)."""
        all_tags = {TAG_KEY: key, TAG_KIND: kind, TAG_VERSION: __version__, **claim_tags(), **(tags or {})}
        if parent_run_id:
            all_tags[TAG_PARENT_RUN] = parent_run_id
        if root_run_id:
            all_tags[TAG_ROOT] = root_run_id
        for role, run_id in extra_parents.items():
            all_tags[TAG_PARENT_PREFIX + role] = run_id
        if workflow:
            all_tags[TAG_WORKFLOW] = workflow
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name)
        with self._lock:
            self._created[run.info.run_id] = (run.info.artifact_uri, all_tags)
        return run.info.run_id

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_batch(self, run_id: str, metrics: list, params: list, tags: list) -> None:
        """MLflow entities in as few log_batch calls as its limits allow (one per state, usually:
        1000 entities, of which 1000 metrics, 100 params, 100 tags)."""
        metrics, params, tags = list(metrics), list(params), list(tags)
        while metrics or params or tags:
            room = 1000
            batch_params, params = params[:100], params[100:]
            room -= len(batch_params)
            batch_tags, tags = tags[: min(100, room)], tags[min(100, room) :]
            room -= len(batch_tags)
            batch_metrics, metrics = metrics[:room], metrics[room:]
            self.client.log_batch(run_id, metrics=batch_metrics, params=batch_params, tags=batch_tags)

    def _artifact_repo(self, run_id: str):
        """The run's artifact repository, without MlflowClient.log_artifacts' get_run per run."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
        from mlflow.utils.uri import add_databricks_profile_info_to_artifact_uri

        created = self._created.get(run_id)
        uri = created[0] if created else self.run(run_id).info.artifact_uri
        return get_artifact_repository(
            add_databricks_profile_info_to_artifact_uri(uri, self.tracking_uri), tracking_uri=self.tracking_uri
        )

    def write_files(self, run_id: str, files: dict[str, bytes | str]) -> None:
        """Write artifact files (``{relative path: content}``) of a run; a one-line SpecError if it cannot."""
        try:
            self._write_files(run_id, files)
        except OSError as error:
            where = getattr(error, "filename", None) or self._created.get(run_id, ("?",))[0]
            raise SpecError(
                f"cannot write the artifacts of run {run_id} to {where}: {error.strerror or one_line(error)}"
            ) from None

    def _write_files(self, run_id: str, files: dict[str, bytes | str]) -> None:
        created = self._created.get(run_id)
        local = artifacts.local_path(created[0]) if created else None
        if local is not None:  # a local artifact store: write in place (the run is not FINISHED yet)
            for name, content in files.items():
                target = local / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content.encode() if isinstance(content, str) else content)
            return
        with tempfile.TemporaryDirectory(prefix="mlprune-") as tmp:
            for name, content in files.items():
                target = Path(tmp) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content.encode() if isinstance(content, str) else content)
            if created:
                self._artifact_repo(run_id).log_artifacts(tmp)
            else:
                self.client.log_artifacts(run_id, tmp)

    def delete_artifacts(self, run_id: str, path: str) -> None:
        """Delete a run's artifact file or folder (recursively); stores that cannot delete keep it."""
        self._artifact_repo(run_id).delete_artifacts(path)

    def finish(
        self,
        run_id: str,
        *,
        spec: dict,
        masks: dict,
        weights: dict | None,
        record: Record,
        extra_files: dict[str, bytes] | None = None,
    ) -> str:
        """Write a state's artifacts, then its params, metrics and tags, then mark its run FINISHED;
        returns the run id of the key's FINISHED state: ours, or another run's that finished first
        (ours is then KILLED; ClaimLost if our claim was taken over).

        `weights=None` stores a prune-only state that references its parent's weights (state.json's
        `weights_from`); loading resolves them. `record`: its metrics, histories, params and tags.
        """
        from mlflow.entities import Metric, Param, RunStatus, RunTag

        files = artifacts.state_files(spec, masks, weights, extra_files)
        self.write_files(run_id, files)
        now = int(time.time() * 1000)
        metric_list = [Metric(k, float(v), now, 0) for k, v in record.metrics.items()]
        for name, values in (record.history or {}).items():
            metric_list += [Metric(name, float(v), now, int(step)) for step, v in values]
        param_list = [Param(k, str(v)[:6000]) for k, v in (record.params or {}).items()]
        tag_list = [RunTag(k, str(v)) for k, v in {**(record.tags or {}), **artifacts.hash_tags(files)}.items()]
        self.log_batch(run_id, metric_list, param_list, tag_list)
        key = spec.get("key")
        winner = self.claims.settle(run_id, key, before=True)  # never two FINISHED runs for one key
        if winner == run_id:
            self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
            winner = self.claims.settle(run_id, key, before=False)
        if winner == run_id and masks is not None:
            self._remember(run_id, json.loads(files[STATE_FILE]), masks, weights)
        elif winner == run_id:
            with self._lock:
                self._specs[run_id] = json.loads(files[STATE_FILE])
                self.claims.computed.add(run_id)
            self._created.pop(run_id, None)
        return winner

    def _remember(self, run_id: str, spec: dict, masks: dict, weights: dict | None) -> None:
        """Keep what finish() just wrote: the state's next load() (its children's) reads no store."""
        import torch

        created = self._created.pop(run_id, None)
        self.claims.beats.pop(run_id, None)
        with self._lock:
            self._specs[run_id] = spec
            self.claims.computed.add(run_id)
            source = self._cache.get(spec.get("weights_from")) if weights is None else None
        if weights is None and source is None:
            return  # a prune-only state whose parent is not in memory: resolved on load
        masks = {name: t.detach().to(torch.bool).cpu().clone() for name, t in masks.items()}
        if weights is None:
            weights = artifacts.shared_weights(source.weights, masks, spec.get("zeroed"))
        else:
            weights = {name: t.detach().cpu().clone().contiguous() for name, t in weights.items()}
        tags = dict(created[1]) if created else {}
        self._keep(StoredState(run_id, weights, masks, spec, tags))

    def _keep(self, state: StoredState) -> None:
        with self._lock:
            self._cache[state.run_id] = state
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def fail(self, run_id: str, reason: str = "") -> None:
        """Mark a state run FAILED so that it is never taken for a finished state."""
        from mlflow.entities import RunStatus

        self._created.pop(run_id, None)
        self.claims.beats.pop(run_id, None)
        try:
            if reason:
                self.client.set_tag(run_id, TAG_ERROR, reason[:4000])
            self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        except Exception:  # the store itself may be what failed; the run stays non-FINISHED
            pass

    def invalidate(self, run_id: str, reason: str) -> None:
        """Mark a FINISHED state that failed its integrity check: never used again (FAILED + mlprune.invalid)."""
        from mlflow.entities import RunStatus

        with self._lock:
            self._cache.pop(run_id, None)
            self._specs.pop(run_id, None)
            self._runs.pop(run_id, None)
        self.set_tags(run_id, {TAG_INVALID: reason[:4000]})
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))

    # ---- reading ----------------------------------------------------------------------------
    def _artifact_bytes(self, run, name: str) -> bytes:
        local = artifacts.local_path(run.info.artifact_uri)
        if local is not None:  # a local artifact store: read in place, nothing to download
            try:
                return (local / name).read_bytes()
            except FileNotFoundError:
                raise SpecError(f"run {run.info.run_id} has no artifact {name!r}") from None
            except OSError as error:
                raise SpecError(f"run {run.info.run_id}: cannot read {name}: {one_line(error)}") from None
        with tempfile.TemporaryDirectory(prefix="mlprune-") as tmp:
            try:
                path = self.client.download_artifacts(run.info.run_id, name, tmp)
            except Exception as error:  # noqa: BLE001
                raise SpecError(f"state {run.info.run_id} has no artifact {name!r} ({one_line(error)})") from None
            return Path(path).read_bytes()

    def read_artifact(self, run_id: str, name: str) -> bytes:
        """One artifact file of any run of the store; a one-line SpecError if it has none."""
        return self._artifact_bytes(self.run(run_id), name)

    def state_file(self, run_id: str, name: str) -> bytes:
        """One file of a state (an analysis's results, predictions...), checked against its recorded hash."""
        run = self.state_run(run_id)
        return self._state_file(run, name, self.spec(run_id))

    def _state_file(self, run, name: str, spec: dict | None = None) -> bytes:
        """A state's file, checked against its recorded hash; a missing file is an IntegrityError too."""
        try:
            content = self._artifact_bytes(run, name)
        except SpecError as error:
            raise IntegrityError(f"state {run.info.run_id}: {name} is missing ({error})") from None
        artifacts.verify_file(run.info.run_id, name, content, run.data.tags, spec)
        return content

    def spec(self, run_id: str) -> dict:
        """A FINISHED state's resolved spec (state.json), checked against its hash and key."""
        with self._lock:
            if run_id in self._specs:
                return self._specs[run_id]
        run = self.state_run(run_id)
        content = self._state_file(run, STATE_FILE)
        try:
            spec = json.loads(content)
        except ValueError:
            raise IntegrityError(f"state {run_id}: state.json is not valid JSON") from None
        key = run.data.tags.get(TAG_KEY)
        recomputed = recomputed_key(spec)
        if spec.get("key") != key or (recomputed is not None and recomputed != key):
            raise IntegrityError(
                f"state {run_id}: its key tag {key} does not match the key its state.json "
                f"determines ({recomputed or spec.get('key')})"
            )
        with self._lock:
            self._specs[run_id] = spec
        return spec

    def load(self, run_id: str) -> StoredState:
        """A FINISHED state's weights (resolved), masks, spec and tags, integrity checked."""
        with self._lock:
            if run_id in self._cache:
                self._cache.move_to_end(run_id)
                return self._cache[run_id]
        run = self.state_run(run_id)
        spec = self.spec(run_id)
        if spec.get("analysis"):
            raise SpecError(f"state {run_id} is an analysis ({spec['kind']}): it holds results, not a network")
        contents = {MASKS_FILE: self._state_file(run, MASKS_FILE, spec)}
        if not spec.get("weights_from"):
            contents[WEIGHTS_FILE] = self._state_file(run, WEIGHTS_FILE, spec)
        self._check_tensors(run_id, spec, contents)
        masks = artifacts.tensors_from(contents[MASKS_FILE], run_id=run_id, name=MASKS_FILE)
        if spec.get("weights_from"):
            weights = artifacts.shared_weights(self.load(spec["weights_from"]).weights, masks, spec.get("zeroed"))
        else:
            weights = artifacts.tensors_from(contents[WEIGHTS_FILE], run_id=run_id, name=WEIGHTS_FILE)
        for name, mask in masks.items():
            if name not in weights or tuple(weights[name].shape) != tuple(mask.shape):
                raise IntegrityError(f"state {run_id}: mask {name!r} does not fit its weights")
        state = StoredState(run_id, weights, masks, spec, dict(run.data.tags))
        self._keep(state)
        return state

    def verify(self, run_id: str, verified: set | None = None) -> None:
        """An IntegrityError unless the state's files and key are as recorded: every file is read and
        hashed (no tensor is parsed: a cached run verifies its states without loading torch).

        `verified`: run ids already verified in this pass (not read again; `run_id` is added)."""
        if verified is not None and run_id in verified:
            return
        with self._lock:
            self._cache.pop(run_id, None)
            self._specs.pop(run_id, None)
        spec = self.spec(run_id)  # state.json against its hash, its key against the tag
        run = self.state_run(run_id)
        recorded = dict(spec.get("files") or {})
        if not spec.get("analysis"):
            expected = {MASKS_FILE} | (set() if spec.get("weights_from") else {WEIGHTS_FILE})
            missing = expected - set(recorded)
            if missing:
                raise IntegrityError(f"state {run_id}: state.json records no SHA-256 for {sorted(missing)[0]}")
        contents = {}
        for name in recorded:
            content = self._state_file(run, name, spec)
            if name in (MASKS_FILE, WEIGHTS_FILE):
                contents[name] = content
        if not spec.get("analysis"):
            self._check_tensors(run_id, spec, contents)
        if spec.get("weights_from"):  # a prune-only state's weights are another state's file
            try:
                self.verify(spec["weights_from"], verified)
            except SpecError as error:
                raise IntegrityError(f"state {run_id}: the state whose weights it shares is broken ({error})") from None
        if verified is not None:
            verified.add(run_id)

    def _check_tensors(self, run_id: str, spec: dict, contents: dict[str, bytes]) -> None:
        """The contents of a state's tensor files (`artifacts.check_masks`, `check_layout`): an IntegrityError
        naming the run and tensor unless its masks are bool masks and its tensors are its root's."""
        masks = artifacts.tensor_layout(contents[MASKS_FILE], run_id=run_id, name=MASKS_FILE)[0]
        weights = (
            artifacts.tensor_layout(contents[WEIGHTS_FILE], run_id=run_id, name=WEIGHTS_FILE)[0]
            if WEIGHTS_FILE in contents
            else None
        )
        is_root = not spec.get("parent_key")
        artifacts.check_masks(run_id, contents[MASKS_FILE], masks, all_kept=is_root)
        if is_root:
            artifacts.check_root_layout(run_id, weights or {}, masks)
            with self._lock:
                self._layouts[run_id] = (weights or {}, masks)
            return
        root_run = spec.get("root_run")
        reference = self._root_layout(root_run)
        if reference is None:  # the root is gone or broken: its own check says so
            return
        artifacts.check_layout(run_id, MASKS_FILE, masks, reference[1], root_run)
        if weights is not None:
            artifacts.check_layout(run_id, WEIGHTS_FILE, weights, reference[0], root_run)

    def _root_layout(self, root_run: str | None) -> tuple | None:
        """(weights, masks) layout of a root state, checked as a root; None when it cannot be read or is broken."""
        if not root_run:
            return None
        with self._lock:
            if root_run in self._layouts:
                return self._layouts[root_run]
        try:
            spec = self.spec(root_run)
            run = self.state_run(root_run)
            if spec.get("parent_key"):
                raise SpecError("not a root")
            self._check_tensors(
                root_run, spec, {name: self._state_file(run, name, spec) for name in (MASKS_FILE, WEIGHTS_FILE)}
            )
        except SpecError:
            with self._lock:
                self._layouts[root_run] = None
        with self._lock:
            return self._layouts.get(root_run)

    def check_all(self, *, repair: bool = False, progress=None) -> tuple[int, list[tuple[str, str]]]:
        """(states checked, [(run id, why it is broken)]) over the experiment's FINISHED states;
        with `repair` each broken one is marked invalid (the next run that needs it recomputes it)."""
        broken, verified = [], set()
        runs = self.states()
        for index, run in enumerate(runs, start=1):
            try:
                self.verify(run.info.run_id, verified)
            except SpecError as error:
                broken.append((run.info.run_id, str(error)))
                if repair:
                    self.invalidate(run.info.run_id, str(error))
            if progress is not None:
                progress(f"[{index}/{len(runs)}] {run.info.run_id[:8]}")
        return len(runs), broken

    def artifact_files(self, run_id: str) -> dict[str, bytes]:
        """The three artifact files of a state, weights resolved (for `mlprune export`), verified."""
        state = self.load(run_id)
        return {
            WEIGHTS_FILE: artifacts.tensors_bytes(state.weights),
            MASKS_FILE: artifacts.tensors_bytes(state.masks),
            STATE_FILE: self._state_file(self.state_run(run_id), STATE_FILE),
        }

    def log_figures(self, run_id: str, figures: dict) -> None:
        """Log matplotlib figures on a run ({artifact path: Figure}) with MLflow's log_figure."""
        for name, figure in figures.items():
            self.client.log_figure(run_id, figure, name)

    def ui_link(self, run_id: str, experiment_id: str | None = None) -> str:
        """Relative link to a run in the MLflow UI (used in run descriptions)."""
        return f"#/experiments/{experiment_id or self.experiment_id}/runs/{run_id}"


def open_experiment(ref: str, *, tracking_uri: str | None = None) -> Store:
    """The Store of an existing experiment, by name or id; a one-line SpecError if there is none."""
    probe = Store(tracking_uri=tracking_uri, create=False)
    view = probe.view
    if view is not None:
        found = view.experiment(name=str(ref)) or (
            view.experiment(experiment_id=str(ref)) if str(ref).isdigit() else None
        )
        if found is not None and found.lifecycle_stage == "active":
            return Store(found.name, tracking_uri=probe.tracking_uri, experiment_id=found.experiment_id, create=False)
        raise unknown_experiment(ref, probe.tracking_uri, [e.name for e in view.experiments()])
    import mlflow

    client = probe.client
    found = client.get_experiment_by_name(str(ref))
    if found is None and str(ref).isdigit():
        try:
            found = client.get_experiment(str(ref))
        except mlflow.exceptions.MlflowException:
            found = None
    if found is None or found.lifecycle_stage != "active":
        raise unknown_experiment(ref, probe.tracking_uri, [e.name for e in client.search_experiments(max_results=1000)])
    return Store(found.name, tracking_uri=probe.tracking_uri, experiment_id=found.experiment_id, create=False)
