"""--scheduler slurm on a real single-node SLURM (tests/slurm_cluster.py starts one where it can).

The option mapping and the errors need no SLURM. The rest submits real jobs (sbatch) whose
dask workers compute real states into a real sqlite store shared through the filesystem
(one node), and kills one with a real ``scancel`` at a point the test controls (a hook that
blocks the first training at its first epoch's end).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import slurm_cluster
from mlflow.tracking import MlflowClient
from test_parallel import cli_env, finished_by_key, key_runs, one_line_error, paused_at, run_cli, wait_for, weights_hash

from mlprune import Experiment, SpecError
from mlprune.executor.slurm import cluster_parameters, graph_width, job_class, job_script, jobs_for, start_client
from mlprune.executor.slurm_options import DEFAULT_TIME, OPTIONS, SlurmConfig, directives, slurm_config, time_seconds
from mlprune.names import TAG_SLURM_JOB_ID
from mlprune.spec.options import Option

REPO = Path(__file__).resolve().parents[1]
RECIPE = str(REPO / "recipes" / "lt_structuredL1.yaml")
SWEEP = ["sweep", RECIPE, "--seeds", "0-1", "-P", "rounds=1", "-P", "epochs=1"]
SWEEP_2_EPOCHS = ["sweep", RECIPE, "--seeds", "0-1", "-P", "rounds=1", "-P", "epochs=2"]

# Installed in every worker job (a sitecustomize.py on PYTHONPATH, which sbatch passes on): the first
# training (of all jobs) to end epoch $MLPRUNE_TEST_PAUSE_EPOCH writes "<run id> <pid>" to
# $MLPRUNE_TEST_PAUSED and blocks there until its process is asked to stop (SLURM's SIGTERM, through
# mlprune.executor.slurm_worker), then goes on: its next iteration sees the stop request. So the test
# scancels that job at a point it controls, not in a race with a fast machine.
PAUSE_UNTIL_STOPPED = """
import os, time
from mlprune.store.claims import Claims
try:
    from mlprune.training.interrupt import stop_requested
except ImportError:  # no stop requests: the job's SIGKILL ends the wait
    stop_requested = lambda: None
_beat = Claims.heartbeat
_epochs = {}
def heartbeat(self, run_id, force=False):
    if not force:
        _epochs[run_id] = _epochs.get(run_id, 0) + 1
        if _epochs[run_id] == int(os.environ.get("MLPRUNE_TEST_PAUSE_EPOCH", "1")):
            try:
                fd = os.open(os.environ["MLPRUNE_TEST_PAUSED"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return _beat(self, run_id, force)
            os.write(fd, f"{run_id} {os.getpid()}".encode())
            os.close(fd)
            while not stop_requested():
                time.sleep(0.05)
    return _beat(self, run_id, force)
Claims.heartbeat = heartbeat
"""


@pytest.fixture(scope="session")
def slurm():
    """A running SLURM (started in a temp dir when none runs) with SLURM_CONF in the environment."""
    try:
        cluster = slurm_cluster.start()
    except slurm_cluster.Unavailable as error:
        pytest.skip(f"no SLURM here: {error}")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in cluster.env.items():
            patch.setenv(name, value)
        yield cluster
    slurm_cluster.stop(cluster)


def all_runs(uri: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=10000)


# ---- the option mapping (no SLURM needed) --------------------------------------------------------
def test_options_map_to_sbatch_and_dask_jobqueue(tmp_path):
    config = slurm_config(
        [
            "partition=gpu",
            "time=04:00:00",
            "gpus=1",
            "mem=8G",
            "cpus_per_task=4",
            "signal=600",
            "extra=--exclusive",
            "prologue=module load cuda",
            "prologue=source /shared/venv/bin/activate",
        ]
    )
    assert (config.partition, config.time, config.gpus, config.mem, config.cpus_per_task) == (
        "gpu",
        "04:00:00",
        "1",
        "8G",
        4,
    )
    assert config.prologue == ("module load cuda", "source /shared/venv/bin/activate")
    assert directives(config) == ["--gpus=1", "--signal=B:USR1@600", "--no-requeue", "--exclusive"]
    # a file gives the same keys (YAML or JSON data); the command line overrides it and adds to lists
    (tmp_path / "slurm.yaml").write_text("partition: cpu\ntime: '1-00:00'\nprologue: [module load gcc]\nqos: low\n")
    (tmp_path / "slurm.json").write_text(json.dumps({"partition": "cpu", "cpus-per-task": 2}))
    from_file = slurm_config(["partition=gpu", "prologue=echo hi"], tmp_path / "slurm.yaml")
    assert (from_file.partition, from_file.time, from_file.qos) == ("gpu", "1-00:00", "low")
    assert from_file.prologue == ("module load gcc", "echo hi")
    assert slurm_config([], tmp_path / "slurm.json").cpus_per_task == 2
    assert SlurmConfig().signal > 0 and slurm_config(["signal=0"]).signal == 0
    assert "--signal=B:USR1@0" not in " ".join(directives(slurm_config(["signal=0"])))
    assert [time_seconds(t) for t in ("90", "10:30", "04:00:00", "2-12", "1-00:01", "1-00:00:05")] == [
        5400,
        630,
        14400,
        216000,
        86460,
        86405,
    ]
    for option in OPTIONS:  # every option says where it goes (a spec.options.Option, never keyed)
        assert isinstance(option, Option) and option.key == "never"
        assert option.help and (
            option.meta["sbatch"]
            or option.meta["jobqueue"]
            or option.name in ("signal", "log-dir", "python", "prologue", "extra", "interface")
        ), option


def test_the_job_script_execs_the_worker_with_the_options():
    from dask_jobqueue import SLURMCluster

    config = slurm_config(
        [
            "partition=gpu",
            "time=04:00:00",
            "gpus=a100:1",
            "mem=8G",
            "cpus-per-task=4",
            "account=lab",
            "prologue=module load cuda",
            "python=/shared/venv/bin/python",
        ]
    )
    cluster = SLURMCluster(**cluster_parameters(config, "GPU"))
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    lines = script.splitlines()
    for directive in (
        "-p gpu",
        "-A lab",
        "-t 04:00:00",
        "--cpus-per-task=4",
        "--mem=8G",
        "--gpus=a100:1",
        f"--signal=B:USR1@{SlurmConfig().signal}",
        "--no-requeue",
        "-n 1",
    ):
        assert f"#SBATCH {directive}" in lines, (directive, script)
    assert lines.index("module load cuda") < len(lines) - 1
    # the worker replaces the batch shell (so B:USR1 reaches it), offers the job's GPU as one dask resource
    assert lines[-1].startswith("exec /shared/venv/bin/python -m mlprune.executor.slurm_worker tcp://")
    assert "--nthreads 1" in lines[-1] and "--resources GPU=1" in lines[-1]
    cpu = SLURMCluster(**cluster_parameters(SlurmConfig(), "GPU"))
    try:
        script = cpu.job_script()
    finally:
        cpu.close()
    assert "#SBATCH --mem" not in script and "--gpus" not in script and "--resources" not in script  # the partition's
    assert f"exec {sys.executable} -m mlprune.executor.slurm_worker" in script  # default: this Python


def test_docs_explain_every_option():
    text = (REPO / "docs" / "cluster.md").read_text()
    for name in OPTIONS.names:
        assert f"`{name}`" in text, name
    assert f"`{DEFAULT_TIME}`" in text  # the time limit jobs get when none is given


@pytest.mark.parametrize(
    "pairs, fragment",
    [
        (["partitoin=gpu"], "unknown SLURM option 'partitoin'; allowed: account, constraint"),
        (["time=4h"], "time must be a time limit"),
        (["gpus=2"], "one GPU"),
        (["mem=lots"], "mem must be a size"),
        (["cpus-per-task=0"], "cpus-per-task must be an integer in 1..4096"),
        (["partition=gpu; rm -rf /"], "partition must be a SLURM name"),
        (["prologue=a\nb"], "one non-empty line"),
        (["extra=exclusive"], "must be one sbatch option"),
        (["signal=-5"], "signal must be the seconds"),
        (["time=10", "signal=900"], "shorter than the time limit"),
        (["partition"], "must be KEY=VALUE"),
        # hostile values: each would land in the job script
        (["interface=lo&touch>pwned"], "interface must be a network interface of this host"),
        (["interface=ib9"], "interface must be a network interface of this host, got 'ib9'; allowed: "),
        (["account=proj;touch pwned"], "account must be a SLURM name"),
        (["partition=$(touch pwned)"], "partition must be a SLURM name"),
        (["job-name=a`touch pwned`"], "job-name must be a SLURM name"),
        (["qos=a\x00b"], "qos must be a SLURM name"),
        (["time=99999999999999999999"], "time must be a time limit of at most 366 days"),
        (["time=1:75:00"], "time must be a time limit"),
        (["time=2-25"], "time must be a time limit"),
        (["time=367-00:00:00"], "time must be a time limit"),
        (["mem=99999999999999999999G"], "mem must be a size"),
        (["cpus-per-task=\u0661\u0662"], "cpus-per-task must be an integer"),
        (["log-dir=/tmp/a b"], "log-dir must be a path of letters"),
        (["log-dir=/tmp/$(touch pwned)"], "log-dir must be a path of letters"),
        (["python=/usr/bin/python3;touch pwned"], "python must be a path of letters"),
        (["extra=--comment=x y"], "extra must be one sbatch option"),
        (["extra=--comment=$(touch pwned)"], "extra must be one sbatch option"),
        (["constraint=a100 && touch pwned"], "constraint must be node features"),
        (["exclude=node1;x"], "exclude must be a SLURM host list"),
    ],
)
def test_bad_options_are_one_line_errors(pairs, fragment):
    with pytest.raises(SpecError) as error:
        slurm_config(pairs)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_a_config_file_is_data_never_code(tmp_path):
    path = tmp_path / "slurm.yaml"
    path.write_text("partition: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        slurm_config([], path)
    assert not (tmp_path / "pwned").exists()
    path.write_text("- partition\n")
    with pytest.raises(SpecError, match="must be a mapping"):
        slurm_config([], path)
    with pytest.raises(SpecError, match="not found"):
        slurm_config([], tmp_path / "missing.yaml")
    # a size-limited regular file: never a device that never ends, a FIFO that blocks, a directory
    os.mkfifo(tmp_path / "fifo.yaml")
    (tmp_path / "big.yaml").write_text("#" * (2 << 20))
    for path, fragment in (
        ("/dev/zero", "is a character device, not a regular file"),
        (tmp_path / "fifo.yaml", "is a named pipe (FIFO), not a regular file"),
        (tmp_path, "is a directory, not a regular file"),
        (tmp_path / "big.yaml", "bytes; at most 1048576 bytes"),
    ):
        with pytest.raises(SpecError, match=re.escape(fragment)) as error:
            slurm_config([], path)
        assert "\n" not in str(error.value)


STUB = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "{folder}/$(basename "$0").argv"
{then}
"""


def test_the_job_script_is_shell_safe_and_runs_with_stub_commands(tmp_path, monkeypatch):
    """Every accepted value rendered into a real job script: `bash -n` parses it, and submitted through
    dask-jobqueue's own submission to a stub sbatch (which runs it as SLURM would), the worker's Python
    (a stub) gets exactly the arguments meant, the prologue's srun (a stub) its own, and nothing else runs."""
    import asyncio

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, then in (
        ("sbatch", 'bash "$1" > "{folder}/job.out" 2>&1 || exit 1\necho "Submitted batch job 42"'),
        ("srun", ""),
        ("python", ""),
    ):
        (bin_dir / name).write_text(STUB.format(folder=tmp_path, then=then.format(folder=tmp_path)))
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    config = slurm_config(
        [
            "account=proj--mem",
            "partition=p-J",
            "job-name=w-A",
            "qos=normal",
            "time=2-00:00:00",
            "constraint=a100&(ib|eth)*2",
            "exclude=node[01-04],gpu7",
            "extra=--comment=a|b&c>d",
            f"log-dir={tmp_path}/logs",
            f"python={bin_dir}/python",
            "interface=lo",
            "prologue=srun --label 'it''s' \"$HOME\" a;b",
        ]
    )
    script = job_script(config, "GPU", "tcp://127.0.0.1:8786")
    lines = script.splitlines()
    # whole directives only: no --mem given drops #SBATCH --mem, not the account, partition or name holding it
    for directive in (
        "-A proj--mem",
        "-p p-J",
        "-J w-A",
        "-t 2-00:00:00",
        "--constraint=a100&(ib|eth)*2",
        "--exclude=node[01-04],gpu7",
        "--comment=a|b&c>d",
        f"-e {tmp_path}/logs/w-A-%J.err",
    ):
        assert f"#SBATCH {directive}" in lines, (directive, script)
    assert not any(line.startswith("#SBATCH --mem") for line in lines)
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    job = job_class()(
        scheduler="tcp://127.0.0.1:8786",
        name="w-0",
        **{
            k: v
            for k, v in cluster_parameters(config, "GPU").items()
            if k not in ("job_cls", "scheduler_options", "silence_logs")
        },
    )
    with job.job_file() as path:
        out = asyncio.run(job._submit_job(path))
    assert job._job_id_from_submit_output(out) == "42"
    assert (tmp_path / "sbatch.argv").read_text().splitlines()[0].endswith(".sh")
    assert (tmp_path / "srun.argv").read_text().splitlines() == ["--label", "its", os.environ["HOME"], "a"]
    argv = (tmp_path / "python.argv").read_text().splitlines()
    assert argv == [
        "-m",
        "mlprune.executor.slurm_worker",
        "tcp://127.0.0.1:8786",
        "--name",
        "w-0",
        "--nthreads",
        "1",
        "--memory-limit",
        "1.00GiB",
        "--death-timeout",
        "60",
        "--interface",
        "lo",
    ], argv
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bin",
        "job.out",
        "logs",
        "python.argv",
        "sbatch.argv",
        "srun.argv",
    ], (tmp_path / "job.out").read_text()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--slurm-opt", "interface=ib9"], "interface must be a network interface of this host"),
        (["--slurm-opt", "time=99999999999999999999"], "time must be a time limit"),
        (["--slurm-opt", "log-dir=a b"], "log-dir must be a path"),
        (["--slurm-config", "/dev/zero"], "--slurm-config '/dev/zero' is a character device"),
    ],
)
def test_bad_slurm_start_up_is_one_line_exit_2_in_process(tracking, args, fragment):
    from click.testing import CliRunner

    from mlprune.cli import main

    result = CliRunner().invoke(main, [*SWEEP, "--scheduler", "slurm", *args])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0] and "Traceback" not in result.output, result.output
    assert not all_runs(tracking)


def test_jobs_follow_the_graph_width():
    # two seeds: two roots, each with a chain of three; plus one analysis of both
    deps = {"r0": [], "r1": [], "t0": ["r0"], "t1": ["r1"], "p0": ["t0"], "p1": ["t1"], "a": ["p0", "p1"]}
    assert graph_width(deps) == 2
    assert graph_width({f"r{i}": [] for i in range(40)}) == 40
    assert jobs_for(40, None) == 16 and jobs_for(2, None) == 2 and jobs_for(40, 3) == 3 and jobs_for(0, None) == 1


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--scheduler", "slurm", "--slurm-opt", "partitoin=gpu"], "unknown SLURM option 'partitoin'"),
        (["--scheduler", "slurm", "--slurm-opt", "time=forever"], "time must be a time limit"),
        (["--slurm-opt", "partition=gpu"], "apply to --scheduler slurm only"),
        (["--scheduler", "processes", "--slurm-config", "slurm.yaml"], "apply to --scheduler slurm only"),
        (["--scheduler", "slurm", "--slurm-config", "missing.yaml"], "missing.yaml"),
    ],
)
def test_bad_slurm_options_exit_2_with_one_line_and_create_no_run(tracking, tmp_path, args, fragment):
    (tmp_path / "slurm.yaml").write_text("partition: gpu\n")
    result = run_cli([*SWEEP, *args], env=cli_env(tracking), cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert fragment in one_line_error(result)
    assert not all_runs(tracking)


def test_no_sbatch_on_path_is_one_line_exit_2_and_creates_no_run(tracking, tmp_path):
    bare = tmp_path / "bin"  # a PATH with this Python but without SLURM's commands
    bare.mkdir()
    env = cli_env(tracking, PATH=str(bare))
    for command in (SWEEP, ["run", RECIPE, "-P", "rounds=1", "-P", "epochs=1"]):
        result = run_cli([*command, "--scheduler", "slurm"], env=env, cwd=tmp_path, timeout=120)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "needs SLURM's commands on PATH (sbatch" in one_line_error(result)
    assert not all_runs(tracking)


# ---- on a real SLURM -----------------------------------------------------------------------------
def test_a_local_store_is_refused_when_jobs_run_on_other_nodes(slurm, tracking, tmp_path):
    if slurm.folder is None:
        pytest.skip("a SLURM that was running already: its partitions are not known to the test")
    result = run_cli(
        [*SWEEP, "--scheduler", "slurm", "--slurm-opt", f"partition={slurm_cluster.OTHER_PARTITION}"],
        env=cli_env(tracking),
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    error = one_line_error(result)
    assert f"SLURM jobs on {slurm_cluster.OTHER_NODE} cannot share the local tracking store" in error
    assert "MLFLOW_TRACKING_URI=http" in error
    assert not all_runs(tracking)


@pytest.fixture(scope="module")
def sync_hashes(tmp_path_factory, _empty_store_db):
    """fn(sweep arguments) -> {key: weights hash} of the sweep computed in one process (--scheduler sync)
    in a store of its own (computed once per module)."""
    found = {}

    def hashes(sweep: list[str]) -> dict[str, str]:
        if tuple(sweep) not in found:
            folder = tmp_path_factory.mktemp("sync-reference")
            shutil.copy(_empty_store_db, folder / "mlflow.db")
            uri = f"sqlite:///{folder}/mlflow.db"
            result = run_cli([*sweep, "--scheduler", "sync"], env=cli_env(uri, MLPRUNE_THREADS="1"), cwd=folder)
            assert result.returncode == 0, result.stderr[-3000:]
            found[tuple(sweep)] = hashes_by_key(uri)
        return found[tuple(sweep)]

    return hashes


@pytest.fixture(scope="module")
def sync_reference(sync_hashes):
    return sync_hashes(SWEEP)


def hashes_by_key(uri: str) -> dict[str, str]:
    found = finished_by_key(uri)
    assert all(len(runs) == 1 for runs in found.values()), found  # never two FINISHED runs of a key
    experiment = Experiment(
        tracking_uri=uri,
        experiment_id=MlflowClient(tracking_uri=uri).get_run(next(iter(found.values()))[0]).info.experiment_id,
    )
    return {key: weights_hash(experiment.state(runs[0])) for key, runs in found.items()}


@pytest.mark.slow
def test_sweep_on_slurm_jobs_equals_sync_and_gpu_jobs_hold_one_gpu_each(slurm, tracking, tmp_path, sync_reference):
    """Two jobs compute the sweep: bitwise the states of sync, each tagged with its job, each job's log kept;
    a second sweep submits no job. On the test SLURM's fake GPUs the same sweep asks for --slurm-opt gpus=1:
    each job gets its own GPU (CUDA_VISIBLE_DEVICES), its worker offers one GPU resource and every task asks
    for it (device auto; here it computes on the CPU, which has no CUDA: still the same states as sync)."""
    import torch

    # a SLURM that was running already: its GPUs are not known to the test; a CUDA machine: the fake GPUs
    # would stand for its real ones
    fake_gpus = slurm.fake_gpus >= 2 and not torch.cuda.is_available()
    gpus = ["--slurm-opt", "gpus=1", "--slurm-opt", "prologue=echo gpu=$CUDA_VISIBLE_DEVICES >&2"] if fake_gpus else []
    sweep = [*SWEEP, "--scheduler", "slurm", "--workers", "2", *gpus]
    result = run_cli(sweep, env=cli_env(tracking, MLPRUNE_THREADS="1"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "8 states: 8 computed, 0 reused" in result.stdout
    runs = key_runs(tracking)
    assert runs and all(r.info.status == "FINISHED" for r in runs)
    jobs = {r.data.tags.get(TAG_SLURM_JOB_ID) for r in runs}
    assert None not in jobs and all(job.isdigit() for job in jobs)
    logs = sorted(p.name for p in (tmp_path / "slurm-logs").glob("mlprune-*.err"))
    assert {f"mlprune-{job}.err" for job in jobs} <= set(logs) and len(logs) == 2  # --workers 2: two jobs
    assert hashes_by_key(tracking) == sync_reference  # the same keys, bitwise the same weights
    if fake_gpus:
        texts = [p.read_text() for p in (tmp_path / "slurm-logs").glob("mlprune-*.err")]
        assert sorted(line for text in texts for line in text.splitlines() if line.startswith("gpu=")) == [
            "gpu=0",
            "gpu=1",
        ]
    assert not slurm.jobs() or wait_for(lambda: not slurm.jobs(), 60, "the worker jobs to end")
    # a second sweep reuses everything and submits no job
    again = run_cli(sweep, env=cli_env(tracking), cwd=tmp_path)
    assert again.returncode == 0 and "8 states: 0 computed, 8 reused" in again.stdout, again.stderr[-2000:]
    assert len(list((tmp_path / "slurm-logs").glob("mlprune-*.err"))) == 2
    if fake_gpus:  # --device cuda without a GPU per job is refused before anything runs
        refused = run_cli([*SWEEP, "--scheduler", "slurm", "--device", "cuda"], env=cli_env(tracking), cwd=tmp_path)
        assert refused.returncode == 2 and "--slurm-opt gpus=1" in one_line_error(refused)


def job_of(pid: int) -> str:
    """The SLURM job id of a process (from its environment)."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(v.split(b"=", 1)[1].decode() for v in environ if v.startswith(b"SLURM_JOB_ID="))


@pytest.mark.slow
@pytest.mark.parametrize(
    "scancel", [["scancel"], ["scancel", "--batch", "--signal=USR1"]], ids=["cancelled", "time-limit-warning"]
)
def test_scancel_of_a_job_mid_training_the_sweep_completes_without_duplicates(
    slurm, tracking, tmp_path, sync_hashes, scancel
):
    """`scancel JOB` (SIGTERM, then SIGKILL after KillWait: what preemption does too) or the warning
    before a time limit (`--signal=B:USR1@N`: SLURM signals the batch shell, which is the worker)."""
    # the first training to end its first epoch (of two) waits there (PAUSE_UNTIL_STOPPED): we scancel its job
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(PAUSE_UNTIL_STOPPED)
    paused = tmp_path / "paused"
    env = cli_env(
        tracking,
        MLPRUNE_THREADS="1",
        MLPRUNE_TEST_PAUSED=str(paused),
        MLPRUNE_TEST_PAUSE_EPOCH="1",
        PYTHONPATH=os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")]),
    )
    sweep = subprocess.Popen(
        [sys.executable, "-m", "mlprune", *SWEEP_2_EPOCHS, "--scheduler", "slurm", "--workers", "2"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def training_paused():
            assert sweep.poll() is None, sweep.communicate()[1][-3000:]
            return paused_at(paused)

        claimed, pid = wait_for(training_paused, 300, "a training to pause in a SLURM job")
        assert MlflowClient(tracking_uri=tracking).get_run(claimed).info.status == "RUNNING"
        victim = job_of(int(pid))
        assert victim in slurm.jobs()
        subprocess.run([*scancel, victim], check=True, env=slurm.client_env())
        out, err = sweep.communicate(timeout=600)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, err[-3000:]
    assert "8 states: 8 computed, 0 reused" in out
    runs = key_runs(tracking)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len(finished) == 8 == len({r.data.tags["mlprune.key"] for r in finished})  # no duplicate FINISHED key
    interrupted = MlflowClient(tracking_uri=tracking).get_run(claimed)
    assert interrupted.info.status != "FINISHED" and interrupted.data.tags[TAG_SLURM_JOB_ID] == victim
    assert victim not in slurm.jobs() or wait_for(lambda: victim not in slurm.jobs(), 60, "the job to end")
    redone = next(r for r in finished if r.data.tags["mlprune.key"] == interrupted.data.tags["mlprune.key"])
    assert redone.data.tags[TAG_SLURM_JOB_ID] != victim  # computed again in another job
    # the signalled worker handed its task over, then its training stored a checkpoint and stopped: the
    # other job resumed from it (the epoch before the pause is not trained again)
    assert redone.data.metrics.get("resumed_from_iteration", 0) > 0, redone.data.metrics
    assert all(r.data.tags.get(TAG_SLURM_JOB_ID) for r in finished)
    assert hashes_by_key(tracking) == sync_hashes(SWEEP_2_EPOCHS)  # bitwise what an uninterrupted sweep computes


@pytest.mark.slow
def test_a_lost_job_is_replaced(slurm, tmp_path, monkeypatch):
    """The cluster keeps its jobs: scancel the only worker job, a new one is submitted and connects."""
    monkeypatch.chdir(tmp_path)
    client, cluster = start_client(SlurmConfig(log_dir=str(tmp_path / "logs")), 1, "GPU")
    try:
        first = next(iter(cluster.workers.values())).job_id
        subprocess.run(["scancel", first], check=True, env=slurm.client_env())

        def replaced():
            jobs = [job.job_id for job in list(cluster.workers.values())]
            workers = client.scheduler_info()["workers"]
            return jobs and first not in jobs and workers and jobs[0]

        second = wait_for(replaced, 180, "a new worker job to connect")
        assert second != first and second in slurm.jobs()
    finally:
        client.close()
        cluster.close()
    assert wait_for(lambda: not slurm.jobs(), 60, "the jobs to end when the cluster closes")


@pytest.mark.slow
def test_jobs_that_cannot_start_a_worker_are_a_one_line_error(slurm, tracking, tmp_path):
    result = run_cli(
        [
            *SWEEP,
            "--scheduler",
            "slurm",
            "--workers",
            "1",
            "--slurm-opt",
            "prologue=echo 'no venv on this node' >&2; exit 3",
        ],
        env=cli_env(tracking),
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    error = one_line_error(result)
    assert "ended before their dask worker connected" in error and "no venv on this node" in error
    assert not finished_by_key(tracking)
