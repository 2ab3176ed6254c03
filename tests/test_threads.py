"""Torch threads of a state (all cores in one process, split between workers, MLPRUNE_THREADS pins;
recorded as run.threads) and new sqlite stores copied from a migrated template."""

from __future__ import annotations

import sqlite3

import pytest
import torch
from mlflow.tracking import MlflowClient

from mlprune import Experiment, Recipe
from mlprune.errors import SpecError
from mlprune.executor import cluster_threads, compute_threads
from mlprune.names import PARAM_THREADS


@pytest.fixture
def torch_threads():
    """torch's thread count set to 4 for the test (what it would choose on a 4-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    yield 4
    torch.set_num_threads(before)


def test_default_is_torch_count_split_between_workers(monkeypatch, torch_threads):
    monkeypatch.delenv("MLPRUNE_THREADS")
    assert compute_threads() == torch_threads
    assert compute_threads(2) == torch_threads // 2
    assert compute_threads(64) == 1  # never below one


def test_mlprune_threads_pins_and_bad_values_are_one_line(monkeypatch, torch_threads):
    monkeypatch.setenv("MLPRUNE_THREADS", "3")
    assert compute_threads() == 3 and compute_threads(2) == 3
    for bad in ("0", "two", "-1", "4097", "99999999999999999999", "²"):
        monkeypatch.setenv("MLPRUNE_THREADS", bad)
        with pytest.raises(SpecError, match=f"MLPRUNE_THREADS must be an integer >= 1 and <= 4096, got '{bad}'"):
            compute_threads()


class _FakeClient:
    """The two questions cluster_threads asks a dask client."""

    def __init__(self, workers: dict[str, tuple[str, int, int]]):  # address -> (host, nthreads, cores)
        self.workers = workers

    def run(self, _function, on_error="raise"):
        return {address: cores for address, (_, _, cores) in self.workers.items()}

    def scheduler_info(self):
        return {"workers": {a: {"host": h, "nthreads": n} for a, (h, n, _) in self.workers.items()}}


def test_a_cluster_splits_each_hosts_cores_between_its_workers():
    two_on_one_host = _FakeClient({"tcp://a:1": ("a", 1, 8), "tcp://a:2": ("a", 1, 8)})
    assert cluster_threads(two_on_one_host) == 4
    # the smallest share wins: no host is oversubscribed
    mixed = _FakeClient({"tcp://a:1": ("a", 1, 8), "tcp://b:1": ("b", 2, 4)})
    assert cluster_threads(mixed) == 2
    assert cluster_threads(_FakeClient({"tcp://a:1": ("a", 4, 2)})) == 1


def test_a_single_run_uses_torchs_count_and_records_it(tracking, monkeypatch):
    # a root (an initialization) is computed like any state; no training: several threads on a
    # busy 2-core test machine make a training many times slower (see docs/performance.md)
    monkeypatch.delenv("MLPRUNE_THREADS")
    expected = torch.get_num_threads()
    root = Experiment("threads").init(model="lenet", dataset="digits", seed=0)
    client = MlflowClient(tracking_uri=tracking)
    assert client.get_run(root.run_id).data.params[PARAM_THREADS] == str(expected)
    assert torch.get_num_threads() == expected  # restored after the state


def test_a_pinned_run_records_the_pin(tracking, monkeypatch):
    monkeypatch.setenv("MLPRUNE_THREADS", "1")
    trained = Experiment("threads").init(model="lenet", dataset="digits", seed=0).apply(Recipe.train(epochs=1))
    client = MlflowClient(tracking_uri=tracking)
    assert client.get_run(trained.run_id).data.params[PARAM_THREADS] == "1"
    # a cache hit at another thread count is the state computed before (the count is not keyed)
    monkeypatch.setenv("MLPRUNE_THREADS", "2")
    assert (
        Experiment("threads").init(model="lenet", dataset="digits", seed=0).apply(Recipe.train(epochs=1)).run_id
        == trained.run_id
    )


def test_a_new_store_is_a_copy_of_the_migrated_template_and_works(tmp_path, monkeypatch):
    from mlprune.store.experiments import cache_dir, experiment_id, open_client

    uris = []
    for name in ("one", "two"):
        folder = tmp_path / name
        folder.mkdir()
        monkeypatch.chdir(folder)  # MLflow's default artifact root: ./mlruns of the working directory
        uri = f"sqlite:///{folder}/mlflow.db"
        client = open_client(uri)
        # MLflow made the Default experiment of this store itself: its artifacts are this store's
        assert client.get_experiment("0").artifact_location.rstrip("/").endswith(f"{name}/mlruns/0")
        exp = experiment_id(client, uri, "x")
        run = client.create_run(exp, tags={"t": "1"})
        client.log_metric(run.info.run_id, "m", 0.5)
        client.log_param(run.info.run_id, "p", 3)
        client.set_terminated(run.info.run_id)
        [found] = client.search_runs([exp], "tags.t = '1'")
        assert found.data.metrics == {"m": 0.5} and found.data.params == {"p": "3"}
        uris.append(uri)
    [template] = (cache_dir() / "sqlite-stores").glob("empty-mlflow-*.db")
    with sqlite3.connect(template) as db:
        assert db.execute("SELECT COUNT(*) FROM experiments").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM alembic_version").fetchone() == (1,)


@pytest.mark.slow  # MLflow's migrations: seconds
def test_without_a_usable_cache_mlflow_migrates_the_store_itself(tmp_path, monkeypatch):
    from mlprune.store.experiments import open_client

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("MLPRUNE_CACHE_DIR", str(blocker))  # a file: no cache can be made under it
    monkeypatch.chdir(tmp_path)
    client = open_client(f"sqlite:///{tmp_path}/mlflow.db")
    assert client.get_experiment("0").name == "Default"


def test_a_fully_cached_rerun_imports_neither_torch_nor_matplotlib_nor_mlflow(tracking, tmp_path):
    """Its look-ups read the sqlite store (store.sqlview) and its workflow run already records them:
    nothing to compute, nothing to write."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from click.testing import CliRunner

    from mlprune.cli import main

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "name: tiny\nroot: {model: lenet, dataset: digits, seed: 0}\n"
        "train: {epochs: 1, lr: 0.01, batch_size: 64, optimizer: sgd}\n"
    )
    first = CliRunner().invoke(main, ["run", str(recipe)])
    assert first.exit_code == 0, first.output
    code = (
        "import sys\nfrom mlprune.cli import main\n"
        f"try:\n    main(['run', {str(recipe)!r}])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print(sorted(m for m in ('torch', 'matplotlib', 'mlflow', 'sqlalchemy') if m in sys.modules))\n"
    )
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "0 computed, 2 reused" in out.stdout and out.stdout.strip().endswith("[]"), out.stdout
