"""Structured pruning that really shrinks the network: channel groups, coupled masks, the
compact network, its measured cost, the report figure and the export."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from mlprune import Experiment, Recipe, SpecError
from mlprune.models import build_model, prunable
from mlprune.pruning import compact as C
from mlprune.pruning import resolve_prune_step
from mlprune.pruning.structure import (
    apply_extra_masks,
    channel_groups,
    extra_masks,
    prune_coupled,
    removed_units,
    unread_units,
)
from mlprune.spec.keys import state_key

REPO = Path(__file__).resolve().parents[1]


def trained_bn(model, shape, seed=0):
    """Non-trivial BatchNorm statistics and affine parameters (so a wrong slice shows)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.copy_(torch.rand(module.weight.shape, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
            elif isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
    return model.eval()


def full_masks(model):
    return {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if n in prunable(model)}


def coupled(model, shape, step, seed=0):
    """(groups, masks, weights) of one coupled prune step on `model`: masked and extras zeroed."""
    groups = channel_groups(model, shape)
    weights = model.state_dict()
    masks = prune_coupled(
        weights,
        full_masks(model),
        prunable(model),
        {**step, "coupled": True},
        groups,
        generator=torch.Generator().manual_seed(seed),
    )
    weights = {n: (t * masks[n] if n in masks else t) for n, t in weights.items()}
    weights = apply_extra_masks(weights, extra_masks(groups, masks, {n: t.shape for n, t in weights.items()}))
    model.load_state_dict(weights)
    return groups, masks, weights


def surviving_count(model, masks, weights, groups):
    """The issue's count: unmasked weights plus the biases and BatchNorm parameters that survive."""
    extras = extra_masks(groups, masks, {n: t.shape for n, t in weights.items()})
    other = sum(
        int(extras[n].sum()) if n in extras else p.numel() for n, p in model.named_parameters() if n not in masks
    )
    return sum(int(m.sum()) for m in masks.values()) + other


# ---------------------------------------------------------------------------------- spec and keys


def test_coupled_is_in_the_key_only_when_true_and_needs_a_structured_method():
    plain = {"method": "ln_structured", "n": 1, "dim": 0, "amount": 0.5}
    assert resolve_prune_step({**plain, "coupled": False}) == resolve_prune_step(plain)
    assert "coupled" not in resolve_prune_step(plain)
    assert resolve_prune_step({**plain, "coupled": True})["coupled"] is True
    parent = "0" * 64
    assert state_key(parent, [{"prune": resolve_prune_step({**plain, "coupled": False})}], {}) == state_key(
        parent, [{"prune": resolve_prune_step(plain)}], {}
    )
    assert state_key(parent, [{"prune": resolve_prune_step({**plain, "coupled": True})}], {}) != state_key(
        parent, [{"prune": resolve_prune_step(plain)}], {}
    )
    with pytest.raises(SpecError, match=r"coupled pruning removes whole channels; method 'l1_unstructured'") as e:
        resolve_prune_step({"method": "l1_unstructured", "amount": 0.5, "coupled": True})
    assert "\n" not in str(e.value)
    with pytest.raises(SpecError, match="invalid coupled 'yes'; allowed: true or false"):
        resolve_prune_step({**plain, "coupled": "yes"})


def test_a_bad_coupled_recipe_fails_before_any_run(experiment, tracking):
    from mlflow.tracking import MlflowClient

    root = experiment.init(model="lenet", dataset="digits", seed=0, train_size=64)
    with pytest.raises(SpecError, match="coupled"):
        root.apply(Recipe.prune(method="l1_unstructured", amount=0.5, coupled=True))
    runs = MlflowClient(tracking_uri=tracking).search_runs([experiment.store.experiment_id])
    assert len(runs) == 1  # the root only


# ---------------------------------------------------------------------------------- channel groups


def test_resnet20_option_a_joins_the_residual_streams_of_all_stages():
    """He et al.'s option A pads stage s's channels into the middle of stage s+1 (width 16 -> 32: 8 zero
    channels, then the 16, then 8): channel j of stage 1 is channel 8+j of stage 2 and 24+j of stage 3."""
    model = build_model("resnet20", num_classes=10, input_shape=(3, 8, 8))
    groups = channel_groups(model, (3, 8, 8))
    residual = [g for g in groups if any(m.tensor == "layer1.0.conv2.weight" and m.role == "out" for m in g.members)]
    assert len(residual) == 1
    residual = residual[0]
    assert residual.units == 64 and residual.fixed is None

    def unit_of(tensor, channel):
        slot = next(m for m in residual.members if m.tensor == tensor and m.role == "out")
        return next(u for u, positions in enumerate(slot.positions) if channel in positions)

    for j in range(16):
        unit = unit_of("conv1.weight", j)
        assert unit_of("layer1.2.conv2.weight", j) == unit
        assert unit_of("layer2.0.conv2.weight", 8 + j) == unit
        assert unit_of("layer3.1.conv2.weight", 24 + j) == unit
    for j in list(range(8)) + list(range(24, 32)):  # stage 2's own channels run on into stage 3 only
        assert unit_of("layer2.1.conv2.weight", j) == unit_of("layer3.0.conv2.weight", 16 + j)
    # the inner channels of every block are a group of their own; the classes are never removed
    inner = [g for g in groups if g.name.endswith(".conv1") and g.name.startswith("layer")]
    assert sorted(g.units for g in inner) == [16] * 3 + [32] * 3 + [64] * 3
    assert next(g for g in groups if g.name == "fc").fixed


def test_option_a_shortcut_module_keeps_the_state_dict_and_the_outputs():
    """The shortcut became a parameter-free module: same state_dict names, same function as zero padding."""
    model = build_model("resnet20", num_classes=10, input_shape=(3, 8, 8), seed=1).eval()
    assert not any("shortcut" in name for name in model.state_dict())
    block = model.layer2[0]
    x = torch.randn(2, 16, 8, 8)
    expected = nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8))
    assert torch.equal(block.shortcut(x), expected)


# ---------------------------------------------------------------------------------- coupled masks


def test_coupled_dim0_on_a_chain_is_the_paper_rule_extended_to_what_the_channel_feeds():
    """Oracle from the formula: LeNet's conv1 loses the round(0.5 * 6) = 3 filters of smallest L1 norm;
    coupling also masks conv2's input slices of those channels and zeroes conv1's bias entries."""
    model = trained_bn(build_model("lenet", num_classes=10, input_shape=(1, 28, 28), seed=3), (1, 28, 28))
    w = model.state_dict()["features.0.weight"].clone()
    groups, masks, weights = coupled(
        model,
        (1, 28, 28),
        {"method": "ln_structured", "n": 1, "dim": 0, "amount": 0.5, "include": ["features.0.weight"]},
    )
    norms = w.abs().sum(dim=(1, 2, 3))
    gone = set(torch.argsort(norms)[:3].tolist())
    kept_rows = masks["features.0.weight"].reshape(6, -1).all(dim=1)
    assert {i for i in range(6) if not kept_rows[i]} == gone
    assert all(bool(masks["features.0.weight"][i].any()) == (i not in gone) for i in range(6))
    for i in range(6):
        assert bool(masks["features.3.weight"][:, i].any()) == (i not in gone)
        assert (weights["features.0.bias"][i] == 0) == (i in gone)
    # other layers untouched
    assert all(bool(m.all()) for n, m in masks.items() if n not in ("features.0.weight", "features.3.weight"))


def test_coupled_dim1_after_a_flatten_removes_whole_channels_backwards():
    """fc1 reads conv2's 16 channels as 16 x 4 x 4 features: dim 1 removes a channel's 16 features
    together, and the conv2 filter (and bias) that produced it."""
    model = trained_bn(build_model("lenet", num_classes=10, input_shape=(1, 28, 28), seed=2), (1, 28, 28))
    fc = model.state_dict()["classifier.0.weight"].clone()
    groups, masks, weights = coupled(
        model,
        (1, 28, 28),
        {"method": "ln_structured", "n": 2, "dim": 1, "amount": 0.25, "include": ["classifier.0.weight"]},
    )
    norms = fc.reshape(120, 16, 16).pow(2).sum(dim=(0, 2)).sqrt()  # channel c = features 16c .. 16c+15
    gone = set(torch.argsort(norms)[:4].tolist())
    for c in range(16):
        assert bool(masks["classifier.0.weight"][:, 16 * c : 16 * c + 16].any()) == (c not in gone)
        assert bool(masks["features.3.weight"][c].any()) == (c not in gone)
        assert (weights["features.3.bias"][c] == 0) == (c in gone)


def test_a_residual_group_loses_its_channels_together_ranked_by_weight_per_entry():
    """Oracle for the residual group of ResNet-20 (option A): a unit is stage-1 channel j together with
    stage-2 channel 8+j and stage-3 channel 24+j (or a later stage's own channel); its score is the
    mean |w| over every conv filter writing it; the round(0.5 * 64) = 32 lowest go."""
    model = trained_bn(build_model("resnet20", num_classes=10, input_shape=(3, 8, 8), seed=5), (3, 8, 8))
    state = {n: t.clone() for n, t in model.state_dict().items()}
    writers = {
        1: ["conv1.weight"] + [f"layer1.{b}.conv2.weight" for b in range(3)],
        2: [f"layer2.{b}.conv2.weight" for b in range(3)],
        3: [f"layer3.{b}.conv2.weight" for b in range(3)],
    }
    units = []  # each: {stage: channel}
    units += [{1: j, 2: 8 + j, 3: 24 + j} for j in range(16)]
    units += [{2: j, 3: 16 + j} for j in list(range(8)) + list(range(24, 32))]
    units += [{3: j} for j in list(range(16)) + list(range(48, 64))]

    def score(unit):
        rows = [state[name][channel].abs().reshape(-1) for stage, channel in unit.items() for name in writers[stage]]
        return float(torch.cat(rows).mean())

    ranked = sorted(range(64), key=lambda u: score(units[u]))
    expected_gone = {tuple(sorted(units[u].items())) for u in ranked[:32]}
    residual = [name for names in writers.values() for name in names]
    groups, masks, weights = coupled(
        model, (3, 8, 8), {"method": "ln_structured", "n": 1, "dim": 0, "amount": 0.5, "include": residual}
    )
    got_gone = {
        tuple(sorted(u.items()))
        for u in units
        if not any(bool(masks[name][ch].any()) for st, ch in u.items() for name in writers[st])
    }
    assert got_gone == expected_gone
    # a removed unit is removed everywhere: filters, BN entries, the readers' input slices, the fc column
    for unit in units:
        stage, channel = max(unit.items())
        gone = tuple(sorted(unit.items())) in expected_gone
        assert bool(masks["fc.weight"][:, channel].any()) != gone if stage == 3 else True
        for st, ch in unit.items():
            assert bool(masks[f"layer{st}.1.conv1.weight"][:, ch].any()) != gone
            assert (weights[f"layer{st}.1.bn2.bias"][ch] == 0) == gone


def test_layers_of_one_group_must_agree():
    model = build_model("resnet20", num_classes=10, input_shape=(3, 8, 8))
    step = {
        "method": "ln_structured",
        "n": 1,
        "dim": 0,
        "amount": 0.5,
        "layers": {"layer1.0.conv2.weight": {"amount": 0.25}},
    }
    with pytest.raises(SpecError, match="remove channels of one group .* with different settings"):
        coupled(model, (3, 8, 8), step)


def test_random_coupled_pruning_is_seeded():
    model = build_model("conv2", num_classes=10, input_shape=(3, 8, 8))
    step = {"method": "random_structured", "dim": 0, "amount": 0.3}
    a = coupled(model, (3, 8, 8), step, seed=7)[1]
    b = coupled(build_model("conv2", num_classes=10, input_shape=(3, 8, 8)), (3, 8, 8), step, seed=7)[1]
    c = coupled(build_model("conv2", num_classes=10, input_shape=(3, 8, 8)), (3, 8, 8), step, seed=8)[1]
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)


# ---------------------------------------------------------------------------------- the compact network

CASES = [
    ("lenet", (1, 28, 28), None),
    ("conv2", (3, 8, 8), None),
    ("conv4", (3, 8, 8), None),
    ("resnet20", (3, 8, 8), None),
    ("resnet20", (3, 8, 8), {"shortcut": "B"}),
    ("conv6", (3, 8, 8), None),
    pytest.param("vgg11", (3, 32, 32), None, marks=pytest.mark.slow),
    pytest.param("vgg16", (3, 32, 32), None, marks=pytest.mark.slow),
    pytest.param("tv:resnet18", (3, 32, 32), None, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name,shape,options", CASES)
@pytest.mark.parametrize("dim", [0, 1])
def test_compact_network_equals_the_masked_one_and_holds_exactly_the_survivors(name, shape, options, dim, tmp_path):
    model = trained_bn(build_model(name, num_classes=10, input_shape=shape, options=options, seed=1), shape)
    dense_params = C.parameter_count(model)
    groups, masks, weights = coupled(model, shape, {"method": "random_structured", "dim": dim, "amount": 0.4})
    compact = C.compact_state(
        model, weights, masks, groups, model_name=name, model_options=options, num_classes=10, input_shape=shape
    )
    assert compact.shrunk
    C.write(tmp_path, compact)
    arch = json.loads((tmp_path / "compact.json").read_text())  # plain JSON: nothing to execute
    assert arch["format"] == "mlprune.compact/1" and arch["model"] == name
    small = C.load(tmp_path)
    x = torch.randn(16, *shape, generator=torch.Generator().manual_seed(0))
    assert C.max_abs_diff(model, small, x) <= 1e-5
    count = C.parameter_count(small)
    assert count == surviving_count(model, masks, weights, groups) < dense_params
    for group in groups:  # coupled masks: what is removed is exactly what nothing reads
        assert removed_units(group, masks) == unread_units(group, masks)


def test_naive_per_layer_channel_removal_breaks_a_residual_network_and_coupled_removal_does_not():
    """ResNet-20 (residual additions, BatchNorm) with each conv's own weakest half of output channels
    removed, as per-layer masks say (plain ln_structured, dim 0): a block's output and its shortcut no
    longer have the same channels, and the addition fails. The coupled masks compact to a working
    network whose outputs equal the masked one's."""
    shape = (3, 8, 8)
    model = trained_bn(build_model("resnet20", num_classes=10, input_shape=shape, seed=4), shape)
    from mlprune.pruning import prune_masks

    kinds = prunable(model)
    per_layer = prune_masks(
        model.state_dict(),
        full_masks(model),
        kinds,
        {"method": "ln_structured", "n": 1, "dim": 0, "amount": 0.5, "exclude": ["fc.weight"]},
        generator=torch.Generator().manual_seed(0),
    )
    # naive removal: every conv drops its own masked filters and its BN entries; the next conv in the
    # module order drops the same inputs (what a per-layer tool does without the dependency graph)
    convs = [n[: -len(".weight")] for n in kinds if n != "fc.weight"]
    kept = {c: per_layer[f"{c}.weight"].reshape(per_layer[f"{c}.weight"].shape[0], -1).any(dim=1) for c in convs}
    naive = build_model("resnet20", num_classes=10, input_shape=shape, seed=4)
    modules = dict(naive.named_modules())
    previous = None
    for conv in convs:
        layer = modules[conv]
        out_keep = kept[conv].nonzero().squeeze(1)
        in_keep = kept[previous].nonzero().squeeze(1) if previous else torch.arange(layer.in_channels)
        layer.weight = nn.Parameter(layer.weight.detach()[out_keep][:, in_keep])
        layer.out_channels, layer.in_channels = len(out_keep), len(in_keep)
        bn = modules[conv.replace("conv", "bn")]
        bn.num_features = len(out_keep)
        bn.weight, bn.bias = nn.Parameter(bn.weight.detach()[out_keep]), nn.Parameter(bn.bias.detach()[out_keep])
        bn.running_mean, bn.running_var = bn.running_mean[out_keep], bn.running_var[out_keep]
        previous = conv
    with pytest.raises(RuntimeError, match="must match the size"):
        naive.eval()(torch.zeros(1, *shape))

    groups, masks, weights = coupled(model, shape, {"method": "ln_structured", "n": 1, "dim": 0, "amount": 0.5})
    compact = C.compact_state(
        model, weights, masks, groups, model_name="resnet20", model_options=None, num_classes=10, input_shape=shape
    )
    small = C.rebuild(compact.arch, compact.weights)
    x = torch.randn(8, *shape, generator=torch.Generator().manual_seed(1))
    assert C.max_abs_diff(model, small, x) <= 1e-5
    assert C.parameter_count(small) == surviving_count(model, masks, weights, groups)
    for group in groups:  # half of every residual and inner group is gone
        if not group.fixed:
            assert len(removed_units(group, masks)) == round(0.5 * group.units)


def test_rebuild_refuses_what_it_cannot_read(tmp_path):
    with pytest.raises(SpecError, match="compact.json is missing"):
        C.load(tmp_path)
    (tmp_path / "compact.json").write_text(json.dumps({"format": "something else"}))
    (tmp_path / "compact.safetensors").write_bytes(b"")
    with pytest.raises(SpecError, match="not a compact architecture"):
        C.load(tmp_path)


def test_latency_is_the_median_of_interleaved_timed_passes():
    calls = []

    class Counting(nn.Module):
        def __init__(self, label):
            super().__init__()
            self.label = label

        def forward(self, x):
            calls.append((self.label, x.shape[0]))
            return x

    times = C.latency_ms(
        {"a": Counting("a"), "b": Counting("b")}, (1, 2, 2), "cpu", batch_sizes=(1, 4), warmup=2, repeats=3
    )
    assert set(times) == {"a", "b"} and set(times["a"]) == {1, 4}
    assert all(t >= 0 for per in times.values() for t in per.values())
    batch1 = [label for label, batch in calls if batch == 1]
    assert batch1 == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b"]  # 5 rounds, order alternating


def test_latency_of_a_slow_network_stops_at_its_time_budget():
    """A network whose pass eats the budget is warmed up once and timed the minimum number of rounds."""
    import time as clock

    calls = []

    class Slow(nn.Module):
        def forward(self, x):
            calls.append(x.shape[0])
            clock.sleep(0.03)
            return x

    times = C.latency_ms(
        {"a": Slow(), "b": Slow()},
        (1, 2, 2),
        "cpu",
        batch_sizes=(1,),
        warmup=3,
        repeats=15,
        budget_s=0.05,
        min_repeats=3,
    )
    assert times["a"][1] >= 30.0
    assert len(calls) == 2 * (1 + 3)  # one warm-up round (its first pass took over budget / 4), then 3 timed


# ---------------------------------------------------------------------------------- states in the store


def test_removed_channels_stay_exactly_zero_through_training_and_rewinding(experiment):
    root = experiment.init(model="resnet20", dataset="digits", seed=0, train_size=128)
    trained = root.apply(Recipe.train(epochs=1))
    pruned = trained.apply(Recipe.prune(method="ln_structured", n=1, dim=0, amount=0.5, coupled=True))
    tuned = pruned.apply(Recipe.train(epochs=1, momentum=0.9, weight_decay=1e-3, optimizer="sgd"))
    rewound = pruned.apply(
        Recipe.reinit(strategy="rewind", to="root")
        + Recipe.train(epochs=1, optimizer="adamw", weight_decay=0.1, lr=1e-3)
    )
    model = build_model("resnet20", num_classes=10, input_shape=(1, 8, 8))
    groups = channel_groups(model, (1, 8, 8))
    for state in (pruned, tuned, rewound):
        weights, masks = state.weights, state.masks
        extras = extra_masks(groups, masks, {n: t.shape for n, t in weights.items()})
        assert {n.rsplit(".", 1)[1] for n in extras} == {"weight", "bias", "running_mean", "running_var"}
        for name, mask in {**masks, **extras}.items():
            assert torch.all(weights[name][~mask] == 0), (state.kind, name)
    # the masks are the pruned state's: training neither revived nor added anything
    assert all(torch.equal(tuned.masks[n], pruned.masks[n]) for n in pruned.masks)
    assert tuned.metrics["compact_max_abs_diff"] <= 1e-5
    assert tuned.metrics["params_compact"] == pruned.metrics["params_compact"]


def test_structured_states_log_their_compact_cost_and_unstructured_ones_no_speedup(experiment):
    root = experiment.init(model="lenet", dataset="digits", seed=0, train_size=128)
    trained = root.apply(Recipe.train(epochs=1))
    structured = trained.apply(Recipe.prune(method="ln_structured", n=1, dim=0, amount=0.5, coupled=True))
    unstructured = trained.apply(Recipe.prune(method="l1_unstructured", amount=0.5))
    m = structured.metrics
    for name in (
        "params_compact",
        "flops_compact",
        "latency_ms",
        "latency_ms.batch1",
        "latency_ms.dense",
        "latency_ms.dense.batch1",
        "speedup",
        "speedup.batch1",
        "compact_max_abs_diff",
    ):
        assert name in m and math.isfinite(m[name]) and m[name] >= 0, name
    assert m["speedup"] == pytest.approx(m["latency_ms.dense"] / m["latency_ms"])
    assert m["flops_compact"] == m["flops_masked"] < m["flops_dense"]  # coupled: the compact network does
    assert m["compact_max_abs_diff"] <= 1e-5  # exactly the unmasked multiply-adds
    u = unstructured.metrics
    assert not any(k.startswith(("latency_ms", "speedup", "params_compact", "flops_compact")) for k in u)
    assert u["flops_masked"] < u["flops_dense"] and "theoretical_speedup" in u
    assert not any(k.startswith(("latency_ms", "speedup")) for k in trained.metrics)


# ---------------------------------------------------------------------------------- the must-shows, end to end


def _oracle_count(weights, masks):
    """Unmasked weights, plus each bias / BatchNorm (weight, bias) entry whose channel still has a kept
    filter: by the layer names (convK -> bnK, shortcut.0 -> shortcut.1), independently of the tracer."""
    alive = {name[: -len(".weight")]: mask.reshape(mask.shape[0], -1).any(dim=1) for name, mask in masks.items()}
    count = sum(int(m.sum()) for m in masks.values())
    for name in weights:
        module, _, tensor = name.rpartition(".")
        if name in masks or tensor in ("running_mean", "running_var", "num_batches_tracked"):
            continue
        if module in alive:  # a conv / linear bias
            count += int(alive[module].sum())
            continue
        writer = (
            re.sub(r"bn(\d)$", r"conv\1", module)
            if re.search(r"bn\d$", module)
            else re.sub(r"shortcut\.1$", "shortcut.0", module)
        )
        count += int(alive[writer].sum())
    return count


def _test_batch(state):
    from mlprune.workspace import Workspace

    workspace = Workspace()
    data = workspace.data(state.spec["root"], None)
    return next(iter(data.test_batches(64)))[0]


def _run(runner, *args):
    from mlprune.cli import main

    result = runner.invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_lt_structured_l1_on_lenet_exports_a_compact_network_with_the_masked_outputs(tracking, tmp_path):
    """The seed's lt_structuredL1 (keys unchanged: dim 1, not coupled) and its coupled variant: the compact
    export gives the masked model's outputs; coupled, it holds exactly the unmasked weights and the
    surviving biases; uncoupled it holds fewer (filters whose outputs nothing reads go too)."""
    from click.testing import CliRunner

    runner = CliRunner()
    for recipe in ("lt_structuredL1", "lt_structuredL1_coupled"):
        _run(
            runner,
            "run",
            str(REPO / "recipes" / f"{recipe}.yaml"),
            "-P",
            "rounds=1",
            "-P",
            "epochs=1",
            "-P",
            "train_size=128",
            "-e",
            "lenet-structured",
        )
    exp = Experiment("lenet-structured")
    rounds = {s.spec["kind"]: s for s in exp.states()}
    ticket = {}
    for state in exp.states():
        steps = [next(iter(step)) for step in state.spec.get("steps", [])]
        prune = next((s for s in exp.states() if s.run_id == state.spec.get("parent_run")), None)
        if steps == ["reinit", "train"] and prune is not None:
            ticket[bool(prune.spec["steps"][0]["prune"].get("coupled"))] = state
    assert set(ticket) == {False, True} and rounds
    for coupled_, state in ticket.items():
        out = tmp_path / f"compact-{coupled_}"
        printed = _run(runner, "export", state.run_id[:8], str(out), "--compact")
        assert "compact.safetensors, compact.json" in printed and "max |compact - masked|" in printed
        small = C.load(out)
        masked = state.model().eval()
        x = _test_batch(state)
        assert C.max_abs_diff(masked, small, x) <= 1e-5
        count = C.parameter_count(small)
        oracle = _oracle_count(state.weights, state.masks)
        assert count == oracle if coupled_ else count < oracle
        assert count == state.metrics["params_compact"]


@pytest.mark.slow
def test_resnet20_half_of_every_residual_group_is_faster_and_in_the_report(tracking, tmp_path, monkeypatch):
    """compact_resnet20: 50% of the output channels of every channel group (residual groups together),
    then fine-tuning. Measured speedup > 1 on this machine's CPU, the compact export gives the masked
    outputs with exactly the surviving parameters, and the report draws accuracy vs measured speedup
    (an unstructured recipe beside it is said to have none)."""
    from click.testing import CliRunner

    runner = CliRunner()
    _run(
        runner,
        "run",
        str(REPO / "recipes" / "compact_resnet20.yaml"),
        "-P",
        "train_size=256",
        "-P",
        "epochs=1",
        "-e",
        "compact",
    )
    _run(
        runner,
        "run",
        str(REPO / "recipes" / "lt_unstructuredrandom.yaml"),
        "-P",
        "rounds=1",
        "-P",
        "epochs=1",
        "-P",
        "train_size=64",
        "-e",
        "compact",
    )
    exp = Experiment("compact")
    tuned = next(
        s
        for s in exp.states()
        if s.spec["root"]["model"] == "resnet20"
        and [next(iter(x)) for x in s.spec.get("steps", [])] == ["reinit", "train"]
    )
    groups = channel_groups(build_model("resnet20", num_classes=10, input_shape=(1, 8, 8)), (1, 8, 8))
    for group in groups:
        if not group.fixed:
            assert len(removed_units(group, tuned.masks)) == round(0.5 * group.units), group.name
    metrics = tuned.metrics
    assert metrics["speedup"] > 1, metrics
    assert metrics["flops_compact"] < metrics["flops_dense"]
    out = tmp_path / "small"
    _run(runner, "export", tuned.run_id[:8], str(out), "--compact")
    small = C.load(out)
    assert C.max_abs_diff(tuned.model().eval(), small, _test_batch(tuned)) <= 1e-5
    assert C.parameter_count(small) == _oracle_count(tuned.weights, tuned.masks) == metrics["params_compact"]

    # the report's own sections, less the per-layer weight and similarity figures: for ResNet-20's 21 convs
    # they take minutes here and show nothing about speed
    from mlprune.registry import Registry
    from mlprune.report import sections as report_sections

    sections = Registry("report section")
    for name in ("accuracy", "speedup", "states"):
        sections.add(report_sections.SECTIONS[name])
    monkeypatch.setattr(report_sections, "SECTIONS", sections)
    _run(runner, "report", "compact", str(tmp_path / "report"))
    numbers = json.loads((tmp_path / "report" / "numbers.json").read_text())
    rows = numbers["accuracy_vs_speedup"]
    assert [r["round"] for r in rows if r["recipe"].startswith("compact_resnet20")] == [0, 1]
    assert next(r for r in rows if r["round"] == 1)["speedup"] == pytest.approx(metrics["speedup"])
    page = (tmp_path / "report" / "report.html").read_text()
    assert 'data-kind="accuracy_vs_speedup"' in page and 'data-kind="accuracy_vs_remaining"' in page
    assert page.index('data-kind="accuracy_vs_remaining"') < page.index('data-kind="accuracy_vs_speedup"')
    assert "No measured speedup for lt_unstructuredrandom" in page
    # an unstructured state exports its network as it is, and says so
    unstructured = next(s for s in exp.states() if s.spec["root"]["model"] == "lenet" and s.kind == "prune")
    printed = _run(runner, "export", unstructured.run_id[:8], str(tmp_path / "u"), "--compact")
    assert "no channel is removed" in printed and "no dense speedup" in printed


@pytest.mark.parametrize(
    "text, expected", [("", 2.0), ("0", 0.0), ("0.5", 0.5), ("abc", None), ("-1", None), ("inf", None), ("nan", None)]
)
def test_the_latency_budget_comes_from_the_environment_or_is_one_line(monkeypatch, text, expected):
    from mlprune.errors import SpecError
    from mlprune.spec.limits import latency_budget

    monkeypatch.setenv("MLPRUNE_LATENCY_BUDGET", text)
    if expected is None:
        with pytest.raises(SpecError, match="MLPRUNE_LATENCY_BUDGET must be seconds between 0 and 3600, got"):
            latency_budget()
    else:
        assert latency_budget() == expected
