"""mlprune.pruning: oracle tests against torch.nn.utils.prune, properties, spec rules."""

import copy
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as tp
from hypothesis import given, settings
from hypothesis import strategies as st

from mlprune import pruning as P
from mlprune.errors import SpecError

INF = float("inf")


# ------------------------------------------------------------------ helpers
def _module(kind, seed, shape=None):
    g = torch.Generator().manual_seed(seed)
    if kind == "conv":
        m = nn.Conv2d(*(shape or (6, 10)), 3)
    else:
        m = nn.Linear(*(shape or (20, 12)))
    with torch.no_grad():
        m.weight.copy_(torch.randn(m.weight.shape, generator=g))
    return m


def _torch_prune(module, fn, seed=None, **kw):
    """Apply a torch prune fn; for random ones seed the global RNG (restored afterwards)."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        fn(module, "weight", **kw)


def _ours(method, module_weight, mask, amount, seed=None, **options):
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    eff = module_weight if mask is None else module_weight * mask
    return P.compute_mask(method, eff, amount, mask, generator=gen, **options)


TORCH_FN = {
    "l1_unstructured": tp.l1_unstructured,
    "random_unstructured": tp.random_unstructured,
    "ln_structured": tp.ln_structured,
    "random_structured": tp.random_structured,
}


def _run_both(rounds, kind="conv", seed=0, shape=None):
    """rounds: [(method, amount, options)]; returns (torch mask, our mask) after all rounds."""
    mod = _module(kind, seed, shape)
    w0 = mod.weight.detach().clone()
    mask = None
    for i, (method, amount, opts) in enumerate(rounds):
        rseed = 1000 + 7 * i + seed if method.startswith("random") else None
        _torch_prune(mod, TORCH_FN[method], seed=rseed, amount=amount, **opts)
        mask = _ours(method, w0, mask, amount, seed=rseed, **opts)
        # our effective weights equal torch's module.weight at every round
        assert torch.equal(w0 * mask, mod.weight.detach())
    return mod.weight_mask.bool(), mask


# ------------------------------------------------------------------ oracle: single methods
@pytest.mark.parametrize("kind", ["conv", "linear"])
@pytest.mark.parametrize("amount", [0.2, 0.5, 0.9, 7])
def test_l1_unstructured_matches_torch_single_round(kind, amount):
    theirs, ours = _run_both([("l1_unstructured", amount, {})], kind)
    assert torch.equal(theirs, ours)


@pytest.mark.parametrize("kind", ["conv", "linear"])
@pytest.mark.parametrize("amounts", [(0.2, 0.2), (0.5, 0.3), (0.2, 11), (13, 0.6), (0.3, 0.3, 0.3, 0.3)])
def test_l1_unstructured_matches_torch_iterative(kind, amounts):
    """Torch's PruningContainer: round 2's fraction is of what remains."""
    theirs, ours = _run_both([("l1_unstructured", a, {}) for a in amounts], kind, seed=3)
    assert torch.equal(theirs, ours)
    n = theirs.numel()
    expected = n
    for a in amounts:
        expected -= a if isinstance(a, int) else round(a * expected)
    assert int(ours.sum()) == expected


def test_l1_unstructured_ties_match_torch():
    """Many equal |w|: tie-breaking is torch.topk's on the same candidate vector."""
    mod = nn.Linear(16, 9)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        mod.weight.copy_(torch.randint(-2, 3, mod.weight.shape, generator=g).float())
    w0 = mod.weight.detach().clone()
    mask = None
    for a in (0.3, 0.25, 10):
        tp.l1_unstructured(mod, "weight", amount=a)
        mask = _ours("l1_unstructured", w0, mask, a)
        assert torch.equal(mod.weight_mask.bool(), mask)


@pytest.mark.parametrize("kind", ["conv", "linear"])
@pytest.mark.parametrize("amounts", [(0.3,), (0.4, 0.4), (5, 0.5), (0.2, 0.2, 0.2)])
def test_random_unstructured_matches_torch(kind, amounts):
    theirs, ours = _run_both([("random_unstructured", a, {}) for a in amounts], kind, seed=1)
    assert torch.equal(theirs, ours)


@pytest.mark.parametrize("kind", ["conv", "linear"])
@pytest.mark.parametrize("n", [1, 2, INF, -INF])
@pytest.mark.parametrize("dim", [0, 1])
def test_ln_structured_matches_torch_single_and_iterative(kind, n, dim):
    rounds = [("ln_structured", 0.3, {"n": n, "dim": dim})]
    theirs, ours = _run_both(rounds, kind, seed=2)
    assert torch.equal(theirs, ours)
    rounds = rounds + [("ln_structured", 0.4, {"n": n, "dim": dim}), ("ln_structured", 1, {"n": n, "dim": dim})]
    theirs, ours = _run_both(rounds, kind, seed=2)
    assert torch.equal(theirs, ours)


@pytest.mark.parametrize("n", [1, 2, INF, -INF])
def test_ln_structured_ties_match_torch(n):
    mod = nn.Conv2d(4, 12, 3)
    with torch.no_grad():  # pairs of identical output channels: equal norms
        base = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(4))
        mod.weight.copy_(torch.cat([base, base]))
    w0 = mod.weight.detach().clone()
    mask = None
    for a in (0.25, 0.5):
        tp.ln_structured(mod, "weight", amount=a, n=n, dim=0)
        mask = _ours("ln_structured", w0, mask, a, n=n, dim=0)
        assert torch.equal(mod.weight_mask.bool(), mask)


@pytest.mark.parametrize("kind", ["conv", "linear"])
@pytest.mark.parametrize("dim", [0, 1])
def test_random_structured_matches_torch(kind, dim):
    rounds = [
        ("random_structured", 0.3, {"dim": dim}),
        ("random_structured", 0.5, {"dim": dim}),
        ("random_structured", 1, {"dim": dim}),
    ]
    theirs, ours = _run_both(rounds, kind, seed=5)
    assert torch.equal(theirs, ours)


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_switching_method_between_rounds_matches_torch(kind):
    """Structured then unstructured then structured on the same layer (PruningContainer)."""
    rounds = [
        ("ln_structured", 0.25, {"n": 2, "dim": 0}),
        ("l1_unstructured", 0.3, {}),
        ("random_unstructured", 0.2, {}),
        ("ln_structured", 0.34, {"n": 1, "dim": 1}),
        ("random_structured", 0.2, {"dim": 0}),
        ("l1_unstructured", 9, {}),
    ]
    theirs, ours = _run_both(rounds, kind, seed=6)
    assert torch.equal(theirs, ours)


# ------------------------------------------------------------------ oracle: whole models
KINDS = {
    "conv1.weight": "conv",
    "conv2.weight": "conv",
    "fc1.weight": "linear",
    "fc2.weight": "linear",
    "fc3.weight": "linear",
}


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3)
        self.conv2 = nn.Conv2d(6, 8, 3)
        self.fc1 = nn.Linear(32, 24)
        self.fc2 = nn.Linear(24, 16)
        self.fc3 = nn.Linear(16, 10)


def _net(seed=0):
    torch.manual_seed(seed)  # only to build the oracle net; state restored by fork_rng callers
    return _Net()


def _modules(net):
    return [(getattr(net, n.split(".")[0]), "weight") for n in KINDS]


def _state(net):
    """(effective weights, masks) of a net possibly pruned by torch."""
    weights, masks = {}, {}
    for name in KINDS:
        mod = getattr(net, name.split(".")[0])
        weights[name] = mod.weight.detach().clone()
        masks[name] = (
            mod.weight_mask.bool().clone()
            if hasattr(mod, "weight_mask")
            else torch.ones_like(mod.weight, dtype=torch.bool)
        )
    return weights, masks


@pytest.mark.parametrize("amounts", [(0.2,), (0.2, 0.2), (0.5, 100), (0.3, 0.3, 0.3)])
def test_global_l1_matches_torch_global_unstructured(amounts):
    with torch.random.fork_rng(devices=[]):
        net = _net(0)
    weights, masks = _state(net)
    for a in amounts:
        tp.global_unstructured(_modules(net), pruning_method=tp.L1Unstructured, amount=a)
        masks = P.prune_masks(
            weights, masks, KINDS, {"method": "l1_unstructured", "amount": a, "scope": "global"}, generator=None
        )
        t_weights, t_masks = _state(net)
        for name in KINDS:
            assert torch.equal(t_masks[name], masks[name]), name
        weights = {k: v.clone() for k, v in t_weights.items()}
        assert all(torch.equal(weights[k], _state(net)[0][k]) for k in KINDS)


def test_global_random_matches_torch_global_unstructured():
    with torch.random.fork_rng(devices=[]):
        net = _net(1)
        weights, masks = _state(net)
        for i, a in enumerate((0.3, 0.5)):
            torch.manual_seed(40 + i)
            tp.global_unstructured(_modules(net), pruning_method=tp.RandomUnstructured, amount=a)
            masks = P.prune_masks(
                weights,
                masks,
                KINDS,
                {"method": "random_unstructured", "amount": a, "scope": "global", "seed": 40 + i},
                generator=torch.Generator().manual_seed(40 + i),
            )
            weights, t_masks = _state(net)
            for name in KINDS:
                assert torch.equal(t_masks[name], masks[name]), name


@pytest.mark.parametrize(
    "method,opts",
    [
        ("l1_unstructured", {}),
        ("random_unstructured", {}),
        ("ln_structured", {"n": 2, "dim": 0}),
        ("random_structured", {"dim": 0}),
    ],
)
def test_layer_scope_matches_torch_layer_by_layer(method, opts):
    """prune_masks consumes the generator layer by layer in kinds order."""
    with torch.random.fork_rng(devices=[]):
        net = _net(2)
        weights, masks = _state(net)
        for i, a in enumerate((0.25, 0.4)):
            torch.manual_seed(10 + i)
            for mod, name in _modules(net):
                TORCH_FN[method](mod, name, amount=a, **opts)
            masks = P.prune_masks(
                weights,
                masks,
                KINDS,
                {"method": method, "amount": a, **opts},
                generator=torch.Generator().manual_seed(10 + i),
            )
            weights, t_masks = _state(net)
            for name in KINDS:
                assert torch.equal(t_masks[name], masks[name]), name


# ------------------------------------------------------------------ properties
def _rand_case(data):
    ndim = data.draw(st.sampled_from([2, 4]))
    if ndim == 2:
        shape = (data.draw(st.integers(1, 12)), data.draw(st.integers(1, 12)))
    else:
        shape = (
            data.draw(st.integers(1, 6)),
            data.draw(st.integers(1, 5)),
            data.draw(st.integers(1, 3)),
            data.draw(st.integers(1, 3)),
        )
    seed = data.draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    mask = torch.rand(shape, generator=g) > data.draw(st.sampled_from([0.0, 0.0, 0.3, 0.7]))
    return w * mask, mask, g


def _amount(data, remaining):
    if remaining >= 1 and data.draw(st.booleans()):
        return data.draw(st.integers(1, remaining))
    return data.draw(st.floats(0.01, 0.99))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_property_unstructured(data):
    w, mask, g = _rand_case(data)
    method = data.draw(st.sampled_from(["l1_unstructured", "random_unstructured"]))
    remaining = int(mask.sum())
    amount = _amount(data, remaining)
    new = P.compute_mask(method, w, amount, mask, generator=g)
    assert new.dtype == torch.bool and new.shape == mask.shape
    assert not (new & ~mask).any(), "revived a pruned weight"
    k = amount if isinstance(amount, int) else round(amount * remaining)
    k = min(k, max(remaining - 1, 0))
    assert k == P.n_to_prune(amount, remaining)
    assert remaining - int(new.sum()) == k
    if remaining:
        assert new.any(), "emptied a layer"
    if method == "l1_unstructured" and k:
        kept, gone = w[new].abs(), w[mask & ~new].abs()
        assert gone.max() <= kept.min()


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_property_structured(data):
    w, mask, g = _rand_case(data)
    method = data.draw(st.sampled_from(["ln_structured", "random_structured"]))
    dim = data.draw(st.sampled_from([0, 1]))
    opts = {"dim": dim}
    if method == "ln_structured":
        opts["n"] = data.draw(st.sampled_from([1, 2, "inf", "-inf"]))
    others = [d for d in range(w.dim()) if d != dim]
    alive = mask.any(dim=others)
    remaining = int(alive.sum())
    amount = _amount(data, remaining)
    new = P.compute_mask(method, w, amount, mask, generator=g, **opts)
    assert not (new & ~mask).any(), "revived a pruned weight"
    k = P.n_to_prune(amount, remaining)
    new_alive = new.any(dim=others)
    assert remaining - int(new_alive.sum()) == k
    # whole slices: each slice is either untouched or entirely removed
    for i in range(w.shape[dim]):
        old_s, new_s = mask.select(dim, i), new.select(dim, i)
        assert torch.equal(old_s, new_s) or not new_s.any()
    if remaining:
        assert new_alive.any()


def test_property_seeded_loop_matches_torch_when_no_cap():
    """200 random shapes/amounts: equal to torch whenever torch would not empty the layer."""
    rng = torch.Generator().manual_seed(123)
    checked = 0
    for case in range(200):
        kind = "conv" if case % 2 else "linear"
        shape = (int(torch.randint(2, 9, (1,), generator=rng)), int(torch.randint(2, 9, (1,), generator=rng)))
        method = list(TORCH_FN)[case % 4]
        dim = case % 3 % 2
        opts = {} if "unstructured" in method else {"dim": dim}
        if method == "ln_structured":
            opts["n"] = [1, 2, INF, -INF][case // 4 % 4]
        amounts = [round(float(torch.rand(1, generator=rng)) * 0.6 + 0.05, 3) for _ in range(2)]
        mod = _module(kind, case, shape)
        w0, mask = mod.weight.detach().clone(), None
        for i, a in enumerate(amounts):
            if "unstructured" in method:
                rem = mod.weight.numel() if mask is None else int(mask.sum())
            else:
                m = torch.ones_like(w0, dtype=torch.bool) if mask is None else mask
                rem = int(m.any(dim=[d for d in range(m.dim()) if d != dim]).sum())
            if round(a * rem) >= rem:
                break  # torch would empty the layer; we keep one (tested separately)
            rseed = case * 10 + i if method.startswith("random") else None
            _torch_prune(mod, TORCH_FN[method], seed=rseed, amount=a, **opts)
            mask = _ours(method, w0, mask, a, seed=rseed, **opts)
            assert torch.equal(mod.weight_mask.bool(), mask), (case, method, a)
            checked += 1
    assert checked > 300


# ------------------------------------------------------------------ small layers
def test_rounding_to_zero_prunes_nothing_and_is_reported():
    w = torch.tensor([[0.1, -0.2]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    new = P.compute_mask("l1_unstructured", w, 0.2, mask)  # round(0.4) == 0
    assert torch.equal(new, mask) and new is not mask
    report = {}
    masks = P.prune_masks(
        {"a.weight": w},
        {"a.weight": mask},
        {"a.weight": "linear"},
        {"method": "l1_unstructured", "amount": 0.2},
        generator=None,
        report=report,
    )
    assert torch.equal(masks["a.weight"], mask)
    assert report["a.weight"]["pruned"] == 0 and "rounds to 0" in report["a.weight"]["note"]


def test_round_half_to_even_like_torch():
    assert P.n_to_prune(0.5, 5) == 2  # round(2.5) == 2
    assert P.n_to_prune(0.5, 7) == 4  # round(3.5) == 4
    assert P.n_to_prune(0.3, 10) == 3 and P.n_to_prune(3, 10) == 3


def test_never_removes_the_last_weight():
    w = torch.tensor([[0.5, -0.1, 0.3]])
    m = torch.tensor([[True, False, False]])
    assert torch.equal(P.compute_mask("l1_unstructured", w * m, 0.9, m), m)  # round(0.9) == 1 -> 0
    assert torch.equal(P.compute_mask("l1_unstructured", w * m, 1, m), m)  # count == remaining
    full = P.compute_mask("l1_unstructured", w, 3, None)  # count == size: keeps the largest
    assert full.tolist() == [[True, False, False]]
    assert P.compute_mask("l1_unstructured", w, 0.9, None).sum() == 1  # round(2.7)=3 -> 2
    with pytest.raises(SpecError, match="4"):
        P.compute_mask("l1_unstructured", w, 4, None)
    report = {}
    P.prune_masks(
        {"a.weight": w},
        {"a.weight": m},
        {"a.weight": "linear"},
        {"method": "l1_unstructured", "amount": 1},
        generator=None,
        report=report,
    )
    assert "keep-at-least-one" in report["a.weight"]["note"] and report["a.weight"]["pruned"] == 0


def test_structured_dim_of_size_one_prunes_nothing():
    """First conv with one input channel, dim=1: keep-at-least-one means no-op."""
    w = torch.randn(6, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    for method, opts in [("ln_structured", {"n": 1}), ("random_structured", {})]:
        for amount in (0.2, 0.5, 0.9, 1):
            new = P.compute_mask(method, w, amount, None, generator=torch.Generator(), dim=1, **opts)
            assert new.all()
    report = {}
    masks = P.prune_masks(
        {"conv1.weight": w},
        {"conv1.weight": torch.ones_like(w, dtype=torch.bool)},
        {"conv1.weight": "conv"},
        {"method": "ln_structured", "amount": 0.5, "dim": 1},
        generator=None,
        report=report,
    )
    assert masks["conv1.weight"].all() and report["conv1.weight"]["pruned"] == 0
    assert report["conv1.weight"]["note"]


def test_structured_never_removes_the_last_slice():
    w = torch.randn(3, 4)
    new = P.compute_mask("ln_structured", w, 3, None, dim=0)
    assert int(new.any(dim=1).sum()) == 1
    assert torch.equal(new[w.norm(p=1, dim=1).argmax()], torch.ones(4, dtype=torch.bool))


def test_global_scope_keeps_one_weight_per_layer():
    weights = {"a.weight": torch.full((2, 2), 0.01), "b.weight": torch.arange(1.0, 101.0).view(10, 10)}
    weights["a.weight"][0, 0] = 0.02
    masks = {k: torch.ones_like(v, dtype=torch.bool) for k, v in weights.items()}
    kinds = {"a.weight": "linear", "b.weight": "linear"}
    report = {}
    new = P.prune_masks(
        weights,
        masks,
        kinds,
        {"method": "l1_unstructured", "amount": 0.5, "scope": "global"},
        generator=None,
        report=report,
    )
    assert new["a.weight"].sum() == 1 and new["a.weight"][0, 0]  # its largest survives
    assert new["b.weight"].sum() == 100 - (52 - 4)  # 52 pruned overall, minus the 4 of a, +1 spared
    assert "keep-at-least-one" in report["a.weight"]["note"]


# ------------------------------------------------------------------ steps, overrides, plans
def _weights(seed=0):
    with torch.random.fork_rng(devices=[]):
        net = _net(seed)
    return _state(net)


def test_output_layer_at_half_the_rate():
    weights, masks = _weights()
    step = {"method": "l1_unstructured", "amount": 0.2, "layers": {"@output": {"amount": 0.1}}}
    plan = P.layer_plan(KINDS, step)
    assert plan["fc3.weight"] == {"method": "l1_unstructured", "amount": 0.1, "scope": "layer"}
    assert plan["fc1.weight"] == {"method": "l1_unstructured", "amount": 0.2, "scope": "layer"}
    new = P.prune_masks(weights, masks, KINDS, step, generator=None)
    for name, m in new.items():
        rate = 0.1 if name == "fc3.weight" else 0.2
        assert m.numel() - int(m.sum()) == round(rate * m.numel()), name
    # a second round: fractions of what remains
    new2 = P.prune_masks({k: weights[k] * new[k] for k in new}, new, KINDS, step, generator=None)
    for name in new:
        rate = 0.1 if name == "fc3.weight" else 0.2
        rem = int(new[name].sum())
        assert rem - int(new2[name].sum()) == round(rate * rem)
        assert not (new2[name] & ~new[name]).any()


def test_overrides_later_win_skip_and_tokens():
    step = {
        "method": "l1_unstructured",
        "amount": 0.3,
        "layers": {
            "@conv": {"method": "ln_structured", "n": 2, "dim": 0},
            "conv1.*": {"amount": 0},
            "fc*": {"amount": 0.5},
            "fc2.weight": {"skip": True},
            "@output": {"method": "random_unstructured", "amount": 2},
        },
        "seed": 3,
    }
    plan = P.layer_plan(KINDS, step)
    assert plan == {
        "conv1.weight": {"skip": True},
        "conv2.weight": {"method": "ln_structured", "amount": 0.3, "n": 2, "dim": 0, "scope": "layer"},
        "fc1.weight": {"method": "l1_unstructured", "amount": 0.5, "scope": "layer"},
        "fc2.weight": {"skip": True},
        "fc3.weight": {"method": "random_unstructured", "amount": 2, "scope": "layer"},
    }
    weights, masks = _weights()
    new = P.prune_masks(weights, masks, KINDS, step, generator=torch.Generator().manual_seed(3))
    assert new["conv1.weight"].all() and new["fc2.weight"].all()
    assert int((~new["conv2.weight"].any(dim=(1, 2, 3))).sum()) == round(0.3 * 8)
    assert int((~new["fc3.weight"]).sum()) == 2


def test_include_exclude():
    step = {"method": "l1_unstructured", "amount": 0.5, "include": ["@linear"], "exclude": ["@output"]}
    plan = P.layer_plan(KINDS, step)
    assert [n for n, p in plan.items() if not p.get("skip")] == ["fc1.weight", "fc2.weight"]
    weights, masks = _weights()
    new = P.prune_masks(weights, masks, KINDS, step, generator=None)
    assert new["conv1.weight"].all() and new["fc3.weight"].all() and not new["fc1.weight"].all()


def test_global_scope_with_override_prunes_that_layer_on_its_own():
    step = {
        "method": "l1_unstructured",
        "amount": 0.4,
        "scope": "global",
        "layers": {"@output": {"amount": 0.2}, "conv1.weight": {"skip": True}},
    }
    plan = P.layer_plan(KINDS, step)
    assert plan["fc3.weight"]["scope"] == "layer" and plan["fc1.weight"]["scope"] == "global"
    assert plan["conv1.weight"] == {"skip": True}
    weights, masks = _weights()
    new = P.prune_masks(weights, masks, KINDS, step, generator=None)
    pool = ["conv2.weight", "fc1.weight", "fc2.weight"]
    total = sum(masks[n].numel() for n in pool)
    assert sum(int((~new[n]).sum()) for n in pool) == round(0.4 * total)
    assert int((~new["fc3.weight"]).sum()) == round(0.2 * 160)
    assert new["conv1.weight"].all()
    # the pool threshold is global: every pruned |w| <= every kept |w| across the pool
    gone = torch.cat([weights[n][~new[n]].abs() for n in pool])
    kept = torch.cat([weights[n][new[n]].abs() for n in pool])
    assert gone.max() <= kept.min()


def test_structured_then_unstructured_steps_on_model():
    weights, masks = _weights()
    m1 = P.prune_masks(weights, masks, KINDS, {"method": "ln_structured", "amount": 0.5, "dim": 0}, generator=None)
    w1 = {k: weights[k] * m1[k] for k in m1}
    m2 = P.prune_masks(w1, m1, KINDS, {"method": "l1_unstructured", "amount": 0.5}, generator=None)
    for name in KINDS:
        assert not (m2[name] & ~m1[name]).any()
        rem = int(m1[name].sum())
        assert rem - int(m2[name].sum()) == round(0.5 * rem)


def test_prune_masks_does_not_mutate_inputs_and_returns_all_keys():
    weights, masks = _weights()
    w_copy, m_copy = copy.deepcopy(weights), copy.deepcopy(masks)
    step = {"method": "l1_unstructured", "amount": 0.5, "include": ["fc1.weight"]}
    new = P.prune_masks(weights, masks, KINDS, step, generator=None)
    assert set(new) == set(masks)
    for k in masks:
        assert torch.equal(masks[k], m_copy[k]) and torch.equal(weights[k], w_copy[k])
        assert new[k] is not masks[k]
    assert torch.equal(new["fc2.weight"], masks["fc2.weight"])


def test_stale_dense_weights_are_masked_before_ranking():
    """Already-pruned entries are not candidates even if the caller passes dense weights."""
    w = torch.tensor([[0.01, 0.02, 5.0, 6.0, 7.0]])
    m = torch.tensor([[False, False, True, True, True]])
    new = P.compute_mask("l1_unstructured", w, 1, m)  # dense w: 0.01 is pruned already
    assert new.tolist() == [[False, False, False, True, True]]


def test_random_methods_need_a_generator_and_are_deterministic():
    w = torch.randn(8, 8)
    with pytest.raises(SpecError, match="Generator"):
        P.compute_mask("random_unstructured", w, 0.5, None)
    a = P.compute_mask("random_unstructured", w, 0.5, None, generator=torch.Generator().manual_seed(1))
    b = P.compute_mask("random_unstructured", w, 0.5, None, generator=torch.Generator().manual_seed(1))
    c = P.compute_mask("random_unstructured", w, 0.5, None, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    weights, masks = _weights()
    with pytest.raises(SpecError, match="Generator"):
        P.prune_masks(weights, masks, KINDS, {"method": "random_structured", "amount": 0.5}, generator=None)


def test_from_state_transplant():
    masks = {"a.weight": torch.tensor([True, True, False, True])}
    src = {"a.weight": torch.tensor([True, False, True, True])}
    out = P.transplant_mask(masks, src)
    assert out["a.weight"].tolist() == [True, False, False, True]  # intersection, never revives
    # a transplant is its own step kind; the prune spelling (either source key) maps to it
    from mlprune.spec.steps import resolve_step

    for spelling in (
        {"prune": {"method": "from_state", "state": "lt_round3"}},
        {"prune": {"method": "from_state", "from": "lt_round3"}},
        {"transplant": {"from": "lt_round3"}},
    ):
        step = resolve_step(spelling)
        assert (step.kind, step.sources["mask"].ref) == ("transplant", "lt_round3")
        assert step.as_dict() == {"prune": {"method": "from_state", "from": "input:mask"}}  # keyed as before
    with pytest.raises(SpecError, match="b.weight"):
        P.transplant_mask(masks, {"b.weight": torch.ones(4, dtype=torch.bool)})
    with pytest.raises(SpecError, match=r"\(5,\)"):
        P.transplant_mask(masks, {"a.weight": torch.ones(5, dtype=torch.bool)})
    with pytest.raises(SpecError, match="'from_state'"):  # not a method of the mask maths: a step kind
        P.compute_mask("from_state", torch.ones(4), 0.5, None)


# ------------------------------------------------------------------ resolve_prune_step
def test_resolve_fills_defaults_canonically():
    r = P.resolve_prune_step({"method": "l1_unstructured", "amount": 0.2})
    assert r == {
        "method": "l1_unstructured",
        "amount": 0.2,
        "scope": "layer",
        "include": ["*"],
        "exclude": [],
        "bias": False,
        "layers": [],
    }
    spelled = {
        "method": "l1_unstructured",
        "amount": 0.2,
        "scope": "layer",
        "include": ["*"],
        "exclude": [],
        "bias": False,
        "layers": {},
        "seed": 0,
    }
    assert P.resolve_prune_step(spelled) == r  # seed does not apply to L1: dropped
    s = P.resolve_prune_step({"method": "ln_structured", "amount": 0.2})
    assert s["n"] == 1 and s["dim"] == 1 and "seed" not in s
    assert P.resolve_prune_step({"method": "ln_structured", "amount": 0.2, "n": 1, "dim": 1}) == s
    rs = P.resolve_prune_step({"method": "random_structured", "amount": 0.2})
    assert rs["dim"] == 1 and "n" not in rs and "seed" not in rs  # no default: the DAG derives one
    assert P.resolve_prune_step({"method": "random_structured", "amount": 0.2, "seed": 4})["seed"] == 4
    for spelling in (INF, "inf", "INF", "+inf"):
        assert P.resolve_prune_step({"method": "ln_structured", "amount": 0.2, "n": spelling})["n"] == "inf"
    for spelling in (-INF, "-inf"):
        assert P.resolve_prune_step({"method": "ln_structured", "amount": 0.2, "n": spelling})["n"] == "-inf"
    assert P.resolve_prune_step({"method": "ln_structured", "amount": 0.2, "n": 2.0})["n"] == 2
    assert P.resolve_prune_step({"method": "l1_unstructured", "amount": 0.2, "include": ["fc*", "conv*", "fc*"]})[
        "include"
    ] == ["conv*", "fc*"]


def test_resolve_is_idempotent_json_safe_and_keeps_override_order():
    step = {
        "method": "l1_unstructured",
        "amount": 0.2,
        "n": INF,
        "layers": {
            "fc*": {"amount": 0.5},
            "@conv": {"method": "ln_structured", "dim": 0},
            "fc1.weight": {"amount": 0},
            "@output": {"method": "random_unstructured"},
        },
    }
    r = P.resolve_prune_step(step)
    assert "n" not in {k for k in r if k != "layers"}  # top-level L1 has no n
    assert r["layers"] == [
        {"select": "fc*", "method": "l1_unstructured", "amount": 0.5},
        {"select": "@conv", "method": "ln_structured", "amount": 0.2, "n": "inf", "dim": 0},
        {"select": "fc1.weight", "skip": True},
        {"select": "@output", "method": "random_unstructured", "amount": 0.2},
    ]
    assert "seed" not in r  # a random override without a seed: derived per state by the DAG
    assert P.resolve_prune_step(r) == r
    assert P.resolve_prune_step(json.loads(json.dumps(r, sort_keys=True))) == r
    swapped = dict(step, layers=dict(reversed(list(step["layers"].items()))))
    assert json.dumps(P.resolve_prune_step(swapped), sort_keys=True) != json.dumps(r, sort_keys=True)
    assert "Infinity" not in json.dumps(r)
    skip_spellings = [{"skip": True}, {"amount": 0}, {"amount": 0.0}, {"skip": True, "amount": 0}]
    resolved = {
        json.dumps(
            P.resolve_prune_step({"method": "l1_unstructured", "amount": 0.2, "layers": {"fc3.weight": s}}),
            sort_keys=True,
        )
        for s in skip_spellings
    }
    assert len(resolved) == 1
    from mlprune.spec.steps import resolve_step

    fs = resolve_step({"prune": {"method": "from_state", "state": "abc"}}).as_dict()
    assert fs == {"prune": {"method": "from_state", "from": "input:mask"}} and resolve_step(fs).as_dict() == fs


def _one_line_error(fn, *needles):
    with pytest.raises(SpecError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


@pytest.mark.parametrize(
    "amount,needle",
    [
        (True, "True"),
        (0, "0"),
        (-3, "-3"),
        (0.0, "0.0"),
        (1.0, "1.0"),
        (1.5, "1.5"),
        (-0.2, "-0.2"),
        ("0.2", "'0.2'"),
        (None, "None"),
        (float("nan"), "nan"),
    ],
)
def test_bad_amounts_name_the_value(amount, needle):
    msg = _one_line_error(lambda: P.compute_mask("l1_unstructured", torch.ones(4, 4), amount, None), needle, "allowed")
    assert "(0, 1)" in msg
    _one_line_error(lambda: P.resolve_prune_step({"method": "l1_unstructured", "amount": amount}), needle, "allowed")


def test_bad_specs_name_the_value():
    base = {"method": "l1_unstructured", "amount": 0.2}
    _one_line_error(lambda: P.resolve_prune_step({**base, "methd": 1}), "'methd'", "allowed", "amount")
    _one_line_error(
        lambda: P.resolve_prune_step({"method": "l2_magic", "amount": 0.2}), "'l2_magic'", "l1_unstructured", "synflow"
    )
    _one_line_error(lambda: P.resolve_prune_step({"amount": 0.2}), "method")
    _one_line_error(lambda: P.resolve_prune_step({"method": "l1_unstructured"}), "amount")
    _one_line_error(lambda: P.resolve_prune_step({**base, "scope": "net"}), "'net'", "global")
    _one_line_error(
        lambda: P.resolve_prune_step({"method": "ln_structured", "amount": 0.2, "scope": "global"}),
        "global",
        "ln_structured",
    )
    _one_line_error(lambda: P.resolve_prune_step({**base, "n": 2}), "'n'", "ln_structured")
    _one_line_error(lambda: P.resolve_prune_step({**base, "dim": 0}), "'dim'", "structured")
    _one_line_error(
        lambda: P.resolve_prune_step({"method": "random_structured", "amount": 0.2, "n": 2}), "'n'", "random_structured"
    )
    _one_line_error(lambda: P.resolve_prune_step({"method": "ln_structured", "amount": 0.2, "n": 3}), "3", "inf")
    _one_line_error(lambda: P.resolve_prune_step({"method": "ln_structured", "amount": 0.2, "dim": -1}), "-1")
    _one_line_error(lambda: P.resolve_prune_step({**base, "bias": True}), "bias", "not supported")
    _one_line_error(lambda: P.resolve_prune_step({**base, "seed": -1}), "-1")
    _one_line_error(
        lambda: P.resolve_prune_step({**base, "layers": {"@outptu": {"amount": 0.1}}}), "'@outptu'", "@output"
    )
    _one_line_error(
        lambda: P.resolve_prune_step({**base, "layers": {"fc3.weight": {"amout": 0.1}}}), "'amout'", "amount"
    )
    _one_line_error(
        lambda: P.resolve_prune_step({**base, "layers": {"fc3.weight": {"amount": 1.5}}}), "1.5", "fc3.weight"
    )
    _one_line_error(lambda: P.resolve_prune_step({**base, "layers": {"fc3.weight": {"n": 2}}}), "'n'", "ln_structured")
    _one_line_error(
        lambda: P.resolve_prune_step({**base, "layers": {"fc3.weight": {"skip": True, "amount": 0.1}}}), "skip"
    )
    from mlprune.spec.steps import resolve_step

    _one_line_error(lambda: resolve_step({"prune": {"method": "from_state"}}), "from_state", "'from'")
    _one_line_error(
        lambda: resolve_step({"prune": {"method": "from_state", "state": "x", "amount": 0.2}}),
        "'amount'",
        "method, from",
    )
    _one_line_error(lambda: resolve_step({"transplant": {"from": "x", "amount": 0.2}}), "'amount'", "from")
    _one_line_error(
        lambda: P.layer_plan(KINDS, {**base, "layers": {"fc4.weight": {"amount": 0.1}}}), "'fc4.weight'", "fc3.weight"
    )
    _one_line_error(lambda: P.compute_mask("ln_structured", torch.ones(4, 4), 0.5, None, dim=2), "dim 2", "(4, 4)")
    _one_line_error(lambda: P.compute_mask("ln_structured", torch.ones(4), 0.5, None, dim=0), "(4,)")
    _one_line_error(lambda: P.compute_mask("l1_unstructured", torch.ones(4), 0.5, None, dim=0), "'dim'")
    _one_line_error(lambda: P.compute_mask("l1_unstructured", torch.ones(4), 5, None), "5", "4")
    _one_line_error(
        lambda: P.compute_mask("l1_unstructured", torch.ones(4), 0.5, torch.ones(5, dtype=torch.bool)), "(5,)"
    )
    weights, masks = _weights()
    _one_line_error(
        lambda: P.prune_masks(weights, masks, KINDS, {"method": "l1_unstructured", "amount": 500}, generator=None),
        "500",
        "conv1.weight",
    )
    _one_line_error(
        lambda: P.prune_masks(weights, {"x.weight": torch.ones(2, dtype=torch.bool)}, KINDS, base, generator=None),
        "x.weight",
    )


def test_tokens_matching_nothing_are_fine():
    kinds = {"fc1.weight": "linear", "fc2.weight": "linear"}  # no conv
    plan = P.layer_plan(kinds, {"method": "l1_unstructured", "amount": 0.2, "layers": {"@conv": {"amount": 0.5}}})
    assert all(p["amount"] == 0.2 for p in plan.values())
    assert math.isclose(plan["fc2.weight"]["amount"], 0.2)
