"""Fault injection: bad input, tampering, store faults, kills and concurrency, each against a real store.

Every case is a reproduction from a red-team pass: it asserts the one-line error (and
the exit status) or the self-healing, and that nothing FINISHED is wrong afterwards.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from mlprune import Experiment
from mlprune.cli import main

TINY = """\
params: {seed: 0, lr: 0.05, rounds: 1, epochs: 1, amount: 0.3}
root: {model: lenet_300_100, dataset: digits, seed: $seed, train_size: 128, test_size: 64}
train: {epochs: $epochs, lr: $lr, batch_size: 32}
rounds: $rounds
prune: {method: l1_unstructured, amount: $amount}
reinit: {strategy: rewind, to: root}
"""


def write(folder: Path, text: str = TINY, name: str = "tiny.yaml") -> str:
    path = Path(folder) / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def env_for(uri: str | None, **extra) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    return env


def cli(args, *, env, cwd, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "mlprune", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def invoke(*args):
    result = CliRunner().invoke(main, list(args))
    return result


def invoke_error(*args, status: int = 2) -> str:
    result = invoke(*args)
    assert result.exit_code == status, (result.exit_code, result.output)
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def state_runs(uri: str, status: str | None = "FINISHED") -> list:
    client = MlflowClient(tracking_uri=uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, filter_string="tags.`mlprune.key` != ''", max_results=10000)
    return [r for r in runs if status is None or r.info.status == status]


def finished_keys(uri: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for run in state_runs(uri):
        found.setdefault(run.data.tags["mlprune.key"], []).append(run.info.run_id)
    return found


def weights_file(run) -> Path:
    return Path(run.info.artifact_uri) / "weights.safetensors"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- concurrency on a fresh store -------------------------------------------------------------------
@pytest.mark.slow
def test_three_runs_on_a_fresh_store_directory_all_succeed_once_each(tmp_path):
    recipe = write(tmp_path)
    env = env_for(None)  # MLflow's default: sqlite:///mlflow.db in the working directory, created by the runs
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "mlprune", "run", recipe],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (_out, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    finished = finished_keys(uri)
    assert len(finished) == 4 and all(len(ids) == 1 for ids in finished.values()), finished
    lasts = {out.split("last state ")[1].split()[0] for out, _ in outputs}
    assert len(lasts) == 1  # all three ended at the one state of that key


# ---- numerical sanity ---------------------------------------------------------------------------------
def test_a_diverged_training_is_a_one_line_error_and_nothing_is_cached(tracking, tmp_path):
    recipe = write(tmp_path)
    line = invoke_error("run", recipe, "-P", "lr=1000000.0")
    assert "diverged" in line and "epoch 1" in line
    for run in state_runs(tracking):
        state = Experiment(experiment_id=run.info.experiment_id).state(run.info.run_id)
        assert all(bool(torch.isfinite(t).all()) for t in state.weights.values())
    failed = [r for r in state_runs(tracking, status=None) if r.info.status == "FAILED"]
    assert len(failed) == 1 and "diverged" in failed[0].data.tags["mlprune.error"]


def test_divergence_can_be_recorded_as_a_result_never_silently(tracking, tmp_path):
    recipe = write(tmp_path, TINY.replace("batch_size: 32}", "batch_size: 32, on_divergence: record}"))
    result = invoke("run", recipe, "-P", "lr=1000000.0", "-P", "rounds=0")
    assert result.exit_code == 0, result.output
    [trained] = [r for r in state_runs(tracking) if r.data.tags["mlprune.kind"] == "train"]
    assert trained.data.metrics["diverged"] == 1 and trained.data.metrics["diverged_epoch"] == 1
    assert "epoch 1" in trained.data.tags["mlprune.diverged"]
    # and nothing is pruned from it: masks of NaN weights mean nothing
    line = invoke_error("run", recipe, "-P", "lr=1000000.0", "-P", "rounds=1")
    assert "not finite" in line


# ---- integrity ---------------------------------------------------------------------------------------
def test_a_flipped_byte_is_caught_and_the_rerun_heals_the_cache(tracking, tmp_path):
    recipe = write(tmp_path)
    assert invoke("run", recipe).exit_code == 0
    [trained] = [r for r in state_runs(tracking) if r.data.tags["mlprune.kind"] == "train"]
    original = {k: v.clone() for k, v in load_file(str(weights_file(trained))).items()}  # not the mmap
    content = bytearray(weights_file(trained).read_bytes())
    for i in range(len(content) - 16, len(content)):  # 16 bytes of the last tensor's data
        content[i] ^= 0xFF
    weights_file(trained).write_bytes(bytes(content))

    line = invoke_error("export", trained.info.run_id[:8], str(tmp_path / "out"))
    assert trained.info.run_id in line and "weights.safetensors" in line and "SHA-256" in line
    assert not (tmp_path / "out" / "weights.safetensors").exists()
    verify = invoke("verify")
    assert verify.exit_code == 1 and f"broken: {trained.info.run_id[:8]}" in verify.output

    rerun = invoke("run", recipe)
    assert rerun.exit_code == 0, rerun.output
    # that state into a new run, and the prune state that shares its weights file (weights_from); the rest
    # (root, the retrained round) is reused
    assert rerun.output.strip().splitlines()[-1] == "4 states: 2 computed, 2 reused"
    bad = MlflowClient(tracking_uri=tracking).get_run(trained.info.run_id)
    assert bad.info.status == "FAILED" and "SHA-256" in bad.data.tags["mlprune.invalid"]
    [healed] = [r for r in state_runs(tracking) if r.data.tags["mlprune.kind"] == "train"]
    assert healed.info.run_id != trained.info.run_id
    assert healed.data.tags["mlprune.key"] == trained.data.tags["mlprune.key"]
    again = load_file(str(weights_file(healed)))
    assert all(torch.equal(again[k], original[k]) for k in original)
    assert invoke("verify").exit_code == 0


def test_tampered_masks_a_swapped_key_and_deleted_artifacts_are_not_used(tracking, tmp_path):
    recipe = write(tmp_path)
    assert invoke("run", recipe).exit_code == 0
    runs = {r.data.tags["mlprune.kind"]: r for r in state_runs(tracking)}
    # zero part of a mask file
    masks = Path(runs["prune"].info.artifact_uri) / "masks.safetensors"
    content = bytearray(masks.read_bytes())
    content[-32:] = bytes(32)
    masks.write_bytes(bytes(content))
    # the root's key tag edited to the trained state's key: the untrained root must not serve as it
    client = MlflowClient(tracking_uri=tracking)
    client.set_tag(runs["init"].info.run_id, "mlprune.key", runs["train"].data.tags["mlprune.key"])
    # a finished state whose artifacts were deleted
    for path in Path(runs["reinit+train"].info.artifact_uri).iterdir():
        path.unlink()
    checked = invoke("verify", "--repair")
    assert checked.exit_code == 0, checked.output
    assert checked.output.count("repaired: ") == 3
    assert "4 states checked" in checked.output.splitlines()[-1] and "3 broken" in checked.output
    rerun = invoke("run", recipe)
    assert rerun.exit_code == 0, rerun.output
    finished = finished_keys(tracking)
    assert len(finished) == 4 and all(len(ids) == 1 for ids in finished.values())
    assert invoke("verify").exit_code == 0


def test_a_truncated_weights_file_is_one_line(tracking, tmp_path):
    recipe = write(tmp_path)
    assert invoke("run", recipe).exit_code == 0
    [trained] = [r for r in state_runs(tracking) if r.data.tags["mlprune.kind"] == "train"]
    path = weights_file(trained)
    path.write_bytes(path.read_bytes()[:100])
    line = invoke_error("export", trained.info.run_id, str(tmp_path / "out"))
    assert trained.info.run_id in line and "weights.safetensors" in line


# ---- recipe files --------------------------------------------------------------------------------------
def test_alias_bombs_deep_nesting_binary_and_huge_files_fail_fast_in_one_line(tracking, tmp_path):
    bomb = "params: {seed: 0, a0: &a0 [x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, 9):
        bomb += (
            f"  , a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
            f"*a{i - 1}, *a{i - 1}, *a{i - 1}]\n"
        )
    bomb += "}\n" + TINY.split("\n", 1)[1]
    cases = {
        "bomb.yaml": (bomb.encode(), "aliases"),  # 72 aliases of fan-out 9: 9**9 nodes expanded
        "deep.yaml": (("root: " + "[" * 100_000 + "]" * 100_000 + "\n").encode(), "nesting"),
        "binary.yaml": (bytes(range(256)) * 4, "UTF-8"),
        "huge.yaml": (b"# " + b"x" * (2 << 20) + b"\n", "bytes"),
    }
    for name, (content, fragment) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        started = time.monotonic()
        line = invoke_error("validate", str(path))
        assert time.monotonic() - started < 10, name
        assert fragment in line and name in line, (name, line)
    assert not state_runs(tracking, status=None)


def test_numbers_parse_as_users_write_them_and_seeds_must_fit(tracking, tmp_path):
    recipe = write(tmp_path)
    result = invoke("validate", recipe, "-P", "lr=1e-3")
    assert result.exit_code == 0, result.output
    from mlprune.recipes import compile_recipe

    assert compile_recipe(recipe, {"lr": 1e-3}).node("train").steps[0]["train"]["lr"] == 0.001
    from mlprune.recipes import parse_assignments

    assert parse_assignments(["lr=1e-3", "epochs=2", "name=abc"]) == {"lr": 0.001, "epochs": 2, "name": "abc"}
    for seed in (2**63, 2**64, -1):
        line = invoke_error("validate", recipe, "-P", f"seed={seed}")
        assert str(seed) in line


def test_what_needs_shapes_or_data_fails_before_any_run(tracking, tmp_path):
    recipe = write(tmp_path)
    line = invoke_error("run", recipe, "-P", "amount=100000")
    assert "100000" in line and "larger than" in line
    bad_size = write(tmp_path, TINY.replace("train_size: 128", "train_size: 100000"), name="size.yaml")
    line = invoke_error("run", bad_size)
    assert "train_size" in line and "100000" in line
    assert not state_runs(tracking, status=None)  # not even a root or a failed attempt


# ---- store faults --------------------------------------------------------------------------------------
def test_an_unreachable_tracking_server_is_one_line_in_seconds(tmp_path):
    for args in (["tree"], ["show", "0" * 32]):
        started = time.monotonic()
        result = cli(args, env=env_for("http://127.0.0.1:9"), cwd=tmp_path, timeout=120)
        assert time.monotonic() - started < 30, args
        assert result.returncode == 2 and "cannot reach the tracking server at http://127.0.0.1:9" in one_line(
            result.stderr
        )


def test_a_server_that_is_not_mlflow_is_not_taken_for_one(tmp_path):
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        result = cli(["tree"], env=env_for(uri), cwd=tmp_path, timeout=120)
    finally:
        server.shutdown()
    assert result.returncode == 2 and "does not answer as an MLflow tracking server" in one_line(result.stderr)


def test_broken_store_files_are_one_line_naming_the_path(tmp_path):
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    other = tmp_path / "other.db"
    other.write_text("not a database\n" * 10)
    for path, fragment in ((empty, "empty file"), (other, "not a sqlite database")):
        result = cli(["tree"], env=env_for(f"sqlite:///{path}"), cwd=tmp_path, timeout=120)
        line = one_line(result.stderr)
        assert result.returncode == 2 and str(path) in line and fragment in line
        assert path.stat().st_size in (0, other.stat().st_size)  # left as it was: nothing re-created


@pytest.mark.slow
def test_a_locked_store_is_one_line(tracking, tmp_path):
    path = tracking[len("sqlite:///") :]
    lock = sqlite3.connect(path, timeout=1)
    lock.execute("PRAGMA journal_mode=DELETE")
    lock.execute("BEGIN EXCLUSIVE")
    try:
        # MLPRUNE_SQLITE_TIMEOUT: how long a read waits for the lock (default 30 s; 2 s here)
        result = cli(["tree"], env={**env_for(tracking), "MLPRUNE_SQLITE_TIMEOUT": "2"}, cwd=tmp_path, timeout=300)
        bad = cli(["tree"], env={**env_for(tracking), "MLPRUNE_SQLITE_TIMEOUT": "soon"}, cwd=tmp_path, timeout=300)
    finally:
        lock.rollback()
        lock.close()
    line = one_line(result.stderr)
    assert result.returncode == 2 and "locked" in line and path in line and "waited 2 s" in line
    line = one_line(bad.stderr)
    assert bad.returncode == 2 and "MLPRUNE_SQLITE_TIMEOUT" in line and "'soon'" in line


def test_artifacts_that_cannot_be_written_are_one_line(tracking, tmp_path):
    (tmp_path / "mlruns").write_text("a file where the artifact folder should be\n")
    line = invoke_error("run", write(tmp_path))
    assert "mlruns" in line
    assert not state_runs(tracking)  # nothing FINISHED


def test_read_only_commands_create_nothing_and_names_are_checked(tracking, tmp_path):
    line = invoke_error("tree", "-e", "typo")
    assert "'typo'" in line
    client = MlflowClient(tracking_uri=tracking)
    assert client.get_experiment_by_name("typo") is None
    line = invoke_error("run", write(tmp_path), "-e", "x" * 5000)
    assert "experiment name" in line and len(line) < 300
    assert invoke("run", write(tmp_path), "-P", "rounds=0").exit_code == 0
    [root] = [r for r in state_runs(tracking) if r.data.tags["mlprune.kind"] == "init"]
    # an ambiguous prefix: every id starts with "" - use one character of a real id
    line = invoke_error("show", root.info.run_id[:3] + "z")
    assert "prefix" in line or "not a run id" in line


# ---- interrupts ---------------------------------------------------------------------------------------
PAUSE = """
import os, time
from mlprune.store.claims import Claims
_beat = Claims.heartbeat
def heartbeat(self, run_id, force=False):
    if not force and not os.path.exists(os.environ["PAUSED"]):
        open(os.environ["PAUSED"], "w").write(run_id)
        time.sleep(600)
    return _beat(self, run_id, force)
Claims.heartbeat = heartbeat
from mlprune.cli import main
main()
"""


@pytest.mark.slow
def test_ctrl_c_during_training_exits_130_in_one_line_and_fails_the_state(tracking, tmp_path):
    paused = tmp_path / "paused"
    process = subprocess.Popen(
        [sys.executable, "-c", PAUSE, "run", write(tmp_path), "-P", "epochs=3"],
        env=env_for(tracking, PAUSED=str(paused)),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not (paused.exists() and paused.read_text()):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-3000:]
    assert "Traceback" not in err and len([line for line in err.splitlines() if line.strip()]) == 1, err
    run = MlflowClient(tracking_uri=tracking).get_run(paused.read_text())
    assert run.info.status == "FAILED" and "KeyboardInterrupt" in run.data.tags["mlprune.error"]
