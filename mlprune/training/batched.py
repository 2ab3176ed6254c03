"""Sibling networks trained as one computation (torch): `train_batched`.

Siblings are N networks of one architecture trained with one train step except for the data
order (its ``seed``): the seeds of a sweep, the controls of a level, spawned copies, one-shot
sparsities. Their weights, masks and initial weights may differ. `train_batched` trains them
together as one `training.stacked.BatchedNetwork` and gives each what `training.loop.train` gives
it alone: its weights, its masks (gradual pruning tightens each sibling's own), its per-epoch
history, its checkpoints and its divergence, up to floating-point summation order
(docs/performance.md: the tolerance).

Each sibling keeps what makes it itself:
- its data order: its own batches of ``data.train_batches(seed, epoch)``, stacked per step;
- its masks (gradients and weights multiplied by its 0/1 mask each step, as in the loop);
- its optimizer state: one torch.optim optimizer over the stacked tensors, whose update is
  elementwise (SGD with momentum / nesterov / weight decay, Adam, AdamW), so each sibling's
  slice is updated exactly as its own optimizer would update it (tested for every catalog entry);
- its dropout draws (`training.stacked`);
- its loss: the mean over its own batch (the sum over siblings is back-propagated, so each
  sibling's gradient is its own loss's);
- its history, evaluations (test and validation passes run batched, in eval mode), checkpoints
  and divergence (a diverged sibling stops where training alone would stop; the others go on).

Not batched (`NotBatchable`): fp16 (one gradient scaler would skip every sibling's step when one
overflows), and networks the interpreter of `training.stacked` rejects.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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
from . import OPTIMIZERS, UNBATCHABLE_PRECISIONS, UNBATCHED_OPTIONS
from .gradual import gradual_masks
from .interrupt import interrupted, stop_requested
from .loop import Callbacks, Diverged, autocast_for, fail_fast_every, handle_divergence, step_seed, timeline
from .stacked import BatchedNetwork, NotBatchable

__all__ = ["NotBatchable", "BatchedNetwork", "train_batched", "evaluate_batched"]


# ---- masks -------------------------------------------------------------------------------------------


def _stacked_masks(net: BatchedNetwork, masks: list[dict]) -> dict[str, torch.Tensor]:
    """{parameter: bool kept [N, *shape]} of every parameter some sibling masks (missing: all kept)."""
    order = list(dict.fromkeys(name for sibling in masks for name in sibling))
    missing = [name for name in order if name not in net.params]
    if missing:
        raise SpecError(f"mask for {missing[0]!r} has no parameter in the model")
    stacked = {}
    for name in order:
        param = net.params[name]
        kept = torch.stack(
            [
                sibling[name].to(device=param.device, dtype=torch.bool)
                if name in sibling
                else torch.ones(param.shape[1:], dtype=torch.bool, device=param.device)
                for sibling in masks
            ]
        )
        if not bool(kept.all()):
            stacked[name] = kept
    return stacked


@torch.no_grad()
def _enforce(net: BatchedNetwork, kept: dict, optimizer=None) -> dict[str, torch.Tensor]:
    """Pruned weights (and their optimizer state) to exactly +0.0; the 0/1 float masks of the loop."""
    keeps = {}
    for name, mask in kept.items():
        param = net.params[name]
        pruned = ~mask
        param.masked_fill_(pruned, 0.0)
        if optimizer is not None:
            for value in optimizer.state.get(param, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == param.shape:
                    value.masked_fill_(pruned, 0.0)
        keeps[name] = mask.to(param.dtype)
    return keeps


class _Gradual:
    """Gradual magnitude pruning of each sibling (`gradual.GradualPruning`, one sibling at a time)."""

    def __init__(self, net: BatchedNetwork, masks: list[dict], line, optimizer, kinds: dict):
        self.net, self.masks, self.line, self.optimizer = net, masks, line, optimizer
        self.kinds = {name: kind for name, kind in kinds.items() if all(name in m for m in masks)}
        self.steps = set(line.gradual["steps"])

    def prune(self, i: int, active: list[bool]) -> dict[str, torch.Tensor]:
        target = self.line.sparsity(i)
        for k, sibling in enumerate(self.masks):
            if not active[k]:
                continue
            weights = {name: self.net.params[name][k].detach().to("cpu") for name in self.kinds}
            current = {name: sibling[name].to("cpu") for name in self.kinds}
            new = gradual_masks(weights, current, self.kinds, target, self.line.gradual["scope"])
            for name, mask in new.items():
                sibling[name] = mask.to(self.net.params[name].device)
        # a newly pruned weight forgets its momentum / Adam moments, as in the loop
        return _enforce(self.net, _stacked_masks(self.net, self.masks), self.optimizer)

    def sparsity(self, k: int) -> float:
        masks = self.masks[k]
        total = sum(masks[name].numel() for name in self.kinds)
        return (total - sum(int(masks[name].sum()) for name in self.kinds)) / total if total else 0.0


# ---- evaluation --------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_batched(net: BatchedNetwork, batches, device: torch.device) -> list[tuple[float, float]]:
    """Per sibling (mean cross-entropy loss, accuracy) in eval mode: `loop.evaluate` of each."""
    was = net.training
    net.eval()
    total = torch.zeros(net.n, dtype=torch.float64, device=device)
    correct = torch.zeros(net.n, dtype=torch.int64, device=device)
    count = 0
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            logits = net(x, shared=True).float()
            losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.repeat(net.n), reduction="none")
            total += losses.view(net.n, -1).sum(dim=1).double()
            correct += (logits.argmax(dim=-1) == y).sum(dim=1)
            count += len(y)
    finally:
        net.train(was)
    if count == 0:
        return [(float("nan"), float("nan"))] * net.n
    return [(t / count, c / count) for t, c in zip(total.tolist(), correct.tolist())]


# ---- the loop ----------------------------------------------------------------------------------------


def train_batched(
    models: list[nn.Module],
    masks: list[dict],
    data,
    options: dict,
    *,
    seeds: list[int],
    device: torch.device | None = None,
    calls: Callbacks | None = None,
) -> list:
    """Train the sibling `models` in place as `training.loop.train` trains each alone (``seeds``: each one's
    data-order seed; `masks`: each one's, updated in place by gradual pruning).

    Returns per sibling its history (as `train` returns it) or the exception that ended its training:
    `Diverged`, or one its own callbacks raised (a lost claim). ``calls`` (`loop.Callbacks`): its
    ``on_epoch[k](epoch, model, history)`` and ``checkpoints[k] = {iteration: fn(model, history)}`` are
    sibling k's, called with its own module holding its weights at that point; ``progress(epoch, epochs,
    [mean train loss])``.
    """
    torch.set_flush_denormal(True)  # as the loop: denormals make CPU SGD ~2.5x slower
    n = len(models)
    if not (len(masks) == len(seeds) == n):
        raise SpecError(f"batched training of {n} networks got {len(masks)} masks and {len(seeds)} seeds")
    precision = options.get("precision", "fp32")
    if precision in UNBATCHABLE_PRECISIONS:
        raise NotBatchable(f"precision {precision} is not batched (one gradient scaler would couple the siblings)")
    unbatched = [option for option in UNBATCHED_OPTIONS if options.get(option)]
    if unbatched:
        raise NotBatchable(f"train option {unbatched[0]} is not batched (its callbacks act on one network)")
    batch = _Batch(models, masks, data, options, seeds, device or torch.device("cpu"), calls or Callbacks())
    with torch.random.fork_rng(
        devices=[batch.device] if batch.device.type == "cuda" else [], enabled=batch.net.dropouts
    ):
        while batch.i < batch.line.stop and any(batch.active):
            sums = batch.epoch()
            if not batch.epoch_end(*sums):
                break
    return batch.outcomes()


class _Batch:
    """One batched training under way: the siblings' stacked network, optimizer and masks, each sibling's
    history, callbacks and whether it is still training."""

    def __init__(self, models, masks, data, options, seeds, device, calls: Callbacks):
        from ..models import prunable

        n = len(models)
        self.models, self.masks, self.data, self.options, self.seeds, self.device = (
            models,
            masks,
            data,
            options,
            seeds,
            device,
        )
        self.n, self.precision, self.batch_size = n, options.get("precision", "fp32"), options["batch_size"]
        self.line = timeline(options, data.batches_per_epoch(self.batch_size))
        self.net = BatchedNetwork(models, device)
        self.optimizer = OPTIMIZERS[options["optimizer"]].load()(list(self.net.params.values()), options)
        self.keeps = _enforce(self.net, _stacked_masks(self.net, masks))
        self.histories = [
            {M_TRAIN_LOSS: [], M_TRAIN_ACCURACY: [], M_LR: [], M_EPOCH_TEST_LOSS: [], M_EPOCH_TEST_ACCURACY: []}
            for _ in range(n)
        ]
        self.has_val = data.val_batches(self.batch_size) is not None
        if self.has_val:
            for history in self.histories:
                history.update({M_VAL_LOSS: [], M_VAL_ACCURACY: []})
        self.progress, self.on_epoch = calls.progress, calls.on_epoch
        self.checkpoints = [dict(c or {}) for c in (calls.checkpoints or [None] * n)]
        self.at = set().union(*self.checkpoints)
        self.gradual = (
            _Gradual(self.net, masks, self.line, self.optimizer, prunable(models[0])) if self.line.gradual else None
        )
        self.active = [True] * n
        self.fail_fast = fail_fast_every(options, device)  # fp16, whose scaler would be, is not batched
        self.outcome: list = [None] * n  # a sibling that stopped: its history or its exception
        self.stopped = [self.line.start] * n  # where each stopped
        self.i = self.line.start
        if self.gradual is not None:
            for history in self.histories:
                history[names.M_TRAIN_SPARSITY] = []
            if self.line.start in self.gradual.steps:
                self.keeps = self.gradual.prune(self.line.start, self.active)

    # ---- a sibling's own end -------------------------------------------------------------------------
    def call(self, k, fn, *args):
        """Sibling k's callback, given its own module holding its weights; what it raises ends that sibling
        only (e.g. ClaimLost: that sibling is discarded, not the batch)."""
        self.net.copy_into(k, self.models[k])
        try:
            fn(*args)
        except Exception as error:  # noqa: BLE001 -- that sibling's end, not the batch's
            self.stop(k, error)

    def stop(self, k, result):
        self.net.copy_into(k, self.models[k])
        self.active[k], self.outcome[k], self.stopped[k] = False, result, self.i

    def diverge(self, k, what, epoch):
        try:
            handle_divergence(self.histories[k], self.options, what, epoch)
        except Diverged as error:
            self.stop(k, error)
            return
        self.stop(k, self.histories[k])

    # ---- an epoch --------------------------------------------------------------------------------------
    def epoch(self) -> tuple:
        """The batched steps of one epoch from iteration `i`: (per sibling its loss sum, its hits, the
        examples each saw, the last lr, the emitted checkpoints due at the epoch's end)."""
        net, line, device, n = self.net, self.line, self.device, self.n
        non_blocking = device.type == "cuda"
        epoch, first = divmod(self.i, line.per_epoch)
        due = []
        net.train()
        total = torch.zeros(n, dtype=torch.float64, device=device)
        hits = torch.zeros(n, dtype=torch.int64, device=device)
        count = 0
        lr = self.options["lr"]
        orders = [self.data.train_batches(self.batch_size, seed=s, epoch=epoch, skip=first) for s in self.seeds]
        for batches in zip(*orders):
            if stop_requested():  # batches store no resumable checkpoint: their claims end KILLED
                raise interrupted()
            lr = line.lr(self.options["lr"], self.i)
            x = torch.stack([b[0].to(device, non_blocking=non_blocking) for b in batches])
            y = torch.stack([b[1].to(device, non_blocking=non_blocking) for b in batches])
            losses, logits = self.step(lr, x, y)
            with torch.no_grad():
                total += losses.detach().double() * y.shape[1]
                hits += (logits.detach().argmax(dim=-1) == y).sum(dim=1)
            count += y.shape[1]
            self.i += 1
            i = self.i
            if self.fail_fast and i % self.fail_fast == 0:
                self.diverged_losses(losses)
            if self.gradual is not None and i in self.gradual.steps:
                self.keeps = self.gradual.prune(i, self.active)
            if i in self.at:
                if i % line.per_epoch == 0 or i == line.stop:
                    due.append(i)
                else:
                    self.emit(i)
            if i >= line.stop:
                break
        return total, hits, count, lr, due

    def diverged_losses(self, losses: torch.Tensor) -> None:
        """Each training sibling whose loss of iteration `i` is not finite stops there, as it would alone."""
        finite = torch.isfinite(losses.detach()).tolist()
        for k in range(self.n):
            if self.active[k] and not finite[k]:
                self.diverge(
                    k,
                    f"the train loss of iteration {self.i} is {float(losses[k].detach())}",
                    -(-self.i // self.line.per_epoch),
                )

    def step(self, lr: float, x: torch.Tensor, y: torch.Tensor):
        """One optimizer step of every sibling on its batch, masks enforced: (per sibling loss, logits)."""
        net, n = self.net, self.n
        if net.dropouts:
            net.seed_step([step_seed(s, self.i) for s in self.seeds])
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        with autocast_for(self.device, self.precision):
            logits = net(x)
            losses = (
                F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]),
                    y.reshape(-1),
                    reduction="none",
                    label_smoothing=self.options.get("label_smoothing", 0.0),
                )
                .view(n, -1)
                .mean(dim=1)
            )
        losses.sum().backward()
        with torch.no_grad():
            for name, keep in self.keeps.items():
                grad = net.params[name].grad
                if grad is not None:
                    grad.mul_(keep)
            self.optimizer.step()
            for name, keep in self.keeps.items():
                net.params[name].mul_(keep)
        return losses, logits

    def emit(self, point: int) -> None:
        """The checkpoints emitted after `point` iterations, of every sibling still training."""
        for k in range(self.n):
            if self.active[k] and point in self.checkpoints[k]:
                self.call(k, self.checkpoints[k][point], self.models[k], self.histories[k])

    def epoch_end(self, total, hits, count, lr, due) -> bool:
        """Each sibling's history of the epoch that ended (or its divergence), the evaluations, the due
        checkpoints and heartbeats; False once no sibling is training."""
        line, n = self.line, self.n
        means = [value / max(count, 1) for value in total.tolist()]
        accuracy = [value / max(count, 1) for value in hits.tolist()]
        done_epoch = -(-self.i // line.per_epoch)
        bad = self.net.non_finite_parameters() if self.options.get("on_divergence") == "record" else [None] * n
        for k in range(n):
            if not self.active[k]:
                continue
            if not math.isfinite(means[k]) or bad[k]:
                self.diverge(k, f"the mean train loss of epoch {done_epoch} is {means[k]}", done_epoch)
                continue
            history = self.histories[k]
            history[M_TRAIN_LOSS].append((done_epoch, means[k]))
            history[M_TRAIN_ACCURACY].append((done_epoch, accuracy[k]))
            history[M_LR].append((done_epoch, lr))
            if self.gradual is not None:
                history[names.M_TRAIN_SPARSITY].append((done_epoch, self.gradual.sparsity(k)))
        if not any(self.active):
            return False
        if self.has_val:
            self.record(
                evaluate_batched(self.net, self.data.val_batches(256), self.device),
                done_epoch,
                M_VAL_LOSS,
                M_VAL_ACCURACY,
            )
        self.record(
            evaluate_batched(self.net, self.data.test_batches(256), self.device),
            done_epoch,
            M_EPOCH_TEST_LOSS,
            M_EPOCH_TEST_ACCURACY,
        )
        if self.progress is not None:
            self.progress(done_epoch, -(-line.stop // line.per_epoch), [m for m, a in zip(means, self.active) if a])
        for point in due:
            self.emit(point)
        if self.on_epoch is not None:
            for k in range(n):
                if self.active[k] and self.on_epoch[k] is not None:
                    self.call(k, self.on_epoch[k], done_epoch, self.models[k], self.histories[k])
        return True

    def record(self, results: list, epoch: int, loss_name: str, accuracy_name: str) -> None:
        for k, (loss, acc) in enumerate(results):
            if self.active[k]:
                self.histories[k][loss_name].append((epoch, loss))
                self.histories[k][accuracy_name].append((epoch, acc))

    def outcomes(self) -> list:
        """Per sibling its history (its ``iterations`` run) or the exception that ended its training."""
        bad = self.net.non_finite_parameters()
        for k in range(self.n):
            if self.active[k]:
                self.stop(k, self.histories[k])
                if bad[k] and "diverged" not in self.histories[k]:
                    try:
                        handle_divergence(
                            self.histories[k],
                            self.options,
                            f"parameter {bad[k]!r} has non-finite values after {self.i} iterations",
                            -(-self.i // self.line.per_epoch),
                        )
                    except Diverged as error:
                        self.outcome[k] = error
        for k in range(self.n):
            if isinstance(self.outcome[k], dict):
                self.outcome[k]["iterations"] = self.stopped[k] - self.line.start
        return self.outcome
