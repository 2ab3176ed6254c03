"""What `mlprune run` leaves to a detached process (mlprune.background): a computing run's figures, a
fully cached run's workflow record; readers that need them wait on the pending lock, never on a clock.

The rest of the suite runs these tasks in the foreground (conftest: MLPRUNE_BACKGROUND=0); here they
run as users get them, in a detached process started by a real `mlprune run` process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mlprune.background import pending_lock, wait_pending
from mlprune.report.series import collect
from mlprune.store import Store

REPO = Path(__file__).resolve().parents[1]
RECIPE = """\
name: bg_lt
params: {rounds: 2, seed: 0}
root: {model: lenet_300_100, dataset: digits, seed: $seed, train_size: 64, test_size: 64}
train: {epochs: 1, lr: 0.05, momentum: 0.9, batch_size: 32, optimizer: sgd}
rounds: $rounds
prune: {method: l1_unstructured, amount: 0.2}
reinit: {strategy: rewind, to: root}
"""


def _mlprune(tmp_path, tracking, *args) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("MLPRUNE_BACKGROUND", "PYTEST_CURRENT_TEST")}
    env.update(MLFLOW_TRACKING_URI=tracking, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(
        [sys.executable, "-m", "mlprune", *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
def test_figures_and_cached_records_are_written_after_the_run_returns(tracking, tmp_path):
    recipe = tmp_path / "bg_lt.yaml"
    recipe.write_text(RECIPE)
    out = _mlprune(tmp_path, tracking, "run", str(recipe), "-e", "bg")
    assert out.strip().splitlines()[-1] == "6 states: 6 computed, 0 reused"
    assert pending_lock(tracking).exists()
    # readers wait for the detached process: the figures are on the workflow run once it has finished
    assert wait_pending(tracking)
    client = MlflowClient(tracking_uri=tracking)
    exp = client.get_experiment_by_name("bg").experiment_id
    [workflow] = client.search_runs([exp], "tags.`mlprune.recipe` = 'bg_lt'")
    art = Path(workflow.info.artifact_uri)
    assert (art / "figures" / "accuracy_vs_remaining.png").is_file() and (art / "plan.json").is_file()
    assert workflow.data.tags["mlprune.figures"].split()[1] == "figures", workflow.data.tags["mlprune.figures"]

    # fewer rounds: every state exists, but no workflow run records this plan; the run returns at once
    # and its record is written in the background; the report's collect() waits for it
    out = _mlprune(tmp_path, tracking, "run", str(recipe), "-e", "bg", "-P", "rounds=1")
    assert out.strip().splitlines()[-1] == "4 states: 0 computed, 4 reused"
    collection = collect(Store("bg", tracking_uri=tracking, create=False))
    recorded = [r for r in collection.store.runs() if r.data.tags.get("mlprune.recipe") == "bg_lt"]
    assert len(recorded) == 2
    newest = max(recorded, key=lambda r: r.info.start_time)
    plan = json.loads((Path(newest.info.artifact_uri) / "plan.json").read_text())["plans"][0]
    assert plan["overrides"] == {"rounds": 1} and len(plan["reached"]) == 4
    assert not (Path(newest.info.artifact_uri) / "figures").exists()  # nothing computed: no figures

    # the same again: that record exists, nothing is written at all
    out = _mlprune(tmp_path, tracking, "run", str(recipe), "-e", "bg", "-P", "rounds=1")
    assert out.strip().splitlines()[-1] == "4 states: 0 computed, 4 reused"
    assert wait_pending(tracking)
    assert len([r for r in client.search_runs([exp]) if r.data.tags.get("mlprune.recipe") == "bg_lt"]) == 2
