"""Computing sibling states with one batched training (run option ``batch``).

The executor (`executor.siblings`) claims a group of sibling states and hands them here as
`SiblingNode`s, each with what `runners.compute_node` takes for one state (its node, loaded
parent and inputs, data directory, heartbeat, checkpoint emitters). For each sibling the steps
before its train step (a rewind, a random reinit, a mask shuffle) run on their own; the train
steps run together (`training.batched.train_batched`); each result is evaluated on its own
(`evaluate_state`), exactly as `compute_node` does for a state alone.

- an error of one sibling (a divergence, a failed step, a callback that raised: a lost claim) is
  that sibling's result; the others go on;
- trainings that cannot be batched after all (`NotBatchable`: different data, an architecture the
  interpreter rejects) are trained one after the other;
- ``duration_s`` of a batched state is its own steps and evaluation plus its share (1/N) of the
  batched training. Periodic resumable checkpoints are not taken inside a batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import names
from ..spec.steps import TRAIN_SCHEMA, kind_of
from .context import StepContext, Tensors
from .evaluations import evaluate_state
from .network import Computed, TrainJob, finish_train, prepare_train

__all__ = ["SiblingNode", "compute_siblings"]


@dataclass
class SiblingNode:
    """One state of a batch, as `compute_node` would get it."""

    node: dict
    parent: object  # the parent's StoredState
    inputs: dict  # role -> loaded StoredState
    data_dir: str | None
    heartbeat: Callable[[], None] = lambda: None
    emit: dict = field(default_factory=dict)  # time -> fn(model, history, masks): checkpoints


@dataclass
class _Prepared:
    index: int
    ctx: StepContext
    job: TrainJob
    options: dict
    steps: list
    seconds: float


def compute_siblings(siblings: list[SiblingNode], workspace, *, progress=None) -> list:
    """Per sibling the `Computed` to store, or the exception that failed it."""
    outcomes: list = [None] * len(siblings)
    prepared: list[_Prepared] = []
    for index, sibling in enumerate(siblings):
        started = time.perf_counter()
        try:
            root = sibling.parent.spec["root"]
            ctx_base = dict(
                key=sibling.node["key"],
                root=root,
                data=workspace.data(root, sibling.data_dir),
                workspace=workspace,
                inputs=sibling.inputs,
                history={},
                heartbeat=sibling.heartbeat,
                emit=sibling.emit,
            )
            tensors = Tensors(
                {k: v.clone() for k, v in sibling.parent.weights.items()},
                {k: v.clone() for k, v in sibling.parent.masks.items()},
            )
            steps = sibling.node["steps"]
            for position, step in enumerate(steps[:-1]):  # what runs before the training: per sibling
                kind, options = kind_of(step)
                tensors = kind.load()(StepContext(index=position, **ctx_base), tensors, options)
            ctx = StepContext(index=len(steps) - 1, last=True, **ctx_base)
            options = kind_of(steps[-1])[1]  # the training (`executor.batching`: siblings end with one)
            prepared.append(
                _Prepared(
                    index, ctx, prepare_train(ctx, tensors, options), options, steps, time.perf_counter() - started
                )
            )
        except Exception as error:  # noqa: BLE001 -- that sibling's state fails, the others go on
            outcomes[index] = error
    if not prepared:
        return outcomes
    started = time.perf_counter()
    histories = _train(prepared, workspace, progress)
    share = (time.perf_counter() - started) / len(prepared)
    for item, history in zip(prepared, histories):
        outcomes[item.index] = history if isinstance(history, BaseException) else _evaluated(item, history, share)
    return outcomes


def _same_training(options: dict, other: dict) -> bool:
    order = TRAIN_SCHEMA["data_order_seed"].key_name
    return {k: v for k, v in options.items() if k != order} == {k: v for k, v in other.items() if k != order}


def _train(prepared: list[_Prepared], workspace, progress) -> list:
    """Per sibling its training history or exception: one batched training, or one after the other when
    the siblings cannot be batched after all."""
    from ..training.batched import NotBatchable, train_batched
    from ..training.loop import Callbacks

    first = prepared[0]
    data = first.ctx.data

    def report(epoch, total, losses):
        mean = sum(losses) / len(losses) if losses else float("nan")
        progress(f"batch of {len(prepared)}: epoch {epoch}/{total} mean train_loss {mean:.4f}")

    try:
        if any(p.ctx.data is not data or not _same_training(p.options, first.options) for p in prepared):
            raise NotBatchable("the siblings' data or train options differ")
        return train_batched(
            [p.job.model for p in prepared],
            [p.job.masks for p in prepared],
            data,
            first.options,
            seeds=[p.job.seed for p in prepared],
            device=workspace.device,
            calls=Callbacks(
                report if progress is not None else None,
                [p.job.on_epoch for p in prepared],
                [p.job.checkpoints for p in prepared],
            ),
        )
    except NotBatchable as why:
        if progress is not None:
            progress(f"not batched ({why}): training {len(prepared)} siblings one after the other")
    return [_train_alone(p, workspace) for p in prepared]


def _train_alone(item: _Prepared, workspace):
    from ..training.loop import Callbacks, train

    job = item.job
    try:
        return train(
            job.model,
            job.masks,
            item.ctx.data,
            item.options,
            seed=job.seed,
            on=workspace.placement,
            calls=Callbacks(job.progress, job.on_epoch, job.checkpoints),
        )
    except Exception as error:  # noqa: BLE001 -- that sibling's state fails, the others go on
        return error


def _evaluated(item: _Prepared, history: dict, share: float):
    started = time.perf_counter()
    ctx = item.ctx
    try:
        tensors = finish_train(ctx, item.job, history)
        metrics, files = evaluate_state(ctx.workspace, ctx.root, ctx.data, tensors, ctx.history, item.steps)
    except Exception as error:  # noqa: BLE001 -- that sibling's state fails, the others go on
        return error
    metrics[names.M_DURATION] = item.seconds + share + time.perf_counter() - started
    metrics[names.M_RESUMED_FROM_ITERATION] = 0  # a batch starts from the parent, never from a checkpoint
    return Computed(tensors, metrics, ctx.history, None, files)
