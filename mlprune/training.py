"""Training and evaluation loops.

Masks are enforced on every optimizer step: the gradients of pruned weights
are zeroed before the step (so momentum and Adam moments of pruned entries
stay zero) and the pruned weights are set to exactly 0.0 after it (so weight
decay, decoupled or not, cannot move them). The optimizer is created fresh for
every train step: optimizer state is reset at every reinit by construction.

Pruned weights are set to +0.0 once at the start of a train step; in the loop,
gradients and weights are multiplied by a 0/1 float mask, which is ~15x faster
on the CPU than ``masked_fill_`` with a bool mask (benchmarks/RESULTS.md). Zero
gradients and zero optimizer state leave a +0.0 weight at +0.0 under SGD, Adam
and AdamW, so the product is +0.0 too; unpruned entries are multiplied by 1.0,
which changes no bit.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .errors import SpecError, choice_error

OPTIMIZERS = ("sgd", "adam", "adamw")

TRAIN_DEFAULTS = {
    "epochs": 1,
    "lr": 0.01,
    "optimizer": "sgd",
    "momentum": 0.0,
    "weight_decay": 0.0,
    "batch_size": 32,
    "seed": None,
}
_SGD_ONLY = ("momentum",)


def resolve_train_step(step: dict) -> dict:
    """Validate a train step and fill its defaults canonically (this dict is hashed into keys)."""
    if not isinstance(step, dict):
        raise SpecError(f"train step must be a mapping, got {step!r}")
    unknown = set(step) - set(TRAIN_DEFAULTS)
    if unknown:
        raise SpecError(f"unknown train option {sorted(unknown)[0]!r}; allowed: {', '.join(TRAIN_DEFAULTS)}")
    resolved = {**TRAIN_DEFAULTS, **step}
    if resolved["optimizer"] not in OPTIMIZERS:
        raise choice_error("optimizer", resolved["optimizer"], OPTIMIZERS)
    epochs = resolved["epochs"]
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise SpecError(f"epochs must be an integer >= 0, got {epochs!r}")
    batch = resolved["batch_size"]
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise SpecError(f"batch_size must be an integer >= 1, got {batch!r}")
    for name in ("lr", "momentum", "weight_decay"):
        value = resolved[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or not math.isfinite(value):
            raise SpecError(f"{name} must be a finite number >= 0, got {value!r}")
        resolved[name] = float(value)
    if resolved["lr"] == 0:
        raise SpecError("lr must be > 0, got 0")
    if resolved["seed"] is not None and (isinstance(resolved["seed"], bool) or not isinstance(resolved["seed"], int)):
        raise SpecError(f"train seed must be an integer or null, got {resolved['seed']!r}")
    if resolved["optimizer"] != "sgd":
        for name in _SGD_ONLY:
            if step.get(name):
                raise SpecError(f"train option {name!r} applies to optimizer sgd only, not {resolved['optimizer']!r}")
            resolved.pop(name)
    return resolved


def _optimizer(params, step: dict) -> torch.optim.Optimizer:
    if step["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=step["lr"], momentum=step["momentum"], weight_decay=step["weight_decay"])
    if step["optimizer"] == "adam":
        return torch.optim.Adam(params, lr=step["lr"], weight_decay=step["weight_decay"])
    return torch.optim.AdamW(params, lr=step["lr"], weight_decay=step["weight_decay"])


def masked_parameters(model: nn.Module, masks: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(parameter, pruned-entries) pairs for every masked parameter of the model."""
    params = dict(model.named_parameters())
    missing = set(masks) - set(params)
    if missing:
        raise SpecError(f"mask for {sorted(missing)[0]!r} has no parameter in the model")
    return [(params[name], ~mask.to(torch.bool)) for name, mask in masks.items() if not bool(mask.all())]


@torch.no_grad()
def apply_masks(pairs) -> None:
    for param, pruned in pairs:
        param.masked_fill_(pruned, 0.0)


def train(model: nn.Module, masks: dict[str, torch.Tensor], data, step: dict, *, seed: int,
          progress=None, on_epoch=None) -> dict[str, list[float]]:
    """Train in place for step['epochs'] epochs; returns per-epoch histories.

    `on_epoch(epoch, model, history)` is called after each epoch (checkpoints, heartbeats).
    """
    # Denormal floats make plain SGD on the CPU ~2.5x slower; flushing them is deterministic
    # and numerically negligible. (torch cannot report the previous setting, so it stays on.)
    torch.set_flush_denormal(True)
    return _train(model, masks, data, step, seed=seed, progress=progress, on_epoch=on_epoch)


def _train(model, masks, data, step, *, seed, progress, on_epoch):
    pairs = masked_parameters(model, masks)
    apply_masks(pairs)
    keeps = [(param, (~pruned).to(param)) for param, pruned in pairs]  # 1.0 = kept, 0.0 = pruned
    optimizer = _optimizer(model.parameters(), step)
    loss_fn = nn.CrossEntropyLoss()
    history: dict[str, list[float]] = {"train_loss": []}
    has_val = data.val_batches(step["batch_size"]) is not None
    if has_val:
        history.update(val_loss=[], val_accuracy=[])
    for epoch in range(step["epochs"]):
        model.train()
        total, count = 0.0, 0
        for x, y in data.train_batches(step["batch_size"], seed=seed, epoch=epoch):
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            with torch.no_grad():
                for param, keep in keeps:
                    if param.grad is not None:
                        param.grad.mul_(keep)
                optimizer.step()
                for param, keep in keeps:
                    param.mul_(keep)
            total += loss.item() * len(y)
            count += len(y)
        history["train_loss"].append(total / max(count, 1))
        if has_val:
            val_loss, val_accuracy = evaluate(model, data.val_batches(step["batch_size"]))
            history["val_loss"].append(val_loss)
            history["val_accuracy"].append(val_accuracy)
        if progress is not None:
            progress(epoch + 1, step["epochs"], history["train_loss"][-1])
        if on_epoch is not None:
            on_epoch(epoch + 1, model, history)
    return history


@torch.no_grad()
def evaluate(model: nn.Module, batches) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) in eval mode (dropout off, batch norm frozen)."""
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for x, y in batches:
        logits = model(x)
        total_loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(dim=1) == y).sum())
        count += len(y)
    model.train(was_training)
    if count == 0:
        return float("nan"), float("nan")
    return total_loss / count, correct / count

