"""The network step runners (init, prune, reinit, train) and `compute_node`: one state from its parents.

The executor (`executor.task`) hands a node and its loaded parents to `compute_node`,
which runs the node's steps one after another through their runners (one per
step kind, ``STEP_KINDS[kind].runner``), evaluates the result and returns what
the store saves. Runners are thin: the maths are the pure functions of
``pruning``, ``reinit`` and ``training``.

Randomness: the root's ``seed`` seeds the initialization and, by default, the
data order of every training (retrained networks see the same batches: one
nuisance variable less). Steps that need their own randomness (random pruning,
random reinitialization, mask shuffling) take the step's ``seed`` when given,
else one derived from the state's key: reproducible, and different across branches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .. import names
from ..errors import SpecError
from ..spec.keys import derived_seed
from ..spec.steps import kind_of
from ..workspace import Workspace
from .context import NodeHooks, StepContext, Tensors
from .evaluations import evaluate_state


def with_removed_extras(ctx: StepContext, weights: dict, masks: dict) -> dict:
    """`weights` with the biases and BatchNorm entries of removed channels at exactly 0.0."""
    from ..pruning.structure import apply_extra_masks

    extras = ctx.workspace.removed_extras(ctx.root, ctx.data, weights, masks)
    return apply_extra_masks(weights, extras) if extras else weights


def run_init(ctx: StepContext, tensors, options) -> Tensors:
    from ..models import prunable

    model = ctx.workspace.build(ctx.root, ctx.data)
    kinds = prunable(model)
    masks = {name: torch.ones_like(p, dtype=torch.bool) for name, p in model.named_parameters() if name in kinds}
    return Tensors(model.state_dict(), masks)


def pretrained(node: dict, tensors: Tensors, workspace, data) -> Tensors:
    """A pretrained root's tensors: the file's weights (its SHA-256 checked against the key's), all kept."""
    from ..models.pretrained import load_into
    from ..spec.steps import file_sha256

    path = node.get("weights_file")
    if not path:
        raise SpecError(f"root {node['name']!r} names pretrained weights {node['root']['weights']} but no file")
    if "sha256:" + file_sha256(path) != node["root"]["weights"]:
        raise SpecError(f"pretrained weights {path!r} changed since the plan was made (SHA-256 differs)")
    model = workspace.build(node["root"], data)
    return Tensors(load_into(path, model).state_dict(), tensors.masks)


def _kinds(ctx: StepContext) -> dict:
    from ..models import prunable

    return prunable(ctx.workspace.blank(ctx.root, ctx.data))


def _finite(tensors: Tensors) -> None:
    if not all(bool(torch.isfinite(t).all()) for t in tensors.weights.values() if t.is_floating_point()):
        raise SpecError(
            "cannot prune a state whose weights are not finite (its training diverged): masks "
            "computed from NaN or inf weights mean nothing"
        )


def _masked(ctx: StepContext, tensors: Tensors, masks: dict) -> Tensors:
    weights = {n: (t * masks[n] if n in masks else t) for n, t in tensors.weights.items()}
    return Tensors(with_removed_extras(ctx, weights, masks), masks)


def run_transplant(ctx: StepContext, tensors: Tensors, options: dict) -> Tensors:
    """The parent's masks intersected with those of the state `from` (input role ``mask``)."""
    from ..pruning import transplant_mask

    _finite(tensors)
    return _masked(ctx, tensors, transplant_mask(tensors.masks, ctx.inputs["mask"].masks))


def run_prune(ctx: StepContext, tensors: Tensors, options: dict) -> Tensors:
    from ..pruning import METHODS, prune_masks

    _finite(tensors)
    entry = METHODS[options["method"]]
    if options.get("coupled"):
        from ..pruning.structure import prune_coupled

        effective = {n: tensors.weights[n] * tensors.masks[n] for n in tensors.masks}
        values = (
            _network_scores(ctx, effective, tensors.weights, options)(tensors.masks) if entry.scores_network else None
        )
        masks = prune_coupled(
            effective,
            tensors.masks,
            _kinds(ctx),
            options,
            ctx.workspace.channel_groups(ctx.root, ctx.data),
            generator=ctx.generator(options.get("seed")),
            values=values,
        )
    else:
        effective = {n: tensors.weights[n] * tensors.masks[n] for n in tensors.masks}
        scores = _network_scores(ctx, effective, tensors.weights, options) if entry.scores_network else None
        masks = prune_masks(
            effective, tensors.masks, _kinds(ctx), options, generator=ctx.generator(options.get("seed")), scores=scores
        )
    return _masked(ctx, tensors, masks)


def _network_scores(ctx: StepContext, effective: dict, weights: dict, options: dict):
    """A score method's ``scores(masks)`` on this state's network. Its data: the first training
    batches of epoch 0 of the root's data order (the same for every state of a lineage, so an
    inverted or shuffled sibling is scored on the very batches its original was)."""
    from ..pruning.scores import ScoringData, network_scores

    model = ctx.workspace.blank(ctx.root, ctx.data)
    model.load_state_dict({**weights, **effective})
    model.to(ctx.workspace.device)

    def batches(count: int, batch_size: int) -> list:
        taken = []
        for batch in ctx.data.train_batches(batch_size, seed=ctx.root["seed"], epoch=0):
            if len(taken) == count:
                break
            taken.append(batch)
        return taken

    data = ScoringData(tuple(ctx.data.input_shape), batches, ctx.workspace.device)
    return network_scores(options["method"], model, data, options)


def run_reinit(ctx: StepContext, tensors: Tensors, options: dict) -> Tensors:
    from ..reinit import STRATEGIES, reinit_weights

    entry = STRATEGIES[options["strategy"]]
    source = ctx.inputs["weights"].weights if "weights" in ctx.inputs else None
    fresh = None
    if entry.fresh_init:
        seed = options.get("seed")
        fresh = ctx.workspace.build(
            ctx.root, ctx.data, seed=derived_seed(ctx.key, ctx.index) if seed is None else seed
        ).state_dict()
    own = {name: options[name] for name in entry.options.names if name in options}
    weights, masks = reinit_weights(
        options["strategy"],
        current=tensors.weights,
        source=source,
        fresh=fresh,
        masks=tensors.masks,
        kinds=_kinds(ctx),
        generator=ctx.generator(options.get("seed")),
        **own,
    )
    return Tensors(with_removed_extras(ctx, weights, masks), masks)


@dataclass
class TrainJob:
    """A train step ready to run (`prepare_train`): the module, its masks and the loop's callbacks. The
    batched runner (`runners.siblings`) prepares one per sibling and trains them together."""

    model: torch.nn.Module
    masks: dict  # the masks training enforces: the state's, plus removed channels' extras
    kept: list  # the state's own mask names (what the state stores)
    seed: int  # data order
    checkpoints: dict  # iteration -> fn(model, history so far)
    on_epoch: object  # fn(epoch, model, history): the claim's heartbeat
    progress: object  # fn(epoch, epochs, mean train loss) or None


def prepare_train(ctx: StepContext, tensors: Tensors, options: dict) -> TrainJob:
    from ..spec.times import parse_time

    device = ctx.workspace.device
    model = ctx.workspace.blank(ctx.root, ctx.data)
    # removed channels' biases and BatchNorm entries: zero, and masked during training like weights
    extras = ctx.workspace.removed_extras(ctx.root, ctx.data, tensors.weights, tensors.masks)
    if extras:
        from ..pruning.structure import apply_extra_masks

        tensors = Tensors(apply_extra_masks(tensors.weights, extras), tensors.masks)
    model.load_state_dict(tensors.weights)
    model.to(device)
    masks = {n: m.to(device) for n, m in tensors.masks.items()}
    parameters = dict(model.named_parameters())
    train_masks = {**masks, **{n: m.to(device) for n, m in extras.items() if n in parameters}}
    per_epoch = ctx.data.batches_per_epoch(options["batch_size"])

    def checkpoint(fn):
        def store_it(model_now, partial):
            so_far = {k: ctx.history.get(k, []) + list(v) for k, v in partial.items() if isinstance(v, list)}
            fn(model_now, so_far, {n: train_masks[n].to("cpu") for n in masks})  # gradual pruning changes them

        return store_it

    checkpoints = (
        {parse_time(at).iterations(per_epoch): checkpoint(fn) for at, fn in ctx.emit.items()} if ctx.last else {}
    )

    def on_epoch(epoch, _model, _history):
        ctx.heartbeat()

    progress = None
    if ctx.progress is not None:
        progress = lambda epoch, total, loss: ctx.progress(f"epoch {epoch}/{total} train_loss {loss:.4f}")  # noqa: E731
    seed = ctx.root["seed"] if options["seed"] is None else options["seed"]
    return TrainJob(model, train_masks, list(masks), seed, checkpoints, on_epoch, progress)


def finish_train(ctx: StepContext, job: TrainJob, history: dict) -> Tensors:
    """The state after a train step: its history merged into the node's, its weights and masks on the CPU."""
    ctx.history.setdefault(names.M_ITERATIONS, 0)
    ctx.history[names.M_ITERATIONS] += history.pop("iterations")
    if "diverged" in history:
        ctx.history["diverged"] = history.pop("diverged")
    for name, values in history.items():
        ctx.history.setdefault(name, []).extend(values)
    # contiguous: a channels_last model's conv weights are stored in the plain layout like any other
    weights = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in job.model.state_dict().items()}
    # gradual pruning replaced the masks it tightened in job.masks
    return Tensors(weights, {n: job.masks[n].to("cpu") for n in job.kept})


def run_train(ctx: StepContext, tensors: Tensors, options: dict) -> Tensors:
    from ..training.loop import Callbacks, train

    job = prepare_train(ctx, tensors, options)
    # resumable checkpoints (and the one this training resumes from); ctx.history is the node's so far
    resumable = ctx.checkpointing.training(ctx.index, ctx.history) if ctx.checkpointing is not None else None
    history = train(
        job.model,
        job.masks,
        ctx.data,
        options,
        seed=job.seed,
        on=ctx.workspace.placement,
        calls=Callbacks(job.progress, job.on_epoch, job.checkpoints),
        resumable=resumable,
    )
    return finish_train(ctx, job, history)


def run_steps(ctx_base: dict, tensors: Tensors, steps: list) -> Tensors:
    """Run resolved steps in order (each through its kind's runner)."""
    for index, step in enumerate(steps):
        if ctx_base.get("checkpointing") is not None and ctx_base["checkpointing"].skips(index):
            continue  # done before the checkpoint the node resumes from (a later step's)
        kind, options = kind_of(step)
        ctx = StepContext(index=index, last=index == len(steps) - 1, **ctx_base)
        tensors = kind.load()(ctx, tensors, options)
    return tensors


def compute_node(
    node: dict, parent, inputs: dict, workspace: Workspace, *, data_dir: str | None, hooks: NodeHooks | None = None
) -> Computed:
    """What to store for a plan node, computed from its loaded parent and inputs.

    `parent`: the parent's StoredState (None for a root); `hooks`: its heartbeat, the checkpoints
    ``{time: fn(model, history, masks)}`` of its last train step, progress, and its resumable
    checkpoints (`training.checkpoint.Checkpointing`: the one it resumes from skips the steps before
    it). A node whose step kind produces an analysis (of its parent and its inputs) stores metrics and
    files, no network.
    """
    hooks = hooks or NodeHooks()
    checkpointing = hooks.checkpointing
    started = time.perf_counter()
    root = node["root"] if node["root"] is not None else parent.spec["root"]
    data = workspace.data(root, data_dir)
    history: dict = {}
    ctx_base = dict(
        key=node["key"],
        root=root,
        data=data,
        workspace=workspace,
        inputs=inputs,
        history=history,
        heartbeat=hooks.heartbeat,
        emit=hooks.emit,
        progress=hooks.progress,
        checkpointing=checkpointing,
    )
    steps = node["steps"]
    if steps and kind_of(steps[0])[0].produces == "analysis":
        kind, options = kind_of(steps[0])
        metrics, files = kind.load()(StepContext(index=0, last=True, **ctx_base), parent, options)
        metrics[names.M_DURATION] = time.perf_counter() - started
        return Computed(None, metrics, history, None, files)
    if node["root"] is not None:
        tensors = run_init(StepContext(index=0, **ctx_base), None, node["root"])
        if node["root"].get("weights"):
            tensors = pretrained(node, tensors, ctx_base["workspace"], data)
    else:
        tensors = Tensors(
            {k: v.clone() for k, v in parent.weights.items()}, {k: v.clone() for k, v in parent.masks.items()}
        )
        tensors = run_steps(ctx_base, tensors, steps)
    metrics, files = evaluate_state(workspace, root, data, tensors, history, steps)
    metrics[names.M_DURATION] = time.perf_counter() - started
    if checkpointing is not None and checkpointing.trained:
        metrics[names.M_RESUMED_FROM_ITERATION] = checkpointing.resumed_from
    masks_only = steps and all(kind_of(s)[0].masks_only for s in steps)  # the parent's weights, masked
    zeroed = shared_with_parent(tensors, parent) if masks_only else None
    return Computed(
        tensors, metrics, history, parent.run_id if zeroed is not None else None, files, zeroed=zeroed or None
    )


def shared_with_parent(tensors: Tensors, parent) -> dict | None:
    """How a prune-only state's weights follow from its parent's: {tensor: flat indices set to 0.0} (the
    biases and BatchNorm entries of the channels it removed; {} when none) if the parent's weights times
    the new masks with those entries zeroed give the state's weights bit for bit (what loading a state
    that shares its parent's weights gives: `store.artifacts.shared_weights`); None otherwise (the
    state keeps its own weights file)."""
    from ..store.artifacts import shared_weights

    if set(tensors.weights) != set(parent.weights):
        return None
    derived = shared_weights(parent.weights, tensors.masks)
    zeroed = {}
    for name, tensor in tensors.weights.items():
        expected = derived[name]
        if tensor.shape != expected.shape or tensor.dtype != expected.dtype:
            return None
        differ = _bits(tensor) != _bits(expected)
        if bool(differ.any()):
            zeroed[name] = differ.reshape(-1).nonzero().squeeze(1).tolist()
    if not zeroed:
        return {}
    rebuilt = shared_weights(parent.weights, tensors.masks, zeroed)
    return zeroed if all(torch.equal(_bits(rebuilt[n]), _bits(t)) for n, t in tensors.weights.items()) else None


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bits as integers (floats: -0.0 and +0.0 differ, NaNs compare by payload)."""
    widths = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}
    if tensor.is_floating_point():
        return tensor.contiguous().view(widths[tensor.element_size()])
    return tensor


@dataclass
class Computed:
    """What the executor stores for a node: tensors (None for an analysis), metrics, per-epoch
    history, the run whose weights it shares (prune-only states), extra files."""

    tensors: Tensors | None
    metrics: dict
    history: dict
    weights_from: str | None
    files: dict
    zeroed: dict | None = None  # a state sharing its parent's weights: entries the prune set to 0.0
