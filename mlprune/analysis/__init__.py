"""Analysis of pruning states: pure functions on masks, weights, predictions and activations.

One module per question, re-exported here (``from mlprune import analysis; analysis.jaccard(...)``):
``sparsity`` (sparsity, compression, FLOPs), ``similarity`` (Jaccard), ``structure`` (emergent
structure), ``stability`` (across rounds), ``accuracy`` (accuracy vs remaining over seeds),
``interpolation`` (linear paths, barriers), ``predictions`` (per-class impact, PIEs, churn),
``cka`` (linear CKA of layer outputs), ``statistics`` (intervals and tests over seeds). The report draws these, the step runners store them;
nothing here reads a store or imports mlflow.

Conventions (see docs/architecture.md):

- weights: ``dict[str, Tensor]`` keyed by ``state_dict`` names;
- masks: ``dict[str, BoolTensor]``, one entry per prunable parameter, ``True`` = kept;
- kinds: ordered ``{param name: "conv" | "linear"}`` (``models.prunable``), the last
  entry is the output layer.

Nothing here touches the global RNG; randomness comes in as a
``torch.Generator``. Bad input raises :class:`mlprune.errors.SpecError` with a
one-line message.

Definitions used throughout (they are part of the contract, tests pin them):

- **sparsity** = masked prunable weights / all prunable weights (from the masks,
  not from counting zeros: a kept weight that happens to be 0.0 is still kept).
- **remaining fraction** = 1 - sparsity.
- **compression ratio** (:func:`compression_ratio`) = prunable weights / kept
  prunable weights. ShrinkBench defines it over *all* parameters (total / nonzero);
  :func:`compression_ratio_all` gives that variant, with non-prunable parameters
  (biases, batch-norm affine parameters, ...) counted as kept and prunable ones
  counted from the masks. A ratio with nothing kept is ``inf``.
- **FLOPs** (:func:`flops`) = multiply-adds of convolution and linear layers for
  one input of batch size 1 (ShrinkBench's convention); biases, activations,
  pooling and normalization are not counted.
- **Jaccard** of two masks = |kept in both| / |kept in either|; 1.0 when neither
  keeps anything (two empty sets are identical).
"""

from __future__ import annotations

from . import statistics
from .accuracy import accuracy_vs_remaining, pareto_front
from .cka import MinibatchCKA, gram, hsic_unbiased, layer_outputs, linear_cka, probe_batches, probe_indices
from .interpolation import barrier_height, interpolate_weights, interpolation_alphas
from .predictions import (
    SIGNIFICANCE,
    churn,
    churn_matrix,
    class_impact,
    class_recall,
    confusion_matrix,
    modal_labels,
    pies,
)
from .similarity import check_same_architecture, jaccard, jaccard_matrix
from .sparsity import compression_ratio, compression_ratio_all, flops, remaining_fraction, sparsity
from .stability import weight_stability, weight_trajectories
from .structure import emergent_structure, follows_nm, nm_pattern, prob_unit_pruned

__all__ = [
    "sparsity",
    "remaining_fraction",
    "compression_ratio",
    "compression_ratio_all",
    "flops",
    "check_same_architecture",
    "jaccard",
    "jaccard_matrix",
    "prob_unit_pruned",
    "emergent_structure",
    "nm_pattern",
    "follows_nm",
    "weight_stability",
    "weight_trajectories",
    "accuracy_vs_remaining",
    "pareto_front",
    "statistics",
    "interpolation_alphas",
    "interpolate_weights",
    "barrier_height",
    "SIGNIFICANCE",
    "confusion_matrix",
    "class_recall",
    "class_impact",
    "modal_labels",
    "pies",
    "churn",
    "churn_matrix",
    "linear_cka",
    "gram",
    "hsic_unbiased",
    "MinibatchCKA",
    "layer_outputs",
    "probe_indices",
    "probe_batches",
]
