"""The sqlite view (store.sqlview) reads what MLflow's own client reads, from the same real store."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from mlprune import SpecError
from mlprune.store import Store
from mlprune.store.sqlview import SqliteView

REPO = Path(__file__).resolve().parents[1]


def _same_run(view_run, mlflow_run):
    a, b = view_run.info, mlflow_run.info
    assert (
        a.run_id,
        a.experiment_id,
        a.status,
        a.start_time,
        a.end_time,
        a.artifact_uri,
        a.run_name,
        a.lifecycle_stage,
    ) == (b.run_id, b.experiment_id, b.status, b.start_time, b.end_time, b.artifact_uri, b.run_name, b.lifecycle_stage)
    assert view_run.data.tags == mlflow_run.data.tags
    assert view_run.data.params == mlflow_run.data.params
    assert set(view_run.data.metrics) == set(mlflow_run.data.metrics)
    for name, value in mlflow_run.data.metrics.items():
        assert view_run.data.metrics[name] == value or (math.isnan(value) and math.isnan(view_run.data.metrics[name]))


@pytest.fixture
def populated(tracking):
    """Runs in every state a store holds: states FINISHED, RUNNING, FAILED, invalid, deleted; other runs;
    a second experiment; metrics with history, NaN, params."""
    client = MlflowClient(tracking_uri=tracking)
    exp = client.create_experiment("view")
    other = client.create_experiment("other")
    made = {}
    for name, key, status in (
        ("a", "k1", "FINISHED"),
        ("b", "k1", "FINISHED"),
        ("c", "k2", "RUNNING"),
        ("d", "k3", "FAILED"),
        ("e", "k4", "FINISHED"),
        ("f", None, "FINISHED"),
        ("g", "k5", "FINISHED"),
    ):
        tags = {"mlprune.key": key} if key else {"mlprune.recipe": "r"}
        run = client.create_run(exp, tags=tags, run_name=name)
        run_id = run.info.run_id
        client.log_batch(
            run_id,
            metrics=[
                Metric("acc", 0.5, 1, 0),
                Metric("loss", 2.0, 1, 1),
                Metric("loss", 1.0, 2, 2),
                Metric("nan", float("nan"), 1, 0),
            ],
            params=[Param("p", name)],
            tags=[RunTag("t", name)],
        )
        if status != "RUNNING":
            client.set_terminated(run_id, status)
        made[name] = run_id
    client.set_tag(made["e"], "mlprune.invalid", "broken")
    client.delete_run(made["g"])
    elsewhere = client.create_run(other, tags={"mlprune.key": "k1"}, run_name="x")
    client.set_terminated(elsewhere.info.run_id, RunStatus.to_string(RunStatus.FINISHED))
    return client, exp, made


def test_searches_match_mlflow(populated, tracking):
    client, exp, made = populated
    view = SqliteView.open(tracking)
    assert view is not None
    cases = [
        ({}, ""),
        ({"states_only": True}, "tags.`mlprune.key` != ''"),
        ({"key": "k1"}, "tags.`mlprune.key` = 'k1'"),
        ({"key": "k1", "status": "FINISHED"}, "tags.`mlprune.key` = 'k1' and attributes.status = 'FINISHED'"),
        ({"key": "k1", "exclude": made["a"]}, f"tags.`mlprune.key` = 'k1' and attributes.run_id != '{made['a']}'"),
        ({"states_only": True, "status": "RUNNING"}, "tags.`mlprune.key` != '' and attributes.status = 'RUNNING'"),
    ]
    for kwargs, where in cases:
        ours = view.search([exp], **kwargs)
        theirs = client.search_runs([exp], where, max_results=1000, order_by=["attributes.start_time ASC"])
        assert [r.info.run_id for r in ours] == [r.info.run_id for r in theirs], (kwargs, where)
        for a, b in zip(ours, theirs):
            _same_run(a, b)
    assert [r.info.run_id for r in view.search([exp], keys=["k1", "k2", "nope"])] == [made["a"], made["b"], made["c"]]
    assert view.metric_history(made["a"], "loss") == [(1, 2.0), (2, 1.0)]
    for name in made:
        _same_run(view.run(made[name]), client.get_run(made[name]))  # a deleted run too
    assert view.run("0" * 32) is None


def test_the_store_reads_through_the_view_as_through_mlflow(populated, tracking, monkeypatch):
    client, exp, made = populated
    answers = []
    for reads in ("1", "0"):
        monkeypatch.setenv("MLPRUNE_SQLITE_READS", reads)
        store = Store(experiment_id=exp, tracking_uri=tracking)
        assert (store.view is not None) == (reads == "1")
        answers.append(
            (
                store.find_many(["k1", "k2", "k3", "k4", "k5"]),
                [r.info.run_id for r in store.states()],
                [r.info.run_id for r in store.runs()],
                [r.info.run_id for r in store.search_key("k1", status="FINISHED")],
                store.resolve_run_id(made["a"][:8]),
                store.metric_history(made["b"], "loss"),
                store.experiment_name,
                sorted(store.runs_by_id([made["a"], made["g"], "0" * 32])),
            )
        )
        with pytest.raises(SpecError, match="not found"):
            store.run("f" * 32)
    assert answers[0] == answers[1]
    assert answers[0][0] == {"k1": [made["a"], made["b"]]}  # FINISHED, valid, this experiment only


def test_no_view_where_mlflow_must_decide(tracking, tmp_path, monkeypatch):
    assert SqliteView.open(f"sqlite:///{tmp_path}/missing.db") is None
    assert SqliteView.open("http://127.0.0.1:5000") is None
    empty = tmp_path / "empty.db"
    import sqlite3

    sqlite3.connect(empty).execute("CREATE TABLE x (a)").connection.close()
    assert SqliteView.open(f"sqlite:///{empty}") is None  # not MLflow's tables
    monkeypatch.setenv("MLFLOW_ENABLE_WORKSPACES", "true")
    assert SqliteView.open(tracking) is None
    monkeypatch.delenv("MLFLOW_ENABLE_WORKSPACES")
    monkeypatch.setenv("MLPRUNE_SQLITE_READS", "0")
    assert SqliteView.open(tracking) is None


@pytest.mark.parametrize("file_store", [False, True])
def test_the_default_tracking_uri_is_mlflows_without_importing_it(tmp_path, file_store):
    """Without MLFLOW_TRACKING_URI: ./mlflow.db, unless ./mlruns holds a file store (MLflow keeps that)."""
    if file_store:
        (tmp_path / "mlruns" / "0").mkdir(parents=True)
        (tmp_path / "mlruns" / "0" / "meta.yaml").write_text("name: Default\n")
    code = (
        "import sys\nfrom mlprune.store.experiments import default_tracking_uri, absolute_uri\n"
        "ours = absolute_uri(default_tracking_uri())\nimported = 'mlflow' in sys.modules\n"
        "import mlflow\nprint(ours == absolute_uri(mlflow.get_tracking_uri()), imported)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", str(file_store)]


def test_a_keys_runs_are_found_through_the_key_index(tracking):
    """Opening a store adds the partial index of state keys; the view's key search reads it (no scan of every
    state's key tag), and a store without it (dropped) gives the same answers, the slow way."""
    import sqlite3

    from mlprune.store.experiments import KEY_INDEX

    store = Store("keys", tracking_uri=tracking)
    run_id = store.create(
        key="k" * 64, kind="init", name="root", parent_run_id=None, root_run_id=None, extra_parents={}
    )
    path = tracking[len("sqlite:///") :]
    with sqlite3.connect(path) as connection:
        assert connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", (KEY_INDEX,)
        ).fetchone()
    view = SqliteView.open(tracking)
    [found] = view.search([store.experiment_id], key="k" * 64)
    assert found.info.run_id == run_id
    sql = "SELECT run_uuid FROM tags WHERE key = 'mlprune.key' AND value = ?"
    plan = " ".join(str(row) for row in view._query(f"EXPLAIN QUERY PLAN {sql}", ["k" * 64]))
    assert KEY_INDEX in plan, plan
    with sqlite3.connect(path) as connection:
        connection.execute(f"DROP INDEX {KEY_INDEX}")
    assert [r.info.run_id for r in SqliteView.open(tracking).search([store.experiment_id], key="k" * 64)] == [run_id]
