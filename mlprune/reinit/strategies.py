"""Weight sources and reinit strategies: pure functions on weight and mask dicts.

``reinit_weights(strategy, *, current, source, fresh, masks, kinds, generator, **options)``
returns ``(weights, masks)``: new dicts of new tensors (inputs are never mutated, never
aliased), and every masked entry of a prunable weight is exactly ``+0.0``.

* ``current``: the state's weights (all ``state_dict`` entries: parameters and buffers);
* ``source``: the weights-source state (the root init, or an ancestor / an epoch of the
  first training, as the DAG resolved ``to``/``epoch``);
* ``fresh``: a new initialization of the same architecture, built by the caller with
  another seed (for ``random``);
* ``masks``: one bool mask per prunable parameter (keys == ``kinds``), ``True`` = kept.

Strategies (``STRATEGIES``):

* ``rewind``: weights := ``source``, *all* entries (prunable weights, biases, buffers);
  the mask is kept. Lottery-ticket rewinding.
* ``random``: weights := ``fresh`` (all entries); the mask is kept. The random-reinit
  control.
* ``sign``: prunable weights := ``sign(source)`` as +-1 (a zero sign maps to +1); every
  other entry from ``source``. Not scaled: this is the seed project's behaviour (its
  networks train from +-1 weights); ``zhou`` is the scaled variant.
* ``zhou``: prunable weights := ``std(source layer) * sign(source)`` (Zhou et al. 2019,
  "signed constant"); the std is ``torch.std`` (Bessel-corrected) over *all* entries of
  the source layer tensor as stored (for the root init: the init distribution's std);
  a zero sign maps to +1; every other entry from ``source``. (A one-element layer has no
  sample std; its constant is then ``|source|``.)
* ``shuffle``: weights := ``source`` (as ``rewind``), but each layer's mask is permuted
  uniformly at random within the layer (``torch.randperm(numel, generator)``, layers in
  ``kinds`` order), preserving each layer's number of kept weights: the random-ticket
  control. Needs ``generator``.
* ``keep``: weights unchanged (fine-tuning); ``source``/``fresh`` are ignored.

A missing required input (``source`` None for rewind/sign/zhou/shuffle, ``fresh`` None
for random, ``generator`` None for shuffle) is a ``SpecError``; so is a ``source`` or
``fresh`` whose names or shapes differ from ``current`` (one line, e.g.
``rewind target has another architecture: 'fc3.weight' has shape (5, 84), expected (10, 84)``).

The step spec and the catalog of strategies are in ``mlprune.reinit``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..errors import SpecError
from .catalog import STRATEGIES

__all__ = ["reinit_weights"]

_OPTION_KEYS = ("to", "at", "seed", "reset_optimizer", "biases")  # the resolved step's


# --------------------------------------------------------------------------- helpers
def _copy(weights):
    return {name: t.detach().clone() for name, t in weights.items()}


def _check_arch(current, other, what):
    """SpecError unless `other` has exactly the names and shapes of `current`."""
    missing = [k for k in current if k not in other]
    if missing:
        raise SpecError(f"{what} has another architecture: no tensor {missing[0]!r}")
    extra = [k for k in other if k not in current]
    if extra:
        raise SpecError(f"{what} has another architecture: unexpected tensor {extra[0]!r}")
    for name, t in current.items():
        if tuple(other[name].shape) != tuple(t.shape):
            raise SpecError(
                f"{what} has another architecture: {name!r} has shape "
                f"{tuple(other[name].shape)}, expected {tuple(t.shape)}"
            )


def _check_masks(current, masks, kinds):
    if not isinstance(masks, Mapping):
        raise SpecError(f"masks must be a dict of bool tensors, got {type(masks).__name__}")
    if kinds is not None:
        missing = [k for k in kinds if k not in masks]
        extra = [k for k in masks if k not in kinds]
        if missing or extra:
            bad = missing[0] if missing else extra[0]
            raise SpecError(
                f"masks do not match the prunable parameters: {bad!r} {'missing' if missing else 'unexpected'}"
            )
    for name, m in masks.items():
        if name not in current:
            raise SpecError(f"mask {name!r} names no tensor of the current weights")
        if tuple(m.shape) != tuple(current[name].shape):
            raise SpecError(f"mask {name!r} has shape {tuple(m.shape)}, expected {tuple(current[name].shape)}")


def _signs(t):
    """+1 where t >= 0 (zero maps to +1), -1 where t < 0; same dtype as t."""
    return torch.where(t < 0, -torch.ones_like(t), torch.ones_like(t))


def _apply_masks(weights, masks):
    for name, m in masks.items():
        weights[name] = weights[name].masked_fill(~m, 0.0)
    return weights


# --------------------------------------------------------------------------- strategies
# Each: (current, source, fresh, masks, generator, order) -> (weights, masks); inputs checked.
def rewind(current, source, fresh, masks, generator, order):
    return _copy(source), masks


def fresh(current, source, fresh, masks, generator, order):
    return _copy(fresh), masks


def _with_biases(masks, source, biases: bool) -> list[str]:
    """The tensors a sign-type strategy sets: the pruned weights, and (biases) their layers' biases."""
    names = list(masks)
    if biases:
        names += [
            n[: -len("weight")] + "bias"
            for n in masks
            if n.endswith("weight") and n[: -len("weight")] + "bias" in source
        ]
    return names


def sign(current, source, fresh, masks, generator, order, biases=False):
    weights = _copy(source)
    for name in _with_biases(masks, source, biases):
        weights[name] = _signs(source[name].detach())
    return weights, masks


def zhou(current, source, fresh, masks, generator, order, biases=False):
    weights = _copy(source)
    for name in _with_biases(masks, source, biases):
        src = source[name].detach()
        std = src.std() if src.numel() > 1 else src.abs().reshape(()).clone()
        weights[name] = std * _signs(src)
    return weights, masks


def shuffle(current, source, fresh, masks, generator, order):
    shuffled = dict(masks)
    for name in order:
        m = masks[name]
        perm = torch.randperm(m.numel(), generator=generator)
        shuffled[name] = m.reshape(-1)[perm].reshape(m.shape)
    return _copy(source), shuffled


def keep(current, source, fresh, masks, generator, order):
    return _copy(current), masks


def reinit_weights(strategy, *, current, source=None, fresh=None, masks, kinds=None, generator=None, **options):
    """Apply a reinit strategy; returns new ``(weights, masks)``, masked entries exactly 0.

    `options` may carry the resolved step's keys (to, at, seed, reset_optimizer): they
    are the caller's business (choosing `source`, seeding `generator`, the optimizer)
    and are ignored here; any other option is a SpecError.
    """
    entry = STRATEGIES[strategy]
    allowed = (*_OPTION_KEYS, *entry.options.names)  # a plugin strategy's own options too
    for key in options:
        if key not in allowed:
            raise SpecError(f"unknown option {key!r} for reinit {strategy!r}; allowed: {', '.join(allowed)}")
    if not isinstance(current, Mapping):
        raise SpecError(f"reinit {strategy!r} needs the current weights, got {current!r}")
    _check_masks(current, masks, kinds)
    if entry.reads_source:
        if source is None:
            raise SpecError(f"reinit {strategy!r} needs a weights source (source=None)")
        _check_arch(current, source, f"{strategy} source")
    if entry.fresh_init:
        if fresh is None:
            raise SpecError(f"reinit {strategy!r} needs a fresh initialization (fresh=None)")
        _check_arch(current, fresh, "fresh initialization")
    if entry.random and not entry.fresh_init and not isinstance(generator, torch.Generator):
        raise SpecError(f"reinit {strategy!r} needs a torch.Generator, got {generator!r}")
    masks_in = {name: m.detach().to(torch.bool).clone() for name, m in masks.items()}
    order = [k for k in (kinds if kinds is not None else masks_in)]
    own = {name: options[name] for name in entry.options.names if name in options}
    weights, new_masks = entry.load()(current, source, fresh, masks_in, generator, order, **own)
    return _apply_masks(weights, new_masks), new_masks
