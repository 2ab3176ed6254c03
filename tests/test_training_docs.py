"""docs/training.md says what the code does: its Python blocks and bash commands run, its error line is real."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DOC = (REPO / "docs" / "training.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC, flags=re.S)


def test_the_python_blocks_run_and_print_what_they_say(tracking, capsys):
    assert blocks("python")
    for code in blocks("python"):
        exec(compile(code, "docs/training.md", "exec"), {})  # noqa: S102 - our own documentation
        printed = capsys.readouterr().out.split()
        promised = re.findall(r"#\s*(.+)$", code.strip().splitlines()[-1])[0].split()
        assert printed == promised


def test_the_bash_commands_run(tmp_path):
    commands = [line for block in blocks("bash") for line in block.splitlines() if line.strip()]
    assert commands
    for line in commands:
        args = shlex.split(line)
        assert args[0] == "mlprune"
        result = subprocess.run(
            [sys.executable, "-m", "mlprune", *args[1:]],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert result.returncode == 0, (line, result.stderr[-2000:])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error of a machine without CUDA")
def test_the_documented_device_error_is_the_one_printed():
    from mlprune.errors import SpecError
    from mlprune.training.devices import resolve_device

    shown = re.findall(r"^error: (device .*)$", DOC, flags=re.M)
    assert len(shown) == 1
    with pytest.raises(SpecError) as error:
        resolve_device("cuda")
    assert str(error.value) == shown[0]
