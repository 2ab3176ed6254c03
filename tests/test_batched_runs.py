"""Sibling trainings batched by the executor (run option ``batch``): the same states as computed alone.

Real stores (sqlite in a temp dir), the real CLI and API, real dask schedulers. Each state of a
batch must be stored exactly as if trained alone (same key, artifacts, metrics, lineage), with
results within the tolerance of tests/test_batched.py, ``run.batch`` recording its batch; a
re-run without ``--batch`` computes nothing.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from mlprune import Experiment, Recipe
from mlprune.cli import main
from mlprune.executor import Execution, RunOptions, run_plans
from mlprune.executor.batching import sibling_groups
from mlprune.recipes import parse_seeds, sweep_plans
from mlprune.store import Store

REPO = Path(__file__).resolve().parents[1]
LTH = str(REPO / "recipes" / "lth_lenet_300_100.yaml")
WEIGHT_TOLERANCE = 5e-4  # tests/test_batched.py: the batched loop against training alone


def states_by_key(uri: str, experiment: str) -> dict:
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], filter_string="tags.`mlprune.key` != ''", max_results=10000)
    found: dict = {}
    for run in runs:
        found.setdefault(run.data.tags["mlprune.key"], []).append(run)
    return found


def finished(runs_by_key: dict) -> dict:
    out = {}
    for key, runs in runs_by_key.items():
        done = [r for r in runs if r.info.status == "FINISHED"]
        assert len(done) == 1, (key, [r.info.status for r in runs])
        out[key] = done[0]
    return out


def assert_same_states(uri: str, batched: str, alone: str, *, examples: int = 359, seeds: int = 8) -> None:
    """Same keys (those of the first `seeds` seeds of `alone`, a sweep of seeds 0-7); each state's masks
    equal, weights within the tolerance, test accuracy within one example."""
    a, b = finished(states_by_key(uri, batched)), finished(states_by_key(uri, alone))
    b = {key: run for key, run in b.items() if int(run.data.params["seed"]) < seeds}
    assert set(a) == set(b)
    store_a, store_b = Experiment(batched), Experiment(alone)
    for key, run in a.items():
        other = b[key]
        assert run.data.tags["mlprune.kind"] == other.data.tags["mlprune.kind"]
        assert run.info.run_name == other.info.run_name
        if run.data.tags["mlprune.kind"] == "analysis":
            continue
        x, y = store_a.state(run.info.run_id), store_b.state(other.info.run_id)
        assert set(x.masks) == set(y.masks) and all(torch.equal(x.masks[n], y.masks[n]) for n in x.masks)
        assert set(x.weights) == set(y.weights)
        worst = max(float((x.weights[n] - y.weights[n]).abs().max()) for n in x.weights)
        assert worst <= WEIGHT_TOLERANCE, (run.info.run_name, worst)
        accuracy = run.data.metrics["test_accuracy"], other.data.metrics["test_accuracy"]
        assert abs(accuracy[0] - accuracy[1]) * examples <= 1 + 1e-9, (run.info.run_name, accuracy)
        assert set(run.data.metrics) == set(other.data.metrics)
        assert {k: v for k, v in run.data.params.items() if not k.startswith("run.")} == {
            k: v for k, v in other.data.params.items() if not k.startswith("run.")
        }


SWEEP_8 = ["sweep", LTH, "--seeds", "0-7", "-P", "rounds=1", "-P", "epochs=1"]


@pytest.fixture(scope="module")
def alone_store(store_folder):
    """A store whose experiment `alone` holds SWEEP_8 computed without batching (the reference of the tests
    that compare batched sweeps of these seeds, or of the first of them, with it)."""
    with store_folder("alone") as (folder, uri, _):
        alone = CliRunner().invoke(main, SWEEP_8 + ["-e", "alone"])
        assert alone.exit_code == 0, alone.output
        assert "48 states: 48 computed, 0 reused" in alone.output
    return {"uri": uri, "folder": folder}


@pytest.fixture
def beside_alone(alone_store, monkeypatch):
    """The tracking URI of `alone_store`, for a test that adds experiments of its own to it."""
    import mlflow

    monkeypatch.chdir(alone_store["folder"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", alone_store["uri"])
    for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    mlflow.set_tracking_uri(alone_store["uri"])
    yield alone_store["uri"]
    mlflow.set_tracking_uri(None)


def test_sweep_of_8_seeds_batched_gives_the_same_states_and_a_rerun_without_batch_computes_nothing(beside_alone):
    """The issue's must-show: `mlprune sweep recipes/lth_lenet_300_100.yaml --seeds 0-7 -P rounds=1 --batch 8`
    (one epoch here: the recipe's `epochs` parameter)."""
    tracking = beside_alone
    runner = CliRunner()
    common = SWEEP_8
    batched = runner.invoke(main, common + ["--batch", "8", "-e", "batched"])
    assert batched.exit_code == 0, batched.output
    assert "48 states: 48 computed, 0 reused" in batched.output
    assert_same_states(tracking, "batched", "alone")
    runs = finished(states_by_key(tracking, "batched"))
    sizes = sorted((r.data.tags["mlprune.kind"], r.data.params["run.batch"]) for r in runs.values())
    # 8 trainings of round 0 in one batch; rewind, random and shuffle of 8 seeds in 3 batches of 8
    assert sizes.count(("train", "8")) == 8 and sizes.count(("reinit+train", "8")) == 24
    assert {b for k, b in sizes if k != "train" and k != "reinit+train"} == {"1"}
    again = runner.invoke(main, common + ["-e", "batched"])
    assert again.exit_code == 0, again.output
    assert "48 states: 0 computed, 48 reused" in again.output
    assert sum(len(v) for v in states_by_key(tracking, "batched").values()) == 48


def test_which_states_group_under_which_recipes(tracking):
    """Seeds of a sweep, the controls of a level, spawned copies, one-shot sparsities with their controls."""
    store = Store("plans")

    def groups(recipe, seeds="0-7", batch=8, **grid):
        plans = sweep_plans([str(REPO / "recipes" / recipe)], parse_seeds(seeds), [grid])
        execution = Execution([p for _, p in plans], store, options=RunOptions(batch=batch))
        return [sorted(execution.nodes[k].label for k in g) for g in execution.batch_groups()]

    lth = groups("lth_lenet_300_100.yaml", rounds=1)
    assert sorted(len(g) for g in lth) == [8, 8, 8, 8]
    assert lth[0] == [f"s{seed} train" for seed in range(8)]  # the seeds' first trainings
    # a level and its controls (a sweep's run names start with their seed)
    assert sorted(set(label.split(" ", 1)[1] for g in lth[1:] for label in g)) == [
        "r1 ctrl:random",
        "r1 ctrl:shuffle",
        "r1 rewind+train",
    ]
    lmc = groups("lmc_lenet_300_100.yaml", seeds="0", rounds=1)
    assert any(all("copy" in label for label in g) for g in lmc)  # spawned copies
    pai = groups("pai_sanity_lenet_300_100.yaml", seeds="0")
    assert any(any("snip" in label for label in g) and any("ctrl:invert" in label for label in g) for g in pai)
    # at most `batch` per group, as even as can be; batch 1 (the default) groups nothing
    # 5 first trainings: 3 + 2; 15 rewinds and controls: 4 + 4 + 4 + 3
    assert sorted(len(g) for g in groups("lth_lenet_300_100.yaml", seeds="0-4", batch=4, rounds=1)) == [
        2,
        3,
        3,
        4,
        4,
        4,
    ]
    assert groups("lth_lenet_300_100.yaml", batch=1, rounds=1) == []


def test_groups_are_cut_evenly_and_never_hold_a_node_and_its_ancestor():
    tasks = {f"k{i}": {"deps": []} for i in range(10)}
    tasks["child"] = {"deps": ["k0"]}
    signatures = {**{f"k{i}": "same" for i in range(10)}, "child": "same"}
    groups = sibling_groups(tasks, signatures, 4)
    assert sorted(len(g) for g in groups) == [3, 3, 4]
    assert all("child" not in g for g in groups)  # one level deeper: alone (a group of one is no group)


def test_a_sibling_finished_elsewhere_meanwhile_is_dropped_from_its_batch(tracking):
    plans = [p for _, p in sweep_plans([LTH], parse_seeds("0-3"), [{"rounds": 1, "epochs": 1}])]
    execution = Execution(plans, Store("study"), options=RunOptions(batch=4))
    first_training = plans[2].node("train").key
    assert any(first_training in g for g in execution.batch_groups())
    # another process computes seed 2's first training after this run was planned
    run_plans([plans[2]], Store("study"), "sync")
    result = execution.run()
    runs = finished(states_by_key(tracking, "study"))
    assert runs[first_training].data.params["run.batch"] == "1"  # not recomputed in the batch
    assert [
        r.data.params["run.batch"]
        for k, r in runs.items()
        if r.data.tags["mlprune.kind"] == "train" and k != first_training
    ] == ["3"] * 3
    assert len(states_by_key(tracking, "study")[first_training]) == 1  # never even claimed twice
    assert result.computed == 24


def test_a_claim_lost_mid_batch_discards_that_sibling_only(tracking, monkeypatch):
    """Another process takes one sibling's claim over once the batch has started: that sibling is dropped from
    the batch and reached alone; the others are stored from the batch."""
    monkeypatch.setenv("MLPRUNE_CLAIM_TIMEOUT", "2")  # claims checked every 0.5 s
    taken = {}

    def progress(message):
        if "as one batch" in message and not taken:
            store = experiment.store
            running = store.client.search_runs(
                [store.experiment_id], "attributes.status = 'RUNNING' and tags.`mlprune.kind` = 'train'"
            )
            victim = sorted(r.info.run_id for r in running)[0]
            store.fail(victim, "taken over by another process (test)")
            taken["run"] = victim
            deadline = threading.Event()
            for _ in range(300):  # the claim's heartbeat thread notices before the first epoch ends
                if victim in store.claims.lost:
                    break
                deadline.wait(0.1)

    experiment = Experiment("lost", batch=3, progress=progress)
    root = experiment.init(model="lenet_300_100", seed=0)
    copies = experiment.spawn(root, Recipe.train(epochs=3, lr=0.05), copies=3)
    assert taken
    batches = {c.run_id: MlflowClient().get_run(c.run_id).data.params["run.batch"] for c in copies}
    assert sorted(batches.values()) == ["1", "3", "3"]
    assert MlflowClient().get_run(taken["run"]).info.status == "FAILED"
    assert taken["run"] not in batches
    alone = Experiment("alone")
    same = alone.spawn(alone.init(model="lenet_300_100", seed=0), Recipe.train(epochs=3, lr=0.05), copies=3)
    for a, b in zip(copies, same):
        assert a.key == b.key
        assert max(float((a.weights[n] - b.weights[n]).abs().max()) for n in a.weights) <= WEIGHT_TOLERANCE


def test_batches_on_a_local_dask_cluster_equal_sync(beside_alone):
    tracking = beside_alone
    runner = CliRunner()
    common = ["sweep", LTH, "--seeds", "0-3", "-P", "rounds=1", "-P", "epochs=1"]
    cluster = runner.invoke(
        main, common + ["--batch", "4", "--scheduler", "processes", "--workers", "2", "-e", "cluster"]
    )
    assert cluster.exit_code == 0, cluster.output
    assert "24 states: 24 computed, 0 reused" in cluster.output
    assert_same_states(tracking, "cluster", "alone", seeds=4)  # the sync sweep's seeds 0-3
    sizes = [r.data.params["run.batch"] for r in finished(states_by_key(tracking, "cluster")).values()]
    assert sizes.count("4") == 16


def test_bad_batch_is_one_line_exit_2(tracking):
    result = CliRunner().invoke(main, ["sweep", LTH, "--seeds", "0", "--batch", "0"])
    assert result.exit_code == 2 and "--batch must be an integer >= 1" in result.output
