"""Stop requests: a process-wide flag that a running training polls once per iteration.

A job scheduler (SLURM's ``--signal``, a preemption, ``scancel``) or the user asks the
process to stop with SIGTERM or SIGUSR1; `install_signal_handlers` turns those signals
into `request_stop`. Nothing stops at once: the training that runs stores a resumable
checkpoint at its next iteration and raises `Interrupted`; the executor leaves that
state's claim run KILLED (not FINISHED), so the next owner of the key resumes from the
checkpoint; no other state is started (`reach` and a claim that waits check the flag
too). The CLI then exits with 128 + the signal's number, in one line.

The flag is an `threading.Event`: setting it from a signal handler (which Python runs
in the main thread) or from any other thread (a dask worker's plugin, a test) is seen
by a training in any thread of the process. Imports neither torch nor mlflow.
"""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

_stop = threading.Event()
_lock = threading.Lock()
_state = {"reason": None, "signal": None}


class Interrupted(Exception):
    """A stop was requested: the state being computed was checkpointed (when it was training) and
    is left unfinished, to be resumed by the next run that needs it."""

    def __init__(self, reason: str, *, signum: int | None = None, iteration: int | None = None):
        self.reason, self.signum, self.iteration = reason, signum, iteration
        where = f"; checkpoint at iteration {iteration}" if iteration is not None else ""
        super().__init__(f"stopped on request ({reason}){where}")

    @property
    def exit_status(self) -> int:
        """What a process stopped this way exits with: 128 + the signal's number (143 for SIGTERM), else 1."""
        return 128 + self.signum if self.signum else 1


def request_stop(reason: str, signum: int | None = None) -> None:
    """Ask every training of this process to checkpoint and stop (the first reason is kept)."""
    with _lock:
        if not _stop.is_set():
            _state["reason"], _state["signal"] = str(reason), signum
        _stop.set()


def stop_requested() -> str | None:
    """Why a stop was requested, or None (cheap: polled once per training iteration)."""
    return _state["reason"] if _stop.is_set() else None


def stop_signal() -> int | None:
    """The number of the signal that requested the pending stop, if one did."""
    return _state["signal"] if _stop.is_set() else None


def clear_stop() -> None:
    """Forget a stop request (a process that goes on after handling one, tests)."""
    with _lock:
        _stop.clear()
        _state["reason"], _state["signal"] = None, None


def interrupted(iteration: int | None = None) -> Interrupted:
    """The exception for the pending stop request (call when `stop_requested()`)."""
    return Interrupted(_state["reason"] or "stop requested", signum=_state["signal"], iteration=iteration)


def _on_signal(signum, _frame) -> None:
    request_stop(f"signal {signal.Signals(signum).name}", signum)


def install_signal_handlers(signals=STOP_SIGNALS) -> bool:
    """Make `signals` request a stop instead of ending the process; True if installed. Only the main
    thread may install signal handlers: elsewhere (a dask worker's task thread) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return False
    for signum in signals:
        signal.signal(signum, _on_signal)
    return True
