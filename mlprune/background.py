"""Work a command leaves to a detached process, so that the user does not wait for it, and the lock
that lets whoever reads its result wait for it instead.

`mlprune run` stores its states and prints its summary first; what only adds to a
workflow run is done after it returns, by ``python -m mlprune.background``:

- ``workflow-figures``: the recipe's figures on the workflow run of a run that computed
  something (matplotlib, every state's tensors: seconds, most of a short run's time);
- ``workflow-record``: the workflow run of a fully cached run (writing it means opening
  MLflow's store, which costs more than the whole cached look-up).

Readers wait: while a task runs it holds a shared lock on a file beside the store
(`pending_lock`); `wait_pending` takes it exclusively, i.e. returns once every task
started on that store has finished (`mlprune report`, `compare` and `report.collect`
call it). The command takes the lock before it starts the task and hands its
descriptor over, so there is no moment at which a task is pending and the lock free.
A task that fails leaves a line in the log (``<cache dir>/background.log``) and, for
figures, an ``mlprune.figures`` tag saying why on the workflow run.

``MLPRUNE_BACKGROUND=0`` runs every task in the foreground, before the command returns
(the test suite does, so that no test depends on when a detached process finishes;
tests/test_background.py checks the detached path).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .names import ENV_BACKGROUND
from .registry import Registry, load_impl

WAIT_LIMIT_S = 900.0  # a reader stops waiting for a task that never ends (and says so)


@dataclass(frozen=True)
class Task:
    """One kind of background work: ``impl(payload: dict)`` does it (in the detached process)."""

    name: str
    impl: str
    help: str = ""

    def load(self):
        return load_impl(self.impl)


TASKS: Registry[Task] = Registry("background task")
TASKS.add(
    Task(
        "workflow-figures",
        "mlprune.report.workflow:log_workflow_figures",
        "the recipe's figures on the workflow run of a run that computed states",
    )
)
TASKS.add(
    Task(
        "workflow-record",
        "mlprune.report.workflow:record_workflow",
        "the workflow run (or the link from `mlflow run`'s run) of a fully cached run",
    )
)


def foreground() -> bool:
    return os.environ.get(ENV_BACKGROUND, "1").strip() == "0"


def pending_lock(tracking_uri: str) -> Path:
    """The lock file of tasks pending on a store: beside a sqlite database, else in the user cache."""
    from .store.experiments import cache_dir, sqlite_path

    path = sqlite_path(tracking_uri)
    if path is not None:
        return path.with_name(path.name + ".mlprune-pending")
    return cache_dir() / "pending" / (hashlib.sha256(tracking_uri.encode()).hexdigest()[:16] + ".lock")


def log_path() -> Path:
    from .store.experiments import cache_dir

    return cache_dir() / "background.log"


def start(task: str, payload: dict, tracking_uri: str) -> None:
    """Do `task` with `payload` after this process returns (or now, in the foreground: MLPRUNE_BACKGROUND=0)."""
    TASKS[task]  # noqa: B018 - an unknown task is an error here, not in a detached process
    if foreground():
        _run(task, payload)
        return
    lock = pending_lock(tracking_uri)
    lock.parent.mkdir(parents=True, exist_ok=True)
    log = log_path()
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile("w", suffix=".json", prefix=f"mlprune-{task}-", delete=False, dir=log.parent)
    with handle:
        json.dump({"task": task, "payload": payload}, handle)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # held from now on by the task's process (the descriptor is inherited)
        with open(log, "a") as out:
            subprocess.Popen(
                [sys.executable, "-m", "mlprune.background", handle.name, str(fd)],
                pass_fds=(fd,),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                cwd=os.getcwd(),
                env=os.environ.copy(),
            )
    except OSError:
        # no process can be started here: do it now rather than not at all
        os.close(fd)
        Path(handle.name).unlink(missing_ok=True)
        _run(task, payload)
        return
    os.close(fd)  # the child holds the lock until it exits


def wait_pending(tracking_uri: str, progress=None) -> bool:
    """Wait until every background task started on this store has finished; False if one ran past
    WAIT_LIMIT_S (the caller goes on with what is there)."""
    lock = pending_lock(tracking_uri)
    if not lock.exists():
        return True
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return True
    try:
        started, told, delay = time.monotonic(), False, 0.02
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                return True
            except BlockingIOError:
                pass
            waited = time.monotonic() - started
            if waited > WAIT_LIMIT_S:
                return False
            if progress is not None and not told and waited > 1.0:
                progress("waiting for figures and records still being written in the background")
                told = True
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
    finally:
        os.close(fd)


def _run(task: str, payload: dict) -> bool:
    """Do one task; a failure is a line in the log (nobody waits to see it: the command has returned)."""
    try:
        TASKS[task].load()(payload)
        return True
    except KeyboardInterrupt:
        raise
    except Exception as error:  # noqa: BLE001
        try:
            with open(log_path(), "a") as out:
                out.write(
                    f"{time.strftime('%Y-%m-%d %H:%M:%S')} mlprune background {task} failed: "
                    f"{type(error).__name__}: {' '.join(str(error).split())[:500]}\n"
                )
        except OSError:
            pass
        return False


def main(argv: list[str]) -> int:
    payload_file, fd = argv[0], int(argv[1])
    try:
        job = json.loads(Path(payload_file).read_text())
        Path(payload_file).unlink(missing_ok=True)
        return 0 if _run(job["task"], job["payload"]) else 1
    finally:
        os.close(fd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
