"""Reach the states of many plans at once: one dask graph, sync by default.

    from mlprune.parallel import run_plans
    result = run_plans(plans, {"tracking_uri": "http://mlflow:5000", "experiment_name": "study"},
                       scheduler="tcp://scheduler:8786")

Every node of every plan has a key that is computed before anything runs (pure:
`plan_keys`), so the plans are merged by key: a root or a trained network that
several plans share is one task, computed once. Each missing state is one task
that depends on its parent's task; independent branches run in parallel. A
task reaches its state with `Experiment.init` / `Experiment.apply` inside the
worker and returns its run id: the worker is given plain data only (tracking
URI, experiment id, node specs), never an object of the caller's.

Schedulers:
  sync               in this process, one state after another (the default)
  processes          a local dask cluster of `workers` processes (default: one per core)
  tcp://HOST:PORT    a running dask scheduler (`dask scheduler`, `dask worker tcp://...`)

Correctness does not rest on dask: two workers (or two users) that need the same
state meet in the store, where one claims it and the other waits for it
(`Store.claim`); a worker that dies leaves a claim that is taken over. States
are computed with a fixed torch thread count (`dag.compute_threads`), so the
weights do not depend on the scheduler.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlparse

from .errors import SpecError

SCHEDULERS = ("sync", "processes", "tcp://HOST:PORT")
CONNECT_TIMEOUT_S = 5


@dataclass
class RunResult:
    """What `run_plans` reached: per plan {node name: run id}, and what it cost."""

    states: list[dict[str, str]]
    experiment_id: str
    tracking_uri: str
    keys: list[dict[str, str]] = field(default_factory=list)  # per plan {node name: key}
    computed: int = 0  # distinct states that had no FINISHED run when we started
    reused: int = 0  # distinct states that had one


# ---- keys and tasks (pure) -------------------------------------------------------
def plan_keys(plan, source_key=None) -> dict[str, str]:
    """{node name: state key} of a plan, without a store.

    A weights/mask source 'root' is the plan's root node, 'parent' the node's parent;
    a run id needs `source_key(run_id) -> key` (the caller's store).
    """
    from .dag import resolve_root, resolve_steps, root_state_key, state_key

    keys: dict[str, str] = {}
    root_of: dict[str, str] = {}
    for node in plan.nodes:
        if node.root is not None:
            keys[node.name] = root_state_key(resolve_root(node.root))
            root_of[node.name] = node.name
            continue
        if node.parent not in keys:
            raise SpecError(f"plan {plan.recipe!r}: node {node.name!r} comes before its parent {node.parent!r}")
        root_of[node.name] = root_of[node.parent]
        steps, sources = resolve_steps(node.steps)
        inputs = {}
        for role, source in sources.items():
            if source == "root":
                inputs[role] = keys[root_of[node.name]]
            elif source == "parent":
                inputs[role] = keys[node.parent]
            elif isinstance(source, str) and source_key is not None:
                inputs[role] = source_key(source.removeprefix("state:"))
            else:
                raise SpecError(f"plan {plan.recipe!r}: node {node.name!r}: {role} source must be 'root', "
                                f"'parent' or a run id; got {source!r}")
        keys[node.name] = state_key(keys[node.parent], steps, inputs)
    return keys


def build_tasks(plans, source_key=None) -> tuple[dict[str, dict], list[dict[str, str]]]:
    """({key: task}, per plan {node name: key}): the plans merged by key, parents first.

    A task is plain data: key, parent key, root spec or steps, label, data_dir.
    """
    tasks: dict[str, dict] = {}
    per_plan = []
    for plan in plans:
        keys = plan_keys(plan, source_key)
        per_plan.append(keys)
        for node in plan.nodes:
            key = keys[node.name]
            if key in tasks:
                continue
            tasks[key] = {
                "key": key,
                "parent": keys[node.parent] if node.parent else None,
                "root": dict(node.root) if node.root is not None else None,
                "steps": [dict(step) for step in node.steps],
                "label": node.label or node.name,
                "node": node.name,
                "data_dir": plan.data_dir,
            }
    return tasks, per_plan


# ---- the task (runs in a worker) -------------------------------------------------
_EXPERIMENTS: dict = {}


def reach_state(task: dict, context: dict, parent_run_id: str | None = None) -> str:
    """Reach one state (find it, wait for it, or compute it) and return its run id.

    Runs in a dask worker (or in the caller, for sync): `context` carries the tracking
    URI, the experiment id and the settings every participant must share.
    """
    from .dag import Experiment, Recipe

    _tune_allocator()
    for name, value in context.get("env", {}).items():
        os.environ[name] = value
    cache_key = (context["tracking_uri"], context["experiment_id"], task["data_dir"])
    experiment = _EXPERIMENTS.get(cache_key)
    if experiment is None:
        experiment = _EXPERIMENTS[cache_key] = Experiment(
            tracking_uri=context["tracking_uri"], experiment_id=context["experiment_id"],
            data_dir=task["data_dir"])
    if task["root"] is not None:
        extra = {"data_dir": task["data_dir"]} if task["data_dir"] else {}
        state = experiment.init(**task["root"], **extra)
    else:
        state = experiment.apply(experiment.state(parent_run_id), Recipe(task["steps"], name=task["label"]))
    if state.key != task["key"]:  # plan keys and state keys are one function: this is a bug
        raise RuntimeError(f"state {state.run_id} has key {state.key}, the plan said {task['key']}")
    return state.run_id


_ALLOCATOR_TUNED = []


def _tune_allocator() -> None:
    """In a dask worker started with MALLOC_TRIM_THRESHOLD_ (see WORKER_CONFIG), let glibc keep
    tensors on the heap again: mmap threshold 32 MiB, trim threshold 64 MiB (mallopt)."""
    if _ALLOCATOR_TUNED or "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return
    _ALLOCATOR_TUNED.append(True)
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to undo
        pass


# ---- the driver --------------------------------------------------------------------
def parse_scheduler(scheduler: str | None) -> str:
    scheduler = (scheduler or "sync").strip()
    if scheduler in ("sync", "processes") or "://" in scheduler:
        return scheduler
    raise SpecError(f"unknown scheduler {scheduler!r}; allowed: {', '.join(SCHEDULERS)}")


def check_tracking(uri: str) -> None:
    """A one-line SpecError if an http(s) tracking server does not answer within a few seconds."""
    import urllib.error
    import urllib.request

    if urlparse(uri).scheme not in ("http", "https"):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=CONNECT_TIMEOUT_S) as response:
            response.read()
    except urllib.error.HTTPError:
        return  # it answers; MLflow itself will say what is wrong
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise SpecError(f"cannot reach the MLflow tracking server {uri}: {reason}") from None


def _absolute_uri(uri: str) -> str:
    """sqlite:///relative.db -> sqlite:////abs/relative.db: workers may run elsewhere."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])
    parsed = urlparse(uri)
    if parsed.scheme == "" and uri:
        return os.path.abspath(uri)
    return uri


def _is_server(uri: str) -> bool:
    return urlparse(uri).scheme in ("http", "https", "databricks") or "postgres" in uri or "mysql" in uri


def _loopback(address: str) -> bool:
    host = urlparse(address).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def _open_store(experiment_spec: dict):
    from .store import Store

    import mlflow

    uri = _absolute_uri(experiment_spec.get("tracking_uri") or mlflow.get_tracking_uri())
    check_tracking(uri)
    store = Store(experiment_spec.get("experiment_name"), tracking_uri=uri,
                  experiment_id=experiment_spec.get("experiment_id"))
    try:
        store.experiment_id  # created up front: workers get it by id, never by name
    except SpecError:
        raise
    except Exception as error:  # noqa: BLE001 - any store failure is one line for the user
        raise SpecError(f"tracking store {uri}: {_one_line(error)}") from None
    return store


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) < 300 else text[:297] + "..."


def _context(store) -> dict:
    from .dag import THREADS_ENV, compute_threads
    from .store import CLAIM_TIMEOUT_ENV, claim_timeout

    return {
        "tracking_uri": store.tracking_uri,
        "experiment_id": store.experiment_id,
        # every participant computes with the same thread count and judges claims by the same timeout
        "env": {THREADS_ENV: str(compute_threads()), CLAIM_TIMEOUT_ENV: repr(claim_timeout()),
                "MLFLOW_DISABLE_TELEMETRY": "true"},
    }


def run_plans(plans, experiment_spec: dict | None = None, scheduler: str = "sync", *,
              workers: int | None = None, on_state=None) -> RunResult:
    """Reach every node of every plan; the plans are merged by key into one graph.

    experiment_spec: {"tracking_uri", "experiment_name" or "experiment_id"} (MLflow's
    defaults where missing). on_state(plan_index, node_name, run_id) is called as
    states are reached. Returns a RunResult.
    """
    scheduler = parse_scheduler(scheduler)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise SpecError(f"workers must be an integer >= 1, got {workers!r}")
    store = _open_store(dict(experiment_spec or {}))
    if "://" in scheduler and not _is_server(store.tracking_uri) and not _loopback(scheduler):
        raise SpecError(f"workers of {scheduler} cannot share the local tracking store {store.tracking_uri}: "
                        f"set MLFLOW_TRACKING_URI=http://HOST:5000 (an `mlflow server`)")
    tasks, per_plan = build_tasks(plans, source_key=lambda run_id: store.spec(run_id)["key"])
    existing = {}
    for run in store.states():
        key = run.data.tags.get("mlprune.key")
        if key in tasks and key not in existing:
            existing[key] = run.info.run_id
    context = _context(store)
    result = RunResult([], store.experiment_id, store.tracking_uri, per_plan,
                       computed=len(set(tasks) - set(existing)), reused=len(set(tasks) & set(existing)))
    reached = dict(existing)

    def report(key: str):
        if on_state is None:
            return
        for index, keys in enumerate(per_plan):
            for name, node_key in keys.items():
                if node_key == key:
                    on_state(index, name, reached[key])

    for key in existing:
        report(key)
    missing = [key for key in tasks if key not in existing]
    if scheduler == "sync":
        for key in missing:
            task = tasks[key]
            reached[key] = reach_state(task, context, reached.get(task["parent"]))
            report(key)
    elif missing:
        _run_dask(scheduler, workers, tasks, missing, reached, context, report)
    elif scheduler != "processes":  # nothing to compute, but an unreachable scheduler is still an error
        _connect(scheduler, workers)[0].close()
    result.states = [{name: reached[key] for name, key in keys.items()} for keys in per_plan]
    return result


# dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also pins glibc's mmap
# threshold: every tensor above 128 KiB is then mmap'ed and unmapped again, and training runs
# 2-3x slower in a worker than in a plain process. Our local clusters drop the setting; in
# workers started otherwise (`dask worker`), reach_state raises both thresholds (_tune_allocator).
WORKER_CONFIG = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


def local_cluster(n_workers: int):
    """A distributed.LocalCluster of `n_workers` single-threaded worker processes, set up for training."""
    import logging

    import dask
    from distributed import LocalCluster

    with dask.config.set(WORKER_CONFIG):
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
                            silence_logs=logging.ERROR)


def _connect(scheduler: str, workers: int | None):
    """(client, cluster or None) for 'processes' or a scheduler address; one-line errors."""
    from distributed import Client

    if scheduler == "processes":
        cluster = local_cluster(workers or os.cpu_count() or 1)
        return Client(cluster), cluster
    started = time.monotonic()
    try:
        client = Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s")
    except (OSError, TimeoutError, ValueError) as error:
        raise SpecError(f"cannot reach the dask scheduler {scheduler} within "
                        f"{time.monotonic() - started:.0f} s: {_one_line(error)}") from None
    if workers is not None:
        client.close()
        raise SpecError("--workers applies to the processes scheduler only; start workers with `dask worker`")
    return client, None


def _check_workers(client, scheduler: str) -> None:
    """A one-line SpecError if a worker cannot import mlprune (or runs another version)."""
    import importlib.metadata
    import importlib.util

    from . import __version__

    deadline = time.monotonic() + 60
    while not client.scheduler_info().get("workers"):
        if time.monotonic() > deadline:
            raise SpecError(f"the dask scheduler {scheduler} has no workers (start them with "
                            f"`dask worker {scheduler}`)")
        time.sleep(0.2)
    found = client.run(importlib.util.find_spec, "mlprune", on_error="return")
    missing = sorted(worker for worker, spec in found.items() if spec is None or isinstance(spec, BaseException))
    if missing:
        raise SpecError(f"dask worker {missing[0]} ({len(missing)} of {len(found)}) cannot import mlprune: "
                        f"install it there (pip install mlprune) in the Python that runs `dask worker`")
    versions = client.run(importlib.metadata.version, "mlprune", on_error="return")
    other = sorted((w, v) for w, v in versions.items() if isinstance(v, str) and v != __version__)
    if other:
        raise SpecError(f"dask worker {other[0][0]} runs mlprune {other[0][1]}, this process {__version__}: "
                        f"install the same version everywhere")


def _run_dask(scheduler, workers, tasks, missing, reached, context, report):
    from distributed import as_completed

    client, cluster = _connect(scheduler, workers)
    try:
        _check_workers(client, scheduler)
        token = uuid.uuid4().hex[:8]
        futures, key_of = {}, {}
        for key in missing:
            task = tasks[key]
            parent = futures.get(task["parent"], reached.get(task["parent"]))
            future = client.submit(reach_state, task, context, parent, key=f"{task['node']}-{key[:12]}-{token}",
                                   pure=False)
            futures[key] = future
            key_of[future.key] = key
        errors = []
        for future in as_completed(list(futures.values())):
            key = key_of[future.key]
            if future.status == "finished":
                reached[key] = future.result()
                report(key)
            else:
                errors.append((key, future.exception()))
        if errors:
            raise _task_error(errors, tasks, scheduler)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _task_error(errors, tasks, scheduler) -> BaseException:
    """The first task error; a missing package on a worker becomes a one-line SpecError."""
    key, error = errors[0]
    if isinstance(error, ModuleNotFoundError) and (error.name or "").split(".")[0] == "mlprune":
        return SpecError(f"a dask worker of {scheduler} cannot import mlprune: install it there")
    if hasattr(error, "add_note"):
        error.add_note(f"mlprune: {len(errors)} state(s) failed; the first: {tasks[key]['label']}")
    return error


# ---- sweeps --------------------------------------------------------------------------
def parse_seeds(text: str | None) -> list[int]:
    """'0-9' -> [0..9]; '0,3,7' -> [0, 3, 7]; '1-3,8' -> [1, 2, 3, 8]."""
    import re

    if text is None:
        return []
    seeds: list[int] = []
    for part in str(text).split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None or (match.group(2) is not None and int(match.group(2)) < int(match.group(1))):
            raise SpecError(f"--seeds must look like 0-9, 0,3,7 or 1-3,8 (integers >= 0, ranges low-high); "
                            f"got {text!r}")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        seeds += [seed for seed in range(low, high + 1) if seed not in seeds]
    return seeds


def parse_grid(pairs) -> list[dict]:
    """['amount=0.1,0.2', 'epochs=5'] -> the cartesian product [{amount: 0.1, epochs: 5}, {amount: 0.2, ...}]."""
    import itertools

    from .recipes import parse_value

    axes: dict[str, list] = {}
    for pair in pairs or ():
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise SpecError(f"sweep parameter {pair!r} must look like name=value or name=v1,v2,...")
        values = []
        for item in text.split(","):
            if not item.strip():
                raise SpecError(f"sweep parameter {pair!r} has an empty value; write name=v1,v2,...")
            try:
                values.append(parse_value(item.strip()))
            except SpecError as error:
                raise SpecError(f"sweep parameter {name!r}: {error}") from None
        if name in axes:
            raise SpecError(f"sweep parameter {name!r} is given twice; list its values once: {name}=v1,v2")
        axes[name] = values
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def sweep_plans(recipes, seeds: list[int], grid: list[dict]) -> list[tuple[str, object]]:
    """[(label, plan)] for every recipe x seed x grid point; every one validated before anything runs."""
    from .recipes import compile_recipe

    plans = []
    for recipe in recipes:
        for seed in seeds or [None]:
            for point in grid or [{}]:
                overrides = {**point, **({"seed": seed} if seed is not None else {})}
                plan = compile_recipe(recipe, overrides)
                label = " ".join([plan.recipe] + [f"{k}={v}" for k, v in overrides.items()])
                plans.append((label, plan))
    return plans
