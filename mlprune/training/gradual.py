"""Masks on a network in training: its masked parameters, pruned entries set to zero, and gradual
magnitude pruning (train option ``sparsity_schedule``; `training.loop` describes when it prunes).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import SpecError

__all__ = ["GRADUAL_METHOD", "GradualPruning", "apply_masks", "gradual_masks", "masked_parameters"]


# magnitude is what Zhu & Gupta's gradual pruning ranks by
GRADUAL_METHOD = "l1_unstructured"


def gradual_masks(weights: dict, current: dict, kinds: dict, target: float, scope: str) -> dict:
    """The masks (CPU) of gradual pruning's step to sparsity `target`: the smallest-magnitude remaining
    weights go, per layer or over all layers (`scope` global); `weights` and `current` on the CPU."""
    from ..pruning.masks import compute_mask, prune_masks

    new = dict(current)
    if scope == "global":
        total = sum(m.numel() for m in current.values())
        k = sum(int(m.sum()) for m in current.values()) - (total - round(target * total))
        if k > 0:
            new = prune_masks(
                weights, current, kinds, {"method": GRADUAL_METHOD, "amount": k, "scope": "global"}, generator=None
            )
    else:
        for name, mask in current.items():
            k = int(mask.sum()) - (mask.numel() - round(target * mask.numel()))
            if k > 0:
                new[name] = compute_mask(GRADUAL_METHOD, weights[name], k, mask)
    return new


class GradualPruning:
    """Brings `masks` (updated in place) to the timeline's sparsity at its pruning steps (`line`: the
    training's `loop.Timeline`)."""

    def __init__(self, model: nn.Module, masks: dict, line, optimizer):
        from ..models import prunable

        self.model, self.masks, self.line, self.optimizer = model, masks, line, optimizer
        self.kinds = {name: kind for name, kind in prunable(model).items() if name in masks}
        self.steps = set(line.gradual["steps"])

    def prune(self, i: int, keeps: list) -> None:
        params = dict(self.model.named_parameters())
        # only prunable weights: masks of removed channels' biases / BatchNorm entries ride along unchanged
        weights = {name: params[name].detach().to("cpu") for name in self.kinds}
        current = {name: self.masks[name].to("cpu") for name in self.kinds}
        new = gradual_masks(weights, current, self.kinds, self.line.sparsity(i), self.line.gradual["scope"])
        for name, mask in new.items():
            self.masks[name] = mask.to(params[name].device)
        pairs = masked_parameters(self.model, self.masks)
        apply_masks(pairs)
        # a newly pruned weight forgets its momentum / Adam moments: it stays exactly +0.0 from here on
        with torch.no_grad():
            for param, pruned in pairs:
                for value in self.optimizer.state.get(param, {}).values():
                    if isinstance(value, torch.Tensor) and value.shape == param.shape:
                        value.masked_fill_(pruned, 0.0)
        keeps[:] = [(param, (~pruned).to(param.dtype)) for param, pruned in pairs]

    def sparsity(self) -> float:
        total = sum(self.masks[name].numel() for name in self.kinds)
        return (total - sum(int(self.masks[name].sum()) for name in self.kinds)) / total if total else 0.0


def masked_parameters(model: nn.Module, masks: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(parameter, pruned-entries) pairs for every masked parameter of the model."""
    params = dict(model.named_parameters())
    missing = set(masks) - set(params)
    if missing:
        raise SpecError(f"mask for {sorted(missing)[0]!r} has no parameter in the model")
    return [
        (params[name], ~mask.to(device=params[name].device, dtype=torch.bool))
        for name, mask in masks.items()
        if not bool(mask.all())
    ]


@torch.no_grad()
def apply_masks(pairs) -> None:
    for param, pruned in pairs:
        param.masked_fill_(pruned, 0.0)
