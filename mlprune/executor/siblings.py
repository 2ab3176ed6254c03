"""Reaching a group of sibling states with one batched training (run option ``batch``).

`batching` decides which missing states are siblings and gives each group one task; that task
(`task.reach_batch`) hands the group here with what the executor does for one state
(`StoreHooks`, each given a state's `context.Reaching`: create a claim, store a state, emit a
checkpoint, reach a state alone). Each state is claimed, heartbeaten and stored exactly as if it
were computed alone (same key, artifacts, metrics and params, plus ``run.batch``);
`runners.siblings` computes them, their train steps as one batch:

- a sibling already FINISHED elsewhere (or claimed by a live process) is not trained: its claim
  returns that run (or waits for it) before the batch is formed;
- a claim lost mid-batch (heartbeats, once per epoch, or at the end) discards that sibling only;
  it is then reached alone (the winner's state is awaited, or computed here if the winner died);
- an error of one sibling (a divergence, a failed step) fails that state only: it is that
  sibling's result, raised by its own task (`task.batch_member`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .context import Reaching

__all__ = ["StoreHooks", "reach_siblings"]


@dataclass
class StoreHooks:
    """What the executor does for one state (`task`'s own functions, given to this module)."""

    create: Callable  # (sibling) -> a new RUNNING claim run
    finish: Callable  # (sibling, Computed, batched) -> the run id of the stored state
    emitter: Callable  # (sibling, checkpoint node, batched) -> fn(model, history, masks)
    alone: Callable  # (sibling) -> run id: claim and compute it alone (or await a winner)
    resume: Callable  # (sibling) -> run id: compute it alone under our claim (from a checkpoint)


def reach_siblings(
    siblings: list[Reaching], store, workspace, hooks: StoreHooks, *, data_dir: str | None = None, progress=None
) -> list:
    """Per sibling its run id, or the exception that failed its state."""
    from ..runners.siblings import SiblingNode, compute_siblings
    from ..store import ClaimLost
    from ..store.checkpoints import resumable
    from ..training.interrupt import Interrupted

    results: list = [None] * len(siblings)
    ours, resuming = [], []
    for index, sibling in enumerate(siblings):
        sibling.load_parent(store, data_dir)
        run_id, mine = store.claims.claim(
            sibling.node["key"], lambda s=sibling: hooks.create(s), progress=progress, parent_run_id=sibling.parent_run
        )
        if not mine:
            results[index] = run_id
            continue
        sibling.run_id = run_id
        # a key with a resumable checkpoint (a killed training) resumes alone: batches store none
        (resuming if resumable(store, sibling.node["key"], run_id) else ours).append(index)
    alive = {index: store.claims.keep_alive(siblings[index].run_id, siblings[index].node["key"]) for index in ours}
    pending = set(ours)
    try:
        for index in resuming:
            try:
                results[index] = hooks.resume(siblings[index])
            except Exception as error:  # noqa: BLE001 -- that state's failure, raised by its own task
                results[index] = error
        if not ours:
            return results
        if progress is not None:
            progress(
                f"computing {len(ours)} sibling trainings as one batch: "
                + ", ".join(siblings[i].node["label"] for i in ours)
            )
        nodes = []
        for index in ours:
            sibling = siblings[index]
            nodes.append(
                SiblingNode(
                    sibling.node,
                    sibling.parent,
                    {role: store.load(r) for role, r in sibling.inputs.items()},
                    sibling.data_dir,
                    heartbeat=lambda run_id=sibling.run_id: store.claims.heartbeat(run_id),
                    emit={
                        at: hooks.emitter(sibling, checkpoint, len(ours)) for at, checkpoint in sibling.task["emits"]
                    },
                )
            )
        outcomes = compute_siblings(nodes, workspace, progress=progress)
        for index, outcome in zip(ours, outcomes):
            sibling = siblings[index]
            alive[index].stop()
            try:
                if isinstance(outcome, BaseException):
                    raise outcome
                results[index] = hooks.finish(sibling, outcome, len(ours))
            except ClaimLost as lost:  # taken over: that sibling only, reached alone (awaiting the winner)
                store.claims.release(sibling.run_id, str(lost))
                pending.discard(index)
                try:
                    results[index] = hooks.alone(sibling)
                except Exception as error:  # noqa: BLE001 -- that state's failure, raised by its own task
                    results[index] = error
            except Exception as error:  # noqa: BLE001 -- a divergence, a failed step: that state fails alone
                store.fail(sibling.run_id, f"{type(error).__name__}: {error}")
                results[index] = error
            pending.discard(index)
    except BaseException as error:
        for index in pending:
            if isinstance(error, Interrupted):  # a stop request: KILLED, not FAILED; the next run recomputes them
                store.claims.release(siblings[index].run_id, f"{type(error).__name__}: {error}")
            else:
                store.fail(siblings[index].run_id, f"{type(error).__name__}: {error}")
        raise
    finally:
        for keeper in alive.values():
            keeper.stop()
    return results
