"""analysis.py against small hand-computed cases."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from mlprune import analysis
from mlprune.errors import SpecError


def B(*rows):
    return torch.tensor(rows, dtype=torch.bool)


# ------------------------------------------------------------------ sparsity


def test_sparsity_global_and_per_param():
    masks = {"a": torch.tensor([1, 0, 1, 0], dtype=torch.bool), "b": torch.tensor([1, 1, 1, 1, 0, 0], dtype=torch.bool)}
    s = analysis.sparsity(masks)
    # 10 prunable weights, 4 masked
    assert s == pytest.approx({"sparsity": 0.4, "sparsity.a": 0.5, "sparsity.b": 2 / 6})
    assert set(s) == {"sparsity", "sparsity.a", "sparsity.b"}
    assert analysis.remaining_fraction(masks) == pytest.approx(0.6)
    assert analysis.compression_ratio(masks) == pytest.approx(10 / 6)


def test_sparsity_dense_and_fully_pruned():
    dense = {"w": torch.ones(3, 3, dtype=torch.bool)}
    assert analysis.sparsity(dense)["sparsity"] == 0.0
    assert analysis.compression_ratio(dense) == 1.0
    empty = {"w": torch.zeros(3, 3, dtype=torch.bool)}
    assert analysis.sparsity(empty)["sparsity"] == 1.0
    assert analysis.compression_ratio(empty) == math.inf
    assert analysis.sparsity({}) == {"sparsity": 0.0}


def test_compression_ratio_all_counts_non_prunable_parameters():
    model = nn.Linear(4, 2)  # weight 8 + bias 2 = 10 parameters
    masks = {"weight": torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)}
    # remaining: 3 kept weights + 2 biases = 5 -> 10 / 5
    assert analysis.compression_ratio_all(masks, model) == pytest.approx(2.0)
    assert analysis.compression_ratio_all(masks, dict(model.named_parameters())) == pytest.approx(2.0)
    assert analysis.compression_ratio(masks) == pytest.approx(8 / 3)
    with pytest.raises(SpecError):
        analysis.compression_ratio_all({"nope": torch.ones(1, dtype=torch.bool)}, model)


# --------------------------------------------------------------------- FLOPs


class TinyNet(nn.Module):
    def __init__(self, padding=0, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=padding, stride=stride)
        self.fc = None
        self.padding, self.stride = padding, stride
        out = (6 + 2 * padding - 3) // stride + 1
        self.fc = nn.Linear(2 * out * out, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_flops_tiny_convnet_by_hand():
    net = TinyNet()
    # conv: 2x1x3x3 = 18 weights, output 4x4 = 16 positions -> 288; fc: 32x3 = 96
    res = analysis.flops(net, (1, 6, 6))
    assert res == {"flops_dense": 288 + 96, "flops_masked": 288 + 96, "theoretical_speedup": 1.0}
    conv_mask = torch.zeros(2, 1, 3, 3, dtype=torch.bool)
    conv_mask[0] = True  # 9 of 18 kept -> 9 x 16 = 144
    fc_mask = torch.zeros(3, 32, dtype=torch.bool)
    fc_mask[0] = True  # 32 of 96 kept
    res = analysis.flops(net, (1, 6, 6), {"conv.weight": conv_mask, "fc.weight": fc_mask})
    assert res["flops_dense"] == 384
    assert res["flops_masked"] == 144 + 32
    assert res["theoretical_speedup"] == pytest.approx(384 / 176)
    assert isinstance(res["flops_dense"], int) and isinstance(res["flops_masked"], int)


def test_flops_padding_stride_batch_dim_and_side_effects():
    net = TinyNet(padding=1, stride=2)  # output 3x3 -> conv 18 x 9 = 162; fc 18 x 3 = 54
    net.train()
    rng = torch.random.get_rng_state()
    res = analysis.flops(net, (1, 1, 6, 6))
    assert res["flops_dense"] == 162 + 54
    assert net.training  # mode restored
    assert torch.equal(rng, torch.random.get_rng_state())
    assert not net.conv._forward_hooks and not net.fc._forward_hooks


# ------------------------------------------------------------------- Jaccard


def test_jaccard_hand_computed():
    a = {"x": B([1, 1, 0], [1, 0, 0]), "y": torch.tensor([1, 1, 1], dtype=torch.bool)}
    b = {"x": B([1, 0, 1], [1, 0, 0]), "y": torch.tensor([1, 0, 0], dtype=torch.bool)}
    res = analysis.jaccard(a, b)
    # x: both keep (0,0),(1,0) = 2; either keeps 4 -> 2/4. y: 1/3. overall (2+1)/(4+3)
    assert res["per_layer"] == pytest.approx({"x": 2 / 4, "y": 1 / 3})
    assert res["overall"] == pytest.approx(3 / 7)


def test_jaccard_both_empty_is_one():
    e = {"x": torch.zeros(2, 2, dtype=torch.bool)}
    assert analysis.jaccard(e, e) == {"overall": 1.0, "per_layer": {"x": 1.0}}


@pytest.mark.parametrize(
    "other",
    [
        {"z": torch.ones(2, 3, dtype=torch.bool)},
        {"x": torch.ones(3, 2, dtype=torch.bool)},
    ],
)
def test_jaccard_different_architectures(other):
    with pytest.raises(SpecError, match="states of different architectures") as exc:
        analysis.jaccard({"x": torch.ones(2, 3, dtype=torch.bool)}, other)
    assert "\n" not in str(exc.value)


def test_jaccard_matrix():
    m0 = {"x": torch.tensor([1, 1, 0, 0], dtype=torch.bool), "y": torch.tensor([1, 0], dtype=torch.bool)}
    m1 = {"x": torch.tensor([1, 0, 1, 0], dtype=torch.bool), "y": torch.tensor([1, 0], dtype=torch.bool)}
    m2 = {"x": torch.tensor([0, 0, 1, 1], dtype=torch.bool), "y": torch.tensor([0, 1], dtype=torch.bool)}
    mat, labels = analysis.jaccard_matrix([m0, m1, m2])
    assert labels == ["0", "1", "2"]
    # overall: 0-1: x 1/3, y 1/1 -> 2/4; 0-2: 0/6; 1-2: x 1/3, y 0/2 -> 1/5
    expected = np.array([[1, 2 / 4, 0], [2 / 4, 1, 1 / 5], [0, 1 / 5, 1]])
    np.testing.assert_allclose(mat, expected)
    mat_x, labels = analysis.jaccard_matrix([m0, m1, m2], labels=["a", "b", "c"], layer="x")
    assert labels == ["a", "b", "c"]
    np.testing.assert_allclose(mat_x, [[1, 1 / 3, 0], [1 / 3, 1, 1 / 3], [0, 1 / 3, 1]])
    with pytest.raises(SpecError, match="unknown layer"):
        analysis.jaccard_matrix([m0, m1], layer="nope")
    with pytest.raises(SpecError):
        analysis.jaccard_matrix([m0, m1], labels=["only one"])


# ---------------------------------------------------------- emergent structure


def test_prob_unit_pruned_hand_computed():
    # N=4, K=2, s=2: C(2,2)/C(4,2) = 1/6
    assert analysis.prob_unit_pruned(4, 2, 2) == pytest.approx(1 / 6, rel=1e-15)
    # N=6, K=2, s=3: C(3,2)/C(6,2) = 3/15; s=2: C(4,2)/C(6,2) = 6/15
    assert analysis.prob_unit_pruned(6, 2, 3) == pytest.approx(3 / 15, rel=1e-15)
    assert analysis.prob_unit_pruned(6, 2, 2) == pytest.approx(6 / 15, rel=1e-15)
    assert analysis.prob_unit_pruned(4, 0, 2) == 1.0  # nothing kept
    assert analysis.prob_unit_pruned(4, 3, 2) == 0.0  # 3 kept cannot avoid 2 of 4
    assert analysis.prob_unit_pruned(4, 4, 1) == 0.0  # dense


def test_prob_unit_pruned_large_n_path_matches_closed_form():
    n, k, s = 50_000, 10_000, 3
    closed = (n - k) * (n - k - 1) * (n - k - 2) / (n * (n - 1) * (n - 2))
    assert analysis.prob_unit_pruned(n, k, s) == pytest.approx(closed, rel=1e-12)
    # tiny probabilities do not underflow to garbage: (1/2)^~s scale
    p = analysis.prob_unit_pruned(1_000_000, 500_000, 600)
    assert 0 < p < 1e-150


def test_emergent_structure_hand_computed():
    masks = {
        # linear 2x2, K=2: row 1 entirely pruned; no column entirely pruned
        "fc.weight": B([1, 1], [0, 0]),
        # conv 2x3x1x1 (N=6), K=2: filter 1 entirely pruned, input channel 2 entirely pruned
        "conv.weight": torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool).reshape(2, 3, 1, 1),
    }
    kinds = {"conv.weight": "conv", "fc.weight": "linear"}
    res = analysis.emergent_structure(masks, kinds)
    assert list(res) == ["conv.weight", "fc.weight"]  # kinds order
    fc = res["fc.weight"]
    assert fc["kind"] == "linear" and fc["output_layer"] is True
    assert fc["n_weights"] == 4 and fc["n_kept"] == 2 and fc["sparsity"] == 0.5
    assert fc["dim0"]["units"] == 2 and fc["dim0"]["unit_size"] == 2 and fc["dim0"]["pruned_units"] == 1
    assert fc["dim0"]["observed"] == 0.5
    assert fc["dim0"]["expected"] == pytest.approx(1 / 6)
    assert fc["dim0"]["ratio"] == pytest.approx(3.0)
    assert fc["dim1"]["observed"] == 0.0 and fc["dim1"]["ratio"] == 0.0
    conv = res["conv.weight"]
    assert conv["output_layer"] is False
    # dim0: 2 filters of 3 weights: C(3,2)/C(6,2) = 1/5
    assert conv["dim0"]["observed"] == 0.5
    assert conv["dim0"]["expected"] == pytest.approx(1 / 5)
    assert conv["dim0"]["ratio"] == pytest.approx(2.5)
    # dim1: 3 input channels of 2 weights: C(4,2)/C(6,2) = 2/5; one of 3 pruned
    assert conv["dim1"]["unit_size"] == 2 and conv["dim1"]["pruned_units"] == 1
    assert conv["dim1"]["expected"] == pytest.approx(2 / 5)
    assert conv["dim1"]["ratio"] == pytest.approx((1 / 3) / (2 / 5))


def test_emergent_structure_compares_structured_masks_with_random_structured_pruning():
    # 4 output neurons x 3 inputs, neurons 1 and 3 removed: 6 of 12 weights kept
    mask = B([1, 1, 1], [0, 0, 0], [1, 1, 1], [0, 0, 0])
    structured = analysis.emergent_structure({"w": mask}, structured={"w"})["w"]
    assert structured["baseline"] == "random structured (dim 0)"
    # removing 2 of 4 rows at random prunes 2 rows: observed = expected, ratio 1
    assert structured["dim0"]["observed"] == structured["dim0"]["expected"] == 0.5
    assert structured["dim0"]["ratio"] == 1.0
    # a column goes only when every row does: expected 0, none pruned: ratio undefined
    assert structured["dim1"]["expected"] == 0.0 and math.isnan(structured["dim1"]["ratio"])
    # the same mask from unstructured pruning: a row of 3 all pruned with 6 of 12 kept is C(9,6)/C(12,6)
    plain = analysis.emergent_structure({"w": mask})["w"]
    assert plain["baseline"] == "random unstructured"
    assert plain["dim0"]["expected"] == pytest.approx(math.comb(9, 6) / math.comb(12, 6))
    assert plain["dim0"]["ratio"] == pytest.approx(0.5 / (84 / 924))


def test_a_very_sparse_unstructured_mask_is_not_taken_for_a_structured_one():
    # one kept weight is a "product of slices" (row 0 x column 0), yet it came from unstructured pruning
    mask = B([1, 0, 0], [0, 0, 0], [0, 0, 0])
    entry = analysis.emergent_structure({"w": mask})["w"]
    assert entry["baseline"] == "random unstructured"
    assert entry["dim0"]["expected"] == pytest.approx(math.comb(6, 1) / math.comb(9, 1))


def test_emergent_structure_dense_ratio_undefined():
    res = analysis.emergent_structure({"w": torch.ones(3, 4, dtype=torch.bool)}, None)
    assert res["w"]["kind"] == "linear"
    assert res["w"]["dim0"]["expected"] == 0.0 and math.isnan(res["w"]["dim0"]["ratio"])


# ------------------------------------------------------------ weight stability


def _series():
    w = [
        {"l": torch.tensor([1.0, 2.0, 3.0, 4.0]), "bias": torch.zeros(1)},
        {"l": torch.tensor([2.0, 4.0, 0.0, 5.0]), "bias": torch.zeros(1)},
        {"l": torch.tensor([2.0, 0.0, 0.0, -5.0]), "bias": torch.zeros(1)},
    ]
    m = [
        {"l": torch.tensor([1, 1, 1, 1], dtype=torch.bool)},
        {"l": torch.tensor([1, 1, 0, 1], dtype=torch.bool)},
        {"l": torch.tensor([1, 0, 0, 1], dtype=torch.bool)},
    ]
    return w, m


def test_weight_stability_hand_computed():
    w, m = _series()
    res = analysis.weight_stability(w, m)
    assert res["transitions"] == ["0->1", "1->2"]
    assert res["jaccard"]["per_layer"]["l"] == pytest.approx([3 / 4, 2 / 3])
    assert res["jaccard"]["overall"] == pytest.approx([3 / 4, 2 / 3])
    # 0->1 on common {0,1,3}: a=[1,2,4], b=[2,4,5]; 1->2 on {0,3}: a=[2,5], b=[2,-5]
    assert res["cosine"]["per_layer"]["l"] == pytest.approx([30 / math.sqrt(21 * 45), -21 / 29])
    assert res["relative_l2"]["per_layer"]["l"] == pytest.approx([math.sqrt(6 / 21), 10 / math.sqrt(29)])
    assert res["cosine"]["overall"] == pytest.approx(res["cosine"]["per_layer"]["l"])
    assert res["n_common"]["overall"] == [3, 2]


def test_weight_stability_errors():
    w, m = _series()
    with pytest.raises(SpecError):
        analysis.weight_stability(w[:2], m)
    with pytest.raises(SpecError, match="different architectures"):
        analysis.weight_stability(w[:2], [m[0], {"other": m[1]["l"]}])


def test_weight_trajectories_nan_after_pruning():
    w, m = _series()
    rng = torch.random.get_rng_state()
    tr = analysis.weight_trajectories(w, m, "l", k=10)
    assert torch.equal(rng, torch.random.get_rng_state())
    expected = np.array([[1, 2, 2], [2, 4, np.nan], [3, np.nan, np.nan], [4, 5, -5]])
    np.testing.assert_array_equal(tr, expected)
    # a revived weight stays NaN ("after it was pruned")
    m2 = [m[0], m[2], m[0]]
    tr2, idx = analysis.weight_trajectories(w, m2, "l", k=4, return_indices=True)
    assert list(idx) == [0, 1, 2, 3]
    assert np.isnan(tr2[1, 2]) and np.isnan(tr2[2, 2]) and tr2[0, 2] == 2.0


def test_weight_trajectories_sampling_reproducible():
    w = [{"p": torch.arange(100.0)}, {"p": torch.arange(100.0) * 2}]
    m = [{"p": torch.ones(100, dtype=torch.bool)}, {"p": torch.ones(100, dtype=torch.bool)}]
    a = analysis.weight_trajectories(w, m, "p", k=5, generator=torch.Generator().manual_seed(3))
    b = analysis.weight_trajectories(w, m, "p", k=5, generator=torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (5, 2) and np.all(a[:, 1] == 2 * a[:, 0])
    with pytest.raises(SpecError, match="unknown parameter"):
        analysis.weight_trajectories(w, m, "q")


# ------------------------------------------------------ accuracy vs remaining


def test_accuracy_vs_remaining_aggregates_over_seeds():
    rows = [
        {"recipe": "B", "round": 0, "remaining": 1.0, "test_accuracy": 0.5, "seed": 0},
        {"recipe": "A", "round": 1, "remaining": 0.8, "test_accuracy": 0.7, "seed": 0, "early_stop_iteration": 100},
        {"recipe": "A", "round": 0, "remaining": 1.0, "test_accuracy": 0.9, "seed": 0},
        {"recipe": "A", "round": 0, "remaining": 1.0, "test_accuracy": 0.8, "seed": 1},
        {"recipe": "A", "round": 1, "remaining": 0.8, "test_accuracy": float("nan"), "seed": 1},
    ]
    agg = analysis.accuracy_vs_remaining(rows)
    assert [(a["recipe"], a["round"]) for a in agg] == [("B", 0), ("A", 0), ("A", 1)]
    a0 = agg[1]
    assert a0["n"] == 2 and a0["seeds"] == [0, 1]
    assert a0["mean"] == pytest.approx(0.85)
    assert a0["std"] == pytest.approx(math.sqrt(2 * 0.05**2 / 1))  # sample std, ddof=1
    assert a0["remaining"] == 1.0
    a1 = agg[2]
    assert a1["n"] == 1 and a1["std"] == 0.0 and a1["mean"] == pytest.approx(0.7)  # NaN row skipped
    assert a1["early_stop_iteration"] == 100 and a1["early_stop_n"] == 1
    assert "early_stop_iteration" not in a0


def test_accuracy_vs_remaining_errors():
    row = {"recipe": "A", "round": 0, "remaining": 1.0, "test_accuracy": 0.9, "seed": 0}
    with pytest.raises(SpecError, match="several rows"):
        analysis.accuracy_vs_remaining([row, dict(row)])
    with pytest.raises(SpecError, match="lacks seed"):
        analysis.accuracy_vs_remaining([{k: v for k, v in row.items() if k != "seed"}])
    with pytest.raises(SpecError, match="fraction"):
        analysis.accuracy_vs_remaining([dict(row, remaining=80)])
