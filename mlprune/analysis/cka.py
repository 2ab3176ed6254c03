"""Representation similarity: linear CKA (Kornblith et al. 2019) in closed form (`linear_cka`) and its
minibatch form with the unbiased HSIC estimator (Nguyen, Raghu & Kornblith 2021: `MinibatchCKA`),
which needs one n×n Gram matrix per batch, never the whole probe set at once, so it scales to
CIFAR; the layer outputs and the seeded probe set it is computed on.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import SpecError

# ---- representations: linear CKA ------------------------------------------------------------


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two representations of the same n examples (n × features each), closed form:
    ``‖Yᵀ X‖²_F / (‖Xᵀ X‖_F ‖Yᵀ Y‖_F)`` on column-centered X, Y (Kornblith et al. 2019, eq. 5)."""
    x = x.reshape(x.shape[0], -1).double()
    y = y.reshape(y.shape[0], -1).double()
    x = x - x.mean(dim=0, keepdim=True)
    y = y - y.mean(dim=0, keepdim=True)
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2
    denominator = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    return float(cross / denominator) if float(denominator) > 0 else float("nan")


def gram(x: torch.Tensor) -> torch.Tensor:
    """The linear kernel X Xᵀ (float64) of n examples' features (any shape after the first dim)."""
    if x.device.type == "mps":  # no float64 there: the n × n product is small, do it on the CPU
        x = x.cpu()
    x = x.reshape(x.shape[0], -1).double()
    return x @ x.T


def hsic_unbiased(k_gram: torch.Tensor, l_gram: torch.Tensor) -> torch.Tensor:
    """The unbiased HSIC estimator of Song et al. (2012) for two n × n Gram matrices (n >= 4)."""
    n = k_gram.shape[0]
    if n < 4:
        raise SpecError(f"the unbiased HSIC estimator needs at least 4 examples per batch, got {n}")
    k0 = k_gram.clone()  # K̃, L̃: the Gram matrices with a zero diagonal
    l0 = l_gram.clone()
    k0.fill_diagonal_(0.0)
    l0.fill_diagonal_(0.0)
    kl = k0 @ l0
    ones_k, ones_l = k0.sum(), l0.sum()
    value = torch.trace(kl) + ones_k * ones_l / ((n - 1) * (n - 2)) - 2.0 * kl.sum() / (n - 2)
    return value / (n * (n - 3))


class MinibatchCKA:
    """Linear CKA per layer, accumulated over minibatches (Nguyen, Raghu & Kornblith 2021):
    ``CKA = mean HSIC₁(K, L) / sqrt(mean HSIC₁(K, K) · mean HSIC₁(L, L))`` with the unbiased HSIC₁
    of each batch's Gram matrices. Memory: one batch's Gram matrices, whatever the probe size."""

    def __init__(self):
        self._sums: dict[str, torch.Tensor] = {}  # layer -> [HSIC(K,L), HSIC(K,K), HSIC(L,L)] summed
        self.batches = 0

    def update(self, xs: dict, ys: dict) -> None:
        """One batch: {layer: activations of network a} and {layer: activations of network b}."""
        for name, x in xs.items():
            k_gram, l_gram = gram(x), gram(ys[name])
            values = torch.stack(
                [hsic_unbiased(k_gram, l_gram), hsic_unbiased(k_gram, k_gram), hsic_unbiased(l_gram, l_gram)]
            ).cpu()
            self._sums[name] = values if name not in self._sums else self._sums[name] + values
        self.batches += 1

    def result(self) -> dict[str, float]:
        out = {}
        for name, (kl, kk, ll) in self._sums.items():
            denominator = math.sqrt(max(float(kk), 0.0) * max(float(ll), 0.0))
            out[name] = float(kl) / denominator if denominator > 0 else float("nan")
        return out


def layer_outputs(model: torch.nn.Module, modules: dict[str, torch.nn.Module], x: torch.Tensor) -> dict:
    """{name: output} of the given submodules of `model` on input `x` (one forward pass, no grad)."""
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        module.register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out.detach()))
        for name, module in modules.items()
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def probe_indices(size: int, examples: int, seed: int) -> torch.Tensor:
    """The probe set: `size` test examples drawn without replacement by a generator seeded with `seed`."""
    if examples < 4:
        raise SpecError(f"a CKA probe needs at least 4 test examples; the test set has {examples}")
    return torch.randperm(examples, generator=torch.Generator().manual_seed(seed))[: min(size, examples)]


def probe_batches(count: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of `count` probe examples split into ``count // batch_size`` batches (at least one)
    as equal as possible: each holds batch_size to 2·batch_size − 1 examples, so none is left with
    fewer than the 4 examples the unbiased estimator needs."""
    batches = max(1, count // batch_size)
    bounds = np.linspace(0, count, batches + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
