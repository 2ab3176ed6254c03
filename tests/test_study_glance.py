"""A study reads at a glance: a 3-seed x 20-round `lth_lenet_300_100` sweep on digits (trainings of two
iterations, batched), served by `mlflow server --app-name mlprune` and looked at in headless Chromium.

One module-scoped study, one server and one browser serve every check:
- the sweep's last lines are the study's answer (per seed and mean, main beside each control), the numbers
  `mlprune compare` prints; every state carries seed, recipe, model, dataset, branch, round and sparsity;
- `mlprune ui` gives a URL that opens the experiment on its runs (not the GenAI view), flat, with the study's
  columns; the filter ``params.seed = '1' and params.round = '20'`` returns exactly seed 1's round-20 states
  (MLflow's search API on the server) and the UI shows them;
- the lineage page's first viewport shows labelled nodes (screenshot kept in tests/artifacts/);
- the report shows the study's answer above the fold;
- tree, compare, report, show take the experiment positionally or with -e.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_lineage_browser import (  # noqa: F401 - chromium: a fixture
    ARTIFACTS,
    Browser,
    chromium,
    free_port,
    start_mlprune_server,
    wait_until_served,
)

from mlprune.cli import main

pytestmark = pytest.mark.slow

RECIPE = str(Path(__file__).resolve().parents[1] / "recipes" / "lth_lenet_300_100.yaml")
SWEEP = [
    "sweep",
    RECIPE,
    "--seeds",
    "0-2",
    "-P",
    "rounds=20",
    "-P",
    "epochs=2it",
    "-P",
    "train_size=120",
    "-P",
    "test_size=60",
    "-P",
    "val_size=20",
    "--batch",
    "9",
    "-e",
    "study",
]
STATES = 3 * (2 + 20 * 4)  # per seed: root, dense training, and per round a prune, its ticket and two controls


@pytest.fixture(scope="module")
def study(store_folder):
    with store_folder("study") as (folder, uri, _):
        started = time.perf_counter()
        swept = CliRunner().invoke(main, SWEEP)
        assert swept.exit_code == 0, swept.output
        seconds = time.perf_counter() - started
        compared = CliRunner().invoke(main, ["compare", "study"])
        assert compared.exit_code == 0, compared.output
    print(f"\nsweep of {STATES} states: {seconds:.1f} s")
    yield {"folder": folder, "uri": uri, "sweep": swept.output, "compare": compared.output}


@pytest.fixture(scope="module")
def served(study, chromium):  # noqa: F811 - the fixture imported above
    port = free_port()
    server = start_mlprune_server(study["folder"], study["uri"], port)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_served(server, base, study["folder"])
        browser = Browser(chromium, width=1400, height=900)
        try:
            yield {**study, "base": base, "browser": browser}
        finally:
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(5)  # a child of the server may outlive a SIGTERM
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def _answer(output: str) -> dict[str, list[str]]:
    """{branch: [per-seed cells..., mean, '±', std, '(n)']} of the sweep's answer table."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("lth_lenet_300_100: test accuracy at round 20"))
    assert lines[start + 1].split() == ["branch", "s0", "s1", "s2", "mean", "±", "std", "(n)"]
    return {line.split()[0]: line.split()[1:] for line in lines[start + 2 : start + 5]}


def test_the_sweep_ends_with_the_studys_answer(study):
    answer = _answer(study["sweep"])
    assert set(answer) == {"main", "random", "shuffle"}
    compare = {
        line.split()[0] + (line.split()[2] if line.split()[1] == "/" else ""): line
        for line in study["compare"].splitlines()
        if " 20 " in f" {line} " and line.startswith("lth")
    }
    for branch, cells in answer.items():
        seeds = [float(c.rstrip("%")) for c in cells[:3]]
        mean, std, n = float(cells[3].rstrip("%")), float(cells[5]), cells[6]
        assert n == "(3)" and mean == pytest.approx(sum(seeds) / 3, abs=0.006)
        row = compare["lth_lenet_300_100" + ("" if branch == "main" else branch)].split()
        # the same numbers as `mlprune compare`: mean and std at round 20
        assert f"{mean:.2f}%" in row and f"{std:.2f}" in row, (branch, row)
    assert "246 states: 246 computed, 0 reused" in study["sweep"]


def test_every_state_carries_what_a_researcher_filters_by(study):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=study["uri"])
    experiment = client.get_experiment_by_name("study")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id], "tags.`mlprune.key` != ''", max_results=1000)
    assert len(runs) == STATES
    for run in runs:
        params = run.data.params
        assert params["recipe"] == "lth_lenet_300_100" and params["model"] == "lenet_300_100"
        assert params["dataset"] == "digits" and params["seed"] in {"0", "1", "2"} and params["branch"]
        assert float(params["sparsity"]) == pytest.approx(run.data.metrics["sparsity"], abs=1e-4)
        if run.data.tags["mlprune.kind"] != "init":
            assert int(params["round"]) in range(21)
            assert run.info.run_name.startswith(f"s{params['seed']} ")  # several seeds: names lead with the seed
    assert {r.data.params["branch"] for r in runs} == {"main", "random", "shuffle"}


def test_the_ui_opens_on_the_runs_and_the_filter_finds_one_seeds_round(served):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=served["base"])
    experiment = client.get_experiment_by_name("study")
    wanted = "params.seed = '1' and params.round = '20'"
    found = client.search_runs([experiment.experiment_id], wanted, max_results=1000)
    names = sorted(r.info.run_name for r in found)
    assert names == ["s1 r20 ctrl:random", "s1 r20 ctrl:shuffle", "s1 r20 prune l1 20%*", "s1 r20 rewind+train"]
    assert {(r.data.params["seed"], r.data.params["round"]) for r in found} == {("1", "20")}
    # `mlprune ui` against the server: the view (flat, study columns, the filter) and its URL
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", served["base"])
        shown = CliRunner().invoke(main, ["ui", "-e", "study", "--filter", wanted])
    assert shown.exit_code == 0, shown.output
    url = shown.output.strip().splitlines()[-1]
    assert url.startswith(f"{served['base']}/#/experiments/{experiment.experiment_id}/runs?workflowType=")
    b = served["browser"]
    b.goto(url)
    rows = (
        "[...document.querySelectorAll('[role=row] a, .ag-row a')].map(a => a.textContent.trim())"
        ".filter(t => /^s\\d r\\d+ /.test(t))"
    )
    b.wait(f"{rows}.length === 4", timeout=120)
    assert sorted(b.eval(rows)) == names  # exactly that seed's round-20 states, each a row of its own (flat)
    text = b.eval("document.body.innerText")
    # the model-training view: the runs tab (the GenAI view opens on /overview, with Observability and Sessions)
    assert b.eval("location.href").split("#")[1].startswith(f"/experiments/{experiment.experiment_id}/runs?")
    assert "Observability" not in text and "Sessions" not in text
    for column in ("seed", "round", "branch", "test_accuracy", "sparsity"):
        assert column in text, column
    b.screenshot(ARTIFACTS / "study_runs_filtered.png")


def test_the_lineage_page_shows_labelled_nodes_in_the_first_viewport(served):
    from mlflow.tracking import MlflowClient

    b = served["browser"]
    experiment_id = MlflowClient(tracking_uri=served["base"]).get_experiment_by_name("study").experiment_id
    b.goto(
        f"{served['base']}/mlprune/lineage/{experiment_id}",
        "document.readyState === 'complete' && document.querySelector('.zoom-level').textContent !== ''",
    )
    visible = b.eval("""[...document.querySelectorAll('g.node')].map(g => [g, g.getBoundingClientRect()])
        .filter(([g, r]) => r.width > 0 && r.top >= 0 && r.bottom <= innerHeight && r.left >= 0 && r.right <= innerWidth)
        .map(([g, r]) => ({text: g.textContent, w: r.width, size: parseFloat(getComputedStyle(g.querySelector('text')).fontSize) * r.width / 64}))""")
    texts = [v["text"] for v in visible]
    for seed in range(3):  # every seed's lane, with its last round, in the first viewport
        assert any(t.startswith(f"s{seed} r20") for t in texts), (seed, texts[-5:])
    assert len(visible) >= 120 and all(v["size"] >= 7.5 for v in visible)  # labels at least 7.5 px on screen
    shot = b.screenshot(ARTIFACTS / "study_lineage_first_viewport.png")
    from PIL import Image

    pixels = Image.open(shot).convert("L").getdata()
    assert sum(1 for p in pixels if p < 200) > 0.05 * len(pixels)  # not blank
    # a badge unfolds the controls under its pruned state
    before = b.eval("[...document.querySelectorAll('g.node')].filter(g => g.getBoundingClientRect().width > 0).length")
    b.eval("document.querySelector('g.fold').dispatchEvent(new MouseEvent('click', {bubbles: true})); true")
    after = b.eval("[...document.querySelectorAll('g.node')].filter(g => g.getBoundingClientRect().width > 0).length")
    assert after == before + 2
    # the table is sortable by seed
    b.eval("[...document.querySelectorAll('#states th')].find(th => th.textContent === 'seed').click(); true")
    seeds = b.eval("[...document.querySelectorAll('#states tbody tr')].map(r => r.cells[2].textContent)")
    assert seeds == sorted(seeds, key=int)


def test_the_report_shows_the_answer_above_the_fold(served, monkeypatch):
    from mlprune.registry import Registry
    from mlprune.report import sections

    # the sections this check reads (the full report at this size: tests/test_lineage_browser.py)
    cheap = Registry("report section")
    for entry in sections.SECTIONS.values():
        if entry.name in ("answer", "accuracy", "speedup", "lineage", "states"):
            cheap.add(entry)
    monkeypatch.setattr(sections, "SECTIONS", cheap)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", served["uri"])
    out = served["folder"] / "report"
    written = CliRunner().invoke(main, ["report", "-e", "study", str(out)])
    assert written.exit_code == 0, written.output
    b = served["browser"]
    b.goto((out / "report.html").as_uri())
    box = b.eval(
        "(() => { const r = document.getElementById('answer').getBoundingClientRect(); "
        "return [r.top, document.querySelector('#answer table.answer').getBoundingClientRect().bottom]; })()"
    )
    assert box[1] <= 900, box  # the answer's table ends above the fold
    main_row = b.eval("[...document.querySelectorAll('#answer table.answer tr')].map(r => r.textContent)")
    assert any(row.startswith("main") for row in main_row) and any(row.startswith("random") for row in main_row)
    assert b.eval("document.querySelector('#lineage > details').open") is False  # collapsed, at the end
    assert "one epoch or less" in b.eval("document.getElementById('early-stop').innerText")
    b.screenshot(ARTIFACTS / "study_report_top.png")


def test_readers_take_the_experiment_positionally_or_with_e(study, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", study["uri"])
    runner = CliRunner()
    for args in (["tree", "study"], ["tree", "-e", "study"], ["compare", "study"], ["compare", "-e", "study"]):
        result = runner.invoke(main, args)
        assert result.exit_code == 0 and "r20" in result.output or "20" in result.output, (args, result.output)
    run_id = next(
        line.split()[0]
        for line in runner.invoke(main, ["tree", "study"]).output.splitlines()
        if "s1 r20 rewind+train" in line
    )
    for args in (["show", "study", run_id], ["show", "-e", "study", run_id], ["show", run_id]):
        result = runner.invoke(main, args)
        assert result.exit_code == 0 and "param seed = 1" in result.output, (args, result.output)
    twice = runner.invoke(main, ["tree", "study", "-e", "other"])
    assert twice.exit_code == 2 and "given twice" in twice.output
    typo = runner.invoke(main, ["compare", "studdy"])
    assert typo.exit_code == 2 and "did you mean 'study'" in typo.output and len(typo.output.splitlines()) == 1
