"""Optimizer factories of the catalog's entries: ``(params, train options) -> torch.optim.Optimizer``."""

from __future__ import annotations

import torch


def sgd(params, options: dict) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        params,
        lr=options["lr"],
        momentum=options.get("momentum", 0.0),
        weight_decay=options["weight_decay"],
        nesterov=options.get("nesterov", False),
    )


def adam(params, options: dict) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=options["lr"], weight_decay=options["weight_decay"])


def adamw(params, options: dict) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=options["lr"], weight_decay=options["weight_decay"])
