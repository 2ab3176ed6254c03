"""Shared fixtures: a real MLflow tracking store (sqlite + local artifacts) per test.

Creating a sqlite store runs MLflow's migrations (seconds); we migrate one empty
store per session and copy its file for each test, which gives every test a
fresh, real store in a temp dir in milliseconds.
"""

from __future__ import annotations

import os
import shutil

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session")
def _empty_store_db(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("template-store")
    uri = f"sqlite:///{folder}/mlflow.db"
    MlflowClient(tracking_uri=uri).search_experiments()  # creates and migrates the schema
    return folder / "mlflow.db"


@pytest.fixture
def tracking(tmp_path, monkeypatch, _empty_store_db):
    """A fresh real store: cwd = tmp dir (artifacts in ./mlruns), MLFLOW_TRACKING_URI set."""
    shutil.copy(_empty_store_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    import mlflow

    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


@pytest.fixture
def experiment(tracking):
    from mlprune import Experiment

    return Experiment("test")
