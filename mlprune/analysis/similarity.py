"""Mask similarity: the Jaccard of kept weights, per layer and overall, and its matrix over states."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..errors import SpecError


def check_same_architecture(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> None:
    if set(a) != set(b):
        only_a = sorted(set(a) - set(b))
        only_b = sorted(set(b) - set(a))
        raise SpecError(
            "states of different architectures: parameters only in the first: "
            f"{', '.join(only_a) or '-'}; only in the second: {', '.join(only_b) or '-'}"
        )
    for name in a:
        if tuple(a[name].shape) != tuple(b[name].shape):
            raise SpecError(
                f"states of different architectures: {name!r} has shape "
                f"{tuple(a[name].shape)} vs {tuple(b[name].shape)}"
            )


def _ratio(inter: int, union: int) -> float:
    return inter / union if union else 1.0


def jaccard(masks_a: Mapping[str, torch.Tensor], masks_b: Mapping[str, torch.Tensor]) -> dict:
    """Jaccard similarity of the KEPT weights of two mask sets.

    ``{"overall": |A∩B| / |A∪B| over all prunable weights, "per_layer": {name: ...}}``;
    a pair where neither keeps anything has Jaccard 1.0. Parameter names and
    shapes must match (else ``SpecError``: "states of different architectures: ...").
    """
    check_same_architecture(masks_a, masks_b)
    per_layer = {}
    inter_all = union_all = 0
    for name in masks_a:
        a = masks_a[name].bool()
        b = masks_b[name].bool()
        inter = int((a & b).sum())
        union = int((a | b).sum())
        per_layer[name] = _ratio(inter, union)
        inter_all += inter
        union_all += union
    return {"overall": _ratio(inter_all, union_all), "per_layer": per_layer}


def jaccard_matrix(
    mask_list: Sequence[Mapping[str, torch.Tensor]],
    labels: Sequence[str] | None = None,
    layer: str | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Pairwise Jaccard matrix (symmetric, 1.0 on the diagonal) of several mask sets.

    ``layer`` restricts it to one parameter (default: overall over all prunable
    weights). Labels default to "0", "1", ...; returns ``(matrix, labels)``.
    """
    n = len(mask_list)
    labels = [str(i) for i in range(n)] if labels is None else [str(lab) for lab in labels]
    if len(labels) != n:
        raise SpecError(f"jaccard_matrix got {len(labels)} labels for {n} mask sets")
    if layer is not None:
        for masks in mask_list:
            if layer not in masks:
                raise SpecError(f"unknown layer {layer!r}; allowed: {', '.join(sorted(masks))}")
    mat = np.ones((n, n), dtype=float)
    for i in range(n):
        for j in range(i + 1, n):
            res = jaccard(mask_list[i], mask_list[j])
            v = res["overall"] if layer is None else res["per_layer"][layer]
            mat[i, j] = mat[j, i] = v
    return mat, labels
