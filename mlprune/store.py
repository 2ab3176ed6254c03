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
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# against a tracking server MLflow prints a progress bar per artifact read and a URL per run ended:
# noise in the output of every state (and of every dask worker)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

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
TAG_CLAIM_HOST = "mlprune.claim.host"  # hostname/pid namespace of the process holding a RUNNING claim
TAG_CLAIM_PID = "mlprune.claim.pid"
TAG_ERROR = "mlprune.error"
CLAIM_TIMEOUT_ENV = "MLPRUNE_CLAIM_TIMEOUT"
DEFAULT_CLAIM_TIMEOUT_S = 60.0
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


# ---- claims ------------------------------------------------------------------------
class ClaimLost(RuntimeError):
    """Our RUNNING claim on a key was taken over (we looked dead) or an older live claim exists."""


def claim_timeout() -> float:
    """Seconds without a heartbeat after which a RUNNING claim counts as dead (MLPRUNE_CLAIM_TIMEOUT)."""
    text = os.environ.get(CLAIM_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_CLAIM_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise SpecError(f"{CLAIM_TIMEOUT_ENV} must be a number of seconds > 0, got {text!r}")
    return value


def _process_host() -> str:
    """This host and pid namespace: a claim's pid means something only where both match."""
    import socket

    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}/{namespace}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    try:  # a killed child nobody has reaped yet is a zombie: dead too
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _claim_order(run) -> tuple:
    return (run.info.start_time or 0, run.info.run_id)


def _stale_reason(run, timeout: float, now: float) -> str | None:
    """Why a RUNNING claim is dead (no heartbeat for `timeout` s, or its process is gone), else None."""
    tags = run.data.tags
    try:
        beat = float(tags[TAG_HEARTBEAT])
    except (KeyError, ValueError):
        beat = (run.info.start_time or 0) / 1000
    if now - beat > timeout:
        return f"no heartbeat for {now - beat:.0f} s (timeout {timeout:g} s)"
    pid = tags.get(TAG_CLAIM_PID, "")
    if tags.get(TAG_CLAIM_HOST) == _process_host() and pid.isdigit() and int(pid) != os.getpid() \
            and not _pid_alive(int(pid)):
        return f"its process {pid} on this host is gone"
    return None


class _KeepAlive:
    """Heartbeats a claim from a thread while it is computed, and notices when it is lost.

    Every `interval` s: if our run is no longer RUNNING (someone took it over) or an
    older live claim on the same key exists, the claim is marked lost; the next
    `Store.heartbeat` (once per epoch) and `Store.finish` then raise ClaimLost.
    """

    def __init__(self, store: "Store", run_id: str, key: str, timeout: float):
        self.store, self.run_id, self.key, self.timeout = store, run_id, key, timeout
        self.interval = max(0.2, min(10.0, timeout / 4))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"mlprune-heartbeat-{run_id[:8]}", daemon=True)
        self._thread.start()

    def _loop(self):
        while not self._stop.wait(self.interval):
            try:
                run = self.store.client.get_run(self.run_id)
                if run.info.status != "RUNNING":
                    self.store._lost[self.run_id] = f"claim taken over while computing (run is {run.info.status})"
                    return
                self.store.heartbeat(self.run_id, force=True)
                live = self.store._live_claims(self.key, self.timeout)
                if live and live[0].info.run_id != self.run_id:
                    self.store._lost[self.run_id] = f"lost claim to older claim {live[0].info.run_id}"
                    return
            except ClaimLost:
                return
            except Exception:  # a store hiccup must not stop the computation: staleness decides
                continue

    def stop(self):
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=30)


SQLITE_WAL_ENV = "MLPRUNE_SQLITE_WAL"
_TUNED_ENGINES = weakref.WeakSet()


def _tune_sqlite(client: MlflowClient) -> None:
    """Open a sqlite tracking store in WAL mode with synchronous=NORMAL.

    MLflow's default (rollback journal, synchronous=FULL) fsyncs on every commit, 1-5 ms
    each and several per state; in WAL mode a commit costs no fsync, readers never block
    the writer, and the store survives process crashes (a power cut may lose the last
    commits, never corrupts it). WAL is a property of the database file; every sqlite
    client, MLflow's UI included, reads it as before. MLPRUNE_SQLITE_WAL=0 leaves the
    store as MLflow opens it.
    """
    if os.environ.get(SQLITE_WAL_ENV, "1").strip() == "0":
        return
    try:
        engine = client._tracking_client.store.engine  # MLflow's SqlAlchemyStore (shared per URI)
    except AttributeError:
        return
    if engine.dialect.name != "sqlite" or engine in _TUNED_ENGINES:
        return
    from sqlalchemy import event

    def pragmas(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
        except Exception:  # e.g. locked by another process right now: this connection stays as it is
            pass
        try:
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    event.listen(engine, "connect", pragmas)
    engine.dispose()  # connections pooled before the listener reopen with it
    _TUNED_ENGINES.add(engine)


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
        if str(self.tracking_uri).startswith("sqlite"):
            _tune_sqlite(self.client)
        self._experiment = experiment
        self._experiment_id = experiment_id
        self._cache: OrderedDict[str, StoredState] = OrderedDict()
        self._cache_size = cache_size
        self._specs: dict[str, dict] = {}  # finished states never change: safe to keep
        self._runs: dict[str, object] = {}  # FINISHED runs seen by find(): their info never changes
        self._created: dict[str, tuple[str, dict]] = {}  # run id -> (artifact URI, tags) of runs we created
        self._beats: dict[str, float] = {}  # run id -> time of the last heartbeat written
        self._computed: set[str] = set()  # states this Store computed and finished
        self._lock = threading.Lock()
        self._lost: dict[str, str] = {}  # run id -> why our claim on it was lost (see _KeepAlive)

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
        if not runs:
            return None
        with self._lock:
            self._runs[runs[0].info.run_id] = runs[0]  # spares state_run() a get_run
        return runs[0].info.run_id

    def find_claims(self, key: str) -> list:
        """RUNNING runs holding a claim on this key, oldest first."""
        return self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TAG_KEY}` = '{key}' and attributes.status = 'RUNNING'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=50,
            order_by=["attributes.start_time ASC"],
        )

    def _lookup(self, key: str, timeout: float, exclude: str | None = None) -> tuple[str | None, list]:
        """(the key's FINISHED state or None, its live claims oldest first): one search, one snapshot.

        `exclude`: a run id to leave out (our own claim: a search that matches no run is cheapest).
        """
        where = f"tags.`{TAG_KEY}` = '{key}'" + (f" and attributes.run_id != '{exclude}'" if exclude else "")
        runs = self.client.search_runs([self.experiment_id], filter_string=where,
                                       run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                                       order_by=["attributes.start_time ASC"])
        finished = [r for r in runs if r.info.status == "FINISHED"]
        if finished:
            with self._lock:
                self._runs[finished[0].info.run_id] = finished[0]
            return finished[0].info.run_id, []
        return None, self._live_claims(key, timeout, [r for r in runs if r.info.status == "RUNNING"])

    def _live_claims(self, key: str, timeout: float, claims: list | None = None) -> list:
        """Live RUNNING claims on `key`, oldest first; dead ones are marked FAILED on the way."""
        live, now = [], time.time()
        for run in self.find_claims(key) if claims is None else claims:
            reason = _stale_reason(run, timeout, now)
            if reason is None:
                live.append(run)
            else:
                self.fail(run.info.run_id, f"stale claim taken over: {reason}")
        return sorted(live, key=_claim_order)

    def claim(self, key: str, create, *, timeout: float | None = None, progress=None,
              parent_run_id: str | None = None) -> tuple[str, bool]:
        """Claim `key` before computing its state: (run id, True) if we hold the claim, a new RUNNING
        run made by `create()`; (run id, False) for the FINISHED state another process computed.

        The oldest live RUNNING claim (start_time, then run id) wins; a loser marks its own run
        KILLED and waits (polling with backoff) until the winner finishes (its state is returned),
        fails, or goes stale (no heartbeat for `timeout` s, MLPRUNE_CLAIM_TIMEOUT, default 60, or
        its process on this host is gone): a stale claim is marked FAILED and taken over.

        `parent_run_id`: a state this Store has just computed is almost never another's parent
        yet, so its child is claimed at once, without the look-up before `create()`; the look-up
        after it still finds a finished state or an older claim (ours is then KILLED).
        """
        timeout = claim_timeout() if timeout is None else timeout
        delay, told = 0.1, None
        fresh_parent = parent_run_id is not None and parent_run_id in self._computed
        while True:
            found, live = (None, []) if fresh_parent else self._lookup(key, timeout)
            fresh_parent = False
            if found:
                return found, False
            if not live:
                run_id = create()
                found, live = self._lookup(key, timeout, exclude=run_id)
                if not found and not live:  # the usual case: nobody else finished or claimed it meanwhile
                    return run_id, True
                found, live = self._lookup(key, timeout)  # finished or claimed by someone meanwhile?
                holder = found or (live[0].info.run_id if live else run_id)
                if holder == run_id:
                    return run_id, True
                self.release(run_id, f"state finished meanwhile by {found}" if found else f"lost claim to {holder}")
                if found:
                    return found, False
            else:
                holder = live[0].info.run_id
            if progress is not None and told != holder:
                progress(f"waiting for run {holder}: another process holds the claim on this state")
                told = holder
            time.sleep(delay)
            delay = min(delay * 1.5, 5.0, timeout / 4)

    def keep_alive(self, run_id: str, key: str, timeout: float | None = None) -> _KeepAlive:
        """Start heartbeating a claim from a thread (call .stop() when done)."""
        return _KeepAlive(self, run_id, key, claim_timeout() if timeout is None else timeout)

    def release(self, run_id: str, reason: str) -> None:
        """Mark our run KILLED (a lost claim, a duplicate) if it is still RUNNING or FINISHED."""
        self._lost.pop(run_id, None)
        try:
            run = self.client.get_run(run_id)
            self.client.set_tag(run_id, TAG_ERROR, reason[:4000])
            if run.info.status in ("RUNNING", "FINISHED"):
                self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
        except mlflow.exceptions.MlflowException:
            pass

    def _claim_fresh(self, run_id: str) -> bool:
        """Did we write our claim's heartbeat less than half the claim timeout ago?"""
        return time.monotonic() - self._beats.get(run_id, float("-inf")) < claim_timeout() / 2

    def _settle(self, run_id: str, key: str | None, before: bool) -> str:
        """The run that is the FINISHED state of `key`: ours, or one that finished first.

        Called right before (before=True) and right after we set our run FINISHED; if another
        run won, ours is marked KILLED. The first to finish (end time, then start time, then
        run id) is the state, so at most one FINISHED run per key survives a race.
        """
        if run_id in self._lost:
            raise ClaimLost(self._lost.pop(run_id))
        if not key:
            return run_id
        if before and self._claim_fresh(run_id):
            # our last heartbeat is younger than half the claim timeout: no process can have taken
            # our claim over, nor finished the key (it would have waited for us); the check after
            # FINISHED below still settles any race
            return run_id
        if not before and not self.client.search_runs(
                [self.experiment_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=1,
                filter_string=f"tags.`{TAG_KEY}` = '{key}' and attributes.status = 'FINISHED' "
                              f"and attributes.run_id != '{run_id}'"):
            return run_id  # the usual case, in a search that matches no run: nobody else finished it
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{TAG_KEY}` = '{key}'",
                                       run_view_type=ViewType.ACTIVE_ONLY, max_results=1000)
        if before and any(r.info.run_id == run_id and r.info.status != "RUNNING" for r in runs):
            raise ClaimLost("claim taken over while computing (our run is no longer RUNNING)")
        finished = [r for r in runs if r.info.status == "FINISHED"]
        others = [r for r in finished if r.info.run_id != run_id]
        if not others:
            return run_id
        if not before:
            ours = [r for r in finished if r.info.run_id == run_id]
            first = min(finished, key=lambda r: (r.info.end_time or 0, *_claim_order(r)))
            if ours and first.info.run_id == run_id:
                return run_id
        winner = min(others, key=lambda r: (r.info.end_time or 0, *_claim_order(r))).info.run_id
        self.release(run_id, f"duplicate: state {key} was finished first by run {winner}")
        return winner

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
        run = self._runs.get(run_id) or self.run(run_id)
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
            TAG_CLAIM_HOST: _process_host(),
            TAG_CLAIM_PID: str(os.getpid()),
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
        with self._lock:
            self._created[run.info.run_id] = (run.info.artifact_uri, tags)
            self._beats[run.info.run_id] = time.monotonic()
        return run.info.run_id

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    # A heartbeat is a store write (~10 ms on sqlite): at most one per this many seconds per run,
    # far below any staleness timeout; create() writes the first one.
    heartbeat_interval_s = 10.0

    def heartbeat(self, run_id: str, force: bool = False) -> None:
        """Tell other processes our claim is alive; raise ClaimLost if it was lost meanwhile."""
        if run_id in self._lost:
            raise ClaimLost(self._lost[run_id])
        now = time.monotonic()
        if not force and now - self._beats.get(run_id, float("-inf")) < self.heartbeat_interval_s:
            return
        self.client.set_tag(run_id, TAG_HEARTBEAT, str(time.time()))
        self._beats[run_id] = now

    def _artifact_repo(self, run_id: str):
        """The run's artifact repository, without MlflowClient.log_artifacts' get_run per run."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
        from mlflow.utils.uri import add_databricks_profile_info_to_artifact_uri

        created = self._created.get(run_id)
        uri = created[0] if created else self.run(run_id).info.artifact_uri
        return get_artifact_repository(add_databricks_profile_info_to_artifact_uri(uri, self.tracking_uri),
                                       tracking_uri=self.tracking_uri)

    def finish(self, run_id: str, *, spec: dict, masks: dict[str, torch.Tensor],
               weights: dict[str, torch.Tensor] | None, metrics: dict[str, float],
               history: dict[str, list[float]] | None = None) -> str:
        """Write a state's artifacts and metrics, then mark its run FINISHED; returns the run id
        of the key's FINISHED state: ours, or another run's that finished first (ours is then KILLED;
        ClaimLost if our claim was taken over).

        `weights=None` stores a prune-only state that references its parent's
        weights (state.json's `weights_from`); loading resolves them.
        """
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        for name, values in (history or {}).items():
            batch += [Metric(name, float(v), now, step) for step, v in enumerate(values, start=1)]
        for start in range(0, len(batch), 1000):  # MLflow's log_batch limit
            self.client.log_batch(run_id, metrics=batch[start:start + 1000])
        files = {MASKS_FILE: save_safetensors(_contiguous(masks)),
                 STATE_FILE: json.dumps(spec, indent=1, sort_keys=True).encode()}
        if weights is not None:
            files[WEIGHTS_FILE] = save_safetensors(_contiguous(weights))
        created = self._created.get(run_id)
        local = _local_path(created[0]) if created else None
        if local is not None:  # a local artifact store: write in place (the run is not FINISHED yet)
            local.mkdir(parents=True, exist_ok=True)
            for name, content in files.items():
                (local / name).write_bytes(content)
        else:
            with tempfile.TemporaryDirectory(prefix="mlprune-") as tmp:
                for name, content in files.items():
                    (Path(tmp) / name).write_bytes(content)
                self._artifact_repo(run_id).log_artifacts(tmp)
        key = spec.get("key")
        winner = self._settle(run_id, key, before=True)  # never two FINISHED runs for one key
        if winner == run_id:
            self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
            winner = self._settle(run_id, key, before=False)
        if winner == run_id:
            self._remember(run_id, spec, masks, weights)
        return winner

    def _remember(self, run_id: str, spec: dict, masks: dict, weights: dict | None) -> None:
        """Keep what finish() just wrote: the state's next load() (its children's) reads no store."""
        created = self._created.pop(run_id, None)
        self._beats.pop(run_id, None)
        spec = json.loads(json.dumps(spec))  # exactly what load() would read from state.json
        with self._lock:
            self._specs[run_id] = spec
            self._computed.add(run_id)
            source = self._cache.get(spec.get("weights_from")) if weights is None else None
        if weights is None and source is None:
            return  # a prune-only state whose parent is not in memory: resolved on load
        masks = {name: t.detach().to(torch.bool).clone() for name, t in masks.items()}
        if weights is None:
            weights = {name: (t * masks[name] if name in masks else t) for name, t in source.weights.items()}
        else:
            weights = {name: t.detach().clone().contiguous() for name, t in weights.items()}
        tags = dict(created[1]) if created else {}
        state = StoredState(run_id, weights, masks, spec, tags)
        with self._lock:
            self._cache[run_id] = state
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def fail(self, run_id: str, reason: str = "") -> None:
        """Mark a state run FAILED so that it is never taken for a finished state."""
        self._created.pop(run_id, None)
        self._beats.pop(run_id, None)
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
