"""The methods the field compares against, each checked against its paper's formula computed here:
layer budgets (ERK with saturated layers, uniform+), LAMP, N:M, FPGM, Taylor, BN-scale, and dynamic
sparse training (SET / RigL: one mask update, constant sparsity, exact zeros, repeatability)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from mlprune import SpecError
from mlprune.pruning import prune_masks, resolve_prune_step
from mlprune.pruning.budgets import erk_densities, uniform_plus_densities
from mlprune.pruning.masks import compute_mask
from mlprune.pruning.scores import ScoringData, network_scores

# a small network's prunable weights: a conv that saturates under ERK, a large fc, a small output layer
SHAPES = {"conv1.weight": (6, 1, 3, 3), "conv2.weight": (8, 6, 3, 3), "fc1.weight": (64, 128), "fc2.weight": (10, 64)}
KINDS = {"conv1.weight": "conv", "conv2.weight": "conv", "fc1.weight": "linear", "fc2.weight": "linear"}


def _weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=g) for name, shape in SHAPES.items()}


def _full(weights):
    return {name: torch.ones_like(w, dtype=torch.bool) for name, w in weights.items()}


def erk_by_bisection(shapes, density):
    """Evci et al. 2020: density_l = min(1, ε (Σ shape / Π shape)), ε such that the layers keep `density`
    of all weights; ε found by bisection on the (monotone) kept count, independent of the module's loop."""
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: sum(s) / math.prod(s) for n, s in shapes.items()}
    target = density * sum(sizes.values())
    lo, hi = 0.0, 1e9
    for _ in range(300):
        mid = (lo + hi) / 2
        kept = sum(min(1.0, mid * raw[n]) * sizes[n] for n in shapes)
        lo, hi = (mid, hi) if kept < target else (lo, mid)
    return {n: min(1.0, lo * raw[n]) for n in shapes}


def test_erk_densities_are_the_papers_with_saturated_layers_dense_and_the_rest_rescaled():
    expected = erk_by_bisection(SHAPES, 0.3)
    got = erk_densities(SHAPES, 0.3)
    assert got == pytest.approx(expected, rel=1e-9)
    assert got["conv1.weight"] == 1.0 and got["fc1.weight"] < 0.3  # the small conv saturates
    total = sum(math.prod(s) for s in SHAPES.values())
    assert sum(got[n] * math.prod(s) for n, s in SHAPES.items()) == pytest.approx(0.3 * total)
    # no saturation: ε · p exactly, in proportion to Σ shape / Π shape
    low = erk_densities(SHAPES, 0.02)
    ratio = {n: low[n] / (sum(s) / math.prod(s)) for n, s in SHAPES.items()}
    assert max(ratio.values()) == pytest.approx(min(ratio.values()), rel=1e-12)


def test_erk_and_uniform_plus_prune_each_layer_to_its_budget_by_magnitude():
    weights = _weights()
    total = sum(math.prod(s) for s in SHAPES.values())
    density = (total - round(0.7 * total)) / total  # amount 0.7 of what remains: the pool keeps the rest
    for distribution, densities in (
        ("erk", erk_by_bisection(SHAPES, density)),
        ("uniform_plus", {"conv1.weight": 1.0, "conv2.weight": density, "fc1.weight": density, "fc2.weight": density}),
    ):
        step = {"method": "l1_unstructured", "amount": 0.7, "distribution": distribution}
        masks = prune_masks(weights, _full(weights), KINDS, step, generator=None)
        kept_total = 0
        for name, w in weights.items():
            keep = max(1, round(densities[name] * w.numel()))
            assert int(masks[name].sum()) == keep, (distribution, name)
            # the largest |w| of the layer stay
            threshold = w.abs().reshape(-1).sort(descending=True).values[keep - 1]
            assert bool((w.abs()[masks[name]] >= threshold).all())
            kept_total += keep
        if distribution == "erk":  # ERK keeps the pool's target (up to each layer's rounding)
            assert abs(kept_total - (total - round(0.7 * total))) <= len(SHAPES)
    # uniform+ caps the output layer at 80 % sparsity
    strong = prune_masks(
        weights,
        _full(weights),
        KINDS,
        {"method": "l1_unstructured", "amount": 0.95, "distribution": "uniform_plus"},
        generator=None,
    )
    assert int(strong["fc2.weight"].sum()) == round(0.2 * 640) and bool(strong["conv1.weight"].all())
    assert int(strong["fc1.weight"].sum()) == round(0.05 * 64 * 128)
    assert uniform_plus_densities(SHAPES, 0.05, "conv1.weight", "fc2.weight")["fc2.weight"] == pytest.approx(0.2)


def test_distribution_names_the_scopes_and_leaves_old_keys_alone():
    layer = resolve_prune_step({"method": "l1_unstructured", "amount": 0.2})
    assert resolve_prune_step({"method": "l1_unstructured", "amount": 0.2, "distribution": "uniform"}) == layer
    assert "distribution" not in layer
    assert resolve_prune_step(
        {"method": "l1_unstructured", "amount": 0.2, "distribution": "global"}
    ) == resolve_prune_step({"method": "l1_unstructured", "amount": 0.2, "scope": "global"})
    erk = resolve_prune_step({"method": "random_unstructured", "amount": 0.2, "distribution": "erk"})
    assert erk["distribution"] == "erk" and resolve_prune_step(erk) == erk
    for bad, message in (
        ({"distribution": "erk", "scope": "global"}, "says otherwise"),
        ({"distribution": "global", "scope": "layer"}, "is scope 'global'"),
        ({"distribution": "ERK"}, "unknown distribution 'ERK'; allowed: erk, global"),
    ):
        with pytest.raises(SpecError, match=message):
            resolve_prune_step({"method": "l1_unstructured", "amount": 0.2, **bad})
    with pytest.raises(SpecError, match="needs a single-weight method, got 'fpgm'"):
        resolve_prune_step({"method": "fpgm", "amount": 0.2, "distribution": "erk"})


def lamp_by_definition(w: torch.Tensor) -> torch.Tensor:
    """Lee et al. 2021, eq. 2: score(u) = w_u² / Σ_{v: |w_v| >= |w_u|} w_v² (distinct magnitudes)."""
    flat = w.reshape(-1).double()
    out = torch.empty_like(flat)
    for u in range(flat.numel()):
        out[u] = flat[u] ** 2 / (flat[flat.abs() >= flat[u].abs()] ** 2).sum()
    return out.reshape(w.shape)


def test_lamp_scores_and_global_selection_are_the_papers():
    shapes = {"a.weight": (4, 5), "b.weight": (6, 3), "c.weight": (3, 6)}
    g = torch.Generator().manual_seed(1)
    weights = {n: torch.randn(s, generator=g) * (10.0 if n == "b.weight" else 1.0) for n, s in shapes.items()}
    kinds = {n: "linear" for n in shapes}
    masks = _full(weights)
    scores = torch.cat([lamp_by_definition(w).reshape(-1) for w in weights.values()])
    k = round(0.6 * scores.numel())
    gone = set(torch.topk(scores, k, largest=False).indices.tolist())
    expected = torch.tensor([i not in gone for i in range(scores.numel())])
    got = prune_masks(weights, masks, kinds, {"method": "lamp", "amount": 0.6}, generator=None)
    assert torch.equal(torch.cat([got[n].reshape(-1) for n in shapes]), expected)
    # magnitude alone would strip the small layers; LAMP keeps every layer's largest weight
    assert all(bool(m.any()) for m in got.values())
    # a second round: pruned weights are no candidates and add nothing to the sums
    again = prune_masks(
        {n: w * got[n] for n, w in weights.items()}, got, kinds, {"method": "lamp", "amount": 0.5}, generator=None
    )
    assert sum(int(m.sum()) for m in again.values()) == scores.numel() - k - round(0.5 * (scores.numel() - k))
    assert all(bool((again[n] <= got[n]).all()) for n in shapes)


def test_nm_keeps_the_n_largest_of_every_m_inputs_and_leaves_indivisible_layers():
    g = torch.Generator().manual_seed(2)
    weights = {
        "conv.weight": torch.randn(3, 8, 2, 2, generator=g),
        "odd.weight": torch.randn(4, 6, generator=g),
        "fc.weight": torch.randn(5, 12, generator=g),
    }
    kinds = {"conv.weight": "conv", "odd.weight": "linear", "fc.weight": "linear"}
    report = {}
    masks = prune_masks(weights, _full(weights), kinds, {"method": "nm", "n": 2, "m": 4}, generator=None, report=report)
    for name in ("conv.weight", "fc.weight"):
        w, mask = weights[name], masks[name]
        for out in range(w.shape[0]):
            for rest in torch.cartesian_prod(*[torch.arange(s) for s in w.shape[2:]]) if w.dim() > 2 else [()]:
                index = tuple(int(r) for r in (rest if w.dim() > 2 else ()))
                row, kept = w[(out, slice(None), *index)], mask[(out, slice(None), *index)]
                for start in range(0, w.shape[1], 4):
                    group, group_kept = row[start : start + 4], kept[start : start + 4]
                    assert int(group_kept.sum()) == 2
                    largest = set(torch.topk(group.abs(), 2).indices.tolist())
                    assert set(group_kept.nonzero().reshape(-1).tolist()) == largest
    assert bool(masks["odd.weight"].all()) and "does not divide by 4" in report["odd.weight"]["note"]
    # a layer already pruned keeps at most n of what remains in each group; nothing revives
    again = prune_masks(weights, masks, kinds, {"method": "nm", "n": 1, "m": 4}, generator=None)
    assert bool((again["fc.weight"] <= masks["fc.weight"]).all())
    assert bool((again["fc.weight"].reshape(5, 3, 4).sum(-1) == 1).all())
    # a per-layer override: 2:4 in one layer, magnitude elsewhere
    mixed = prune_masks(
        weights,
        _full(weights),
        kinds,
        {"method": "l1_unstructured", "amount": 0.25, "layers": {"fc.weight": {"method": "nm"}}},
        generator=None,
    )
    assert bool((mixed["fc.weight"].reshape(5, 3, 4).sum(-1) == 2).all())
    assert int(mixed["conv.weight"].sum()) == 96 - 24 and int(mixed["odd.weight"].sum()) == 24 - 6
    assert resolve_prune_step({"method": "nm"})["amount"] == 0.5
    assert resolve_prune_step({"method": "nm", "amount": 0.5}) == resolve_prune_step({"method": "nm"})
    with pytest.raises(SpecError, match="whose amount follows from its pattern"):
        resolve_prune_step({"method": "nm", "amount": 0.3})
    with pytest.raises(SpecError, match="invalid N:M pattern 4:4"):
        resolve_prune_step({"method": "nm", "n": 4, "m": 4})


def test_fpgm_prunes_the_filters_nearest_the_geometric_median():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(8, 3, 3, 3, generator=g)
    flat = w.reshape(8, -1).double()
    distance = [sum(float(torch.linalg.vector_norm(flat[i] - flat[j])) for j in range(8)) for i in range(8)]
    gone = sorted(range(8), key=lambda i: distance[i])[:3]  # the smallest sums of distances go
    mask = compute_mask("fpgm", w, 3, None)
    assert [i for i in range(8) if not bool(mask[i].any())] == sorted(gone)
    assert bool(mask[[i for i in range(8) if i not in gone]].all())
    inverted = compute_mask("fpgm", w, 3, None, invert=True)
    assert sum(1 for i in range(8) if not bool(inverted[i].any())) == 3 and not torch.equal(inverted, mask)


class _SmallConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 8, 3), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def _small_net_and_data():
    torch.manual_seed(0)
    model = _SmallConvNet()
    with torch.no_grad():
        model.bn1.weight.copy_(torch.tensor([0.5, -2.0, 0.1, 1.5, -0.05, 0.9]))
        model.bn2.weight.copy_(torch.linspace(-1.0, 1.2, 8))
    g = torch.Generator().manual_seed(4)
    batches = [(torch.randn(5, 1, 8, 8, generator=g), torch.randint(0, 3, (5,), generator=g)) for _ in range(2)]
    data = ScoringData((1, 8, 8), lambda count, size: batches[:count])
    kinds = {"conv1.weight": "conv", "conv2.weight": "conv", "fc.weight": "linear"}
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if n in kinds}
    return model, data, batches, kinds, masks


def _removed_filters(mask):
    return [i for i in range(mask.shape[0]) if not bool(mask[i].any())]


def test_taylor_scores_a_channel_by_the_first_order_change_of_the_loss():
    model, data, batches, kinds, masks = _small_net_and_data()
    # Molchanov et al. 2019: |Σ_{s in channel} w_s ∂L/∂w_s|, the gradient summed over the batches (eval mode)
    reference = _SmallConvNet()
    reference.load_state_dict(model.state_dict())
    reference.eval()
    total = None
    for x, y in batches:
        grad = torch.autograd.grad(nn.functional.cross_entropy(reference(x), y), reference.conv2.weight)[0]
        total = grad if total is None else total + grad
    channel = (total * reference.conv2.weight).detach().sum(dim=(1, 2, 3)).abs()
    expected_gone = sorted(torch.topk(channel, 3, largest=False).indices.tolist())
    step = {"method": "taylor", "amount": 3, "include": ["conv2.weight"], "batches": 2, "batch_size": 5}
    options = resolve_prune_step(step)
    new = prune_masks(
        dict(model.state_dict()),
        masks,
        kinds,
        step,
        generator=None,
        scores=network_scores("taylor", model, data, options),
    )
    assert _removed_filters(new["conv2.weight"]) == expected_gone
    assert torch.equal(new["conv1.weight"], masks["conv1.weight"])


def test_bn_scale_keeps_the_channels_of_largest_gamma_and_refuses_a_layer_without_batchnorm():
    model, data, batches, kinds, masks = _small_net_and_data()
    options = resolve_prune_step({"method": "bn_scale", "amount": 0.5, "include": ["@conv"]})
    new = prune_masks(
        dict(model.state_dict()),
        masks,
        kinds,
        options,
        generator=None,
        scores=network_scores("bn_scale", model, data, options),
    )
    assert _removed_filters(new["conv1.weight"]) == [0, 2, 4]  # |γ| 0.5, 0.1, 0.05 are the smallest
    gamma2 = model.bn2.weight.detach().abs()
    assert _removed_filters(new["conv2.weight"]) == sorted(torch.topk(gamma2, 4, largest=False).indices.tolist())
    bad = resolve_prune_step({"method": "bn_scale", "amount": 0.5})
    with pytest.raises(SpecError, match="layer 'fc.weight': method 'bn_scale' cannot score it: no BatchNorm"):
        prune_masks(
            dict(model.state_dict()),
            masks,
            kinds,
            bad,
            generator=None,
            scores=network_scores("bn_scale", model, data, bad),
        )


def test_bn_scale_coupled_removes_whole_channels_by_gamma():
    from mlprune.pruning.scores import bn_scale
    from mlprune.pruning.structure import channel_groups, prune_coupled

    model, data, batches, kinds, masks = _small_net_and_data()
    options = resolve_prune_step({"method": "bn_scale", "amount": 0.5, "include": ["@conv"], "coupled": True})
    weights = dict(model.state_dict())
    new = prune_coupled(
        weights,
        masks,
        kinds,
        options,
        channel_groups(model, (1, 8, 8)),
        generator=None,
        values=bn_scale(model, masks, data, options),
    )
    assert _removed_filters(new["conv1.weight"]) == [0, 2, 4]
    # the channels conv1 no longer writes are no longer read by conv2
    assert [i for i in range(6) if not bool(new["conv2.weight"][:, i].any())] == [0, 2, 4]


# ---- dynamic sparse training ------------------------------------------------------------------------------


def test_drop_and_grow_is_one_rigl_update():
    from mlprune.training.sparse import drop_and_grow, drop_fraction

    g = torch.Generator().manual_seed(5)
    w = torch.randn(6, 10, generator=g)
    mask = torch.rand(6, 10, generator=g) < 0.4
    w = w * mask
    grad = torch.randn(6, 10, generator=g)
    new, grown = drop_and_grow(w, mask, grad.abs(), 0.25)
    active = int(mask.sum())
    k = round(0.25 * active)
    # Evci et al. 2020: drop the k active weights of smallest |w|, grow the k others of largest |∂L/∂w|
    order = sorted(mask.reshape(-1).nonzero().reshape(-1).tolist(), key=lambda i: float(w.reshape(-1)[i].abs()))
    after_drop = mask.reshape(-1).clone()
    after_drop[order[:k]] = False
    others = (~after_drop).nonzero().reshape(-1).tolist()
    top = sorted(others, key=lambda i: -float(grad.reshape(-1)[i].abs()))[:k]
    expected = after_drop.clone()
    expected[top] = True
    assert torch.equal(new.reshape(-1), expected) and int(new.sum()) == active
    assert torch.equal(grown.reshape(-1).nonzero().reshape(-1).sort().values, torch.tensor(sorted(top)))
    # the cosine-annealed drop fraction of the papers' code
    assert [drop_fraction(t, 0.3, 100) for t in (0, 50, 100, 150)] == pytest.approx([0.3, 0.15, 0.0, 0.0])


def _train_options(kind, **extra):
    from mlprune.spec.steps import resolve_train

    return resolve_train(
        {
            "steps": "24it",
            "batch_size": 32,
            "lr": 0.05,
            "momentum": 0.9,
            "sparse_training": {"kind": kind, "update_every": "5it", "drop_fraction": 0.5, "end": "20it"},
            **extra,
        }
    ).options


def _sparse_net(seed=0):
    from mlprune.models import build_model, prunable
    from mlprune.pruning.masks import compute_mask as mask_of

    model = build_model("lenet_300_100", num_classes=10, input_shape=(1, 8, 8), seed=seed)
    kinds = prunable(model)
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    masks = {n: mask_of("random_unstructured", params[n], 0.8, None, generator=g) for n in kinds}
    with torch.no_grad():
        for n, m in masks.items():
            params[n].mul_(m)
    return model, masks


@pytest.fixture(scope="module")
def digits():
    from mlprune.data import load_data

    return load_data("digits", train_size=256, test_size=32)


@pytest.mark.parametrize("kind", ["rigl", "set"])
def test_sparse_training_keeps_each_layers_sparsity_exact_zeros_and_zero_regrown_weights(digits, kind):
    from mlprune.training.loop import Callbacks, train

    model, masks = _sparse_net()
    counts = {n: int(m.sum()) for n, m in masks.items()}
    seen = {"changed": 0, "grown": 0}
    previous = {n: m.clone() for n, m in masks.items()}
    params = dict(model.named_parameters())

    def check(i):
        def after(model_now, history):
            for name, mask in masks.items():
                assert int(mask.sum()) == counts[name]  # constant per layer
                assert bool((params[name][~mask] == 0).all())  # exactly 0 after every step
                grown = mask & ~previous[name]
                if i in (5, 10, 15):  # an update: regrown weights at 0.0
                    assert bool((params[name][grown] == 0).all())
                    seen["grown"] += int(grown.sum())
                seen["changed"] += int((mask != previous[name]).sum())
                previous[name] = mask.clone()

        return after

    history = train(
        model,
        masks,
        digits,
        _train_options(kind),
        seed=0,
        calls=Callbacks(checkpoints={i: check(i) for i in range(1, 24)}),
    )
    assert seen["grown"] > 0 and seen["changed"] > 0
    assert history["sparse_updates"][-1][1] == 3  # after 5, 10, 15 (end 20)


def test_sparse_training_is_bitwise_repeatable_at_one_thread(digits):
    from mlprune.training.loop import train

    results = []
    for _ in range(2):
        model, masks = _sparse_net()
        train(model, masks, digits, _train_options("set"), seed=3)
        results.append(({n: t.clone() for n, t in model.state_dict().items()}, masks))
    (w1, m1), (w2, m2) = results
    assert all(torch.equal(w1[n], w2[n]) for n in w1) and all(torch.equal(m1[n], m2[n]) for n in m1)


def test_rigl_grows_where_the_dense_gradient_is_largest():
    from mlprune.training.sparse import DynamicSparsity

    model, masks = _sparse_net()
    kinds = list(masks)
    options = {"kind": "rigl", "drop_fraction": 0.3, "update_every": 1, "end": 4}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    hook = DynamicSparsity(model, masks, kinds, options, seed=0, optimizer=optimizer)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    nn.functional.cross_entropy(model(x), y).backward()
    params = dict(model.named_parameters())
    dense = {n: params[n].grad.clone() for n in kinds}  # before the masks zero it
    hook.after_backward(0)
    before = {n: m.clone() for n, m in masks.items()}
    with torch.no_grad():
        for n in kinds:
            params[n].grad.mul_(masks[n])
        optimizer.step()
    weights = {n: params[n].detach().clone() for n in kinds}
    hook.after_step(1, [])
    fraction = 0.3 * 0.5 * (1 + math.cos(math.pi * 1 / 4))
    for n in kinds:
        active = before[n].reshape(-1).nonzero().reshape(-1)
        k = round(fraction * active.numel())
        keep = before[n].reshape(-1).clone()
        keep[active[torch.topk(weights[n].reshape(-1).abs()[active], k, largest=False).indices]] = False
        others = (~keep).nonzero().reshape(-1)
        keep[others[torch.topk(dense[n].reshape(-1).abs()[others], k).indices]] = True
        assert torch.equal(masks[n].reshape(-1), keep), n
        assert bool((params[n][masks[n] & ~before[n]] == 0).all())


def test_sparse_training_options_leave_old_keys_alone_and_are_checked():
    from mlprune.spec.steps import resolve_train

    plain = resolve_train({"epochs": 2}).options
    assert resolve_train({"epochs": 2, "sparse_training": None, "bn_l1": 0.0}).options == plain
    with pytest.raises(SpecError, match="unknown sparse_training kind 'snfs'; allowed: rigl, set"):
        resolve_train({"epochs": 2, "sparse_training": {"kind": "snfs"}})
    with pytest.raises(SpecError, match="both change the masks"):
        resolve_train({"epochs": 2, "sparse_training": "rigl", "sparsity_schedule": {"final": 0.5, "end": "1ep"}})
    with pytest.raises(SpecError, match="bn_l1 with precision fp16"):
        resolve_train({"epochs": 2, "bn_l1": 1e-4, "precision": "fp16"})
    with pytest.raises(SpecError, match="drop_fraction must be a finite number > 0 and < 1"):
        resolve_train({"epochs": 2, "sparse_training": {"kind": "set", "drop_fraction": 1.5}})


def test_bn_l1_adds_the_slimming_subgradient():
    from mlprune.training.sparse import BatchNormL1

    model, *_ = _small_net_and_data()
    model.bn1.weight.grad = torch.zeros(6)
    BatchNormL1(model, 0.01).after_backward(0)
    assert torch.equal(model.bn1.weight.grad, 0.01 * torch.sign(model.bn1.weight.detach()))


# ---- end to end: the study preset, and the new methods as prune steps of a stored lineage ---------------------

PRESET = Path(__file__).resolve().parents[1] / "recipes" / "rigl_vs_lottery_lenet_300_100.yaml"


@pytest.mark.slow
def test_rigl_vs_lottery_preset_runs_and_compares_four_branches_at_one_sparsity(tracking, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from mlprune import Experiment, Recipe, analysis
    from mlprune.cli import main
    from mlprune.recipes import compile_recipe
    from mlprune.report.accuracy import accuracy_section
    from mlprune.report.common import Page, StateLoader
    from mlprune.report.sections import SectionContext
    from mlprune.report.series import collect

    monkeypatch.setenv("MLPRUNE_FIGURES", "0")  # the workflow run's figures: drawn and checked elsewhere
    params = {"epochs": 1, "budget": 3, "update_every": "3it", "train_size": 200, "test_size": 50}
    flags = [part for name, value in params.items() for part in ("-P", f"{name}={value}")]
    result = CliRunner().invoke(main, ["run", str(PRESET), "-e", "rigl", *flags])
    assert result.exit_code == 0, result.output
    plan = compile_recipe(PRESET, params)
    states = {s.key: s for s in Experiment("rigl").states()}
    state = {n.name: states[n.key] for n in plan.nodes}
    pruned = state["prune.random.90"]
    for name in ("round2", "random.90", "set.90", "rigl.90"):
        assert state[name].metrics["sparsity"] == pytest.approx(0.9, abs=1e-3), name
    for name in ("set.90", "rigl.90"):  # masks moved, each layer's sparsity did not
        grown = state[name]
        assert grown.metrics["sparse_updates"] > 0
        assert {n: int(m.sum()) for n, m in grown.masks.items()} == {n: int(m.sum()) for n, m in pruned.masks.items()}
        assert any(not torch.equal(grown.masks[n], pruned.masks[n]) for n in pruned.masks)
        assert all(bool((grown.weights[n][~m] == 0).all()) for n, m in grown.masks.items())
    assert all(torch.equal(state["random.90"].masks[n], pruned.masks[n]) for n in pruned.masks)
    builder = Page(tmp_path / "report")
    collection = collect(Experiment("rigl").store)
    rows = accuracy_section(
        builder, SectionContext(collection, StateLoader(collection.store, collection.runs, print), print)
    )
    name = "rigl_vs_lottery_lenet_300_100"
    final = {
        row["recipe"]: row["remaining"]
        for row in rows
        if row["round"] == max(r["round"] for r in rows if r["recipe"] == row["recipe"])
    }
    assert set(final) == {name, f"{name} / random", f"{name} / set", f"{name} / rigl"}
    assert all(value == pytest.approx(0.1, abs=1e-3) for value in final.values())

    # the new prune methods on the stored trained network: run names, invert, exact counts
    trained = Experiment("rigl").state(state["train"].run_id)
    lamp = trained.apply(Recipe.prune(method="lamp", amount=0.2))
    nm = trained.apply(Recipe.prune(method="nm", n=2, m=4))
    taylor = trained.apply(Recipe.prune(method="taylor", amount=0.5, exclude=["@output"], batch_size=32))
    inverted = trained.apply(Recipe.prune(method="taylor", amount=0.5, exclude=["@output"], batch_size=32, invert=True))
    fpgm = trained.apply(Recipe.prune(method="fpgm", amount=0.25, distribution="uniform", exclude=["@output"]))
    erk = trained.apply(Recipe.prune(method="l1_unstructured", amount=0.8, distribution="erk"))
    assert lamp.metrics["sparsity"] == pytest.approx(0.2, abs=1e-4)
    assert nm.metrics["sparsity"] == pytest.approx(0.5)
    for layer, mask in nm.masks.items():
        assert bool((mask.reshape(mask.shape[0], -1, 4).sum(-1) == 2).all()), layer
    rows_kept = {n: [i for i in range(m.shape[0]) if bool(m[i].any())] for n, m in taylor.masks.items()}
    rows_inverted = {n: [i for i in range(m.shape[0]) if bool(m[i].any())] for n, m in inverted.masks.items()}
    layer = "classifier.0.weight"
    assert len(rows_kept[layer]) == len(rows_inverted[layer]) == 150 and not set(rows_kept[layer]) & set(
        rows_inverted[layer]
    )
    assert fpgm.metrics[f"sparsity.{layer}"] == pytest.approx(0.25)
    assert erk.metrics["sparsity"] == pytest.approx(0.8, abs=1e-3)
    names = {s.run_id: s for s in (lamp, nm, taylor, fpgm, erk)}
    labels = {
        run.info.run_id: run.info.run_name
        for run in trained.experiment.store.client.search_runs([trained.experiment.store.experiment_id])
        if run.info.run_id in names
    }
    assert sorted(labels.values()) == sorted(
        ["prune lamp 20%", "prune 2:4", "prune taylor-struct 50%*", "prune fpgm-struct 25%*", "prune l1 erk 80%"]
    )

    # a 2:4 branch in a study: the report says its speedup needs CUDA, its structure that the pattern is kept
    from mlprune.report.accuracy import NM_NOT_MEASURED, speedup_section

    recipe = tmp_path / "nm.yaml"
    recipe.write_text(
        "name: nm_study\nroot: {model: lenet_300_100, dataset: digits, seed: 0, init: glorot, "
        "val_size: 0.1, train_size: 200, test_size: 50}\ntrain: {epochs: 1, lr: 0.0012, batch_size: 60, "
        "optimizer: adam}\none_shot: {from: train, sparsities: 0.5, methods: {nm: {method: nm}}}\n"
    )
    result = CliRunner().invoke(main, ["run", str(recipe), "-e", "rigl"])
    assert result.exit_code == 0, result.output
    collection = collect(Experiment("rigl").store)
    speedup_section(builder, SectionContext(collection, StateLoader(collection.store, collection.runs, print), print))
    assert builder.numbers["speedup_nm"] == {"nm_study / nm": NM_NOT_MEASURED}
    assert analysis.follows_nm(nm.masks) and not analysis.follows_nm(lamp.masks)


def test_bn_scale_on_a_network_without_batchnorm_is_refused_before_anything_runs(tracking, tmp_path):
    from click.testing import CliRunner

    from mlprune.cli import main

    recipe = tmp_path / "slim.yaml"
    recipe.write_text(
        "root: {model: lenet_300_100, dataset: digits, train_size: 64, test_size: 32}\n"
        "train: {steps: 2it}\nrounds: 1\nprune: {method: bn_scale, amount: 0.5}\n"
    )
    result = CliRunner().invoke(main, ["run", str(recipe), "-e", "slim"])
    assert result.exit_code == 2, result.output
    assert (
        "layer 'classifier.0.weight': method 'bn_scale' cannot score it: no BatchNorm right after it" in result.output
    )
    from mlprune import Experiment

    assert not Experiment("slim").states()  # nothing computed, nothing half-done
