"""Dynamic sparse training (SET, RigL) and the BatchNorm L1 penalty of network slimming, as train-step callbacks.

Train option ``sparse_training: {kind: set | rigl, update_every, drop_fraction, end}``: the mask of
every pruned layer changes during training while its sparsity stays what it was.

* At the mask updates, right after optimizer steps ``update_every, 2·update_every, ... < end``, each
  layer drops the ``k = round(f_t · n_active)`` active weights of smallest magnitude and grows ``k``
  others among the inactive ones (those it just dropped included): SET (Mocanu et al. 2018) at random
  (seeded from the data-order seed and the iteration: the draws do not depend on what ran before),
  RigL (Evci et al. 2020) those of largest ``|∂L/∂w|``, the *dense* gradient of the batch of that
  step (the gradient of every weight, pruned ones included, before the masks zero it).
* ``f_t = drop_fraction · (1 + cos(π t / end)) / 2``: the cosine-annealed drop fraction of both
  papers' code (RigL's default: 0.3, ``end`` at 3/4 of the training).
* Grown weights start at exactly 0.0 with zero optimizer state (momentum, Adam moments); dropped
  weights are 0.0 from then on like every pruned weight; the masks are enforced at every step as
  always (`training.loop`), so pruned weights are exactly 0 after every optimizer step.
* The state after iteration t includes the update at t (as gradual pruning's), the final mask is
  the state's mask, and the metric ``sparse_updates`` counts the updates.

Train option ``bn_l1: λ`` (Liu et al. 2017): the subgradient ``λ · sign(γ)`` of ``λ Σ |γ|`` over every
BatchNorm scale is added to its gradient at every step (the slimming code's ``updateBN``); 0 (the
default) changes nothing.

The maths (`drop_fraction`, `update_steps`, `drop_and_grow`) are pure functions; the callbacks
(`step_callbacks`) are what the loop calls: ``after_backward(i)`` (the gradients of step i are there,
not yet masked), ``after_step(i, keeps)`` (step i is done and the masks enforced) and, at each epoch's
end, ``record(i)`` (``{metric: value}`` of the names in ``recorded``, appended to the history).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import names
from ..errors import SpecError
from ..spec.times import parse_time

# the iteration salts of SET's generator: one stream per mask update, independent of the data order's
_SET_SALT = 0x5E7


def drop_fraction(t: int, initial: float, end: int) -> float:
    """The cosine-annealed fraction of active weights an update at iteration `t` replaces."""
    return initial * 0.5 * (1.0 + math.cos(math.pi * min(t, end) / end)) if end > 0 else 0.0


def update_steps(every: int, end: int) -> list[int]:
    """The iterations after which the masks are updated: every `every` iterations, before `end`."""
    return list(range(every, end, every)) if every > 0 else []


def drop_and_grow(weight: torch.Tensor, mask: torch.Tensor, grow_score: torch.Tensor, fraction: float):
    """(new mask, grown entries) of one layer: the ``round(fraction · active)`` active weights of smallest
    |w| go, as many entries of largest `grow_score` among the rest come in (ties: the first in flattened
    order). The layer's count of active weights is unchanged."""
    flat_mask = mask.reshape(-1).to(torch.bool)
    active = flat_mask.nonzero().squeeze(1)
    k = min(round(fraction * active.numel()), active.numel())
    new = flat_mask.clone()
    if k <= 0 or bool(flat_mask.all()):
        return mask.clone().to(torch.bool), torch.zeros_like(mask, dtype=torch.bool)
    magnitude = weight.detach().reshape(-1).abs().to(torch.float64)[active]
    new[active[torch.topk(magnitude, k, largest=False).indices]] = False
    candidates = (~new).nonzero().squeeze(1)
    score = grow_score.detach().reshape(-1).to(torch.float64)[candidates]
    grown = torch.zeros_like(new)
    grown[candidates[torch.topk(score, k).indices]] = True
    new |= grown
    return new.reshape(mask.shape), grown.reshape(mask.shape)


def update_generator(seed: int, t: int) -> torch.Generator:
    """The generator of the update at iteration `t` (SET draws from it)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + t * 7919 + _SET_SALT) & ((1 << 63) - 1))


def gradient_growth(weights: dict, grads: dict, generator) -> dict:
    """RigL's growth scores: the magnitude of the dense gradient."""
    return {name: grads[name].abs() for name in weights}


def random_growth(weights: dict, grads: dict, generator) -> dict:
    """SET's growth scores: uniform draws from the update's generator, layer after layer."""
    return {name: torch.rand(weights[name].shape, generator=generator, dtype=torch.float64) for name in weights}


class DynamicSparsity:
    """SET / RigL mask updates during one training (the masks dict is updated in place)."""

    recorded = (names.M_SPARSE_UPDATES,)

    def __init__(self, model: nn.Module, masks: dict, layers: list, options: dict, seed: int, optimizer):
        self.model, self.masks, self.optimizer, self.seed = model, masks, optimizer, seed
        from . import SPARSE_TRAININGS

        self.growth, self.initial = SPARSE_TRAININGS[options["kind"]].load(), options["drop_fraction"]
        self.every, self.end = options["update_every"], options["end"]
        self.steps = set(update_steps(self.every, self.end))
        self.layers = [name for name in layers if name in masks]
        self.grads: dict = {}

    def record(self, i: int) -> dict:
        """The mask updates done by iteration `i` (a resumed training counts those before it too)."""
        return {names.M_SPARSE_UPDATES: sum(1 for t in self.steps if t <= i)}

    def after_backward(self, i: int) -> None:
        """Keep the dense gradients of step `i` when the masks are updated after it (RigL grows by them)."""
        if i + 1 in self.steps:
            params = dict(self.model.named_parameters())
            self.grads = {name: params[name].grad.detach().clone() for name in self.layers}

    def after_step(self, i: int, keeps: list) -> None:
        if i not in self.steps:
            return
        params = dict(self.model.named_parameters())
        weights = {name: params[name].detach() for name in self.layers}
        scores = self.growth(weights, self.grads, update_generator(self.seed, i))
        fraction = drop_fraction(i, self.initial, self.end)
        changed = {}
        with torch.no_grad():
            for name in self.layers:
                new, grown = drop_and_grow(
                    weights[name], self.masks[name], scores[name].to(weights[name].device), fraction
                )
                new = new.to(self.masks[name].device)
                param = params[name]
                param.masked_fill_(~new | grown.to(param.device), 0.0)
                changed[param] = (new != self.masks[name].to(torch.bool)).to(param.device)
                self.masks[name] = new
                for value in self.optimizer.state.get(param, {}).values():
                    if isinstance(value, torch.Tensor) and value.shape == param.shape:
                        value.masked_fill_(changed[param], 0.0)
        names = {params[name]: name for name in self.layers}
        for index, (param, _keep) in enumerate(keeps):
            if param in changed:
                keeps[index] = (param, self.masks[names[param]].to(param.device, param.dtype))
        self.grads = {}


class BatchNormL1:
    """Network slimming's sparsity penalty: ``λ · sign(γ)`` added to every BatchNorm scale's gradient."""

    recorded = ()

    def __init__(self, model: nn.Module, strength: float):
        self.strength = strength
        self.scales = [m.weight for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]

    def after_backward(self, i: int) -> None:
        with torch.no_grad():
            for gamma in self.scales:
                if gamma.grad is not None:
                    gamma.grad.add_(torch.sign(gamma.detach()), alpha=self.strength)

    def after_step(self, i: int, keeps: list) -> None:
        return None

    def record(self, i: int) -> dict:
        return {}


def sparse_timeline(options: dict, per_epoch: int, total: int) -> dict | None:
    """The train option sparse_training with its times in iterations (end: 3/4 of the training by default)."""
    sparse = options.get("sparse_training")
    if not sparse:
        return None
    out = dict(sparse)
    out["update_every"] = parse_time(sparse["update_every"]).iterations(per_epoch)
    out["end"] = parse_time(sparse["end"]).iterations(per_epoch) if sparse.get("end") else round(0.75 * total)
    if out["update_every"] < 1 or out["end"] > total:
        raise SpecError(
            f"train sparse_training updates every {sparse['update_every']} ({out['update_every']} it) "
            f"until {sparse.get('end')} ({out['end']} it) of a {total} it training: the updates must "
            f"fall inside the training"
        )
    return out


def step_callbacks(model: nn.Module, masks: dict, options: dict, line, seed: int, optimizer) -> list:
    """What runs around every optimizer step besides the masks: dynamic sparse training and the BatchNorm
    L1 penalty (`training.sparse`), when the train step asks for them."""
    from ..models import prunable

    callbacks = []
    if options.get("bn_l1"):
        callbacks.append(BatchNormL1(model, options["bn_l1"]))
    if line.sparse:
        callbacks.append(DynamicSparsity(model, masks, list(prunable(model)), line.sparse, seed, optimizer))
    return callbacks
