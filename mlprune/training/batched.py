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
from ..names import (M_EPOCH_TEST_ACCURACY, M_EPOCH_TEST_LOSS, M_LR, M_TRAIN_ACCURACY, M_TRAIN_LOSS, M_VAL_ACCURACY,
                     M_VAL_LOSS)
from . import OPTIMIZERS, UNBATCHABLE_PRECISIONS, UNBATCHED_OPTIONS
from .interrupt import interrupted, stop_requested
from .loop import Diverged, autocast_for, gradual_masks, handle_divergence, step_seed, timeline
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
        kept = torch.stack([sibling[name].to(device=param.device, dtype=torch.bool) if name in sibling
                            else torch.ones(param.shape[1:], dtype=torch.bool, device=param.device)
                            for sibling in masks])
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
    """Gradual magnitude pruning of each sibling (`loop.GradualPruning`, one sibling at a time)."""

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

def train_batched(models: list[nn.Module], masks: list[dict], data, options: dict, *, seeds: list[int],
                  device: torch.device | None = None, progress=None, on_epoch=None, checkpoints=None) -> list:
    """Train the sibling `models` in place as `training.loop.train` trains each alone (``seeds``: each one's
    data-order seed; `masks`: each one's, updated in place by gradual pruning).

    Returns per sibling its history (as `train` returns it) or the exception that ended its training:
    `Diverged`, or one its own callbacks raised (a lost claim). ``on_epoch[k](epoch, model, history)``
    and ``checkpoints[k] = {iteration: fn(model, history)}`` are sibling k's, called with its own
    module holding its weights at that point; ``progress(epoch, epochs, [mean train loss])``.
    """
    from ..models import prunable

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
    device = device or torch.device("cpu")
    batch_size = options["batch_size"]
    line = timeline(options, data.batches_per_epoch(batch_size))
    net = BatchedNetwork(models, device)
    optimizer = OPTIMIZERS[options["optimizer"]].load()(list(net.params.values()), options)
    keeps = _enforce(net, _stacked_masks(net, masks))
    smoothing = options.get("label_smoothing", 0.0)
    histories = [{M_TRAIN_LOSS: [], M_TRAIN_ACCURACY: [], M_LR: [], M_EPOCH_TEST_LOSS: [], M_EPOCH_TEST_ACCURACY: []}
                 for _ in range(n)]
    has_val = data.val_batches(batch_size) is not None
    if has_val:
        for history in histories:
            history.update({M_VAL_LOSS: [], M_VAL_ACCURACY: []})
    own_checkpoints = [dict(c or {}) for c in (checkpoints or [None] * n)]
    at = set().union(*own_checkpoints)
    gradual = _Gradual(net, masks, line, optimizer, prunable(models[0])) if line.gradual else None
    active = [True] * n
    outcome: list = [None] * n     # a sibling that stopped: its history or its exception
    stopped = [line.start] * n     # where each stopped
    if gradual is not None:
        for history in histories:
            history[names.M_TRAIN_SPARSITY] = []
        if line.start in gradual.steps:
            keeps = gradual.prune(line.start, active)

    def call(k, fn, *args):
        """Sibling k's callback; what it raises ends that sibling only."""
        try:
            fn(*args)
        except Exception as error:  # noqa: BLE001 -- e.g. ClaimLost: that sibling is discarded, not the batch
            stop(k, error)

    def stop(k, result):
        net.copy_into(k, models[k])
        active[k], outcome[k], stopped[k] = False, result, i

    def diverge(k, what, epoch):
        try:
            handle_divergence(histories[k], options, what, epoch)
        except Diverged as error:
            stop(k, error)
            return
        stop(k, histories[k])

    base_lr = options["lr"]
    i = line.start
    non_blocking = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], enabled=net.dropouts):
        while i < line.stop and any(active):
            epoch, first = divmod(i, line.per_epoch)
            due = []
            net.train()
            total = torch.zeros(n, dtype=torch.float64, device=device)
            hits = torch.zeros(n, dtype=torch.int64, device=device)
            count = 0
            lr = base_lr
            orders = [data.train_batches(batch_size, seed=s, epoch=epoch, skip=first) for s in seeds]
            for batches in zip(*orders):
                if stop_requested():  # batches store no resumable checkpoint: their claims end KILLED
                    raise interrupted()
                lr = line.lr(base_lr, i)
                if net.dropouts:
                    net.seed_step([step_seed(s, i) for s in seeds])
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x = torch.stack([b[0].to(device, non_blocking=non_blocking) for b in batches])
                y = torch.stack([b[1].to(device, non_blocking=non_blocking) for b in batches])
                optimizer.zero_grad(set_to_none=True)
                with autocast_for(device, precision):
                    logits = net(x)
                    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none",
                                             label_smoothing=smoothing).view(n, -1).mean(dim=1)
                losses.sum().backward()
                with torch.no_grad():
                    for name, keep in keeps.items():
                        grad = net.params[name].grad
                        if grad is not None:
                            grad.mul_(keep)
                    optimizer.step()
                    for name, keep in keeps.items():
                        net.params[name].mul_(keep)
                    total += losses.detach().double() * y.shape[1]
                    hits += (logits.detach().argmax(dim=-1) == y).sum(dim=1)
                count += y.shape[1]
                i += 1
                if gradual is not None and i in gradual.steps:
                    keeps = gradual.prune(i, active)
                if i in at:
                    if i % line.per_epoch == 0 or i == line.stop:
                        due.append(i)
                    else:
                        for k in range(n):
                            if active[k] and i in own_checkpoints[k]:
                                net.copy_into(k, models[k])
                                call(k, own_checkpoints[k][i], models[k], histories[k])
                if i >= line.stop:
                    break
            means = [value / max(count, 1) for value in total.tolist()]
            accuracy = [value / max(count, 1) for value in hits.tolist()]
            done_epoch = -(-i // line.per_epoch)
            bad = net.non_finite_parameters() if options.get("on_divergence") == "record" else [None] * n
            for k in range(n):
                if not active[k]:
                    continue
                if not math.isfinite(means[k]) or bad[k]:
                    diverge(k, f"the mean train loss of epoch {done_epoch} is {means[k]}", done_epoch)
                    continue
                history = histories[k]
                history[M_TRAIN_LOSS].append((done_epoch, means[k]))
                history[M_TRAIN_ACCURACY].append((done_epoch, accuracy[k]))
                history[M_LR].append((done_epoch, lr))
                if gradual is not None:
                    history[names.M_TRAIN_SPARSITY].append((done_epoch, gradual.sparsity(k)))
            if not any(active):
                break
            if has_val:
                for k, (loss, acc) in enumerate(evaluate_batched(net, data.val_batches(256), device)):
                    if active[k]:
                        histories[k][M_VAL_LOSS].append((done_epoch, loss))
                        histories[k][M_VAL_ACCURACY].append((done_epoch, acc))
            for k, (loss, acc) in enumerate(evaluate_batched(net, data.test_batches(256), device)):
                if active[k]:
                    histories[k][M_EPOCH_TEST_LOSS].append((done_epoch, loss))
                    histories[k][M_EPOCH_TEST_ACCURACY].append((done_epoch, acc))
            if progress is not None:
                progress(done_epoch, -(-line.stop // line.per_epoch), [m for m, a in zip(means, active) if a])
            for point in due:
                for k in range(n):
                    if active[k] and point in own_checkpoints[k]:
                        net.copy_into(k, models[k])
                        call(k, own_checkpoints[k][point], models[k], histories[k])
            if on_epoch is not None:
                for k in range(n):
                    if active[k] and on_epoch[k] is not None:
                        net.copy_into(k, models[k])
                        call(k, on_epoch[k], done_epoch, models[k], histories[k])
    bad = net.non_finite_parameters()
    for k in range(n):
        if active[k]:
            stop(k, histories[k])
            if bad[k] and "diverged" not in histories[k]:
                try:
                    handle_divergence(histories[k], options, f"parameter {bad[k]!r} has non-finite values after "
                                      f"{i} iterations", -(-i // line.per_epoch))
                except Diverged as error:
                    outcome[k] = error
    for k in range(n):
        if isinstance(outcome[k], dict):
            outcome[k]["iterations"] = stopped[k] - line.start
    return outcome
