"""Shared fixtures: a real MLflow tracking store (sqlite + local artifacts) per test.

Creating a sqlite store runs MLflow's migrations (seconds); we migrate one empty
store per session and copy its file for each test, which gives every test a
fresh, real store in a temp dir in milliseconds.
"""

from __future__ import annotations

import contextlib
import os
import shutil

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# one torch thread from the start, so that module- and session-scoped fixtures compute their states
# with the count every test pins (see _one_torch_thread)
os.environ["MLPRUNE_THREADS"] = "1"
# a run's figures and a cached run's record are written before the command returns: no test depends on
# when a detached process finishes (tests/test_background.py checks the detached path itself)
os.environ["MLPRUNE_BACKGROUND"] = "0"
# compact networks' latencies timed for the minimum rounds: metrics as always, a few CPU seconds less per
# structured AlexNet/VGG state (tests/test_structured.py times latency_ms's budget itself)
os.environ["MLPRUNE_LATENCY_BUDGET"] = "0"
# states one after the other in the process that runs them (the default, auto, would start local worker
# processes for independent trainings: tests/test_local.py checks that path; the other tests keep the
# two xdist workers to the two cores)
os.environ["MLPRUNE_SCHEDULER"] = "sync"


# Modules whose tests take the longest, scheduled first so that the workers finish together (xdist
# hands modules out in collection order with --no-loadscope-reorder, pyproject.toml); the others keep
# their order after them. Ordered by the module's total in `pytest --durations=0` (2 workers).
LONGEST_FIRST = (
    "test_parallel.py",
    "test_recipes.py",
    "test_slurm.py",
    "test_batched.py",
    "test_benchmarks.py",
    "test_resume.py",
    "test_plugins.py",
    "test_readme.py",
    "test_readme_commands.py",
    "test_lineage_browser.py",
    "test_study_glance.py",
    "test_faults.py",
    "test_instability.py",
    "test_bad_input.py",
    "test_structured.py",
    "test_report.py",
    "test_batched_runs.py",
    "test_cli.py",
    "test_claims.py",
    "test_pai.py",
    "test_lineage.py",
    "test_local.py",
    "test_background.py",
    "test_training_protocols.py",
    "test_gpu_check.py",
)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each module keeps its order


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: a worker per core, at most 4 (tests compute at one torch thread; some start process
    pools of their own, which more workers would only crowd)."""
    return max(1, min(4, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _one_torch_thread(monkeypatch):
    """States computed with one torch thread (MLPRUNE_THREADS=1) in every test.

    mlprune's default splits the cores between the processes that compute (executor.compute_threads),
    and float sums depend on the thread count: tests that compare states across schedulers, against
    worker processes or against a loop computed by hand need one count on every side. Tests of the
    default remove the variable (tests/test_threads.py).
    """
    monkeypatch.setenv("MLPRUNE_THREADS", "1")


# Modules that never look at a workflow run's figures (recipe figures are tested in test_lineage,
# test_cli, test_report, test_readme...): their `mlprune run` processes skip drawing them (MLPRUNE_FIGURES=0,
# a few CPU seconds per run that computes states)
FIGURES_UNCHECKED = {
    "test_parallel",
    "test_slurm",
    "test_resume",
    "test_faults",
    "test_bad_input",
    "test_batched_runs",
    "test_threads",
    "test_sqlview",
    "test_structured",
}


@pytest.fixture(autouse=True)
def _no_figures_where_unchecked(request, monkeypatch):
    if request.module.__name__.rsplit(".", 1)[-1] in FIGURES_UNCHECKED:
        monkeypatch.setenv("MLPRUNE_FIGURES", "0")


@pytest.fixture(scope="session")
def _session_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("mlprune-cache")


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch, _session_cache):
    """mlprune's user cache (the migrated template of new sqlite stores) in a temp dir of the session,
    never the user's ~/.cache: a test run leaves nothing behind and starts from nothing."""
    monkeypatch.setenv("MLPRUNE_CACHE_DIR", str(_session_cache))


@pytest.fixture(scope="session")
def _empty_store_db(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("template-store")
    uri = f"sqlite:///{folder}/mlflow.db"
    MlflowClient(tracking_uri=uri).search_experiments()  # creates and migrates the schema
    return folder / "mlflow.db"


def _use_store(patch, template, folder) -> str:
    """A copy of the empty migrated store in `folder`, cwd there (artifacts in ./mlruns), MLFLOW_TRACKING_URI
    set and no experiment or run chosen by the environment (`patch`: a MonkeyPatch, undone by its owner)."""
    shutil.copy(template, folder / "mlflow.db")
    uri = f"sqlite:///{folder}/mlflow.db"
    patch.chdir(folder)
    patch.setenv("MLFLOW_TRACKING_URI", uri)
    for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        patch.delenv(name, raising=False)
    return uri


@pytest.fixture(scope="session")
def store_folder(tmp_path_factory, _empty_store_db):
    """For module-scoped fixtures: ``with store_folder("name") as (folder, uri, patch):`` a fresh store in a
    new folder as `tracking` makes one, undone when the block ends (`patch` sets more variables)."""

    @contextlib.contextmanager
    def make(name: str):
        folder = tmp_path_factory.mktemp(name)
        with pytest.MonkeyPatch.context() as patch:
            yield folder, _use_store(patch, _empty_store_db, folder), patch

    return make


@pytest.fixture
def tracking(tmp_path, monkeypatch, _empty_store_db):
    """A fresh real store: cwd = tmp dir (artifacts in ./mlruns), MLFLOW_TRACKING_URI set."""
    uri = _use_store(monkeypatch, _empty_store_db, tmp_path)
    import mlflow

    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


@pytest.fixture
def experiment(tracking):
    from mlprune import Experiment

    return Experiment("test")
