"""Network scores of the score-based methods (pruning at initialization, or at any state).

Each scorer is ``(model, masks, data, options) -> {param name: keep score}``: higher =
more worth keeping, one tensor per masked parameter, on the CPU. ``model`` carries the
state's effective weights; ``masks`` are the current masks (pruned weights stay pruned:
they are zero in the model and are no candidates, ``pruning.masks`` only ever removes
more); ``data`` is a `ScoringData`. Scorers leave ``model`` as they found it (they work
on a copy) and touch no global RNG. The selection (exact count, scope, ``invert``,
iterations) is ``pruning.masks.prune_masks`` with ``scores=network_scores(...)``.

* ``snip`` (Lee et al. 2019): ``|g ⊙ w|`` with ``g`` the gradient of the loss, summed over
  the scoring batches, with respect to the effective weights: the connection sensitivity
  ``|∂L/∂c|`` of a mask variable ``c`` at ``c = 1``.
* ``mag_grad`` (Blalock et al. 2020, ShrinkBench's GlobalMagGrad and LayerMagGrad): ``|w ⊙ g|``
  with ``g`` the loss gradient summed over the scoring batches, taken at a trained state; the
  score is SNIP's, kept as its own method because the baselines name it (and pruning at
  initialization is another question).
* ``grasp`` (Wang et al. 2020): the paper's score is ``S = -(H g) ⊙ w`` (``H`` the Hessian
  of the loss, ``g`` its gradient, both over the prunable weights that remain, the logits
  divided by ``temperature`` as in the authors' code), and GraSP removes the weights with
  the *largest* S (those whose removal reduces the gradient flow least). In our
  keep-score convention the keep score is therefore ``-S = (H g) ⊙ w``, which is what
  Synaptic-Flow's code computes and thresholds. ``H g`` is a double backward:
  ``∇_w (∇_w L · stop_gradient(g))``, summed over the batches as the authors' code does.
* ``synflow`` (Tanaka et al. 2020): data-free. On a float64 copy of the network whose
  parameters and buffers are all replaced by their absolute values (biases included, as
  in Synaptic-Flow's code; ReLU networks then pass everything, so ``R`` is the path sum
  ``1ᵀ(∏|W|)1`` plus the bias paths), ``R = sum(f(1))`` for one all-ones input;
  the score is ``|∂R/∂w ⊙ w|``. Its iterations (100 by default, exponential schedule)
  are done by the selection, which scores again after every step.

* ``taylor`` and ``bn_scale`` (channel criteria, `pruning.criteria`) give per-weight *values* their
  slices are ranked by: ``w · ∂L/∂w`` (gradients summed over the scoring batches, as SNIP's), and
  the ``|γ|`` of the BatchNorm after each layer spread over its output channels.

Scoring runs in eval mode (dropout off, batch norm on its running statistics), as
Synaptic-Flow's default does, so the scores of a state do not depend on an RNG.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import SpecError
from .catalog import METHODS


@dataclass
class ScoringData:
    """What a scorer may read besides the model: the input shape and the training batches.

    ``batches(count, batch_size)``: the first `count` training batches of that size, always the
    same ones for a given root (the runner takes epoch 0 of the root's data order).
    """

    input_shape: tuple
    batches: Callable[[int, int], list]
    device: torch.device = torch.device("cpu")


def _scoring_copy(model: nn.Module, masks: dict, dtype=None) -> tuple[nn.Module, dict]:
    """An eval-mode copy of `model` whose masked parameters are exactly their effective values."""
    clone = copy.deepcopy(model)
    if dtype is not None:
        clone = clone.to(dtype)
    clone.eval()
    params = dict(clone.named_parameters())
    missing = [name for name in masks if name not in params]
    if missing:
        raise SpecError(f"mask {missing[0]!r} names no parameter of the model")
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask.to(params[name].device, params[name].dtype))
    for p in clone.parameters():
        p.requires_grad_(False)
    for name in masks:
        params[name].requires_grad_(True)
    return clone, params


def _batches(data: ScoringData, options: dict) -> list:
    batches = data.batches(options["batches"], options["batch_size"])
    if not batches:
        raise SpecError("no training data to compute the pruning scores on")
    return [(x.to(data.device), y.to(data.device)) for x, y in batches]


def snip(model: nn.Module, masks: dict, data: ScoringData, options: dict) -> dict:
    clone, params = _scoring_copy(model, masks)
    weights = [params[name] for name in masks]
    grads = [torch.zeros_like(w) for w in weights]
    for x, y in _batches(data, options):
        loss = nn.functional.cross_entropy(clone(x), y)
        for total, g in zip(grads, torch.autograd.grad(loss, weights)):
            total += g
    return {name: (g * w).abs().detach().cpu() for name, g, w in zip(masks, grads, weights)}


def mag_grad(model: nn.Module, masks: dict, data: ScoringData, options: dict) -> dict:
    """|w ⊙ ∂L/∂w|, the gradient summed over the scoring batches: the score of `snip`."""
    return snip(model, masks, data, options)


def grasp(model: nn.Module, masks: dict, data: ScoringData, options: dict) -> dict:
    clone, params = _scoring_copy(model, masks)
    weights = [params[name] for name in masks]
    keep = [masks[name].to(w.device, w.dtype) for name, w in zip(masks, weights)]
    batches = _batches(data, options)
    temperature = options["temperature"]

    def loss_of(x, y):
        return nn.functional.cross_entropy(clone(x) / temperature, y)

    # g: the gradient over the weights that remain (a pruned weight is no variable of the network)
    g = [torch.zeros_like(w) for w in weights]
    for x, y in batches:
        for total, grad, m in zip(g, torch.autograd.grad(loss_of(x, y), weights), keep):
            total += grad * m
    hg = [torch.zeros_like(w) for w in weights]
    for x, y in batches:
        grads = torch.autograd.grad(loss_of(x, y), weights, create_graph=True)
        dot = sum((grad * m * fixed).sum() for grad, m, fixed in zip(grads, keep, g))
        for total, second in zip(hg, torch.autograd.grad(dot, weights)):
            total += second
    # keep score = -S = (H g) ⊙ w: GraSP removes the largest S, i.e. keeps the largest (H g) ⊙ w
    return {name: (h * m * w).detach().cpu() for name, h, m, w in zip(masks, hg, keep, weights)}


def synflow(model: nn.Module, masks: dict, data: ScoringData, options: dict) -> dict:
    clone, params = _scoring_copy(model, masks, dtype=torch.float64)
    with torch.no_grad():
        for tensor in list(clone.parameters()) + list(clone.buffers()):
            if tensor.is_floating_point():
                tensor.abs_()
    weights = [params[name] for name in masks]
    ones = torch.ones((1, *data.input_shape), dtype=torch.float64, device=data.device)
    flow = clone(ones).sum()
    grads = torch.autograd.grad(flow, weights)
    return {name: (g * w).abs().detach().cpu() for name, g, w in zip(masks, grads, weights)}


def taylor(model: nn.Module, masks: dict, data: ScoringData, options: dict) -> dict:
    """Taylor's values ``w · ∂L/∂w`` per weight (``∂L/∂w`` summed over the scoring batches); the channel
    criterion (`pruning.criteria.keep_taylor`) sums them over each slice."""
    clone, params = _scoring_copy(model, masks)
    weights = [params[name] for name in masks]
    grads = [torch.zeros_like(w) for w in weights]
    for x, y in _batches(data, options):
        loss = nn.functional.cross_entropy(clone(x), y)
        for total, g in zip(grads, torch.autograd.grad(loss, weights)):
            total += g
    return {name: (g * w).detach().cpu() for name, g, w in zip(masks, grads, weights)}


def following_batchnorm(model: nn.Module) -> dict:
    """{weight name: the BatchNorm module right after its layer}: the next module without children in
    module order, when it is a BatchNorm over the layer's output channels (conv -> bn, as the
    architectures and torchvision write them)."""
    leaves = [(name, module) for name, module in model.named_modules() if not any(True for _ in module.children())]
    found = {}
    for (name, module), (_, after) in zip(leaves, leaves[1:]):
        if (
            isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
            and isinstance(after, nn.modules.batchnorm._BatchNorm)
            and after.affine
            and after.num_features == module.weight.shape[0]
        ):
            found[f"{name}.weight" if name else "weight"] = after
    return found


def bn_scale_layers(model: nn.Module) -> set:
    """The layers BN-scale can score: those with a BatchNorm right after them."""
    return set(following_batchnorm(model))


def bn_scale(model: nn.Module, masks: dict, data: ScoringData, options: dict) -> dict:
    """BN-scale's values: ``|γ_c|`` of the BatchNorm after a layer over every weight of output channel c
    (layers without one get none; the channel criterion reads a slice's largest value)."""
    found = following_batchnorm(model)
    params = dict(model.named_parameters())
    out = {}
    for name in masks:
        if name in found:
            gamma = found[name].weight.detach().abs().to("cpu", torch.float64)
            shape = (-1,) + (1,) * (params[name].dim() - 1)
            out[name] = gamma.view(shape).expand(params[name].shape).clone()
    return out


def network_scores(method: str, model: nn.Module, data: ScoringData, options: dict):
    """``scores(masks) -> {name: keep score}`` of `method` on `model` (what ``prune_masks`` takes)."""
    scorer = METHODS[method].load_scorer()

    def scores(masks: dict) -> dict:
        return scorer(model, masks, data, options)

    return scores
