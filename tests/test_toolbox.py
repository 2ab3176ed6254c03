"""One LeNet tree on digits using every pruning method and reinit strategy, lineage checked."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

from mlprune import Recipe, SpecError

TRAIN = {"epochs": 2, "lr": 0.01, "momentum": 0.9}


@pytest.fixture
def trained(experiment):
    root = experiment.init(model="lenet", dataset="digits", seed=0, train_size=256)
    return root, root.apply(Recipe.train(**TRAIN, checkpoints=[1]))


def tags(tracking, state):
    return MlflowClient(tracking_uri=tracking).get_run(state.run_id).data.tags


def test_every_pruning_method_off_one_trained_state(experiment, tracking, trained):
    root, network = trained
    methods = {
        "l1_unstructured": {"method": "l1_unstructured", "amount": 0.5},
        "random_unstructured": {"method": "random_unstructured", "amount": 0.5},
        "ln_structured L2 filters": {"method": "ln_structured", "amount": 0.25, "n": 2, "dim": 0},
        "ln_structured Linf": {"method": "ln_structured", "amount": 0.25, "n": "inf", "dim": 1},
        "random_structured": {"method": "random_structured", "amount": 0.25, "dim": 0},
        "global l1": {"method": "l1_unstructured", "amount": 0.5, "scope": "global"},
        "mixed, output at half rate": {
            "method": "l1_unstructured",
            "amount": 0.4,
            "layers": {"@conv": {"method": "ln_structured", "n": 1, "dim": 1}, "@output": {"amount": 0.2}},
        },
    }
    pruned = {name: network.apply(Recipe.prune(**options)) for name, options in methods.items()}
    for name, state in pruned.items():
        assert tags(tracking, state)["mlflow.parentRunId"] == network.run_id, name
        assert 0 < state.metrics["sparsity"] < 1, name
        for param, mask in state.masks.items():
            assert torch.all(state.weights[param][~mask] == 0), (name, param)
    # global scope: one threshold across layers, so per-layer sparsities differ; layer scope: all 50%
    layer = [v for k, v in pruned["l1_unstructured"].metrics.items() if k.startswith("sparsity.")]
    glob = [v for k, v in pruned["global l1"].metrics.items() if k.startswith("sparsity.")]
    assert max(layer) - min(layer) < 0.01 and max(glob) - min(glob) > 0.1
    mixed = pruned["mixed, output at half rate"].metrics
    assert mixed["sparsity.classifier.4.weight"] == pytest.approx(0.2, abs=0.01)
    assert mixed["sparsity.classifier.0.weight"] == pytest.approx(0.4, abs=0.01)
    filters = pruned["ln_structured L2 filters"].masks["features.3.weight"]
    removed = ~filters.reshape(filters.shape[0], -1).any(dim=1)
    assert int(removed.sum()) == 4  # 25% of 16 filters, whole filters
    # mask transplant: the mask of a state of another tree (another seed), recorded as a parent
    other_root = experiment.init(model="lenet", dataset="digits", seed=1, train_size=256)
    transplanted = other_root.apply(Recipe.prune(method="from_state", **{"from": pruned["l1_unstructured"]}))
    assert tags(tracking, transplanted)["mlprune.parent.mask"] == pruned["l1_unstructured"].run_id
    for param, mask in transplanted.masks.items():
        assert torch.equal(mask, pruned["l1_unstructured"].masks[param])
    assert transplanted.metrics["flops_masked"] < transplanted.metrics["flops_dense"]
    assert transplanted.metrics["compression_ratio"] == pytest.approx(1 / (1 - transplanted.metrics["sparsity"]))


def test_every_reinit_strategy_as_siblings_with_their_parents(experiment, tracking, trained):
    root, network = trained
    pruned = network.apply(Recipe.prune(method="l1_unstructured", amount=0.5))
    retrain = Recipe.train(**TRAIN)
    siblings = {
        "rewind": pruned.apply(Recipe.reinit(strategy="rewind", to="root") + retrain),
        "late rewind": pruned.apply(Recipe.reinit(strategy="rewind", to="root", epoch=1) + retrain),
        "random": pruned.apply(Recipe.reinit(strategy="random") + retrain),
        "sign": pruned.apply(Recipe.reinit(strategy="sign", to="root") + retrain),
        "zhou": pruned.apply(Recipe.reinit(strategy="zhou", to="root") + retrain),
        "shuffle": pruned.apply(Recipe.reinit(strategy="shuffle", to="root") + retrain),
        "keep": pruned.apply(Recipe.reinit(strategy="keep") + retrain),
    }
    assert len({s.run_id for s in siblings.values()}) == len(siblings)
    epoch1 = siblings["late rewind"].parents()["weights"]
    assert epoch1.kind == "train" and epoch1.parent.run_id == root.run_id
    assert epoch1.spec["steps"][0]["train"]["epochs"] == 1  # emitted by the first training: a checkpoint
    expected_weights_parent = {
        "rewind": root.run_id,
        "late rewind": epoch1.run_id,
        "sign": root.run_id,
        "zhou": root.run_id,
        "shuffle": root.run_id,
        "random": None,
        "keep": None,
    }
    for name, state in siblings.items():
        t = tags(tracking, state)
        assert t["mlflow.parentRunId"] == pruned.run_id, name
        assert t["mlprune.root"] == root.run_id, name
        assert t.get("mlprune.parent.weights") == expected_weights_parent[name], name
        for param, mask in state.masks.items():
            assert torch.all(state.weights[param][~mask] == 0), (name, param)
    # shuffle keeps each layer's sparsity but moves the mask; the others keep the mask
    for param, mask in pruned.masks.items():
        shuffled = siblings["shuffle"].masks[param]
        assert int(shuffled.sum()) == int(mask.sum())
        assert torch.equal(siblings["rewind"].masks[param], mask)
    assert any(not torch.equal(siblings["shuffle"].masks[p], m) for p, m in pruned.masks.items())


def test_toolbox_bad_input_records_nothing(experiment, tracking, trained):
    root, network = trained
    pruned = network.apply(Recipe.prune(method="l1_unstructured", amount=0.5))
    mlp = experiment.init(model="lenet_300_100", dataset="digits", seed=0)
    finished = len(experiment.store.states())
    bad = [
        (lambda: pruned.apply(Recipe.prune(method="from_state", **{"from": mlp})), "architecture"),
        (lambda: pruned.apply(Recipe.reinit(strategy="rewind", to=mlp)), "architecture"),
        (lambda: pruned.apply(Recipe.prune(method="ln_structured", amount=0.2, dim=7)), "7"),
        (lambda: pruned.apply(Recipe.prune(method="l1_unstructured", amount=10**6)), "1000000"),
        (lambda: pruned.apply(Recipe.prune(method="l1_unstructured", amount=0.2, colour=1)), "colour"),
        (lambda: pruned.apply(Recipe.reinit(strategy="rewind", to="root", epoch=9)), "9"),
        (lambda: pruned.apply(Recipe.reinit(strategy="rewind", to="root", reset_optimizer=False)), "reset_optimizer"),
    ]
    other_tree = experiment.init(model="lenet", dataset="digits", seed=1, train_size=256)
    bad.append((lambda: pruned.apply(Recipe.reinit(strategy="rewind", to=other_tree)), "not an ancestor"))
    for call, fragment in bad:
        with pytest.raises(SpecError) as raised:
            call()
        assert fragment in str(raised.value) and "\n" not in str(raised.value), str(raised.value)
    assert len(experiment.store.states()) == finished + 1  # only the other tree's root


def test_random_controls_really_draw_new_numbers(experiment, trained):
    """Regression: a default seed of 0 made `random` re-create a seed-0 root's init (= a rewind)."""
    root, network = trained
    assert root.spec["root"]["seed"] == 0
    pruned = network.apply(Recipe.prune(method="l1_unstructured", amount=0.5))
    rewound = pruned.apply(Recipe.reinit(strategy="rewind", to="root"))
    fresh = pruned.apply(Recipe.reinit(strategy="random"))
    for param, mask in pruned.masks.items():
        assert torch.equal(fresh.masks[param], mask)
        assert not torch.equal(fresh.weights[param][mask], rewound.weights[param][mask]), param
        assert not torch.equal(fresh.weights[param][mask], root.weights[param][mask]), param
    # random pruning of two different states draws two different masks; an explicit seed gives two
    # dense states the same mask (random pruning does not look at the weights)
    a = network.apply(Recipe.prune(method="random_unstructured", amount=0.5))
    b = rewound.apply(Recipe.prune(method="random_unstructured", amount=0.5))
    assert any(not torch.equal(a.masks[p], b.masks[p]) for p in a.masks)
    seeded = [s.apply(Recipe.prune(method="random_unstructured", amount=0.5, seed=7)) for s in (network, root)]
    assert all(torch.equal(seeded[0].masks[p], seeded[1].masks[p]) for p in a.masks)
