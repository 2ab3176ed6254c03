"""What pruning does to predictions: pure functions on integer label arrays in test-set order.

- per class: the confusion matrix, each class's recall, and Hooker et al. (2019)'s class-level
  impact of pruning with Welch's t-test across a population of seeds (`class_impact`);
- per example: modal labels of a population of networks and the Pruning Identified Exemplars
  (PIEs) of a pruned population against a dense one (`pies`); prediction churn between two
  networks (`churn`, `churn_matrix`).

Nothing here reads a store, draws from a global RNG or touches mlflow.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from ..errors import SpecError

SIGNIFICANCE = 0.05  # the p-value below which a class's impact is called significant (as in Hooker et al.)


# ---- classes ------------------------------------------------------------------------------


def confusion_matrix(labels, predicted, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts: row = true class, column = predicted class."""
    labels, predicted = np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    if labels.shape != predicted.shape:
        raise SpecError(f"{labels.shape[0]} labels but {predicted.shape[0]} predictions")
    return np.bincount(labels * num_classes + predicted, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def class_recall(confusion: np.ndarray) -> np.ndarray:
    """Each class's recall (its accuracy: correct / examples of the class); NaN for a class with none."""
    confusion = np.asarray(confusion)
    support = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(confusion) / np.maximum(support, 1), np.nan)


def class_impact(dense_recall, dense_accuracy, pruned_recall, pruned_accuracy) -> dict:
    """Hooker et al. (2019)'s class-level impact of pruning over two populations of networks.

    ``*_recall``: (networks, classes) per-class recalls; ``*_accuracy``: (networks,) top-1
    accuracies. Each network's class recall is normalized by its population's mean accuracy
    (recall − mean accuracy), so a class is *impacted* when its recall moves more than the overall
    accuracy does: ``impact[c] = (mean pruned recall[c] − mean pruned accuracy) − (mean dense
    recall[c] − mean dense accuracy)``, i.e. the change in the class's recall minus the change in
    accuracy. Negative: the class lost more than the network did on average.

    Significance: Welch's t-test (unequal variances) between the normalized recalls of the pruned
    and the dense population, per class; ``t`` has the sign of the impact; ``p`` and ``t`` are NaN
    when either population has fewer than two networks (one seed: no test) or when neither population
    varies at all for that class (the test is undefined; scipy would call it infinitely significant).
    """
    from scipy.stats import ttest_ind

    dense_recall = np.atleast_2d(np.asarray(dense_recall, dtype=np.float64))
    pruned_recall = np.atleast_2d(np.asarray(pruned_recall, dtype=np.float64))
    dense_accuracy = np.asarray(dense_accuracy, dtype=np.float64).reshape(-1)
    pruned_accuracy = np.asarray(pruned_accuracy, dtype=np.float64).reshape(-1)
    if dense_recall.shape[1] != pruned_recall.shape[1]:
        raise SpecError(f"dense networks have {dense_recall.shape[1]} classes, pruned ones {pruned_recall.shape[1]}")
    if dense_recall.shape[0] != dense_accuracy.size or pruned_recall.shape[0] != pruned_accuracy.size:
        raise SpecError("one accuracy per network: recalls and accuracies disagree on the number of networks")
    dense_norm = dense_recall - dense_accuracy.mean()
    pruned_norm = pruned_recall - pruned_accuracy.mean()
    impact = pruned_norm.mean(axis=0) - dense_norm.mean(axis=0)
    classes = dense_recall.shape[1]
    t = np.full(classes, np.nan)
    p = np.full(classes, np.nan)
    if dense_recall.shape[0] >= 2 and pruned_recall.shape[0] >= 2:
        for c in range(classes):
            if np.ptp(pruned_norm[:, c]) == 0 and np.ptp(dense_norm[:, c]) == 0:
                continue  # no spread in either population (e.g. a class always missed): the test is undefined
            with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
                warnings.simplefilter("ignore", RuntimeWarning)  # near-identical samples: scipy's precision note
                result = ttest_ind(pruned_norm[:, c], dense_norm[:, c], equal_var=False)
            t[c], p[c] = float(result.statistic), float(result.pvalue)
    return {
        "dense_recall": dense_recall.mean(axis=0),
        "pruned_recall": pruned_recall.mean(axis=0),
        "recall_change": pruned_recall.mean(axis=0) - dense_recall.mean(axis=0),
        "accuracy_change": float(pruned_accuracy.mean() - dense_accuracy.mean()),
        "impact": impact,
        "t": t,
        "p": p,
        "significant": p < SIGNIFICANCE,
        "n_dense": int(dense_recall.shape[0]),
        "n_pruned": int(pruned_recall.shape[0]),
    }


# ---- examples -----------------------------------------------------------------------------


def modal_labels(predictions) -> tuple[np.ndarray, np.ndarray]:
    """(modal label, agreement) per example of a population's predictions (networks, examples).

    The modal label is the most frequent prediction; a tie goes to the smallest label.
    Agreement: the fraction of the population that predicts the modal label.
    """
    predictions = np.atleast_2d(np.asarray(predictions, dtype=np.int64))
    networks, examples = predictions.shape
    if networks == 0:
        raise SpecError("a population needs at least one network")
    classes = int(predictions.max()) + 1 if predictions.size else 1
    counts = np.zeros((examples, classes), dtype=np.int64)
    for row in predictions:
        counts[np.arange(examples), row] += 1
    modes = counts.argmax(axis=1)  # argmax returns the first (smallest) label of a tie
    return modes, counts[np.arange(examples), modes] / networks


def pies(dense_predictions, pruned_predictions, labels) -> dict:
    """Pruning Identified Exemplars: the examples whose modal label differs between a dense and a
    pruned population of networks (Hooker et al. 2019), each (networks, examples), same example order.

    Returns ``indices`` (ascending), for each PIE its ``label`` (true class), ``dense_label`` /
    ``pruned_label`` (modal labels) and ``dense_agreement`` / ``pruned_agreement``, and the
    ``fraction`` of examples that are PIEs.
    """
    dense_predictions = np.atleast_2d(np.asarray(dense_predictions))
    pruned_predictions = np.atleast_2d(np.asarray(pruned_predictions))
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if dense_predictions.shape[1] != labels.size or pruned_predictions.shape[1] != labels.size:
        raise SpecError(
            f"predictions of {dense_predictions.shape[1]} and {pruned_predictions.shape[1]} examples "
            f"for {labels.size} labels: populations must be predictions on the same test set"
        )
    dense_mode, dense_agree = modal_labels(dense_predictions)
    pruned_mode, pruned_agree = modal_labels(pruned_predictions)
    index = np.nonzero(dense_mode != pruned_mode)[0]
    return {
        "indices": index,
        "label": labels[index],
        "dense_label": dense_mode[index],
        "pruned_label": pruned_mode[index],
        "dense_agreement": dense_agree[index],
        "pruned_agreement": pruned_agree[index],
        "fraction": index.size / max(labels.size, 1),
        "examples": int(labels.size),
        "n_dense": int(dense_predictions.shape[0]),
        "n_pruned": int(pruned_predictions.shape[0]),
    }


def churn(a, b) -> float:
    """Prediction churn: the fraction of examples on which two networks' predicted labels differ."""
    a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    if a.shape != b.shape:
        raise SpecError(f"churn needs predictions on the same examples, got {a.size} and {b.size}")
    return float((a != b).mean()) if a.size else float("nan")


def churn_matrix(predictions: Sequence) -> np.ndarray:
    """Pairwise churn of several networks' predictions (symmetric, 0 on the diagonal)."""
    n = len(predictions)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            out[i, j] = out[j, i] = churn(predictions[i], predictions[j])
    return out
