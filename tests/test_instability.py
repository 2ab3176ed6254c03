"""Instability analysis: spawned copies, interpolation states, the presets and the report.

Oracles come from the formulas (Frankle, Dziugaite, Roy & Carbin 2020): the path's networks are
(1 - α)·w_a + α·w_b computed here in float64, evaluated by a loop written here; the instability is
the largest error on the path minus the mean of the endpoints' errors.
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
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from mlprune import Experiment, Recipe, SpecError, analysis
from mlprune.cli import main
from mlprune.recipes import compile_recipe

REPO = Path(__file__).resolve().parents[1]
LENET_PRESET = REPO / "recipes" / "lmc_lenet_300_100.yaml"
RESNET_PRESET = REPO / "recipes" / "lmc_resnet20_cifar10.yaml"
ROOT = {"model": "lenet_300_100", "dataset": "digits", "seed": 0, "train_size": 128, "test_size": 128}
TRAIN = {"epochs": 3, "lr": 0.05, "batch_size": 32}  # 4 iterations an epoch on 128 examples


# ---- pure maths --------------------------------------------------------------------------------


def test_alphas_are_evenly_spaced_with_exact_endpoints():
    alphas = analysis.interpolation_alphas(30)
    assert len(alphas) == 30 and alphas[0] == 0.0 and alphas[-1] == 1.0
    assert all(abs((b - a) - 1 / 29) < 1e-12 for a, b in zip(alphas, alphas[1:]))
    with pytest.raises(SpecError, match="integer >= 2"):
        analysis.interpolation_alphas(1)


def test_interpolated_weights_are_the_formula_masked():
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(6, 5, generator=gen) > 0.4
    a = {
        "fc.weight": torch.randn(6, 5, generator=gen) * mask,
        "fc.bias": torch.randn(6, generator=gen),
        "bn.num_batches_tracked": torch.tensor(3),
    }
    b = {
        "fc.weight": torch.randn(6, 5, generator=gen) * mask,
        "fc.bias": torch.randn(6, generator=gen),
        "bn.num_batches_tracked": torch.tensor(11),
    }
    for alpha in analysis.interpolation_alphas(7):
        out = analysis.interpolate_weights(a, b, alpha, {"fc.weight": mask})
        for name in ("fc.weight", "fc.bias"):
            expected = ((1 - alpha) * a[name].double() + alpha * b[name].double()).float()
            assert torch.allclose(out[name], expected, rtol=0, atol=1e-6), (name, alpha)
        assert (out["fc.weight"][~mask] == 0).all()  # pruned weights stay exactly zero
        assert int(out["bn.num_batches_tracked"]) == 3  # integer buffers are a's
    ends = analysis.interpolate_weights(a, b, 0.0), analysis.interpolate_weights(a, b, 1.0)
    assert all(torch.equal(ends[0][n], a[n]) and torch.equal(ends[1][n], b[n]) for n in ("fc.weight", "fc.bias"))
    for alpha in (0.1, 0.5, 0.9):  # a network with itself: every point is the network, bit for bit
        same = analysis.interpolate_weights(a, a, alpha)
        assert all(torch.equal(same[n], a[n]) for n in a)
    with pytest.raises(SpecError, match="different tensors"):
        analysis.interpolate_weights(a, {"fc.weight": b["fc.weight"]}, 0.5)


def test_barrier_height_is_max_minus_the_endpoints_mean():
    assert analysis.barrier_height([0.10, 0.25, 0.30, 0.12]) == pytest.approx(0.30 - (0.10 + 0.12) / 2)
    assert analysis.barrier_height([0.2, 0.1, 0.05, 0.2]) == 0.0  # a path below its ends has no barrier
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        values = torch.rand(9, generator=gen).tolist()
        assert analysis.barrier_height(values) >= 0.0


def test_recomputed_batchnorm_statistics_are_the_training_batches_statistics():
    from mlprune.training.loop import recompute_batchnorm

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.5),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 3),
    )
    model[1].running_mean.fill_(5.0)  # stale statistics, as an interpolation leaves them
    gen = torch.Generator().manual_seed(2)
    x1, x2 = torch.randn(16, 1, 8, 8, generator=gen), torch.randn(10, 1, 8, 8, generator=gen)
    seen = recompute_batchnorm(model, [(x1, None), (x2, None)])
    with torch.no_grad():
        feats = [model[0](x) for x in (x1, x2)]
    means = [f.mean(dim=(0, 2, 3)) for f in feats]
    variances = [f.var(dim=(0, 2, 3), unbiased=True) for f in feats]
    assert seen == 2
    # the plain average over batches of each batch's mean and (unbiased) variance
    assert torch.allclose(model[1].running_mean, (means[0] + means[1]) / 2, atol=1e-5)
    assert torch.allclose(model[1].running_var, (variances[0] + variances[1]) / 2, atol=1e-4)
    assert not model.training and model[1].momentum == 0.1  # left in eval mode, momentum restored
    again = model[1].running_mean.clone()
    recompute_batchnorm(model, [(x1, None), (x2, None)])  # dropout was off: nothing random ran
    assert torch.equal(again, model[1].running_mean)


def test_the_instability_figure_marks_stable_points_filled_and_unstable_hollow():
    from mlprune.plots import plot_instability_vs_spawn

    points = [
        {"iteration": 0, "mean": 0.05, "std": 0.01, "n": 2},
        {"iteration": 500, "mean": 0.005, "std": 0.0, "n": 2},
    ]
    fig = plot_instability_vs_spawn({"dense (100%)": points})
    ax = fig.axes[0]
    markers = [
        line
        for line in ax.get_lines()
        if line.get_linestyle() == "None" and line.get_marker() == "o" and len(line.get_xdata())
    ]
    hollow = [line for line in markers if line.get_markerfacecolor() == "white"]
    filled = [line for line in markers if line.get_markerfacecolor() != "white"]
    assert [list(line.get_xdata()) for line in hollow] == [[0.0]]  # 5 % instability: unstable
    assert [list(line.get_xdata()) for line in filled] == [[500.0]]  # 0.5 %: stable
    assert [tick.get_text() for tick in ax.get_xticklabels()] == ["0", "500"]
    assert "n=2" in ax.get_legend().get_texts()[0].get_text()


# ---- planning ----------------------------------------------------------------------------------


def test_the_lenet_preset_plans_sibling_copies_and_their_interpolations():
    plan = compile_recipe(LENET_PRESET)
    first = plan.node("train").steps[0]["train"]
    retrain = plan.node("round3").steps[1]["train"]
    interpolations = [n for n in plan.nodes if n.kind == "analysis"]
    assert len(interpolations) == 2 * 3  # levels 0 and 3 (the last round), spawn points 0it, 3it, 1ep
    seen_points = set()
    for node in interpolations:
        a, b = plan.node(node.parent), plan.node(node.inputs["b"])
        assert node.inputs["a"] == node.parent and node.steps[0]["interpolate"]["alphas"] == 30
        assert a.parent == b.parent and a.role == b.role == "copy"  # siblings of one spawn point
        options_a, options_b = a.steps[0]["train"], b.steps[0]["train"]
        assert (options_a["seed"], options_b["seed"]) == (1, 2)  # root seed + 1, + 2
        assert {k: v for k, v in options_a.items() if k != "seed"} == {
            k: v for k, v in options_b.items() if k != "seed"
        }
        at = options_a.get("schedule_from", "0it")
        level_train = first if node.round == 0 else retrain
        assert {k: v for k, v in options_a.items() if k not in ("seed", "schedule_from")} == {
            k: v for k, v in level_train.items() if k not in ("seed", "schedule_from")
        }
        point = plan.node(a.parent)
        if node.round == 0:  # the first training stopped at the spawn point: emitted by it, not trained twice
            assert point.name == ("root" if at == "0it" else f"train@{at}")
            assert at == "0it" or point.emitted_by == "train"
        else:  # round 3's mask with the first training's weights at the spawn point
            assert point.parent == "prune3" and point.steps == [
                {"reinit": {"strategy": "rewind", "to": "input:weights", "reset_optimizer": True}}
            ]
            assert point.inputs["weights"] == ("root" if at == "0it" else f"train@{at}")
        seen_points.add((node.round, at))
    assert seen_points == {(r, t) for r in (0, 3) for t in ("0it", "3it", "1ep")}
    paper = compile_recipe(LENET_PRESET, {"protocol": "paper"})
    assert paper.params["dataset"] == "mnist" and paper.params["rounds"] == 15
    assert {n.round for n in paper.nodes if n.kind == "analysis"} == {0, 15}


def test_the_resnet20_preset_follows_openlth():
    plan = compile_recipe(RESNET_PRESET, {"protocol": "paper"})
    root = plan.node("root").root
    assert (root["model"], root["dataset"], root["init"], root["model_options"]) == (
        "resnet20",
        "cifar10",
        "kaiming_normal",
        {"shortcut": "B"},
    )
    train = plan.node("train").steps[0]["train"]
    assert (train["lr"], train["momentum"], train["weight_decay"], train["batch_size"], train["epochs"]) == (
        0.1,
        0.9,
        0.0001,
        128,
        160,
    )
    assert train["lr_schedule"] == {"kind": "multistep", "milestones": ["80ep", "120ep"], "gamma": 0.1}
    prune = plan.node("prune1").steps[0]["prune"]
    assert (prune["method"], prune["scope"], prune["amount"], prune["exclude"]) == (
        "l1_unstructured",
        "global",
        0.2,
        ["@output"],
    )
    points = {n.steps[0]["train"].get("schedule_from", "0it") for n in plan.nodes if n.role == "copy"}
    assert points == {"0it", "100it", "250it", "500it", "1000it", "2000it"}
    assert {n.round for n in plan.nodes if n.kind == "analysis"} == {0, 8}  # dense and 16.8 %


@pytest.mark.parametrize(
    "spawn, fragment",
    [
        ("{copies: 0, at: [0it]}", "copies must be an integer >= 1"),
        ("{at: [0it], seeds: [3, 3]}", "repeat a seed"),
        ("{at: [0it, 0ep]}", "given twice"),
        ("{at: [99ep]}", "outside the training"),
        ("{at: [0it], levels: [5]}", "level 5 is not a round"),
        ("{at: [0it], wings: 1}", "unknown spawn option 'wings'"),
        ("{at: [0it], interpolate: {b: parent}}", "takes no 'b'"),
        ("{at: [0it], interpolate: {alphas: 1}}", "alphas must be an integer >= 2"),
        ("{copies: 1, at: [0it]}", "copies >= 2"),
        ("{copies: 2}", "needs 'at'"),
    ],
)
def test_bad_spawn_values_are_one_line_errors_before_anything_runs(tracking, tmp_path, spawn, fragment):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(f"extends: {LENET_PRESET}\nspawn: {spawn}\n")
    with pytest.raises(SpecError, match=re.escape(fragment)) as error:
        compile_recipe(recipe)
    assert "\n" not in str(error.value) and "spawn" in str(error.value)
    result = CliRunner().invoke(main, ["run", str(recipe)])
    assert result.exit_code == 2 and fragment in result.output, result.output
    assert (
        MlflowClient(tracking_uri=tracking).search_runs(
            [e.experiment_id for e in MlflowClient(tracking_uri=tracking).search_experiments()]
        )
        == []
    )


def test_copies_and_interpolations_are_independent_tasks(experiment):
    """What lets dask run them in parallel: a copy waits for its spawn point only, an interpolation
    for its two copies only."""
    from mlprune.executor import Execution

    plan = compile_recipe(LENET_PRESET, {"rounds": 1})
    tasks = Execution([plan], experiment.store, scheduler="processes")._tasks()
    by_name = {n.name: n for n in plan.nodes}
    for node in plan.nodes:
        deps = set(tasks[node.key]["deps"])
        if node.role == "copy":
            assert deps == {by_name[node.parent].key} - {None}
        if node.kind == "analysis":
            assert deps == {by_name[node.parent].key, by_name[node.inputs["b"]].key}


# ---- states on a real store --------------------------------------------------------------------


@pytest.fixture(scope="module")
def lineage(tmp_path_factory, _empty_store_db):
    """One store: a spawn point after 1 epoch, its dense and 50 %-pruned copies, their interpolations."""
    folder = tmp_path_factory.mktemp("instability")
    shutil.copy(_empty_store_db, folder / "mlflow.db")  # an empty migrated store (conftest): no migration wait
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder}/mlflow.db")
        patch.chdir(folder)
        exp = Experiment("lmc")
        root = exp.init(**ROOT)
        point = root.apply(Recipe.train(**TRAIN, stop_at="1ep"))
        pruned = point.apply(Recipe.prune(method="l1_unstructured", amount=0.5))
        copy_train = {**TRAIN, "schedule_from": "1ep"}
        dense = exp.spawn(point, copy_train, copies=2)
        sparse = exp.spawn(pruned, Recipe.train(**copy_train), copies=2, seeds=[5, 6])
        yield {
            "exp": exp,
            "root": root,
            "point": point,
            "pruned": pruned,
            "dense": dense,
            "sparse": sparse,
            "dense_lmc": exp.interpolate(dense[0], dense[1], alphas=12),
            "sparse_lmc": exp.interpolate(sparse[0], sparse[1], alphas=12, train_set=True),
            "uri": f"sqlite:///{folder}/mlflow.db",
            "folder": folder,
            "patch": patch,
        }


def curve(state) -> dict:
    from mlprune.names import INTERPOLATION_FILE

    return json.loads(state.file(INTERPOLATION_FILE))


def test_copies_are_siblings_that_differ_only_in_their_data_order(lineage):
    for copies, point in ((lineage["dense"], lineage["point"]), (lineage["sparse"], lineage["pruned"])):
        a, b = copies
        assert a.parent.run_id == b.parent.run_id == point.run_id
        options_a, options_b = a.spec["steps"][0]["train"], b.spec["steps"][0]["train"]
        assert options_a["seed"] != options_b["seed"]
        assert {k: v for k, v in options_a.items() if k != "seed"} == {
            k: v for k, v in options_b.items() if k != "seed"
        }
        assert any(not torch.equal(a.weights[n], b.weights[n]) for n in a.weights)  # different SGD noise
        for copy in copies:  # the level's mask, pruned weights exactly zero
            for name, mask in point.masks.items():
                assert torch.equal(copy.masks[name], mask) and (copy.weights[name][~mask] == 0).all()
        assert a.metrics["iterations"] == 8  # epochs 2 and 3 of the schedule: 2 x 4 iterations
    assert [c.spec["steps"][0]["train"]["seed"] for c in lineage["dense"]] == [1, 2]


def test_interpolation_endpoints_are_the_states_own_test_error(lineage):
    for name, copies in (("dense_lmc", lineage["dense"]), ("sparse_lmc", lineage["sparse"])):
        state, result = lineage[name], curve(lineage[name])
        a, b = copies
        assert state.kind == "analysis" and len(result["alphas"]) == 12
        assert result["test"]["error"][0] == 1.0 - a.metrics["test_accuracy"]  # exactly
        assert result["test"]["error"][-1] == 1.0 - b.metrics["test_accuracy"]
        assert (
            result["test"]["loss"][0] == a.metrics["test_loss"] and result["test"]["loss"][-1] == b.metrics["test_loss"]
        )
        metrics = state.metrics
        assert metrics["instability"] >= 0.0
        assert metrics["instability"] == analysis.barrier_height(result["test"]["error"])
        assert metrics["barrier_loss"] == analysis.barrier_height(result["test"]["loss"])
        assert metrics["spawn_iteration"] == 4 == result["spawn"]["iteration"]  # 1ep of 4 iterations
        assert result["spawn"]["key"] == a.parent.key and result["bn_reset"] is False
        assert (result["a"], result["b"]) == (a.key, b.key)
        tags = MlflowClient(tracking_uri=lineage["uri"]).get_run(state.run_id).data.tags
        assert tags["mlprune.parent.a"] == a.run_id and tags["mlprune.parent.b"] == b.run_id
        assert tags["mlflow.parentRunId"] == a.run_id and tags["mlprune.sha256.interpolation.png"]
        assert state.file("interpolation.png")[:8] == b"\x89PNG\r\n\x1a\n"
    train = curve(lineage["sparse_lmc"])["train"]
    assert len(train["error"]) == 12
    assert lineage["sparse_lmc"].metrics["train_instability"] == analysis.barrier_height(train["error"])


def test_interpolation_matches_an_independent_evaluation_of_the_formula(lineage):
    """The oracle: (1 - α)·w_a + α·w_b in float64, masked, evaluated on the test set by a loop written here."""
    from mlprune.workspace import Workspace

    a, b = lineage["sparse"]
    result = curve(lineage["sparse_lmc"])
    data = Workspace().data(a.spec["root"], None)
    xs, ys = zip(*data.test_batches(1000))
    x, y = torch.cat(xs), torch.cat(ys)
    model = a.model().eval()
    errors = []
    for i, alpha in enumerate(result["alphas"]):
        assert alpha == pytest.approx(i / 11)
        weights = {}
        for name, wa in a.weights.items():
            w = ((1 - alpha) * wa.double() + alpha * b.weights[name].double()).to(wa.dtype)
            weights[name] = w * a.masks[name] if name in a.masks else w
        model.load_state_dict(weights)
        with torch.no_grad():
            logits = model(x).double()
        error = float((logits.argmax(1) != y).double().mean())
        loss = float(torch.nn.functional.cross_entropy(logits, y))
        assert abs(error - result["test"]["error"][i]) <= 1.0 / len(y) + 1e-12  # one borderline example at most
        assert loss == pytest.approx(result["test"]["loss"][i], abs=1e-5)
        errors.append(error)
    oracle = max(errors) - (errors[0] + errors[-1]) / 2
    assert lineage["sparse_lmc"].metrics["instability"] == pytest.approx(oracle, abs=2.0 / len(y))


def test_same_data_order_gives_bitwise_identical_copies_and_zero_instability(lineage):
    """A copy computed again from scratch (another experiment: nothing reused) is the same bits, and the
    path between the two is flat: instability exactly 0."""
    exp, dense = lineage["exp"], lineage["dense"]
    twin_exp = Experiment("lmc-twin")
    twin_point = twin_exp.init(**ROOT).apply(Recipe.train(**TRAIN, stop_at="1ep"))
    (twin,) = twin_exp.spawn(twin_point, {**TRAIN, "schedule_from": "1ep"}, copies=1, seeds=[1])
    assert twin.run_id != dense[0].run_id and twin.key == dense[0].key and twin_exp.computed
    assert all(torch.equal(twin.weights[n], dense[0].weights[n]) for n in dense[0].weights)
    flat = exp.interpolate(dense[0], twin, alphas=10)
    result = curve(flat)
    assert flat.metrics["instability"] == 0.0 and flat.metrics["barrier_loss"] == 0.0
    assert len(set(result["test"]["error"])) == 1 and len(set(result["test"]["loss"])) == 1
    b_run = MlflowClient(tracking_uri=lineage["uri"]).get_run(flat.run_id).data.tags["mlprune.parent.b"]
    assert exp.state(b_run).key == twin.key  # one key, one state: the executor reads either run as b
    # different data orders: different weights (checked above), and a path that is not flat
    assert len(set(curve(lineage["dense_lmc"])["test"]["loss"])) > 1


def test_interpolation_is_a_cached_keyed_state(lineage):
    exp, (a, b) = lineage["exp"], lineage["dense"]
    before = list(exp.computed)
    again = exp.interpolate(a, b, alphas=12)
    assert again.run_id == lineage["dense_lmc"].run_id and exp.computed == before
    other = exp.interpolate(a, b, alphas=11)
    assert other.key != again.key and len(curve(other)["alphas"]) == 11
    planned, _, inputs = exp.child_key(a, Recipe(({"interpolate": {"b": b, "alphas": 11}},)))
    assert planned == other.key and set(inputs) == {"a", "b"}


def test_interpolation_refuses_different_masks_and_architectures(lineage):
    exp = lineage["exp"]
    with pytest.raises(SpecError, match="masks differ"):
        exp.interpolate(lineage["dense"][0], lineage["sparse"][0])
    other = exp.init(model="lenet", dataset="digits", seed=0, train_size=128, test_size=128)
    runs_before = len(exp.store.states())
    with pytest.raises(SpecError, match="another architecture"):
        exp.interpolate(lineage["dense"][0], other)
    assert len(exp.store.states()) == runs_before  # refused while planning: no run created
    with pytest.raises(SpecError, match="no BatchNorm"):
        exp.interpolate(lineage["dense"][0], lineage["dense"][1], bn_reset=True)


def test_cli_step_interpolate_takes_a_run_id_prefix(lineage):
    a, b = lineage["dense"]
    result = CliRunner().invoke(
        main, ["step", "interpolate", "--parent", a.run_id[:8], "-o", f"b={b.run_id[:8]}", "-o", "alphas=12"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == lineage["dense_lmc"].run_id  # the same state: cached
    assert "instability=" in result.output


def test_batchnorm_networks_recompute_statistics_along_the_path(experiment):
    root = experiment.init(
        model="resnet20", dataset="digits", seed=0, train_size=64, test_size=64, model_options={"width": 8}
    )
    a, b = experiment.spawn(root, {"epochs": 1, "lr": 0.05, "batch_size": 32}, copies=2)
    reset = experiment.interpolate(a, b, alphas=10)
    frozen = experiment.interpolate(a, b, alphas=10, bn_reset=False)
    assert curve(reset)["bn_reset"] is True and curve(reset)["bn_reset_batches"] == 1  # 64 examples, batch 128
    assert curve(frozen)["bn_reset"] is False and frozen.key != reset.key
    # without a reset the endpoints are the states themselves, exactly
    assert curve(frozen)["test"]["error"][0] == 1.0 - a.metrics["test_accuracy"]
    assert curve(frozen)["test"]["error"][-1] == 1.0 - b.metrics["test_accuracy"]
    # with it, every point (the ends too) carries the statistics of its own weights: the interior differs
    assert curve(reset)["test"]["loss"][1:-1] != curve(frozen)["test"]["loss"][1:-1]
    assert reset.metrics["instability"] >= 0.0


# ---- the preset, the report, the lineage page --------------------------------------------------


def _state_runs(uri: str, experiment_name: str):
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(experiment_name)
    return {
        r.info.run_id: r
        for r in client.search_runs([experiment.experiment_id], max_results=5000)
        if "mlprune.key" in r.data.tags and r.info.status == "FINISHED"
    }


@pytest.mark.slow
def test_lenet_preset_must_show(tracking, tmp_path, monkeypatch):
    """The issue's must-show on digits: interpolation states whose ends are the copies' own errors, ≥ 10
    points, instability ≥ 0; the report's instability figure; the lineage page with both parents."""
    from mlflow.server import app
    from mlflow.tracking._tracking_service.utils import _get_store

    from mlprune import lineage, mlflow_plugin
    from mlprune.registry import Registry
    from mlprune.report import sections, write_report

    # the workflow run and the report draw the instability section, the one this test reads (every section
    # on a workflow run: tests/test_lineage.py; in a report: tests/test_report.py)
    drawn = Registry("report section")
    drawn.add(sections.SECTIONS["instability"])
    monkeypatch.setattr(sections, "SECTIONS", drawn)

    params = ["-P", "rounds=1", "-P", "epochs=3", "-P", "train_size=256", "-P", "spawn_at=0it,1ep"]
    runner = CliRunner()
    first = runner.invoke(main, ["run", str(LENET_PRESET), *params, "-e", "lmc"])
    assert first.exit_code == 0, first.output
    assert "test_accuracy=nan" not in first.output  # the last *network* state is reported
    plan = compile_recipe(LENET_PRESET, {"rounds": 1, "epochs": 3, "train_size": 256, "spawn_at": "0it,1ep"})
    runs = _state_runs(tracking, "lmc")
    by_key = {r.data.tags["mlprune.key"]: r for r in runs.values()}
    assert {n.key for n in plan.nodes} == set(by_key)  # planned keys are the stored keys
    interpolations = [r for r in runs.values() if r.data.tags["mlprune.kind"] == "analysis"]
    assert len(interpolations) == 2 * 2
    store = Experiment("lmc").store
    for run in interpolations:
        a, b = runs[run.data.tags["mlprune.parent.a"]], runs[run.data.tags["mlprune.parent.b"]]
        result = json.loads(store.state_file(run.info.run_id, "interpolation.json"))
        assert len(result["alphas"]) >= 10
        assert result["test"]["error"][0] == 1.0 - a.data.metrics["test_accuracy"]
        assert result["test"]["error"][-1] == 1.0 - b.data.metrics["test_accuracy"]
        assert run.data.metrics["instability"] >= 0.0
        assert run.data.metrics["spawn_iteration"] in (0, 5)  # 1ep = 5 iterations of 256 examples, batch 60
    # the lineage page: every interpolation with its two parents
    routes = pytest.MonkeyPatch()
    routes.setattr(mlflow_plugin, "_store", lambda: _get_store(tracking))
    try:
        mlflow_plugin.add_lineage_routes(app)
        page = app.test_client().get(f"/mlprune/lineage/{store.experiment_id}").get_data(as_text=True)
    finally:
        routes.undo()
    for run in interpolations:
        child = run.info.run_id
        assert f'data-id="{child}"' in page
        for role in ("a", "b"):
            assert f"{role}: {run.data.tags[f'mlprune.parent.{role}']} -&gt; {child}" in page
    nodes, edges = lineage.lineage_graph(runs.values())
    assert all((r.data.tags["mlprune.parent.b"], r.info.run_id, "b") in edges for r in interpolations)
    # the report: instability vs spawn point per level, stable marked
    report = write_report("lmc", tmp_path / "report", warn=lambda message: None)
    kinds = [f["kind"] for f in report.figures]
    assert kinds.count("instability_vs_spawn") == 1
    table = report.numbers["instability_vs_spawn"]
    assert {(round(r["remaining"], 2), r["iteration"]) for r in table} == {(1.0, 0), (1.0, 5), (0.8, 0), (0.8, 5)}
    assert all(r["stable"] == (r["mean"] < 0.02) and r["n"] == 1 for r in table)
    html = (tmp_path / "report" / "report.html").read_text()
    assert "Instability vs spawn point" in html and ("unstable" in html or "stable" in html)
    # the workflow run carries the figure too, and running the recipe again would compute nothing
    client = MlflowClient(tracking_uri=tracking)
    workflow = next(
        r for r in client.search_runs([store.experiment_id]) if r.data.tags.get("mlprune.recipe") == "lmc_lenet_300_100"
    )
    assert "figures/instability_vs_spawn.png" in {
        f.path for f in client.list_artifacts(workflow.info.run_id, "figures")
    }
    from mlprune.executor import Execution

    assert Execution([plan], store).missing == []


@pytest.mark.slow
def test_processes_scheduler_computes_the_same_copies_and_instabilities(tracking):
    """Under dask (2 worker processes) copies and interpolations are tasks of their own; the result is
    bitwise what the synchronous scheduler computes."""
    # real `mlprune run` processes: in one process, a sync run_plans before a processes one leaves the latter's
    # states in the former's experiment, so each scheduler runs in a process of its own
    params = ["-P", "rounds=0", "-P", "epochs=2", "-P", "train_size=128", "-P", "spawn_at=0it,1ep"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "MLPRUNE_FIGURES": "0"}  # figures: tested elsewhere
    for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        env.pop(name, None)
    for name, scheduler in (
        ("sync", ["--scheduler", "sync"]),
        ("dask", ["--scheduler", "processes", "--workers", "2"]),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "mlprune", "run", str(LENET_PRESET), *params, "-e", name, *scheduler],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert "9 states: 9 computed, 0 reused" in result.stdout, result.stdout
    sync, dask = _state_runs(tracking, "sync"), _state_runs(tracking, "dask")
    sync_by_key = {r.data.tags["mlprune.key"]: r for r in sync.values()}
    dask_by_key = {r.data.tags["mlprune.key"]: r for r in dask.values()}
    assert set(sync_by_key) == set(dask_by_key) and len(sync_by_key) == 9  # root, train, train@1ep, 4 copies, 2
    assert sum("instability" in r.data.metrics for r in dask.values()) == 2
    for key, run in sync_by_key.items():
        other = dask_by_key[key]
        for tag in ("mlprune.sha256.weights.safetensors", "mlprune.sha256.interpolation.json"):
            assert run.data.tags.get(tag) == other.data.tags.get(tag), (run.info.run_name, tag)
        if "instability" in run.data.metrics:
            assert run.data.metrics["instability"] == other.data.metrics["instability"]


@pytest.mark.slow
def test_the_tutorial_runs(tracking, tmp_path):
    """docs/instability.md: its Python block runs as written."""
    text = (REPO / "docs" / "instability.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    namespace: dict = {}
    exec(compile("\n".join(blocks), "docs/instability.md", "exec"), namespace)  # noqa: S102 - our own docs
    assert namespace["flat"].metrics["instability"] == 0.0
