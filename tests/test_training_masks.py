"""Masks hold during training: pruned weights stay exactly +0.0, kept ones train (every optimizer)."""

from __future__ import annotations

import pytest
import torch

from mlprune.data import load_data
from mlprune.models import build_model, prunable
from mlprune.spec.steps import resolve_train
from mlprune.training import loop as training


@pytest.mark.parametrize(
    "optimizer,extra",
    [
        ("sgd", {"momentum": 0.9, "weight_decay": 0.01}),
        (
            "sgd",
            {
                "momentum": 0.9,
                "nesterov": True,
                "precision": "bf16",
                "lr_schedule": {"kind": "multistep", "milestones": ["20it"]},
                "warmup": "5it",
                "label_smoothing": 0.1,
            },
        ),
        ("adam", {"weight_decay": 0.01}),
        ("adamw", {"weight_decay": 0.1}),
    ],
)
def test_pruned_weights_stay_positive_zero_and_kept_ones_move(optimizer, extra):
    data = load_data("digits")
    model = build_model("lenet_300_100", num_classes=10, input_shape=data.input_shape, seed=0)
    params = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(0)
    masks = {name: torch.rand(params[name].shape, generator=gen) > 0.5 for name in prunable(model)}
    with torch.no_grad():  # pruned entries start non-zero, some negative: train() must zero them
        for name in masks:
            params[name].add_(0.1 * torch.sign(torch.randn(params[name].shape, generator=gen)))
    before = {name: params[name].detach().clone() for name in masks}
    step = resolve_train({"epochs": 1, "optimizer": optimizer, "lr": 0.01, **extra}).options
    seen = []
    training.train(
        model,
        masks,
        data,
        step,
        seed=0,
        calls=training.Callbacks(on_epoch=lambda epoch, m, history: seen.append(epoch)),
    )
    assert seen == [1]
    for name, mask in masks.items():
        w = params[name].detach()
        pruned = w[~mask]
        assert torch.equal(pruned, torch.zeros_like(pruned)), name
        assert not torch.signbit(pruned).any(), f"{name}: a pruned weight is -0.0"
        assert not torch.equal(w[mask], before[name][mask]), f"{name}: kept weights did not train"
