"""Layer-wise budgets: how many weights each layer of a pool keeps when the pool keeps K (pure Python).

A prune step's ``distribution`` says how the weights a step keeps are shared out between the
layers it prunes together (the selected layers without a per-layer override):

* ``uniform``: every layer prunes the same fraction of what remains in it (the step's ``scope:
  layer``; the layer-wise code in `pruning.masks` does it).
* ``global``: one threshold over the pool (``scope: global``).
* ``uniform_plus`` (Gale et al. 2019, "The State of Sparsity in Deep Neural Networks"): every layer
  at the pool's target sparsity ``s``, except the network's first prunable layer, kept dense, and its
  output layer, at most 80 % sparse (``min(s, 0.8)``). Neither is re-scaled, so the pool ends a little
  less sparse than ``s``, as in the paper.
* ``erk`` (Evci et al. 2020, "Rigging the Lottery"): layer l keeps the fraction ``min(1, ε·p_l)`` of
  its weights, ``p_l = Σ shape / Π shape`` (Erdős–Rényi-Kernel: ``(n_in + n_out + k_h + k_w) /
  (n_in · n_out · k_h · k_w)`` for a conv, ``(n_in + n_out) / (n_in · n_out)`` for a linear layer),
  with ε chosen so that the pool keeps its target. A layer whose ``ε·p_l`` would exceed 1 is kept
  dense and ε is solved again over the others (RigL's and JaxPruner's loop: the layers of the largest
  ``p`` go dense first, until no density exceeds 1).

Densities are of the whole layer (its size, pruned weights included); a layer keeps
``round(density · size)`` weights, at least one, and never more than it has left (a mask never
revives a weight), so in a later round a layer already below its budget keeps what it has.
"""

from __future__ import annotations

import math

# the output layer of uniform_plus is at most this sparse (Gale et al. 2019)
UNIFORM_PLUS_OUTPUT_MAX_SPARSITY = 0.8


def erk_probability(shape) -> float:
    """ERK's raw density of a layer of `shape`: ``Σ shape / Π shape``."""
    return sum(shape) / math.prod(shape)


def erk_densities(shapes: dict, density: float, first: str | None = None, output: str | None = None) -> dict:
    """{layer: density} of ERK for a pool whose overall density is `density` (saturated layers dense)."""
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    target = density * sum(sizes.values())
    raw = {name: erk_probability(shape) for name, shape in shapes.items()}
    dense: set = set()
    while True:
        free = [name for name in shapes if name not in dense]
        if not free:
            break
        divisor = sum(raw[name] * sizes[name] for name in free)
        eps = max(target - sum(sizes[name] for name in dense), 0.0) / divisor
        highest = max(raw[name] for name in free)
        if eps * highest <= 1.0:
            break
        dense.update(name for name in free if raw[name] == highest)
    return {name: 1.0 if name in dense else eps * raw[name] for name in shapes}


def uniform_plus_densities(shapes: dict, density: float, first: str | None, output: str | None) -> dict:
    """{layer: density} of uniform+: `density` everywhere, the `first` layer dense, the `output` layer
    at least ``1 - 0.8`` dense."""
    sparsity = 1.0 - density
    out = {name: density for name in shapes}
    if output in out:
        out[output] = 1.0 - min(sparsity, UNIFORM_PLUS_OUTPUT_MAX_SPARSITY)
    if first in out:
        out[first] = 1.0
    return out


def keep_counts(densities: dict, shapes: dict, remaining: dict) -> dict:
    """{layer: weights it keeps} of a pool at {layer: density}: ``round(density · size)``, at least one,
    at most what the layer has left (`remaining`)."""
    return {
        name: min(max(round(densities[name] * math.prod(shape)), 1), remaining[name]) for name, shape in shapes.items()
    }


def pool_density(shapes: dict, keep: int) -> float:
    """The overall density of a pool of layers `shapes` that keeps `keep` weights."""
    total = sum(math.prod(shape) for shape in shapes.values())
    return keep / total if total else 0.0
