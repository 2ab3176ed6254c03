"""Beyond one machine: claims, the dask executor and the sweep CLI, on real components on loopback.

Real MLflow stores (sqlite in a temp dir; a real `mlflow server` backed by a
PostgreSQL cluster this module starts where the binaries exist, else by sqlite),
real dask LocalClusters with worker processes, real `mlprune` processes killed
with SIGKILL. Recipes are tiny (lenet_300_100 on digits) so that the whole
module takes a few minutes.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mlprune import Experiment, Recipe, SpecError
from mlprune.executor import Execution, run_plan, run_plans
from mlprune.names import TAG_CLAIM_HOST, TAG_CLAIM_PID, TAG_HEARTBEAT
from mlprune.recipes import compile_recipe, parse_grid, parse_seeds
from mlprune.store import Store
from mlprune.store.claims import process_host

# Installed in a process that computes states: the first training (of all processes) to end epoch
# $MLPRUNE_TEST_PAUSE_EPOCH creates the file $MLPRUNE_TEST_PAUSED ("<run id> <pid>") and blocks there,
# so a test kills it at a point it controls (no race with a fast machine finishing first).
PAUSE_HOOK = """
import os, time
from mlprune.store.claims import Claims
_beat = Claims.heartbeat
_epochs = {}
def heartbeat(self, run_id, force=False):
    if not force:
        _epochs[run_id] = _epochs.get(run_id, 0) + 1
        if _epochs[run_id] == int(os.environ.get("MLPRUNE_TEST_PAUSE_EPOCH", "3")):
            try:
                fd = os.open(os.environ["MLPRUNE_TEST_PAUSED"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return _beat(self, run_id, force)
            os.write(fd, f"{run_id} {os.getpid()}".encode())
            os.close(fd)
            time.sleep(3600)
    return _beat(self, run_id, force)
Claims.heartbeat = heartbeat
"""


def paused_at(path: Path):
    """(run id, pid) written by PAUSE_HOOK, or None while nothing paused."""
    text = path.read_text().strip() if path.exists() else ""
    return tuple(text.split()) if len(text.split()) == 2 else None


REPO = Path(__file__).resolve().parents[1]

TINY = """\
params: {seed: 0, amount: 0.2, epochs: 1, rounds: 1, lr: 0.05}
root: {model: lenet_300_100, dataset: digits, seed: $seed}
train: {epochs: $epochs, lr: $lr}
rounds: $rounds
prune: {method: l1_unstructured, amount: $amount}
reinit: {strategy: rewind, to: root}
"""


# ---- helpers -------------------------------------------------------------------------
def write_recipe(folder: Path, text: str = TINY, name: str = "tiny.yaml") -> str:
    path = Path(folder) / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def weights_hash(state) -> str:
    digest = hashlib.sha256()
    weights = state.weights
    for name in sorted(weights):
        digest.update(name.encode())
        digest.update(weights[name].contiguous().numpy().tobytes())
    return digest.hexdigest()


def key_runs(uri: str, experiment_id: str | None = None) -> list:
    """Every run carrying an mlprune.key (any status) in one experiment or all."""
    client = MlflowClient(tracking_uri=uri)
    ids = [experiment_id] if experiment_id else [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, filter_string="tags.`mlprune.key` != ''", max_results=10000)


def finished_by_key(uri: str, experiment_id: str | None = None) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for run in key_runs(uri, experiment_id):
        if run.info.status == "FINISHED":
            found.setdefault(run.data.tags["mlprune.key"], []).append(run.info.run_id)
    return found


def cli_env(uri: str, **extra) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1", **extra}
    for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        env.pop(name, None)
    return env


def mlprune_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "mlprune", *args]


def run_cli(args, *, env, cwd, timeout=600):
    return subprocess.run(mlprune_cmd(*args), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def one_line_error(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return lines[0]


def wait_for(condition, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def lineage_ok(runs) -> None:
    """Every state chains to a root by mlflow.parentRunId; rewinds name their weights source."""
    by_id = {r.info.run_id: r for r in runs}
    for run in runs:
        seen = run
        while "mlflow.parentRunId" in seen.data.tags:
            seen = by_id[seen.data.tags["mlflow.parentRunId"]]
        assert seen.data.tags["mlprune.kind"] == "init"
        if run.data.tags["mlprune.kind"] == "reinit+train":
            assert by_id[run.data.tags["mlprune.parent.weights"]].info.run_id == seen.info.run_id


# ---- a real mlflow server, backed by PostgreSQL where the machine has it -------------------
def _postgres_bin() -> str | None:
    found = shutil.which("initdb")
    candidates = ([os.path.dirname(os.path.realpath(found))] if found else []) + sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), reverse=True
    )
    for folder in candidates:
        if all(os.access(os.path.join(folder, tool), os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def _start_postgres():
    """(sqlalchemy uri, stop function) of a throwaway PostgreSQL cluster, or (None, reason)."""
    bindir = _postgres_bin()
    if bindir is None:
        return None, "no PostgreSQL binaries (initdb, pg_ctl) on this machine; .ci/run installs them"
    try:
        import psycopg2
    except ImportError:
        return None, "psycopg2 is not installed (pip install -r requirements.txt)"
    folder = tempfile.mkdtemp(prefix="mlprune-pg-")
    prefix = []
    if os.geteuid() == 0:  # postgres refuses to run as root: run it as the 'postgres' user
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(folder, ignore_errors=True)
            return None, "running as root and there is no 'postgres' user to run PostgreSQL as"
        os.chown(folder, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = os.path.join(folder, "data"), free_port()
    try:
        subprocess.run(
            prefix + [f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        options = f"-p {port} -k {folder} -h 127.0.0.1 -c fsync=off -c synchronous_commit=off"
        subprocess.run(
            prefix + [f"{bindir}/pg_ctl", "-D", data, "-w", "-t", "60", "-l", f"{folder}/log", "-o", options, "start"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        connection = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        connection.autocommit = True
        connection.cursor().execute("CREATE DATABASE mlflow")
        connection.close()
    except (subprocess.SubprocessError, OSError, psycopg2.Error) as error:
        shutil.rmtree(folder, ignore_errors=True)
        return None, f"could not start PostgreSQL: {error}"

    def stop():
        subprocess.run(
            prefix + [f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True, timeout=60
        )
        shutil.rmtree(folder, ignore_errors=True)

    return f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow", stop


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """(http uri, backend description) of a real `mlflow server` on a loopback port."""
    folder = tmp_path_factory.mktemp("server")
    backend, stop_postgres = _start_postgres()
    if backend is None:
        reason, stop_postgres = stop_postgres, None
        backend = f"sqlite:///{folder}/mlflow.db"
        description = f"sqlite ({reason})"
    else:
        description = "postgresql"
    port = free_port()
    log = open(folder / "server.log", "w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            backend,
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=folder,
        # without MLflow's GenAI job runner (eight processes none of these tests uses; see test_lineage_browser)
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        def healthy():
            assert server.poll() is None, (folder / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    return True
            except OSError:
                return False

        wait_for(healthy, 240, "mlflow server", interval=0.5)
        yield uri, description
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        if stop_postgres:
            stop_postgres()


# ---- keys ---------------------------------------------------------------------------------
def test_plan_keys_are_the_keys_of_the_states_reached(experiment, tmp_path):
    recipe = write_recipe(
        tmp_path,
        TINY.replace("rounds: $rounds", "rounds: 2").replace(
            "reinit: {strategy: rewind, to: root}",
            "reinit: {strategy: rewind, to: root}\ncontrols: [{name: random, reinit: {strategy: random}}]",
        ),
    )
    plan = compile_recipe(recipe, {"epochs": "1it"})
    keys = plan.keys  # planned without a store
    states = run_plan(plan, experiment)
    assert keys == {name: state.key for name, state in states.items()}
    assert len(set(keys.values())) == len(plan.nodes)
    # the same planner is what Experiment.child_key uses
    round1 = Recipe.reinit(strategy="rewind", to="root") + Recipe.train(epochs="1it", lr=0.05)
    assert experiment.child_key(states["prune1"], round1)[0] == keys["round1"]


def test_plans_merge_by_key_into_one_graph(tracking, tmp_path):
    recipe = write_recipe(tmp_path)
    plans = [compile_recipe(recipe, {"amount": amount, "seed": seed}) for seed in (0, 1) for amount in (0.1, 0.2)]
    execution = Execution(plans, Store("merge"))
    # per seed: one root and one first training shared by both amounts, then prune + retrain per amount
    assert len(execution.missing) == 2 * (2 + 2 * 2)
    assert plans[0].keys["train"] == plans[1].keys["train"] != plans[2].keys["train"]
    tasks = execution._tasks()
    order = list(execution.missing)
    for key, task in tasks.items():  # dependencies come first, and tasks are plain data (JSON)
        assert all(order.index(dep) < order.index(key) for dep in task["deps"])
        json.dumps(task)
    assert {len(t["deps"]) for t in tasks.values()} == {0, 1, 2}  # roots; trains and prunes; rewinds (+ root)


def test_sweep_values_parse_or_fail_in_one_line():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("1-2,7,2") == [1, 2, 7]
    assert parse_grid(["amount=0.1,0.2", "epochs=3", "lr=0.1,0.01"]) == [
        {"amount": 0.1, "epochs": 3, "lr": 0.1},
        {"amount": 0.1, "epochs": 3, "lr": 0.01},
        {"amount": 0.2, "epochs": 3, "lr": 0.1},
        {"amount": 0.2, "epochs": 3, "lr": 0.01},
    ]
    for bad, fragment in [
        (lambda: parse_seeds("0-x"), "0-x"),
        (lambda: parse_seeds("5-2"), "5-2"),
        (lambda: parse_grid(["amount=0.1,"]), "empty value"),
        (lambda: parse_grid(["amount=[0.1"]), "[0.1"),
        (lambda: parse_grid(["amount"]), "amount"),
        (lambda: parse_grid(["a=1", "a=2"]), "twice"),
    ]:
        with pytest.raises(SpecError) as raised:
            bad()
        assert fragment in str(raised.value) and "\n" not in str(raised.value)


# ---- claims -------------------------------------------------------------------------------
SLOW_TRAIN = Recipe.train(epochs=30, lr=0.05)


def test_a_live_claim_makes_the_other_wait_and_reuse(tracking):
    root = Experiment("claims").init(model="lenet_300_100", seed=0)
    results, errors = {}, []

    def reach(name):
        try:
            exp = Experiment("claims")  # own store, own client: another participant
            results[name] = exp.apply(exp.state(root.run_id), SLOW_TRAIN).run_id
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    first = threading.Thread(target=reach, args=("first",))
    first.start()
    key = Experiment("claims").child_key(root, SLOW_TRAIN)[0]
    store = Experiment("claims").store
    wait_for(lambda: store.claims.find_claims(key), 60, "the first claim")
    second = threading.Thread(target=reach, args=("second",))
    second.start()
    first.join(120)
    second.join(120)
    assert not errors, errors
    assert results["first"] == results["second"]
    runs = [r for r in key_runs(tracking) if r.data.tags["mlprune.key"] == key]
    assert [r.info.status for r in runs] == ["FINISHED"]  # the waiter never even created a run


def _foreign_claim(store, key, *, heartbeat: float, pid: int) -> str:
    """A RUNNING run holding a claim on `key`, as another process would have left it."""
    run = store.client.create_run(
        store.experiment_id,
        tags={
            "mlprune.key": key,
            "mlprune.kind": "train",
            TAG_HEARTBEAT: str(heartbeat),
            TAG_CLAIM_HOST: process_host(),
            TAG_CLAIM_PID: str(pid),
        },
    )
    return run.info.run_id


def test_stale_and_dead_claims_are_taken_over(tracking, monkeypatch):
    monkeypatch.setenv("MLPRUNE_CLAIM_TIMEOUT", "600")
    exp = Experiment("claims")
    root = exp.init(model="lenet_300_100", seed=0)
    client = exp.store.client
    # 1. no heartbeat for longer than the timeout (a process on another machine that died)
    recipe = Recipe.train(epochs=1, lr=0.05)
    key = exp.child_key(root, recipe)[0]
    stale = _foreign_claim(exp.store, key, heartbeat=time.time() - 3600, pid=1)
    state = root.apply(recipe)
    assert client.get_run(stale).info.status == "FAILED"
    assert "stale claim taken over" in client.get_run(stale).data.tags["mlprune.error"]
    assert finished_by_key(tracking)[key] == [state.run_id]
    # 2. a fresh heartbeat, but its process on this host is gone (SIGKILL): taken over at once
    recipe = Recipe.train(epochs=1, lr=0.02)
    key = exp.child_key(root, recipe)[0]
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = _foreign_claim(exp.store, key, heartbeat=time.time(), pid=gone.pid)
    started = time.monotonic()
    state = root.apply(recipe)
    assert time.monotonic() - started < 60
    assert "is gone" in client.get_run(dead).data.tags["mlprune.error"]
    assert client.get_run(dead).info.status == "FAILED"
    assert finished_by_key(tracking)[key] == [state.run_id]


def test_never_two_finished_runs_for_one_key(tracking, monkeypatch):
    exp = Experiment("claims")
    root = exp.init(model="lenet_300_100", seed=0)
    recipe = Recipe.train(epochs=1, lr=0.05)
    first = root.apply(recipe)
    key = first.key
    # a racer that missed both the cache lookup and the claim (as if both happened at the same instant)
    racer = Experiment("claims")
    monkeypatch.setattr(racer.store, "find_many", lambda _keys: {})
    monkeypatch.setattr(racer.store.claims, "claim", lambda _key, create, **_: (create(), True))
    # (a) the check right before set_terminated sees the FINISHED state: ours becomes KILLED
    again = racer.apply(racer.state(root.run_id), recipe)
    assert again.run_id == first.run_id
    assert finished_by_key(tracking)[key] == [first.run_id]
    # (b) both pass that check at once: the check right after it keeps the first to finish
    real_settle = type(racer.store.claims).settle
    monkeypatch.setattr(
        racer.store.claims,
        "settle",
        lambda run_id, key, before: run_id if before else real_settle(racer.store.claims, run_id, key, before),
    )
    again = racer.apply(racer.state(root.run_id), recipe)
    assert again.run_id == first.run_id
    assert finished_by_key(tracking)[key] == [first.run_id]
    killed = [r for r in key_runs(tracking) if r.data.tags["mlprune.key"] == key and r.info.status == "KILLED"]
    assert len(killed) == 2 and all("finished first by run" in r.data.tags["mlprune.error"] for r in killed)


# ---- processes ----------------------------------------------------------------------------
@pytest.mark.slow
def test_two_concurrent_runs_compute_each_state_once(tracking, tmp_path):
    recipe = write_recipe(tmp_path)
    args = ["run", recipe, "-P", "epochs=8", "-e", "shared"]
    env = cli_env(tracking)
    processes = [
        subprocess.Popen(
            mlprune_cmd(*args), env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (_out, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
    lasts = [out.split("last state ")[1].split()[0] for out, _ in outputs]
    assert lasts[0] == lasts[1]  # both ended at the same state run
    finished = finished_by_key(tracking)
    assert len(finished) == 4 and all(len(ids) == 1 for ids in finished.values()), finished
    states = [r for r in key_runs(tracking) if r.info.status == "FINISHED"]
    lineage_ok(states)
    others = [r for r in key_runs(tracking) if r.info.status != "FINISHED"]
    for run in others:  # a loser of a claim race marks its own run KILLED; nothing fails
        assert run.info.status == "KILLED" and "claim" in run.data.tags["mlprune.error"], run.data.tags


@pytest.mark.slow
def test_sigkill_mid_training_then_rerun_completes_bitwise(tracking, tmp_path):
    recipe = write_recipe(tmp_path, TINY.replace("rounds: $rounds", "rounds: 0"))
    args = ["run", recipe, "-P", "epochs=6", "-e", "killed"]
    paused = tmp_path / "paused"
    # the victim pauses (blocks) at the end of its training's 3rd epoch: we kill it exactly there
    victim = subprocess.Popen(
        [sys.executable, "-c", PAUSE_HOOK + "\nfrom mlprune.cli import main\nmain()", *args],
        env=cli_env(tracking, MLPRUNE_TEST_PAUSED=str(paused), MLPRUNE_TEST_PAUSE_EPOCH="3"),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def is_paused():
        assert victim.poll() is None, victim.stderr.read()[-3000:]
        return paused_at(paused)

    claimed, pid = wait_for(is_paused, 300, "the victim's training to reach epoch 3", interval=0.1)
    assert int(pid) == victim.pid
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(30)
    client = MlflowClient(tracking_uri=tracking)
    claim = client.get_run(claimed)
    key = claim.data.tags["mlprune.key"]
    assert claim.data.tags["mlprune.kind"] == "train"
    assert claim.info.status == "RUNNING"  # dead, but nothing FINISHED
    assert key not in finished_by_key(tracking)

    started = time.monotonic()
    rerun = run_cli(args, env=cli_env(tracking), cwd=tmp_path)  # default timeout (60 s): the dead pid decides
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert time.monotonic() - started < 300
    dead = client.get_run(claim.info.run_id)
    assert dead.info.status == "FAILED" and "stale claim taken over" in dead.data.tags["mlprune.error"]
    finished = finished_by_key(tracking)
    assert len(finished[key]) == 1 and all(len(ids) == 1 for ids in finished.values())

    # bitwise what an uninterrupted run gives, in a separate store
    reference = Experiment("reference", tracking_uri=f"sqlite:///{tmp_path}/reference.db")
    expected = run_plan(compile_recipe(recipe, {"epochs": 6}), reference)["train"]
    resumed = Experiment("killed").state(finished[key][0])
    assert resumed.key == expected.key
    assert weights_hash(resumed) == weights_hash(expected)


@pytest.mark.slow
def test_sweep_on_a_local_cluster_and_an_mlflow_server_equals_sync(mlflow_server, tmp_path):
    uri, backend = mlflow_server
    recipe = write_recipe(tmp_path)
    sweep = ["sweep", recipe, "--seeds", "0", "-P", "amount=0.1,0.2", "-P", "epochs=3"]
    env = cli_env(uri)
    parallel = run_cli(sweep + ["--scheduler", "processes", "--workers", "2", "-e", "parallel"], env=env, cwd=tmp_path)
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    assert "6 states: 6 computed, 0 reused" in parallel.stdout, parallel.stdout
    plans = [compile_recipe(recipe, {"seed": 0, "amount": amount, "epochs": 3}) for amount in (0.1, 0.2)]
    run_plans(plans, Store("sequential", tracking_uri=uri), "sync")

    client = MlflowClient(tracking_uri=uri)
    hashes = {}
    for name in ("parallel", "sequential"):
        experiment_id = client.get_experiment_by_name(name).experiment_id
        runs = key_runs(uri, experiment_id)
        # each key computed exactly once: one run per key, FINISHED (no claim was even contested)
        assert sorted(r.info.status for r in runs) == ["FINISHED"] * 6, (name, backend)
        assert len({r.data.tags["mlprune.key"] for r in runs}) == 6
        lineage_ok(runs)
        # the shared root and first training are the parents of both branches
        prunes = [r for r in runs if r.data.tags["mlprune.kind"] == "prune"]
        assert len(prunes) == 2 and len({r.data.tags["mlflow.parentRunId"] for r in prunes}) == 1
        exp = Experiment(tracking_uri=uri, experiment_id=experiment_id)
        hashes[name] = {r.data.tags["mlprune.key"]: weights_hash(exp.state(r.info.run_id)) for r in runs}
    assert hashes["parallel"] == hashes["sequential"]  # same keys, bitwise the same weights
    # and again: everything is reused, nothing new is created (and no cluster is started)
    again = run_plans(plans, Store("parallel", tracking_uri=uri), "processes")
    assert (again.computed, again.reused) == (0, 6)
    assert len(key_runs(uri, client.get_experiment_by_name("parallel").experiment_id)) == 6


@pytest.mark.slow
def test_a_dask_worker_killed_mid_state_is_replaced_and_the_state_completes(mlflow_server, tmp_path, monkeypatch):
    from distributed import Client

    from mlprune.executor import local_cluster

    uri, _ = mlflow_server
    recipe = write_recipe(tmp_path, TINY.replace("rounds: $rounds", "rounds: 0"))
    paused = tmp_path / "paused"
    monkeypatch.setenv("MLPRUNE_TEST_PAUSED", str(paused))
    monkeypatch.setenv("MLPRUNE_TEST_PAUSE_EPOCH", "3")
    cluster = local_cluster(2)  # a real LocalCluster of 2 worker processes, as --scheduler processes starts
    client = Client(cluster)
    try:
        # the first worker to reach epoch 3 of a training blocks there: we kill it exactly then
        client.run(exec, PAUSE_HOOK, {})
        sweep = subprocess.Popen(
            mlprune_cmd(
                "sweep",
                recipe,
                "--seeds",
                "0-1",
                "-P",
                "epochs=6",
                "--scheduler",
                cluster.scheduler_address,
                "-e",
                "worker-killed",
            ),
            env=cli_env(uri, MLPRUNE_CLAIM_TIMEOUT="4"),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

        def paused_worker():
            assert sweep.poll() is None, sweep.communicate()[1][-3000:]
            return paused_at(paused)

        claimed, pid = wait_for(paused_worker, 240, "a worker to pause in training", interval=0.2)
        assert int(pid) in client.run(os.getpid).values()
        assert MlflowClient(tracking_uri=uri).get_run(claimed).info.status == "RUNNING"
        os.kill(int(pid), signal.SIGKILL)
        out, err = sweep.communicate(timeout=600)
        assert sweep.returncode == 0, err[-3000:]
    finally:
        client.close()
        cluster.close()
    runs = key_runs(uri, MlflowClient(tracking_uri=uri).get_experiment_by_name("worker-killed").experiment_id)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len(finished) == 4 and len({r.data.tags["mlprune.key"] for r in finished}) == 4
    taken_over = [r for r in runs if r.info.status == "FAILED"]
    assert len(taken_over) == 1 and "stale claim taken over" in taken_over[0].data.tags["mlprune.error"]
    # the state the replacement computed is bitwise the uninterrupted one
    reference = Experiment("reference", tracking_uri=f"sqlite:///{tmp_path}/reference.db")
    exp = Experiment(tracking_uri=uri, experiment_id=finished[0].info.experiment_id)
    by_key = {r.data.tags["mlprune.key"]: r.info.run_id for r in finished}
    for seed in (0, 1):
        expected = run_plan(compile_recipe(recipe, {"epochs": 6, "seed": seed}), reference)["train"]
        assert weights_hash(exp.state(by_key[expected.key])) == weights_hash(expected)


# ---- bad input ----------------------------------------------------------------------------
def test_unreachable_scheduler_or_server_are_one_line_exit_2_within_seconds(tracking, tmp_path):
    recipe = write_recipe(tmp_path)
    cases = [
        (
            ["sweep", recipe, "--scheduler", f"tcp://127.0.0.1:{free_port()}"],
            tracking,
            "cannot reach the dask scheduler",
        ),
        (["run", recipe, "--scheduler", f"tcp://127.0.0.1:{free_port()}"], tracking, "cannot reach the dask scheduler"),
        (["sweep", recipe], f"http://127.0.0.1:{free_port()}", "cannot reach the tracking server"),
    ]
    for args, uri, fragment in cases:
        started = time.monotonic()
        result = run_cli(args, env=cli_env(uri), cwd=tmp_path, timeout=120)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert fragment in one_line_error(result), (args, result.stderr)
        assert time.monotonic() - started < 60, args
    assert not finished_by_key(tracking)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["-P", "amount=0.1,[0.2"], "[0.2"),
        (["--seeds", "0-x"], "0-x"),
        (["-P", "nonsense=1,2"], "nonsense"),
        (["-P", "amount=0.1,"], "empty value"),
        (["--scheduler", "threads"], "threads"),
        (["--scheduler", "sync", "--workers", "2"], "--workers"),  # --workers alone implies processes
    ],
)
def test_bad_sweep_values_are_one_line_exit_2_and_run_nothing(tracking, tmp_path, args, fragment):
    from click.testing import CliRunner

    from mlprune.cli import main

    result = CliRunner().invoke(main, ["sweep", write_recipe(tmp_path), *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], result.stderr
    assert not key_runs(tracking)


@pytest.mark.slow
def test_a_worker_without_the_package_is_a_one_line_error(tracking, tmp_path):
    import sysconfig

    from distributed import LocalCluster

    recipe = write_recipe(tmp_path)
    cluster = LocalCluster(n_workers=0, processes=True, dashboard_address=None)  # a tcp:// scheduler
    # a worker whose Python has distributed but not mlprune: no site (so no editable-install hook), cwd elsewhere
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    worker = subprocess.Popen(
        [
            sys.executable,
            "-S",
            "-m",
            "distributed.cli.dask_worker",
            cluster.scheduler_address,
            "--nthreads",
            "1",
            "--no-nanny",
            "--no-dashboard",
        ],
        env={**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]},
        cwd=elsewhere,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: cluster.scheduler.workers, 120, "the worker to join")
        result = run_cli(
            ["sweep", recipe, "--scheduler", cluster.scheduler_address],
            env=cli_env(tracking),
            cwd=tmp_path,
            timeout=300,
        )
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        cluster.close()
    assert result.returncode == 2, result.stderr[-3000:]
    assert "cannot import mlprune" in one_line_error(result)
    assert not finished_by_key(tracking)


def test_the_tracking_server_runs_on_postgresql_where_available(mlflow_server):
    uri, backend = mlflow_server
    if backend != "postgresql":
        pytest.skip(f"mlflow server on {backend}")
    assert MlflowClient(tracking_uri=uri).search_experiments()


def test_run_plans_passes_the_experiment_by_id(tracking, tmp_path):
    """States never land in MLflow's Default experiment, whatever the environment names."""
    recipe = write_recipe(tmp_path)
    client = MlflowClient(tracking_uri=tracking)
    chosen = client.create_experiment("chosen")
    result = run_plans([compile_recipe(recipe, {"epochs": "1it"})], Store(tracking_uri=tracking, experiment_id=chosen))
    assert result.experiment_id == chosen
    assert {r.info.experiment_id for r in key_runs(tracking)} == {chosen}


# ---- one key derivation, whatever runs it --------------------------------------------------------
LATE = """\
name: late
extends: {base}
reinit: {{strategy: rewind, to: root, epoch: 1}}
"""
STATE_SOURCE = """\
name: from_state
extends: {base}
reinit: {{strategy: rewind, to: "state:train"}}
"""


@pytest.mark.slow
@pytest.mark.parametrize("text", [LATE, STATE_SOURCE], ids=["late-rewind", "state-source"])
def test_late_rewind_and_state_sources_sweep_on_every_scheduler_then_run_reuses_all(tracking, tmp_path, text):
    """Sweeps plan with the same PlanBuilder as runs: no second key derivation to disagree."""
    base = REPO / "recipes" / "lt_structuredL1.yaml"
    recipe = write_recipe(tmp_path, text.format(base=base), name="variant.yaml")
    small = ["-P", "train_size=400", "-P", "test_size=100"]  # the keys' agreement needs no full digits
    common = ["--seeds", "0-1", "-P", "rounds=1", "-P", "epochs=2", *small]
    env = cli_env(tracking)
    sync = run_cli(["sweep", recipe, *common, "--scheduler", "sync", "-e", "v-sync"], env=env, cwd=tmp_path)
    assert sync.returncode == 0, sync.stderr[-3000:]
    parallel = run_cli(
        ["sweep", recipe, *common, "--scheduler", "processes", "--workers", "2", "-e", "v-proc"], env=env, cwd=tmp_path
    )
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    plans = [
        compile_recipe(recipe, {"seed": seed, "rounds": 1, "epochs": 2, "train_size": 400, "test_size": 100})
        for seed in (0, 1)
    ]
    planned = {node.key for plan in plans for node in plan.nodes}
    client = MlflowClient(tracking_uri=tracking)
    hashes = {}
    for name in ("v-sync", "v-proc"):
        experiment_id = client.get_experiment_by_name(name).experiment_id
        finished = finished_by_key(tracking, experiment_id)
        assert set(finished) == planned and all(len(ids) == 1 for ids in finished.values()), name
        exp = Experiment(tracking_uri=tracking, experiment_id=experiment_id)
        hashes[name] = {key: weights_hash(exp.state(ids[0])) for key, ids in finished.items()}
    assert hashes["v-sync"] == hashes["v-proc"]
    rewinds = [n for plan in plans for n in plan.nodes if n.name == "round1"]
    if text is LATE:  # the weights source is the first training stopped after epoch 1, emitted on the way
        assert all(plan.node(plan.node("round1").inputs["weights"]).at == "1ep" for plan in plans)
    else:
        assert all(plan.node("round1").inputs["weights"] == "train" for plan in plans)
    assert len(rewinds) == 2
    again = run_cli(
        ["run", recipe, "-P", "rounds=1", "-P", "epochs=2", "-P", "seed=1", *small, "-e", "v-sync"],
        env=env,
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{len(plans[1].nodes)} states: 0 computed, {len(plans[1].nodes)} reused" in again.stdout, again.stdout


def test_two_trainings_that_store_one_checkpoint_share_it_without_a_killed_run(tmp_path):
    # lt_unstructuredL1 prunes after epoch 1 of its full training, which stores that state on the way;
    # with a constant learning rate, 2- and 3-epoch trainings store the same state (one key): the second
    # finds the first's instead of racing it (it once made and killed a run of its own each time)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    params = {"train_size": 128, "test_size": 64, "rounds": 1}
    plans = [
        compile_recipe(REPO / "recipes" / "lt_unstructuredL1.yaml", {**params, "epochs": epochs}) for epochs in (2, 3)
    ]
    checkpoints = [{n.key for n in plan.nodes if n.emitted_by} for plan in plans]
    assert checkpoints[0] & checkpoints[1], "the two trainings should share a checkpoint"
    result = run_plans(plans, Store("shared-checkpoint", tracking_uri=uri), "sync")
    runs = key_runs(uri)
    assert sorted({r.info.status for r in runs}) == ["FINISHED"], [(r.info.run_name, r.info.status) for r in runs]
    assert len(runs) == len({r.data.tags["mlprune.key"] for r in runs}) == result.computed


@pytest.mark.slow
def test_a_store_this_process_uses_survives_worker_processes_writing_to_it(tmp_path):
    # this process holds sqlite connections to the store (a sync run); worker processes then write to it.
    # Opening the store must never open()/close() the database file itself: closing any descriptor of it
    # drops the locks those connections hold, a worker deletes the WAL under them, and the store ends up
    # "database disk image is malformed" (it did)
    import sqlite3

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    plan = compile_recipe(write_recipe(tmp_path), {"epochs": 1, "rounds": 1})
    first = run_plans([plan], Store("in-process", tracking_uri=uri), "sync")
    second = run_plans([plan], Store("workers", tracking_uri=uri), "processes", workers=2)
    assert first.computed == second.computed == len(plan.nodes)
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    runs = key_runs(uri)
    assert len(runs) == 2 * len(plan.nodes) and {r.info.status for r in runs} == {"FINISHED"}
