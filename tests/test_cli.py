"""The CLI and the MLproject entry point, run for real against a temp store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from mlprune.cli import main
from mlprune.mlproject import render

REPO = Path(__file__).resolve().parents[1]
LT = str(REPO / "recipes" / "lt_structuredL1.yaml")


def state_runs(tracking_uri: str, status: str | None = "FINISHED"):
    client = MlflowClient(tracking_uri=tracking_uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, filter_string="tags.`mlprune.key` != ''", max_results=10000)
    return [r for r in runs if status is None or r.info.status == status]


def test_mlproject_is_generated_from_the_recipes():
    assert (REPO / "MLproject").read_text() == render(REPO / "recipes"), (
        "MLproject is stale: run `python -m mlprune.mlproject > MLproject`"
    )


def test_recipe_reference_is_rendered_from_the_declarations():
    from mlprune.reference import render as reference

    assert (REPO / "docs" / "recipes.md").read_text() == reference(), (
        "docs/recipes.md is stale: python -m mlprune.reference > docs/recipes.md"
    )
    text = reference()
    for fragment in (
        "`schedule_from`",
        "`lr_schedule`",
        "`ln_structured`",
        "`rewind`",
        "`resnet20`",
        "`cifar10`",
        "`compare` (an analysis)",
    ):
        assert fragment in text


@pytest.mark.slow
def test_mlflow_run_entry_point_builds_the_chain_in_the_named_experiment(tracking, tmp_path):
    # the states' runs are checked here; the workflow run's figures in tests/test_lineage.py
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "PATH": path, "MLPRUNE_FIGURES": "0"}
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "run",
        str(REPO),
        "-e",
        "lt_structuredL1",
        "--env-manager",
        "local",
        "--experiment-name",
        "lt-test",
        "-P",
        "rounds=2",
        "-P",
        "epochs=1",
    ]
    first = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    runs = state_runs(tracking)
    assert len(runs) == 2 * 2 + 2
    client = MlflowClient(tracking_uri=tracking)
    experiment = client.get_experiment_by_name("lt-test")
    assert {r.info.experiment_id for r in runs} == {experiment.experiment_id}
    by_id = {r.info.run_id: r for r in runs}
    roots = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(roots) == 1
    for run in runs:  # every state chains to the one root by parentRunId
        seen = run
        while "mlflow.parentRunId" in seen.data.tags:
            seen = by_id[seen.data.tags["mlflow.parentRunId"]]
        assert seen.info.run_id == roots[0].info.run_id
        names = {f.path for f in client.list_artifacts(run.info.run_id)}
        assert {"masks.safetensors", "state.json"} <= names
        assert {"test_accuracy", "sparsity", "duration_s"} <= set(run.data.metrics)
    # the entry point run again computes nothing and adds no state run: tests/test_readme.py (the README's
    # `mlflow run` twice, on the study of the CI command, which also checks the UI's names, params and links)


def test_cli_run_tree_show_export(tracking, tmp_path, monkeypatch):
    monkeypatch.setenv("MLPRUNE_FIGURES", "0")  # the workflow run's figures: tests/test_lineage.py
    runner = CliRunner()
    result = runner.invoke(main, ["run", LT, "-P", "rounds=1", "-P", "epochs=1", "-e", "cli"])
    assert result.exit_code == 0, result.output
    runs = state_runs(tracking)
    assert len(runs) == 4
    tree = runner.invoke(main, ["tree", "-e", "cli"])
    assert tree.exit_code == 0
    for run in runs:
        assert run.info.run_id[:8] in tree.output
    pruned = next(r for r in runs if r.data.tags["mlprune.kind"] == "prune")
    shown = runner.invoke(main, ["show", pruned.info.run_id])
    assert shown.exit_code == 0 and "ln_structured" in shown.output
    out = tmp_path / "export"
    exported = runner.invoke(main, ["export", pruned.info.run_id, str(out)])
    assert exported.exit_code == 0, exported.output
    weights = load_file(out / "weights.safetensors")
    masks = load_file(out / "masks.safetensors")
    assert (out / "state.json").exists()
    for name, mask in masks.items():  # weights resolved from the parent, masked
        assert (weights[name][~mask] == 0).all()
    table = runner.invoke(main, ["compare", "-e", "cli"])
    assert table.exit_code == 0, table.output
    rows = [line for line in table.output.splitlines() if line.startswith("lt_structuredL1")]
    assert len(rows) == 2 and "100.00%" in rows[0]  # round 0 (dense) and round 1
    # a workflow run records which state each plan node reached
    workflow = [
        r
        for r in MlflowClient(tracking_uri=tracking).search_runs([runs[0].info.experiment_id])
        if r.data.tags.get("mlprune.recipe") == "lt_structuredL1"
    ]
    assert len(workflow) == 1 and workflow[0].info.status == "FINISHED"


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["-P", "rounds=-1"], "rounds"),
        (["-P", "amount=1.5"], "1.5"),
        (["-P", "model=resnet9000"], "resnet9000"),
        (["-P", "dataset=nope"], "nope"),
        (["-P", "epochs=-3"], "-3"),
        (["-P", "wings=3"], "wings"),
        (["-P", "rounds"], "rounds"),
    ],
)
def test_bad_parameters_exit_2_with_one_line_and_run_nothing(tracking, args, fragment):
    result = CliRunner().invoke(main, ["run", LT, *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.output
    assert state_runs(tracking, status=None) == []


def test_bad_recipe_file_names_file_and_key(tmp_path, tracking):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(Path(LT).read_text().replace("reinit:", "reinitt:"))
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    assert result.exit_code == 2
    assert "bad.yaml" in result.output and "reinitt" in result.output
    recipe.write_text(Path(LT).read_text().replace("method: ln_structured", "method: ln_structurd"))
    result = CliRunner().invoke(main, ["run", str(recipe)])
    assert result.exit_code == 2 and "ln_structurd" in result.output and "prune" in result.output
    assert state_runs(tracking, status=None) == []


def test_every_command_has_help():
    runner = CliRunner()
    for command in main.commands:
        result = runner.invoke(main, [command, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output, command


def _write_mnist(folder: Path, n_train: int = 96, n_test: int = 32) -> None:
    """Tiny MNIST in the real IDX format (what torchvision's MNIST class reads)."""
    import numpy as np

    raw = folder / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def idx(name, array, magic):
        header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
        (raw / name).write_bytes(header + array.astype(np.uint8).tobytes())

    for split, n in (("train", n_train), ("t10k", n_test)):
        idx(f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), 2051)
        idx(f"{split}-labels-idx1-ubyte", rng.integers(0, 10, (n,)), 2049)


def test_a_roots_data_location_is_used_by_every_step_below_it(tracking, tmp_path):
    data = tmp_path / "elsewhere"
    _write_mnist(data)
    runner = CliRunner()
    root = runner.invoke(
        main, ["step", "init", "-o", "model=lenet_300_100", "-o", "dataset=mnist", "-o", f"data_dir={data}"]
    )
    assert root.exit_code == 0, root.output
    root_id = root.stdout.strip().splitlines()[-1]
    assert MlflowClient(tracking_uri=tracking).get_run(root_id).data.tags["mlprune.data_dir"] == str(data)
    # no data_dir given: the root's is used (it is not part of any key)
    pruned = runner.invoke(
        main, ["step", "prune", "--parent", root_id[:8], "-o", "method=l1_unstructured", "-o", "amount=0.5"]
    )
    assert pruned.exit_code == 0, pruned.output
    trained = runner.invoke(
        main, ["step", "train", "--parent", pruned.stdout.strip().splitlines()[-1], "-o", "epochs=1"]
    )
    assert trained.exit_code == 0, trained.output
    # the paper protocol without the files: where to get them, in one line, and nothing created
    before = len(state_runs(tracking, status=None))
    missing = runner.invoke(
        main,
        [
            "run",
            str(REPO / "recipes" / "lt_structuredL1.yaml"),
            "-P",
            "protocol=paper",
            "-P",
            f"data_dir={tmp_path / 'nothing'}",
        ],
    )
    assert missing.exit_code == 2
    line = missing.stderr.strip()
    assert "\n" not in line and "files not found" in line and "MLPRUNE_DOWNLOAD=1" in line
    assert len(state_runs(tracking, status=None)) == before


def test_mlprune_figures_0_turns_the_workflow_figures_off_unless_asked(tmp_path, monkeypatch):
    """MLPRUNE_FIGURES=0: no figures on the workflow run; --figures draws them anyway."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLPRUNE_FIGURES", "0")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "name: tiny\nparams: {seed: 0}\nroot: {model: lenet_300_100, dataset: digits, seed: $seed, "
        "train_size: 64, "
        "test_size: 32}\ntrain: {epochs: 1}\nrounds: 1\nprune: {method: l1_unstructured, amount: 0.2}\n"
        "reinit: {strategy: rewind, to: root}\n"
    )
    client = MlflowClient(tracking_uri=uri)

    def figures_of_last_workflow(*args):
        result = CliRunner().invoke(main, ["run", str(recipe), *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        [experiment] = [e for e in client.search_experiments() if e.name == "mlprune"]
        workflow = client.search_runs(
            [experiment.experiment_id],
            filter_string="tags.`mlprune.recipe` = 'tiny'",
            order_by=["attributes.start_time DESC"],
        )[0]
        return [f.path for f in client.list_artifacts(workflow.info.run_id, "figures")]

    assert figures_of_last_workflow() == []
    assert "figures/accuracy_vs_remaining.png" in figures_of_last_workflow("-P", "seed=1", "--figures")


def test_workers_alone_mean_a_local_cluster_and_nothing_means_this_process():
    from mlprune.cli import _scheduler

    assert _scheduler(None, None) == "sync"
    assert _scheduler(None, 2) == "processes"
    assert _scheduler("slurm", 4) == "slurm" and _scheduler("sync", None) == "sync"
