"""The example criterion: first-order Taylor importance |w · dL/dw| (Molchanov et al. 2019, per weight).

A scorer of mlprune's score methods: ``(model, masks, data, options) -> {parameter: keep score}``,
a higher score kept. mlprune does the rest: scope, selectors, overrides, `invert`, schedules.
"""

import copy

import torch
from torch import nn


def taylor_scores(model: nn.Module, masks: dict, data, options: dict) -> dict:
    clone = copy.deepcopy(model).eval()
    params = dict(clone.named_parameters())
    with torch.no_grad():  # the effective weights: pruned ones are exactly 0
        for name, mask in masks.items():
            params[name].mul_(mask.to(params[name].device, params[name].dtype))
    weights = [params[name] for name in masks]
    grads = [torch.zeros_like(w) for w in weights]
    for x, y in data.batches(options["batches"], options["batch_size"]):
        loss = nn.functional.cross_entropy(clone(x.to(data.device)), y.to(data.device))
        for total, g in zip(grads, torch.autograd.grad(loss, weights)):
            total += g
    return {name: (w * g).abs().detach().cpu() for name, w, g in zip(masks, weights, grads)}
