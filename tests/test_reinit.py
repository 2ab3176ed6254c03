"""mlprune.reinit: each strategy on a tiny hand-made example, invariants, spec rules."""

import copy
import json

import pytest
import torch

from mlprune import reinit as R
from mlprune.errors import SpecError

KINDS = {"fc.weight": "linear", "out.weight": "linear"}


def _example():
    current = {
        "fc.weight": torch.tensor([[1.0, -2.0], [3.0, -4.0]]),
        "fc.bias": torch.tensor([0.1, 0.2]),
        "out.weight": torch.tensor([[5.0, 6.0, -7.0]]),
        "bn.running_mean": torch.tensor([9.0]),
    }
    source = {
        "fc.weight": torch.tensor([[0.5, -0.25], [0.0, -1.0]]),
        "fc.bias": torch.tensor([-0.3, 0.3]),
        "out.weight": torch.tensor([[2.0, -2.0, 0.0]]),
        "bn.running_mean": torch.tensor([0.0]),
    }
    fresh = {
        "fc.weight": torch.tensor([[7.0, 8.0], [-9.0, 10.0]]),
        "fc.bias": torch.tensor([1.0, -1.0]),
        "out.weight": torch.tensor([[-0.5, 0.5, 1.5]]),
        "bn.running_mean": torch.tensor([0.0]),
    }
    masks = {
        "fc.weight": torch.tensor([[True, False], [True, True]]),
        "out.weight": torch.tensor([[True, True, False]]),
    }
    return current, source, fresh, masks


def _call(strategy, generator=None, **kw):
    current, source, fresh, masks = _example()
    args = dict(current=current, source=source, fresh=fresh, masks=masks, kinds=KINDS, generator=generator)
    args.update(kw)
    return R.reinit_weights(strategy, **args)


def _assert_masked_zero(weights, masks):
    for name, m in masks.items():
        w = weights[name][~m]
        assert torch.equal(w, torch.zeros_like(w)) and not torch.signbit(w).any(), name


def test_rewind_takes_all_tensors_from_source():
    w, m = _call("rewind")
    assert w["fc.weight"].tolist() == [[0.5, 0.0], [0.0, -1.0]]
    assert w["out.weight"].tolist() == [[2.0, -2.0, 0.0]]
    assert w["fc.bias"].tolist() == pytest.approx([-0.3, 0.3])
    assert w["bn.running_mean"].tolist() == [0.0]
    assert all(torch.equal(m[k], _example()[3][k]) for k in m)
    _assert_masked_zero(w, m)


def test_random_takes_fresh_with_the_same_mask():
    w, m = _call("random")
    assert w["fc.weight"].tolist() == [[7.0, 0.0], [-9.0, 10.0]]
    assert w["out.weight"].tolist() == [[-0.5, 0.5, 0.0]]
    assert w["fc.bias"].tolist() == [1.0, -1.0]
    assert all(torch.equal(m[k], _example()[3][k]) for k in m)


def test_sign_is_unscaled_plus_minus_one_zero_maps_to_plus():
    w, m = _call("sign")
    assert w["fc.weight"].tolist() == [[1.0, 0.0], [1.0, -1.0]]  # source 0.0 -> +1
    assert w["out.weight"].tolist() == [[1.0, -1.0, 0.0]]
    assert w["fc.bias"].tolist() == pytest.approx([-0.3, 0.3])  # non-prunable: from source
    _assert_masked_zero(w, m)


def test_zhou_is_layer_std_times_sign():
    w, m = _call("zhou")
    _, source, _, _ = _example()
    s_fc = float(source["fc.weight"].std())  # Bessel-corrected, all 4 entries
    s_out = float(source["out.weight"].std())
    assert s_fc == 0.625  # by hand: mean -0.1875, sum sq dev 1.171875, /3, sqrt
    torch.testing.assert_close(w["fc.weight"], torch.tensor([[s_fc, 0.0], [s_fc, -s_fc]]))
    torch.testing.assert_close(w["out.weight"], torch.tensor([[s_out, -s_out, 0.0]]))
    assert w["fc.bias"].tolist() == pytest.approx([-0.3, 0.3])
    _assert_masked_zero(w, m)


def test_sign_and_zhou_with_biases_treat_the_biases_like_the_seed():
    """The seed's reinit_schema_sign/zhou_lenet.py set every pruned layer's bias the same way."""
    _, source, _, _ = _example()
    w, _ = _call("sign", biases=True)
    assert w["fc.bias"].tolist() == [-1.0, 1.0]  # signs of the source bias [-0.3, 0.3]
    w, _ = _call("zhou", biases=True)
    s_bias = float(source["fc.bias"].std())
    torch.testing.assert_close(w["fc.bias"], torch.tensor([-s_bias, s_bias]))
    with pytest.raises(SpecError, match="biases"):
        R.resolve_reinit_step({"strategy": "rewind", "biases": True})
    assert R.resolve_reinit_step({"strategy": "sign", "biases": True})["biases"] is True
    assert "biases" not in R.resolve_reinit_step({"strategy": "sign", "biases": False})  # default: key unchanged


def test_keep_leaves_weights_and_zeroes_masked():
    w, m = _call("keep", source=None, fresh=None)
    assert w["fc.weight"].tolist() == [[1.0, 0.0], [3.0, -4.0]]
    assert w["out.weight"].tolist() == [[5.0, 6.0, 0.0]]
    assert w["fc.bias"].tolist() == pytest.approx([0.1, 0.2])


def test_shuffle_tiny_example():
    w, m = _call("shuffle", generator=torch.Generator().manual_seed(0))
    _, source, _, masks = _example()
    for name in masks:
        assert int(m[name].sum()) == int(masks[name].sum())
        assert torch.equal(w[name], source[name].masked_fill(~m[name], 0.0))
    assert w["fc.bias"].tolist() == pytest.approx([-0.3, 0.3])


def test_shuffle_preserves_counts_changes_positions_and_is_seeded():
    g = torch.Generator().manual_seed(1)
    shapes = {"a.weight": (40, 30), "b.weight": (10, 8, 3, 3), "c.weight": (10, 40)}
    kinds = {k: "linear" for k in shapes}
    current = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    source = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    masks = {k: torch.rand(s, generator=g) > p for (k, s), p in zip(shapes.items(), (0.3, 0.8, 0.95))}

    def run(seed):
        return R.reinit_weights(
            "shuffle",
            current=current,
            source=source,
            fresh=None,
            masks=masks,
            kinds=kinds,
            generator=torch.Generator().manual_seed(seed),
        )

    w, m = run(7)
    for k in shapes:
        assert int(m[k].sum()) == int(masks[k].sum()), k
        assert not torch.equal(m[k], masks[k]), k
        assert torch.equal(w[k], source[k].masked_fill(~m[k], 0.0))
    w2, m2 = run(7)
    assert all(torch.equal(m[k], m2[k]) for k in shapes)
    _, m3 = run(8)
    assert any(not torch.equal(m[k], m3[k]) for k in shapes)
    # uniform within the layer: over many shuffles each position is kept ~ at the layer's rate
    gen = torch.Generator().manual_seed(3)
    one = {"x.weight": torch.tensor([True] * 3 + [False] * 7)}
    kept = torch.zeros(10)
    for _ in range(400):
        _, mm = R.reinit_weights(
            "shuffle",
            current={"x.weight": torch.ones(10)},
            source={"x.weight": torch.ones(10)},
            fresh=None,
            masks=one,
            kinds={"x.weight": "linear"},
            generator=gen,
        )
        kept += mm["x.weight"].float()
    assert ((kept / 400 - 0.3).abs() < 0.1).all()


@pytest.mark.parametrize("strategy", sorted(R.STRATEGIES))
def test_inputs_not_mutated_outputs_not_aliased_masked_exact_zero(strategy):
    current, source, fresh, masks = _example()
    # masked entries of the inputs are nonzero, some negative: catches leaks and -0.0
    before = [copy.deepcopy(x) for x in (current, source, fresh, masks)]
    w, m = R.reinit_weights(
        strategy,
        current=current,
        source=source,
        fresh=fresh,
        masks=masks,
        kinds=KINDS,
        generator=torch.Generator().manual_seed(0),
    )
    for orig, now in zip(before, (current, source, fresh, masks)):
        assert orig.keys() == now.keys()
        assert all(torch.equal(orig[k], now[k]) for k in orig)
    assert set(w) == set(current) and set(m) == set(masks)
    _assert_masked_zero(w, m)
    for d in (current, source, fresh):
        for k in w:
            assert w[k].data_ptr() != d[k].data_ptr()
    for k in m:
        assert m[k].data_ptr() != masks[k].data_ptr() and m[k].dtype == torch.bool


def _one_line_error(fn, *needles):
    with pytest.raises(SpecError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_missing_inputs_and_architecture_mismatch():
    current, source, fresh, masks = _example()
    for s in ("rewind", "sign", "zhou", "shuffle"):
        _one_line_error(lambda s=s: _call(s, source=None, generator=torch.Generator()), s, "source")
    _one_line_error(lambda: _call("random", fresh=None), "fresh")
    _one_line_error(lambda: _call("shuffle"), "Generator")
    bad = dict(source, **{"out.weight": torch.zeros(5, 3)})
    _one_line_error(
        lambda: _call("rewind", source=bad),
        "rewind source has another architecture",
        "'out.weight'",
        "(5, 3)",
        "(1, 3)",
    )
    less = {k: v for k, v in source.items() if k != "fc.bias"}
    _one_line_error(lambda: _call("rewind", source=less), "another architecture", "'fc.bias'")
    more = dict(source, extra=torch.zeros(1))
    _one_line_error(lambda: _call("sign", source=more), "sign source", "'extra'")
    _one_line_error(lambda: _call("random", fresh=bad), "fresh initialization", "(5, 3)")
    _one_line_error(lambda: _call("rewnd"), "'rewnd'", "rewind", "zhou")
    _one_line_error(lambda: _call("rewind", scale=2), "'scale'")
    _one_line_error(lambda: _call("rewind", masks={"fc.weight": masks["fc.weight"]}), "'out.weight'")
    _one_line_error(
        lambda: _call("rewind", masks=dict(masks, **{"fc.weight": torch.ones(3, dtype=torch.bool)})), "(3,)"
    )
    # the resolved step's own keys are accepted as options (the caller's business)
    w, _ = _call("rewind", to="root", at=None, reset_optimizer=True)
    assert w["fc.weight"][0, 0] == 0.5


# ------------------------------------------------------------------ resolve_reinit_step
def test_resolve_defaults_and_canonical_form():
    r = R.resolve_reinit_step({"strategy": "rewind"})
    assert r == {"strategy": "rewind", "to": "root", "at": None, "reset_optimizer": True}
    assert (
        R.resolve_reinit_step({"strategy": "rewind", "to": "root", "epoch": None, "seed": 5, "reset_optimizer": True})
        == r
    )  # seed does not apply: dropped
    # a rewind point: `epoch: k` is `at: "<k>ep"`; iterations too
    assert R.resolve_reinit_step({"strategy": "rewind", "epoch": 2})["at"] == "2ep"
    assert R.resolve_reinit_step({"strategy": "rewind", "at": 2})["at"] == "2ep"
    assert R.resolve_reinit_step({"strategy": "rewind", "at": "500it"})["at"] == "500it"
    # no default seed: left out, the DAG derives one from the state's key
    assert R.resolve_reinit_step({"strategy": "random"}) == {"strategy": "random", "reset_optimizer": True}
    assert R.resolve_reinit_step({"strategy": "random", "seed": 3}) == {
        "strategy": "random",
        "seed": 3,
        "reset_optimizer": True,
    }
    assert R.resolve_reinit_step({"strategy": "shuffle", "to": "parent", "seed": 3}) == {
        "strategy": "shuffle",
        "to": "parent",
        "at": None,
        "seed": 3,
        "reset_optimizer": True,
    }
    assert R.resolve_reinit_step({"strategy": "keep"}) == {"strategy": "keep", "reset_optimizer": True}
    z = R.resolve_reinit_step({"strategy": "zhou", "to": "state:abc123", "epoch": 2})
    assert z["to"] == "state:abc123" and z["at"] == "2ep"
    for s in R.STRATEGIES:
        r = R.resolve_reinit_step({"strategy": s})
        assert R.resolve_reinit_step(r) == r
        json.dumps(r)


def test_resolve_bad_specs_name_the_value():
    _one_line_error(lambda: R.resolve_reinit_step({"strategy": "rewind", "too": "root"}), "'too'", "allowed", "epoch")
    _one_line_error(lambda: R.resolve_reinit_step({"strategy": "reboot"}), "'reboot'", "rewind")
    _one_line_error(lambda: R.resolve_reinit_step({}), "strategy")
    _one_line_error(
        lambda: R.resolve_reinit_step({"strategy": "rewind", "to": "grandparent"}), "'grandparent'", "state:<ref>"
    )
    _one_line_error(lambda: R.resolve_reinit_step({"strategy": "rewind", "to": "state:"}), "'state:'")
    _one_line_error(lambda: R.resolve_reinit_step({"strategy": "rewind", "epoch": -1}), "-1")
    _one_line_error(lambda: R.resolve_reinit_step({"strategy": "rewind", "epoch": True}), "True")
    _one_line_error(lambda: R.resolve_reinit_step({"strategy": "random", "to": "root"}), "'to'", "random")
    _one_line_error(lambda: R.resolve_reinit_step({"strategy": "keep", "epoch": 1}), "'epoch'", "keep")
    _one_line_error(lambda: R.resolve_reinit_step({"strategy": "random", "seed": "x"}), "'x'")
    _one_line_error(lambda: R.resolve_reinit_step({"strategy": "rewind", "reset_optimizer": "yes"}), "'yes'")
    # states store no optimizer moments: every train step starts a fresh optimizer
    _one_line_error(
        lambda: R.resolve_reinit_step({"strategy": "keep", "reset_optimizer": False}),
        "reset_optimizer",
        "fresh optimizer",
    )
    _one_line_error(lambda: R.resolve_reinit_step({"strategy": "rewind", "at": "5ep", "epoch": 5}), "once")
    _one_line_error(lambda: R.resolve_reinit_step({"strategy": "rewind", "at": "5 epochs"}), "'5 epochs'", "it")
    _one_line_error(lambda: R.resolve_reinit_step({"strategy": "random", "seed": 2**64}), str(2**64))
