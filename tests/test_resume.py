"""Resumable trainings: checkpoints on the claim run, resume after a stop or a kill,
damaged checkpoints skipped, stop requests.

A stop is requested at a point the test controls: `TrainingHooks.due` (polled after every iteration)
is wrapped to call the real `request_stop` at one (step, iteration) of a training; in the
processes of the slow tests, a wrapper script blocks a checkpoint's commit (SIGKILL) or the
training (SIGTERM) until the test acts. Every resumed state is compared with the same state
computed without interruption in another store: bitwise weights, masks, metrics and histories.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from mlprune import Experiment, Recipe, names
from mlprune.errors import SpecError
from mlprune.spec.times import checkpoint_cadence
from mlprune.store import Store
from mlprune.training.checkpoint import TrainingHooks
from mlprune.training.interrupt import Interrupted, clear_stop, request_stop, stop_requested

REPO = Path(__file__).resolve().parents[1]
ROOT = dict(model="lenet_300_100", dataset="digits", seed=0, train_size=256, test_size=64)  # 8 iterations an epoch
SGD = dict(epochs=3, lr=0.05, momentum=0.9, batch_size=32)
# metrics that measure time, not the state
TIMING = (names.M_DURATION, names.M_CHECKPOINT_ITERATION, names.M_RESUMED_FROM_ITERATION, "latency_ms", "speedup")


@pytest.fixture(autouse=True)
def _every_due_checkpoint(monkeypatch):
    """Every checkpoint the cadence makes due is written (the default skips those over a 5% time budget,
    most of them on trainings of milliseconds): the checkpoints of a test do not depend on its timing."""
    monkeypatch.setenv(names.ENV_CHECKPOINT_BUDGET, "inf")


@pytest.fixture
def other_store(tmp_path, _empty_store_db):
    """A second real store (the uninterrupted computation)."""
    shutil.copy(_empty_store_db, tmp_path / "other.db")
    return f"sqlite:///{tmp_path}/other.db"


@pytest.fixture
def stop_at(monkeypatch):
    """stop_at(iteration, step=0): the real stop flag is set right after that iteration of that train step."""
    target = {}
    due = TrainingHooks.due

    def controlled(self, i):
        if target and (self.step, i) == (target["step"], target["iteration"]):
            target.clear()
            request_stop("test: a stop at a controlled point")
        return due(self, i)

    monkeypatch.setattr(TrainingHooks, "due", controlled)
    clear_stop()
    yield lambda iteration, step=0: target.update(iteration=iteration, step=step)
    clear_stop()


def _timeless(name: str) -> bool:
    return not name.startswith(TIMING)


def states_by_key(uri: str) -> dict:
    """{key: (StoredState, {metric: [(step, value)]})} of a store's FINISHED states."""
    client = MlflowClient(tracking_uri=uri)
    out = {}
    for experiment in client.search_experiments():
        store = Store(tracking_uri=uri, experiment_id=experiment.experiment_id, create=False)
        for run in store.states():
            metrics = {
                name: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name))
                for name in run.data.metrics
                if _timeless(name)
            }
            out[run.data.tags[names.TAG_KEY]] = (store.load(run.info.run_id), metrics, run)
    return out


def assert_same_states(uri_a: str, uri_b: str) -> None:
    """Both stores hold the same states: keys, bitwise weights and masks, every metric and history."""
    a, b = states_by_key(uri_a), states_by_key(uri_b)
    assert a and set(a) == set(b)
    for key, (state, metrics, _) in a.items():
        other, other_metrics, _ = b[key]
        for what in ("weights", "masks"):
            mine, theirs = getattr(state, what), getattr(other, what)
            assert set(mine) == set(theirs), (key, what)
            different = [n for n in mine if mine[n].dtype != theirs[n].dtype or not torch.equal(mine[n], theirs[n])]
            assert not different, (key, what, different[:3])
        assert metrics == other_metrics, key


def assert_no_checkpoint_left(uri: str, artifacts: Path) -> None:
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    assert not [r.info.run_id for r in runs if names.TAG_CHECKPOINTS in r.data.tags]
    assert not list(artifacts.rglob(names.CHECKPOINTS_DIR))


# ---- the cadence ------------------------------------------------------------------------------------


def test_checkpoint_every_is_a_cadence_or_off_in_one_line():
    assert [checkpoint_cadence(v) for v in (None, "", "1ep", 2, "500it", " 3ep ", "off", 0, "0it", "none")] == [
        "1ep",
        "1ep",
        "1ep",
        "2ep",
        "500it",
        "3ep",
        "off",
        "off",
        "off",
        "off",
    ]
    for bad in ("often", "1.5ep", -1, True, "10 minutes"):
        with pytest.raises(SpecError, match="checkpoint_every .* allowed: '<N>ep' or '<N>it'") as error:
            checkpoint_cadence(bad)
        assert "\n" not in str(error.value)


def test_a_bad_cadence_is_refused_before_any_run(tracking, tmp_path):
    from click.testing import CliRunner

    from mlprune.cli import main

    result = CliRunner().invoke(
        main, ["step", "init", "-o", "model=lenet_300_100", "-o", "dataset=digits", "--checkpoint-every", "sometimes"]
    )
    assert result.exit_code == 2 and result.stderr.startswith("error: checkpoint_every 'sometimes'")
    assert not MlflowClient(tracking_uri=tracking).search_runs(
        [e.experiment_id for e in MlflowClient(tracking_uri=tracking).search_experiments()]
    )


# ---- checkpoints while training --------------------------------------------------------------------


def test_a_training_commits_checkpoints_at_its_cadence_and_a_finished_state_keeps_none(tracking, tmp_path):
    experiment = Experiment("cadence", checkpoint_every="5it")
    state = experiment.init(**ROOT).apply(Recipe.train(**SGD))
    client = experiment.store.client
    # every 5 iterations of 24 (8 an epoch), none at the end: the state is stored then
    assert [
        (m.step, m.value)
        for m in sorted(client.get_metric_history(state.run_id, names.M_CHECKPOINT_ITERATION), key=lambda m: m.step)
    ] == [(i, float(i)) for i in (5, 10, 15, 20)]
    run = client.get_run(state.run_id)
    assert run.data.metrics[names.M_RESUMED_FROM_ITERATION] == 0
    assert run.data.params[names.PARAM_CHECKPOINT_EVERY] == "5it"
    assert_no_checkpoint_left(tracking, tmp_path / "mlruns")
    files = sorted(p.name for p in Path(run.info.artifact_uri).iterdir())
    assert files == sorted(
        [names.WEIGHTS_FILE, names.MASKS_FILE, names.STATE_FILE, names.PREDICTIONS_FILE, names.CONFUSION_FILE]
    )


def test_the_claim_run_keeps_the_newest_two_checkpoints_each_committed_after_its_files(tracking, stop_at):
    experiment = Experiment("two", checkpoint_every="3it")
    root = experiment.init(**ROOT)
    stop_at(17)
    with pytest.raises(Interrupted):
        root.apply(Recipe.train(**SGD))
    [killed] = [
        r
        for r in experiment.store.key_runs(experiment.child_key(root, Recipe.train(**SGD))[0])
        if r.info.status == "KILLED"
    ]
    records = {f"{r['step']}-{r['iteration']}": r for r in json.loads(killed.data.tags[names.TAG_CHECKPOINTS])}
    assert sorted(records) == ["0-15", "0-17"]  # 3, 6, ..., 15 at the cadence, 17 on the stop; two kept
    folder = Path(killed.info.artifact_uri) / names.CHECKPOINTS_DIR
    assert sorted(p.name for p in folder.iterdir()) == ["0-15", "0-17"]
    for label, record in records.items():
        assert record["iteration"] == int(label.split("-")[1]) and record["step"] == 0
        for name, digest in record["files"].items():
            import hashlib

            assert hashlib.sha256((folder / label / name).read_bytes()).hexdigest() == digest
    meta = json.loads((folder / "0-17" / names.CHECKPOINT_META_FILE).read_text())
    assert meta["iteration"] == 17 and meta["sums"]["count"] == 32  # one batch into epoch 3
    assert "Interrupted" in killed.data.tags[names.TAG_ERROR]


def test_a_checkpoint_round_trips_through_its_files_and_restores_optimizer_and_scaler_state():
    from mlprune.training.checkpoint import (
        TrainingCheckpoint,
        TrainingParts,
        capture,
        restore_network,
        restore_optimizer,
        restored_sums,
    )

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5), torch.nn.Linear(5, 3))
    masks = {"0.weight": torch.rand(5, 6) > 0.3}
    states = []
    for make in (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), lambda p: torch.optim.Adam(p, lr=0.01)):
        optimizer = make(model.parameters())
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)  # overflows: the scale backs off
        for _ in range(3):
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = model(torch.randn(8, 6)).float().pow(2).sum()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        sums = (torch.tensor(1.25, dtype=torch.float64), torch.tensor(7), 16, 0.05)
        history = {"train_loss": [(1, 0.5)], "lr": [(1, float("nan"))]}
        saved = capture(
            TrainingParts(model, masks, optimizer, scaler, history),
            key="k" * 64,
            step=1,
            iteration=37,
            sums=sums,
            node_history={"iterations": 8, "lr": [(1, 0.1)]},
            info={"threads": 1},
        )
        back = TrainingCheckpoint.from_files(saved.files(), key="k" * 64)
        assert (back.step, back.iteration, back.sums["count"], back.sums["lr"]) == (1, 37, 16, 0.05)
        assert back.node_history == {"iterations": 8, "lr": [(1, 0.1)]} and back.history["train_loss"] == [(1, 0.5)]
        assert back.scaler == scaler.state_dict() and back.scaler["scale"] < 2.0**40
        fresh_model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5), torch.nn.Linear(5, 3))
        fresh_masks = {"0.weight": torch.ones(5, 6, dtype=torch.bool)}
        restore_network(back, fresh_model, fresh_masks)
        fresh = make(fresh_model.parameters())
        fresh_scaler = torch.amp.GradScaler("cpu")
        restore_optimizer(back, fresh, fresh_scaler)
        assert fresh_scaler.state_dict() == scaler.state_dict()
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh_model.state_dict().values()))
        assert torch.equal(fresh_masks["0.weight"], masks["0.weight"])
        mine, theirs = optimizer.state_dict()["state"], fresh.state_dict()["state"]
        assert mine.keys() == theirs.keys() and all(
            torch.equal(mine[i][n], theirs[i][n]) for i in mine for n in mine[i]
        )
        loss_sum, hits, count, lr = restored_sums(back, torch.device("cpu"))
        assert (float(loss_sum), int(hits), count, lr) == (1.25, 7, 16, 0.05) and loss_sum.dtype == torch.float64
        states.append(back)
    with pytest.raises(SpecError, match="checkpoint of state"):
        TrainingCheckpoint.from_files(states[0].files(), key="other")


# ---- bitwise resume --------------------------------------------------------------------------------
TWO_TRAINS = (
    {"train": dict(epochs=1, lr=0.05, momentum=0.9, batch_size=32)},
    {"train": dict(epochs=2, lr=0.02, optimizer="adam", batch_size=32)},
)
VARIANTS = {
    # name: (root, steps, stop (iteration, step), cadence)
    "sgd-momentum-mid-epoch": (ROOT, ({"train": SGD},), (11, 0), "1ep"),
    "sgd-epoch-end-off": (ROOT, ({"train": SGD},), (16, 0), "off"),
    "adam": (ROOT, ({"train": dict(epochs=3, lr=0.002, optimizer="adam", batch_size=32)},), (13, 0), "4it"),
    "fp16-scaler": (ROOT, ({"train": dict(SGD, precision="fp16")},), (10, 0), "1ep"),
    "bf16-nesterov-wd-multistep": (
        ROOT,
        (
            {
                "train": dict(
                    SGD,
                    precision="bf16",
                    nesterov=True,
                    weight_decay=5e-4,
                    lr_schedule={"kind": "multistep", "milestones": ["2ep"]},
                    warmup="4it",
                )
            },
        ),
        (12, 0),
        "1ep",
    ),
    "gradual-pruning": (
        ROOT,
        (
            {
                "train": dict(
                    epochs=4,
                    lr=0.002,
                    optimizer="adam",
                    batch_size=32,
                    sparsity_schedule={"kind": "agp", "final": 0.8, "start": "1ep", "end": "3ep", "every": "3it"},
                )
            },
        ),
        (15, 0),
        "1ep",
    ),
    "augmentation": (dict(ROOT, augment="crop+flip", image_size=12), ({"train": SGD},), (9, 0), "1ep"),
    # dynamic sparse training: masks updated at 3, 6, 9, ...; the stop falls between two updates, mid-epoch
    "set-sparse-training": (
        ROOT,
        (
            {"prune": {"method": "random_unstructured", "amount": 0.8}},
            {"train": dict(SGD, sparse_training={"kind": "set", "update_every": "3it", "drop_fraction": 0.5})},
        ),
        (11, 1),
        "1ep",
    ),
    "batchnorm-resnet20": (
        dict(
            model="resnet20",
            model_options={"shortcut": "B"},
            dataset="digits",
            seed=0,
            channels=3,
            train_size=64,
            test_size=32,
        ),
        ({"train": dict(epochs=2, lr=0.05, momentum=0.9, batch_size=16)},),
        (6, 0),
        "1ep",
    ),
    "two-trainings-stop-in-the-second": (ROOT, TWO_TRAINS, (13, 1), "1ep"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_stopped_training_resumes_to_bitwise_the_uninterrupted_state(
    variant, tracking, other_store, tmp_path, stop_at
):
    root_spec, steps, (iteration, step), cadence = VARIANTS[variant]
    recipe = Recipe(steps)
    plain = Experiment("plain", tracking_uri=other_store, checkpoint_every="off")
    plain.init(**root_spec).apply(recipe)

    experiment = Experiment("resumed", checkpoint_every=cadence)
    root = experiment.init(**root_spec)
    stop_at(iteration, step)
    with pytest.raises(Interrupted, match=f"checkpoint at iteration {iteration}"):
        root.apply(recipe)
    assert stop_requested() and not experiment.store.find(experiment.child_key(root, recipe)[0])
    clear_stop()
    resumed = root.apply(recipe)
    assert resumed.metrics[names.M_RESUMED_FROM_ITERATION] == iteration
    assert_same_states(other_store, tracking)
    assert_no_checkpoint_left(tracking, tmp_path / "mlruns")


def test_a_stop_in_the_first_iteration_of_a_later_step_resumes_that_step(tracking, other_store, stop_at):
    """A two-step node stopped after the first iteration of its second training resumes there: the first
    training is not run again (its history comes from the checkpoint)."""
    plain = Experiment("plain", tracking_uri=other_store)
    plain.init(**ROOT).apply(Recipe(TWO_TRAINS))
    experiment = Experiment("resumed")
    root = experiment.init(**ROOT)
    stop_at(1, 1)
    with pytest.raises(Interrupted):
        root.apply(Recipe(TWO_TRAINS))
    clear_stop()
    resumed = root.apply(Recipe(TWO_TRAINS))
    assert resumed.metrics[names.M_RESUMED_FROM_ITERATION] == 1
    assert resumed.metrics[names.M_ITERATIONS] == 8 + 16
    assert_same_states(other_store, tracking)


def test_states_emitted_before_the_stop_are_kept_and_not_emitted_again(tracking, other_store, tmp_path, stop_at):
    """Late rewinding: the first training stores its state at 5it on its way (a run of its own), before
    the checkpoint at 11; the resumed training starts after it and does not store it again."""
    from mlprune import compile_recipe, run_plan

    text = textwrap.dedent("""\
        params: {seed: 0}
        root: {model: lenet_300_100, dataset: digits, seed: $seed, train_size: 256, test_size: 64}
        train: {epochs: 3, lr: 0.05, momentum: 0.9, batch_size: 32}
        rounds: 1
        prune: {method: l1_unstructured, amount: 0.5}
        reinit: {strategy: rewind, to: root, at: 5it}
        """)
    recipe = tmp_path / "late.yaml"
    recipe.write_text(text)
    run_plan(compile_recipe(recipe), Experiment(tracking_uri=other_store))
    plan = compile_recipe(recipe)
    emitted = next(n for n in plan.nodes if n.emitted_by)
    experiment = Experiment()
    stop_at(11)
    with pytest.raises(Interrupted):
        run_plan(plan, experiment)
    clear_stop()
    [first] = [r.info.run_id for r in experiment.store.key_runs(emitted.key) if r.info.status == "FINISHED"]
    states = run_plan(compile_recipe(recipe), Experiment())
    assert states[emitted.name].run_id == first  # kept, not recomputed
    assert len(experiment.store.key_runs(emitted.key)) == 1  # and not emitted again
    trained = states[next(n.name for n in plan.nodes if n.emits)]
    assert trained.metrics[names.M_RESUMED_FROM_ITERATION] == 11
    assert_same_states(other_store, tracking)


# ---- damaged checkpoints ---------------------------------------------------------------------------


def _stopped_with_checkpoints(experiment, stop_at, iteration: int):
    """A training of `experiment` stopped after `iteration`: (root state, its KILLED claim run)."""
    root = experiment.init(**ROOT)
    stop_at(iteration)
    with pytest.raises(Interrupted):
        root.apply(Recipe.train(**SGD))
    clear_stop()
    key = experiment.child_key(root, Recipe.train(**SGD))[0]
    [killed] = [r for r in experiment.store.key_runs(key) if r.info.status == "KILLED"]
    return root, killed


def test_a_damaged_newest_checkpoint_is_skipped_with_a_warning_for_the_one_before(
    tracking, other_store, stop_at, caplog
):
    Experiment("plain", tracking_uri=other_store).init(**ROOT).apply(Recipe.train(**SGD))
    experiment = Experiment("damaged", checkpoint_every="4it")
    root, killed = _stopped_with_checkpoints(experiment, stop_at, 18)
    folder = Path(killed.info.artifact_uri) / names.CHECKPOINTS_DIR
    assert sorted(p.name for p in folder.iterdir()) == ["0-16", "0-18"]
    tensors = folder / "0-18" / names.CHECKPOINT_TENSORS_FILE
    content = bytearray(tensors.read_bytes())
    content[len(content) // 2] ^= 0x01  # one flipped bit in a weight
    tensors.write_bytes(bytes(content))
    with caplog.at_level(logging.WARNING, logger="mlprune.checkpoint"):
        resumed = root.apply(Recipe.train(**SGD))
    [line] = [r.getMessage() for r in caplog.records]
    assert f"checkpoint of run {killed.info.run_id[:8]} at iteration 18" in line and "SHA-256" in line
    assert "\n" not in line
    assert resumed.metrics[names.M_RESUMED_FROM_ITERATION] == 16
    assert_same_states(other_store, tracking)


def _rewrite_record(experiment, run, change) -> None:
    records = json.loads(run.data.tags[names.TAG_CHECKPOINTS])
    for record in records:
        change(record)
    experiment.store.client.set_tag(run.info.run_id, names.TAG_CHECKPOINTS, json.dumps(records))


@pytest.mark.parametrize("damage", ["truncated", "missing", "bad json", "bad record"])
def test_when_every_checkpoint_is_damaged_the_training_starts_from_the_parent(
    damage, tracking, other_store, stop_at, caplog
):
    Experiment("plain", tracking_uri=other_store).init(**ROOT).apply(Recipe.train(**SGD))
    experiment = Experiment("damaged", checkpoint_every="4it")
    root, killed = _stopped_with_checkpoints(experiment, stop_at, 18)
    folder = Path(killed.info.artifact_uri) / names.CHECKPOINTS_DIR
    import hashlib

    for label in ("0-16", "0-18"):
        if damage == "truncated":
            path = folder / label / names.CHECKPOINT_TENSORS_FILE
            path.write_bytes(path.read_bytes()[:1000])
        elif damage == "missing":
            (folder / label / names.CHECKPOINT_META_FILE).unlink()
        elif damage == "bad json":  # bytes that match their recorded hash but are no checkpoint
            (folder / label / names.CHECKPOINT_META_FILE).write_bytes(b'{"format": 1, "key": ')
    if damage == "bad json":
        digest = hashlib.sha256(b'{"format": 1, "key": ').hexdigest()
        _rewrite_record(experiment, killed, lambda record: record["files"].update({names.CHECKPOINT_META_FILE: digest}))
    if damage == "bad record":
        experiment.store.client.set_tag(killed.info.run_id, names.TAG_CHECKPOINTS, "[{not json")
    with caplog.at_level(logging.WARNING, logger="mlprune.checkpoint"):
        resumed = root.apply(Recipe.train(**SGD))
    lines = [r.getMessage() for r in caplog.records]
    assert all(killed.info.run_id[:8] in line and "\n" not in line for line in lines), lines
    if damage == "bad record":  # the run's record names no checkpoint that could be read
        assert len(lines) == 1 and "mlprune.checkpoints" in lines[0], lines
    else:
        assert len(lines) == 2 and "iteration 18" in lines[0] and "iteration 16" in lines[1], lines
    assert resumed.metrics[names.M_RESUMED_FROM_ITERATION] == 0
    assert_same_states(other_store, tracking)


def test_a_checkpoint_without_its_commit_record_does_not_exist(tracking, other_store, stop_at, caplog):
    """The files of a checkpoint whose process died before its commit record are never read."""
    Experiment("plain", tracking_uri=other_store).init(**ROOT).apply(Recipe.train(**SGD))
    experiment = Experiment("torn", checkpoint_every="4it")
    root, killed = _stopped_with_checkpoints(experiment, stop_at, 18)
    folder = Path(killed.info.artifact_uri) / names.CHECKPOINTS_DIR
    shutil.copytree(folder / "0-18", folder / "0-21")  # files of a later checkpoint, never committed
    (folder / "0-21" / names.CHECKPOINT_TENSORS_FILE).write_bytes(b"half-written")
    records = json.loads(killed.data.tags[names.TAG_CHECKPOINTS])  # and 0-18: died before its record
    experiment.store.client.set_tag(
        killed.info.run_id, names.TAG_CHECKPOINTS, json.dumps([r for r in records if r["iteration"] == 16])
    )
    with caplog.at_level(logging.WARNING, logger="mlprune.checkpoint"):
        resumed = root.apply(Recipe.train(**SGD))
    assert not caplog.records and resumed.metrics[names.M_RESUMED_FROM_ITERATION] == 16
    assert_same_states(other_store, tracking)


# ---- stop requests ---------------------------------------------------------------------------------


def test_a_stop_request_starts_no_state_and_a_cleared_one_is_forgotten(tracking):
    experiment = Experiment("stop")
    request_stop("test")
    try:
        with pytest.raises(Interrupted, match="stopped on request \\(test\\)") as error:
            experiment.init(**ROOT)
        assert error.value.exit_status == 1 and error.value.iteration is None
        assert not experiment.store.states(finished_only=False)
    finally:
        clear_stop()
    assert stop_requested() is None
    assert experiment.init(**ROOT).kind == "init"


def test_signal_handlers_install_in_the_main_thread_only():
    import threading

    from mlprune.training.interrupt import install_signal_handlers

    before = signal.getsignal(signal.SIGUSR1)
    try:
        result = []
        thread = threading.Thread(target=lambda: result.append(install_signal_handlers()))
        thread.start()
        thread.join()
        assert result == [False] and signal.getsignal(signal.SIGUSR1) is before
        assert install_signal_handlers((signal.SIGUSR1,))
        os.kill(os.getpid(), signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while stop_requested() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stop_requested() == "signal SIGUSR1"
    finally:
        signal.signal(signal.SIGUSR1, before)
        clear_stop()


# ---- the must-shows: a real `mlprune run` killed, then run again ---------------------------------------
RECIPE = str(REPO / "recipes" / "lt_structuredL1.yaml")
# one round: the two-step node SIGTERM interrupts (rewind + train) is round 1; more rounds would only add states
ARGS = ["-P", "epochs=6", "-P", "rounds=1"]

# SIGKILL at a controlled point: the commit of the first checkpoint at or after AT (an iteration) blocks,
# after writing the run id to BLOCKED; the training thread then waits for it at its next checkpoint
KILL_WRAPPER = """
import os, time
from mlprune.store.checkpoints import RunCheckpoints
_commit = RunCheckpoints.commit
def commit(self, label, step, iteration, files):
    _commit(self, label, step, iteration, files)
    if iteration >= int(os.environ["AT"]) and not os.path.exists(os.environ["BLOCKED"]):
        open(os.environ["BLOCKED"], "w").write(self.run_id)
        time.sleep(600)
RunCheckpoints.commit = commit
from mlprune.cli import main
main()
"""

# SIGTERM at a controlled point: after iteration AT of the train step STEP of the KIND node, the training
# waits (sleeping: the signal handler runs) until the stop flag is set, then goes on
TERM_WRAPPER = """
import os, time
from mlprune.training import checkpoint
from mlprune.training.interrupt import stop_requested
_due = checkpoint.TrainingHooks.due
def due(self, i):
    if (self.step, i) == (int(os.environ["STEP"]), int(os.environ["AT"])) and not os.path.exists(os.environ["BLOCKED"]):
        open(os.environ["BLOCKED"], "w").write(self.session.key)
        while stop_requested() is None:
            time.sleep(0.05)
    return _due(self, i)
checkpoint.TrainingHooks.due = due
from mlprune.cli import main
main()
"""


def _env(uri: str, **extra) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MLPRUNE_THREADS": "1", names.ENV_CHECKPOINT_BUDGET: "inf", **extra}
    for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        env.pop(name, None)
    env["MLFLOW_TRACKING_URI"] = uri
    return env


def _wait_for(path: Path, process) -> str:
    deadline = time.monotonic() + 300
    while not (path.exists() and path.read_text()):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.05)
    return path.read_text()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, _empty_store_db):
    """lt_structuredL1 with 6 epochs and one round, run once without interruption in a store of its own."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    shutil.copy(_empty_store_db, folder / "mlflow.db")
    uri = f"sqlite:///{folder}/mlflow.db"
    done = subprocess.run(
        [sys.executable, "-m", "mlprune", "run", RECIPE, *ARGS],
        env=_env(uri),
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return uri


def _per_epoch(uri: str) -> int:
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], filter_string=f"tags.`{names.TAG_KIND}` = 'train'"
    )
    return int(runs[0].data.metrics[names.M_ITERATIONS]) // 6


def _finished_keys(uri: str) -> set:
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`{names.TAG_KEY}` != '' and attributes.status = 'FINISHED'",
    )
    return {r.data.tags[names.TAG_KEY] for r in runs}


@pytest.mark.slow
def test_sigkill_then_run_again_trains_only_the_rest_bitwise(uninterrupted, tracking, tmp_path):
    per_epoch = _per_epoch(uninterrupted)
    blocked = tmp_path / "blocked"
    process = subprocess.Popen(
        [sys.executable, "-c", KILL_WRAPPER, "run", RECIPE, *ARGS],
        env=_env(tracking, AT=str(2 * per_epoch), BLOCKED=str(blocked)),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_id = _wait_for(blocked, process)
    process.kill()
    process.communicate(timeout=60)
    client = MlflowClient(tracking_uri=tracking)
    killed = client.get_run(run_id)
    assert killed.info.status == "RUNNING"  # a dead claim, as SIGKILL leaves it
    assert max(m.step for m in client.get_metric_history(run_id, names.M_CHECKPOINT_ITERATION)) >= 2 * per_epoch
    assert not _finished_keys(tracking) - _finished_keys(uninterrupted)
    again = subprocess.run(
        [sys.executable, "-m", "mlprune", "run", RECIPE, *ARGS],
        env=_env(tracking),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    key = killed.data.tags[names.TAG_KEY]
    [state] = [
        r
        for r in client.search_runs([killed.info.experiment_id], filter_string=f"tags.`{names.TAG_KEY}` = '{key}'")
        if r.info.status == "FINISHED"
    ]
    resumed = state.data.metrics[names.M_RESUMED_FROM_ITERATION]
    assert resumed == 2 * per_epoch  # the committed one; the next was blocked
    # only the remaining iterations were trained: the first checkpoint of the new claim is past the resume point
    assert min(m.step for m in client.get_metric_history(state.info.run_id, names.M_CHECKPOINT_ITERATION)) > resumed
    assert client.get_run(run_id).info.status == "FAILED"  # the dead claim, taken over
    assert_same_states(uninterrupted, tracking)
    assert_no_checkpoint_left(tracking, tmp_path / "mlruns")


@pytest.mark.slow
def test_sigterm_checkpoints_exits_nonzero_and_the_run_again_resumes_bitwise(uninterrupted, tracking, tmp_path):
    """SIGTERM in the middle of an epoch of a two-step node (round 1: rewind + train)."""
    per_epoch = _per_epoch(uninterrupted)
    at = 3 * per_epoch + per_epoch // 2
    blocked = tmp_path / "blocked"
    process = subprocess.Popen(
        [sys.executable, "-c", TERM_WRAPPER, "run", RECIPE, *ARGS],
        env=_env(tracking, AT=str(at), STEP="1", BLOCKED=str(blocked)),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    key = _wait_for(blocked, process)
    finished_before = _finished_keys(tracking)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("interrupted:"), err
    assert f"checkpoint at iteration {at}" in lines[0]
    client = MlflowClient(tracking_uri=tracking)
    assert _finished_keys(tracking) == finished_before  # nothing FINISHED that is not finished
    assert not _finished_keys(tracking) - _finished_keys(uninterrupted)
    [killed] = [
        r
        for r in client.search_runs(
            [e.experiment_id for e in client.search_experiments()], filter_string=f"tags.`{names.TAG_KEY}` = '{key}'"
        )
    ]
    assert killed.info.status == "KILLED" and "SIGTERM" in killed.data.tags[names.TAG_ERROR]
    assert [(r["step"], r["iteration"]) for r in json.loads(killed.data.tags[names.TAG_CHECKPOINTS])][-1] == (1, at)
    [workflow] = client.search_runs([killed.info.experiment_id], filter_string="tags.`mlprune.recipe` != ''")
    assert workflow.info.status == "FAILED"
    again = subprocess.run(
        [sys.executable, "-m", "mlprune", "run", RECIPE, *ARGS],
        env=_env(tracking),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    [state] = [
        r
        for r in client.search_runs([killed.info.experiment_id], filter_string=f"tags.`{names.TAG_KEY}` = '{key}'")
        if r.info.status == "FINISHED"
    ]
    assert state.data.metrics[names.M_RESUMED_FROM_ITERATION] == at
    assert_same_states(uninterrupted, tracking)
    assert_no_checkpoint_left(tracking, tmp_path / "mlruns")
