"""The 33 seed experiments, pinned to the seed's own files (/work/shared/seed: schemas/, recipes/).

The table below was written by reading each seed recipe (recipe_<name>.py: dataset, model, the
first training's and the rounds' epochs, the prune and reinit schemas, the number of rounds) and
each pruning schema (pruning_schema_*.py: per layer, the torch.nn.utils.prune function, amount,
axis, n) once, by hand. The test compiles each recipe with its `paper` protocol (the seed's
protocol) and checks the plan's per-layer pruning of every round, its reinit and its trainings
against the table, so a recipe cannot drift from the experiment it stands for.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from mlprune.models import build_model, prunable
from mlprune.pruning import layer_plan
from mlprune.recipes import compile_recipe

REPO = Path(__file__).resolve().parents[1]

L1 = ("ln_structured", 1, 1)  # prune.ln_structured(amount=0.2, axis=1, n=1)
L2 = ("ln_structured", 2, 1)
LMINF = ("ln_structured", "-inf", 1)  # n=float('-inf')
RS = ("random_structured", None, 1)  # prune.random_structured(amount=0.2, axis=1)
U = ("l1_unstructured", None, None)  # prune.l1_unstructured(amount=0.2)
RU = ("random_unstructured", None, None)
SKIP = None  # the layer is not in the schema

# the seed's layer names (pruning_schema_lenet_*.py) and ours for models.LeNet
LENET_LAYERS = {
    "conv1": "features.0.weight",
    "conv2": "features.3.weight",
    "fc1": "classifier.0.weight",
    "fc2": "classifier.2.weight",
    "fc3": "classifier.4.weight",
}
ALEXNET_LAYERS = [
    "features.0",
    "features.3",
    "features.6",
    "features.8",
    "features.10",
    "classifier.1",
    "classifier.4",
    "classifier.6",
]
VGG11_LAYERS = [
    "features.0",
    "features.3",
    "features.6",
    "features.8",
    "features.11",
    "features.13",
    "features.16",
    "features.18",
    "classifier.0",
    "classifier.3",
    "classifier.6",
]


def lenet(conv, fc):
    return {"conv1": conv, "conv2": conv, "fc1": fc, "fc2": fc, "fc3": fc}


def layers(names, conv, fc, n_conv):
    return {name: (conv if i < n_conv else fc) for i, name in enumerate(names)}


# name: (model, dataset, per-layer prune of rounds 1-10, of rounds 11-20, reinit strategy or None (fine-tuning))
# every schema uses amount=0.2; every seed recipe runs 20 rounds; trainings are 30 epochs (see EPOCHS)
SEED = {
    "lt_unstructuredL1": ("lenet", "mnist", lenet(U, U), None, "rewind"),
    "lt_structuredL1": ("lenet", "mnist", lenet(L1, L1), None, "rewind"),
    "lt_structuredL2": ("lenet", "mnist", lenet(L2, L2), None, "rewind"),
    "lt_structuredL-inf": ("lenet", "mnist", lenet(LMINF, LMINF), None, "rewind"),
    "lt_structuredrandom": ("lenet", "mnist", lenet(RS, RS), None, "rewind"),
    "lt_unstructuredrandom": ("lenet", "mnist", lenet(RU, RU), None, "rewind"),
    "lt_mixedL1": ("lenet", "mnist", lenet(L1, U), None, "rewind"),
    "lt_convonlystructuredL1": ("lenet", "mnist", lenet(L1, SKIP), None, "rewind"),
    "lt_fcnonlyunstructuredL1": ("lenet", "mnist", lenet(SKIP, U), None, "rewind"),
    "lt_half_structuredL1_half_unstructuredL1": ("lenet", "mnist", lenet(L1, L1), lenet(U, U), "rewind"),
    "lt_half_unstructuredL1_half_structuredL1": ("lenet", "mnist", lenet(U, U), lenet(L1, L1), "rewind"),
    "finetuning_unstructuredL1": ("lenet", "mnist", lenet(U, U), None, None),
    "finetuning_structuredL1": ("lenet", "mnist", lenet(L1, L1), None, None),
    "finetuning_structuredL2": ("lenet", "mnist", lenet(L2, L2), None, None),
    "finetuning_mixedL1": ("lenet", "mnist", lenet(L1, U), None, None),
    "sign_unstructuredL1": ("lenet", "mnist", lenet(U, U), None, "sign"),
    "sign_structuredL1": ("lenet", "mnist", lenet(L1, L1), None, "sign"),
    "sign_structuredL2": ("lenet", "mnist", lenet(L2, L2), None, "sign"),
    "sign_mixedL1": ("lenet", "mnist", lenet(L1, U), None, "sign"),
    "zhou_unstructuredL1": ("lenet", "mnist", lenet(U, U), None, "zhou"),
    "zhou_structuredL1": ("lenet", "mnist", lenet(L1, L1), None, "zhou"),
    "zhou_structuredL2": ("lenet", "mnist", lenet(L2, L2), None, "zhou"),
    "zhou_mixedL1": ("lenet", "mnist", lenet(L1, U), None, "zhou"),
    "alexnet_unstructuredL1": ("alexnet", "mnist", layers(ALEXNET_LAYERS, U, U, 5), None, "rewind"),
    "alexnet_structuredL1": ("alexnet", "mnist", layers(ALEXNET_LAYERS, L1, L1, 5), None, "rewind"),
    "alexnet_mixedL1": ("alexnet", "mnist", layers(ALEXNET_LAYERS, L1, U, 5), None, "rewind"),
    "alexnet_unstructuredL1_cifar10": ("alexnet", "cifar10", layers(ALEXNET_LAYERS, U, U, 5), None, "rewind"),
    "alexnet_structuredL1_cifar10": ("alexnet", "cifar10", layers(ALEXNET_LAYERS, L1, L1, 5), None, "rewind"),
    "alexnet_mixedL1_cifar10": ("alexnet", "cifar10", layers(ALEXNET_LAYERS, L1, U, 5), None, "rewind"),
    "lt_unstructuredL1_alexnet": ("alexnet", "cifar10", layers(ALEXNET_LAYERS, U, U, 5), None, "rewind"),
    "vgg11_unstructuredL1_cifar10": ("vgg11", "cifar10", layers(VGG11_LAYERS, U, U, 8), None, "rewind"),
    "vgg11_structuredL1_cifar10": ("vgg11", "cifar10", layers(VGG11_LAYERS, L1, L1, 8), None, "rewind"),
    "vgg11_mixedL1_cifar10": ("vgg11", "cifar10", layers(VGG11_LAYERS, L1, U, 8), None, "rewind"),
}
# the seed trains 30 epochs first and after each reinit; lt_unstructuredL1 prunes the network as it is after
# epoch 1 of each training (its x after 1 epoch, the 29-epoch continuation y as a side branch)
EPOCHS = 30
MASK_EPOCH = {"lt_unstructuredL1": 1}


def _ours(model: str, seed_layer: str) -> str:
    return LENET_LAYERS[seed_layer] if model == "lenet" else f"{seed_layer}.weight"


@functools.cache
def _kinds(model: str) -> dict:
    shape = (3, 32, 32) if model != "lenet" else (1, 28, 28)
    return prunable(build_model(model, num_classes=10, input_shape=shape))


def test_the_table_covers_the_33_seed_recipes():
    seed_files = (
        {p.stem.removeprefix("recipe_") for p in Path("/work/shared/seed/recipes").glob("recipe_*.py")}
        if Path("/work/shared/seed/recipes").is_dir()
        else set(SEED)
    )
    assert len(SEED) == 33 and set(SEED) == seed_files


@pytest.mark.parametrize("name", sorted(SEED))
def test_seed_recipe_matches_the_seed_files(name):
    model, dataset, first_half, second_half, reinit = SEED[name]
    plan = compile_recipe(REPO / "recipes" / f"{name}.yaml", {"protocol": "paper"})
    root = plan.node("root").root
    assert (root["model"], root["dataset"]) == (model, dataset)
    assert plan.params["rounds"] == 20
    kinds = _kinds(model)
    for r in range(1, 21):
        expected = first_half if (second_half is None or r <= 10) else second_half
        got = layer_plan(kinds, plan.node(f"prune{r}").steps[0]["prune"])
        assert set(got) == {_ours(model, layer) for layer in expected}, (name, r)
        for layer, want in expected.items():
            config = got[_ours(model, layer)]
            if want is SKIP:
                assert config == {"skip": True}, (name, r, layer)
                continue
            method, n, dim = want
            assert config["method"] == method and config["amount"] == 0.2, (name, r, layer, config)
            assert config.get("n") == n and config.get("dim") == dim, (name, r, layer, config)
        steps = plan.node(f"round{r}").steps
        if reinit is None:  # fine-tuning: the pruned weights train on (a `keep` reinit changes nothing)
            assert [next(iter(s)) for s in steps] in (["train"], ["reinit", "train"])
            assert steps[0].get("reinit", {"strategy": "keep"})["strategy"] == "keep"
            assert plan.node(f"round{r}").inputs == {}
        else:
            assert steps[0]["reinit"]["strategy"] == reinit and plan.node(f"round{r}").inputs == {"weights": "root"}
            # the seed's sign/zhou schemas set every layer's bias too (reinit_schema_sign/zhou_lenet.py)
            assert steps[0]["reinit"].get("biases", False) == (reinit in ("sign", "zhou"))
        assert steps[-1]["train"]["epochs"] == EPOCHS
    assert plan.node("train").steps[0]["train"]["epochs"] == EPOCHS
    if name in MASK_EPOCH:
        assert plan.node("prune1").parent == f"train@{MASK_EPOCH[name]}ep"
    else:
        assert plan.node("prune1").parent == "train"
