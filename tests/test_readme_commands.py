"""README.md's shell blocks that make states of their own (a run into `my-study`, the step-by-step chain,
the sweeps), as typed, in README order, in a fresh directory: tests/test_readme.py runs the CI command and
the blocks that read the study it made, beside these on another xdist worker."""

from __future__ import annotations

import pytest
from test_readme import _without_ids_and_numbers, fresh_directory, of, run_block, shell_blocks


@pytest.mark.slow
def test_the_blocks_that_make_their_own_states_run_in_order_on_a_fresh_store(tmp_path):
    env = fresh_directory(tmp_path)
    group = shell_blocks(reads_the_ci_study=False)
    starts = [block.body.split()[:2] for block in group]
    for command in (["mlprune", "validate"], ["root=$(mlprune", "step"], ["mlprune", "sweep"]):
        assert command in starts, (command, starts)  # the blocks the checks below read are in this group
    for block in group:
        result = run_block(block, tmp_path, env)
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
