"""A real single-node SLURM for the tests: munged, slurmctld and slurmd in a temp dir.

`start()` returns a `SlurmCluster` (its environment: ``SLURM_CONF``) or raises `Unavailable`
with the reason (no packages, not root, a daemon that does not come up); `stop()` ends only
what it started. An already running SLURM (``sinfo`` answers with an idle node) is used as
it is and left running. Debian's packages: ``apt-get install slurm-wlm munge``.

From a shell (to try `mlprune ... --scheduler slurm` by hand)::

    python tests/slurm_cluster.py start /tmp/slurm     # prints: export SLURM_CONF=/tmp/slurm/slurm.conf
    python tests/slurm_cluster.py stop /tmp/slurm
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scancel", "scontrol", "srun", "runuser")
START_TIMEOUT_S = 60
# a partition whose one node is another host (never up): what a multi-node cluster looks like to sinfo
OTHER_PARTITION = "elsewhere"
OTHER_NODE = "mlprune-elsewhere"
# GPUs the node offers as a generic resource (--gpus=1 works, each job gets its CUDA_VISIBLE_DEVICES),
# backed by device files that are no GPU: what a GPU node looks like to SLURM, on a machine without one
FAKE_GPU_FILES = ("/dev/null", "/dev/zero")


class Unavailable(RuntimeError):
    """Why no SLURM can run here (the tests that need one skip with it)."""


@dataclass
class SlurmCluster:
    folder: Path | None  # None: a SLURM that was running already (not ours to stop)
    fake_gpus: int = 0  # GPUs of the node that are device files, not GPUs (FAKE_GPU_FILES)
    env: dict = field(default_factory=dict)  # what clients need to find it (SLURM_CONF)
    pids: dict = field(default_factory=dict)  # daemon -> pid file we started

    @property
    def node(self) -> str:
        return self.sinfo("%n").split()[0]

    def sinfo(self, fmt: str) -> str:
        return _run(["sinfo", "--noheader", "-o", fmt], self.env).stdout.strip()

    def jobs(self) -> list[str]:
        """Ids of the jobs in the queue (pending, running or completing)."""
        return _run(["squeue", "--noheader", "-o", "%i"], self.env).stdout.split()

    def client_env(self) -> dict:
        return {**os.environ, **self.env}


def _run(command, env: dict | None = None, timeout: float = 30, check: bool = True, **kwargs):
    result = subprocess.run(
        command, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout, **kwargs
    )
    if check and result.returncode != 0:
        raise Unavailable(
            f"{' '.join(map(str, command))} failed ({result.returncode}): "
            f"{' '.join((result.stderr or result.stdout).split())[:300]}"
        )
    return result


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _running(env: dict) -> bool:
    """A SLURM answers and has a node that takes jobs."""
    if not shutil.which("sinfo"):
        return False
    try:
        result = _run(["sinfo", "--noheader", "-o", "%t"], env, timeout=10, check=False)
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0 and any(
        state.rstrip("*") in ("idle", "mix", "alloc") for state in result.stdout.split()
    )


def _memory_mb() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 1024


def _conf(folder: Path, host: str) -> str:
    cpus, memory = os.cpu_count() or 1, max(256, _memory_mb() - 512)
    # CR_CPU: every CPU is schedulable on its own, memory is not a consumable (a job without
    # --mem would otherwise hold the whole node); KillWait 5 s: scancel's SIGTERM -> SIGKILL
    return f"""\
ClusterName=mlprunetest
SlurmctldHost={host}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={folder}/munge/munge.socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/log/slurmctld.log
SlurmdLogFile={folder}/log/slurmd.log
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
KillWait=5
MinJobAge=300
GresTypes=gpu
NodeName={host} CPUs={cpus} RealMemory={memory} Gres=gpu:{len(FAKE_GPU_FILES)} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
NodeName={OTHER_NODE} NodeAddr=192.0.2.254 CPUs=1 State=DOWN Reason=not-a-real-node
PartitionName={OTHER_PARTITION} Nodes={OTHER_NODE} Default=NO MaxTime=INFINITE State=UP
"""


def start(folder: str | os.PathLike | None = None) -> SlurmCluster:
    """The running SLURM, else one started in `folder` (a new temp dir by default)."""
    if _running({}):
        return SlurmCluster(None)
    missing = [
        tool
        for tool in DAEMONS + CLIENTS
        if not shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    ]
    if missing:
        raise Unavailable(f"SLURM is not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        raise Unavailable("starting a SLURM (slurmd, munged as user munge) needs root")
    try:
        import pwd

        pwd.getpwnam("munge")
    except KeyError:
        raise Unavailable("no user 'munge' (Debian's munge package creates it)") from None
    folder = Path(folder or tempfile.mkdtemp(prefix="mlprune-slurm-"))
    host = socket.gethostname().split(".")[0]
    cluster = SlurmCluster(folder, fake_gpus=len(FAKE_GPU_FILES), env={"SLURM_CONF": str(folder / "slurm.conf")})
    try:
        _start_in(cluster, host)
    except BaseException:
        stop(cluster)
        raise
    return cluster


def _which(tool: str) -> str:
    return shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def _start_in(cluster: SlurmCluster, host: str) -> None:
    folder = cluster.folder
    for sub in ("state", "spool", "log"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)  # munged wants every directory above its socket searchable by all
    munge = folder / "munge"
    munge.mkdir(exist_ok=True)
    shutil.chown(munge, "munge", "munge")
    munge.chmod(0o755)
    as_munge = ["runuser", "-u", "munge", "--"]
    _run(as_munge + [_which("mungekey"), "--create", "--force", f"--keyfile={munge}/munge.key"])
    _run(
        as_munge
        + [
            _which("munged"),
            f"--socket={munge}/munge.socket",
            f"--key-file={munge}/munge.key",
            f"--log-file={munge}/munged.log",
            f"--pid-file={munge}/munged.pid",
            f"--seed-file={munge}/munged.seed",
        ]
    )
    cluster.pids["munged"] = munge / "munged.pid"
    (folder / "slurm.conf").write_text(_conf(folder, host))
    (folder / "gres.conf").write_text(
        "AutoDetect=off\n" + "".join(f"NodeName={host} Name=gpu File={path}\n" for path in FAKE_GPU_FILES)
    )
    conf = str(folder / "slurm.conf")
    _run([_which("slurmctld"), "-f", conf], cluster.env)
    cluster.pids["slurmctld"] = folder / "slurmctld.pid"
    _run([_which("slurmd"), "-f", conf], cluster.env)
    cluster.pids["slurmd"] = folder / "slurmd.pid"
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _running(cluster.env):
        if time.monotonic() > deadline:
            logs = " | ".join(
                f"{p.name}: {p.read_text().strip().splitlines()[-1:]}"
                for p in (folder / "log").glob("*.log")
                if p.stat().st_size
            )
            raise Unavailable(f"the SLURM node did not become idle within {START_TIMEOUT_S} s ({logs[:300]})")
        time.sleep(0.2)


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop(cluster: SlurmCluster) -> None:
    """Cancel its jobs and end the daemons we started (by their pid files); leave a running SLURM alone."""
    if cluster.folder is None:
        return
    conf = cluster.env["SLURM_CONF"]
    if "slurmctld" in cluster.pids:
        _run(["scancel", "--user", str(os.geteuid())], cluster.env, check=False)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _run(["squeue", "--noheader"], cluster.env, check=False).stdout.strip():
            time.sleep(0.2)
    for path in reversed(list(cluster.pids.values())):  # slurmd, slurmctld, then munged
        pid = _pid(path)
        if pid and _alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    for pid in _job_processes(conf):  # a job still running when slurmd ended: its processes are ours
        os.kill(pid, signal.SIGKILL)


def _job_processes(conf: str) -> list[int]:
    """Pids of the processes of jobs of the SLURM configured by `conf` (by their environment)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"SLURM_CONF={conf}".encode() in environ and any(v.startswith(b"SLURM_JOB_ID=") for v in environ):
            found.append(int(entry.name))
    return found


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        sys.exit(f"usage: {sys.argv[0]} start|stop FOLDER")
    where = Path(sys.argv[2]).resolve()
    if sys.argv[1] == "start":
        try:
            started = start(where)
        except Unavailable as error:
            sys.exit(f"no SLURM: {error}")
        print(f"export SLURM_CONF={started.env['SLURM_CONF']}" if started.folder else "# a SLURM is running already")
    else:
        stop(
            SlurmCluster(
                where,
                env={"SLURM_CONF": str(where / "slurm.conf")},
                pids={
                    "munged": where / "munge/munged.pid",
                    "slurmctld": where / "slurmctld.pid",
                    "slurmd": where / "slurmd.pid",
                },
            )
        )
