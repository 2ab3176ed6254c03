"""One task of the graph: reach one state (find it, wait for another process's claim, or compute it
under our claim and store it), in a dask worker or, for ``sync``, in the caller. A task is plain
JSON (the node, its parents' keys, the tracking URI, the experiment id, run options)."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import replace

from .. import names
from .context import Reaching, TaskContext
from .options import RunOptions, run_params
from .threads import CUBLAS_DETERMINISTIC, Determinism, PinnedThreads, tune_allocator

_PROCESS: dict = {}  # (tracking uri, experiment id) -> Store; ("ws", device) -> Workspace


_PROCESS_LOCK = threading.Lock()


PROGRESS = threading.local()  # sync scheduler: the caller's progress printer


def process_store(tracking_uri: str, experiment_id: str):
    from ..store import Store

    with _PROCESS_LOCK:
        key = (tracking_uri, experiment_id)
        if key not in _PROCESS:
            _PROCESS[key] = Store(tracking_uri=tracking_uri, experiment_id=experiment_id)
        return _PROCESS[key]


def register_store(store) -> None:
    """Share `store` (and its memory of states just computed) with the tasks this process runs."""
    with _PROCESS_LOCK:
        _PROCESS[(store.tracking_uri, store.experiment_id)] = store


def process_workspace(device_name: str, channels_last: bool = False, compile: bool = False):
    from ..training.devices import resolve_device
    from ..workspace import Workspace

    with _PROCESS_LOCK:
        key = ("ws", device_name, channels_last, compile)
        if key not in _PROCESS:
            _PROCESS[key] = Workspace(resolve_device(device_name), channels_last=channels_last, compile=compile)
        return _PROCESS[key]


def describe(store, state: Reaching, workflow: str | None) -> str:
    """Markdown for the run's description in the MLflow UI: what the state is, links to its parents,
    its workflow run and its lineage page (`mlflow server --app-name mlprune`)."""
    node, parent_run, root_run = state.node, state.parent_run, state.root_run
    lines = [f"**mlprune state** `{node['label']}` · kind `{node['kind']}`"]
    if parent_run:
        lines.append(f"- parent: [{parent_run[:8]}]({store.ui_link(parent_run)})")
    for role, source in state.inputs.items():
        lines.append(f"- {role} from: [{source[:8]}]({store.ui_link(source)})")
    if root_run and root_run != parent_run:
        lines.append(f"- root: [{root_run[:8]}]({store.ui_link(root_run)})")
    if workflow:
        lines.append(f"- workflow run: [{workflow[:8]}]({store.ui_link(workflow)})")
    lines.append(
        f"- lineage: [the DAG around this state]({names.LINEAGE_ROUTE}{state.run_id}) "
        f"(served by `mlflow server --app-name mlprune`)"
    )
    for step in node["steps"]:
        lines.append(f"- step `{json.dumps(step, sort_keys=True)}`")
    return "\n".join(lines)


def task_context(context_text: str) -> TaskContext:
    """The context of a task in this process: its environment set, its store and workspace opened."""
    context = json.loads(context_text)
    tune_allocator()
    for name, value in context.get("env", {}).items():
        os.environ[name] = value
    options = RunOptions(**context["options"])
    if options.deterministic:  # before this process's first CUDA work, where possible
        os.environ.setdefault(names.ENV_CUBLAS_WORKSPACE, CUBLAS_DETERMINISTIC)
    return TaskContext(
        process_store(context["tracking_uri"], context["experiment_id"]),
        process_workspace(options.device, options.channels_last, options.compile),
        options,
        context,
    )


def reach(task_text: str, context_text: str, *dependency_runs: str) -> str:
    """Reach one state (find it, wait for it, or compute it) and return its run id.

    Runs in a dask worker or, for ``sync``, in the caller. `dependency_runs` are the run ids the
    task's dependencies reached, in the order of ``task["deps"]``.
    """
    from ..training.interrupt import interrupted, stop_requested

    if stop_requested():  # a stopping process starts no other state
        raise interrupted()
    task, ctx = json.loads(task_text), task_context(context_text)
    runs = {**task["known"], **dict(zip(task["deps"], dependency_runs))}
    parent_run = runs.get(task["parent"]) if task["parent"] else None
    inputs = {role: runs[key] for role, key in task["inputs"].items()}
    return _claim_and_compute(ctx, Reaching(task, parent_run, inputs))


def _create(ctx: TaskContext, state: Reaching, node: dict | None = None) -> str:
    """A new RUNNING claim run of `state` (or of `node`, a checkpoint its training emits)."""
    from .slurm import job_tags

    tags = job_tags()  # a claim that ends KILLED or FAILED names its SLURM job too
    if node is None:
        node = state.node
        if node["root"] is not None and state.task.get("data_dir"):
            tags[names.TAG_DATA_DIR] = str(state.task["data_dir"])
    return ctx.store.create(
        key=node["key"],
        kind=node["kind"],
        name=node["label"],
        parent_run_id=state.parent_run,
        root_run_id=state.root_run,
        extra_parents=state.inputs,
        workflow=ctx.workflow,
        tags=tags,
    )


def _claim_and_compute(ctx: TaskContext, state: Reaching) -> str:
    from ..store import ClaimLost

    store = ctx.store
    state.load_parent(store, ctx.options.data_dir)
    progress = getattr(PROGRESS, "printer", None)
    while True:
        run_id, ours = store.claims.claim(
            state.node["key"], lambda: _create(ctx, state), progress=progress, parent_run_id=state.parent_run
        )
        if not ours:
            return run_id
        state.run_id = run_id
        try:
            final = _compute(ctx, state)
        except ClaimLost as lost:  # taken over, or an older claim exists: wait for its state
            store.claims.release(run_id, str(lost))
            continue
        if final is not None:
            return final


def _compute(ctx: TaskContext, state: Reaching) -> str | None:
    """Compute `state` under our claim (``state.run_id``) and store it; its stored run id."""
    from ..runners import NodeHooks, compute_node
    from .resume import close_checkpointing, forget_checkpoints, open_checkpointing

    store, options, node, run_id = ctx.store, ctx.options, state.node, state.run_id
    progress = getattr(PROGRESS, "printer", None)
    alive = store.claims.keep_alive(run_id, node["key"])
    checkpointing = None
    try:
        with PinnedThreads(options.threads), Determinism(options.deterministic):
            if progress:
                progress(f"computing {node['label']} ({node['kind']})")
            if node["root"] is None:
                loaded_inputs = {role: store.load(r) for role, r in state.inputs.items()}
            else:
                loaded_inputs = {}
                store.set_tags(run_id, {names.TAG_ROOT: run_id})  # a root is its own root: its lineage starts at it
            # ---- resumable trainings (executor.resume): from the key's newest valid checkpoint, if any
            checkpointing = open_checkpointing(store, node, run_id, options, progress=progress)
            emit = {at: _emitter(ctx, state, checkpoint, checkpointing) for at, checkpoint in state.task["emits"]}
            hooks = NodeHooks(lambda: store.claims.heartbeat(run_id), emit, progress, checkpointing)
            computed = _compute_resumed(
                lambda: compute_node(
                    node, state.parent, loaded_inputs, ctx.workspace, data_dir=state.data_dir, hooks=hooks
                ),
                checkpointing,
                node,
            )
            close_checkpointing(store, checkpointing, run_id)  # a finished state keeps no checkpoint
            final = _finish(ctx, state, computed)
            if final == run_id:
                forget_checkpoints(store, node["key"], run_id, checkpointing)
            return final
    except BaseException as error:
        from ..store import ClaimLost
        from ..training.interrupt import Interrupted

        if checkpointing is not None:
            close_checkpointing(store, checkpointing, run_id, discard=False)
        if isinstance(error, Interrupted):  # checkpointed: KILLED, not FINISHED; the next owner resumes it
            store.claims.release(run_id, f"{type(error).__name__}: {error}")
        elif not isinstance(error, ClaimLost):
            store.fail(run_id, f"{type(error).__name__}: {error}")
        raise
    finally:
        alive.stop()


def _compute_resumed(compute, checkpointing, node: dict):
    """compute(): from the checkpoint `checkpointing` resumes (if any); a checkpoint that does not fit the node's
    training (its iteration, its tensors, its step) is not used: warned about, the node computed from its parent."""
    from ..training.checkpoint import CheckpointError
    from .resume import warn

    try:
        computed = compute()
        checkpointing.check_resumed()
        return computed
    except CheckpointError as error:
        if checkpointing.resume is None:
            raise
        warn(f"{error}: not used; computing {node['label']} from its parent")
        checkpointing.resume, checkpointing.resumed = None, False
        return compute()


def _data_record(root: dict, data_dir, workspace, parent_state) -> dict:
    """What a state records of its data: the fingerprint of the data it was computed on (its parent's when it
    read none), and where it differs from its parent's (computed with --accept-data-change), both."""
    recorded = parent_state.spec.get(names.STATE_DATA_FINGERPRINT) if parent_state is not None else None
    current = workspace.loaded_fingerprint(root, data_dir) or recorded
    out = {names.STATE_DATA_FINGERPRINT: current} if current else {}
    if recorded and current and recorded != current:
        out[names.STATE_DATA_CHANGE] = {"from": recorded, "to": current}
    return out


def _finish(ctx: TaskContext, state: Reaching, computed, batched: int = 1) -> str:
    """Store what was computed for `state` (its node, under its claim ``state.run_id``) and finish its run."""
    from ..plugins import lineage_plugins, plugin_tags
    from ..store import Record
    from ..training.devices import device_label, environment_tags
    from .slurm import job_tags

    store, options, node, run_id, parent = ctx.store, ctx.options, state.node, state.run_id, state.parent
    spec = {
        "kind": node["kind"],
        "root": node["root"] if node["root"] is not None else parent.spec["root"],
        "steps": node["steps"],
        "inputs": {role: {"key": store.spec(r)["key"], "run_id": r} for role, r in state.inputs.items()},
        "key": node["key"],
        "semantics": _semantics(),
        "mlprune_version": _version(),
        "parent_key": parent.spec["key"] if parent is not None else None,
        "parent_run": state.parent_run,
        "root_run": state.root_run if state.root_run else run_id,
        "data_dir": str(state.data_dir) if state.data_dir else None,
    }
    spec.update(_data_record(spec["root"], state.data_dir, ctx.workspace, parent))
    if computed.weights_from:
        spec["weights_from"] = computed.weights_from
        if computed.zeroed:
            spec["zeroed"] = computed.zeroed
    if computed.tensors is None:
        spec["analysis"] = True
    params = dict(node["params"])  # the resolved options and the study's params (plan.study_params)
    if computed.metrics.get(names.M_SPARSITY) is not None:
        params[names.PARAM_SPARSITY] = f"{computed.metrics[names.M_SPARSITY]:.4f}"
    params.update(run_params(options, batch=batched))
    tags = {
        names.TAG_DEVICE: device_label(ctx.workspace.device),
        **environment_tags(ctx.workspace.device),
        names.TAG_NOTE: describe(store, state, ctx.workflow),
        **job_tags(),
    }
    plugins = lineage_plugins(
        spec["root"],
        spec["steps"],
        [parent.spec if parent is not None else {}, *(store.spec(r) for r in state.inputs.values())],
    )
    if plugins:  # every plugin the state depends on (through its root, its parents, its own steps)
        spec["plugins"] = plugins
        tags.update(plugin_tags(plugins))
    if "diverged" in computed.history:
        tags[names.TAG_DIVERGED] = f"epoch {computed.history['diverged'][0]}: {computed.history['diverged'][1]}"
    history = {k: v for k, v in computed.history.items() if isinstance(v, list)}
    tensors = computed.tensors
    return store.finish(
        run_id,
        spec=spec,
        masks=tensors.masks if tensors is not None else None,
        weights=None if tensors is None or computed.weights_from else tensors.weights,
        record=Record(computed.metrics, history, params, tags),
        extra_files=computed.files,
    )


def _emitter(ctx: TaskContext, state: Reaching, checkpoint: dict, checkpointing=None, batched: int = 1):
    """fn(model, history, masks) storing `checkpoint` (the node's state at that point of its training): a
    state of its own, in `state`'s lineage, claimed and finished as any."""
    from ..runners import Computed, Tensors, evaluate_state
    from ..store import ClaimLost

    store = ctx.store

    def emit(model, history, masks):
        weights = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
        point = replace(state, task={**state.task, "node": checkpoint}, parent=store.load(state.parent_run))
        root = point.parent.spec["root"]
        data = ctx.workspace.data(root, state.data_dir)
        tensors = Tensors(weights, dict(masks))
        run_id, ours = store.claims.claim(
            checkpoint["key"], lambda: _create(ctx, state, checkpoint), parent_run_id=state.parent_run
        )
        if not ours:
            return
        point.run_id = run_id
        try:
            metrics, files = evaluate_state(ctx.workspace, root, data, tensors, history, checkpoint["steps"])
            # as the training's own state records it (a batch resumes nothing: 0)
            metrics[names.M_RESUMED_FROM_ITERATION] = checkpointing.resumed_from if checkpointing is not None else 0
            _finish(ctx, point, Computed(tensors, metrics, history, None, files), batched)
        except ClaimLost as lost:
            store.claims.release(run_id, str(lost))
        except BaseException as error:
            store.fail(run_id, f"{type(error).__name__}: {error}")
            raise

    return emit


# ---- sibling trainings as one batch (`batching` groups them, `siblings` reaches them) --------------------


def reach_batch(group_text: str, context_text: str, *dependency_runs: str) -> list:
    """Reach a group of sibling states (`batching.batched_graph`) with one batched training: per state its
    run id, or the exception that failed it (raised by that state's `batch_member` task)."""
    from .siblings import StoreHooks, reach_siblings

    group, ctx = json.loads(group_text), task_context(context_text)
    runs = {
        **{k: v for task in group["tasks"] for k, v in task["known"].items()},
        **dict(zip(group["deps"], dependency_runs)),
    }
    hooks = StoreHooks(
        create=lambda s: _create(ctx, s),
        finish=lambda s, computed, batched: _finish(ctx, s, computed, batched),
        emitter=lambda s, checkpoint, batched: _emitter(ctx, s, checkpoint, batched=batched),
        alone=lambda s: _claim_and_compute(ctx, s),
        resume=lambda s: _compute_claimed(ctx, s),
    )
    siblings = [
        Reaching(task, runs[task["parent"]], {role: runs[key] for role, key in task["inputs"].items()})
        for task in group["tasks"]
    ]
    with PinnedThreads(ctx.options.threads), Determinism(ctx.options.deterministic):
        return reach_siblings(
            siblings,
            ctx.store,
            ctx.workspace,
            hooks,
            data_dir=ctx.options.data_dir,
            progress=getattr(PROGRESS, "printer", None),
        )


def _compute_claimed(ctx: TaskContext, state: Reaching) -> str:
    """A sibling we hold the claim of, computed alone (it resumes from a checkpoint); if the claim is
    lost meanwhile, reached as any state is."""
    from ..store import ClaimLost

    try:
        final = _compute(ctx, state)
    except ClaimLost as lost:
        ctx.store.claims.release(state.run_id, str(lost))
        final = None
    return final or _claim_and_compute(ctx, state)


def batch_member(results: list, index: int) -> str:
    """One state's run id out of its group's results (its error is raised here, by its own task)."""
    result = results[index]
    if isinstance(result, BaseException):
        raise result
    return result


def _semantics() -> int:
    from ..spec.keys import SEMANTICS_VERSION

    return SEMANTICS_VERSION


def _version() -> str:
    from ..version import __version__

    return __version__
