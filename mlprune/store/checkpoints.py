"""Resumable checkpoints in the store: written atomically onto a claim run, listed, verified, deleted.

A checkpoint of a state being computed lives on its RUNNING claim run, under
``checkpoints/<label>/`` (label ``<step>-<iteration>``: ``checkpoint.safetensors`` and
``checkpoint.json``, `training.checkpoint`). It is written in two moves: the files first,
then the run's *commit record*, the tag ``mlprune.checkpoints``: a JSON list of the run's
committed checkpoints (the newest `KEEP`), each with its step, iteration and files' SHA-256,
replaced in one store write together with the metric ``checkpoint_iteration`` (step = the
iteration). A checkpoint the record does not list does not exist for a reader: files of one
whose process died before its record are never read; the checkpoint that falls out of the
record is deleted after the record is replaced. One whose files do not match their hashes,
or are missing, is skipped with a warning.

`newest_valid` finds, among the key's runs that are not FINISHED (a claim that was killed,
failed or died), the newest checkpoint that reads back (by step, then iteration, then the
run's start). When the state is finished, its own checkpoints are deleted before it is set
FINISHED (`discard`: a finished state holds exactly what it held before checkpoints existed),
and those of the key's other unfinished runs after (`discard_others`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from ..names import CHECKPOINTS_DIR, M_CHECKPOINT_ITERATION, TAG_CHECKPOINTS
from . import artifacts
from .experiments import one_line

KEEP = 2  # checkpoints kept per run: a damaged newest one leaves the one before
log = logging.getLogger("mlprune.checkpoint")


class UnreadableRecord(artifacts.IntegrityError):
    """A run's commit record that is not what `RunCheckpoints` writes."""


def records(tags: dict) -> list[dict]:
    """The checkpoints a run's commit record lists, oldest first: {label, step, iteration, files}; []
    without one; UnreadableRecord if it does not parse."""
    text = tags.get(TAG_CHECKPOINTS)
    if text is None:
        return []
    try:
        found = [
            {
                "label": f"{int(r['step'])}-{int(r['iteration'])}",
                "step": int(r["step"]),
                "iteration": int(r["iteration"]),
                "files": {str(k): str(v) for k, v in dict(r["files"]).items()},
            }
            for r in json.loads(text)
        ]
    except (ValueError, KeyError, TypeError):
        raise UnreadableRecord(f"its commit record {TAG_CHECKPOINTS} is not readable") from None
    return sorted(found, key=lambda r: (r["step"], r["iteration"]))


class RunCheckpoints:
    """The checkpoints of one claim run (ours, RUNNING): `commit` writes one, keeping the newest KEEP."""

    def __init__(self, store, run_id: str):
        self.store, self.run_id = store, run_id
        self.kept: list[dict] = []  # the records committed, oldest first

    def commit(self, label: str, step: int, iteration: int, files: dict[str, bytes]) -> None:
        """Store a checkpoint: its files, then the commit record listing it (and the metric, in the same
        store write), then delete the checkpoint that fell out of the record."""
        from mlflow.entities import Metric, RunTag

        folder = f"{CHECKPOINTS_DIR}/{label}"
        self.store.write_files(self.run_id, {f"{folder}/{name}": content for name, content in files.items()})
        record = {
            "step": step,
            "iteration": iteration,
            "files": {name: artifacts.sha256(content) for name, content in files.items()},
        }
        previous = [r for r in self.kept if (r["step"], r["iteration"]) != (step, iteration)]
        cut = max(0, len(previous) - (KEEP - 1))
        dropped, kept = previous[:cut], previous[cut:] + [record]
        self.store.client.log_batch(
            self.run_id,
            metrics=[Metric(M_CHECKPOINT_ITERATION, float(iteration), int(time.time() * 1000), int(iteration))],
            tags=[RunTag(TAG_CHECKPOINTS, json.dumps(kept, sort_keys=True))],
        )
        self.kept = kept
        for old in dropped:
            _delete_files(self.store, self.run_id, f"{CHECKPOINTS_DIR}/{old['step']}-{old['iteration']}")


def _delete_files(store, run_id: str, path: str) -> None:
    """Best effort: a store that cannot delete artifacts keeps files no record lists."""
    try:
        store.delete_artifacts(run_id, path)
    except Exception as error:  # noqa: BLE001
        log.debug("checkpoint files %s of run %s not deleted: %s", path, run_id, one_line(error))


def discard(store, run_id: str) -> None:
    """Delete every checkpoint of a run: its commit record first, then the files."""
    try:
        store.client.delete_tag(run_id, TAG_CHECKPOINTS)
    except Exception:  # noqa: BLE001 - none was committed
        pass
    _delete_files(store, run_id, CHECKPOINTS_DIR)


def _unfinished_runs(store, key: str, exclude: str | None) -> list:
    seen = store.claims.others.pop(exclude, None) if exclude else None  # our claim's look-up saw them
    runs = seen if seen is not None else store.key_runs(key)
    return [r for r in runs if r.info.status != "FINISHED" and r.info.run_id != exclude]


def resumable(store, key: str, run_id: str) -> bool:
    """Has `key` an unfinished run with committed checkpoints besides our claim `run_id`? (From the claim's
    look-up when it kept one, else one search.) A batched training resumes nothing: such a key is trained
    alone, from its checkpoint."""
    seen = store.claims.others.get(run_id)
    runs = seen if seen is not None else store.key_runs(key)
    return any(r.info.status != "FINISHED" and r.info.run_id != run_id and TAG_CHECKPOINTS in r.data.tags for r in runs)


def discard_others(store, key: str, keep_run: str) -> int:
    """Delete the checkpoints of the key's unfinished runs other than `keep_run` (its state is finished:
    nothing resumes from them any more); returns how many runs had some."""
    done = 0
    for run in store.key_runs(key):
        if run.info.status != "FINISHED" and run.info.run_id != keep_run and TAG_CHECKPOINTS in run.data.tags:
            discard(store, run.info.run_id)
            done += 1
    return done


def read(store, run, record: dict) -> dict[str, bytes]:
    """A committed checkpoint's files, each checked against its recorded SHA-256 (IntegrityError if one
    is missing or differs)."""
    if not record["files"]:
        raise artifacts.IntegrityError("its commit record lists no files")
    files = {}
    for name, expected in record["files"].items():
        try:
            content = store.read_artifact(run.info.run_id, f"{CHECKPOINTS_DIR}/{record['label']}/{name}")
        except Exception as error:  # noqa: BLE001 - missing or unreadable: one line
            raise artifacts.IntegrityError(f"{name} is missing ({one_line(error)[:120]})") from None
        if artifacts.sha256(content) != expected:
            raise artifacts.IntegrityError(f"{name} does not match its recorded SHA-256 (damaged or truncated)")
        files[name] = content
    return files


def newest_valid(
    store, key: str, exclude: str | None, parse: Callable[[dict], object], warn: Callable[[str], None] | None = None
):
    """(run id, parsed checkpoint) of the newest checkpoint of `key` that reads back, among the key's
    runs that are not FINISHED (except `exclude`, our own claim); None if there is none.

    `parse(files)` turns verified files into a checkpoint (a SpecError if they do not make one). Each
    checkpoint that does not read back (a run's unreadable record) is skipped with one warning line
    naming its run and iteration.
    """
    warn = warn or log.warning
    candidates = []
    for run in _unfinished_runs(store, key, exclude):
        try:
            for record in records(run.data.tags):
                candidates.append(((record["step"], record["iteration"], run.info.start_time or 0), run, record))
        except UnreadableRecord as error:
            warn(f"checkpoints of run {run.info.run_id[:8]} are not used: {error}")
    for _, run, record in sorted(candidates, key=lambda c: c[0], reverse=True):
        try:
            return run.info.run_id, parse(read(store, run, record))
        except Exception as error:  # noqa: BLE001 - any damage: that checkpoint is not used, never loaded
            warn(
                f"checkpoint of run {run.info.run_id[:8]} at iteration {record['iteration']} "
                f"(step {record['step']}) is not used: {' '.join(str(error).split())[:200]}"
            )
    return None
