"""Training like the papers: precision, schedules, iteration-exact training and rewinding, devices.

Every test trains for real on `digits` into a real MLflow store. Expected learning rates and the
"first training stopped at k iterations" are computed here, independently of mlprune's loop: from
the schedule's formula and with a hand-written SGD loop over the documented data order.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from mlprune import Experiment, Recipe

REPO = Path(__file__).resolve().parents[1]
TRAIN_SIZE = 256
BATCH = 32
PER_EPOCH = TRAIN_SIZE // BATCH  # 8 iterations per epoch


def history(tracking: str, run_id: str, metric: str) -> list[tuple[int, float]]:
    return [
        (m.step, m.value)
        for m in sorted(MlflowClient(tracking_uri=tracking).get_metric_history(run_id, metric), key=lambda m: m.step)
    ]


def expected_multistep_lr(base: float, i: int, milestones_it: list[int], gamma: float, warmup_it: int) -> float:
    """The LR of optimizer step i (0-based): linear warmup from 0 over `warmup_it` steps, times gamma per
    milestone passed (OpenLTH: a step at or after a milestone uses the decayed LR)."""
    warm = min(1.0, i / warmup_it) if warmup_it else 1.0
    drops = len([m for m in milestones_it if i >= m])
    return base * warm * gamma**drops


def test_bf16_nesterov_multistep_warmup_logs_the_schedule_and_the_device(experiment, tracking):
    root = experiment.init(model="lenet_300_100", dataset="digits", seed=0, train_size=TRAIN_SIZE)
    trained = root.apply(
        Recipe.train(
            steps=4,
            lr=0.1,
            momentum=0.9,
            nesterov=True,
            weight_decay=5e-4,
            batch_size=BATCH,
            precision="bf16",
            lr_schedule={"kind": "multistep", "milestones": [2, 3], "gamma": 0.1},
            warmup="10it",
        )
    )
    lrs = history(tracking, trained.run_id, "lr")
    # one value per epoch: the LR of the epoch's last iteration
    expected = [
        (epoch, expected_multistep_lr(0.1, epoch * PER_EPOCH - 1, [2 * PER_EPOCH, 3 * PER_EPOCH], 0.1, 10))
        for epoch in (1, 2, 3, 4)
    ]
    assert [e for e, _ in lrs] == [1, 2, 3, 4]
    for (_, got), (_, want) in zip(lrs, expected):
        assert got == pytest.approx(want, rel=1e-12)
    assert [round(v, 6) for _, v in lrs] == [0.07, 0.1, 0.01, 0.001]  # 7/10 of warmup, full, one drop, two
    run = MlflowClient(tracking_uri=tracking).get_run(trained.run_id)
    assert run.data.tags["mlprune.device"] == "cpu"
    assert run.data.params["train.precision"] == "bf16" and run.data.params["train.nesterov"] == "True"
    assert run.data.metrics["iterations"] == 4 * PER_EPOCH
    assert 0.0 < run.data.metrics["test_accuracy"] <= 1.0 and all(v == v for v in run.data.metrics.values())
    # bf16 autocast really ran: the same spec in fp32 gives other weights (a different key, too)
    fp32 = root.apply(
        Recipe.train(
            steps=4,
            lr=0.1,
            momentum=0.9,
            nesterov=True,
            weight_decay=5e-4,
            batch_size=BATCH,
            lr_schedule={"kind": "multistep", "milestones": [2, 3], "gamma": 0.1},
            warmup="10it",
        )
    )
    assert fp32.key != trained.key
    assert any(not torch.equal(fp32.weights[n], trained.weights[n]) for n in trained.weights)


def test_steps_in_iterations_train_exactly_that_many(experiment, tracking):
    root = experiment.init(model="lenet_300_100", dataset="digits", seed=0, train_size=TRAIN_SIZE)
    trained = root.apply(Recipe.train(steps="200it", lr=0.05, batch_size=BATCH))
    metrics = MlflowClient(tracking_uri=tracking).get_run(trained.run_id).data.metrics
    assert metrics["iterations"] == 200
    # 200 iterations of 8 per epoch: 25 whole epochs, the last one logged as epoch 25
    assert history(tracking, trained.run_id, "train_loss")[-1][0] == 25
    odd = root.apply(Recipe.train(steps="13it", lr=0.05, batch_size=BATCH))  # 1 epoch + 5 iterations
    assert MlflowClient(tracking_uri=tracking).get_run(odd.run_id).data.metrics["iterations"] == 13
    assert [e for e, _ in history(tracking, odd.run_id, "train_loss")] == [1, 2]


def _hand_trained(root_weights: dict, iterations: int, *, lr: float, momentum: float, warmup: int, seed: int):
    """The first training stopped after `iterations` steps, written from the documented protocol:
    SGD with momentum, LR = lr * min(1, i / warmup) at step i, the batches of `Data.train_batches`
    (epoch i // per_epoch, batch i mod per_epoch), the mean cross-entropy of each batch."""
    from mlprune.data import load_data
    from mlprune.models import build_model

    data = load_data("digits", train_size=TRAIN_SIZE)
    model = build_model("lenet_300_100", num_classes=10, input_shape=data.input_shape)
    model.load_state_dict(root_weights)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # states are computed with one torch thread (MLPRUNE_THREADS): the same float sums
    try:
        return _sgd_steps(model, optimizer, data, iterations, lr, warmup, seed)
    finally:
        torch.set_num_threads(threads)


def _sgd_steps(model, optimizer, data, iterations, lr, warmup, seed):
    i = 0
    for epoch in range(10**6):
        for x, y in data.train_batches(BATCH, seed=seed, epoch=epoch):
            for group in optimizer.param_groups:
                group["lr"] = lr * min(1.0, i / warmup)
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            i += 1
            if i == iterations:
                return {k: v.detach().clone() for k, v in model.state_dict().items()}


LATE_RECIPE = """
name: late
root: {model: lenet_300_100, dataset: digits, seed: 0, train_size: 256}
train: {steps: 3, lr: 0.05, momentum: 0.9, batch_size: 32, warmup: 10it}
rounds: 1
prune: {method: l1_unstructured, amount: 0.5, scope: global}
reinit: {strategy: rewind, to: root, at: $at}
params: {at: 20it}
"""


def test_rewind_at_iterations_is_the_first_training_stopped_there(experiment, tracking, tmp_path, monkeypatch):
    from mlprune.executor import run_plans
    from mlprune.recipes import compile_recipe
    from mlprune.training import loop

    recipe = tmp_path / "late.yaml"
    recipe.write_text(LATE_RECIPE)
    plan = compile_recipe(recipe)
    assert plan.keys["round1"] != compile_recipe(recipe, {"at": "0it"}).keys["round1"]
    # at 0it is the root itself: the keys of a plain rewind to the root
    plain = tmp_path / "plain.yaml"
    plain.write_text(LATE_RECIPE.replace(", at: $at", ""))
    assert compile_recipe(recipe, {"at": "0it"}).keys == compile_recipe(plain).keys
    point = plan.node("train@20it")
    assert point.emitted_by == "train" and plan.node("round1").inputs == {"weights": "train@20it"}

    trainings = []
    real_train = loop.train
    monkeypatch.setattr(loop, "train", lambda *a, **k: trainings.append(1) or real_train(*a, **k))
    states = run_plans([plan], experiment.store).states[0]
    # nothing is trained twice: the state at 20it was stored while the first training ran
    assert len(trainings) == 2
    root, source, late = (experiment.state(states[n]) for n in ("root", "train@20it", "round1"))
    assert late.parents()["weights"].run_id == source.run_id and source.spec["parent_run"] == root.run_id
    assert source.spec["steps"][0]["train"]["stop_at"] == "20it"

    # 1. bitwise the first training stopped after 20 iterations, computed independently here
    oracle = _hand_trained(root.weights, 20, lr=0.05, momentum=0.9, warmup=10, seed=0)
    for name, tensor in oracle.items():
        assert torch.equal(source.weights[name], tensor), (name, float((source.weights[name] - tensor).abs().max()))
    assert any(not torch.equal(source.weights[n], root.weights[n]) for n in oracle)  # 20 steps did move them
    # 2. the retrain continues the schedule (LR, warmup, data order) from 20it: 3 epochs of 8 minus 20
    late_metrics = MlflowClient(tracking_uri=tracking).get_run(late.run_id).data.metrics
    assert late_metrics["iterations"] == 3 * PER_EPOCH - 20
    assert late.spec["steps"][1]["train"]["schedule_from"] == "20it"
    assert [e for e, _ in history(tracking, late.run_id, "lr")] == [3]  # it ran in epoch 3 only
    # 3. a training stopped at 20it computed on its own, in another experiment, is bitwise the same state
    monkeypatch.setattr(loop, "train", real_train)
    alone = (
        Experiment("other")
        .init(model="lenet_300_100", dataset="digits", seed=0, train_size=TRAIN_SIZE)
        .apply(Recipe.train(steps=3, lr=0.05, momentum=0.9, batch_size=BATCH, warmup="10it", stop_at="20it"))
    )
    assert alone.key == source.key and alone.run_id != source.run_id
    for name in oracle:
        assert torch.equal(alone.weights[name], source.weights[name]), name


def _cli(args, env_extra, cwd):
    env = {**os.environ, **env_extra, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [sys.executable, "-m", "mlprune", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def _all_runs(tracking: str):
    client = MlflowClient(tracking_uri=tracking)
    return client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("how", ["env", "flag"])
def test_asking_for_cuda_without_cuda_is_one_line_and_creates_no_run(tracking, tmp_path, how):
    args = ["run", str(REPO / "recipes" / "lt_structuredL1.yaml"), "-P", "rounds=1", "-P", "epochs=1"]
    if how == "env":
        result = _cli(args, {"MLPRUNE_DEVICE": "cuda"}, tmp_path)
    else:
        result = _cli(args + ["--device", "cuda:1"], {}, tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cuda" in lines[0] and "not available" in lines[0] and "available: cpu" in lines[0]
    assert _all_runs(tracking) == []


# ---- the presets ----------------------------------------------------------------------------------

PRESETS = {
    "lth_resnet20_cifar10": ("resnet20", {"shortcut": "B"}, "500it"),
    "lth_vgg16_cifar10": ("vgg16", None, "1000it"),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("protocol", ["default", "paper", "late"])
def test_mlprune_validate_passes_on_the_presets(name, protocol):
    from click.testing import CliRunner

    from mlprune.cli import main

    result = CliRunner().invoke(
        main, ["validate", str(REPO / "recipes" / f"{name}.yaml"), "-P", f"protocol={protocol}"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{REPO / 'recipes' / name}.yaml: valid; ")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_the_paper_protocol_of_the_presets_is_openlths_defaults(name):
    """ResNet-20 / VGG-16 on CIFAR-10 as OpenLTH's default_hparams say (read from its models/cifar_*.py)."""
    from mlprune.recipes import compile_recipe

    model, model_options, late_at = PRESETS[name]
    for protocol in ("paper", "late"):
        plan = compile_recipe(REPO / "recipes" / f"{name}.yaml", {"protocol": protocol})
        root = plan.node("root").root
        assert (root["model"], root["dataset"], root["init"], root["bn_init"]) == (
            model,
            "cifar10",
            "kaiming_normal",
            "uniform",
        )
        assert root.get("model_options") == model_options  # resnet20: width 16 (the default), 1x1 shortcuts
        assert root["data"] == {}  # all of CIFAR-10, native size, standard augmentation
        train = plan.node("train").steps[0]["train"]
        assert train == {
            "epochs": 160,
            "lr": 0.1,
            "optimizer": "sgd",
            "momentum": 0.9,
            "weight_decay": 1e-4,
            "batch_size": 128,
            "seed": None,
            "lr_schedule": {"kind": "multistep", "milestones": ["80ep", "120ep"], "gamma": 0.1},
        }
        levels = [n for n in plan.nodes if n.role == "pruned"]
        assert len(levels) == 20
        for node in levels:
            prune = node.steps[0]["prune"]
            assert (prune["method"], prune["scope"], prune["amount"], prune["exclude"]) == (
                "l1_unstructured",
                "global",
                0.2,
                ["@output"],
            )
        rewound = plan.node("round1")
        assert rewound.steps[0]["reinit"]["strategy"] == "rewind"
        controls = {n.branch for n in plan.nodes if n.round == 1 and n.branch != "main"}
        assert controls == {"random", "shuffle"}
        if protocol == "paper":  # rewinding to iteration 0: the root itself, the full schedule again
            assert rewound.inputs == {"weights": "root"} and rewound.steps[1]["train"] == train
        else:  # late rewinding: the first training at that iteration, the schedule continued
            assert rewound.inputs == {"weights": f"train@{late_at}"}
            assert plan.node(f"train@{late_at}").emitted_by == "train"
            assert rewound.steps[1]["train"] == {**train, "schedule_from": late_at}
            assert plan.node("round1.shuffle").inputs == {"weights": f"train@{late_at}"}


# ---- BatchNorm ------------------------------------------------------------------------------------


def _bn_entries(state) -> list[str]:
    """The state_dict names of every BatchNorm layer of the state's model (affine parameters and buffers)."""
    return [
        f"{module}.{entry}"
        for module, layer in state.model().named_modules()
        if isinstance(layer, torch.nn.BatchNorm2d)
        for entry in layer.state_dict()
    ]


def test_batchnorm_of_a_pruned_resnet20_is_saved_restored_and_rewound_exactly(experiment, tracking):
    from mlprune.data import load_data
    from mlprune.training.loop import evaluate

    root = experiment.init(
        model="resnet20",
        model_options={"shortcut": "B"},
        dataset="digits",
        seed=0,
        init="kaiming_normal",
        bn_init="uniform",
        channels=3,
        train_size=TRAIN_SIZE,
        test_size=128,
    )
    first = dict(steps=2, lr=0.05, momentum=0.9, batch_size=BATCH)
    trained = root.apply(Recipe.train(**first))
    pruned = trained.apply(Recipe.prune(method="l1_unstructured", amount=0.5, scope="global", exclude=["@output"]))
    bn = _bn_entries(root)
    # 3 BN layers per stage-changing block, 2 per other block, 1 stem: 2*9 + 2 + 1 = 21 layers x 5 entries
    assert len(bn) == 21 * 5 and "layer2.0.shortcut.1.running_var" in bn
    assert not set(bn) & set(pruned.masks)  # BN parameters are never pruned
    # the uniform BN init: weights in [0, 1), not all equal; biases 0; running stats untouched
    for name in (n for n in bn if n.endswith(".weight")):
        gamma = root.weights[name]
        assert 0.0 <= float(gamma.min()) and float(gamma.max()) < 1.0 and gamma.unique().numel() == gamma.numel()
    assert float(root.weights["bn1.bias"].abs().max()) == 0.0 and torch.equal(
        root.weights["bn1.running_var"], torch.ones(16)
    )
    # training moved every BN entry (statistics, affine parameters, the batch counter) ...
    for name in bn:
        assert not torch.equal(trained.weights[name], root.weights[name]), name
    assert int(trained.weights["bn1.num_batches_tracked"]) == 2 * PER_EPOCH
    # ... pruning left them as trained, and a fresh store object reads them back bitwise
    fresh = Experiment(experiment_id=experiment.store.experiment_id)
    again = fresh.state(pruned.run_id).weights
    for name in bn:
        assert torch.equal(pruned.weights[name], trained.weights[name]), name
        assert torch.equal(again[name], trained.weights[name]) and again[name].dtype == trained.weights[name].dtype
    # the restored model (eval mode: the running statistics) gives the recorded test accuracy exactly
    model = fresh.state(pruned.run_id).model()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, again[name]), name
    data = load_data("digits", channels=3, train_size=TRAIN_SIZE, test_size=128)
    loss, accuracy = evaluate(model, data.test_batches(256))
    recorded = MlflowClient(tracking_uri=tracking).get_run(pruned.run_id).data.metrics
    assert (loss, accuracy) == (recorded["test_loss"], recorded["test_accuracy"])
    # rewinding restores BN parameters and buffers too: to the root (iteration 0) and to 5 iterations in
    for at, source in (("0it", root), ("5it", None)):
        rewound = pruned.apply(Recipe.reinit(strategy="rewind", to="root", at=at))
        source = source or rewound.parents()["weights"]
        if at == "5it":
            assert int(source.weights["bn1.num_batches_tracked"]) == 5
        for name in bn:
            assert torch.equal(rewound.weights[name], source.weights[name]), (at, name)
            assert not torch.equal(rewound.weights[name], trained.weights[name]), (at, name)


# ---- run options: recorded, never keyed -----------------------------------------------------------


def _params(tracking, run_id):
    return MlflowClient(tracking_uri=tracking).get_run(run_id).data.params


def test_run_options_from_the_command_line_are_recorded_and_change_no_key(tracking):
    from click.testing import CliRunner

    from mlprune.cli import main

    args = [
        "run",
        str(REPO / "recipes" / "lt_structuredL1.yaml"),
        "-P",
        "rounds=0",
        "-P",
        "epochs=1",
        "-P",
        "train_size=128",
        "--no-figures",
    ]
    plain = CliRunner().invoke(main, args + ["-e", "plain"], catch_exceptions=False)
    flagged = CliRunner().invoke(
        main,
        args + ["-e", "flagged", "--deterministic", "--channels-last", "--compile=false", "--device=cpu"],
        catch_exceptions=False,
    )
    assert plain.exit_code == 0 and flagged.exit_code == 0, plain.output + flagged.output
    bad = CliRunner().invoke(main, args + ["--deterministic=maybe"])
    assert bad.exit_code == 2 and "--deterministic must be true or false, got 'maybe'" in bad.output
    client = MlflowClient(tracking_uri=tracking)
    runs = {}
    for name in ("plain", "flagged"):
        experiment = client.get_experiment_by_name(name)
        found = client.search_runs([experiment.experiment_id], filter_string="tags.`mlprune.kind` = 'train'")
        assert len(found) == 1
        runs[name] = found[0]
    assert runs["plain"].data.tags["mlprune.key"] == runs["flagged"].data.tags["mlprune.key"]
    assert {k: runs["flagged"].data.params[k] for k in ("run.deterministic", "run.channels_last", "run.compile")} == {
        "run.deterministic": "True",
        "run.channels_last": "True",
        "run.compile": "False",
    }
    assert runs["plain"].data.params["run.deterministic"] == "False"


def test_deterministic_changes_no_bit_on_the_cpu_and_channels_last_only_noise(tracking):
    spec = dict(model="lenet", dataset="digits", seed=0, train_size=TRAIN_SIZE)
    train = Recipe.train(steps=2, lr=0.05, momentum=0.9, batch_size=BATCH)
    plain = Experiment("plain").init(**spec).apply(train)
    det = Experiment("det", deterministic=True).init(**spec).apply(train)
    last = Experiment("last", channels_last=True).init(**spec).apply(train)
    assert plain.key == det.key == last.key
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the state
    for name, tensor in plain.weights.items():
        assert torch.equal(det.weights[name], tensor), name
        assert last.weights[name].is_contiguous()  # stored in the plain layout
        assert torch.allclose(last.weights[name], tensor, rtol=1e-4, atol=1e-5), name
    assert _params(tracking, det.run_id)["run.deterministic"] == "True"
    assert _params(tracking, last.run_id)["run.channels_last"] == "True"


@pytest.mark.slow
def test_compile_trains_the_same_network_up_to_noise(tracking):
    spec = dict(model="lenet_300_100", dataset="digits", seed=0, train_size=TRAIN_SIZE)
    train = Recipe.train(steps="16it", lr=0.05, momentum=0.9, batch_size=BATCH)
    plain = Experiment("plain").init(**spec).apply(train)
    compiled = Experiment("compiled", compile=True).init(**spec).apply(train)
    assert compiled.key == plain.key and _params(tracking, compiled.run_id)["run.compile"] == "True"
    assert set(compiled.weights) == set(plain.weights)  # the model's own names, no _orig_mod.
    for name, tensor in plain.weights.items():
        assert torch.allclose(compiled.weights[name], tensor, rtol=1e-4, atol=1e-5), name
