"""The one executor: plans -> a task graph of missing states -> a scheduler -> the store.

    execution = Execution(plans, store, scheduler="sync")   # merges the plans by key, finds what exists
    execution.check()                                       # everything checkable before a run is created
    result = execution.run(on_state=...)                    # computes what is missing

Every node of every plan has a key before anything runs (`plan`), so plans are
merged by key: a root or a trained network that several plans share is one
task, computed once. Each missing state is one task of a dask graph that
depends on its parents' tasks; independent branches run in parallel. The graph
is the same for every scheduler: ``sync`` runs it in this process with dask's
synchronous scheduler, ``processes`` on a local dask cluster, ``tcp://HOST:PORT``
on a running dask scheduler. A task is plain data (JSON: the node, the tracking
URI, the experiment id, run options), never an object of the caller's.

Correctness does not rest on dask: two workers (or two users) that need the same
state meet in the store, where one claims it and the other waits for it
(`store.claims`); a worker that dies leaves a claim that is taken over. States
are computed with a fixed torch thread count, so the weights do not depend on
the scheduler. Reused states are checked first (`Store.verify`): one whose files
or key do not match what was recorded is marked invalid and computed again.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from urllib.parse import urlparse

from . import names
from .errors import SpecError, shown
from .plan import Node, Plan
from .spec.limits import MAX_THREADS

SCHEDULERS = ("sync", "processes", "tcp://HOST:PORT")
CONNECT_TIMEOUT_S = 5


@dataclass
class RunOptions:
    """How states are computed; none of it is part of a key (recorded as tags / params).

    ``deterministic``, ``channels_last`` and ``compile`` change results by floating-point noise at
    most (on the CPU every state is bitwise reproducible without them): torch's deterministic
    algorithms and the cuBLAS workspace config (GPU runs repeat bitwise), the channels_last memory
    format and torch.compile for training (speed on GPUs).
    """

    device: str | None = None       # auto, cpu, cuda, cuda:N, mps (None: MLPRUNE_DEVICE, else auto)
    threads: int | None = None      # torch threads per state (None: MLPRUNE_THREADS, else compute_threads)
    data_dir: str | None = None     # where datasets are read (None: the root's recorded data_dir, else the default)
    deterministic: bool = False     # torch.use_deterministic_algorithms + CUBLAS_WORKSPACE_CONFIG
    channels_last: bool = False     # train in the channels_last memory format
    compile: bool = False           # train through torch.compile

    def resolved(self) -> "RunOptions":
        from .training.devices import check_device_name

        for name in ("deterministic", "channels_last", "compile"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise SpecError(f"run option {name} must be true or false, got {value!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise SpecError(f"run option threads must be an integer >= 1, got {self.threads!r}")
        # threads left None are resolved when something is computed (Execution.run): counting the
        # cores imports torch, which a fully cached run never needs
        return RunOptions(check_device_name(self.device), self.threads or pinned_threads(),
                          str(self.data_dir) if self.data_dir else None, self.deterministic, self.channels_last,
                          self.compile)


def parse_switch(text, name: str) -> bool | None:
    """A run option's switch from the command line or an MLproject parameter: '' / None = not given."""
    if text is None or isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value == "":
        return None
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise SpecError(f"{name} must be true or false, got {text!r}")


@dataclass
class Result:
    """What an execution reached: per plan {node name: run id}, and what it cost."""

    states: list[dict[str, str]]
    keys: list[dict[str, str]]
    experiment_id: str
    tracking_uri: str
    computed: int = 0    # distinct states that had no usable FINISHED run when we started
    reused: int = 0      # distinct states that had one
    invalid: list = field(default_factory=list)  # (run id, reason) of states found broken and recomputed


def parse_scheduler(scheduler: str | None) -> str:
    scheduler = (scheduler or "sync").strip()
    if scheduler in ("sync", "processes") or "://" in scheduler:
        return scheduler
    raise SpecError(f"unknown scheduler {scheduler!r}; allowed: {', '.join(SCHEDULERS)}")


def _loopback(address: str) -> bool:
    host = urlparse(address).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


# ---- threads --------------------------------------------------------------------------------------
_threads_lock = threading.Lock()
_threads_users = [0, None]  # states being computed in this process, torch's thread count before


def compute_threads(workers: int = 1) -> int:
    """Torch threads each state is computed with: MLPRUNE_THREADS, else the cores split between the
    `workers` processes that compute at once (at least 1 each).

    The cores are torch's own default thread count (what PyTorch sets at import: the physical cores
    or OMP_NUM_THREADS), so a single run uses the machine and a local cluster of N workers does not
    oversubscribe it. Float sums (matmul, convolutions) are split differently with another thread
    count: a state is bitwise reproducible for a given count, and states computed with different
    counts agree up to floating-point summation order (the count is recorded as the param
    ``run.threads``, never keyed). Pin MLPRUNE_THREADS for bytes that do not depend on the machine.
    """
    return pinned_threads() or max(1, torch_default_threads() // max(1, workers))


def pinned_threads() -> int | None:
    """MLPRUNE_THREADS, checked (None when not set); needs no torch."""
    text = os.environ.get(names.ENV_THREADS, "").strip()
    if not text:
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 9 or not 1 <= int(text) <= MAX_THREADS:
        raise SpecError(f"{names.ENV_THREADS} must be an integer >= 1 and <= {MAX_THREADS}, got {shown(text)}")
    return int(text)


def cluster_threads(client) -> int:
    """Torch threads per state on a dask cluster: each host's cores (torch's default there) split
    between the worker threads it runs; the smallest share, so that no host is oversubscribed."""
    cores = client.run(torch_default_threads, on_error="return")   # {worker address: cores}
    per_host: dict[str, list[int]] = {}                             # host -> [worker threads, cores]
    for address, info in client.scheduler_info()["workers"].items():
        found = cores.get(address)
        host = per_host.setdefault(info.get("host") or urlparse(address).hostname or address, [0, 0])
        host[0] += int(info.get("nthreads") or 1)
        host[1] = max(host[1], found if isinstance(found, int) else 1)
    return max(1, min((c // n for n, c in per_host.values()), default=1))


def torch_default_threads() -> int:
    """torch's thread count as it set it at import, even while a state is being computed (pinned)."""
    import torch

    with _threads_lock:
        if _threads_users[0] > 0 and _threads_users[1] is not None:
            return _threads_users[1]
        return torch.get_num_threads()


class _PinnedThreads:
    def __init__(self, threads: int):
        self.threads = threads

    def __enter__(self):
        import torch

        with _threads_lock:
            if _threads_users[0] == 0:
                _threads_users[1] = torch.get_num_threads()
            _threads_users[0] += 1
            torch.set_num_threads(self.threads)

    def __exit__(self, *exc):
        import torch

        with _threads_lock:
            _threads_users[0] -= 1
            if _threads_users[0] == 0 and _threads_users[1] is not None:
                torch.set_num_threads(_threads_users[1])


# ---- the per-process side: stores, workspaces -----------------------------------------------------
_PROCESS: dict = {}          # (tracking uri, experiment id) -> Store; ("ws", device) -> Workspace
_PROCESS_LOCK = threading.Lock()
_progress = threading.local()  # sync scheduler: the caller's progress printer


def _store(tracking_uri: str, experiment_id: str):
    from .store import Store

    with _PROCESS_LOCK:
        key = (tracking_uri, experiment_id)
        if key not in _PROCESS:
            _PROCESS[key] = Store(tracking_uri=tracking_uri, experiment_id=experiment_id)
        return _PROCESS[key]


def register_store(store) -> None:
    """Share `store` (and its memory of states just computed) with the tasks this process runs."""
    with _PROCESS_LOCK:
        _PROCESS[(store.tracking_uri, store.experiment_id)] = store


def _workspace(device_name: str, channels_last: bool = False, compile: bool = False):
    from .compute import Workspace
    from .training.devices import resolve_device

    with _PROCESS_LOCK:
        key = ("ws", device_name, channels_last, compile)
        if key not in _PROCESS:
            _PROCESS[key] = Workspace(resolve_device(device_name), channels_last=channels_last, compile=compile)
        return _PROCESS[key]


CUBLAS_DETERMINISTIC = ":4096:8"


class _Determinism:
    """torch's deterministic algorithms while a state is computed (``deterministic``), restored after.

    cuBLAS picks its workspace when a process first uses it, so CUBLAS_WORKSPACE_CONFIG is set
    here and in every task's environment (`Execution._context`) before CUDA work starts; a
    process that used cuBLAS before without it gets torch's own error on the first matmul.
    """

    def __init__(self, on: bool):
        self.on = on
        self.before = None

    def __enter__(self):
        if not self.on:
            return
        import torch

        os.environ.setdefault(names.ENV_CUBLAS_WORKSPACE, CUBLAS_DETERMINISTIC)
        with _threads_lock:
            self.before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
                           torch.backends.cudnn.benchmark)
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False

    def __exit__(self, *exc):
        if not self.on or self.before is None:
            return
        import torch

        with _threads_lock:
            torch.use_deterministic_algorithms(self.before[0])
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = self.before[1:]


def _tune_allocator() -> None:
    """In a dask worker started with MALLOC_TRIM_THRESHOLD_ (see WORKER_CONFIG), let glibc keep
    tensors on the heap again: mmap threshold 32 MiB, trim threshold 64 MiB (mallopt)."""
    if _PROCESS.get("allocator") or "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return
    _PROCESS["allocator"] = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to undo
        pass


# ---- the task -------------------------------------------------------------------------------------

def describe(store, node: dict, run_id: str, parent_run: str | None, inputs: dict[str, str], root_run: str | None,
             workflow: str | None) -> str:
    """Markdown for the run's description in the MLflow UI: what the state is, links to its parents,
    its workflow run and its lineage page (`mlflow server --app-name mlprune`)."""
    lines = [f"**mlprune state** `{node['label']}` · kind `{node['kind']}`"]
    if parent_run:
        lines.append(f"- parent: [{parent_run[:8]}]({store.ui_link(parent_run)})")
    for role, source in inputs.items():
        lines.append(f"- {role} from: [{source[:8]}]({store.ui_link(source)})")
    if root_run and root_run != parent_run:
        lines.append(f"- root: [{root_run[:8]}]({store.ui_link(root_run)})")
    if workflow:
        lines.append(f"- workflow run: [{workflow[:8]}]({store.ui_link(workflow)})")
    lines.append(f"- lineage: [the DAG around this state]({names.LINEAGE_ROUTE}{run_id}) "
                 f"(served by `mlflow server --app-name mlprune`)")
    for step in node["steps"]:
        lines.append(f"- step `{json.dumps(step, sort_keys=True)}`")
    return "\n".join(lines)


def reach(task_text: str, context_text: str, *dependency_runs: str) -> str:
    """Reach one state (find it, wait for it, or compute it) and return its run id.

    Runs in a dask worker or, for ``sync``, in the caller. `dependency_runs` are the run ids the
    task's dependencies reached, in the order of ``task["deps"]``.
    """
    task, context = json.loads(task_text), json.loads(context_text)
    _tune_allocator()
    for name, value in context.get("env", {}).items():
        os.environ[name] = value
    runs = {**task["known"], **dict(zip(task["deps"], dependency_runs))}
    node = task["node"]
    store = _store(context["tracking_uri"], context["experiment_id"])
    parent_run = runs.get(task["parent"]) if task["parent"] else None
    inputs = {role: runs[key] for role, key in task["inputs"].items()}
    return _claim_and_compute(store, node, parent_run, inputs, task, context)


def _claim_and_compute(store, node: dict, parent_run: str | None, inputs: dict[str, str], task: dict,
                       context: dict) -> str:
    from .store import ClaimLost

    parent_state = store.load(parent_run) if parent_run else None
    root_run = (parent_state.spec.get("root_run") or parent_run) if parent_state is not None else None
    progress = getattr(_progress, "printer", None)

    def create():
        tags = {}
        data_dir = task.get("data_dir")
        if node["root"] is not None and data_dir:
            tags[names.TAG_DATA_DIR] = str(data_dir)
        return store.create(key=node["key"], kind=node["kind"], name=node["label"], parent_run_id=parent_run,
                            root_run_id=root_run, extra_parents=inputs, workflow=context.get("workflow"), tags=tags)

    while True:
        run_id, ours = store.claims.claim(node["key"], create, progress=progress, parent_run_id=parent_run)
        if not ours:
            return run_id
        try:
            final = _compute(store, node, run_id, parent_state, parent_run, root_run, inputs, task, context)
        except ClaimLost as lost:  # taken over, or an older claim exists: wait for its state
            store.claims.release(run_id, str(lost))
            continue
        if final is not None:
            return final


def _compute(store, node, run_id, parent_state, parent_run, root_run, inputs, task, context) -> str | None:
    from .compute import compute_node

    options = RunOptions(**context["options"])
    if options.deterministic:  # before this process's first CUDA work, where possible
        os.environ.setdefault(names.ENV_CUBLAS_WORKSPACE, CUBLAS_DETERMINISTIC)
    workspace = _workspace(options.device, options.channels_last, options.compile)
    progress = getattr(_progress, "printer", None)
    alive = store.claims.keep_alive(run_id, node["key"])
    try:
        with _PinnedThreads(options.threads), _Determinism(options.deterministic):
            if progress:
                progress(f"computing {node['label']} ({node['kind']})")
            if node["root"] is None:
                loaded_inputs = {role: store.load(r) for role, r in inputs.items()}
            else:
                loaded_inputs = {}
                store.set_tags(run_id, {names.TAG_ROOT: run_id})  # a root is its own root (design §3)
            data_dir = (task.get("data_dir") or options.data_dir
                        or (parent_state.spec.get("data_dir") if parent_state else None))
            emit = {at: _emitter(store, checkpoint, parent_run, root_run, inputs, data_dir, workspace, options,
                                 context.get("workflow")) for at, checkpoint in task["emits"]}
            computed = compute_node(node, parent_state, loaded_inputs, workspace, data_dir=data_dir,
                                    heartbeat=lambda: store.claims.heartbeat(run_id), emit=emit, progress=progress)
            return _finish(store, run_id, node, computed, parent_state, parent_run, root_run, inputs, data_dir,
                           workspace, options, context.get("workflow"))
    except BaseException as error:
        from .store import ClaimLost

        if not isinstance(error, ClaimLost):
            store.fail(run_id, f"{type(error).__name__}: {error}")
        raise
    finally:
        alive.stop()


def _finish(store, run_id, node, computed, parent_state, parent_run, root_run, inputs, data_dir, workspace, options,
            workflow) -> str:
    from .training.devices import device_label

    spec = {
        "kind": node["kind"],
        "root": node["root"] if node["root"] is not None else parent_state.spec["root"],
        "steps": node["steps"],
        "inputs": {role: {"key": store.spec(r)["key"], "run_id": r} for role, r in inputs.items()},
        "key": node["key"],
        "semantics": _semantics(),
        "mlprune_version": _version(),
        "parent_key": parent_state.spec["key"] if parent_state is not None else None,
        "parent_run": parent_run,
        "root_run": root_run if root_run else run_id,
        "data_dir": str(data_dir) if data_dir else None,
    }
    if computed.weights_from:
        spec["weights_from"] = computed.weights_from
    if computed.tensors is None:
        spec["analysis"] = True
    params = dict(node["params"])
    if node.get("round") is not None:
        params[names.PARAM_ROUND] = node["round"]
    if node.get("branch") not in (None, "main"):
        params[names.PARAM_BRANCH] = node["branch"]
    params[names.PARAM_THREADS] = options.threads
    params[names.PARAM_DETERMINISTIC] = options.deterministic
    params[names.PARAM_CHANNELS_LAST] = options.channels_last
    params[names.PARAM_COMPILE] = options.compile
    tags = {names.TAG_DEVICE: device_label(workspace.device),
            names.TAG_NOTE: describe(store, node, run_id, parent_run, inputs, root_run, workflow)}
    if "diverged" in computed.history:
        tags[names.TAG_DIVERGED] = f"epoch {computed.history['diverged'][0]}: {computed.history['diverged'][1]}"
    store.set_tags(run_id, tags)
    history = {k: v for k, v in computed.history.items() if isinstance(v, list)}
    tensors = computed.tensors
    return store.finish(run_id, spec=spec, masks=tensors.masks if tensors is not None else None,
                        weights=None if tensors is None or computed.weights_from else tensors.weights,
                        metrics=computed.metrics, history=history, params=params, extra_files=computed.files)


def _emitter(store, checkpoint: dict, parent_run, root_run, inputs, data_dir, workspace, options, workflow):
    """fn(model, history, masks) storing `checkpoint` (the node's state at that point of its training)."""
    from .compute import Computed, Tensors, evaluate_state
    from .store import ClaimLost

    def emit(model, history, masks):
        weights = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
        parent_state = store.load(parent_run)
        root = parent_state.spec["root"]
        data = workspace.data(root, data_dir)
        tensors = Tensors(weights, dict(masks))

        def create():
            return store.create(key=checkpoint["key"], kind=checkpoint["kind"], name=checkpoint["label"],
                                parent_run_id=parent_run, root_run_id=root_run, extra_parents=inputs, workflow=workflow)

        run_id, ours = store.claims.claim(checkpoint["key"], create, parent_run_id=parent_run)
        if not ours:
            return
        try:
            metrics, files = evaluate_state(workspace, root, data, tensors, history, checkpoint["steps"])
            _finish(store, run_id, checkpoint, Computed(tensors, metrics, history, None, files), parent_state,
                    parent_run, root_run, inputs, data_dir, workspace, options, workflow)
        except ClaimLost as lost:
            store.claims.release(run_id, str(lost))
        except BaseException as error:
            store.fail(run_id, f"{type(error).__name__}: {error}")
            raise

    return emit


def _semantics() -> int:
    from .spec.keys import SEMANTICS_VERSION

    return SEMANTICS_VERSION


def _version() -> str:
    from . import __version__

    return __version__


# ---- the driver -----------------------------------------------------------------------------------

class Execution:
    """Plans merged by key, checked against the store, ready to run on a scheduler."""

    def __init__(self, plans: list[Plan], store, *, scheduler: str = "sync", workers: int | None = None,
                 options: RunOptions | None = None, progress=None):
        self.plans = list(plans)
        self.store = store
        self.scheduler = parse_scheduler(scheduler)
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise SpecError(f"workers must be an integer >= 1, got {workers!r}")
        if workers is not None and self.scheduler != "processes":
            raise SpecError("--workers applies to --scheduler processes only; start cluster workers with "
                            "`dask worker`")
        from .store import is_server

        if "://" in self.scheduler and not is_server(store.tracking_uri) and not _loopback(self.scheduler):
            raise SpecError(f"workers of {self.scheduler} cannot share the local tracking store "
                            f"{store.tracking_uri}: set MLFLOW_TRACKING_URI=http://HOST:5000 (an `mlflow server`)")
        self.workers = workers
        self.options = (options or RunOptions()).resolved()
        self.progress = progress
        self.nodes: dict[str, Node] = {}     # key -> node (first plan's spelling)
        self.names: dict[str, str] = {}      # key -> "plan index/node name" for messages
        for index, plan in enumerate(self.plans):
            for node in plan.nodes:
                if node.key not in self.nodes or (self.nodes[node.key].external and not node.external):
                    self.nodes.setdefault(node.key, node)
                self.names.setdefault(node.key, f"{plan.recipe}/{node.name}")
        self.existing, self.invalid = self._lookup()
        self.missing = [key for key in self._order() if key not in self.existing]

    def _lookup(self) -> tuple[dict[str, str], list]:
        """{key: run id} of the usable FINISHED states among the plans' nodes; broken ones invalidated."""
        from .store import IntegrityError

        existing = {node.key: node.run_id for node in self.nodes.values() if node.external}
        found = self.store.find_many(k for k in self.nodes if k not in existing)
        invalid = []
        for key, run_ids in found.items():
            for run_id in run_ids:  # the oldest state of the key that is what it says it is
                try:
                    self.store.verify(run_id)
                except IntegrityError as error:
                    self.store.invalidate(run_id, str(error))
                    invalid.append((run_id, str(error)))
                    continue
                existing[key] = run_id
                break
        return existing, invalid

    def _order(self) -> list[str]:
        """Keys in an order where every dependency comes first (plans list parents first)."""
        seen, out = set(), []
        for plan in self.plans:
            for node in plan.nodes:
                if node.key not in seen:
                    seen.add(node.key)
                    out.append(node.key)
        return out

    def _node_of(self, plan_index: int, name: str) -> Node:
        return self.plans[plan_index].node(name)

    def _deps(self, key: str) -> tuple[str | None, dict[str, str], list[str]]:
        """(parent key, {role: input key}, keys it must wait for) of a node."""
        node = self.nodes[key]
        plan = next(p for p in self.plans if any(n.key == key and n.name == node.name for n in p.nodes))
        by_name = {n.name: n for n in plan.nodes}
        parent = by_name[node.parent].key if node.parent else None
        inputs = {role: by_name[name].key for role, name in node.inputs.items()}
        after = [by_name[node.emitted_by].key] if node.emitted_by else []
        return parent, inputs, after

    def check(self) -> None:
        """What can be checked before any run is created: the scheduler, the device, the models, data
        and amounts."""
        if "://" in self.scheduler:  # an unreachable scheduler is an error even when nothing is missing
            self._client = _connect(self.scheduler, self.workers)
        if not self.missing:
            return
        if self.scheduler == "sync" or self.scheduler == "processes":
            from .training.devices import resolve_device

            resolve_device(self.options.device)
        from .validate import check_nodes

        check_nodes([self.nodes[k] for k in self.missing], self.plans,
                    _workspace(self.options.device, self.options.channels_last, self.options.compile)
                    if self.scheduler == "sync" else None,
                    data_dir=self.options.data_dir, load_spec=self.store.spec)

    def _tasks(self) -> dict[str, dict]:
        tasks = {}
        for key in self.missing:
            node = self.nodes[key]
            parent, inputs, after = self._deps(key)
            deps = [k for k in dict.fromkeys([parent, *inputs.values(), *after]) if k and k in self.missing]
            known = {k: self.existing[k] for k in [parent, *inputs.values()] if k and k in self.existing}
            plan = next(p for p in self.plans if any(n.key == key for n in p.nodes))
            by_name = {n.name: n for n in plan.nodes}
            emits = [(by_name[name].at, asdict(by_name[name])) for name in node.emits
                     if by_name[name].key in self.missing]
            root = self._root(plan, node)
            tasks[key] = {"node": asdict(node), "parent": parent, "inputs": inputs, "deps": deps, "known": known,
                          "emits": emits, "data_dir": root.data_dir if root is not None else None}
        return tasks

    @staticmethod
    def _root(plan: Plan, node: Node) -> Node | None:
        by_name = {n.name: n for n in plan.nodes}
        while node.parent is not None:
            node = by_name[node.parent]
        return None if node.external else node

    def _context(self, workflow: str | None) -> dict:
        from .store import claim_timeout

        return {
            "tracking_uri": self.store.tracking_uri,
            "experiment_id": self.store.experiment_id,
            "options": asdict(self.options),
            "workflow": workflow,
            # every participant judges claims by the same timeout
            "env": {names.ENV_CLAIM_TIMEOUT: repr(claim_timeout()), "MLFLOW_DISABLE_TELEMETRY": "true",
                    **({names.ENV_CUBLAS_WORKSPACE: os.environ.get(names.ENV_CUBLAS_WORKSPACE, CUBLAS_DETERMINISTIC)}
                       if self.options.deterministic else {})},
        }

    def run(self, on_state=None, *, workflow: str | None = None) -> Result:
        """Reach every node of every plan. on_state(plan index, node name, run id) as states are reached;
        `workflow`: the run id of the workflow run the states are computed for (tagged, linked)."""
        reached = dict(self.existing)
        keys = [{n.name: n.key for n in plan.nodes} for plan in self.plans]

        def report(key: str):
            if on_state is None:
                return
            for index, plan_keys in enumerate(keys):
                for name, node_key in plan_keys.items():
                    if node_key == key:
                        on_state(index, name, reached[key])

        for key in self._order():
            if key in reached:
                report(key)
        if self.missing:
            workflow = workflow or os.environ.get("MLFLOW_RUN_ID")
            if self.scheduler == "sync":
                if self.options.threads is None:
                    self.options.threads = compute_threads(1)
                self._run_sync(self._graph(workflow), reached, report)
            else:
                self._run_dask(workflow, reached, report)
        elif self.scheduler not in ("sync", "processes"):  # nothing to compute, but a bad address is an error
            self._take_client()[0].close()
        return Result([{name: reached[key] for name, key in plan_keys.items()} for plan_keys in keys], keys,
                      self.store.experiment_id, self.store.tracking_uri,
                      computed=len(self.missing), reused=len(self.existing), invalid=self.invalid)

    def _graph(self, workflow: str | None) -> dict:
        """The dask graph of the missing states (run options resolved: the task context is final)."""
        context = json.dumps(self._context(workflow))
        return {key: (reach, json.dumps(task), context, *task["deps"]) for key, task in self._tasks().items()}

    def _run_sync(self, graph, reached, report) -> None:
        import dask.local
        from dask.callbacks import Callback

        register_store(self.store)

        class _Report(Callback):
            def _posttask(self, key, result, dsk, state, worker_id):
                reached[key] = result
                report(key)

        _progress.printer = self.progress
        try:
            with _Report():
                dask.local.get_sync(graph, list(graph))
        finally:
            _progress.printer = None

    def _run_dask(self, workflow, reached, report) -> None:
        from distributed import as_completed

        client, cluster = self._take_client()
        try:
            _check_workers(client, self.scheduler)
            if self.options.threads is None:  # the cores of each host split between its workers
                self.options.threads = cluster_threads(client)
            graph = self._graph(workflow)
            # one training per GPU: on CUDA, every task takes a worker's GPU resource (where workers have one)
            resources = task_resources(self.options.device, [w.get("resources") or {} for w in
                                                             client.scheduler_info()["workers"].values()])
            token = uuid.uuid4().hex[:8]
            renamed = {f"{self.names[k].replace('/', ':')}-{k[:12]}-{token}": k for k in graph}
            back = {v: k for k, v in renamed.items()}
            dsk = {new: (task[0], *[back.get(a, a) if isinstance(a, str) and a in graph else a for a in task[1:]])
                   for new, task in ((back[k], t) for k, t in graph.items())}
            futures = client.get(dsk, list(dsk), sync=False, resources=resources)
            errors = []
            for future in as_completed(futures):
                key = renamed[future.key]
                if future.status == "finished":
                    reached[key] = future.result()
                    report(key)
                else:
                    errors.append((key, future.exception()))
            if errors:
                raise self._task_error(errors)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()

    def _take_client(self):
        """The client `check` connected (or a new one): (client, cluster or None)."""
        connected = getattr(self, "_client", None)
        self._client = None
        return connected or _connect(self.scheduler, self.workers, self.options.device)

    def _task_error(self, errors) -> BaseException:
        """The first task error; a missing package on a worker becomes a one-line SpecError."""
        key, error = errors[0]
        if isinstance(error, ModuleNotFoundError) and (error.name or "").split(".")[0] == "mlprune":
            return SpecError(f"a dask worker of {self.scheduler} cannot import mlprune: install it there")
        if hasattr(error, "add_note"):
            error.add_note(f"mlprune: {len(errors)} state(s) failed; the first: {self.names[key]}")
        return error


def run_plans(plans, store, scheduler: str = "sync", *, workers: int | None = None, on_state=None,
              options: RunOptions | None = None, progress=None) -> Result:
    """Check and run plans in one go (`Execution`): per plan {node name: run id} in a Result."""
    execution = Execution(plans, store, scheduler=scheduler, workers=workers, options=options, progress=progress)
    execution.check()
    return execution.run(on_state)


def run_plan(plan: Plan, experiment, *, scheduler: str = "sync", workers: int | None = None, on_state=None) -> dict:
    """Reach every node of one plan with an `api.Experiment`; returns {node name: ExperimentState}.

    on_state(node, state) is called as states are reached.
    """
    callback = None
    if on_state is not None:
        callback = lambda _index, name, run_id: on_state(plan.node(name), experiment.state(run_id))  # noqa: E731
    result = run_plans([plan], experiment.store, scheduler, workers=workers, on_state=callback,
                       options=experiment.run_options(),
                       progress=experiment.progress)
    return {name: experiment.state(run_id) for name, run_id in result.states[0].items()}


# dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also pins glibc's mmap
# threshold: every tensor above 128 KiB is then mmap'ed and unmapped again, and training runs
# 2-3x slower in a worker than in a plain process. Our local clusters drop the setting; in
# workers started otherwise (`dask worker`), reach raises both thresholds (_tune_allocator).
WORKER_CONFIG = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


GPU_RESOURCE = "GPU"


def task_resources(device_name: str, worker_resources: list[dict]) -> dict | None:
    """What each task asks of a dask worker: one GPU when states are computed on CUDA (``cuda``,
    ``cuda:N``, or ``auto`` on workers that have one) and some worker advertises the ``GPU``
    resource; else nothing (a task that asked for a resource no worker has would wait forever)."""
    if not (device_name == "auto" or device_name.startswith("cuda")):
        return None
    if not any(resources.get(GPU_RESOURCE, 0) >= 1 for resources in worker_resources):
        return None
    return {GPU_RESOURCE: 1}


def gpu_workers(n_workers: int, gpus: int) -> list[dict]:
    """Per-worker options of a local cluster on `gpus` GPUs: worker i sees GPU i mod gpus only (its
    ``cuda`` is that GPU) and offers one ``GPU`` resource, so each GPU trains one state at a time."""
    return [{"env": {"CUDA_VISIBLE_DEVICES": str(i % gpus)}, "resources": {GPU_RESOURCE: 1}}
            for i in range(n_workers)]


def _local_gpus(device_name: str) -> int:
    """GPUs a local cluster spreads its workers over: all of them for ``auto`` / ``cuda``, none for a
    chosen ``cuda:N`` (every worker uses that one) or another device."""
    if device_name not in ("auto", "cuda"):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def local_cluster(n_workers: int | None, gpus: int = 0):
    """A dask cluster of single-threaded worker processes on this machine, set up for training.

    With `gpus`, one worker per GPU by default, each pinned to its GPU and offering the ``GPU``
    resource (`gpu_workers`); `n_workers` defaults to the cores without GPUs.
    """
    import logging

    import dask
    from distributed import LocalCluster, Nanny, Scheduler, SpecCluster

    with dask.config.set(WORKER_CONFIG):
        if not gpus:
            return LocalCluster(n_workers=n_workers or os.cpu_count() or 1, threads_per_worker=1, processes=True,
                                dashboard_address=None, silence_logs=logging.ERROR)
        scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": None}}
        workers = {f"gpu-worker-{i}": {"cls": Nanny, "options": {"nthreads": 1, "host": "127.0.0.1",
                                                                  "silence_logs": logging.ERROR, **extra}}
                   for i, extra in enumerate(gpu_workers(n_workers or gpus, gpus))}
        return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.ERROR)


def _connect(scheduler: str, workers: int | None, device_name: str = "cpu"):
    """(client, cluster or None) for 'processes' or a scheduler address; one-line errors."""
    from distributed import Client

    if scheduler == "processes":
        cluster = local_cluster(workers, _local_gpus(device_name))
        return Client(cluster), cluster
    started = time.monotonic()
    try:
        client = Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s")
    except (OSError, TimeoutError, ValueError) as error:
        raise SpecError(f"cannot reach the dask scheduler {scheduler} within "
                        f"{time.monotonic() - started:.0f} s: {' '.join(str(error).split())[:200]}") from None
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
