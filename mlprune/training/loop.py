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

Gradual magnitude pruning (train option ``sparsity_schedule``, Zhu & Gupta 2017):
at the pruning steps t0, t0 + Δt, ..., end of the window (`schedule.pruning_steps`),
right after optimizer step t (so the state "after t iterations", a checkpoint or a
training stopped there, includes the pruning at t), the smallest-magnitude remaining
weights go until the sparsity is ``s_t`` (per layer, or over all layers with scope
global); the masks are enforced in between as always and never revive a weight. The
targets are absolute, so repeating the pruning at the first step of a resumed training
changes nothing: a resumed training is still the continuation of the full one. The
masks dict passed in is updated in place: the final state carries the last mask.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import names
from ..errors import SpecError
from ..names import (
    M_EPOCH_TEST_ACCURACY,
    M_EPOCH_TEST_LOSS,
    M_LR,
    M_TRAIN_ACCURACY,
    M_TRAIN_LOSS,
    M_VAL_ACCURACY,
    M_VAL_LOSS,
)
from ..spec.steps import TRAIN_SCHEMA
from ..spec.times import parse_time
from . import OPTIMIZERS, SCHEDULES, SPARSITY_SCHEDULES, schedule_of
from .gradual import GradualPruning, apply_masks, masked_parameters
from .schedules import lr_factor, pruning_steps, target_sparsity
from .sparse import sparse_timeline, step_callbacks


class Diverged(SpecError):
    """Training produced a non-finite loss or weight."""


def non_finite_parameter(model) -> str | None:
    return next((name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())), None)


@dataclass
class Timeline:
    """Where a train step runs on its schedule, in iterations."""

    per_epoch: int  # optimizer steps per epoch
    total: int  # the schedule's length (its end)
    start: int  # first step run (schedule_from)
    stop: int  # one past the last step run (stop_at, else total)
    warmup: int
    schedule: dict = field(default_factory=dict)  # {"kind", options in iterations}
    gradual: dict | None = None  # sparsity_schedule with start / end / every in iterations, and its steps
    sparse: dict | None = None  # sparse_training with update_every / end in iterations

    def lr(self, base: float, i: int) -> float:
        entry = SCHEDULES[self.schedule["kind"]]
        return base * lr_factor(i, self.total, entry.load(), self.schedule, self.warmup)

    def sparsity(self, i: int) -> float:
        """The sparsity gradual pruning brings the network to at its pruning step `i`."""
        g = self.gradual
        shape = SPARSITY_SCHEDULES[g["kind"]].load()
        return target_sparsity(i, g["start"], g["end"], g["initial"], g["final"], shape)


def timeline(options: dict, per_epoch: int) -> Timeline:
    """The iterations a resolved train step runs, checked against its data's epoch length."""
    length = parse_time(options["epochs"]) if "epochs" in options else parse_time(options["steps"])
    total = length.iterations(per_epoch)
    start = parse_time(options.get("schedule_from", "0it")).iterations(per_epoch)
    stop = parse_time(options["stop_at"]).iterations(per_epoch) if options.get("stop_at") else total
    if not 0 <= start <= stop <= total:
        raise SpecError(
            f"train step runs from {options.get('schedule_from', '0it')} ({start} it) to "
            f"{options.get('stop_at') or length} ({stop} it) of a {length} ({total} it) training: "
            f"times must be in order and inside the training"
        )
    schedule = schedule_of(options.get("lr_schedule", TRAIN_SCHEMA["lr_schedule"].default))
    if "milestones" in schedule:
        schedule["milestones"] = [parse_time(m).iterations(per_epoch) for m in schedule["milestones"]]
    warmup = parse_time(options.get("warmup", "0it")).iterations(per_epoch)
    gradual = options.get("sparsity_schedule")
    if gradual:
        gradual = dict(gradual)
        for key in ("start", "end", "every"):
            gradual[key] = parse_time(gradual[key]).iterations(per_epoch)
        if not 0 <= gradual["start"] < gradual["end"] <= total or gradual["every"] < 1:
            raise SpecError(
                f"train sparsity_schedule prunes from {options['sparsity_schedule']['start']} "
                f"({gradual['start']} it) to {options['sparsity_schedule']['end']} ({gradual['end']} it) "
                f"every {gradual['every']} it of a {length} ({total} it) training: the window must be "
                f"inside the training"
            )
        gradual["steps"] = pruning_steps(gradual["start"], gradual["end"], gradual["every"])
    return Timeline(
        per_epoch, total, start, stop, warmup, schedule, gradual, sparse_timeline(options, per_epoch, total)
    )


def autocast_for(device: torch.device, precision: str):
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


@dataclass(frozen=True)
class Callbacks:
    """What a training calls on its way, each optional. ``progress(epoch, epochs, mean train loss)``;
    ``on_epoch(epoch, model, history)`` at each epoch's end (heartbeats); ``checkpoints``: {iteration:
    fn(model, history so far)} called right after that many steps of the schedule (at an epoch's end,
    after its history is recorded). `training.batched` takes the same with ``on_epoch`` and
    ``checkpoints`` per sibling (lists) and ``progress`` given every sibling's mean loss."""

    progress: Callable | None = None
    on_epoch: Callable | list | None = None
    checkpoints: dict | list | None = None


@dataclass(frozen=True)
class Placement:
    """Where and how the network computes (run options): its device, the channels_last memory format,
    ``torch.compile``."""

    device: torch.device | None = None
    channels_last: bool = False
    compile: bool = False


def train(
    model: nn.Module,
    masks: dict[str, torch.Tensor],
    data,
    options: dict,
    *,
    seed: int,
    on: Placement | None = None,
    calls: Callbacks | None = None,
    resumable=None,
) -> dict:
    """Train `model` in place as the resolved train step `options` says; returns per-epoch histories.

    ``seed``: the data-order seed. ``on`` (`Placement`): the device (default the CPU), and whether to train
    in the channels_last memory format / through ``torch.compile``; the model's own parameters are trained
    either way (its state_dict keeps its names). ``calls`` (`Callbacks`): progress, heartbeats, emitted
    checkpoints. Histories are ``{name: [(epoch, value)]}`` with epochs counted on the whole schedule (a
    resumed training continues the numbering), plus ``iterations``: steps run.

    ``resumable`` (`training.checkpoint.TrainingHooks`): the training starts from its checkpoint when
    it has one, stores resumable checkpoints at its cadence, and on a stop request
    (`training.interrupt`) checkpoints and raises `Interrupted`; polled once per iteration.
    """
    # Denormal floats make plain SGD on the CPU ~2.5x slower; flushing them is deterministic
    # and numerically negligible. (torch cannot report the previous setting, so it stays on.)
    torch.set_flush_denormal(True)
    on, calls = on or Placement(), calls or Callbacks()
    device = on.device or torch.device("cpu")
    batch_size = options["batch_size"]
    line = timeline(options, data.batches_per_epoch(batch_size))
    resume = resumable.resume if resumable is not None else None
    if resume is not None:  # weights, buffers and masks as they were after iteration resume.iteration
        from .checkpoint import CheckpointError, restore_network

        if not line.start <= resume.iteration <= line.stop:
            raise CheckpointError(
                f"checkpoint of state {resume.key} at iteration {resume.iteration} is outside its "
                f"training (iterations {line.start} to {line.stop})"
            )
        restore_network(resume, model, masks)
    pairs = masked_parameters(model, masks)
    apply_masks(pairs)
    keeps = [(param, (~pruned).to(param.dtype)) for param, pruned in pairs]  # 1.0 = kept, 0.0 = pruned
    optimizer = OPTIMIZERS[options["optimizer"]].load()(model.parameters(), options)
    if on.channels_last:
        model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if on.compile else model
    precision = options.get("precision", "fp32")
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    loss_fn = nn.CrossEntropyLoss(label_smoothing=options.get("label_smoothing", 0.0))
    history: dict[str, list] = {
        M_TRAIN_LOSS: [],
        M_TRAIN_ACCURACY: [],
        M_LR: [],
        M_EPOCH_TEST_LOSS: [],
        M_EPOCH_TEST_ACCURACY: [],
    }
    has_val = data.val_batches(batch_size) is not None
    if has_val:
        history.update({M_VAL_LOSS: [], M_VAL_ACCURACY: []})
    gradual = GradualPruning(model, masks, line, optimizer) if line.gradual else None
    callbacks = step_callbacks(model, masks, options, line, seed, optimizer)
    for callback in callbacks:
        history.update({name: [] for name in callback.recorded})
    if gradual is not None:
        history[names.M_TRAIN_SPARSITY] = []
        if line.start in gradual.steps and resume is None:  # a training that continues a schedule repeats it:
            gradual.prune(line.start, keeps)  # the target is absolute, nothing changes
    if resume is not None:  # optimizer and scaler state, and the history so far
        from .checkpoint import restore_optimizer

        restore_optimizer(resume, optimizer, scaler)
        history = {name: list(values) for name, values in resume.history.items()}
    if resumable is not None:
        resumable.begin(line.per_epoch, model=model, masks=masks, optimizer=optimizer, scaler=scaler, history=history)
    # Dropout draws from the global RNG: seeded per step from (seed, step), a training does not depend on
    # what ran before it in the process, and a resumed one draws what the full one drew.
    rng_steps = any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())
    run = _Training(
        model,
        forward,
        data,
        options,
        line,
        seed,
        device,
        on.channels_last,
        precision,
        scaler,
        loss_fn,
        optimizer,
        keeps,
        history,
        dict(calls.checkpoints or {}),
        calls,
        has_val,
        rng_steps,
        gradual,
        resumable,
        callbacks,
    )
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], enabled=rng_steps):
        i = _run(run)
    history = run.history
    bad = non_finite_parameter(model)
    if bad and "diverged" not in history:
        handle_divergence(
            history, options, f"parameter {bad!r} has non-finite values after {i} iterations", -(-i // line.per_epoch)
        )
    history["iterations"] = i - line.start
    return history


def handle_divergence(history: dict, options: dict, what: str, epoch: int) -> None:
    """Fail the training (the default), or record where it diverged (on_divergence: record)."""
    if options.get("on_divergence", "fail") != "record":
        raise Diverged(
            f"training diverged in epoch {epoch}: {what} (lower the learning rate, or set "
            f"on_divergence: record to keep diverged states as results)"
        )
    history["diverged"] = (epoch, what)


def fail_fast_every(options: dict, device: torch.device, *, scaled: bool = False) -> int:
    """Every how many iterations a failing divergence check looks at the loss (0: per epoch only), alone or
    batched alike, so that a diverging training stops at the same iteration with the same message."""
    # every iteration's loss (every 25th off the CPU: each look waits for the device); recorded divergence
    # and fp16 (whose scaler skips non-finite steps) are judged per epoch (`_epoch_end`)
    if scaled or options.get("on_divergence") == "record":
        return 0
    return 1 if device.type == "cpu" else 25


def step_seed(seed: int, i: int) -> int:
    return (seed * 2654435761 + i * 40503 + 12345) & ((1 << 63) - 1)


@dataclass
class _Training:
    """One training under way: what its loop (`_run`, `_epoch`, `_epoch_end`) reads and updates."""

    model: nn.Module
    forward: Callable  # the model, or its torch.compile'd forward
    data: object
    options: dict
    line: Timeline
    seed: int
    device: torch.device
    channels_last: bool
    precision: str
    scaler: object  # fp16's GradScaler, else None
    loss_fn: Callable
    optimizer: object
    keeps: list  # [(parameter, 0/1 float mask)] of every masked parameter
    history: dict
    checkpoints: dict  # {iteration: fn(model, history)}
    calls: Callbacks
    has_val: bool
    rng_steps: bool  # dropout: the global RNG seeded per step
    gradual: GradualPruning | None
    resumable: object  # training.checkpoint.TrainingHooks or None
    callbacks: list  # `sparse.step_callbacks`: after each backward pass and optimizer step

    @property
    def fail_fast(self) -> int:
        """Every how many iterations a failing divergence check looks at the loss (0: per epoch only)."""
        return fail_fast_every(self.options, self.device, scaled=self.scaler is not None)

    @property
    def base_lr(self) -> float:
        return self.options["lr"]


def _run(t: _Training) -> int:
    """Train from the timeline's start (or the checkpoint resumed from) to its stop; the iteration reached."""
    i = t.line.start
    sums = None  # a resumed training's epoch in progress: (loss sum, hits, count, lr)
    if t.resumable is not None and t.resumable.resume is not None:
        from .checkpoint import restored_sums

        i, sums = t.resumable.resume.iteration, restored_sums(t.resumable.resume, t.device)
    while i < t.line.stop:
        i, sums, due = _epoch(t, i, sums)
        if not _epoch_end(t, i, sums, due):
            break  # diverged, recorded (on_divergence: record)
        sums = None
    return i


def _epoch(t: _Training, i: int, sums) -> tuple[int, tuple, list]:
    """The optimizer steps of one epoch from iteration `i` (to its end or the timeline's stop): (the iteration
    reached, the epoch's (loss sum, hits, count, lr), the emitted checkpoints due at its end)."""
    line, device, fail_fast = t.line, t.device, t.fail_fast
    non_blocking = device.type == "cuda"
    epoch, first = divmod(i, line.per_epoch)
    due = []
    t.model.train()
    total = torch.zeros((), dtype=torch.float64, device=device)
    hits = torch.zeros((), dtype=torch.int64, device=device)  # train accuracy: the batches as trained on
    count = 0
    lr = t.base_lr
    if sums is not None:
        total, hits, count, lr = sums
    for x, y in t.data.train_batches(t.options["batch_size"], seed=t.seed, epoch=epoch, skip=first):
        lr = line.lr(t.base_lr, i)
        x, y = x.to(device, non_blocking=non_blocking), y.to(device, non_blocking=non_blocking)
        loss, logits = _step(t, i, lr, x, y)
        with torch.no_grad():
            total += loss.detach().double() * len(y)
            hits += (logits.detach().argmax(dim=1) == y).sum()
        count += len(y)
        i += 1
        if fail_fast and i % fail_fast == 0 and not bool(torch.isfinite(loss)):  # diverged: stop right here
            handle_divergence(
                t.history,
                t.options,
                f"the train loss of iteration {i} is {float(loss.detach())}",
                -(-i // line.per_epoch),
            )
        if t.gradual is not None and i in t.gradual.steps:
            t.gradual.prune(i, t.keeps)
        for callback in t.callbacks:
            callback.after_step(i, t.keeps)
        if i in t.checkpoints:
            if i % line.per_epoch == 0 or i == line.stop:
                due.append(i)  # at an epoch's end: after its history is recorded
            else:
                t.checkpoints[i](t.model, t.history)
        # a resumable checkpoint inside an epoch (at its end: `_epoch_end`, once its history is recorded);
        # states emitted at i are stored above, before it
        if t.resumable is not None and i % line.per_epoch and i < line.stop and t.resumable.due(i):
            t.resumable.save(i, (total, hits, count, lr))
        if i >= line.stop:
            break
    return i, (total, hits, count, lr), due


def _step(t: _Training, i: int, lr: float, x: torch.Tensor, y: torch.Tensor):
    """Optimizer step `i` on the batch (x, y), masks enforced: (its loss, its logits)."""
    if t.rng_steps:
        torch.manual_seed(step_seed(t.seed, i))
    for group in t.optimizer.param_groups:
        group["lr"] = lr
    if t.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    t.optimizer.zero_grad(set_to_none=True)
    with autocast_for(t.device, t.precision):
        logits = t.forward(x)
        loss = t.loss_fn(logits, y)
    if t.scaler is not None:
        t.scaler.scale(loss).backward()
    else:
        loss.backward()
    for callback in t.callbacks:
        callback.after_backward(i)
    with torch.no_grad():
        for param, keep in t.keeps:
            if param.grad is not None:
                param.grad.mul_(keep)
        if t.scaler is not None:
            t.scaler.step(t.optimizer)
            t.scaler.update()
        else:
            t.optimizer.step()
        for param, keep in t.keeps:
            param.mul_(keep)
    return loss, logits


def _epoch_end(t: _Training, i: int, sums: tuple, due: list) -> bool:
    """Record the epoch that ended at iteration `i` (its history, evaluations, due checkpoints, heartbeat);
    False when its training diverged and records it instead (on_divergence: record)."""
    total, hits, count, lr = sums
    line, history, model = t.line, t.history, t.model
    mean = float(total) / max(count, 1)
    done_epoch = -(-i // line.per_epoch)  # the epoch this piece ended in, counted from 1
    if (not math.isfinite(mean) and t.scaler is None) or (
        t.options.get("on_divergence") == "record" and non_finite_parameter(model)
    ):
        handle_divergence(history, t.options, f"the mean train loss of epoch {done_epoch} is {mean}", done_epoch)
        return False
    history[M_TRAIN_LOSS].append((done_epoch, mean))
    history[M_TRAIN_ACCURACY].append((done_epoch, int(hits) / max(count, 1)))
    history[M_LR].append((done_epoch, lr))
    if t.gradual is not None:
        history[names.M_TRAIN_SPARSITY].append((done_epoch, t.gradual.sparsity()))
    for callback in t.callbacks:
        for name, value in callback.record(i).items():
            history[name].append((done_epoch, value))
    if t.has_val:
        val_loss, val_accuracy = evaluate(model, t.data.val_batches(256), device=t.device)
        history[M_VAL_LOSS].append((done_epoch, val_loss))
        history[M_VAL_ACCURACY].append((done_epoch, val_accuracy))
    # the learning curve on the test set: one forward pass over it per epoch (OpenLTH does the same);
    # eval mode draws no random numbers and updates no statistics, so training is unchanged
    test_loss, test_accuracy = evaluate(model, t.data.test_batches(256), device=t.device)
    history[M_EPOCH_TEST_LOSS].append((done_epoch, test_loss))
    history[M_EPOCH_TEST_ACCURACY].append((done_epoch, test_accuracy))
    if t.calls.progress is not None:
        t.calls.progress(done_epoch, -(-line.stop // line.per_epoch), mean)
    for point in due:
        t.checkpoints[point](model, history)
    if t.resumable is not None and i < line.stop and t.resumable.due(i):
        t.resumable.save(i, None)
    if t.calls.on_epoch is not None:
        t.calls.on_epoch(done_epoch, model, history)
    return True


@dataclass
class Predictions:
    """A network's outputs on a set of examples, in their order: the mean loss, the accuracy, and per
    example the true class, the predicted class and the softmax probability of the true class."""

    loss: float
    accuracy: float
    labels: torch.Tensor  # int64, CPU
    predicted: torch.Tensor  # int64, CPU
    true_probability: torch.Tensor  # float32, CPU
    top5_accuracy: float = float("nan")  # the true class among the 5 largest logits (all of them below 5 classes)


def evaluate(model: nn.Module, batches, *, device: torch.device | None = None) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) in eval mode (dropout off, batch norm frozen)."""
    result = _evaluate(model, batches, device, keep=False)
    return result.loss, result.accuracy


def predict(model: nn.Module, batches, *, device: torch.device | None = None) -> Predictions:
    """`evaluate`'s loss and accuracy (the same pass, the same numbers) and every example's prediction."""
    return _evaluate(model, batches, device, keep=True)


@torch.no_grad()
def _evaluate(model: nn.Module, batches, device, keep: bool) -> Predictions:
    device = device or next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    top5 = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    labels, predicted, probability = [], [], []
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        total_loss += nn.functional.cross_entropy(logits.float(), y, reduction="sum").double()
        guess = logits.argmax(dim=1)
        correct += (guess == y).sum()
        count += len(y)
        if keep:
            top5 += (logits.topk(min(5, logits.shape[1]), dim=1).indices == y.view(-1, 1)).any(dim=1).sum()
            labels.append(y)
            predicted.append(guess)
            probability.append(torch.softmax(logits.float(), dim=1).gather(1, y.view(-1, 1)).view(-1))
    model.train(was_training)
    empty = torch.zeros(0, dtype=torch.int64)
    outputs = [torch.cat(parts).cpu() if parts else empty for parts in (labels, predicted, probability)]
    if count == 0:
        return Predictions(float("nan"), float("nan"), *outputs)
    return Predictions(float(total_loss) / count, int(correct) / count, *outputs, int(top5) / count)


def has_batchnorm(model: nn.Module) -> bool:
    """Whether the model keeps BatchNorm running statistics."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in model.modules())


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, batches, *, device: torch.device | None = None) -> int:
    """Replace every BatchNorm layer's running statistics by the ones of `batches`; returns the batches seen.

    A network whose weights were interpolated (or otherwise changed) has running means and
    variances that belong to other weights: the interpolation of two networks' statistics is
    not the statistics of the interpolated network. Here they are reset and recomputed as the
    plain average over the batches of each batch's statistics (momentum None: a cumulative
    average), in train mode for BatchNorm only: dropout stays off, so nothing random runs and
    the result is deterministic. The model is left in eval mode, momenta as they were.
    """
    device = device or next((p.device for p in model.parameters()), torch.device("cpu"))
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    seen = 0
    try:
        for x, _ in batches:
            model(x.to(device))
            seen += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()
    return seen
