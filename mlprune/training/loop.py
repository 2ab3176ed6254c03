"""The training and evaluation loops (torch).

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

Time is counted in iterations (optimizer steps) of the whole training: step i
uses the LR ``lr * lr_factor(i)`` and the batch ``i mod per_epoch`` of epoch
``i // per_epoch`` (data order seeded by (seed, epoch)). A training runs from
``schedule_from`` to ``stop_at`` (default: its end), so a stopped training is a
prefix of the full one and a resumed one its continuation, bit for bit on the CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import SpecError
from ..spec.times import parse_time
from ..spec.steps import TRAIN_SCHEMA
from . import OPTIMIZERS, SCHEDULES, schedule_of
from .schedules import lr_factor


class Diverged(SpecError):
    """Training produced a non-finite loss or weight."""


@dataclass
class Timeline:
    """Where a train step runs on its schedule, in iterations."""

    per_epoch: int          # optimizer steps per epoch
    total: int              # the schedule's length (its end)
    start: int              # first step run (schedule_from)
    stop: int               # one past the last step run (stop_at, else total)
    warmup: int
    schedule: dict = field(default_factory=dict)   # {"kind", options in iterations}

    def lr(self, base: float, i: int) -> float:
        entry = SCHEDULES[self.schedule["kind"]]
        return base * lr_factor(i, self.total, entry.load(), self.schedule, self.warmup)


def timeline(options: dict, per_epoch: int) -> Timeline:
    """The iterations a resolved train step runs, checked against its data's epoch length."""
    length = parse_time(options["epochs"]) if "epochs" in options else parse_time(options["steps"])
    total = length.iterations(per_epoch)
    start = parse_time(options.get("schedule_from", "0it")).iterations(per_epoch)
    stop = parse_time(options["stop_at"]).iterations(per_epoch) if options.get("stop_at") else total
    if not 0 <= start <= stop <= total:
        raise SpecError(f"train step runs from {options.get('schedule_from', '0it')} ({start} it) to "
                        f"{options.get('stop_at') or length} ({stop} it) of a {length} ({total} it) training: "
                        f"times must be in order and inside the training")
    schedule = schedule_of(options.get("lr_schedule", TRAIN_SCHEMA["lr_schedule"].default))
    if "milestones" in schedule:
        schedule["milestones"] = [parse_time(m).iterations(per_epoch) for m in schedule["milestones"]]
    warmup = parse_time(options.get("warmup", "0it")).iterations(per_epoch)
    return Timeline(per_epoch, total, start, stop, warmup, schedule)


def masked_parameters(model: nn.Module, masks: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(parameter, pruned-entries) pairs for every masked parameter of the model."""
    params = dict(model.named_parameters())
    missing = set(masks) - set(params)
    if missing:
        raise SpecError(f"mask for {sorted(missing)[0]!r} has no parameter in the model")
    return [(params[name], ~mask.to(device=params[name].device, dtype=torch.bool))
            for name, mask in masks.items() if not bool(mask.all())]


@torch.no_grad()
def apply_masks(pairs) -> None:
    for param, pruned in pairs:
        param.masked_fill_(pruned, 0.0)


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def train(model: nn.Module, masks: dict[str, torch.Tensor], data, options: dict, *, seed: int,
          device: torch.device | None = None, progress=None, on_epoch=None, checkpoints=None,
          channels_last: bool = False, compile: bool = False) -> dict:
    """Train `model` in place as the resolved train step `options` says; returns per-epoch histories.

    ``channels_last`` / ``compile`` (run options): train in the channels_last memory format / through
    ``torch.compile``; the model's own parameters are trained either way (its state_dict keeps its names).

    ``seed``: the data-order seed. ``on_epoch(epoch, model, history)`` is called at each epoch end
    (heartbeats); ``checkpoints``: {iteration: fn(model, history so far)} called right after that many
    steps of the schedule (at an epoch's end, after its history is recorded). Histories are
    ``{name: [(epoch, value)]}`` with epochs counted on the whole schedule (a resumed training
    continues the numbering), plus ``iterations``: steps run.
    """
    # Denormal floats make plain SGD on the CPU ~2.5x slower; flushing them is deterministic
    # and numerically negligible. (torch cannot report the previous setting, so it stays on.)
    torch.set_flush_denormal(True)
    device = device or torch.device("cpu")
    batch_size = options["batch_size"]
    line = timeline(options, data.batches_per_epoch(batch_size))
    pairs = masked_parameters(model, masks)
    apply_masks(pairs)
    keeps = [(param, (~pruned).to(param.dtype)) for param, pruned in pairs]  # 1.0 = kept, 0.0 = pruned
    optimizer = OPTIMIZERS[options["optimizer"]].load()(model.parameters(), options)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if compile else model
    precision = options.get("precision", "fp32")
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    loss_fn = nn.CrossEntropyLoss(label_smoothing=options.get("label_smoothing", 0.0))
    history: dict[str, list] = {"train_loss": [], "lr": []}
    has_val = data.val_batches(batch_size) is not None
    if has_val:
        history.update(val_loss=[], val_accuracy=[])
    checkpoints = dict(checkpoints or {})
    base_lr = options["lr"]
    i = line.start
    non_blocking = device.type == "cuda"
    # Dropout draws from the global RNG: seeded per step from (seed, step), a training does not depend on
    # what ran before it in the process, and a resumed one draws what the full one drew.
    rng_steps = any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], enabled=rng_steps):
        i = _run(model, forward, data, options, line, seed, device, precision, scaler, loss_fn, optimizer, keeps,
                 history, checkpoints, has_val, base_lr, non_blocking, rng_steps, progress, on_epoch, channels_last)
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise Diverged(f"training diverged: parameter {bad[0]!r} has non-finite values after "
                       f"{i} iterations")
    history["iterations"] = i - line.start
    return history


def _step_seed(seed: int, i: int) -> int:
    return (seed * 2654435761 + i * 40503 + 12345) & ((1 << 63) - 1)


def _run(model, forward, data, options, line, seed, device, precision, scaler, loss_fn, optimizer, keeps, history,
         checkpoints, has_val, base_lr, non_blocking, rng_steps, progress, on_epoch, channels_last) -> int:
    batch_size = options["batch_size"]
    i = line.start
    while i < line.stop:
        epoch, first = divmod(i, line.per_epoch)
        due = []
        model.train()
        total = torch.zeros((), dtype=torch.float64, device=device)
        count = 0
        lr = base_lr
        for x, y in data.train_batches(batch_size, seed=seed, epoch=epoch, skip=first):
            lr = line.lr(base_lr, i)
            if rng_steps:
                torch.manual_seed(_step_seed(seed, i))
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = x.to(device, non_blocking=non_blocking), y.to(device, non_blocking=non_blocking)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            optimizer.zero_grad(set_to_none=True)
            with _autocast(device, precision):
                loss = loss_fn(forward(x), y)
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
            with torch.no_grad():
                for param, keep in keeps:
                    if param.grad is not None:
                        param.grad.mul_(keep)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                for param, keep in keeps:
                    param.mul_(keep)
                total += loss.detach().double() * len(y)
            count += len(y)
            i += 1
            if i in checkpoints:
                if i % line.per_epoch == 0 or i == line.stop:
                    due.append(i)  # at an epoch's end: after its history is recorded
                else:
                    checkpoints[i](model, history)
            if i >= line.stop:
                break
        mean = float(total) / max(count, 1)
        done_epoch = -(-i // line.per_epoch)  # the epoch this piece ended in, counted from 1
        if not math.isfinite(mean) and scaler is None:
            raise Diverged(f"training diverged in epoch {done_epoch}: the mean train loss is {mean}")
        history["train_loss"].append((done_epoch, mean))
        history["lr"].append((done_epoch, lr))
        if has_val:
            val_loss, val_accuracy = evaluate(model, data.val_batches(256), device=device)
            history["val_loss"].append((done_epoch, val_loss))
            history["val_accuracy"].append((done_epoch, val_accuracy))
        if progress is not None:
            progress(done_epoch, -(-line.stop // line.per_epoch), mean)
        for point in due:
            checkpoints[point](model, history)
        if on_epoch is not None:
            on_epoch(done_epoch, model, history)
    return i


@torch.no_grad()
def evaluate(model: nn.Module, batches, *, device: torch.device | None = None) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) in eval mode (dropout off, batch norm frozen)."""
    device = device or next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        total_loss += nn.functional.cross_entropy(logits.float(), y, reduction="sum").double()
        correct += (logits.argmax(dim=1) == y).sum()
        count += len(y)
    model.train(was_training)
    if count == 0:
        return float("nan"), float("nan")
    return float(total_loss) / count, int(correct) / count
