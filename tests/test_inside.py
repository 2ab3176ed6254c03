"""Inside the network: predictions, per-class impact, PIEs, churn, CKA, learning curves.

Every method is checked against its paper's definition written out here, independently of the
implementation; states are real (a temp MLflow store, digits, lenet_300_100).
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file

from mlprune import Recipe, analysis, report
from mlprune.errors import SpecError
from mlprune.recipes import compile_recipe

REPO = Path(__file__).resolve().parents[1]


# ---- CKA against its definitions ---------------------------------------------------------------------


def hsic_biased_oracle(k_gram, l_gram):
    """HSIC(K, L) = tr(K H L H) / (n - 1)^2, H the centering matrix (Gretton et al. 2005)."""
    n = k_gram.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k_gram @ h @ l_gram @ h) / (n - 1) ** 2


def cka_oracle(x, y):
    """CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with linear kernels (Kornblith et al. 2019, eq. 3)."""
    k_gram, l_gram = x @ x.T, y @ y.T
    denominator = math.sqrt(hsic_biased_oracle(k_gram, k_gram) * hsic_biased_oracle(l_gram, l_gram))
    return hsic_biased_oracle(k_gram, l_gram) / denominator


def hsic_unbiased_oracle(k_gram, l_gram):
    """The U-statistic of Song et al. (2012), summed over distinct index tuples, term by term:
    (n)_2^-1 Σ K_ij L_ij + (n)_4^-1 Σ K_ij L_qr − 2 (n)_3^-1 Σ K_ij L_iq."""
    n = k_gram.shape[0]
    idx = range(n)
    pairs = [(i, j) for i, j in itertools.permutations(idx, 2)]
    first = sum(k_gram[i, j] * l_gram[i, j] for i, j in pairs) / len(pairs)
    quads = list(itertools.permutations(idx, 4))
    second = sum(k_gram[i, j] * l_gram[q, r] for i, j, q, r in quads) / len(quads)
    triples = list(itertools.permutations(idx, 3))
    third = sum(k_gram[i, j] * l_gram[i, q] for i, j, q in triples) / len(triples)
    return first + second - 2 * third


def test_linear_cka_is_the_closed_form_and_has_its_invariances():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 7))
    y = x @ rng.normal(size=(7, 5)) + 0.5 * rng.normal(size=(40, 5))
    got = analysis.linear_cka(torch.tensor(x), torch.tensor(y))
    assert got == pytest.approx(cka_oracle(x, y), abs=1e-12)
    assert 0.0 < got < 1.0
    q, _ = np.linalg.qr(rng.normal(size=(7, 7)))  # an orthogonal transform and an isotropic scaling change nothing
    assert analysis.linear_cka(torch.tensor(3.0 * x @ q), torch.tensor(y)) == pytest.approx(got, abs=1e-12)
    assert analysis.linear_cka(torch.tensor(x), torch.tensor(x)) == pytest.approx(1.0, abs=1e-12)
    # conv-shaped activations are flattened per example
    assert analysis.linear_cka(torch.tensor(x).view(40, 7, 1, 1), torch.tensor(y)) == pytest.approx(got, abs=1e-12)


def test_unbiased_hsic_is_the_u_statistic_of_song_et_al():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(7, 4))
    k_gram, l_gram = x @ x.T, y @ y.T
    got = float(analysis.hsic_unbiased(torch.tensor(k_gram), torch.tensor(l_gram)))
    assert got == pytest.approx(hsic_unbiased_oracle(k_gram, l_gram), rel=1e-10)
    with pytest.raises(SpecError, match="at least 4 examples"):
        analysis.hsic_unbiased(torch.tensor(k_gram[:3, :3]), torch.tensor(l_gram[:3, :3]))


def test_minibatch_cka_averages_the_batches_hsic_and_converges_to_the_full_cka():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(18, 5))
    y = np.tanh(x @ rng.normal(size=(5, 6))) + 0.3 * rng.normal(size=(18, 6))
    estimator = analysis.MinibatchCKA()
    sums = np.zeros(3)
    for start in (0, 6, 12):
        xb, yb = x[start : start + 6], y[start : start + 6]
        estimator.update({"layer": torch.tensor(xb)}, {"layer": torch.tensor(yb)})
        k_gram, l_gram = xb @ xb.T, yb @ yb.T
        sums += [
            hsic_unbiased_oracle(k_gram, l_gram),
            hsic_unbiased_oracle(k_gram, k_gram),
            hsic_unbiased_oracle(l_gram, l_gram),
        ]
    assert estimator.result()["layer"] == pytest.approx(sums[0] / math.sqrt(sums[1] * sums[2]), rel=1e-9)
    same = analysis.MinibatchCKA()
    same.update({"layer": torch.tensor(x[:9])}, {"layer": torch.tensor(x[:9])})
    assert same.result()["layer"] == pytest.approx(1.0, abs=1e-12)
    # many batches of a large sample: the unbiased minibatch estimate approaches the full-sample CKA
    # (linear_cka, checked against the kernel definition above; n x n kernels of 4000 would take minutes)
    big_x = rng.normal(size=(4000, 10))
    big_y = big_x @ rng.normal(size=(10, 8)) + 2.0 * rng.normal(size=(4000, 8))
    many = analysis.MinibatchCKA()
    for start, stop in analysis.probe_batches(4000, 200):
        many.update({"l": torch.tensor(big_x[start:stop])}, {"l": torch.tensor(big_y[start:stop])})
    assert many.batches == 20
    assert many.result()["l"] == pytest.approx(analysis.linear_cka(torch.tensor(big_x), torch.tensor(big_y)), abs=0.02)


def test_probe_batches_never_leave_a_batch_too_small():
    assert analysis.probe_batches(359, 256) == [(0, 359)]
    assert analysis.probe_batches(1000, 256) == [(0, 333), (333, 667), (667, 1000)]
    assert all(b - a >= 4 for a, b in analysis.probe_batches(9, 4))
    picked = analysis.probe_indices(100, 359, seed=3)
    assert torch.equal(picked, analysis.probe_indices(100, 359, seed=3)) and len(set(picked.tolist())) == 100
    assert not torch.equal(picked, analysis.probe_indices(100, 359, seed=4))


# ---- classes, examples ------------------------------------------------------------------------------


def test_confusion_and_recall_by_hand():
    labels = [0, 0, 1, 1, 1, 2]
    predicted = [0, 1, 1, 1, 0, 2]
    confusion = analysis.confusion_matrix(labels, predicted, 4)
    assert confusion.tolist() == [[1, 1, 0, 0], [1, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    recall = analysis.class_recall(confusion)
    assert recall[:3].tolist() == [0.5, 2 / 3, 1.0] and math.isnan(recall[3])


def test_class_impact_is_hookers_normalized_recall_difference_with_welchs_test():
    dense_recall = np.array([[0.90, 0.80, 0.70], [0.92, 0.78, 0.72], [0.88, 0.82, 0.69]])
    dense_acc = np.array([0.80, 0.81, 0.79])
    pruned_recall = np.array([[0.89, 0.60, 0.70], [0.91, 0.55, 0.71], [0.90, 0.58, 0.66], [0.86, 0.62, 0.70]])
    pruned_acc = np.array([0.74, 0.72, 0.73, 0.74])
    got = analysis.class_impact(dense_recall, dense_acc, pruned_recall, pruned_acc)
    for c in range(3):
        a = pruned_recall[:, c] - pruned_acc.mean()  # normalized recall of each network (Hooker et al.)
        d = dense_recall[:, c] - dense_acc.mean()
        assert got["impact"][c] == pytest.approx(a.mean() - d.mean(), abs=1e-12)
        assert got["impact"][c] == pytest.approx(got["recall_change"][c] - got["accuracy_change"], abs=1e-12)
        va, vd = a.var(ddof=1) / a.size, d.var(ddof=1) / d.size
        t = (a.mean() - d.mean()) / math.sqrt(va + vd)
        df = (va + vd) ** 2 / (va**2 / (a.size - 1) + vd**2 / (d.size - 1))  # Welch–Satterthwaite
        from scipy.stats import t as student

        assert got["t"][c] == pytest.approx(t, rel=1e-9)
        assert got["p"][c] == pytest.approx(2 * student.sf(abs(t), df), rel=1e-9)
    # class 1 lost far more than the accuracy did: negative and significant; class 0 gained relatively
    assert got["impact"][1] < -0.1 and got["significant"][1] and got["impact"][0] > 0
    one = analysis.class_impact(dense_recall[:1], dense_acc[:1], pruned_recall[:1], pruned_acc[:1])
    assert np.isnan(one["p"]).all() and not one["significant"].any()  # one seed: no test
    flat = analysis.class_impact(np.zeros((2, 1)), [0.5, 0.5], np.zeros((2, 1)), [0.4, 0.4])
    assert np.isnan(flat["p"][0]) and flat["impact"][0] == pytest.approx(0.1)  # no spread: no test


def test_pies_and_modal_labels_by_hand():
    dense = np.array([[0, 1, 2, 3, 4], [0, 1, 2, 3, 5], [0, 1, 9, 3, 5]])
    pruned = np.array([[0, 7, 2, 3, 4], [0, 7, 2, 8, 4], [1, 1, 2, 8, 5]])
    modes, agreement = analysis.modal_labels(dense)
    assert modes.tolist() == [0, 1, 2, 3, 5] and agreement.tolist() == pytest.approx([1, 1, 2 / 3, 1, 2 / 3])
    assert analysis.modal_labels([[3, 1], [1, 3]])[0].tolist() == [1, 1]  # a tie goes to the smallest label
    result = analysis.pies(dense, pruned, labels=[0, 1, 2, 3, 4])
    assert result["indices"].tolist() == [1, 3, 4] and result["fraction"] == pytest.approx(3 / 5)
    assert result["dense_label"].tolist() == [1, 3, 5] and result["pruned_label"].tolist() == [7, 8, 4]
    assert result["pruned_agreement"].tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3])
    assert analysis.churn(dense[0], pruned[0]) == pytest.approx(1 / 5)
    assert np.allclose(
        analysis.churn_matrix([dense[0], dense[1], pruned[2]]), [[0, 0.2, 0.6], [0.2, 0, 0.4], [0.6, 0.4, 0]]
    )
    with pytest.raises(SpecError, match="same test set"):
        analysis.pies(dense, pruned[:, :4], labels=[0, 1, 2, 3, 4])


# ---- states: predictions, curves, cka analyses ---------------------------------------------------------


def _states(experiment, test_size=None):
    root = experiment.init(model="lenet_300_100", dataset="digits", seed=0, train_size=96, test_size=test_size)
    trained = root.apply(Recipe.train(epochs=2, lr=0.05, momentum=0.9))
    return root, trained


def test_predictions_are_the_test_pass_and_per_class_metrics_follow(experiment):
    from mlprune.training.loop import evaluate
    from mlprune.workspace import Workspace

    root, trained = _states(experiment)
    store = experiment.store
    saved = report.predictions(trained)
    metrics = trained.metrics
    # the stored test accuracy is the saved predictions' accuracy; each class's metric is its recall
    assert (saved["predicted"] == saved["label"]).mean() == metrics["test_accuracy"]
    for k in range(10):
        of_class = saved["label"] == k
        assert metrics[f"test_accuracy.class.{k}"] == pytest.approx((saved["predicted"][of_class] == k).mean(), abs=0)
    confusion = json.loads(store.state_file(trained.run_id, "confusion.json"))
    assert np.array_equal(
        np.array(confusion["matrix"]), analysis.confusion_matrix(saved["label"], saved["predicted"], 10)
    )
    # the same network, evaluated afresh: the labels are the test set's, in order; loss and accuracy bit for bit
    model = trained.model().eval()
    data = Workspace().data(trained.spec["root"], None)
    x, y = next(data.test_batches(10_000))
    assert np.array_equal(saved["label"], y.numpy())
    loss, accuracy = evaluate(model, data.test_batches(256))
    assert (loss, accuracy) == (metrics["test_loss"], metrics["test_accuracy"])
    with torch.no_grad():
        probability = torch.softmax(model(x), dim=1)[torch.arange(len(y)), y]
    assert np.allclose(saved["true_class_probability"], probability.numpy(), atol=1e-6)
    assert np.array_equal(saved["predicted"], model(x).argmax(1).numpy())
    raw = load_safetensors(store.state_file(trained.run_id, "predictions.safetensors"))
    assert raw["predicted"].dtype == torch.uint8 and raw["true_class_probability"].dtype == torch.float32
    # every network state has them, the untrained root too
    assert report.predictions(root)["predicted"].shape == (359,)
    # learning curves: one point per epoch; the last test point is the state's test accuracy
    client = MlflowClient()
    curve = {m.step: m.value for m in client.get_metric_history(trained.run_id, "epoch_test_accuracy")}
    assert sorted(curve) == [1, 2] and curve[2] == metrics["test_accuracy"]
    train_acc = client.get_metric_history(trained.run_id, "train_accuracy")
    assert [m.step for m in train_acc] == [1, 2] and all(0 <= m.value <= 1 for m in train_acc)
    assert [m.step for m in client.get_metric_history(trained.run_id, "epoch_test_loss")] == [1, 2]


def test_evaluating_the_test_set_each_epoch_leaves_training_unchanged(experiment):
    """Another test set (test_size) changes every per-epoch test evaluation, not one trained bit."""
    _, full = _states(experiment)
    _, cut = _states(experiment, test_size=50)
    assert full.key != cut.key
    for name, tensor in full.weights.items():
        assert torch.equal(tensor, cut.weights[name]), name


def test_early_stopping_is_the_lowest_validation_loss_and_the_test_accuracy_then(experiment):
    root = experiment.init(model="lenet_300_100", dataset="digits", seed=0, train_size=96, val_size=64)
    trained = root.apply(Recipe.train(epochs=4, lr=0.05, momentum=0.9, batch_size=32))
    client = MlflowClient()
    val = [(m.step, m.value) for m in client.get_metric_history(trained.run_id, "val_loss")]
    test = {m.step: m.value for m in client.get_metric_history(trained.run_id, "epoch_test_accuracy")}
    best = min(val, key=lambda point: (point[1], point[0]))[0]
    metrics = trained.metrics
    assert metrics["early_stop_epoch"] == best
    assert metrics["early_stop_iteration"] == best * math.ceil(96 / 32)
    assert metrics["early_stop_test_accuracy"] == test[best]


def test_cka_analysis_state_self_one_pruned_below_one_and_cached(experiment):
    _, trained = _states(experiment)
    pruned = trained.apply(
        Recipe.prune(method="l1_unstructured", amount=0.9) + Recipe.train(epochs=1, lr=0.05, momentum=0.9)
    )
    itself = trained.apply([{"cka": {"b": trained.run_id, "probe_size": 200, "batch_size": 64}}])
    versus = pruned.apply([{"cka": {"b": trained.run_id, "probe_size": 200, "batch_size": 64}}])
    layers = ["classifier.0.weight", "classifier.2.weight", "classifier.4.weight"]
    assert itself.kind == "analysis" and itself.spec["inputs"]["b"]["run_id"] == trained.run_id
    for layer in layers:
        assert itself.metrics[f"cka.{layer}"] == pytest.approx(1.0, abs=1e-6)
        assert 0.0 <= versus.metrics[f"cka.{layer}"] < 1.0
    record = report.cka_record(experiment.store, versus.run_id)
    assert record["probe_size"] == 200 and record["batches"] == 3 and set(record["layers"]) == set(layers)
    computed = len(experiment.computed)
    again = pruned.apply([{"cka": {"with": trained.run_id, "probe_size": 200, "batch_size": 64}}])
    assert again.run_id == versus.run_id and len(experiment.computed) == computed  # keyed and cached
    other = pruned.apply([{"cka": {"b": trained.run_id, "probe_size": 200, "batch_size": 64, "seed": 1}}])
    assert other.key != versus.key
    # the Python API on the same states reads their predictions and metrics
    a, b = report.predictions(trained)["predicted"], report.predictions(pruned)["predicted"]
    assert report.churn(trained, pruned) == pytest.approx(float((a != b).mean()), abs=0)
    assert report.pies([trained], [pruned])["indices"].tolist() == np.nonzero(a != b)[0].tolist()
    impact = report.class_impact([trained], [pruned])
    k = impact["classes"][0]
    assert impact["impact"][0] == pytest.approx(
        (pruned.metrics[f"test_accuracy.class.{k}"] - pruned.metrics["test_accuracy"])
        - (trained.metrics[f"test_accuracy.class.{k}"] - trained.metrics["test_accuracy"]),
        abs=1e-12,
    )
    with pytest.raises(SpecError, match="predictions.safetensors is missing"):
        report.predictions(versus)  # an analysis holds results, not a network's predictions


def test_cka_recipe_key_plans_one_analysis_per_round_and_refuses_bad_values(tmp_path):
    recipe = tmp_path / "lt.yaml"
    recipe.write_text(f"extends: {REPO / 'recipes' / 'lt_unstructuredL1.yaml'}\ncka: {{probe_size: 128}}\n")
    plan = compile_recipe(recipe, {"rounds": 2, "epochs": 1})
    analyses = [n for n in plan.nodes if n.kind == "analysis"]
    assert [(n.round, n.parent, n.inputs["b"]) for n in analyses] == [
        (0, "train", "train"),
        (1, "round1", "train"),
        (2, "round2", "train"),
    ]
    assert analyses[1].steps == [
        {"cka": {"a": "input:a", "b": "input:b", "probe_size": 128, "batch_size": 256, "seed": 0}}
    ]
    without = compile_recipe(REPO / "recipes" / "lt_unstructuredL1.yaml", {"rounds": 2, "epochs": 1})
    assert {n.name: n.key for n in plan.nodes if n.kind != "analysis"} == without.keys  # nothing else moves
    for value, fragment in (
        ("{b: root}", "reference is always round 0"),
        ("{probe_size: 2}", "probe_size"),
        ("{probes: 3}", "probes"),
        ("7", "must be true or a mapping"),
    ):
        recipe.write_text(f"extends: {REPO / 'recipes' / 'lt_unstructuredL1.yaml'}\ncka: {value}\n")
        with pytest.raises(SpecError, match=fragment) as error:
            compile_recipe(recipe)
        assert "\n" not in str(error.value) and "lt.yaml" in str(error.value)


# ---- the must-show: lt_unstructuredL1 on digits, 3 seeds, 3 rounds ------------------------------


@pytest.mark.slow
def test_lt_unstructured_three_seeds_inside_the_network(tracking, tmp_path):
    from click.testing import CliRunner

    from mlprune.cli import main
    from mlprune.report import write_report

    recipe = tmp_path / "lt_inside.yaml"
    recipe.write_text(f"extends: {REPO / 'recipes' / 'lt_unstructuredL1.yaml'}\ncka: {{probe_size: 256}}\n")
    result = CliRunner().invoke(
        main,
        [
            "sweep",
            str(recipe),
            "--seeds",
            "0-2",
            "-P",
            "rounds=3",
            "-P",
            "epochs=1",
            "-P",
            "train_size=256",
            "-P",
            "model=lenet_300_100",
            "-P",
            "lr=0.05",
            "-e",
            "inside",
        ],
    )
    assert result.exit_code == 0, result.output
    client = MlflowClient()
    runs = client.search_runs(
        [client.get_experiment_by_name("inside").experiment_id],
        filter_string="tags.`mlprune.key` != ''",
        max_results=1000,
    )
    networks = [r for r in runs if r.data.tags["mlprune.kind"] != "analysis"]
    assert len(networks) == 3 * 8  # per seed: root, train, 3 x (prune, retrain)
    for run in networks:  # per-class accuracy on every evaluated state
        assert {f"test_accuracy.class.{k}" for k in range(10)} <= set(run.data.metrics)

    out = tmp_path / "report"
    written = write_report("inside", out, warn=lambda message: None)
    kinds = {f["kind"] for f in written.figures}
    assert {"class_impact", "pie_fraction", "pie_gallery", "churn", "cka", "learning_curves"} <= kinds
    numbers = json.loads((out / "report.json").read_text())["inside"]["lt_inside"]
    assert numbers["seeds"] == [0, 1, 2] and [r["round"] for r in numbers["rounds"]] == [0, 1, 2, 3]

    # the PIE list of round 3 vs round 0, recomputed from the saved predictions in a few independent lines
    pie = json.loads((out / numbers["rounds"][3]["pies"]["file"]).read_text())
    assert len(pie["dense_runs"]) == len(pie["pruned_runs"]) == 3

    def modal(run_ids):
        """Each test example's most frequent predicted label over the runs (a tie: the smallest label)."""
        votes = np.stack(
            [
                load_file(client.download_artifacts(r, "predictions.safetensors", str(tmp_path)))["predicted"]
                .numpy()
                .astype(int)
                for r in run_ids
            ]
        )
        return np.array([np.bincount(column).argmax() for column in votes.T])

    dense_mode, pruned_mode = modal(pie["dense_runs"]), modal(pie["pruned_runs"])
    expected = np.nonzero(dense_mode != pruned_mode)[0]
    assert [p["index"] for p in pie["pies"]] == expected.tolist()
    assert [(p["dense_label"], p["pruned_label"]) for p in pie["pies"]] == list(
        zip(dense_mode[expected].tolist(), pruned_mode[expected].tolist())
    )
    assert pie["fraction"] == pytest.approx(expected.size / 359)

    # CKA: the dense training with itself is 1; a pruned round against it is in [0, 1)
    cka = {r["round"]: r["cka"] for r in numbers["rounds"]}
    analyses = [r for r in runs if r.data.tags["mlprune.kind"] == "analysis"]
    assert len(analyses) == 3 * 4
    for run in analyses:
        values = {k: v for k, v in run.data.metrics.items() if k.startswith("cka.")}
        assert len(values) == 3
        if run.data.tags["mlflow.parentRunId"] == run.data.tags["mlprune.parent.b"]:
            assert all(v == pytest.approx(1.0, abs=1e-6) for v in values.values())
        else:
            assert all(0.0 <= v < 1.0 for v in values.values())
    assert all(v == pytest.approx(1.0, abs=1e-6) for v in cka[0].values())
    assert all(0.0 <= v < 1.0 for v in cka[3].values())
    churn = numbers["churn"]
    assert churn["n"] == 3 and np.allclose(np.diag(churn["matrix"]), 0.0)

    # a state whose predictions file is gone (an older mlprune, a damaged store): noted once, the rest goes on
    from mlprune.report.common import Page, StateLoader
    from mlprune.report.inside import inside_section
    from mlprune.report.sections import SectionContext
    from mlprune.report.series import collect
    from mlprune.store import open_experiment

    gone = pie["pruned_runs"][0]
    Path(client.get_run(gone).info.artifact_uri.replace("file://", ""), "predictions.safetensors").unlink()
    store = open_experiment("inside")
    notes = []
    collection = collect(store)
    builder = Page(tmp_path / "again")
    inside_section(builder, SectionContext(collection, StateLoader(store, collection.runs, notes.append), notes.append))
    assert [n for n in notes if "predictions.safetensors" in n and gone[:8] in n and "1 state(s)" in n]
    again = builder.report["inside"]["lt_inside"]["rounds"][3]["pies"]
    assert again["n_pruned"] == 2 and again["n_dense"] == 3
