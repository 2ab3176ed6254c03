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
`OPTIONS`; docs/cluster.md explains them. Nothing here imports dask-jobqueue before a
cluster is started, nor torch.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import SpecError
from ..registry import Registry

# environment a worker's job gives it (SLURM sets it in every job)
ENV_JOB_ID = "SLURM_JOB_ID"

DEFAULT_MAX_JOBS = 16          # jobs started when --workers is not given: the graph's width, at most this
DEFAULT_SIGNAL_S = 120         # the warning before the time limit (SLURM may send it up to 60 s early)
MAX_SIGNAL_S = 65535           # SLURM's limit for --signal's time
DEFAULT_LOG_DIR = "slurm-logs"
WATCH_INTERVAL_S = 5.0         # how often the jobs are checked (squeue) and lost ones replaced
FAILED_STARTS_PER_JOB = 3      # jobs that end before their worker connects, per job asked for, before giving up
MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True)
class SlurmConfig:
    """What every worker job asks of SLURM and how it starts (`OPTIONS` fill it)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    cpus_per_task: int = 1
    mem: str | None = None
    gpus: str | None = None              # None, or one GPU: "1" or "TYPE:1"
    constraint: str | None = None
    reservation: str | None = None
    exclude: str | None = None
    signal: int = DEFAULT_SIGNAL_S
    job_name: str = "mlprune"
    log_dir: str = DEFAULT_LOG_DIR
    python: str = field(default_factory=lambda: sys.executable)
    prologue: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    interface: str | None = None


@dataclass(frozen=True)
class SlurmOption:
    """One key of --slurm-opt / --slurm-config: its check and the sbatch option it becomes."""

    name: str                  # as users spell it (sbatch's spelling where there is one)
    help: str
    parse: object              # (option name, raw value) -> checked value
    sbatch: str | None = None    # the #SBATCH directive it becomes, "{}" = the value
    jobqueue: str | None = None  # or the SLURMCluster parameter that writes it (neither: mlprune uses it)
    repeatable: bool = False     # given several times (or a list in a file): every value, in order

    @property
    def attribute(self) -> str:
        return self.name.replace("-", "_")


# ---- checks of one value -------------------------------------------------------------------
_TOKEN = re.compile(r"^[^\s'\"\\`$;]+$")   # one shell-safe word: it lands in a job script
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d{1,2}))?(?::(\d{1,2}))?$")
_MEM = re.compile(r"^(\d+)([KMGT]?)B?$", re.IGNORECASE)
_GPUS = re.compile(r"^(?:([A-Za-z0-9_.-]+):)?(\d+)$")


def _word(name: str, value) -> str:
    text = str(value).strip()
    if not _TOKEN.match(text):
        raise SpecError(f"SLURM option {name} must be one word without spaces or quotes, got {value!r}")
    return text


def _line(name: str, value) -> str:
    text = str(value)
    if not text.strip() or any(c in text for c in "\r\n\0"):
        raise SpecError(f"SLURM option {name} must be one non-empty line, got {value!r}")
    return text.strip()


def _positive_int(name: str, value) -> int:
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise SpecError(f"SLURM option {name} must be an integer >= 1, got {value!r}")
    return int(text)


def time_seconds(text: str) -> int:
    """Seconds of a SLURM time (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS)."""
    days, first, second, third = _TIME.match(text).groups()
    parts = [int(p) for p in (first, second, third) if p is not None]
    if days is not None:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = (parts + [0, 0])[:3]
        return ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    if len(parts) == 1:
        return parts[0] * 60
    if len(parts) == 2:
        return parts[0] * 60 + parts[1]
    return (parts[0] * 60 + parts[1]) * 60 + parts[2]


def _time(name: str, value) -> str:
    text = str(value).strip()
    if not _TIME.match(text) or time_seconds(text) <= 0:
        raise SpecError(f"SLURM option {name} must be a time limit: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or "
                        f"D-HH:MM:SS (e.g. 04:00:00), got {value!r}")
    return text


def _mem(name: str, value) -> str:
    match = _MEM.match(str(value).strip())
    if not match or int(match.group(1)) < 1:
        raise SpecError(f"SLURM option {name} must be a size like 8G, 500M or 16000 (megabytes), got {value!r}")
    return f"{match.group(1)}{match.group(2).upper()}"


def _gpus(name: str, value) -> str | None:
    match = _GPUS.match(str(value).strip())
    if not match:
        raise SpecError(f"SLURM option {name} must be 1 or TYPE:1 (e.g. a100:1), got {value!r}")
    count = int(match.group(2))
    if count == 0:
        return None
    if count != 1:
        raise SpecError(f"SLURM option {name} must be 1 or TYPE:1, got {value!r}: a job trains one state at a "
                        f"time on one GPU; ask for more jobs (--workers) to use more GPUs")
    return str(value).strip()


def _signal(name: str, value) -> int:
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) > MAX_SIGNAL_S:
        raise SpecError(f"SLURM option {name} must be the seconds before the time limit at which a worker is "
                        f"told to checkpoint and leave (0 to {MAX_SIGNAL_S}; 0 = no warning), got {value!r}")
    return int(text)


def _sbatch_option(name: str, value) -> str:
    text = _line(name, value)
    if not text.startswith("-"):
        raise SpecError(f"SLURM option {name} must be an sbatch option starting with '-' (e.g. --exclusive), "
                        f"got {value!r}")
    return text


def _path(name: str, value) -> str:
    return str(Path(_line(name, value)).expanduser())


OPTIONS: Registry[SlurmOption] = Registry("SLURM option")
for _entry in (
    SlurmOption("partition", "the partition (queue) of the worker jobs", _word, jobqueue="queue"),
    SlurmOption("account", "the account the jobs are charged to", _word, jobqueue="account"),
    SlurmOption("qos", "the quality of service", _word, "--qos={}"),
    SlurmOption("time", "each job's time limit (HH:MM:SS, D-HH:MM:SS, minutes)", _time, jobqueue="walltime"),
    SlurmOption("cpus-per-task", "CPUs of each job: the torch threads of the state it computes (default 1)",
                _positive_int, jobqueue="job_cpu"),
    SlurmOption("mem", "memory of each job (8G, 500M; default: the partition's)", _mem, jobqueue="job_mem"),
    SlurmOption("gpus", "1 (or TYPE:1): each job has one GPU and trains one state at a time on it", _gpus,
                "--gpus={}"),
    SlurmOption("constraint", "node features the jobs need", _word, "--constraint={}"),
    SlurmOption("reservation", "a reservation to run in", _word, "--reservation={}"),
    SlurmOption("exclude", "nodes not to run on", _word, "--exclude={}"),
    SlurmOption("signal", f"seconds before the time limit at which a worker checkpoints and leaves "
                          f"(--signal=B:USR1@N; default {DEFAULT_SIGNAL_S}, 0 = none)", _signal),
    SlurmOption("job-name", "the jobs' name in squeue (default mlprune)", _word, jobqueue="job_name"),
    SlurmOption("log-dir", f"where each job's output goes (default ./{DEFAULT_LOG_DIR})", _path),
    SlurmOption("python", "the Python that runs the workers (default: this one; the same environment on a "
                          "shared filesystem)", _path),
    SlurmOption("prologue", "a shell line run before the worker starts (repeatable), e.g. 'module load cuda'",
                _line, repeatable=True),
    SlurmOption("extra", "any other sbatch option (repeatable), e.g. --exclusive", _sbatch_option,
                repeatable=True),
    SlurmOption("interface", "the network interface the dask scheduler and workers talk on (e.g. ib0)", _word),
):
    OPTIONS.add(_entry)


def _option(name) -> SlurmOption:
    key = str(name).strip().replace("_", "-")
    return OPTIONS[key]


def _set(values: dict, name, raw, where: str) -> None:
    option = _option(name)
    items = raw if isinstance(raw, (list, tuple)) and option.repeatable else [raw]
    for item in items:
        if isinstance(item, (dict, list, tuple)) or item is None:
            raise SpecError(f"SLURM option {option.name}{where} must be a single value, got {item!r}")
        value = option.parse(option.name, item)
        if option.repeatable:
            values[option.attribute] = (*values.get(option.attribute, ()), value)
        else:
            values[option.attribute] = value


def read_config_file(path) -> dict:
    """The mapping of a --slurm-config file (YAML or JSON data: keys of `OPTIONS`)."""
    import yaml

    path = Path(path)
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise SpecError(f"--slurm-config {path} is larger than {MAX_CONFIG_BYTES} bytes")
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(f"--slurm-config {path}: cannot read it ({type(error).__name__}: {error})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        raise SpecError(f"--slurm-config {path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                        f"{' '.join(str(error).split())[:200]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(f"--slurm-config {path} must be a mapping of SLURM options, got {type(data).__name__}")
    return data


def slurm_config(pairs=(), config_file=None, base: SlurmConfig | None = None) -> SlurmConfig:
    """The checked options: `base` (defaults), then the file's, then each KEY=VALUE of `pairs`."""
    values: dict = {}
    if config_file:
        for name, raw in read_config_file(config_file).items():
            _set(values, name, raw, f" in {config_file}")
    from_pairs: dict = {}
    for pair in pairs:
        name, sep, raw = str(pair).partition("=")
        if not sep or not name.strip():
            raise SpecError(f"--slurm-opt {pair!r} must be KEY=VALUE (e.g. partition=gpu)")
        _set(from_pairs, name, raw, "")
    for attribute, value in from_pairs.items():  # repeatable ones given on the command line add to the file's
        values[attribute] = (*values.get(attribute, ()), *value) if isinstance(value, tuple) else value
    config = replace(base or SlurmConfig(), **values)
    if config.time is not None and config.signal and config.signal >= time_seconds(config.time):
        raise SpecError(f"SLURM option signal ({config.signal} s) must be shorter than the time limit "
                        f"{config.time} ({time_seconds(config.time)} s)")
    return config


def config_from(options) -> SlurmConfig:
    """A SlurmConfig from a SlurmConfig, a {name: value} mapping (Python API) or None."""
    if options is None or isinstance(options, SlurmConfig):
        return options or SlurmConfig()
    if not isinstance(options, dict):
        raise SpecError(f"SLURM options must be a mapping of {', '.join(OPTIONS)}, got {type(options).__name__}")
    return slurm_config([f"{k}={v}" for k, v in options.items() if not isinstance(v, (list, tuple))]
                        + [f"{k}={item}" for k, v in options.items() if isinstance(v, (list, tuple)) for item in v])


def jobqueue_parameters(config: SlurmConfig) -> dict:
    """SLURMCluster's parameters for the options it writes into the job script itself."""
    return {o.jobqueue: getattr(config, o.attribute) for o in OPTIONS.values() if o.jobqueue}


def memory_bytes(mem: str) -> int:
    """Bytes of a SLURM size (a bare number is megabytes)."""
    number, unit = _MEM.match(mem).groups()
    return int(number) << {"K": 10, "": 20, "M": 20, "G": 30, "T": 40}[unit.upper()]


def directives(config: SlurmConfig) -> list[str]:
    """The #SBATCH options of a worker job beyond those SLURMCluster writes (-n 1, --cpus-per-task, --mem,
    -p, -A, -t, -J, -e/-o)."""
    lines = []
    for option in OPTIONS.values():
        value = getattr(config, option.attribute)
        if option.sbatch is not None and value is not None:
            lines.append(option.sbatch.format(value))
    if config.signal:
        lines.append(f"--signal=B:USR1@{config.signal}")  # B: the batch shell, which the worker replaces (exec)
    lines.append("--no-requeue")  # a job SLURM ends is replaced by SlurmJobs, never run twice
    lines.extend(config.extra)
    return lines


def describe_options() -> str:
    """One line per option (docs, --help)."""
    return "\n".join(f"{o.name}: {o.help}" for o in OPTIONS.values())


# ---- checks before anything runs ------------------------------------------------------------------
def check_submit(config: SlurmConfig, tracking_uri: str, is_server: bool) -> None:
    """sbatch and squeue exist and the tracking store is one the jobs can share; one-line SpecErrors."""
    missing = [tool for tool in ("sbatch", "squeue", "scancel", "sinfo") if shutil.which(tool) is None]
    if missing:
        raise SpecError(f"--scheduler slurm needs SLURM's commands on PATH ({', '.join(missing)} not found): "
                        f"run mlprune on a SLURM login node")
    if not Path(config.python).is_file() or not os.access(config.python, os.X_OK):
        raise SpecError(f"SLURM option python {config.python!r} is not an executable file")
    if is_server:
        return
    nodes = cluster_nodes(config.partition)
    here = _short(os.uname().nodename)
    if nodes != {here}:
        shown = ", ".join(sorted(nodes)[:3]) + (", ..." if len(nodes) > 3 else "")
        raise SpecError(f"SLURM jobs on {shown} cannot share the local tracking store {tracking_uri} (it works on "
                        f"a single-node SLURM on this host only): set MLFLOW_TRACKING_URI=http://HOST:5000 (an "
                        f"`mlflow server` on PostgreSQL, docs/cluster.md)")


def _short(host: str) -> str:
    return host.split(".")[0]


def cluster_nodes(partition: str | None) -> set[str]:
    """The node names of `partition`, else of the default partition (where jobs without -p go), by sinfo."""
    try:
        result = subprocess.run(["sinfo", "--noheader", "--format=%P %n"], capture_output=True, text=True,
                                timeout=30)
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
def cluster_parameters(config: SlurmConfig, gpu_resource: str) -> dict:
    """dask-jobqueue SLURMCluster's parameters for worker jobs of `config`."""
    import logging

    return dict(
        # one worker thread per job: one state at a time; its memory limit only informs dask's dashboard
        # (executor.slurm_worker turns dask's memory thresholds off: the job's --mem is the limit)
        cores=1, processes=1, memory=str(memory_bytes(config.mem or "1G")),
        **jobqueue_parameters(config), log_directory=str(Path(config.log_dir).resolve()),
        python=f"exec {shlex.quote(config.python)}",  # the worker replaces the batch shell: B:USR1 reaches it
        worker_command="mlprune.executor.slurm_worker",
        worker_extra_args=["--resources", f"{gpu_resource}=1"] if config.gpus else [],
        job_script_prologue=list(config.prologue), job_extra_directives=directives(config),
        job_directives_skip=[] if config.mem else ["--mem"],
        interface=config.interface, death_timeout=60,
        scheduler_options={"dashboard_address": ":0"}, silence_logs=logging.ERROR,
        shebang="#!/usr/bin/env bash",
    )


def start_jobs(config: SlurmConfig, jobs: int, gpu_resource: str):
    """A started `SlurmJobs` cluster of `jobs` worker jobs (the first may still be queued)."""
    from dask_jobqueue import SLURMCluster

    class SlurmJobs(SLURMCluster):
        """dask-jobqueue's SLURMCluster that keeps `jobs` jobs alive and tells why jobs do not start."""

        def __init__(self, wanted: int, log_dir: str, **kwargs):
            self.wanted, self.log_dir = wanted, log_dir
            self.failure: SpecError | None = None
            self.failed_starts: list[str] = []    # job ids that ended before their worker connected
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
                    queued = set((await self.job_cls._call(["squeue", "--noheader", "--format=%i",
                                                            f"--user={os.getuid()}"])).split())
                except (RuntimeError, OSError):  # squeue failed for a moment: look again next time
                    return
                connected = {info.get("name") for info in self.scheduler_info.get("workers", {}).values()}
                for name, job_id in jobs.items():
                    if job_id in queued or name in connected or job_id in self.connected_jobs:
                        continue  # queued, working, or lost after it worked (SpecCluster drops it after
                        # distributed.deploy.lost-worker-timeout, then it is replaced below)
                    self.failed_starts.append(job_id)
                    del self.workers[name]
                if self.failed_starts and (not self.connected_jobs and len(self.failed_starts) >= self.wanted
                                           or len(self.failed_starts) >= FAILED_STARTS_PER_JOB * self.wanted):
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
            return (f"{len(self.failed_starts)} SLURM worker job(s) ended before their dask worker connected to "
                    f"{self.scheduler_address}; the last, job {job_id}, logged to {log}{said}")

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

    cluster = SlurmJobs(jobs, str(Path(config.log_dir).resolve()), **cluster_parameters(config, gpu_resource))
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
