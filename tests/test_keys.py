"""Keys stay: every recipe plans the keys mlprune 0.1.0 planned, unless its maths moved for a stated reason.

A changed key means every user's cache of that state silently stops hitting. If the maths of a
step really change, bump spec.keys.SEMANTICS_VERSION (every key moves) or change the recipe on
purpose and list it in CHANGED with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlprune.recipes import compile_recipe

REPO = Path(__file__).resolve().parents[1]
V01 = json.loads((REPO / "tests" / "data" / "recipe_keys_v0.1.json").read_text())
V01.pop("_about")

# recipe -> why its keys moved on purpose
CHANGED = {
    "sign_mixedL1": "retraining lr 1e-5 on digits: +-1 networks diverge to NaN at 0.01 (NaN states are "
    "refused); biases set to their signs too, as the seed's reinit_schema_sign_lenet.py does",
    "sign_structuredL1": "same as sign_mixedL1",
    "sign_structuredL2": "same as sign_mixedL1",
    "sign_unstructuredL1": "same as sign_mixedL1",
    "zhou_mixedL1": "biases set to std x sign too, as the seed's reinit_schema_zhou_lenet.py does",
    "zhou_structuredL1": "same as zhou_mixedL1",
    "zhou_structuredL2": "same as zhou_mixedL1",
    "zhou_unstructuredL1": "same as zhou_mixedL1",
    "lt_structuredL-inf": "n = -inf, as the seed's pruning_schema_lenet_structuredl-inf.py (it was +inf)",
    "lt_unstructuredL1_alexnet": "the seed's recipe prunes after the full training on CIFAR-10 (it was the "
    "mask-after-epoch-1 protocol on MNIST)",
}


@pytest.mark.parametrize("name", sorted(V01))
def test_every_recipe_keeps_its_keys(name):
    recipe, _, protocol = name.partition("@")
    if recipe in CHANGED:
        pytest.skip(f"{recipe}: keys moved on purpose: {CHANGED[recipe]}")
    plan = compile_recipe(REPO / "recipes" / f"{recipe}.yaml", {"protocol": protocol} if protocol else {})
    assert plan.keys == V01[name]


def test_changed_recipes_still_share_what_they_did_not_change():
    """A recipe changed on purpose keeps the states it shares with the others (root, first training)."""
    for recipe in CHANGED:
        plan = compile_recipe(REPO / "recipes" / f"{recipe}.yaml")
        assert plan.keys["root"] == V01[recipe]["root"] and plan.keys["train"] == V01[recipe]["train"]
