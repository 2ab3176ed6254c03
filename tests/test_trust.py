"""Trust nothing that is read: tampered tensors with consistent hash records, checkpoints of another state
or beyond their training, hostile input (one line, exit 2), lineage cycles, data fingerprints, read-only stores.

Every tampering here rewrites its file AND the hash record the way the store writes it (state.json's
``files``, the ``mlprune.sha256.*`` tags), so only the content checks can catch it. The states come
from one small store built once for the module; each test works on a copy of it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file, save
from test_faults import TINY, invoke, invoke_error, state_runs, write

from mlprune import names
from mlprune.errors import SpecError


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, _empty_store_db, _session_cache):
    """A store of the tiny recipe's four states (init, train, prune sharing its weights, reinit+train)."""
    folder = tmp_path_factory.mktemp("pristine")
    shutil.copy(_empty_store_db, folder / "mlflow.db")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder}/mlflow.db")
        patch.setenv("MLPRUNE_CACHE_DIR", str(_session_cache))
        patch.setenv("MLPRUNE_FIGURES", "0")
        for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
            patch.delenv(name, raising=False)
        result = invoke("run", write(folder))
        assert result.exit_code == 0, result.output
    return folder


@pytest.fixture
def store(pristine, tmp_path, monkeypatch):
    """A copy of the pristine store (artifact locations moved with it): its tracking URI; cwd = its folder."""
    folder = tmp_path / "store"
    shutil.copytree(pristine, folder)
    with sqlite3.connect(folder / "mlflow.db") as db:
        db.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (str(pristine), str(folder)))
        db.execute(
            "UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)", (str(pristine), str(folder))
        )
    uri = f"sqlite:///{folder}/mlflow.db"
    monkeypatch.chdir(folder)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLPRUNE_FIGURES", "0")
    for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    return uri


def runs_by_kind(uri: str) -> dict:
    return {r.data.tags[names.TAG_KIND]: r for r in state_runs(uri)}


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def rewrite(uri: str, run, file: str, content: bytes) -> None:
    """Replace a state's file and record its hash as the store does: state.json's ``files`` and the tags."""
    folder = Path(run.info.artifact_uri)
    (folder / file).write_bytes(content)
    spec = json.loads((folder / names.STATE_FILE).read_text())
    spec["files"][file] = sha(content)
    state = json.dumps(spec, indent=1, sort_keys=True).encode()
    (folder / names.STATE_FILE).write_bytes(state)
    client = MlflowClient(tracking_uri=uri)
    client.set_tag(run.info.run_id, names.TAG_HASH_PREFIX + file, sha(content))
    client.set_tag(run.info.run_id, names.TAG_HASH_PREFIX + names.STATE_FILE, sha(state))


def tensors(run, file: str) -> dict:
    return {k: v.clone() for k, v in load_file(str(Path(run.info.artifact_uri) / file)).items()}


def bool_byte_7(masks: dict) -> bytes:
    """A masks file whose header says bool but whose first mask holds the byte 7."""
    content = bytearray(save(masks))
    size = int.from_bytes(content[:8], "little")
    first = min(
        json.loads(content[8 : 8 + size]).items(),
        key=lambda e: e[1]["data_offsets"][0] if e[0] != "__metadata__" else 1 << 62,
    )
    content[8 + size + first[1]["data_offsets"][0]] = 7
    return bytes(content)


def first_bias(weights: dict) -> str:
    return next(k for k in weights if k.endswith(".bias"))


# (state kind, file, change of its tensors -> bytes, fragment of the one-line error)
TAMPERING = {
    "masks uint8 with a 7": (
        "prune",
        names.MASKS_FILE,
        lambda t: save({k: v.to(torch.uint8) * 7 for k, v in t.items()}),
        "is U8, not bool",
    ),
    "masks bool holding a 7": ("prune", names.MASKS_FILE, bool_byte_7, "holds values other than true"),
    "masks float32": (
        "prune",
        names.MASKS_FILE,
        lambda t: save({k: v.float() for k, v in t.items()}),
        "is F32, not bool",
    ),
    "masks all false": (
        "prune",
        names.MASKS_FILE,
        lambda t: save({k: torch.zeros_like(v) for k, v in t.items()}),
        "every mask is all false",
    ),
    "root mask not all true": (
        "init",
        names.MASKS_FILE,
        lambda t: save({k: v.clone().index_fill_(0, torch.tensor([0]), False) for k, v in t.items()}),
        "of a root state is not all true",
    ),
    "weights float64": ("train", names.WEIGHTS_FILE, lambda t: save({k: v.double() for k, v in t.items()}), "is F64"),
    "weights float16": ("train", names.WEIGHTS_FILE, lambda t: save({k: v.half() for k, v in t.items()}), "is F16"),
    "root weights float64": (
        "init",
        names.WEIGHTS_FILE,
        lambda t: save({k: v.double() for k, v in t.items()}),
        "is F64, not float32",
    ),
    "an extra tensor": (
        "train",
        names.WEIGHTS_FILE,
        lambda t: save({**t, "extra": torch.zeros(3)}),
        "holds 'extra', which the architecture does not have",
    ),
    "a missing bias": (
        "train",
        names.WEIGHTS_FILE,
        lambda t: save({k: v for k, v in t.items() if k != first_bias(t)}),
        "lacks '",
    ),
    "a wrong-shape bias": (
        "train",
        names.WEIGHTS_FILE,
        lambda t: save({k: torch.zeros(len(v) + 1) if k == first_bias(t) else v for k, v in t.items()}),
        "the architecture's is F32",
    ),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_tensors_with_a_consistent_hash_record_are_checked_by_content(case, store, tmp_path):
    kind, file, change, fragment = TAMPERING[case]
    run = runs_by_kind(store)[kind]
    rewrite(store, run, file, change(tensors(run, file)))
    checked = invoke("verify")
    assert checked.exit_code == 1, checked.output
    [line] = [text for text in checked.output.splitlines() if text.startswith(f"broken: {run.info.run_id[:8]}")]
    assert fragment in line and run.info.run_id in line, line
    line = invoke_error("export", run.info.run_id, str(tmp_path / "out"))
    assert fragment in line and run.info.run_id in line, line
    assert not (tmp_path / "out" / names.WEIGHTS_FILE).exists()


def test_a_child_is_never_finished_from_tampered_masks(store):
    runs = runs_by_kind(store)
    rewrite(
        store,
        runs["prune"],
        names.MASKS_FILE,
        save({k: v.to(torch.uint8) * 7 for k, v in tensors(runs["prune"], names.MASKS_FILE).items()}),
    )
    MlflowClient(tracking_uri=store).delete_run(runs["reinit+train"].info.run_id)  # its child is to be computed
    rerun = invoke("run", "tiny.yaml")
    assert rerun.exit_code == 0, rerun.output
    assert "is U8, not bool" in rerun.output and runs["prune"].info.run_id[:8] in rerun.output
    assert rerun.output.strip().splitlines()[-1] == "4 states: 2 computed, 2 reused"
    bad = MlflowClient(tracking_uri=store).get_run(runs["prune"].info.run_id)
    assert bad.info.status == "FAILED" and "is U8, not bool" in bad.data.tags[names.TAG_INVALID]
    for run in state_runs(store):
        assert 0.0 <= run.data.metrics["sparsity"] <= 1.0, run.data.metrics
    assert invoke("verify").exit_code == 0


# ---- checkpoints: their tensors carry their key; iteration, dtypes and shapes checked before resuming -------
# fixtures, which pytest finds here by name: stop_at (the tests take it as a parameter) and the autouse
# _every_due_checkpoint (the checkpoints of these tests do not depend on their timing)
from test_resume import ROOT, SGD, _every_due_checkpoint, _rewrite_record, _stopped_with_checkpoints, stop_at  # noqa: E402, F401


def _tamper_checkpoint(folder: Path, change) -> dict:
    """change(meta, tensors, metadata) on a checkpoint's files, written back; their new SHA-256."""
    meta = json.loads((folder / names.CHECKPOINT_META_FILE).read_text())
    content = (folder / names.CHECKPOINT_TENSORS_FILE).read_bytes()
    size = int.from_bytes(content[:8], "little")
    metadata = json.loads(content[8 : 8 + size]).get("__metadata__", {})
    loaded = {k: v.clone() for k, v in load_file(str(folder / names.CHECKPOINT_TENSORS_FILE)).items()}
    change(meta, loaded, metadata)
    files = {
        names.CHECKPOINT_META_FILE: json.dumps(meta, sort_keys=True).encode(),
        names.CHECKPOINT_TENSORS_FILE: save(loaded, metadata=metadata),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: sha(data) for name, data in files.items()}


def _beyond(meta, loaded, metadata):
    meta["iteration"], metadata["iteration"] = 1_000_000, "1000000"  # consistent: only the range check sees it


def _foreign(meta, loaded, metadata):
    metadata["key"] = "0" * 32  # the tensors of another state's checkpoint (another seed's, say)


def _uint8_masks(meta, loaded, metadata):
    for name in [n for n in loaded if n.startswith("mask/")]:
        loaded[name] = loaded[name].to(torch.uint8) * 7


@pytest.mark.parametrize(
    "change, fragment",
    [
        (_beyond, "is outside its training (iterations 0 to 24)"),
        (_foreign, "its tensors are of state 00000000"),
        (_uint8_masks, "is torch.uint8, not bool"),
    ],
)
def test_a_checkpoint_that_does_not_belong_is_never_resumed(
    change,
    fragment,
    tracking,
    stop_at,  # noqa: F811
    caplog,
    _empty_store_db,
    tmp_path,
):
    import logging

    from mlprune import Experiment, Recipe

    shutil.copy(_empty_store_db, tmp_path / "other.db")
    plain = Experiment("plain", tracking_uri=f"sqlite:///{tmp_path}/other.db").init(**ROOT).apply(Recipe.train(**SGD))
    experiment = Experiment("tampered", checkpoint_every="4it")
    root, killed = _stopped_with_checkpoints(experiment, stop_at, 18)
    folder = Path(killed.info.artifact_uri) / names.CHECKPOINTS_DIR
    digests = {label: _tamper_checkpoint(folder / label, change) for label in ("0-16", "0-18")}
    _rewrite_record(experiment, killed, lambda r: r["files"].update(digests[f"{r['step']}-{r['iteration']}"]))
    with caplog.at_level(logging.WARNING, logger="mlprune.checkpoint"):
        resumed = root.apply(Recipe.train(**SGD))
    lines = [r.getMessage() for r in caplog.records]
    assert lines and all("\n" not in line for line in lines) and any(fragment in line for line in lines), lines
    assert resumed.metrics[names.M_RESUMED_FROM_ITERATION] == 0
    assert resumed.metrics[names.M_TEST_LOSS] == plain.metrics[names.M_TEST_LOSS]
    assert all(torch.equal(resumed.weights[k], plain.weights[k]) for k in plain.weights)


# ---- a DAG that is not a DAG: parent tags edited into cycles -------------------------------------------------
def _serve(folder: Path, uri: str):
    from test_lineage_browser import free_port, start_mlprune_server

    port = free_port()
    server = start_mlprune_server(folder, uri, port)
    return server, f"http://127.0.0.1:{port}"


def _get(url: str, server) -> tuple[int, str]:
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_parent_tags_that_make_cycles_are_drawn_marked_and_warned_about(store, tmp_path, monkeypatch):
    import os
    import signal

    client = MlflowClient(tracking_uri=store)
    runs = {kind: run.info.run_id for kind, run in runs_by_kind(store).items()}
    client.set_tag(runs["init"], names.TAG_PARENT_RUN, runs["train"])  # init <- train <- init
    client.set_tag(runs["reinit+train"], names.TAG_PARENT_RUN, runs["reinit+train"])  # a state its own parent
    # an innocent experiment whose state's weights source is in the broken one
    innocent = client.create_experiment("innocent")
    other = client.create_run(
        innocent,
        tags={names.TAG_KEY: "f" * 32, names.TAG_KIND: "train", names.TAG_PARENT_PREFIX + "weights": runs["prune"]},
    )
    client.set_terminated(other.info.run_id, "FINISHED")
    experiment = client.get_run(runs["init"]).info.experiment_id
    # the CLI: every state once, each broken edge named
    shown = invoke("tree")
    assert shown.exit_code == 0, shown.output
    assert all(sum(line.split()[0] == run[:8] for line in shown.stdout.splitlines()) == 1 for run in runs.values())
    warned = [line for line in shown.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == 2 and all("'cycle'" in line for line in warned), shown.stderr
    assert any(f"state {runs['reinit+train'][:8]} is its own parent" in line for line in warned)
    assert any(f"the parent {runs['train'][:8]} of state {runs['init'][:8]}" in line for line in warned)
    checked = invoke("verify")
    assert checked.exit_code == 1 and checked.output.count("broken lineage: ") == 2, checked.output
    # the report's sections that draw the lineage and list every state (the others follow no parent tag
    # beyond one level, and draw figures for seconds: test_report renders them)
    from mlprune.report.sections import SECTIONS

    monkeypatch.setattr(SECTIONS, "values", lambda: [SECTIONS["lineage"], SECTIONS["states"]])
    report = invoke("report", "mlprune", str(tmp_path / "report"))
    assert report.exit_code == 0, report.output
    assert "own parent" in (tmp_path / "report" / "report.html").read_text()
    # the real server: every page answers, draws every state and names the broken edges
    server, base = _serve(tmp_path, store)
    try:
        for page in (
            f"/mlprune/lineage/{experiment}",
            f"/mlprune/lineage/{runs['train']}",
            f"/mlprune/lineage/{innocent}",
            "/mlprune/lineage/",
        ):
            status, html = _get(base + page, server)
            assert status == 200, (page, html[-2000:])
            if page != "/mlprune/lineage/" and page != f"/mlprune/lineage/{innocent}":
                assert "Broken lineage" in html and all(f'data-id="{run}"' in html for run in runs.values()), page
        status, index = _get(base + "/mlprune/lineage/", server)
        assert f"<td>{experiment}</td><td>4</td>" in index and f"<td>{innocent}</td><td>1</td>" in index
        client.delete_experiment(experiment)  # its runs are still the innocent one's weights source
        status, html = _get(f"{base}/mlprune/lineage/{innocent}", server)
        assert status == 200 and "Broken lineage" in html, html[-2000:]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


# ---- data identity: a fingerprint of the data every state was computed on -------------------------------------
MNIST_TINY = """\
params: {seed: 0, rounds: 1, data_dir: null}
root: {model: lenet_300_100, dataset: mnist, seed: $seed, data_dir: $data_dir}
train: {epochs: 1, lr: 0.05, batch_size: 20}
rounds: $rounds
prune: {method: l1_unstructured, amount: 0.5}
reinit: {strategy: rewind, to: root}
"""


def _state_specs(uri: str) -> list[dict]:
    return [json.loads((Path(r.info.artifact_uri) / names.STATE_FILE).read_text()) for r in state_runs(uri)]


def test_states_record_their_data_and_other_data_is_refused_unless_accepted(tracking, tmp_path, monkeypatch):
    from test_data import make_mnist

    monkeypatch.setenv("MLPRUNE_VERIFY_MD5", "0")
    monkeypatch.setenv("MLPRUNE_FIGURES", "0")  # the data each state records is checked here, no figure
    make_mnist(tmp_path / "a", seed=0)
    shutil.copytree(tmp_path / "a", tmp_path / "a-copy")  # the same content elsewhere
    make_mnist(tmp_path / "b", seed=1)  # the same sizes, other images
    recipe = write(tmp_path, MNIST_TINY, "mnist.yaml")
    first = invoke("run", recipe, "-P", f"data_dir={tmp_path / 'a'}")
    assert first.exit_code == 0, first.output
    fingerprints = {spec[names.STATE_DATA_FINGERPRINT] for spec in _state_specs(tracking)}
    assert len(fingerprints) == 1 and next(iter(fingerprints)).startswith("40+20:"), fingerprints
    from mlprune.data import load_data  # the same content in another folder is the same data

    assert load_data("mnist", data_dir=tmp_path / "a-copy").spec["fingerprint"] in fingerprints
    runs = len(state_runs(tracking, status=None))
    line = invoke_error("run", recipe, "-P", f"data_dir={tmp_path / 'b'}", "-P", "rounds=2")
    assert "was computed on other data (40+20:" in line and "--accept-data-change" in line, line
    assert len(state_runs(tracking, status=None)) == runs  # nothing created
    accepted = invoke("run", recipe, "-P", f"data_dir={tmp_path / 'b'}", "-P", "rounds=2", "--accept-data-change")
    assert accepted.exit_code == 0 and "accepted (--accept-data-change)" in accepted.stderr, accepted.output
    changed = [spec for spec in _state_specs(tracking) if names.STATE_DATA_CHANGE in spec]
    assert changed and all(spec[names.STATE_DATA_CHANGE]["from"] in fingerprints for spec in changed)
    assert all(
        spec[names.STATE_DATA_CHANGE]["to"] == spec[names.STATE_DATA_FINGERPRINT] not in fingerprints
        for spec in changed
    )


@pytest.mark.parametrize(
    "value", ["\u0661\u0662", "\uff11\uff12", "1_0", "4294967296", "4611686018427387904", "-1", "0x10", "1:30"]
)
def test_seeds_are_ascii_decimal_integers_below_2_to_the_32(value, tracking, tmp_path):
    recipe = write(tmp_path)
    line = invoke_error("validate", recipe, "-P", f"seed={value}")
    assert "seed must be an integer" in line, line
    assert invoke("validate", recipe, "-P", "seed=4294967295").exit_code == 0
    line = invoke_error("validate", write(tmp_path, TINY.replace("seed: 0,", "seed: 1_0,"), "underscore.yaml"))
    assert "seed must be an integer" in line and "'1_0'" in line, line
    line = invoke_error("sweep", recipe, "--seeds", "4294967296")
    assert "--seeds must look like" in line, line


# ---- the rest: tracebacks that became one line, what was accepted silently -------------------------------------
def _extends(tmp_path: Path, value: str) -> str:
    return write(tmp_path, f"extends: {value}\nrounds: 1\n", "child.yaml")


def _special_files(tmp_path: Path) -> None:
    import os

    (tmp_path / "loop1.yaml").symlink_to("loop2.yaml")
    (tmp_path / "loop2.yaml").symlink_to("loop1.yaml")
    os.mkfifo(tmp_path / "fifo.yaml")


ONE_LINE = {  # name: (args, environment, fragment of the one line)
    "scheduler address": (["run", "tiny.yaml", "--scheduler", "tcp://[::1"], {}, "is not a scheduler address"),
    "experiment id": (
        ["run", "tiny.yaml"],
        {"MLFLOW_EXPERIMENT_ID": "abc"},
        "MLFLOW_EXPERIMENT_ID must be an experiment id (digits",
    ),
    "extends a number": (["validate", "child.yaml:3"], {}, "extends must be the file name of another recipe"),
    "extends null": (["validate", "child.yaml:null"], {}, "got None"),
    "extends a list": (["validate", "child.yaml:[a]"], {}, "got ['a']"),
    "extends a mapping": (["validate", "child.yaml:{a: 1}"], {}, "got {'a': 1}"),
    "extends a bool": (["validate", "child.yaml:true"], {}, "got True"),
    "extends a symlink loop": (["validate", "child.yaml:loop1.yaml"], {}, "Too many levels of symbolic links"),
    "extends a NUL byte": (["validate", 'child.yaml:"a\\0b"'], {}, "a file name cannot contain a NUL byte"),
    "extends a long name": (["validate", f"child.yaml:{'x' * 300}.yaml"], {}, "File name too long"),
    "extends a FIFO": (["validate", "child.yaml:fifo.yaml"], {}, "is a named pipe (FIFO), not a regular file"),
    "extends /dev/zero": (["validate", "child.yaml:/dev/zero"], {}, "is a character device, not a regular file"),
    "a FIFO recipe": (["validate", "fifo.yaml"], {}, "recipe file 'fifo.yaml' is a named pipe (FIFO)"),
    "/dev/zero recipe": (["validate", "/dev/zero"], {}, "recipe file '/dev/zero' is a character device"),
    "schedule beyond the rounds": (
        ["validate", "schedule.yaml:5-9"],
        {},
        "names no round of this recipe (rounds 1..1)",
    ),
    "schedule reversed": (["validate", "schedule.yaml:3-1"], {}, "is reversed; write low-high"),
}


@pytest.mark.parametrize("case", list(ONE_LINE))
def test_what_was_a_traceback_or_accepted_is_one_line_exit_2(case, store, monkeypatch):
    args, env, fragment = ONE_LINE[case]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    folder = Path.cwd()
    _special_files(folder)
    args = list(args)
    if args[1].startswith("child.yaml:"):
        args[1] = _extends(folder, args[1].split(":", 1)[1])
    if args[1].startswith("schedule.yaml:"):
        args[1] = write(
            folder,
            TINY + f"schedule:\n  - {{rounds: '{args[1].split(':', 1)[1]}', prune: {{amount: 0.5}}}}\n",
            "schedule.yaml",
        )
    before = {r.info.run_id: r.info.status for r in state_runs(store, status=None)}
    line = invoke_error(*args)
    assert fragment in line, line
    assert {r.info.run_id: r.info.status for r in state_runs(store, status=None)} == before


def test_a_database_store_without_its_driver_names_the_package(tmp_path):
    import importlib.util

    if importlib.util.find_spec("psycopg"):  # what MLflow imports for postgresql://
        pytest.skip("a PostgreSQL driver is installed here")
    from mlprune.store import Store

    with pytest.raises(SpecError) as error:
        Store(tracking_uri="postgresql://user@127.0.0.1:1/db")
    assert "needs its database driver, the Python package psycopg" in str(error.value)
    assert "pip install" in str(error.value) and "\n" not in str(error.value)


def test_an_image_size_beyond_the_machine_is_one_line_before_any_run(tracking, tmp_path):
    import subprocess
    import sys
    import time

    recipe = write(tmp_path, TINY.replace("test_size: 64}", "test_size: 64, image_size: 8192}"), "big.yaml")
    started = time.monotonic()
    result = subprocess.run(
        ["bash", "-c", f"ulimit -v 6000000; exec {sys.executable} -m mlprune run {recipe}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    # counted before anything is allocated (the network alone beyond the machine's memory), or caught when
    # an allocation fails (here under a 6 GB address-space limit)
    assert "a smaller image_size or model fits" in line and "Traceback" not in result.stderr, line
    assert time.monotonic() - started < 60
    assert not state_runs(tracking, status=None)


def test_compare_refuses_states_of_different_architectures(store):
    from mlprune import Experiment

    other = Experiment(tracking_uri=store).init(model="conv2", dataset="digits", train_size=128, test_size=64)
    root = runs_by_kind(store)["init"].info.run_id
    line = invoke_error("compare", root, other.run_id)
    assert "states of different architectures" in line and "lenet_300_100" in line and "conv2" in line, line


def test_interpolate_without_b_names_what_is_needed():
    from mlprune.spec.steps import resolve_interpolate

    with pytest.raises(SpecError) as error:
        resolve_interpolate({"alphas": 3})
    assert "interpolate option 'b' is required (given: alphas)" in str(error.value)
    assert "a run id, state:<node>, root or parent" in str(error.value)


def test_a_divergence_fails_at_its_first_non_finite_loss(tracking, tmp_path):
    import re
    import time

    started = time.monotonic()
    line = invoke_error("run", write(tmp_path), "-P", "lr=1000000.0")
    assert time.monotonic() - started < 10
    found = re.search(r"the train loss of iteration (\d+) is", line)
    assert found and int(found.group(1)) < 4, line  # an epoch of the tiny recipe is 4 iterations
    assert not [r for r in state_runs(tracking) if r.data.tags[names.TAG_KIND] == "train"]


def test_a_read_only_store_reads_and_says_when_a_write_is_needed(store, tmp_path):
    import os
    import subprocess

    folder = Path.cwd()
    root = runs_by_kind(store)["init"].info.run_id
    # a commit still in the WAL file (its writer open, no checkpoint): a reader must see it there
    keeper = sqlite3.connect(folder / "mlflow.db", isolation_level=None)
    keeper.execute("PRAGMA journal_mode=WAL")
    keeper.execute("PRAGMA wal_autocheckpoint=0")
    keeper.execute("UPDATE runs SET name = 'renamed-in-the-wal' WHERE run_uuid = ?", (root,))
    mounted = False
    if os.geteuid() == 0:  # root writes through permissions: a read-only bind mount is a read-only filesystem
        target = tmp_path / "ro"
        target.mkdir()
        done = subprocess.run(["mount", "--bind", str(folder), str(target)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"no bind mount here: {done.stderr.decode()[:200]}")
        mounted = True
        subprocess.run(["mount", "-o", "remount,ro,bind", str(target)], check=True)
        uri = store.replace(str(folder), str(target))
        os.chdir(target)
    else:
        subprocess.run(["chmod", "-R", "a-w", str(folder)], check=True)
        uri = store
    try:
        os.environ["MLFLOW_TRACKING_URI"] = uri
        cached = invoke("run", "tiny.yaml")
        assert cached.exit_code == 0 and cached.output.strip().endswith("4 reused"), cached.output
        assert "read-only: this run's workflow record is not written" in cached.stderr
        shown = invoke("tree")
        assert shown.exit_code == 0 and "renamed-in-the-wal" in shown.stdout, shown.output
        checked = invoke("verify")
        assert checked.exit_code == 0 and "4 states checked" in checked.output, checked.output
        line = invoke_error("run", "tiny.yaml", "-P", "rounds=2")
        assert "is read-only (its filesystem or its file): this needs to write to it" in line, line
    finally:
        keeper.close()
        os.chdir(folder)
        os.environ["MLFLOW_TRACKING_URI"] = store
        if mounted:
            subprocess.run(["umount", "--lazy", str(target)], check=True)  # the store's readers may hold it open
        else:
            subprocess.run(["chmod", "-R", "u+w", str(folder)], check=True)
