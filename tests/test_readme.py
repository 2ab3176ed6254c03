"""README.md is a tutorial whose every code block is real: the recipe it shows is the file, the
Python block learns what it says, and the shell blocks run in order, as a new user would type
them, on a fresh store. A block that cannot run here (a server, a GPU, a cluster, data that is not
on disk) carries `<!-- readme-test: skip: REASON -->` on the line before it, and the reason says
which test covers it instead.

The shell blocks run as two groups, each in README order in a fresh directory of its own, so that two
xdist workers share them: here the CI command's `mlflow run` and the blocks that read the study it made
(`READS_THE_CI_STUDY`); in tests/test_readme_commands.py every other block (each makes states of its own)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
LANGUAGES = {"bash", "yaml", "python", "text"}


@dataclass
class Block:
    language: str
    body: str
    skip: str | None  # the reason, for a block this test does not run
    line: int


def blocks() -> list[Block]:
    found = []
    pattern = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
    for match in pattern.finditer(README):
        before = README[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = None
        if before == "<!-- ci:commands -->":
            skip = "CI runs it (.ci/run), on a fresh clone"
        elif marker := re.fullmatch(r"<!-- readme-test: skip: (.+) -->", before):
            skip = marker.group(1).strip()
        found.append(Block(match.group(1), match.group(2), skip, README[: match.start()].count("\n") + 1))
    return found


def of(language: str, *, runnable: bool = True) -> list[Block]:
    return [b for b in blocks() if b.language == language and (b.skip is None or not runnable)]


def test_every_block_has_a_language_and_is_run_or_says_why_not():
    assert len(blocks()) >= 10
    for block in blocks():
        assert block.language in LANGUAGES, f"README.md:{block.line}: a code block without a known language"
        assert block.skip is None or len(block.skip) > 20, f"README.md:{block.line}: a skip needs its reason"
    # the set-up, server, MNIST-paper, GPU, cluster and plugin-install blocks; anything else runs
    assert sum(b.skip is not None for b in blocks()) <= 6


def test_the_recipe_shown_is_the_file_the_entry_point_runs():
    shown = of("yaml")
    assert shown
    for block in shown:
        name = yaml.safe_load(block.body)["name"]
        assert block.body == (REPO / "recipes" / f"{name}.yaml").read_text(), f"README.md:{block.line}"


def test_the_python_block_learns_and_prints_what_it_says(tracking, capsys):
    [code] = of("python")
    namespace: dict = {}
    exec(compile(code.body, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    printed = [float(v) for v in capsys.readouterr().out.split()]
    promised = [float(v) for v in re.search(r"# about ([\d. ]+)$", code.body, re.M).group(1).split()]
    assert len(printed) == len(promised)
    for value, claim in zip(printed, promised):
        assert abs(value - claim) <= 0.03, (printed, promised)
    ticket = namespace["ticket"]
    assert ticket.metrics["test_accuracy"] > 0.9  # the lottery ticket learns (SGD with momentum)
    weights = dict(namespace["model"].named_parameters())
    for name, mask in namespace["masks"].items():
        assert bool((weights[name].detach()[~mask] == 0).all()), name


def _shell(command: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


def _without_ids_and_numbers(text: str) -> list[str]:
    text = re.sub(r"\b[0-9a-f]{8}\b", "ID", text)
    return [re.sub(r"\d+\.\d+", "N", line).rstrip() for line in text.strip().splitlines()]


# The shell blocks that read the study the CI command's `mlflow run` made (they run after it, in a fresh
# directory); every other shell block makes states of its own (tests/test_readme_commands.py).
READS_THE_CI_STUDY = ("mlprune tree", "mlflow run . -e lt_structuredL1 --env-manager local\n", "mlprune verify")


def shell_blocks(*, reads_the_ci_study: bool) -> list[Block]:
    """The runnable shell blocks of one group, in README order."""
    return [b for b in of("bash") if b.body.startswith(READS_THE_CI_STUDY) == reads_the_ci_study]


def fresh_directory(tmp_path: Path) -> dict:
    """`tmp_path` as a new user's clone (MLproject, recipes, examples; MLflow's default store ./mlflow.db,
    created by the first command): the environment to run the blocks with."""
    for name in ("MLproject", "conda.yaml", "recipes", "examples"):
        (tmp_path / name).symlink_to(REPO / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_") and k != "MLPRUNE_DATA_DIR"}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", MLFLOW_DISABLE_TELEMETRY="true")
    return env


def run_block(block: Block, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    result = _shell(block.body, cwd, env)
    assert result.returncode == 0, (f"README.md:{block.line}", block.body, result.stderr[-3000:])
    return result


def _state_runs(client, status: str | None = "FINISHED") -> list:
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, filter_string="tags.`mlprune.key` != ''", max_results=10000)
    return [r for r in runs if status is None or r.info.status == status]


def _the_study_reads_in_the_ui(tmp_path: Path) -> None:
    """What the CI command's `mlflow run` (no --experiment-name: MLflow's Default holds its run) left for
    the UI: the states in `mlprune` beside their workflow run, linked both ways with MLflow's run; unique
    short names, params to filter and compare by, descriptions linking the parents; 8-character prefixes."""
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    from mlprune.cli import main

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    states = _state_runs(client)
    mlprune_id = client.get_experiment_by_name("mlprune").experiment_id
    assert len(states) == 8 and {r.info.experiment_id for r in states} == {mlprune_id}
    [workflow] = client.search_runs([mlprune_id], filter_string="tags.`mlprune.recipe` = 'lt_structuredL1'")
    assert workflow.info.run_name == "lt_structuredL1"
    launcher = client.get_run(workflow.data.tags["mlprune.launcher"])
    assert launcher.info.experiment_id == "0" and launcher.data.tags["mlprune.workflow"] == workflow.info.run_id
    assert workflow.info.run_id in launcher.data.tags["mlflow.note.content"]
    assert {r.data.tags["mlprune.workflow"] for r in states} == {workflow.info.run_id}
    names = [r.info.run_name for r in states]
    assert len(set(names)) == len(names) and "r2 prune l1-struct 20%" in names and "r2 rewind+train" in names
    pruned = next(r for r in states if r.info.run_name == "r2 prune l1-struct 20%")
    assert pruned.data.params["prune.method"] == "ln_structured" and pruned.data.params["round"] == "2"
    assert pruned.data.params["prune.amount"] == "0.2" and pruned.data.params["prune.n"] == "1"
    retrained = next(r for r in states if r.info.run_name == "r2 rewind+train")
    assert retrained.data.params["reinit.strategy"] == "rewind" and retrained.data.params["train.epochs"] == "10"
    note = retrained.data.tags["mlflow.note.content"]
    assert pruned.info.run_id[:8] in note and f"/mlprune/lineage/{retrained.info.run_id}" in note
    assert retrained.data.tags["mlprune.parent.weights"][:8] in note

    prefix = retrained.info.run_id[:8]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        shown = CliRunner().invoke(main, ["show", prefix])
        assert shown.exit_code == 0 and retrained.info.run_id in shown.output, shown.output
        assert "param reinit.strategy = rewind" in shown.output
        exported = CliRunner().invoke(main, ["export", prefix, str(tmp_path / "ticket-by-prefix")])
        assert exported.exit_code == 0, exported.output
    assert (tmp_path / "ticket-by-prefix" / "weights.safetensors").is_file()


def _the_report_has_every_round(tmp_path: Path) -> None:
    assert (tmp_path / "report" / "report.html").is_file()
    series = json.loads((tmp_path / "report" / "report.json").read_text())["series"]
    [lt] = [s for s in series if s["recipe"] == "lt_structuredL1"]
    assert [r["round"] for r in lt["rounds"]] == [0, 1, 2, 3]
    assert all(r["test_accuracy"] is not None and r["run_id"] for r in lt["rounds"])
    remaining = [r["remaining"] for r in lt["rounds"]]
    assert remaining[0] == 1.0 and remaining == sorted(remaining, reverse=True) and len(set(remaining)) == 4


@pytest.mark.slow
def test_the_ci_command_then_the_blocks_that_read_its_study_run_in_order_on_a_fresh_store(tmp_path):
    """The tutorial as typed: the CI command's `mlflow run`, then the shell blocks that look at, re-run and
    verify the study it made, in a fresh directory."""
    env = fresh_directory(tmp_path)
    [ci] = [b for b in blocks() if b.skip and b.skip.startswith("CI runs it")]
    first = ci.body.splitlines()[0].split(" && ")[-1]
    assert first == "mlflow run . -e lt_structuredL1 --env-manager local"
    result = _shell(first, tmp_path, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "8 states: 8 computed, 0 reused"
    _the_study_reads_in_the_ui(tmp_path)

    group = shell_blocks(reads_the_ci_study=True)
    assert len(group) == len(READS_THE_CI_STUDY)  # each prefix still starts a block of the README
    shown_tree = of("text")[0].body
    for block in group:
        result = run_block(block, tmp_path, env)
        if block.body.startswith("mlprune tree"):
            # the tree printed is the one the README shows (run ids and figures vary with the store)
            printed = _without_ids_and_numbers(result.stdout)
            assert _without_ids_and_numbers(shown_tree) == printed[: len(shown_tree.strip().splitlines())]
            _the_report_has_every_round(tmp_path)
        if block.body.startswith("mlflow run . -e lt_structuredL1 --env-manager local\n"):
            summaries = [line for line in result.stdout.splitlines() if line.endswith(" reused")]
            assert summaries == ["8 states: 0 computed, 8 reused", "10 states: 2 computed, 8 reused"]
            # the entry point's re-run added no state run (none KILLED, none FAILED): 8, then 2 for round 4
            from mlflow.tracking import MlflowClient

            runs = _state_runs(MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"), status=None)
            assert len(runs) == 10 and {r.info.status for r in runs} == {"FINISHED"}
