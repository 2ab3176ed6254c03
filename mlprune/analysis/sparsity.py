"""Sparsity, compression and FLOPs of masked networks (the definitions are in `mlprune.analysis`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..errors import SpecError


def _counts(masks: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """(total prunable weights, kept prunable weights)."""
    total = sum(int(m.numel()) for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return total, kept


def sparsity(masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Fraction of prunable weights masked: globally and per parameter.

    Returns ``{"sparsity": s, "sparsity.<param>": s_param, ...}`` -- the exact
    metric names logged on every state. With no prunable weights at all the
    global sparsity is 0.0; an empty parameter has sparsity 0.0.
    """
    out: dict[str, float] = {}
    total, kept = _counts(masks)
    out["sparsity"] = (total - kept) / total if total else 0.0
    for name, m in masks.items():
        n = int(m.numel())
        out[f"sparsity.{name}"] = (n - int(m.sum())) / n if n else 0.0
    return out


def remaining_fraction(masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of prunable weights kept (1 - global sparsity); 1.0 with no prunable weights."""
    total, kept = _counts(masks)
    return kept / total if total else 1.0


def compression_ratio(masks: Mapping[str, torch.Tensor]) -> float:
    """Prunable weights / kept prunable weights (1.0 when dense, ``inf`` when all pruned)."""
    total, kept = _counts(masks)
    if total == 0:
        return 1.0
    return total / kept if kept else math.inf


def compression_ratio_all(masks: Mapping[str, torch.Tensor], params) -> float:
    """ShrinkBench's compression ratio: all parameters / remaining parameters.

    ``params`` is an ``nn.Module`` (its ``named_parameters()``; buffers such as
    batch-norm running statistics are not parameters and are not counted) or a
    mapping name -> tensor of the parameters to count (floating-point tensors
    only; pass ``dict(model.named_parameters())``, not a ``state_dict`` with
    buffers). Masked parameters count their kept entries; every other parameter
    counts in full (unlike ShrinkBench we do not count accidental zeros as pruned).
    """
    if isinstance(params, nn.Module):
        items = dict(params.named_parameters())
    else:
        items = {k: v for k, v in params.items() if torch.is_floating_point(v)}
    missing = sorted(set(masks) - set(items))
    if missing:
        raise SpecError(f"masks name parameters the model does not have: {', '.join(missing)}")
    total = remaining = 0
    for name, p in items.items():
        total += int(p.numel())
        remaining += int(masks[name].sum()) if name in masks else int(p.numel())
    if total == 0:
        return 1.0
    return total / remaining if remaining else math.inf


# ------------------------------------------------------------------------------ FLOPs

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def flops(model: nn.Module, input_shape: Sequence[int], masks: Mapping[str, torch.Tensor] | None = None) -> dict:
    """Multiply-adds of the convolution and linear layers, dense and masked.

    Counted with forward hooks on one all-zeros input of batch size 1
    (``input_shape`` is ``(C, H, W)``; a leading batch dimension of 1 is also
    accepted). For a convolution each weight is used once per output position:
    dense = weight.numel() x output positions (H x W for Conv2d), masked = kept
    weights x output positions. For a linear layer dense = weight.numel() (times
    the number of positions when the input has extra dimensions), masked = kept
    weights (times positions). Biases, activations, pooling, normalization and
    transposed convolutions are not counted (ShrinkBench's convention). A module
    called twice in a forward pass counts twice. Layers without a mask entry count
    as dense.

    Returns ``{"flops_dense": int, "flops_masked": int, "theoretical_speedup": float}``
    where the speedup is dense / masked (``inf`` if nothing is left, 1.0 for a
    model without conv/linear layers).
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    masks = masks or {}
    counts = {"dense": 0, "masked": 0}
    hooks = []

    def make_hook(wname: str):
        def hook(module, inputs, output):
            w = module.weight
            if isinstance(module, _CONVS):
                positions = output.numel() // output.shape[1]  # batch 1: product of spatial dims
            else:
                positions = output.numel() // module.out_features
            kept = int(masks[wname].sum()) if wname in masks else int(w.numel())
            counts["dense"] += int(w.numel()) * positions
            counts["masked"] += kept * positions

        return hook

    for mname, module in model.named_modules():
        if isinstance(module, (*_CONVS, nn.Linear)) and getattr(module, "weight", None) is not None:
            wname = f"{mname}.weight" if mname else "weight"
            if wname in masks and tuple(masks[wname].shape) != tuple(module.weight.shape):
                raise SpecError(
                    f"mask {wname!r} has shape {tuple(masks[wname].shape)}, weight has {tuple(module.weight.shape)}"
                )
            hooks.append(module.register_forward_hook(make_hook(wname)))
    try:
        ref = next(model.parameters(), None)
        x = torch.zeros(
            (1, *shape),
            dtype=ref.dtype if ref is not None else torch.float32,
            device=ref.device if ref is not None else "cpu",
        )
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                model(x)
        finally:
            model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    dense, masked = counts["dense"], counts["masked"]
    if dense == 0:
        speedup = 1.0
    else:
        speedup = dense / masked if masked else math.inf
    return {"flops_dense": dense, "flops_masked": masked, "theoretical_speedup": speedup}
