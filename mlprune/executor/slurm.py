"""SLURM as a scheduler: the task graph's dask workers run as SLURM jobs (dask-jobqueue).

    mlprune sweep recipe.yaml --seeds 0-9 --scheduler slurm --workers 8 \\
        --slurm-opt partition=gpu --slurm-opt gpus=1 --slurm-opt time=04:00:00

Each job runs one dask worker (`executor.slurm_worker`) that computes one state at a time
with the job's CPUs as torch threads (on its GPU with ``gpus=1``). The dask scheduler
runs in the `mlprune` process, so that process must stay alive until the graph is done
(run it on a login node, in tmux, or in a job of its own). `SlurmJobs` keeps the number of
jobs asked for alive: a job that ends (time limit, preemption, ``scancel``, a node failure)
is replaced, and dask gives its task to another worker, which resumes or recomputes it
(claims in the store make sure no state is computed twice). The jobs get
``--signal=B:USR1@<signal>`` so that a worker hears of its time limit before SLURM kills
it. Every state computed in a job records its SLURM job id (tag ``mlprune.slurm.job_id``).

The options (``--slurm-opt KEY=VALUE`` or a YAML/JSON file ``--slurm-config FILE``) are
`slurm_options.OPTIONS`; docs/cluster.md explains them. Nothing here imports dask-jobqueue
before a cluster is started, nor torch.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from ..errors import SpecError
from .slurm_options import SlurmConfig, directives, jobqueue_parameters, memory_bytes

# environment a worker's job gives it (SLURM sets it in every job)
ENV_JOB_ID = "SLURM_JOB_ID"

DEFAULT_MAX_JOBS = 16  # jobs started when --workers is not given: the graph's width, at most this
WATCH_INTERVAL_S = 5.0  # how often the jobs are checked (squeue) and lost ones replaced
FAILED_STARTS_PER_JOB = 3  # jobs that end before their worker connects, per job asked for, before giving up


# ---- checks before anything runs ------------------------------------------------------------------
def check_submit(config: SlurmConfig, tracking_uri: str, is_server: bool) -> None:
    """sbatch and squeue exist and the tracking store is one the jobs can share; one-line SpecErrors."""
    missing = [tool for tool in ("sbatch", "squeue", "scancel", "sinfo") if shutil.which(tool) is None]
    if missing:
        raise SpecError(
            f"--scheduler slurm needs SLURM's commands on PATH ({', '.join(missing)} not found): "
            f"run mlprune on a SLURM login node"
        )
    if not Path(config.python).is_file() or not os.access(config.python, os.X_OK):
        raise SpecError(f"SLURM option python {config.python!r} is not an executable file")
    if is_server:
        return
    nodes = cluster_nodes(config.partition)
    here = _short(os.uname().nodename)
    if nodes != {here}:
        shown = ", ".join(sorted(nodes)[:3]) + (", ..." if len(nodes) > 3 else "")
        raise SpecError(
            f"SLURM jobs on {shown} cannot share the local tracking store {tracking_uri} (it works on "
            f"a single-node SLURM on this host only): set MLFLOW_TRACKING_URI=http://HOST:5000 (an "
            f"`mlflow server` on PostgreSQL, docs/cluster.md)"
        )


def _short(host: str) -> str:
    return host.split(".")[0]


def cluster_nodes(partition: str | None) -> set[str]:
    """The node names of `partition`, else of the default partition (where jobs without -p go), by sinfo."""
    try:
        result = subprocess.run(["sinfo", "--noheader", "--format=%P %n"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SpecError(f"sinfo did not answer: {error}") from None
    if result.returncode != 0:
        raise SpecError(f"sinfo failed: {' '.join((result.stderr or result.stdout).split())[:200]}")
    rows = [line.split() for line in result.stdout.splitlines() if len(line.split()) == 2]
    if partition is not None:
        nodes = {_short(n) for p, n in rows if p.rstrip("*") == partition}
    else:
        nodes = {_short(n) for p, n in rows if p.endswith("*")} or {_short(n) for _, n in rows}
    if not nodes:
        raise SpecError(f"SLURM has no nodes{f' in partition {partition!r}' if partition else ''} (sinfo)")
    return nodes


def graph_width(deps: dict[str, list[str]]) -> int:
    """How many tasks of a graph can run at once, at most: the largest number at one depth."""
    depth: dict[str, int] = {}

    def level(key: str) -> int:
        if key not in depth:
            depth[key] = 1 + max((level(d) for d in deps.get(key, ()) if d in deps), default=-1)
        return depth[key]

    counts: dict[int, int] = {}
    for key in deps:
        counts[level(key)] = counts.get(level(key), 0) + 1
    return max(counts.values(), default=0)


def jobs_for(width: int, workers: int | None) -> int:
    """Jobs to start: --workers, else as many as the graph can use (at most DEFAULT_MAX_JOBS)."""
    return workers if workers is not None else max(1, min(width, DEFAULT_MAX_JOBS))


def job_tags() -> dict[str, str]:
    """Tags of a state computed here: the SLURM job id when this process runs in a SLURM job."""
    from ..names import TAG_SLURM_JOB_ID

    job = os.environ.get(ENV_JOB_ID, "").strip()
    return {TAG_SLURM_JOB_ID: job} if job else {}


# ---- the cluster ------------------------------------------------------------------------------
def job_class():
    """dask-jobqueue's SLURMJob whose ``job_directives_skip`` drops whole directives (``--mem`` drops
    ``#SBATCH --mem=...``, never ``#SBATCH -A proj--mem``): dask-jobqueue matches them as substrings."""
    from dask_jobqueue.slurm import SLURMJob

    class Job(SLURMJob):
        def __init__(self, *args, job_directives_skip=(), **kwargs):
            super().__init__(*args, job_directives_skip=(), **kwargs)
            skip = set(job_directives_skip)
            self.job_header = "\n".join(
                line for line in self.job_header.splitlines() if directive_name(line) not in skip
            )

    return Job


def directive_name(line: str) -> str | None:
    """The option an ``#SBATCH`` line gives (``--mem`` of ``#SBATCH --mem=8G``, ``-A`` of ``#SBATCH -A x``)."""
    parts = line.split()
    if len(parts) < 2 or parts[0] != "#SBATCH":
        return None
    return parts[1].split("=", 1)[0]


def cluster_parameters(config: SlurmConfig, gpu_resource: str) -> dict:
    """dask-jobqueue SLURMCluster's parameters for worker jobs of `config` (every value checked by
    `slurm_options`; what reaches a shell line of the job script is quoted here)."""
    import logging

    interface = {"interface": config.interface} if config.interface else {}
    return dict(
        # one worker thread per job: one state at a time; its memory limit only informs dask's dashboard
        # (executor.slurm_worker turns dask's memory thresholds off: the job's --mem is the limit)
        cores=1,
        processes=1,
        memory=str(memory_bytes(config.mem or "1G")),
        **jobqueue_parameters(config),
        log_directory=str(Path(config.log_dir).resolve()),
        python=f"exec {shlex.quote(config.python)}",  # the worker replaces the batch shell: B:USR1 reaches it
        worker_command="mlprune.executor.slurm_worker",
        worker_extra_args=[
            *(["--resources", f"{gpu_resource}=1"] if config.gpus else []),
            *(["--interface", shlex.quote(config.interface)] if config.interface else []),
        ],
        job_script_prologue=list(config.prologue),
        job_extra_directives=directives(config),
        job_cls=job_class(),
        job_directives_skip=[] if config.mem else ["--mem"],
        death_timeout=60,
        scheduler_options={"dashboard_address": ":0", **interface},
        silence_logs=logging.ERROR,
        shebang="#!/usr/bin/env bash",
    )


CLUSTER_ONLY = ("job_cls", "scheduler_options", "silence_logs")


def job_script(config: SlurmConfig, gpu_resource: str, scheduler: str = "tcp://127.0.0.1:8786") -> str:
    """The job script a worker job of `config` runs, rendered without starting a scheduler (checks before any
    run is created; tests)."""
    parameters = cluster_parameters(config, gpu_resource)
    job = parameters["job_cls"](
        scheduler=scheduler, name="mlprune-worker", **{k: v for k, v in parameters.items() if k not in CLUSTER_ONLY}
    )
    return job.job_script()


def check_job_script(config: SlurmConfig, gpu_resource: str) -> None:
    """The job script renders (a one-line SpecError otherwise)."""
    try:
        job_script(config, gpu_resource)
    except SpecError:
        raise
    except Exception as error:  # noqa: BLE001 - dask-jobqueue's own checks: one line, before any run
        raise SpecError(
            f"the SLURM job script cannot be written: {type(error).__name__}: {' '.join(str(error).split())[:300]}"
        ) from None


def start_jobs(config: SlurmConfig, jobs: int, gpu_resource: str):
    """A started `SlurmJobs` cluster of `jobs` worker jobs (the first may still be queued).

    Why long: the SLURMCluster subclass is defined in here, so that dask_jobqueue is imported only by a run that
    asks for SLURM; each of its methods is short."""
    from dask_jobqueue import SLURMCluster

    class SlurmJobs(SLURMCluster):
        """dask-jobqueue's SLURMCluster that keeps `jobs` jobs alive and tells why jobs do not start."""

        def __init__(self, wanted: int, log_dir: str, **kwargs):
            self.wanted, self.log_dir = wanted, log_dir
            self.failure: SpecError | None = None
            self.failed_starts: list[str] = []  # job ids that ended before their worker connected
            self.connected_jobs: set[str] = set()
            self._watcher = None
            super().__init__(**kwargs)

        def watch(self) -> None:
            from tornado.ioloop import PeriodicCallback

            self.sync(self._note_connections)
            self.scale(jobs=self.wanted)
            self._watcher = PeriodicCallback(self._keep, WATCH_INTERVAL_S * 1000)
            self.loop.add_callback(self._watcher.start)

        async def _note_connections(self) -> None:
            """Remember which jobs' workers connected (when they do: a job may end before the next _keep)."""
            from distributed.diagnostics.plugin import SchedulerPlugin

            cluster = self

            class Connections(SchedulerPlugin):
                def add_worker(self, scheduler, worker):
                    job = cluster.workers.get(scheduler.workers[worker].name)
                    if job is not None and job.job_id:
                        cluster.connected_jobs.add(job.job_id)

            self.scheduler.add_plugin(Connections(), name="mlprune-slurm-connections")

        async def _keep(self) -> None:
            """On the cluster's loop: note connected jobs, replace ended ones, give up on jobs that never start."""
            if self.failure is not None or self.status.name not in ("running", "created"):
                return
            jobs = {name: job.job_id for name, job in list(self.workers.items()) if job.job_id}
            if jobs:
                try:  # this user's jobs in the queue (pending, running or completing)
                    queued = set(
                        (
                            await self.job_cls._call(["squeue", "--noheader", "--format=%i", f"--user={os.getuid()}"])
                        ).split()
                    )
                except (RuntimeError, OSError):  # squeue failed for a moment: look again next time
                    return
                connected = {info.get("name") for info in self.scheduler_info.get("workers", {}).values()}
                for name, job_id in jobs.items():
                    if job_id in queued or name in connected or job_id in self.connected_jobs:
                        continue  # queued, working, or lost after it worked (SpecCluster drops it after
                        # distributed.deploy.lost-worker-timeout, then it is replaced below)
                    self.failed_starts.append(job_id)
                    del self.workers[name]
                if self.failed_starts and (
                    not self.connected_jobs
                    and len(self.failed_starts) >= self.wanted
                    or len(self.failed_starts) >= FAILED_STARTS_PER_JOB * self.wanted
                ):
                    self.failure = SpecError(self.start_failure(self.failed_starts[-1]))
                    return
            if set(self.worker_spec) - set(self.workers):  # a job ended: submit its replacement
                self.scale(jobs=self.wanted)

        def start_failure(self, job_id: str) -> str:
            log = Path(self.log_dir) / f"{self.job_name or 'worker'}-{job_id}.err"
            try:
                tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:]
            except OSError:
                tail = []
            said = f": {' '.join(tail[0].split())[:200]}" if tail else ""
            return (
                f"{len(self.failed_starts)} SLURM worker job(s) ended before their dask worker connected to "
                f"{self.scheduler_address}; the last, job {job_id}, logged to {log}{said}"
            )

        def wait_for_worker(self, client) -> None:
            """Until a worker connects (however long the queue is), or every job fails to start."""
            while not client.scheduler_info().get("workers"):
                if self.failure is not None:
                    raise self.failure
                time.sleep(0.2)

        def completed(self, futures):
            """Futures as they complete (as_completed), raising when the jobs cannot run at all."""
            from distributed import wait

            remaining = set(futures)
            while remaining:
                try:
                    done, remaining = wait(remaining, timeout=WATCH_INTERVAL_S, return_when="FIRST_COMPLETED")
                except TimeoutError:
                    done = ()
                yield from done
                if self.failure is not None:
                    raise self.failure

        def close(self, *args, **kwargs):
            if self._watcher is not None:
                self.loop.add_callback(self._watcher.stop)
            return super().close(*args, **kwargs)

    try:
        cluster = SlurmJobs(jobs, str(Path(config.log_dir).resolve()), **cluster_parameters(config, gpu_resource))
    except Exception as error:  # noqa: BLE001 - a scheduler that cannot start (its interface, its port): one line
        raise SpecError(
            f"the dask scheduler of the SLURM jobs did not start: {type(error).__name__}: "
            f"{' '.join(str(error).split())[:300]}"
        ) from None
    cluster.watch()
    return cluster


def start_client(config: SlurmConfig, jobs: int, gpu_resource: str):
    """(client, cluster): `jobs` worker jobs submitted, once the first worker has connected."""
    from distributed import Client

    cluster = start_jobs(config, jobs, gpu_resource)
    try:
        client = Client(cluster)
        cluster.wait_for_worker(client)
    except BaseException:
        cluster.close()
        raise
    return client, cluster
