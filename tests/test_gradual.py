"""Gradual magnitude pruning inside one training (train option sparsity_schedule): Zhu & Gupta's schedule,
the final sparsity, masks enforced between pruning steps, prefix-consistency; learning-rate rewinding."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from mlprune import Recipe, SpecError
from mlprune.data import load_data
from mlprune.models import build_model, prunable
from mlprune.recipes import compile_recipe
from mlprune.spec.steps import resolve_train
from mlprune.training.loop import Callbacks, timeline, train

REPO = Path(__file__).resolve().parents[1]


def zhu_gupta(t: int, t0: int, n: int, dt: int, s_i: float, s_f: float) -> float:
    """Zhu & Gupta (2017), eq. 1: s_t = s_f + (s_i - s_f)(1 - (t - t0) / (n Δt))^3 for t in {t0, ..., t0 + nΔt}."""
    return s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3


def test_agp_schedule_is_zhu_and_gupta_cubic():
    options = resolve_train(
        {
            "epochs": 10,
            "batch_size": 32,
            "sparsity_schedule": {
                "kind": "agp",
                "initial": 0.1,
                "final": 0.9,
                "start": "1ep",
                "end": "8ep",
                "every": "5it",
            },
        }
    ).options
    line = timeline(options, per_epoch=10)  # start 10 it, end 80 it: n = 14 steps of 5
    assert line.gradual["steps"] == list(range(10, 81, 5))
    for t in line.gradual["steps"]:
        assert line.sparsity(t) == pytest.approx(zhu_gupta(t, 10, 14, 5, 0.1, 0.9), abs=1e-12)
    linear = timeline({**options, "sparsity_schedule": {**options["sparsity_schedule"], "kind": "linear"}}, 10)
    assert [linear.sparsity(t) for t in (10, 45, 80)] == pytest.approx([0.1, 0.5, 0.9])
    # a window that is not a multiple of `every` still ends at `end`, at the final sparsity
    odd = timeline({**options, "sparsity_schedule": {**options["sparsity_schedule"], "every": "30it"}}, 10)
    assert odd.gradual["steps"] == [10, 40, 70, 80] and odd.sparsity(80) == pytest.approx(0.9)


def test_sparsity_schedule_is_checked_and_leaves_other_keys_alone():
    plain = resolve_train({"epochs": 2}).options
    assert "sparsity_schedule" not in plain  # at its default: no key changes
    assert resolve_train({"epochs": 2, "sparsity_schedule": None}).options == plain
    with pytest.raises(SpecError, match="after the end of the training"):
        resolve_train({"epochs": 2, "sparsity_schedule": {"final": 0.8, "end": "3ep"}})
    with pytest.raises(SpecError, match="must be before end"):
        resolve_train({"epochs": 5, "sparsity_schedule": {"final": 0.8, "start": "3ep", "end": "2ep"}})
    with pytest.raises(SpecError, match="unknown sparsity_schedule kind 'cubic'"):
        resolve_train({"epochs": 5, "sparsity_schedule": {"kind": "cubic", "final": 0.8, "end": "2ep"}})
    with pytest.raises(SpecError, match="unknown sparsity_schedule option 'target'"):
        resolve_train({"epochs": 5, "sparsity_schedule": {"target": 0.8, "end": "2ep"}})
    with pytest.raises(SpecError, match="final must be a finite number >= 0 and < 1"):
        resolve_train({"epochs": 5, "sparsity_schedule": {"final": 1.0, "end": "2ep"}})
    # iterations vs epochs are compared once the data is known (before any run: validate uses timeline)
    options = resolve_train({"epochs": 2, "sparsity_schedule": {"final": 0.8, "end": "500it"}}).options
    with pytest.raises(SpecError, match="the window must be inside the training"):
        timeline(options, per_epoch=10)


SCHEDULE = {"kind": "agp", "final": 0.8, "start": "1ep", "end": "4ep", "every": "3it"}


def test_agp_final_0_8_ends_at_0_800_and_rises_every_epoch(experiment):
    root = experiment.init(model="lenet_300_100", dataset="digits", seed=0, train_size=256, test_size=64)
    state = root.apply(Recipe.train(epochs=5, lr=0.0012, optimizer="adam", batch_size=32, sparsity_schedule=SCHEDULE))
    assert state.metrics["sparsity"] == pytest.approx(0.8, abs=1e-3)
    for name, mask in state.masks.items():  # scope layer: every layer at 0.8
        assert state.metrics[f"sparsity.{name}"] == pytest.approx(0.8, abs=1e-3)
        assert bool((state.weights[name][~mask] == 0).all())  # the final state carries the mask
    history = sorted(experiment.store.client.get_metric_history(state.run_id, "train_sparsity"), key=lambda m: m.step)
    per_epoch = [m.value for m in history]
    assert [m.step for m in history] == [1, 2, 3, 4, 5]
    assert all(a <= b for a, b in zip(per_epoch, per_epoch[1:])) and per_epoch[0] < per_epoch[3]
    # each epoch ends at the sparsity of its last pruning step (8 iterations an epoch: window 8..32, Δt = 3)
    steps = list(range(8, 33, 3))  # t0 = 8, Δt = 3, n = 8: 8, 11, ..., 32
    for epoch, value in enumerate(per_epoch, start=1):
        last = max(t for t in steps if t <= 8 * epoch)
        expected = zhu_gupta(last, 8, 8, 3, 0.0, 0.8)
        # the per-layer rounding moves a layer by at most one weight from the formula
        assert value == pytest.approx(expected, abs=1e-3), (epoch, value, expected)
    print(f"\ntrain_sparsity per epoch: {[round(v, 4) for v in per_epoch]}; final {state.metrics['sparsity']:.4f}")


def _train(stop_at=None, schedule_from=None, start=None, scope="layer", optimizer="adam"):
    data = load_data("digits", train_size=256, test_size=64)
    model = build_model("lenet_300_100", num_classes=10, input_shape=tuple(data.input_shape), seed=3)
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if n in prunable(model)}
    if start is not None:
        model.load_state_dict(start[0])
        masks = {n: m.clone() for n, m in start[1].items()}
    raw = {
        "epochs": 5,
        "lr": 0.0012 if optimizer == "adam" else 0.05,
        "optimizer": optimizer,
        "batch_size": 32,
        "sparsity_schedule": {**SCHEDULE, "scope": scope},
    }
    if stop_at:
        raw["stop_at"] = stop_at
    if schedule_from:
        raw["schedule_from"] = schedule_from
    seen = {}
    history = train(
        model,
        masks,
        data,
        resolve_train(raw).options,
        seed=0,
        calls=Callbacks(
            checkpoints={
                17: lambda m, h: seen.update(
                    state=copy.deepcopy(m.state_dict()), masks={k: v.clone() for k, v in masks.items()}
                )
            }
        ),
    )
    return model.state_dict(), masks, history, seen


@pytest.mark.parametrize("scope, optimizer", [("layer", "adam"), ("global", "sgd")])
def test_gradual_pruning_is_prefix_consistent(scope, optimizer):
    """Stopped at 17 it (mid-window, right after a pruning step) = the full training's state at 17 it; resumed from
    there to the end = the full training, bit for bit with the masks (with plain SGD: a train step starts a fresh
    optimizer, so Adam's moments would start anew)."""
    full_weights, full_masks, _, seen = _train(scope=scope, optimizer=optimizer)
    short_weights, short_masks, _, _ = _train(stop_at="17it", scope=scope, optimizer=optimizer)
    for name in full_weights:
        assert torch.equal(short_weights[name], seen["state"][name]), name
    for name in full_masks:
        assert torch.equal(short_masks[name], seen["masks"][name]), name
    assert 0 < sum(int((~m).sum()) for m in short_masks.values()) < sum(int((~m).sum()) for m in full_masks.values())
    for name, mask in full_masks.items():  # pruned weights are exactly +0.0 (their optimizer state was cleared)
        assert bool((full_weights[name][~mask] == 0).all()) and not bool(torch.signbit(full_weights[name][~mask]).any())
    if optimizer != "sgd":
        return
    resumed_weights, resumed_masks, history, _ = _train(
        schedule_from="17it", start=(short_weights, short_masks), scope=scope, optimizer=optimizer
    )
    for name in full_weights:
        assert torch.equal(resumed_weights[name], full_weights[name]), name
    for name in full_masks:
        assert torch.equal(resumed_masks[name], full_masks[name]), name


# ---- learning-rate rewinding (Renda et al. 2020) --------------------------------------------------------

LR_REWIND = REPO / "recipes" / "lr_rewind_resnet20_cifar10.yaml"


def test_lr_rewind_preset_shares_openlth_resnet20_root_and_first_training():
    """The paper protocol's root and first training are OpenLTH's cifar_resnet_20, spelled out here: the lottery
    ticket preset with these options (lth_resnet20_cifar10) shares them, so the two compare on one trained network."""
    from mlprune.plan import PlanBuilder

    builder = PlanBuilder("openlth")
    root = builder.root(
        "root",
        {
            "model": "resnet20",
            "model_options": {"shortcut": "B"},
            "dataset": "cifar10",
            "init": "kaiming_normal",
            "bn_init": "uniform",
            "seed": 0,
        },
    )
    trained = builder.child(
        "train",
        root,
        [
            {
                "train": {
                    "epochs": 160,
                    "lr": 0.1,
                    "optimizer": "sgd",
                    "momentum": 0.9,
                    "weight_decay": 1e-4,
                    "batch_size": 128,
                    "lr_schedule": {"kind": "multistep", "milestones": ["80ep", "120ep"], "gamma": 0.1},
                }
            }
        ],
    )
    paper = compile_recipe(LR_REWIND, {"protocol": "paper"})
    assert paper.keys["root"] == root.key and paper.keys["train"] == trained.key
    prune = paper.node("prune1").steps[0]["prune"]
    assert (prune["method"], prune["amount"], prune["scope"], prune["exclude"]) == (
        "l1_unstructured",
        0.2,
        "global",
        ["@output"],
    )
    # LR rewinding: keep the pruned weights, replay the whole schedule (Renda et al.'s recommendation) ...
    reinit, retrain = paper.node("round1").steps
    assert reinit == {"reinit": {"strategy": "keep", "reset_optimizer": True}}
    assert retrain == paper.node("train").steps[0]
    # ... or from a point of it: only the schedule moves, not the weights
    late = compile_recipe(LR_REWIND, {"protocol": "paper", "rewind_lr_to": "120ep"})
    assert late.node("round1").steps[1]["train"]["schedule_from"] == "120ep"
    assert late.node("round1").inputs == {} and late.keys["prune1"] == paper.keys["prune1"]
    lth = REPO / "recipes" / "lth_resnet20_cifar10.yaml"
    if lth.exists():  # the lottery-ticket preset, when it is there
        for protocol in ({}, {"protocol": "paper"}):
            other = compile_recipe(lth, protocol)
            mine = compile_recipe(LR_REWIND, protocol)
            assert (other.keys["root"], other.keys["train"]) == (mine.keys["root"], mine.keys["train"])
        lmc = compile_recipe(REPO / "recipes" / "lmc_resnet20_cifar10.yaml", {"protocol": "paper"})
        assert lmc.keys["root"] == compile_recipe(lth, {"protocol": "paper"}).keys["root"]


def test_lr_rewinding_replays_the_schedule_from_its_point_on_the_pruned_weights(experiment):
    schedule = {"kind": "multistep", "milestones": ["2ep", "3ep"], "gamma": 0.1}
    train = dict(epochs=4, lr=0.05, optimizer="sgd", momentum=0.9, batch_size=32, lr_schedule=schedule)
    root = experiment.init(model="lenet_300_100", dataset="digits", seed=0, train_size=128, test_size=64)
    pruned = root.apply(Recipe.train(**train)).apply(Recipe.prune(method="l1_unstructured", amount=0.5, scope="global"))
    rewound = pruned.apply(Recipe.reinit(strategy="keep") + Recipe.train(**train, schedule_from="2ep"))
    client = experiment.store.client
    lr = sorted((m.step, m.value) for m in client.get_metric_history(rewound.run_id, "lr"))
    assert lr == [(3, pytest.approx(0.005)), (4, pytest.approx(0.0005))]  # epochs 3 and 4 of the schedule
    assert rewound.metrics["iterations"] == 2 * 4  # 128 examples / 32 = 4 an epoch
    assert all(torch.equal(rewound.masks[n], pruned.masks[n]) for n in pruned.masks)
    # it trained from the pruned network's final weights: the same retraining from a fresh init differs
    fresh = pruned.apply(Recipe.reinit(strategy="random", seed=1) + Recipe.train(**train, schedule_from="2ep"))
    assert rewound.parent.run_id == fresh.parent.run_id == pruned.run_id
    assert not torch.equal(rewound.weights["classifier.0.weight"], fresh.weights["classifier.0.weight"])
    with_keep = pruned.apply(Recipe.train(**train, schedule_from="2ep"))  # keep is a no-op on the weights
    assert all(torch.equal(with_keep.weights[n], rewound.weights[n]) for n in rewound.weights)


def test_the_docs_recipes_fragments_are_valid():
    """docs/pruning.md's gradual-pruning call is the one the tests run; its LR-rewinding lines are the preset's."""
    import re

    text = (REPO / "docs" / "pruning.md").read_text()
    assert '"kind": "agp", "final": 0.8, "start": "1ep", "end": "4ep", "every": "3it"' in text
    assert all(f'"{k}": {v!r}'.replace("'", '"') in text for k, v in SCHEDULE.items())
    preset = LR_REWIND.read_text()
    for line in re.findall(r"```yaml\n(reinit: \{strategy: keep\}\nretrain: .*?)\n```", text, re.S)[0].splitlines():
        assert line in preset
    recipe = (
        "train: {epochs: 10, lr: 0.1, sparsity_schedule: {kind: agp, final: 0.9, start: 1ep, end: 8ep, every: 100it}}"
    )
    assert "sparsity_schedule: {kind: agp, final: 0.9, start: 1ep, end: 8ep, every: 100it}" in text
    import yaml

    options = resolve_train(yaml.safe_load(recipe)["train"]).options
    assert options["sparsity_schedule"] == {
        "kind": "agp",
        "initial": 0.0,
        "final": 0.9,
        "start": "1ep",
        "end": "8ep",
        "every": "100it",
        "scope": "layer",
    }


def test_a_window_beyond_the_training_fails_before_any_run(tracking, tmp_path):
    """In iterations against a training in epochs: known once the data is; still refused before a run exists."""
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    from mlprune.cli import main

    recipe = tmp_path / "bad.yaml"
    recipe.write_text(
        "name: bad\nroot: {model: lenet_300_100, train_size: 64}\n"
        "train: {epochs: 1, batch_size: 32, sparsity_schedule: {final: 0.5, end: 10it}}\n"
    )
    result = CliRunner().invoke(main, ["run", str(recipe), "-e", "bad"])
    assert result.exit_code == 2, result.output
    assert "the window must be inside the training" in result.output and "Traceback" not in result.output
    client = MlflowClient()
    experiment = client.get_experiment_by_name("bad")
    assert experiment is None or not client.search_runs([experiment.experiment_id])
