"""What pruning does inside the network, per recipe: learning curves, per-class impact, PIEs, churn, CKA.

Where each number lives, and why:

- **per state** (computed once, with the state, from the test pass it already makes):
  ``predictions.safetensors``, ``confusion.json``, ``test_accuracy.class.<k>``, and the per-epoch
  ``train_accuracy`` / ``epoch_test_accuracy`` / ``epoch_test_loss`` curves;
- **per pair of states, as an analysis state** (a forward pass of two networks, worth keying and
  caching, drawn in the lineage): linear CKA (step ``cka``, recipe key ``cka``);
- **per population, here** (read from the states' metrics and hashed predictions, milliseconds):
  per-class impact and Pruning Identified Exemplars compare a population of pruned networks with a
  population of dense ones, i.e. the seeds of a recipe. Which seeds exist is known only once they
  have run (a sweep, or several runs over time), so these are computed when the report is written,
  from everything the experiment holds, never stored in a state that a new seed would make stale.
  The report writes each round's PIE list as ``pies/<series>_round<r>.json`` and the numbers into
  ``report.json``; the functions below give the same from Python.

Python API (states are `ExperimentState` objects or run ids with ``store=``):
:func:`predictions`, :func:`class_impact`, :func:`pies`, :func:`churn`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from html import escape

import numpy as np

from .. import analysis
from .. import plots as plotting
from ..errors import SpecError
from ..names import (
    CKA_FILE,
    M_CKA_PREFIX,
    M_CLASS_ACCURACY_PREFIX,
    M_EPOCH_TEST_ACCURACY,
    M_EPOCH_TEST_LOSS,
    M_SPARSITY,
    M_TEST_ACCURACY,
    M_TRAIN_ACCURACY,
    M_TRAIN_LOSS,
    PIES_DIR,
    PRED_LABEL,
    PRED_PREDICTED,
    PRED_TRUE_PROBABILITY,
    PREDICTIONS_FILE,
    TAG_PARENT_PREFIX,
    TAG_PARENT_RUN,
)
from .common import Page, html_table, model_name, slug
from .sections import SectionContext

GALLERY = 16  # PIEs shown as images (the first ones, by test index)
MAX_CURVES = 8  # rounds drawn in the learning-curve figure (first, last and evenly between)


# ---- the Python API -------------------------------------------------------------------------


def _store_and_ids(states, store) -> tuple[object, list[str]]:
    states = list(states)
    if not states:
        raise SpecError("a population needs at least one state")
    if store is None:
        experiment = getattr(states[0], "experiment", None)
        if experiment is None:
            raise SpecError("give store= when the states are run ids")
        store = experiment.store
    return store, [s if isinstance(s, str) else s.run_id for s in states]


def predictions(state, store=None) -> dict[str, np.ndarray]:
    """A state's test-set predictions (test order): ``predicted``, ``label``, ``true_class_probability``.

    Read from its ``predictions.safetensors`` (verified against the recorded hash)."""
    from ..store.artifacts import tensors_from

    store, (run_id,) = _store_and_ids([state], store)
    content = store.state_file(run_id, PREDICTIONS_FILE)
    tensors = tensors_from(content, run_id=run_id, name=PREDICTIONS_FILE)
    return {
        PRED_PREDICTED: tensors[PRED_PREDICTED].long().numpy(),
        PRED_LABEL: tensors[PRED_LABEL].long().numpy(),
        PRED_TRUE_PROBABILITY: tensors[PRED_TRUE_PROBABILITY].numpy(),
    }


def _class_accuracies(metrics: dict) -> dict[int, float]:
    return {
        int(name[len(M_CLASS_ACCURACY_PREFIX) :]): value
        for name, value in metrics.items()
        if name.startswith(M_CLASS_ACCURACY_PREFIX)
    }


def class_impact(dense, pruned, store=None) -> dict:
    """`analysis.class_impact` of a pruned population vs a dense one (lists of states), from each state's
    ``test_accuracy`` and ``test_accuracy.class.<k>`` metrics; adds ``classes`` (the class indices)."""
    store, dense_ids = _store_and_ids(dense, store)
    _, pruned_ids = _store_and_ids(pruned, store)
    return _impact(*[[store.run(r).data.metrics for r in ids] for ids in (dense_ids, pruned_ids)])


def _impact(dense_metrics: list[dict], pruned_metrics: list[dict]) -> dict:
    per_run = [_class_accuracies(m) for m in dense_metrics + pruned_metrics]
    classes = sorted(set.intersection(*[set(c) for c in per_run]))
    if not classes:
        raise SpecError("the states have no test_accuracy.class.<k> metrics in common (computed by an older mlprune?)")

    def recall(metrics_list):
        return np.array([[_class_accuracies(m)[c] for c in classes] for m in metrics_list])

    result = analysis.class_impact(
        recall(dense_metrics),
        [m[M_TEST_ACCURACY] for m in dense_metrics],
        recall(pruned_metrics),
        [m[M_TEST_ACCURACY] for m in pruned_metrics],
    )
    result["classes"] = classes
    return result


def pies(dense, pruned, store=None) -> dict:
    """`analysis.pies` of a pruned population vs a dense one (lists of states), from their predictions."""
    store, dense_ids = _store_and_ids(dense, store)
    _, pruned_ids = _store_and_ids(pruned, store)
    loaded = {r: predictions(r, store) for r in dict.fromkeys(dense_ids + pruned_ids)}
    return _pies(loaded, dense_ids, pruned_ids)


def _pies(loaded: dict, dense_ids: list[str], pruned_ids: list[str]) -> dict:
    labels = loaded[dense_ids[0]][PRED_LABEL]
    for run_id in dense_ids + pruned_ids:
        if not np.array_equal(loaded[run_id][PRED_LABEL], labels):
            raise SpecError(
                f"state {run_id[:8]} was evaluated on another test set than {dense_ids[0][:8]}: "
                f"PIEs compare predictions on the same examples"
            )
    return analysis.pies(
        np.stack([loaded[r][PRED_PREDICTED] for r in dense_ids]),
        np.stack([loaded[r][PRED_PREDICTED] for r in pruned_ids]),
        labels,
    )


def churn(a, b, store=None) -> float:
    """Prediction churn between two states: the fraction of test examples on which they disagree."""
    store, (run_a, run_b) = _store_and_ids([a, b], store)
    return analysis.churn(predictions(run_a, store)[PRED_PREDICTED], predictions(run_b, store)[PRED_PREDICTED])


def pie_records(result: dict) -> list[dict]:
    """One JSON-able row per PIE: index, true label, modal labels and agreement of both populations."""
    return [
        {
            "index": int(i),
            "label": int(t),
            "dense_label": int(d),
            "pruned_label": int(p),
            "dense_agreement": float(da),
            "pruned_agreement": float(pa),
        }
        for i, t, d, p, da, pa in zip(
            result["indices"],
            result["label"],
            result["dense_label"],
            result["pruned_label"],
            result["dense_agreement"],
            result["pruned_agreement"],
        )
    ]


# ---- the report section ------------------------------------------------------------------------


def _finite(value):
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def _remaining(collection, run_ids) -> float | None:
    values = [
        1.0 - collection.runs[r].data.metrics[M_SPARSITY]
        for r in run_ids
        if _finite(collection.runs[r].data.metrics.get(M_SPARSITY))
    ]
    return float(np.mean(values)) if values else None


def _round_label(rnd, remaining) -> str:
    return f"r{rnd}" + (f" ({100 * remaining:.3g}%)" if remaining is not None else "")


class _Predictions:
    """Predictions of the report's states, read once each; the states without them are noted together."""

    def __init__(self, store):
        self.store = store
        self.cache: dict[str, dict | None] = {}
        self.missing: list[str] = []

    def __call__(self, run_id):
        if run_id not in self.cache:
            try:
                self.cache[run_id] = predictions(run_id, self.store)
            except SpecError:
                self.cache[run_id] = None
                self.missing.append(run_id)
        return self.cache[run_id]

    def report_missing(self, note) -> None:
        if self.missing:
            shown = ", ".join(r[:8] for r in self.missing[:8]) + (" ..." if len(self.missing) > 8 else "")
            note(
                f"{len(self.missing)} state(s) have no readable {PREDICTIONS_FILE} (computed by an older mlprune, "
                f"or damaged): left out of PIEs and churn: {shown}"
            )


def _cka_index(collection) -> dict[tuple[str, str], object]:
    """(run a, run b) -> the first finished cka analysis of that pair."""
    index = {}
    for run in collection.runs.values():
        if not any(name.startswith(M_CKA_PREFIX) for name in run.data.metrics):
            continue
        pair = (run.data.tags.get(TAG_PARENT_RUN), run.data.tags.get(TAG_PARENT_PREFIX + "b"))
        index.setdefault(pair, run)
    return index


def _curves(store, run_id) -> dict:
    names = {
        "test_accuracy": M_EPOCH_TEST_ACCURACY,
        "train_accuracy": M_TRAIN_ACCURACY,
        "test_loss": M_EPOCH_TEST_LOSS,
        "train_loss": M_TRAIN_LOSS,
    }
    return {key: store.metric_history(run_id, name) for key, name in names.items()}


def _spread(items: list, count: int) -> list:
    if len(items) <= count:
        return items
    picks = sorted({round(i * (len(items) - 1) / (count - 1)) for i in range(count)})
    return [items[i] for i in picks]


def _gallery_images(load, run_id, indices, note):
    """The test images at `indices` in [0, 1] (normalization undone), or None (noted) if the data is gone."""
    import torch

    from ..data.pipeline import test_images
    from ..workspace import Workspace

    state = load(run_id)
    if state is None:
        return None
    try:
        data = Workspace().data(state.spec["root"], state.spec.get("data_dir"))
        images = test_images(data, torch.as_tensor(indices, dtype=torch.long))
    except (SpecError, OSError) as error:
        note(f"no PIE gallery: the test images of state {run_id[:8]} cannot be read ({error})")
        return None
    mean = torch.tensor(data.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(data.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images * std + mean).clamp(0.0, 1.0)


def inside_section(page: Page, ctx: SectionContext) -> None:
    """One section per recipe series (seeds together): learning curves, per-class impact, PIEs, churn, CKA."""
    collection, note = ctx.collection, ctx.note
    read = _Predictions(collection.store)
    cka_runs = _cka_index(collection)
    groups: dict[str, list] = {}
    for series in collection.series:
        groups.setdefault(series.label, []).append(series)
    numbers = {}
    for label, group in groups.items():
        rounds = sorted(set().union(*[set(s.trained) for s in group]))
        if 0 not in rounds:
            continue
        remaining = {r: _remaining(collection, [s.trained[r] for s in group if r in s.trained]) for r in rounds}
        g = _Group(
            page,
            ctx,
            label,
            group,
            rounds,
            remaining,
            read,
            {"seeds": [s.seed for s in group], "rounds": []},
            {r: {"round": r, "remaining": remaining[r]} for r in rounds},
        )
        for r in rounds:
            metrics = [collection.runs[s.trained[r]].data.metrics for s in group if r in s.trained]
            accuracies = [_class_accuracies(m) for m in metrics]
            classes = sorted(set.intersection(*[set(a) for a in accuracies])) if accuracies else []
            g.per_round[r]["test_accuracy_per_class"] = {c: float(np.mean([a[c] for a in accuracies])) for c in classes}
        _draw_curves(g)
        _draw_impact(g)
        _draw_pies(g)
        _draw_churn(g)
        _draw_cka(g, cka_runs)
        g.info["rounds"] = [g.per_round[r] for r in rounds]
        numbers[label] = g.info
        page.section(
            f"inside-{slug(label)}",
            f"Inside: {label}",
            "<p>What the pruned networks compute, against the dense training (round 0) of the same seeds: "
            "the learning curves; each class's recall change minus the accuracy change (Hooker et al. "
            "2019); the test examples whose modal label changes (PIEs); how often two rounds disagree "
            "(churn); how similar each layer's outputs stay (linear CKA).</p>" + "".join(g.html),
        )
    read.report_missing(note)
    page.numbers["inside"] = numbers
    page.report["inside"] = numbers


@dataclass
class _Group:
    """One recipe series over its seeds, as its section is drawn: what each part reads, and what they write
    (`html`, the numbers `info` and `per_round`)."""

    page: Page
    ctx: SectionContext
    label: str
    group: list  # the series of its seeds
    rounds: list
    remaining: dict  # round -> remaining weights (or None)
    read: _Predictions
    info: dict
    per_round: dict
    html: list = field(default_factory=list)

    @property
    def dense(self) -> list:
        return [s for s in self.group if 0 in s.trained]

    @property
    def dense_ids(self) -> list:
        return [s.trained[0] for s in self.dense]


def _draw_curves(g: _Group) -> None:
    """The learning curves of the first seed's trainings."""
    first, label = g.group[0], g.label
    shown = _spread(sorted(first.trained), MAX_CURVES)
    curves = {_round_label(r, g.remaining.get(r)): _curves(g.ctx.collection.store, first.trained[r]) for r in shown}
    if any(c["test_accuracy"] or c["train_loss"] for c in curves.values()):
        g.html.append(
            g.page.figure(
                plotting.plot_learning_curves(curves, title=f"Learning curves: {label} (seed {first.seed})"),
                f"curves_{label}",
                f"Per-epoch test and train accuracy and loss of each round's training: {label}, seed {first.seed}",
                "learning_curves",
            )
        )


def _draw_impact(g: _Group) -> None:
    """The per-class impact of every pruned round vs round 0, over the seeds."""
    collection, label = g.ctx.collection, g.label
    impacts = {}
    for r in g.rounds[1:]:
        pruned = [s.trained[r] for s in g.group if r in s.trained]
        try:
            result = _impact(
                [collection.runs[x].data.metrics for x in g.dense_ids],
                [collection.runs[x].data.metrics for x in pruned],
            )
        except (SpecError, KeyError) as error:
            g.ctx.note(f"{label}: no per-class impact ({error})")
            break
        impacts[_round_label(r, g.remaining[r])] = result
        g.per_round[r]["class_impact"] = {
            "classes": result["classes"],
            "impact": result["impact"],
            "recall_change": result["recall_change"],
            "accuracy_change": result["accuracy_change"],
            "t": result["t"],
            "p": result["p"],
            "n_dense": result["n_dense"],
            "n_pruned": result["n_pruned"],
        }
    if not impacts:
        return
    classes = next(iter(impacts.values()))["classes"]
    g.html.append(
        g.page.figure(
            plotting.plot_class_impact(impacts, classes, title=f"Per-class impact: {label}"),
            f"class_impact_{label}",
            f"Change of each class's recall minus the change of accuracy, every round vs round 0: {label}",
            "class_impact",
        )
    )
    last_label, last = list(impacts.items())[-1]
    rows = [
        [
            str(c),
            f"{100 * d:.1f}%",
            f"{100 * p:.1f}%",
            f"{100 * i:+.1f}",
            "–" if not math.isfinite(pv) else f"{pv:.3g}" + (" *" if pv < analysis.SIGNIFICANCE else ""),
        ]
        for c, d, p, i, pv in zip(
            last["classes"], last["dense_recall"], last["pruned_recall"], last["impact"], last["p"]
        )
    ]
    g.html.append(
        f"<p>Round {escape(last_label)} vs round 0 (accuracy change "
        f"{100 * last['accuracy_change']:+.1f} points):</p>"
        + html_table(["class", "recall, dense", "recall, pruned", "impact (points)", "p (Welch)"], rows)
    )


def _draw_pies(g: _Group) -> None:
    """The PIEs of every pruned round vs round 0, over the seeds: their fraction, files and gallery."""
    page, label, read, remaining = g.page, g.label, g.read, g.remaining
    pie_points, last_pies = [], None
    dense_ready = [x for x in g.dense_ids if read(x) is not None]
    for r in g.rounds[1:]:
        pruned = [s.trained[r] for s in g.group if r in s.trained and read(s.trained[r]) is not None]
        if not dense_ready or not pruned:
            continue
        try:
            result = _pies(read.cache, dense_ready, pruned)
        except SpecError as error:
            g.ctx.note(f"{label} round {r}: no PIEs ({error})")
            continue
        record = {
            "series": label,
            "round": r,
            "remaining": remaining[r],
            "dense_runs": dense_ready,
            "pruned_runs": pruned,
            "examples": result["examples"],
            "count": int(result["indices"].size),
            "fraction": result["fraction"],
            "tie_rule": "a tie of modal labels goes to the smallest label",
            "pies": pie_records(result),
        }
        file = f"{PIES_DIR}/{slug(label)}_round{r}.json"
        if page.out_dir is not None:
            (page.out_dir / PIES_DIR).mkdir(parents=True, exist_ok=True)
            (page.out_dir / file).write_text(json.dumps(record, indent=1))
        g.per_round[r]["pies"] = {
            "count": record["count"],
            "fraction": record["fraction"],
            "file": file,
            "n_dense": result["n_dense"],
            "n_pruned": result["n_pruned"],
        }
        if remaining[r] is not None:
            pie_points.append((remaining[r], result["fraction"], result["n_pruned"]))
        last_pies = (r, record)
    if pie_points:
        g.html.append(
            page.figure(
                plotting.plot_pie_fraction({label: pie_points}, title=f"PIEs vs remaining weights: {label}"),
                f"pie_fraction_{label}",
                f"Fraction of test examples that are PIEs at each round: {label}",
                "pie_fraction",
            )
        )
    if last_pies is None:
        return
    r, record = last_pies
    if record["pies"]:
        entries = record["pies"][:GALLERY]
        images = _gallery_images(g.ctx.load, dense_ready[0], [e["index"] for e in entries], g.ctx.note)
        if images is not None:
            g.html.append(
                page.figure(
                    plotting.plot_pie_gallery(
                        images,
                        entries,
                        title=(
                            f"PIEs of {label}, round {r} vs round 0: the first {len(entries)} of {record['count']} "
                            f"({100 * record['fraction']:.1f}% of {record['examples']}); modal labels (agreement)"
                        ),
                    ),
                    f"pie_gallery_{label}",
                    f"The first PIEs of round {r}: {label}",
                    "pie_gallery",
                )
            )
    g.html.append(
        "<p>PIE lists (index, true label, modal labels, agreement): "
        + ", ".join(
            f"<code>{escape(g.per_round[r]['pies']['file'])}</code>" for r in g.rounds[1:] if "pies" in g.per_round[r]
        )
        + ".</p>"
    )


def _draw_churn(g: _Group) -> None:
    """The churn between the rounds' trained networks, mean over the seeds that reached every round."""
    rounds, read, label = g.rounds, g.read, g.label
    complete = [s for s in g.group if all(r in s.trained and read(s.trained[r]) is not None for r in rounds)]
    if not complete or len(rounds) < 2:
        return
    matrices = [analysis.churn_matrix([read(s.trained[r])[PRED_PREDICTED] for r in rounds]) for s in complete]
    matrix = np.mean(matrices, axis=0)
    labels = [_round_label(r, g.remaining[r]) for r in rounds]
    g.info["churn"] = {"rounds": rounds, "labels": labels, "matrix": matrix, "n": len(complete)}
    for i, r in enumerate(rounds):
        g.per_round[r]["churn_vs_dense"] = float(matrix[i, 0])
    g.html.append(
        g.page.figure(
            plotting.plot_value_heatmap(
                matrix,
                labels,
                labels,
                what="prediction churn (fraction of test examples)",
                title=f"Prediction churn between rounds: {label} (mean over {len(complete)} seed(s))",
                cmap="magma",
            ),
            f"churn_{label}",
            f"Fraction of test examples on which two rounds disagree: {label}",
            "churn",
        )
    )


def _draw_cka(g: _Group, cka_runs: dict) -> None:
    """The CKA of every round to the dense network (analysis states), mean over seeds."""
    from .states import layer_kinds

    label, rounds = g.label, g.rounds
    found = {}
    for s in g.dense:
        for r in rounds:
            run = cka_runs.get((s.trained.get(r), s.trained[0]))
            if run is not None:
                found.setdefault(r, []).append(run)
    if not found:
        g.html.append(
            "<p>No CKA analyses for this recipe: add <code>cka: true</code> to the recipe file "
            "(or a <code>cka</code> step between two states) and run it again; nothing else is "
            "recomputed.</p>"
        )
        return
    model_state = g.ctx.load(g.dense_ids[0])
    order = list(layer_kinds(model_state.masks, model_name(model_state))) if model_state is not None else []
    names = {
        m[len(M_CKA_PREFIX) :]
        for runs in found.values()
        for run in runs
        for m in run.data.metrics
        if m.startswith(M_CKA_PREFIX)
    }
    layers = [n for n in order if n in names] + sorted(names - set(order))
    cka_rounds = sorted(found)
    matrix = np.array(
        [
            [np.mean([run.data.metrics.get(M_CKA_PREFIX + layer, np.nan) for run in found[r]]) for r in cka_rounds]
            for layer in layers
        ]
    )
    n = sorted({len(found[r]) for r in cka_rounds})
    g.info["cka"] = {
        "layers": layers,
        "rounds": cka_rounds,
        "matrix": matrix,
        "n": n,
        "runs": {r: [run.info.run_id for run in found[r]] for r in cka_rounds},
    }
    for j, r in enumerate(cka_rounds):
        g.per_round[r]["cka"] = {layer: matrix[i, j] for i, layer in enumerate(layers)}
    g.html.append(
        g.page.figure(
            plotting.plot_value_heatmap(
                matrix,
                [_short(x) for x in layers],
                [_round_label(r, g.remaining.get(r)) for r in cka_rounds],
                what="linear CKA to the dense network",
                limits=(0.0, 1.0),
                axis_labels=("round (remaining weights)", "layer (output)"),
                title=f"Representation similarity to the dense network: {label} "
                f"(mean over {'–'.join(map(str, n))} seed(s))",
            ),
            f"cka_{label}",
            f"Linear CKA of each layer's outputs, each round vs round 0: {label}",
            "cka",
        )
    )


def _short(name: str) -> str:
    return name[: -len(".weight")] if name.endswith(".weight") else name


def cka_record(store, run_id) -> dict:
    """The ``cka.json`` of a cka analysis state: per-layer CKA, probe size, batches, estimator."""
    return json.loads(store.state_file(run_id, CKA_FILE))
