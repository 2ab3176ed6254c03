"""Resumable checkpoints in the store: written atomically onto a claim run, listed, verified, deleted.

A checkpoint of a state being computed lives on its RUNNING claim run, under
``checkpoints/<label>/`` (label ``<step>-<iteration>``: ``checkpoint.safetensors`` and
``checkpoint.json``, `training.checkpoint`). It is written in two moves: the files first,
then its *commit record*, the tag ``mlprune.checkpoint.<label>`` holding the step, the
iteration and each file's SHA-256. A checkpoint without a commit record (the process died
while writing it) does not exist for a reader; one whose files do not match their hashes, or
are missing, is skipped with a warning. After each commit the run keeps the newest `KEEP`
checkpoints (older ones lose their record first, then their files), and logs the metric
``checkpoint_iteration`` (step = the iteration).

`newest_valid` finds, among the key's runs that are not FINISHED (a claim that was killed,
failed or is dead), the newest checkpoint that reads back (by step, then iteration, then the
run's start). When the state is finished, its own checkpoints are deleted before it is set
FINISHED (`discard`: a finished state holds exactly what it held before checkpoints existed),
and those of the key's other unfinished runs after (`discard_others`).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Callable

from ..names import CHECKPOINTS_DIR, M_CHECKPOINT_ITERATION, TAG_CHECKPOINT_PREFIX
from . import artifacts
from .experiments import one_line

KEEP = 2  # checkpoints kept per run: a damaged newest one leaves the one before
log = logging.getLogger("mlprune.checkpoint")


def records(tags: dict) -> list[dict]:
    """The committed checkpoints a run's tags record, oldest first: {label, step, iteration, files}
    (records that do not parse are kept with ``broken`` set, so that they are warned about)."""
    found = []
    for name, value in tags.items():
        if not name.startswith(TAG_CHECKPOINT_PREFIX):
            continue
        label = name[len(TAG_CHECKPOINT_PREFIX):]
        try:
            record = json.loads(value)
            found.append({"label": label, "step": int(record["step"]), "iteration": int(record["iteration"]),
                          "files": {str(k): str(v) for k, v in dict(record["files"]).items()}})
        except (ValueError, KeyError, TypeError):
            step, _, iteration = label.partition("-")
            found.append({"label": label, "step": int(step) if step.isdigit() else -1,
                          "iteration": int(iteration) if iteration.isdigit() else -1, "files": {},
                          "broken": f"its commit record {name} is not readable"})
    return sorted(found, key=lambda r: (r["step"], r["iteration"]))


class RunCheckpoints:
    """The checkpoints of one claim run (ours, RUNNING): `commit` writes one, keeping the newest KEEP."""

    def __init__(self, store, run_id: str):
        self.store, self.run_id = store, run_id
        self.labels: list[str] = []  # committed by us, oldest first

    def commit(self, label: str, step: int, iteration: int, files: dict[str, bytes]) -> None:
        """Store a checkpoint: its files, then its commit record, then drop the oldest beyond KEEP."""
        from mlflow.entities import Metric

        folder = f"{CHECKPOINTS_DIR}/{label}"
        self.store.write_files(self.run_id, {f"{folder}/{name}": content for name, content in files.items()})
        record = {"step": step, "iteration": iteration,
                  "files": {name: artifacts.sha256(content) for name, content in files.items()}}
        self.store.set_tags(self.run_id, {TAG_CHECKPOINT_PREFIX + label: json.dumps(record, sort_keys=True)})
        self.store.client.log_batch(self.run_id, metrics=[Metric(M_CHECKPOINT_ITERATION, float(iteration),
                                                                 int(time.time() * 1000), int(iteration))])
        self.labels.append(label)
        while len(self.labels) > KEEP:
            _delete(self.store, self.run_id, self.labels.pop(0))


def _delete(store, run_id: str, label: str) -> None:
    """Uncommit a checkpoint (its record goes first), then delete its files (best effort: a store that
    cannot delete artifacts keeps unreferenced files)."""
    try:
        store.client.delete_tag(run_id, TAG_CHECKPOINT_PREFIX + label)
    except Exception:  # noqa: BLE001 - already gone
        pass
    try:
        store.delete_artifacts(run_id, f"{CHECKPOINTS_DIR}/{label}")
    except Exception as error:  # noqa: BLE001
        log.debug("checkpoint files of run %s not deleted: %s", run_id, one_line(error))


def discard(store, run_id: str, tags: dict | None = None) -> int:
    """Delete every checkpoint of a run (records, then the files); returns how many it had."""
    if tags is None:
        tags = store.run(run_id).data.tags
    found = records(tags)
    for record in found:
        try:
            store.client.delete_tag(run_id, TAG_CHECKPOINT_PREFIX + record["label"])
        except Exception:  # noqa: BLE001
            pass
    try:
        store.delete_artifacts(run_id, CHECKPOINTS_DIR)
    except Exception as error:  # noqa: BLE001
        log.debug("checkpoint files of run %s not deleted: %s", run_id, one_line(error))
    return len(found)


def _unfinished_runs(store, key: str, exclude: str | None) -> list:
    runs = store.key_runs(key)
    return [r for r in runs if r.info.status != "FINISHED" and r.info.run_id != exclude]


def discard_others(store, key: str, keep_run: str) -> int:
    """Delete the checkpoints of the key's unfinished runs other than `keep_run` (its state is finished:
    nothing resumes from them any more); returns how many runs had some."""
    done = 0
    for run in _unfinished_runs(store, key, keep_run):
        if records(run.data.tags):
            discard(store, run.info.run_id, run.data.tags)
            done += 1
    return done


def read(store, run, record: dict) -> dict[str, bytes]:
    """A committed checkpoint's files, each checked against its recorded SHA-256 (IntegrityError if one
    is missing or differs)."""
    if record.get("broken"):
        raise artifacts.IntegrityError(record["broken"])
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


def newest_valid(store, key: str, exclude: str | None, parse: Callable[[dict], object],
                 warn: Callable[[str], None] | None = None):
    """(run id, parsed checkpoint) of the newest checkpoint of `key` that reads back, among the key's
    runs that are not FINISHED (except `exclude`, our own claim); None if there is none.

    `parse(files)` turns verified files into a checkpoint (a SpecError if they do not make one). Each
    checkpoint that does not read back is skipped with one warning line naming its run and iteration.
    """
    warn = warn or log.warning
    candidates = []
    for run in _unfinished_runs(store, key, exclude):
        for record in records(run.data.tags):
            candidates.append(((record["step"], record["iteration"], run.info.start_time or 0), run, record))
    for _, run, record in sorted(candidates, key=lambda c: c[0], reverse=True):
        try:
            return run.info.run_id, parse(read(store, run, record))
        except Exception as error:  # noqa: BLE001 - any damage: that checkpoint is not used, never loaded
            warn(f"checkpoint of run {run.info.run_id[:8]} at iteration {record['iteration']} "
                 f"(step {record['step']}) is not used: {' '.join(str(error).split())[:200]}")
    return None
