"""Resuming a state's computation: the executor's glue between the store's checkpoints
(`store.checkpoints`: atomic commits on the claim run, verification, deletion) and the
trainings' (`training.checkpoint`: what a checkpoint holds, capture and restore).

    checkpointing = open_checkpointing(store, node, run_id, options)   # after the claim
    computed = compute_node(..., hooks=NodeHooks(..., checkpointing=checkpointing))   # trains, checkpoints
    close_checkpointing(store, checkpointing, run_id)                  # before the state is finished
    ... store.finish(...) ...
    forget_checkpoints(store, key, run_id)                             # once it is FINISHED

Rules: a claim resumes from the newest checkpoint of its key that reads back, among the key's
runs that are not FINISHED (claims that were killed, failed, or died); a damaged one is skipped
with a warning, then the one before, then the parent. The finished state's own checkpoints are
deleted before it is set FINISHED; the older runs' once it is.
"""

from __future__ import annotations

import logging

from .. import names
from ..spec.limits import env_number

log = logging.getLogger("mlprune.checkpoint")
DEFAULT_BUDGET = 0.05  # checkpoints cost at most 5% of a training's time by default


def checkpoint_budget() -> float:
    """MLPRUNE_CHECKPOINT_BUDGET: the share of a training's time its checkpoints may cost (default 0.05;
    ``inf``: every due checkpoint is written, whatever it costs)."""
    return env_number(
        names.ENV_CHECKPOINT_BUDGET,
        DEFAULT_BUDGET,
        lambda value: value > 0,
        "a number > 0 (a share of training time, e.g. 0.05) or inf",
    )


def warn(message: str) -> None:
    """One line on stderr (where no logging is configured) for a checkpoint that is not used."""
    log.warning(f"warning: {message}")


def open_checkpointing(store, node: dict, run_id: str, options, *, progress=None):
    """The `training.checkpoint.Checkpointing` of a node claimed as `run_id`: checkpoints go onto that
    run at the run options' cadence; the node resumes from the newest valid checkpoint of its key."""
    from ..store.checkpoints import RunCheckpoints, newest_valid
    from ..training.checkpoint import Checkpointing, TrainingCheckpoint
    from ..version import __version__

    key = node["key"]
    skipped = []

    def skip(message: str) -> None:
        skipped.append(message)
        warn(message)

    found = newest_valid(store, key, run_id, lambda files: TrainingCheckpoint.from_files(files, key=key), skip)
    resume = None
    if found is not None:
        source, resume = found
        if progress is not None:
            progress(
                f"resuming {node['label']} from iteration {resume.iteration} (step {resume.step}) of run {source[:8]}"
            )
    writer = RunCheckpoints(store, run_id)
    info = {"mlprune_version": __version__, "threads": options.threads, "device": options.device}
    checkpointing = Checkpointing(
        key,
        options.checkpoint_every,
        commit=writer.commit,
        resume=resume,
        info=info,
        warn=warn,
        budget=checkpoint_budget(),
    )
    checkpointing.others = found is not None or bool(skipped)
    return checkpointing


def close_checkpointing(store, checkpointing, run_id: str, *, discard: bool = True) -> None:
    """Wait for the checkpoint being written; with `discard`, delete the run's checkpoints (its state is
    about to be finished and stores what a state stores)."""
    from ..store.checkpoints import discard as discard_run

    if checkpointing is None:
        return
    checkpointing.close()
    if discard and checkpointing.attempted:
        discard_run(store, run_id)


def forget_checkpoints(store, key: str, run_id: str, checkpointing) -> None:
    """Once `run_id` is the key's FINISHED state: delete the checkpoints of the key's unfinished runs (the
    one it resumed from among them)."""
    from ..store.checkpoints import discard_others

    if checkpointing is not None and checkpointing.others:
        discard_others(store, key, run_id)
