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

Reinit step spec (``resolve_reinit_step`` makes it canonical)::

    {"strategy": "rewind",            # required: rewind, random, sign, zhou, shuffle, keep
     "to": "root",                    # rewind/sign/zhou/shuffle: "root" | "parent" | "state:<ref>"
     "epoch": None,                   # rewind/sign/zhou/shuffle: None or an int >= 0
     "seed": <int>,                   # random/shuffle only, kept only when given (silently
                                      # dropped otherwise); absent: derived from the state's key
     "reset_optimizer": True}         # every strategy

``to``/``epoch`` given for a strategy that does not use them is a ``SpecError``; the
resolved dict holds exactly the keys that apply, defaults filled. The optimizer state
is reset at every reinit by default (``reset_optimizer: True``); the training step owns
the optimizer, this module only records the choice in the spec.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import torch

from mlprune.errors import SpecError, choice_error

__all__ = ["STRATEGIES", "reinit_weights", "resolve_reinit_step"]

_SOURCE_STRATEGIES = ("rewind", "sign", "zhou", "shuffle")
_SEED_STRATEGIES = ("random", "shuffle")
_STEP_KEYS = ("strategy", "to", "epoch", "seed", "reset_optimizer")


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
            raise SpecError(f"{what} has another architecture: {name!r} has shape "
                            f"{tuple(other[name].shape)}, expected {tuple(t.shape)}")


def _check_masks(current, masks, kinds):
    if not isinstance(masks, Mapping):
        raise SpecError(f"masks must be a dict of bool tensors, got {type(masks).__name__}")
    if kinds is not None:
        missing = [k for k in kinds if k not in masks]
        extra = [k for k in masks if k not in kinds]
        if missing or extra:
            bad = missing[0] if missing else extra[0]
            raise SpecError(f"masks do not match the prunable parameters: {bad!r} "
                            f"{'missing' if missing else 'unexpected'}")
    for name, m in masks.items():
        if name not in current:
            raise SpecError(f"mask {name!r} names no tensor of the current weights")
        if tuple(m.shape) != tuple(current[name].shape):
            raise SpecError(f"mask {name!r} has shape {tuple(m.shape)}, "
                            f"expected {tuple(current[name].shape)}")


def _signs(t):
    """+1 where t >= 0 (zero maps to +1), -1 where t < 0; same dtype as t."""
    return torch.where(t < 0, -torch.ones_like(t), torch.ones_like(t))


def _apply_masks(weights, masks):
    for name, m in masks.items():
        weights[name] = weights[name].masked_fill(~m, 0.0)
    return weights


# --------------------------------------------------------------------------- strategies
# Each: (current, source, fresh, masks, generator, order) -> (weights, masks); inputs checked.
def _rewind(current, source, fresh, masks, generator, order):
    return _copy(source), masks


def _random(current, source, fresh, masks, generator, order):
    return _copy(fresh), masks


def _sign(current, source, fresh, masks, generator, order):
    weights = _copy(source)
    for name in masks:
        weights[name] = _signs(source[name].detach())
    return weights, masks


def _zhou(current, source, fresh, masks, generator, order):
    weights = _copy(source)
    for name in masks:
        src = source[name].detach()
        std = src.std() if src.numel() > 1 else src.abs().reshape(()).clone()
        weights[name] = std * _signs(src)
    return weights, masks


def _shuffle(current, source, fresh, masks, generator, order):
    shuffled = dict(masks)
    for name in order:
        m = masks[name]
        perm = torch.randperm(m.numel(), generator=generator)
        shuffled[name] = m.reshape(-1)[perm].reshape(m.shape)
    return _copy(source), shuffled


def _keep(current, source, fresh, masks, generator, order):
    return _copy(current), masks


STRATEGIES = {
    "rewind": _rewind,
    "random": _random,
    "sign": _sign,
    "zhou": _zhou,
    "shuffle": _shuffle,
    "keep": _keep,
}


def reinit_weights(strategy, *, current, source=None, fresh=None, masks, kinds=None,
                   generator=None, **options):
    """Apply a reinit strategy; returns new ``(weights, masks)``, masked entries exactly 0.

    `options` may carry the resolved step's keys (to, epoch, seed, reset_optimizer): they
    are the caller's business (choosing `source`, seeding `generator`, the optimizer)
    and are ignored here; any other option is a SpecError.
    """
    if strategy not in STRATEGIES:
        raise choice_error("reinit strategy", strategy, STRATEGIES)
    for key in options:
        if key not in _STEP_KEYS[1:]:
            raise SpecError(f"unknown option {key!r} for reinit {strategy!r}; "
                            f"allowed: {', '.join(_STEP_KEYS[1:])}")
    if not isinstance(current, Mapping):
        raise SpecError(f"reinit {strategy!r} needs the current weights, got {current!r}")
    _check_masks(current, masks, kinds)
    if strategy in _SOURCE_STRATEGIES:
        if source is None:
            raise SpecError(f"reinit {strategy!r} needs a weights source (source=None)")
        _check_arch(current, source, "rewind target" if strategy == "rewind"
                    else f"{strategy} source")
    if strategy == "random":
        if fresh is None:
            raise SpecError("reinit 'random' needs a fresh initialization (fresh=None)")
        _check_arch(current, fresh, "fresh initialization")
    if strategy == "shuffle" and not isinstance(generator, torch.Generator):
        raise SpecError(f"reinit 'shuffle' needs a torch.Generator, got {generator!r}")
    masks_in = {name: m.detach().to(torch.bool).clone() for name, m in masks.items()}
    order = [k for k in (kinds if kinds is not None else masks_in)]
    weights, new_masks = STRATEGIES[strategy](current, source, fresh, masks_in, generator, order)
    return _apply_masks(weights, new_masks), new_masks


# --------------------------------------------------------------------------- spec
def _check_to(to):
    if to in ("root", "parent"):
        return to
    if isinstance(to, str) and to.startswith("state:") and len(to) > len("state:"):
        return to
    raise SpecError(f"invalid rewind target 'to' {to!r}; allowed: 'root', 'parent', 'state:<ref>'")


def resolve_reinit_step(step: dict) -> dict:
    """Validated, canonical reinit step (defaults filled, inapplicable options removed).

    Idempotent: resolving a resolved step returns an equal dict.
    """
    if not isinstance(step, Mapping):
        raise SpecError(f"reinit step must be a mapping, got {step!r}")
    for key in step:
        if key not in _STEP_KEYS:
            raise SpecError(f"unknown key {key!r} in reinit step; allowed: {', '.join(_STEP_KEYS)}")
    if "strategy" not in step:
        raise SpecError("reinit step has no 'strategy'; allowed: " + ", ".join(STRATEGIES))
    strategy = step["strategy"]
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise choice_error("reinit strategy", strategy, STRATEGIES)
    out = {"strategy": strategy}
    if strategy in _SOURCE_STRATEGIES:
        out["to"] = _check_to(step.get("to", "root"))
        epoch = step.get("epoch")
        if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral)
                                  or epoch < 0):
            raise SpecError(f"invalid epoch {epoch!r}; allowed: null or an int >= 0")
        out["epoch"] = None if epoch is None else int(epoch)
    else:
        for key in ("to", "epoch"):
            if key in step:
                raise SpecError(f"option {key!r} ({step[key]!r}) does not apply to reinit "
                                f"{strategy!r}; allowed for: {', '.join(_SOURCE_STRATEGIES)}")
    # No default seed: left out, the DAG derives one from the child's key, so each branch
    # draws its own numbers (a default of 0 would make `random` re-create a seed-0 root's init).
    seed = step.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
        raise SpecError(f"invalid seed {seed!r}; allowed: an int >= 0")
    if strategy in _SEED_STRATEGIES and seed is not None:
        out["seed"] = int(seed)
    reset = step.get("reset_optimizer", True)
    if not isinstance(reset, bool):
        raise SpecError(f"invalid reset_optimizer {reset!r}; allowed: true or false")
    out["reset_optimizer"] = reset
    return out
