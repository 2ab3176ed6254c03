"""What every stored network state is measured with: one `Evaluation` entry per measurement in
`EVALUATIONS` (test loss and accuracy, predictions, sparsity, FLOPs, training, compact cost);
`evaluate_state` runs them all on one model in eval mode."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import analysis, names
from ..registry import Registry
from ..workspace import Workspace
from .compact import compact_network, measure_compact
from .context import Tensors


@dataclass
class Evaluated:
    """A network state about to be stored, for the evaluations: the model (eval mode, on the device)."""

    model: torch.nn.Module
    tensors: Tensors
    data: object
    root: dict
    history: dict
    steps: list
    workspace: Workspace
    _test: object = None

    def test_predictions(self):
        """The model's `training.loop.Predictions` on the test set (fixed order): one pass, shared by
        every evaluation that needs the test outputs (loss and accuracy, predictions, per class)."""
        if self._test is None:
            from ..training.loop import predict

            self._test = predict(self.model, self.data.test_batches(256), device=self.workspace.device)
        return self._test


@dataclass(frozen=True)
class Evaluation:
    """One thing measured on every network state: ``impl(evaluated) -> (metrics, files)``.

    ``files``: extra artifacts of the state ({name: bytes}), hashed and checked like its tensors.
    """

    name: str
    impl: str
    help: str = ""

    def load(self):
        from ..registry import load_impl

        return load_impl(self.impl)


EVALUATIONS: Registry[Evaluation] = Registry("state evaluation")


TOP5_ABOVE_CLASSES = 10  # top-5 accuracy is logged for datasets of more classes than this


def evaluate_test(ev: Evaluated):
    result = ev.test_predictions()
    metrics = {names.M_TEST_LOSS: result.loss, names.M_TEST_ACCURACY: result.accuracy}
    if ev.data.num_classes > TOP5_ABOVE_CLASSES:
        metrics[names.M_TEST_ACCURACY_TOP5] = result.top5_accuracy
    return metrics, {}


def evaluate_predictions(ev: Evaluated):
    """The test pass kept: predictions.safetensors (per example, test order: predicted class, true
    class, probability of the true class), confusion.json and each class's accuracy (its recall)."""
    import json

    import numpy as np

    from ..store.artifacts import tensors_bytes

    result = ev.test_predictions()
    # the smallest integer type that holds every class index (uint8 up to 256 classes): lossless
    small = next(t for t in (torch.uint8, torch.int16, torch.int32) if ev.data.num_classes - 1 <= torch.iinfo(t).max)
    files = {
        names.PREDICTIONS_FILE: tensors_bytes(
            {
                names.PRED_PREDICTED: result.predicted.to(small),
                names.PRED_LABEL: result.labels.to(small),
                names.PRED_TRUE_PROBABILITY: result.true_probability.float(),
            }
        )
    }
    confusion = analysis.confusion_matrix(result.labels.numpy(), result.predicted.numpy(), ev.data.num_classes)
    files[names.CONFUSION_FILE] = json.dumps(
        {
            "classes": ev.data.num_classes,
            "rows": "true class",
            "columns": "predicted class",
            "matrix": confusion.tolist(),
        }
    ).encode()
    recall = analysis.class_recall(confusion)
    metrics = {f"{names.M_CLASS_ACCURACY_PREFIX}{k}": float(v) for k, v in enumerate(recall) if np.isfinite(v)}
    return metrics, files


def evaluate_sparsity(ev: Evaluated):
    metrics = dict(analysis.sparsity(ev.tensors.masks))
    metrics[names.M_COMPRESSION] = analysis.compression_ratio(ev.tensors.masks)
    metrics[names.M_COMPRESSION_ALL] = analysis.compression_ratio_all(ev.tensors.masks, ev.model)
    return metrics, {}


def evaluate_flops(ev: Evaluated):
    model = ev.workspace.blank(ev.root, ev.data)  # counted on the CPU: the hooks see shapes, not values
    model.load_state_dict(ev.tensors.weights)
    return analysis.flops(model, tuple(ev.data.input_shape), ev.tensors.masks), {}


def evaluate_training(ev: Evaluated):
    """Early stopping (the epoch and iteration of the lowest validation loss, the test accuracy then)
    and iterations trained."""
    metrics = {}
    val = ev.history.get(names.M_VAL_LOSS)
    if val:
        best_epoch, _ = min(val, key=lambda point: point[1])  # the first epoch of the lowest validation loss
        metrics[names.M_EARLY_STOP_EPOCH] = best_epoch
        at_best = [value for epoch, value in ev.history.get(names.M_EPOCH_TEST_ACCURACY, []) if epoch == best_epoch]
        if at_best:
            metrics[names.M_EARLY_STOP_TEST_ACCURACY] = at_best[-1]
        batch_size = next((next(iter(s.values()))["batch_size"] for s in reversed(ev.steps) if "train" in s), None)
        if batch_size is not None:
            metrics[names.M_EARLY_STOP_ITERATION] = best_epoch * ev.data.batches_per_epoch(batch_size)
    if names.M_ITERATIONS in ev.history:
        metrics[names.M_ITERATIONS] = ev.history[names.M_ITERATIONS]
    if "diverged" in ev.history:
        metrics[names.M_DIVERGED] = 1.0
        metrics[names.M_DIVERGED_EPOCH] = ev.history["diverged"][0]
    return metrics, {}


def evaluate_compact(ev: Evaluated):
    """Structured states (some channel no weight reads): the compact network's parameters, FLOPs and
    measured latency vs the dense network. Nothing for other states: unstructured sparsity runs as
    dense tensors, so it has no measured speedup (its `flops_masked` is a theoretical count)."""
    from ..errors import SpecError
    from ..pruning.structure import has_unread

    if not has_unread(ev.tensors.masks):
        return {}, {}
    try:
        compact = compact_network(ev.workspace, ev.root, ev.data, ev.tensors.weights, ev.tensors.masks)
    except SpecError:  # channels that cannot be traced: no compact network, no numbers
        return {}, {}
    if not compact.shrunk:
        return {}, {}
    _, metrics = measure_compact(compact, ev.model, ev.data, ev.workspace.device)
    return metrics, {}


EVALUATIONS.add(
    Evaluation(
        "test",
        "mlprune.runners.evaluations:evaluate_test",
        "test loss and accuracy (and top-5 accuracy above 10 classes)",
    )
)


EVALUATIONS.add(
    Evaluation(
        "predictions",
        "mlprune.runners.evaluations:evaluate_predictions",
        "test predictions, confusion matrix, accuracy per class (the test pass, reused)",
    )
)


EVALUATIONS.add(
    Evaluation(
        "sparsity",
        "mlprune.runners.evaluations:evaluate_sparsity",
        "sparsity per layer, compression (prunable and all parameters)",
    )
)


EVALUATIONS.add(Evaluation("flops", "mlprune.runners.evaluations:evaluate_flops", "multiply-adds, dense and masked"))


EVALUATIONS.add(Evaluation("training", "mlprune.runners.evaluations:evaluate_training", "early stopping, iterations"))


EVALUATIONS.add(
    Evaluation(
        "compact",
        "mlprune.runners.evaluations:evaluate_compact",
        "structured states: the compact network's parameters, FLOPs, latency and speedup",
    )
)


def evaluate_state(
    workspace: Workspace, root: dict, data, tensors: Tensors, history: dict, steps: list = ()
) -> tuple[dict, dict]:
    """(metrics, extra files) every network state gets: one entry of EVALUATIONS after another."""
    model = workspace.blank(root, data)
    model.load_state_dict(tensors.weights)
    model.to(workspace.device)
    model.eval()
    evaluated = Evaluated(model, tensors, data, root, history, list(steps), workspace)
    metrics, files = {}, {}
    for entry in EVALUATIONS.values():
        more_metrics, more_files = entry.load()(evaluated)
        metrics.update(more_metrics)
        files.update(more_files)
    return metrics, files
