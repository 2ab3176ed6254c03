"""The one executor: plans -> a task graph of missing states -> a scheduler -> the store.

    execution = Execution(plans, store, scheduler="sync")   # merges the plans by key, finds what exists
    execution.check()                                       # everything checkable before a run is created
    result = execution.run(on_state=...)                    # computes what is missing

Every node of every plan has a key before anything runs (`plan`), so plans are
merged by key: a root or a trained network that several plans share is one
task, computed once. Each missing state is one task of a dask graph that
depends on its parents' tasks; independent branches run in parallel. The graph
is the same for every scheduler: ``sync`` runs it in this process with dask's
synchronous scheduler, ``local`` on worker processes of this machine forked from one that loaded
torch once (`executor.local`), ``processes`` on a local dask cluster, ``slurm`` on workers started as
SLURM jobs (`executor.slurm`), ``tcp://HOST:PORT`` on a running dask scheduler; ``auto`` (the
default) is ``local`` where independent trainings are missing and the machine has the cores, else
``sync``. A task is plain data (JSON: the node, the tracking
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
import uuid
from dataclasses import dataclass, field, fields

from .. import names
from ..errors import SpecError
from ..plan import Node, Plan, lineage_top
from ..plugins import check_portable, plan_plugins
from .clusters import GPU_RESOURCE, check_worker_plugins, check_workers, connect, is_loopback, task_resources
from .options import RunOptions
from .task import PROGRESS, batch_member, process_workspace, reach, reach_batch, register_store
from .threads import (
    CUBLAS_DETERMINISTIC,
    cluster_threads,
    compute_threads,
    machine_cores,
    pinned_threads,
    settle_wait_policy,
)

SCHEDULERS = ("auto", "sync", "local", "processes", "slurm", "tcp://HOST:PORT")
_NAMED = ("auto", "sync", "local", "processes", "slurm")
WORKER_SCHEDULERS = ("local", "processes", "slurm")  # those --workers applies to


@dataclass
class Result:
    """What an execution reached: per plan {node name: run id}, and what it cost."""

    states: list[dict[str, str]]
    keys: list[dict[str, str]]
    experiment_id: str
    tracking_uri: str
    computed: int = 0  # distinct states that had no usable FINISHED run when we started
    reused: int = 0  # distinct states that had one
    invalid: list = field(default_factory=list)  # (run id, reason) of states found broken and recomputed
    scheduler: str = "sync"  # where the missing states were computed (`Execution.describe_scheduler`)


_NODE_FIELDS = [f.name for f in fields(Node)]


def _plain(node: Node) -> dict:
    """A node as the dict a task carries (shallow: `dataclasses.asdict` deep-copies every value, and the
    task is written as JSON right away), the same as `asdict(node)` for JSON."""
    return {name: getattr(node, name) for name in _NODE_FIELDS}


def default_scheduler() -> str:
    """The scheduler where none is given: MLPRUNE_SCHEDULER, else ``auto``."""
    text = os.environ.get(names.ENV_SCHEDULER, "").strip()
    if text and text not in _NAMED and "://" not in text:
        raise SpecError(f"{names.ENV_SCHEDULER}={text!r} is not a scheduler; allowed: {', '.join(SCHEDULERS)}")
    return text or "auto"


def parse_scheduler(scheduler: str | None) -> str:
    scheduler = (scheduler or default_scheduler()).strip()
    if scheduler in _NAMED:
        return scheduler
    if "://" in scheduler:
        from urllib.parse import urlparse

        try:
            parsed = urlparse(scheduler)
            ok = bool(parsed.hostname) and parsed.port is not None
        except ValueError:  # 'tcp://[::1': an unclosed IPv6 bracket, a port that is no number
            ok = False
        if not ok:
            raise SpecError(
                f"--scheduler {scheduler!r} is not a scheduler address; allowed: "
                f"{', '.join(SCHEDULERS)} (e.g. tcp://10.0.0.5:8786, tcp://[::1]:8786)"
            )
        return scheduler
    raise SpecError(f"unknown scheduler {scheduler!r}; allowed: {', '.join(SCHEDULERS)}")


_CONTEXT = object()  # in a built graph: where the tasks' context (`Execution._context`) goes


class Execution:
    """Plans merged by key, checked against the store, ready to run on a scheduler."""

    def __init__(
        self,
        plans: list[Plan],
        store,
        *,
        scheduler: str | None = None,
        workers: int | None = None,
        options: RunOptions | None = None,
        progress=None,
        slurm=None,
        accept_data_change: bool = False,
    ):
        self.plans = list(plans)
        self.store = store
        self.scheduler = parse_scheduler(scheduler)
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise SpecError(f"workers must be an integer >= 1, got {workers!r}")
        if workers is not None and self.scheduler not in WORKER_SCHEDULERS:
            raise SpecError(
                f"--workers applies to --scheduler {', '.join(WORKER_SCHEDULERS)} only, not {self.scheduler}; "
                f"start cluster workers with `dask worker`"
            )
        if slurm is not None and self.scheduler != "slurm":
            raise SpecError("SLURM options (--slurm-opt, --slurm-config) apply to --scheduler slurm only")
        from .slurm_options import config_from

        self.slurm = config_from(slurm) if self.scheduler == "slurm" else None
        from ..store import is_server

        if "://" in self.scheduler and not is_server(store.tracking_uri) and not is_loopback(self.scheduler):
            raise SpecError(
                f"workers of {self.scheduler} cannot share the local tracking store "
                f"{store.tracking_uri}: set MLFLOW_TRACKING_URI=http://HOST:5000 (an `mlflow server`)"
            )
        self.workers = workers
        self.accept_data_change = accept_data_change
        self.data_changes: list[str] = []  # what --accept-data-change accepted (`_check_data`)
        self.options = (options or RunOptions()).resolved()
        self.progress = progress
        # index maps, built once: every question about a node below is a look-up, so building the graph of
        # N states takes time linear in N (searching the plans per node made it quadratic)
        self.nodes: dict[str, Node] = {}  # key -> node (first plan's spelling)
        self.names: dict[str, str] = {}  # key -> "plan index/node name" for messages
        self._home: dict[str, int] = {}  # key -> index of the first plan that has it (its node's plan)
        self._by_name = [{n.name: n for n in plan.nodes} for plan in self.plans]  # per plan: name -> node
        self._tops: list[dict[str, Node]] = [{} for _ in self.plans]  # per plan: lineage_top memo
        for index, plan in enumerate(self.plans):
            for node in plan.nodes:
                if node.key not in self.nodes:
                    self.nodes[node.key], self._home[node.key] = node, index
                self.names.setdefault(node.key, f"{plan.recipe}/{node.name}")
        self.existing, self.invalid = self._lookup()
        self.missing = [key for key in self._order() if key not in self.existing]
        self._missing = set(self.missing)
        self.asked = self.scheduler  # before `auto` is resolved
        self._tasks_graph = None  # `_build_graph`, made once
        self._local = None  # local workers (`executor.local`), started here so that their imports overlap ours
        if self.scheduler in ("auto", "local"):
            self._side_by_side()
        if self.scheduler == "sync" and self.missing:
            settle_wait_policy(pinned_threads() or machine_cores())

    def _side_by_side(self) -> None:
        """Resolve ``auto`` (``local`` where independent trainings are missing, the device is the CPU and
        the machine has a core for each, else ``sync``) and start the local workers."""
        from .local import LocalWorkers, call_names, preload_modules, training_width

        count = 0
        if self.missing:
            width = training_width(self._graph(None), call_names())
            count = self.workers or min(width, max(1, machine_cores() // (pinned_threads() or 1)))
        if self.scheduler == "auto":
            if count < 2 or not hasattr(os, "fork") or not self._cpu_only() or not self._portable():
                self.scheduler = "sync"
                return
            self.scheduler = "local"
        elif not hasattr(os, "fork"):
            raise SpecError("--scheduler local forks its workers: not on this system; use sync or processes")
        if self.missing:
            self._local = LocalWorkers(max(1, count), preload_modules([self._root(k) for k in self.missing]))

    def _cpu_only(self) -> bool:
        """Whether states are computed on the CPU, as far as can be told before torch is imported (`check`
        confirms it)."""
        from ..training.devices import maybe_accelerator

        return self.options.device == "cpu" or (self.options.device == "auto" and not maybe_accelerator())

    def _portable(self) -> bool:
        try:
            check_portable(plan_plugins([self.nodes[k] for k in self.missing]), "local")
        except SpecError:
            return False
        return True

    def close(self) -> None:
        """End the local workers started for this execution, if it is not run (`run` ends them itself)."""
        if self._local is not None:
            self._local.close()

    @property
    def local_workers(self) -> int:
        """How many local worker processes compute states (0: none, this process does)."""
        return self._local.count if self._local is not None else 0

    def describe_scheduler(self) -> str:
        """The scheduler as resolved, for a summary line: e.g. ``local (2 workers, 1 thread each)``."""
        if self.scheduler == "local" and self._local is not None and self.options.threads:
            threads = self.options.threads
            return f"local ({self._local.count} workers, {threads} thread{'s' if threads > 1 else ''} each)"
        return self.scheduler

    def _lookup(self) -> tuple[dict[str, str], list]:
        """{key: run id} of the usable FINISHED states among the plans' nodes; broken ones invalidated."""
        from ..store import IntegrityError

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
        return list(self.nodes)  # first seen first: a dict keeps the order keys were added in

    def _deps(self, key: str) -> tuple[str | None, dict[str, str], list[str]]:
        """(parent key, {role: input key}, keys it must wait for) of a node."""
        node, by_name = self.nodes[key], self._by_name[self._home[key]]
        parent = by_name[node.parent].key if node.parent else None
        inputs = {role: by_name[name].key for role, name in node.inputs.items()}
        after = [by_name[node.emitted_by].key] if node.emitted_by else []
        return parent, inputs, after

    def _top(self, key: str) -> Node:
        """The top of a node's lineage in its plan: its root, or the existing state it starts from."""
        index = self._home[key]
        by_name = self._by_name[index]
        return lineage_top(
            self.nodes[key], lambda n: by_name[n.parent] if n.parent is not None else None, self._tops[index]
        )

    def _root(self, key: str) -> dict | None:
        """The resolved root spec a node's lineage starts from (None: an existing state that lacks one)."""
        top = self._top(key)
        return (top.spec or {}).get("root") if top.external else top.root

    def check(self) -> None:
        """What can be checked before any run is created: the scheduler, the device, the models, data
        and amounts."""
        if "://" in self.scheduler:  # an unreachable scheduler is an error even when nothing is missing
            self._client = connect(self.scheduler, self.workers)
        if self.scheduler == "slurm":  # no sbatch, or a store the jobs cannot share: an error in any case
            from ..store import is_server
            from .slurm import check_job_script, check_submit

            check_submit(self.slurm, self.store.tracking_uri, is_server(self.store.tracking_uri))
            check_job_script(self.slurm, GPU_RESOURCE)
            if self.options.device.startswith("cuda") and not self.slurm.gpus:
                raise SpecError(f"--device {self.options.device} on SLURM needs a GPU in each job: --slurm-opt gpus=1")
        if not self.missing:
            return
        if self.scheduler != "sync":
            check_portable(plan_plugins([self.nodes[k] for k in self.missing]), self.scheduler)
        if self.scheduler in ("sync", "local", "processes"):
            from ..training.devices import resolve_device

            device = resolve_device(self.options.device)
            if self.asked == "auto" and self.scheduler == "local" and device.type != "cpu":
                self._local.close()  # an accelerator the early guess did not see: one state after the other
                self._local, self.scheduler = None, "sync"
        from ..validate import check_nodes
        from ..workspace import Workspace

        workspace = (
            process_workspace(self.options.device, self.options.channels_last, self.options.compile)
            if self.scheduler == "sync"
            else Workspace()
        )
        check_nodes(
            [self.nodes[k] for k in self.missing],
            self.plans,
            workspace,
            data_dir=self.options.data_dir,
            load_spec=self.store.spec,
        )
        self._check_data(workspace)

    def _check_data(self, workspace) -> None:
        """A missing state computed from a reused one reads the data the reused one was computed on (the
        fingerprints its state.json records): else a one-line SpecError, or with `accept_data_change` a
        warning (the new states record the change)."""
        from ..validate import node_data_fingerprint

        for key in self.missing:
            parent, inputs, _ = self._deps(key)
            reused = [self.existing[k] for k in dict.fromkeys([parent, *inputs.values()]) if k in self.existing]
            if not reused:
                continue
            current = node_data_fingerprint(
                self.nodes[key], self.plans, workspace, data_dir=self.options.data_dir, load_spec=self.store.spec
            )
            for run_id in reused:
                recorded = self.store.spec(run_id).get(names.STATE_DATA_FINGERPRINT)
                if not recorded or not current or recorded == current:
                    continue
                message = (
                    f"state {run_id[:8]} was computed on other data ({recorded}) than {self.names[key]} "
                    f"would read now ({current}): a corrupted copy, another subset or another version of "
                    f"the dataset would mix into one study"
                )
                if not self.accept_data_change:
                    raise SpecError(
                        f"{message}; use a new experiment (--experiment-name) for this data, or "
                        f"--accept-data-change to compute on it anyway (the new states record it)"
                    )
                self.data_changes.append(message)
                return

    def _tasks(self) -> dict[str, dict]:
        tasks = {}
        for key in self.missing:
            node = self.nodes[key]
            parent, inputs, after = self._deps(key)
            deps = [k for k in dict.fromkeys([parent, *inputs.values(), *after]) if k and k in self._missing]
            known = {k: self.existing[k] for k in [parent, *inputs.values()] if k and k in self.existing}
            by_name = self._by_name[self._home[key]]
            emits = [
                (by_name[name].at, _plain(by_name[name])) for name in node.emits if by_name[name].key in self._missing
            ]
            top = self._top(key)
            tasks[key] = {
                "node": _plain(node),
                "parent": parent,
                "inputs": inputs,
                "deps": deps,
                "known": known,
                "emits": emits,
                "data_dir": None if top.external else top.data_dir,
            }
        return tasks

    def _context(self, workflow: str | None) -> dict:
        from ..store import claim_timeout

        return {
            "tracking_uri": self.store.tracking_uri,
            "experiment_id": self.store.experiment_id,
            "options": self.options.as_dict(),
            "workflow": workflow,
            # every participant judges claims by the same timeout
            "env": {
                names.ENV_CLAIM_TIMEOUT: repr(claim_timeout()),
                "MLFLOW_DISABLE_TELEMETRY": "true",
                **(
                    {names.ENV_CUBLAS_WORKSPACE: os.environ.get(names.ENV_CUBLAS_WORKSPACE, CUBLAS_DETERMINISTIC)}
                    if self.options.deterministic
                    else {}
                ),
            },
        }

    def run(self, on_state=None, *, workflow: str | None = None) -> Result:
        """Reach every node of every plan. on_state(plan index, node name, run id) as states are reached;
        `workflow`: the run id of the workflow run the states are computed for (tagged, linked)."""
        reached = dict(self.existing)
        keys = [{n.name: n.key for n in plan.nodes} for plan in self.plans]
        places: dict[str, list[tuple[int, str]]] = {}  # key -> its (plan index, node name)s
        for index, plan_keys in enumerate(keys):
            for name, node_key in plan_keys.items():
                places.setdefault(node_key, []).append((index, name))

        def report(key: str):
            if on_state is None:
                return
            for index, name in places.get(key, ()):
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
            elif self.scheduler == "local":
                self._run_local(workflow, reached, report)
            else:
                self._run_dask(workflow, reached, report)
        elif "://" in self.scheduler:  # nothing to compute, but a bad address is an error
            self._take_client()[0].close()
        return Result(
            [{name: reached[key] for name, key in plan_keys.items()} for plan_keys in keys],
            keys,
            self.store.experiment_id,
            self.store.tracking_uri,
            computed=len(self.missing),
            reused=len(self.existing),
            invalid=self.invalid,
            scheduler=self.describe_scheduler(),
        )

    def _graph(self, workflow: str | None) -> dict:
        """The dask graph of the missing states (run options resolved: the task context is final)."""
        if self._tasks_graph is None:  # built once: `auto` reads it before the run (10,000 tasks: 0.3 s)
            self._tasks_graph = self._build_graph()
        context = json.dumps(self._context(workflow))
        return {key: tuple(context if a is _CONTEXT else a for a in task) for key, task in self._tasks_graph.items()}

    def _build_graph(self) -> dict:
        """The graph with `_CONTEXT` where the tasks' context goes (what the tasks are does not depend on it)."""
        tasks = self._tasks()
        graph = {key: (reach, json.dumps(task), _CONTEXT, *task["deps"]) for key, task in tasks.items()}
        groups = self.batch_groups(tasks)
        if groups:  # run option batch: sibling trainings as one group task
            from .batching import batched_graph

            graph = batched_graph(graph, tasks, groups, _CONTEXT, reach_batch, batch_member)
        return graph

    def batch_groups(self, tasks: dict | None = None) -> list[list[str]]:
        """The keys of missing states trained together (run option ``batch``; `batching.sibling_groups`)."""
        if self.options.batch < 2 or self.options.compile:  # torch.compile'd trainings are not batched
            return []
        from .batching import sibling_groups, sibling_signature

        tasks = self._tasks() if tasks is None else tasks
        signatures = {}
        for key, task in tasks.items():
            signatures[key] = sibling_signature(
                task["node"], self._root(key), task["data_dir"] or self.options.data_dir
            )
        return sibling_groups(tasks, signatures, self.options.batch)

    def _run_sync(self, graph, reached, report) -> None:
        import dask.local
        from dask.callbacks import Callback

        register_store(self.store)
        states = set(self.nodes)

        class _Report(Callback):
            def _posttask(self, key, result, dsk, state, worker_id):
                if key in states:  # not a group task (`batching`)
                    reached[key] = result
                    report(key)

        PROGRESS.printer = self.progress
        try:
            with _Report():
                dask.local.get_sync(graph, list(graph))
        finally:
            PROGRESS.printer = None

    def _run_local(self, workflow, reached, report) -> None:
        from .local import call_names

        if self.options.threads is None:  # the cores split between the workers
            self.options.threads = compute_threads(self._local.count)

        def on_result(key, run_id):
            if key in self.nodes:  # not a group task (`batching`)
                reached[key] = run_id
                report(key)

        try:
            self._local.run(self._graph(workflow), call_names(), on_result, self.progress)
        finally:
            self._local.close()

    def _run_dask(self, workflow, reached, report) -> None:
        from distributed import as_completed

        client, cluster = self._take_client()
        try:
            check_workers(client, self.scheduler)
            check_worker_plugins(client, plan_plugins([self.nodes[k] for k in self.missing]))
            if self.options.threads is None:  # the cores of each host split between its workers; a job's CPUs
                self.options.threads = self.slurm.cpus_per_task if self.slurm else cluster_threads(client)
            graph = self._graph(workflow)
            # one training per GPU: on CUDA, every task takes a worker's GPU resource (where workers have one)
            resources = task_resources(
                self.options.device, [w.get("resources") or {} for w in client.scheduler_info()["workers"].values()]
            )
            token = uuid.uuid4().hex[:8]
            renamed = {f"{self.names.get(k, k).replace('/', ':')}-{k[:12]}-{token}": k for k in graph}
            back = {v: k for k, v in renamed.items()}
            dsk = {
                new: (task[0], *[back.get(a, a) if isinstance(a, str) and a in graph else a for a in task[1:]])
                for new, task in ((back[k], t) for k, t in graph.items())
            }
            futures = client.get(dsk, list(dsk), sync=False, resources=resources)
            errors = []
            # SLURM jobs: also raise when they cannot start at all (slurm.SlurmJobs.completed)
            for future in getattr(cluster, "completed", as_completed)(futures):
                key = renamed[future.key]
                if key not in self.nodes:  # a group task (`batching`): its states are reported by their own tasks
                    continue
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
        if connected:
            return connected
        if self.scheduler == "slurm":
            from .slurm import graph_width, jobs_for, start_client

            width = graph_width({key: task["deps"] for key, task in self._tasks().items()})
            return start_client(self.slurm, jobs_for(width, self.workers), GPU_RESOURCE)
        return connect(self.scheduler, self.workers, self.options.device)

    def _task_error(self, errors) -> BaseException:
        """The first task error; a missing package on a worker becomes a one-line SpecError."""
        key, error = errors[0]
        if isinstance(error, ModuleNotFoundError) and (error.name or "").split(".")[0] == "mlprune":
            return SpecError(f"a dask worker of {self.scheduler} cannot import mlprune: install it there")
        if hasattr(error, "add_note"):
            error.add_note(f"mlprune: {len(errors)} state(s) failed; the first: {self.names[key]}")
        return error


def run_plans(
    plans,
    store,
    scheduler: str | None = None,
    *,
    workers: int | None = None,
    on_state=None,
    options: RunOptions | None = None,
    progress=None,
    slurm=None,
) -> Result:
    """Check and run plans in one go (`Execution`): per plan {node name: run id} in a Result.
    `slurm`: the options of --scheduler slurm (a {name: value} mapping of slurm.OPTIONS or a SlurmConfig)."""
    execution = Execution(
        plans, store, scheduler=scheduler, workers=workers, options=options, progress=progress, slurm=slurm
    )
    execution.check()
    return execution.run(on_state)


def run_plan(
    plan: Plan, experiment, *, scheduler: str = "sync", workers: int | None = None, on_state=None, slurm=None
) -> dict:
    """Reach every node of one plan with an `api.Experiment`; returns {node name: ExperimentState}.

    on_state(node, state) is called as states are reached.
    """
    callback = None
    if on_state is not None:
        callback = lambda _index, name, run_id: on_state(plan.node(name), experiment.state(run_id))  # noqa: E731
    result = run_plans(
        [plan],
        experiment.store,
        scheduler,
        workers=workers,
        on_state=callback,
        options=experiment.run_options(),
        progress=experiment.progress,
        slurm=slurm,
    )
    return {name: experiment.state(run_id) for name, run_id in result.states[0].items()}
