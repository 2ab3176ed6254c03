"""README.md is a tutorial whose every code block is real: the recipe it shows is the file, the
Python block learns what it says, and the shell blocks run in order, as a new user would type
them, on a fresh store. A block that cannot run here (a server, a GPU, a cluster, data that is not
on disk) carries `<!-- readme-test: skip: REASON -->` on the line before it, and the reason says
which test covers it instead."""

from __future__ import annotations

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


@pytest.mark.slow
def test_the_shell_blocks_run_in_order_on_a_fresh_store(tmp_path):
    """The tutorial as typed: the CI command's `mlflow run`, then every shell block, in a fresh
    directory (MLflow's default store ./mlflow.db, created by the first command)."""
    for name in ("MLproject", "conda.yaml", "recipes", "examples"):
        (tmp_path / name).symlink_to(REPO / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_") and k != "MLPRUNE_DATA_DIR"}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", MLFLOW_DISABLE_TELEMETRY="true")

    [ci] = [b for b in blocks() if b.skip and b.skip.startswith("CI runs it")]
    first = ci.body.splitlines()[0].split(" && ")[-1]
    assert first == "mlflow run . -e lt_structuredL1 --env-manager local"
    result = _shell(first, tmp_path, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "8 states: 8 computed, 0 reused"

    shown_tree = of("text")[0].body
    for block in of("bash"):
        result = _shell(block.body, tmp_path, env)
        assert result.returncode == 0, (f"README.md:{block.line}", block.body, result.stderr[-3000:])
        if block.body.startswith("mlprune tree"):
            # the tree printed is the one the README shows (run ids and figures vary with the store)
            printed = _without_ids_and_numbers(result.stdout)
            assert _without_ids_and_numbers(shown_tree) == printed[: len(shown_tree.strip().splitlines())]
            assert (tmp_path / "report" / "report.html").is_file() and (tmp_path / "report" / "report.json").is_file()
        if block.body.startswith("mlflow run . -e lt_structuredL1 --env-manager local\n"):
            summaries = [line for line in result.stdout.splitlines() if line.endswith(" reused")]
            assert summaries == ["8 states: 0 computed, 8 reused", "10 states: 2 computed, 8 reused"]
        if block.body.startswith("mlprune sweep recipes/lth_lenet_300_100.yaml"):
            # the sweep ends with the study's answer the README shows (numbers vary with the machine)
            shown_answer = next(b.body for b in of("text") if b.body.startswith("lth_lenet_300_100: test accuracy"))
            printed = _without_ids_and_numbers(result.stdout)
            start = next(i for i, line in enumerate(printed) if line.startswith("lth_lenet_300_100: test accuracy"))
            expected = _without_ids_and_numbers(shown_answer)
            assert printed[start : start + 2] == expected[:2]
            assert [line.split()[0] for line in printed[start + 2 : start + 5]] == ["main", "random", "shuffle"]
        if block.body.startswith("root=$(mlprune step init"):
            assert {p.name for p in (tmp_path / "ticket").iterdir()} == {
                "weights.safetensors",
                "masks.safetensors",
                "state.json",
            }
