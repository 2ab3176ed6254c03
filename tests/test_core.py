"""The state DAG on a real MLflow store: round trips, lineage, caching, failure, determinism."""

from __future__ import annotations

import hashlib

import pytest
import torch
from mlflow.tracking import MlflowClient

from mlprune import Experiment, Recipe, SpecError
from mlprune.store import Store

LT_ROUND = Recipe.reinit(strategy="rewind", to="root") + Recipe.train(epochs=1)
STRUCTURED = Recipe.prune(method="ln_structured", amount=0.2, n=1, dim=1)


def weights_hash(weights: dict) -> str:
    digest = hashlib.sha256()
    for name in sorted(weights):
        digest.update(name.encode())
        digest.update(weights[name].contiguous().numpy().tobytes())
    return digest.hexdigest()


def all_runs(tracking_uri: str):
    client = MlflowClient(tracking_uri=tracking_uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, max_results=10000)


def small_tree(exp: Experiment, seed: int = 0):
    root = exp.init(model="lenet", dataset="digits", seed=seed)
    trained = root.apply(Recipe.train(epochs=1))
    pruned = trained.apply(STRUCTURED)
    ticket = pruned.apply(LT_ROUND)
    return root, trained, pruned, ticket


def test_state_round_trips_bitwise_through_the_store(experiment, tracking):
    root, trained, pruned, ticket = small_tree(experiment)
    fresh = Experiment(experiment_id=experiment.store.experiment_id)  # new store object: no in-memory cache
    for state in (root, trained, pruned, ticket):
        again = fresh.state(state.run_id)
        assert again.key == state.key
        assert set(again.weights) == set(state.weights)
        for name in state.weights:
            assert torch.equal(again.weights[name], state.weights[name]), name
        for name in state.masks:
            assert again.masks[name].dtype == torch.bool
            assert torch.equal(again.masks[name], state.masks[name]), name
    # the loaded model carries exactly the stored weights, and loads into the unpruned architecture
    model = fresh.state(ticket.run_id).model()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, ticket.weights[name])


def test_lineage_tags_and_parents(experiment, tracking):
    root, trained, pruned, ticket = small_tree(experiment)
    client = MlflowClient(tracking_uri=tracking)
    tags = {s.run_id: client.get_run(s.run_id).data.tags for s in (root, trained, pruned, ticket)}
    assert "mlflow.parentRunId" not in tags[root.run_id]
    assert tags[trained.run_id]["mlflow.parentRunId"] == root.run_id
    assert tags[pruned.run_id]["mlflow.parentRunId"] == trained.run_id
    assert tags[ticket.run_id]["mlflow.parentRunId"] == pruned.run_id
    assert tags[ticket.run_id]["mlprune.parent.weights"] == root.run_id  # the rewind's weights source
    for state in (root, trained, pruned, ticket):
        t = tags[state.run_id]
        assert t["mlprune.key"] == state.key
        assert t["mlprune.version"]
        assert t["mlprune.root"] == root.run_id
        assert state.lineage()[-1].run_id == root.run_id
        assert state.root.run_id == root.run_id
    assert [tags[s.run_id]["mlprune.kind"] for s in (root, trained, pruned, ticket)] == [
        "init",
        "train",
        "prune",
        "reinit+train",
    ]
    assert ticket.parents()["weights"].run_id == root.run_id
    # each run's description links its parents in the MLflow UI
    note = tags[ticket.run_id]["mlflow.note.content"]
    assert pruned.run_id in note and root.run_id in note


def test_artifacts_and_metrics(experiment, tracking):
    root, trained, pruned, ticket = small_tree(experiment)
    client = MlflowClient(tracking_uri=tracking)
    for state in (root, trained, ticket):
        names = {f.path for f in client.list_artifacts(state.run_id)}
        assert {"weights.safetensors", "masks.safetensors", "state.json"} <= names
    # the prune-only state references its parent's weights instead of copying them (its own evaluation's
    # predictions are its own: pruning changed them)
    assert {f.path for f in client.list_artifacts(pruned.run_id)} == {
        "masks.safetensors",
        "state.json",
        "predictions.safetensors",
        "confusion.json",
    }
    assert pruned.spec["weights_from"] == trained.run_id
    metrics = client.get_run(ticket.run_id).data.metrics
    for name in ("test_accuracy", "test_loss", "sparsity", "train_loss", "duration_s"):
        assert name in metrics, name
    assert any(name.startswith("sparsity.") for name in metrics)
    history = client.get_metric_history(trained.run_id, "train_loss")
    assert [m.step for m in history] == [1]


def test_a_prune_that_removes_channels_shares_its_parents_weights_file(experiment, tracking):
    """Its removed channels' biases are zero; state.json lists them (`zeroed`) instead of a new weights
    file, and loading from the store gives the prune step's weights bit for bit."""
    from mlprune.models import build_model
    from mlprune.pruning.structure import apply_extra_masks, channel_groups, extra_masks

    root = experiment.init(model="lenet", dataset="digits", seed=0, train_size=64)
    trained = root.apply(Recipe.train(epochs=1))
    pruned = trained.apply(Recipe.prune(method="ln_structured", amount=0.5, n=1, dim=0, coupled=True))
    names = {f.path for f in MlflowClient(tracking_uri=tracking).list_artifacts(pruned.run_id)}
    assert "weights.safetensors" not in names and pruned.spec["weights_from"] == trained.run_id
    assert set(pruned.spec["zeroed"]) >= {"features.0.bias"}
    fresh = Experiment("test").state(pruned.run_id)  # a new store: read from the files
    masks, parent = fresh.masks, trained.weights
    groups = channel_groups(build_model("lenet", num_classes=10, input_shape=(1, 28, 28)), (1, 28, 28))
    extras = extra_masks(groups, masks, {n: t.shape for n, t in parent.items()})
    assert "features.0.bias" in extras
    expected = apply_extra_masks({n: t * masks[n] if n in masks else t for n, t in parent.items()}, extras)
    for name, tensor in fresh.weights.items():  # bit for bit, the sign of every zero too
        assert torch.equal(tensor.view(torch.int32), expected[name].view(torch.int32)), name
    assert torch.all(fresh.weights["features.0.bias"][~extras["features.0.bias"]] == 0)


def test_cache_hit_returns_the_same_run_and_creates_nothing(experiment, tracking):
    states = small_tree(experiment)
    before = len(all_runs(tracking))
    again = small_tree(Experiment("test"))
    assert [s.run_id for s in again] == [s.run_id for s in states]
    assert len(all_runs(tracking)) == before


def test_spelling_a_default_out_does_not_change_the_key(experiment):
    root = experiment.init(model="lenet", dataset="digits", seed=0)
    assert (
        experiment.root_key(seed=0)[0]
        == experiment.root_key(model="lenet", dataset="digits", seed=0, init="default")[0]
    )
    short, _, _ = experiment.child_key(root, Recipe.train(epochs=1))
    spelled, _, _ = experiment.child_key(root, Recipe.train(epochs=1, lr=0.01, optimizer="sgd", batch_size=32))
    assert short == spelled
    other, _, _ = experiment.child_key(root, Recipe.train(epochs=1, lr=0.02))
    assert other != short


def test_a_failing_step_leaves_no_finished_run_and_rerun_completes(experiment, tracking, monkeypatch):
    root = experiment.init(model="lenet", dataset="digits", seed=0)
    import mlprune.training.loop as training

    real_train = training.train

    def broken(*args, **kwargs):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(training, "train", broken)
    with pytest.raises(RuntimeError, match="injected failure"):
        root.apply(Recipe.train(epochs=1))
    runs = [r for r in all_runs(tracking) if r.data.tags.get("mlprune.kind") == "train"]
    assert [r.info.status for r in runs] == ["FAILED"]
    key = runs[0].data.tags["mlprune.key"]
    assert experiment.store.find(key) is None

    monkeypatch.setattr(training, "train", real_train)
    trained = root.apply(Recipe.train(epochs=1))
    assert trained.key == key
    statuses = sorted(r.info.status for r in all_runs(tracking) if r.data.tags.get("mlprune.key") == key)
    assert statuses == ["FAILED", "FINISHED"]


def test_same_seed_in_two_fresh_stores_gives_identical_weights(tmp_path, monkeypatch, _empty_store_db):
    import shutil

    hashes = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        shutil.copy(_empty_store_db, folder / "mlflow.db")
        monkeypatch.chdir(folder)
        exp = Experiment("det", tracking_uri=f"sqlite:///{folder}/mlflow.db")
        states = small_tree(exp, seed=3)
        hashes.append([(s.key, weights_hash(s.weights)) for s in states])
    assert hashes[0] == hashes[1]
    other = Experiment("det2", tracking_uri=f"sqlite:///{tmp_path}/b/mlflow.db").init(seed=4)
    assert weights_hash(other.weights) != hashes[0][0][1]


def test_pruned_weights_stay_exactly_zero_and_sparsity_matches_masks(experiment, tracking):
    root = experiment.init(model="lenet", dataset="digits", seed=0)
    trained = root.apply(Recipe.train(epochs=1))
    pruned = trained.apply(Recipe.prune(method="l1_unstructured", amount=0.5))
    momentum = pruned.apply(Recipe.train(epochs=2, momentum=0.9, weight_decay=1e-3))
    for state in (pruned, momentum):
        kept = total = 0
        metrics = state.metrics
        for name, mask in state.masks.items():
            weight = state.weights[name]
            assert torch.all(weight[~mask] == 0), name
            kept += int(mask.sum())
            total += mask.numel()
            assert metrics[f"sparsity.{name}"] == pytest.approx(1 - mask.float().mean().item())
        assert metrics["sparsity"] == pytest.approx(1 - kept / total)
    assert momentum.metrics["sparsity"] == pytest.approx(0.5, abs=0.01)
    # training really changed the kept weights
    changed = any(not torch.equal(momentum.weights[n], pruned.weights[n]) for n in pruned.masks)
    assert changed


def test_bad_input_is_one_line_and_records_nothing_finished(experiment, tracking):
    root = experiment.init(model="lenet", dataset="digits", seed=0)
    bad = [
        (lambda: experiment.init(model="resnet9000"), "resnet9000"),
        (lambda: experiment.init(dataset="imagenet-xl"), "imagenet-xl"),
        (lambda: experiment.init(seed=-1), "-1"),
        (lambda: root.apply(Recipe.prune(method="magic", amount=0.2)), "magic"),
        (lambda: root.apply(Recipe.prune(method="l1_unstructured", amount=1.5)), "1.5"),
        (lambda: root.apply(Recipe.train(epochs=-2)), "-2"),
        (lambda: experiment.state("0123456789abcdef"), "0123456789abcdef"),
    ]
    finished_before = len(experiment.store.states())
    for call, value in bad:
        with pytest.raises(SpecError) as raised:
            call()
        message = str(raised.value)
        assert "\n" not in message and value in message, message
    assert len(experiment.store.states()) == finished_before


def test_a_parent_that_is_not_an_mlprune_state_is_refused(experiment, tracking):
    client = MlflowClient(tracking_uri=tracking)
    other = client.create_run(experiment.store.experiment_id).info.run_id
    client.set_terminated(other, "FINISHED")
    with pytest.raises(SpecError, match="not an mlprune state"):
        experiment.state(other)


def test_experiment_from_mlflow_environment(tracking, monkeypatch):
    client = MlflowClient(tracking_uri=tracking)
    exp_id = client.create_experiment("chosen-by-mlflow-run")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", exp_id)
    assert Store().experiment_id == exp_id
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "0")  # `mlflow run` without a name: MLflow's Default
    assert Store().experiment_name == "mlprune"
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "by-name")
    assert Store().experiment_name == "by-name"


# Pinned keys: a change here means every user's cache silently stops hitting. If the maths of a
# step really changed, bump dag.SEMANTICS_VERSION and update these values in the same commit.
PINNED = {
    "root": "c1877e2c347084bd8f7c55270a0abc3f",
    "train": "929e847e9eb4a375e3b4c7f95dda49f7",
    "prune": "a3eb362c8ad7fa4a06fa178a9bb43d29",
    "rewind+train": "b7e74e88c01ebc702bf33d6fd386ca43",
    "root s1 mnist": "580c3bed859021910928b5edef4845a1",
}


def test_pinned_keys(experiment):
    root = experiment.init(model="lenet", dataset="digits", seed=0)
    assert root.key == PINNED["root"]
    assert experiment.child_key(root, Recipe.train(epochs=1))[0] == PINNED["train"]
    assert experiment.child_key(root, STRUCTURED)[0] == PINNED["prune"]
    assert experiment.child_key(root, LT_ROUND)[0] == PINNED["rewind+train"]
    assert (
        experiment.root_key(model="lenet_300_100", dataset="mnist", seed=1, init="glorot", val_size=5000)[0]
        == PINNED["root s1 mnist"]
    )


def test_a_train_checkpoint_is_bitwise_the_shorter_training(tmp_path, monkeypatch, _empty_store_db):
    """Training is prefix-consistent: epoch k of an E-epoch training is the state 'train k epochs'."""
    import shutil

    stores = []
    for name in ("long", "short"):
        (tmp_path / name).mkdir()
        shutil.copy(_empty_store_db, tmp_path / name / "mlflow.db")
        monkeypatch.chdir(tmp_path / name)
        stores.append(Experiment("ckpt", tracking_uri=f"sqlite:///{tmp_path / name}/mlflow.db"))
    long_exp, short_exp = stores
    root = long_exp.init(seed=5, train_size=256)
    pruned = root.apply(Recipe.prune(method="l1_unstructured", amount=0.3))
    full = pruned.apply(Recipe.reinit(strategy="rewind", to="root") + Recipe.train(epochs=3, checkpoints=[1, 2]))
    runs_before = len(long_exp.store.states())
    early = pruned.apply(Recipe.reinit(strategy="rewind", to="root") + Recipe.train(epochs=2))
    assert len(long_exp.store.states()) == runs_before  # emitted during the long training: a cache hit
    assert early.spec["steps"][-1]["train"]["epochs"] == 2
    assert early.parent.run_id == pruned.run_id and early.parents()["weights"].run_id == root.run_id
    assert len(long_exp.store.client.get_metric_history(early.run_id, "train_loss")) == 2

    monkeypatch.chdir(tmp_path / "short")
    direct = (
        short_exp.init(seed=5, train_size=256)
        .apply(Recipe.prune(method="l1_unstructured", amount=0.3))
        .apply(Recipe.reinit(strategy="rewind", to="root") + Recipe.train(epochs=2))
    )
    assert direct.key == early.key
    assert weights_hash(direct.weights) == weights_hash(early.weights)
    assert weights_hash(full.weights) != weights_hash(early.weights)
    with pytest.raises(SpecError, match="checkpoint"):
        root.apply(Recipe.train(epochs=2, checkpoints=[2]))
