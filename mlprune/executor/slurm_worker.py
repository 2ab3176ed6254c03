"""The dask worker of a SLURM job: ``python -m mlprune.executor.slurm_worker SCHEDULER --name NAME ...``.

`executor.slurm` writes the job script; its last line ``exec``s this module, so the worker
process *is* the job's batch shell and receives what SLURM sends it: ``--signal=B:USR1@N``
before the time limit, SIGTERM on ``scancel``, preemption or the time limit itself (then
SIGKILL after the cluster's KillWait). On either signal, in the main thread (the worker's
event loop), the worker leaves gracefully: the dask scheduler takes no new task to it and
gives its task to another job (whose worker waits for this one's claim in the store and
then resumes or recomputes the state), then the worker closes and the job ends.

The arguments are the ones dask-jobqueue gives ``dask worker`` (a worker without nanny:
the nanny would be the process that gets the signals). dask's memory thresholds are off:
the job's ``--mem`` is the limit, and a paused worker would stall a training.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time

from .slurm import ENV_JOB_ID

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
MEMORY_THRESHOLDS_OFF = {
    f"distributed.worker.memory.{name}": False for name in ("target", "spill", "pause", "terminate")
}

log = logging.getLogger("mlprune.executor.slurm_worker")


def _resources(text: str) -> dict[str, float]:
    resources = {}
    for item in text.replace(",", " ").split():
        name, _, amount = item.partition("=")
        resources[name] = float(amount)
    return resources


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mlprune.executor.slurm_worker", description="The dask worker of a SLURM job started by mlprune."
    )
    parser.add_argument("scheduler")
    parser.add_argument("--name", required=True)
    parser.add_argument("--nthreads", type=int, default=1)
    parser.add_argument("--memory-limit", default="auto")
    parser.add_argument("--death-timeout", type=float, default=None)
    parser.add_argument("--local-directory", default=None)
    parser.add_argument("--interface", default=None)
    parser.add_argument("--resources", type=_resources, default=None)
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    import dask
    from distributed import Worker

    with dask.config.set(MEMORY_THRESHOLDS_OFF):
        worker = await Worker(
            args.scheduler,
            name=args.name,
            nthreads=args.nthreads,
            memory_limit=args.memory_limit,
            death_timeout=args.death_timeout,
            local_directory=args.local_directory,
            interface=args.interface,
            resources=args.resources,
        )
        leave_on_signals(worker)
        await worker.finished()


def leave_on_signals(worker) -> None:
    """On SIGUSR1 / SIGTERM: leave the cluster gracefully (the task goes to another job), once."""
    loop = asyncio.get_running_loop()
    leaving: list = []

    def on_signal(number: int) -> None:
        import os

        reason = f"SLURM job {os.environ.get(ENV_JOB_ID, '?')} got {signal.Signals(number).name}"
        log.warning("%s: leaving", reason)
        if not leaving:
            leaving.append(asyncio.ensure_future(leave(worker, reason, number)))

    for number in STOP_SIGNALS:
        loop.add_signal_handler(number, on_signal, number)


async def leave(worker, reason: str, signum: int | None = None) -> None:
    """Retire through the scheduler first (it takes the task off this worker and hands it to another
    job, so what this worker's task does next is ignored), then ask the training that runs here to
    checkpoint at its next iteration and stop (`training.interrupt`: its claim is left KILLED and the
    next owner resumes from that checkpoint), then close once the task's thread is done. If the
    scheduler is gone (its `mlprune` process ended), just stop and close."""
    from ..training.interrupt import request_stop

    try:
        await worker.scheduler.retire_workers(
            workers=[worker.address], close_workers=False, remove=True, stimulus_id=f"slurm-leave-{time.time()}"
        )
    except (OSError, asyncio.TimeoutError) as error:
        log.warning("the dask scheduler did not answer (%s): closing", error)
    request_stop(reason, signum)
    await worker.close(reason=reason)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
