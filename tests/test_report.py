"""Science outputs and `mlprune report`: hand-computed numbers, the HTML report, bad input."""

from __future__ import annotations

import base64
import json
import math
import re
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from mlprune import Experiment, Recipe, analysis, report
from mlprune.cli import main
from mlprune.errors import SpecError

T = torch.tensor


def state(run_id, masks, weights=None, model="lenet"):
    masks = {k: T(v, dtype=torch.bool) for k, v in masks.items()}
    weights = {k: T(v, dtype=torch.float32) for k, v in (weights or {}).items()}
    return SimpleNamespace(run_id=run_id, masks=masks, weights=weights, spec={"root": {"model": model}})


# ------------------------------------------------------------ hand-computed small cases


def test_mask_similarity_and_jaccard_table_by_hand():
    a = state("a", {"l1.weight": [[1, 1, 0], [0, 1, 1]], "l2.weight": [[1, 0], [0, 0]]})
    b = state("b", {"l1.weight": [[1, 0, 0], [0, 1, 1]], "l2.weight": [[0, 1], [0, 0]]})
    c = state("c", {"l1.weight": [[0, 0, 0], [0, 0, 0]], "l2.weight": [[0, 0], [0, 0]]})
    # l1: A={0,1,4,5} B={0,4,5}: 3/4; l2: A={0} B={1}: 0/2; overall (3+0)/(4+2) = 1/2
    sim = report.mask_similarity(a, b)
    assert sim["per_layer"] == {"l1.weight": 0.75, "l2.weight": 0.0}
    assert sim["overall"] == 0.5
    matrix, labels = report.jaccard_table([a, b, c], ["A", "B", "C"])
    # with the empty mask C: intersection 0 -> 0 unless both empty
    assert labels == ["A", "B", "C"]
    assert np.array_equal(matrix, np.array([[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    layer, _ = report.jaccard_table([a, b, c], layer="l2.weight")
    assert np.array_equal(layer, np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    assert _ == ["a", "b", "c"]


def test_different_architectures_are_a_clear_message():
    a = state("aaaaaaaa11", {"l1.weight": [[1, 0]]}, model="lenet")
    b = state("bbbbbbbb22", {"l1.weight": [[1, 0, 1]]}, model="lenet_300_100")
    with pytest.raises(
        SpecError,
        match=r"cannot compare state aaaaaaaa \(lenet\) with state bbbbbbbb "
        r"\(lenet_300_100\): states of different architectures: 'l1.weight' "
        r"has shape \(1, 2\) vs \(1, 3\)",
    ):
        report.mask_similarity(a, b)
    with pytest.raises(SpecError, match="different architectures"):
        report.jaccard_table([a, b])
    with pytest.raises(SpecError, match="different architectures"):
        report.stability([a, b])


def test_the_structure_baseline_follows_the_lineage_not_the_mask():
    # a chain of state.json files: root -> prune l1 unstructured (fc1 only) -> train -> prune ln_structured
    # (conv1 and fc1) -> transplant of the first pruned state's mask
    kinds = {"conv1.weight": "conv", "fc1.weight": "linear", "fc2.weight": "linear"}
    specs = {
        "root": {"parent_run": None, "steps": []},
        "p1": {
            "parent_run": "root",
            "steps": [{"prune": {"method": "l1_unstructured", "amount": 0.5, "include": ["fc1.weight"]}}],
        },
        "t": {"parent_run": "p1", "steps": [{"train": {"epochs": 1}}]},
        "p2": {
            "parent_run": "t",
            "steps": [
                {
                    "prune": {
                        "method": "ln_structured",
                        "n": 1,
                        "dim": 0,
                        "amount": 0.5,
                        "include": ["conv1.weight", "fc1.weight"],
                    }
                }
            ],
        },
        "moved": {
            "parent_run": "root",
            "steps": [{"prune": {"method": "from_state", "state": "p2"}}],
            "inputs": {"mask": {"key": "k", "run_id": "p2"}},
        },
    }
    of = specs.__getitem__
    assert report.pruned_structurally(specs["root"], of, kinds) == {}
    assert report.pruned_structurally(specs["t"], of, kinds) == {"fc1.weight": False}
    assert report.pruned_structurally(specs["p2"], of, kinds) == {"fc1.weight": False, "conv1.weight": True}
    assert report.pruned_structurally(specs["moved"], of, kinds) == {"fc1.weight": False, "conv1.weight": True}


def test_structure_by_hand():
    # a linear layer 2x4 (N=8), K=4 kept: row 1 entirely pruned, columns 2 and 3 entirely pruned
    s = state("s", {"fc.weight": [[1, 1, 0, 0], [0, 0, 0, 0]]}, model="no-such-model")
    e = report.structure(s)["fc.weight"]
    assert e["kind"] == "linear" and e["n_weights"] == 8 and e["n_kept"] == 2 and e["sparsity"] == 0.75
    # dim 0: units of 4 weights; P(a row of 4 all pruned | 2 of 8 kept) = C(4,2)/C(8,2) = 6/28
    assert e["dim0"]["pruned_units"] == 1 and e["dim0"]["observed"] == 0.5
    assert e["dim0"]["expected"] == pytest.approx(6 / 28)
    assert e["dim0"]["ratio"] == pytest.approx(0.5 / (6 / 28))
    # dim 1: units of 2 weights; C(6,2)/C(8,2) = 15/28; columns 2, 3 pruned: 2/4
    assert e["dim1"]["pruned_units"] == 2 and e["dim1"]["expected"] == pytest.approx(15 / 28)
    # a conv (out 2, in 1, 1x2): filter 0 pruned
    c = state("c", {"conv.weight": [[[[0, 0]]], [[[1, 0]]]]})
    ec = report.structure(c)["conv.weight"]
    assert ec["kind"] == "conv" and ec["dim0"]["unit"] == "output channels (filters)"
    assert ec["dim0"]["pruned_units"] == 1 and ec["dim0"]["observed"] == 0.5
    assert ec["dim0"]["expected"] == pytest.approx(math.comb(2, 1) / math.comb(4, 1))  # C(4-2,1)/C(4,1) = 1/2


def test_stability_by_hand():
    w0 = {"l.weight": [[3.0, 4.0, 1.0]]}
    w1 = {"l.weight": [[6.0, 8.0, 0.0]]}
    w2 = {"l.weight": [[0.0, 8.0, 0.0]]}
    m0, m1, m2 = [[1, 1, 1]], [[1, 1, 0]], [[0, 1, 0]]
    states = [state("0", {"l.weight": m0}, w0), state("1", {"l.weight": m1}, w1), state("2", {"l.weight": m2}, w2)]
    st = report.stability(states)
    assert st["transitions"] == ["0->1", "1->2"]
    # 0->1: kept in both = first two weights: (3,4) -> (6,8): cosine 1, |(3,4)| = 5, change 5 -> 1.0
    assert st["jaccard"]["overall"] == [pytest.approx(2 / 3), pytest.approx(1 / 2)]
    assert st["cosine"]["overall"][0] == pytest.approx(1.0)
    assert st["relative_l2"]["overall"][0] == pytest.approx(1.0)
    # 1->2: kept in both = weight 1: 8 -> 8: cosine 1, change 0
    assert st["cosine"]["overall"][1] == pytest.approx(1.0)
    assert st["relative_l2"]["overall"][1] == pytest.approx(0.0)
    assert st["n_common"]["overall"] == [2, 1]
    traj = report.trajectories(states, "l.weight", k=3)
    assert np.allclose(traj[:, 0], [3, 4, 1])
    assert math.isnan(traj[0, 2]) and traj[1, 2] == 8.0 and np.isnan(traj[2, 1:]).all()


def test_layer_kinds_follow_the_model_order():
    masks = {
        n: torch.ones(2, 2, dtype=torch.bool)
        for n in (
            "classifier.0.weight",
            "features.0.weight",
            "classifier.4.weight",
            "features.3.weight",
            "classifier.2.weight",
        )
    }
    assert list(report.layer_kinds(masks, "lenet")) == [
        "features.0.weight",
        "features.3.weight",
        "classifier.0.weight",
        "classifier.2.weight",
        "classifier.4.weight",
    ]
    assert list(report.layer_kinds({"b": torch.ones(2, 2, 1, 1), "a": torch.ones(2)}, None).items()) == [
        ("a", "linear"),
        ("b", "conv"),
    ]


# ----------------------------------------------------------------- the report, for real

STRUCTURED = """\
name: lenet_structured
params: {rounds: 2, epochs: 1, seed: 0}
root: {model: lenet, dataset: digits, seed: $seed, val_size: 200}
train: {epochs: $epochs, lr: 0.05, momentum: 0.9}
rounds: $rounds
prune: {method: ln_structured, n: 1, dim: 1, amount: 0.3}
reinit: {strategy: rewind, to: root}
controls:
  - {name: random_reinit, reinit: {strategy: random}}
"""
UNSTRUCTURED = """\
name: lenet_unstructured
params: {rounds: 1, epochs: 1, seed: 0}
root: {model: lenet, dataset: digits, seed: $seed, val_size: 200}
train: {epochs: $epochs, lr: 0.05, momentum: 0.9}
rounds: $rounds
prune: {method: l1_unstructured, amount: 0.5}
reinit: {strategy: rewind, to: root}
"""
# (trainings of one epoch: the early-stopping section is a note, not a flat line; its plot: test_plot_stability_...)
FIGURE_KINDS = {
    "accuracy_vs_remaining",
    "jaccard",
    "structure",
    "stability",
    "evolution",
    "weights_conv",
    "weights_fc",
    "biases",
}


@pytest.fixture(scope="module")
def lenet_store(store_folder):
    """A store holding two LeNet recipes (one with a control branch), the second with seeds 0 and 1."""
    with store_folder("report-store") as (folder, uri, _):
        (folder / "structured.yaml").write_text(STRUCTURED)
        (folder / "unstructured.yaml").write_text(UNSTRUCTURED)
        for args in (["structured.yaml"], ["unstructured.yaml"], ["unstructured.yaml", "-P", "seed=1"]):
            result = CliRunner().invoke(main, ["run", *args, "-e", "lenet", "--no-figures"])
            assert result.exit_code == 0, result.output
    return {"uri": uri, "folder": folder}


@pytest.fixture
def in_store(lenet_store, monkeypatch):
    import mlflow

    monkeypatch.chdir(lenet_store["folder"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", lenet_store["uri"])
    mlflow.set_tracking_uri(lenet_store["uri"])
    yield lenet_store
    mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_report_has_every_figure_and_right_numbers(in_store, tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["report", "lenet", str(out)])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "warning" not in result.output
    html = (out / "report.html").read_text()
    # every figure kind, every image embedded (offline: no external resources at all)
    kinds = re.findall(r'<figure data-kind="([^"]+)"><img src="data:image/png;base64,([^"]+)"', html)
    assert FIGURE_KINDS <= {k for k, _ in kinds}
    assert len(kinds) == html.count("<img") == len(list((out / "figures").glob("*.png")))
    # write_report's result, as the command prints it: the recipes share the seed-0 root and training
    assert f"(14 states, {len(kinds)} figures)" in result.output.strip().splitlines()[-1]
    for _, data in kinds[:3]:
        assert base64.b64decode(data).startswith(b"\x89PNG")
    assert not re.search(r'(src|href)="https?://(?!127\.0\.0\.1:5000/#/)', html)
    assert "<script src" not in html and "<link" not in html  # one inline script: the lineage's zoom and pan
    assert "one epoch or less" in html and "early_stop" not in {k for k, _ in kinds}
    # the DAG: every state is a node linking to its run
    client = MlflowClient(tracking_uri=in_store["uri"])
    exp = client.get_experiment_by_name("lenet").experiment_id
    states = [r for r in client.search_runs([exp]) if "mlprune.key" in r.data.tags]
    dag = html[html.index('data-kind="dag"') :]
    for run in states:
        assert f'href="http://127.0.0.1:5000/#/experiments/{exp}/runs/{run.info.run_id}"' in dag
    assert dag.count('class="node"') == len(states)

    numbers = json.loads((out / "numbers.json").read_text())
    by_id = {r.info.run_id: r for r in states}
    agg = {(a["recipe"], a["round"]): a for a in numbers["accuracy_vs_remaining"]}
    assert set(agg) == {
        ("lenet_structured", 0),
        ("lenet_structured", 1),
        ("lenet_structured", 2),
        ("lenet_structured / random_reinit", 0),
        ("lenet_structured / random_reinit", 1),
        ("lenet_structured / random_reinit", 2),
        ("lenet_unstructured", 0),
        ("lenet_unstructured", 1),
    }
    un = agg[("lenet_unstructured", 1)]
    assert un["n"] == 2 and sorted(un["seeds"]) == [0, 1]
    # report.json: per series and round, the state each number comes from
    reported = json.loads((out / "report.json").read_text())["series"]
    unstructured = [s for s in reported if s["label"] == "lenet_unstructured"]
    assert sorted(s["seed"] for s in unstructured) == [0, 1]
    round1 = [next(r for r in s["rounds"] if r["round"] == 1) for s in unstructured]
    accs = [by_id[r["run_id"]].data.metrics["test_accuracy"] for r in round1]
    assert [r["test_accuracy"] for r in round1] == accs
    assert all(by_id[r["run_id"]].data.tags["mlprune.kind"] == "reinit+train" for r in round1)
    assert len(accs) == 2
    assert un["mean"] == pytest.approx(np.mean(accs)) and un["std"] == pytest.approx(np.std(accs, ddof=1))
    assert un["remaining"] == pytest.approx(0.5, abs=0.01)
    assert "early_stop_iteration" in un and un["early_stop_iteration"] >= 1
    assert agg[("lenet_structured", 2)]["n"] == 1

    # Jaccard, structure and stability equal the analysis functions on the stored masks
    from mlprune.store import Store

    store = Store(experiment_id=exp)
    grid = next(j for j in numbers["jaccard"] if j["what"] == "series x rounds" and j["seed"] == "0")
    assert grid["labels"] == [
        "lenet_structured r1",
        "lenet_structured r2",
        "lenet_structured / random_reinit r1",
        "lenet_structured / random_reinit r2",
        "lenet_unstructured r1",
    ]
    structured = next(s for s in reported if s["label"] == "lenet_structured" and s["seed"] == 0)
    ids = {f"lenet_structured r{r['round']}": r["run_id"] for r in structured["rounds"] if r["round"]}
    masks = [store.load(ids[k]).masks for k in ("lenet_structured r1", "lenet_structured r2")]
    expected = analysis.jaccard(masks[0], masks[1])["overall"]
    assert grid["matrix"][0][1] == pytest.approx(expected) and grid["matrix"][1][0] == pytest.approx(expected)
    # the random_reinit control keeps the mask of its round: Jaccard 1 with the ticket of that round
    assert grid["matrix"][0][2] == pytest.approx(1.0) and grid["matrix"][1][3] == pytest.approx(1.0)
    structure = numbers["structure"]["lenet_structured"]
    assert structure["run_id"] == ids["lenet_structured r2"] and structure["round"] == 2
    # ln_structured along dim 1 prunes every layer but the output layer by input slices: each is compared
    # with random pruning of as many input slices (expected = observed), the output layer was never pruned
    ref = analysis.emergent_structure(masks[1])
    for name, entry in ref.items():
        got = structure["layers"][name]
        assert got["dim1"]["pruned_units"] == entry["dim1"]["pruned_units"]
        assert got["dim0"]["pruned_units"] == entry["dim0"]["pruned_units"]
        if entry["sparsity"] > 0:
            assert got["baseline"] == "random structured (dim 1)", name
            assert got["dim1"]["expected"] == got["dim1"]["observed"] > 0 and got["dim1"]["ratio"] == 1.0
        else:
            assert got["baseline"] == "random unstructured"
    unstructured_layers = numbers["structure"]["lenet_unstructured"]["layers"]
    assert {e["baseline"] for e in unstructured_layers.values()} == {"random unstructured"}
    stab = numbers["stability"]["lenet_structured"]
    assert stab["rounds"] == [0, 1, 2]
    train_id = next(r["run_id"] for r in structured["rounds"] if r["round"] == 0)
    series = [store.load(i) for i in (train_id, ids["lenet_structured r1"], ids["lenet_structured r2"])]
    ref = analysis.weight_stability([s.weights for s in series], [s.masks for s in series])
    assert stab["jaccard"]["overall"] == pytest.approx(ref["jaccard"]["overall"])
    assert stab["relative_l2"]["overall"] == pytest.approx(ref["relative_l2"]["overall"])
    # across seeds: the last round of lenet_unstructured, seed 0 vs seed 1
    seeds = next(j for j in numbers["jaccard"] if j["what"] == "seeds")
    assert seeds["series"] == "lenet_unstructured" and seeds["labels"] == ["seed 0", "seed 1"]


@pytest.mark.slow
def test_report_python_api_and_ui_url(in_store, tmp_path, monkeypatch):
    from mlprune.registry import Registry
    from mlprune.report import sections

    # the sections that link to the UI and one figure (every section, through the same write_report: the
    # command's report in test_report_has_every_figure_and_right_numbers)
    linked = Registry("report section")
    for name in ("accuracy", "states", "lineage"):
        linked.add(sections.SECTIONS[name])
    monkeypatch.setattr(sections, "SECTIONS", linked)
    messages = []
    result = report.write_report("lenet", tmp_path / "r", ui_url="http://mlflow.example:8080/", warn=messages.append)
    assert messages == [] and result.n_states == 14  # the recipes share the seed-0 root and training
    html = result.path.read_text()
    assert 'href="http://mlflow.example:8080/#/experiments/' in html
    assert "http://127.0.0.1:5000" not in html
    assert "accuracy_vs_remaining" in {f["kind"] for f in result.figures}


def test_the_documented_example_section_is_one_module_and_one_registry_line(in_store, tmp_path, monkeypatch):
    """docs/architecture.md's example report section, as written there, renders into a real report
    (appended to the registry like its one line does) and its numbers are the states' own."""
    import sys
    import types

    from mlprune.registry import Registry
    from mlprune.report import sections

    doc = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text()
    part = doc[doc.index("- **A report section**") :]
    module_code, registry_line = (
        textwrap.dedent(block) for block in re.findall(r"```python\n(.*?)```", part, re.S)[:2]
    )
    module_code = (
        module_code.replace("from .. import plots", "from mlprune import plots")
        .replace("from .common import", "from mlprune.report.common import")
        .replace("from .sections import", "from mlprune.report.sections import")
    )
    module = types.ModuleType("mlprune_doc_example_section")
    exec(compile(module_code, "docs/architecture.md", "exec"), module.__dict__)  # noqa: S102 - the doc's own code
    monkeypatch.setitem(sys.modules, module.__name__, module)
    registry_line = registry_line.split("\n", 1)[1].replace("mlprune.report.sparsity_per_layer", module.__name__)
    extended = Registry("report section")
    for entry in sections.SECTIONS.values():
        if entry.name in ("accuracy", "states"):  # two cheap sections around it: the page still assembles
            extended.add(entry)
    exec(registry_line, {"SECTIONS": extended, "Section": sections.Section})  # noqa: S102
    monkeypatch.setattr(sections, "SECTIONS", extended)

    result = report.write_report("lenet", tmp_path / "r", warn=lambda message: None)
    html = result.path.read_text()
    assert '<section id="sparsity-per-layer">' in html and "Sparsity per layer" in html
    run = MlflowClient(tracking_uri=in_store["uri"]).search_runs(
        [Experiment("lenet").store.experiment_id], "tags.`mlprune.kind` = 'reinit+train'"
    )[0]
    layer, value = next((n[len("sparsity.") :], v) for n, v in run.data.metrics.items() if n.startswith("sparsity."))
    assert f"<td>{layer}</td><td>{value:.3f}</td>" in html


# ------------------------------------------------------------------------- bad input


@pytest.fixture
def messy(tracking, tmp_path):
    """Pruned states of two architectures, a plain MLflow run, a state whose masks file is gone."""
    exp = Experiment("messy")
    root = exp.init(model="lenet", dataset="digits", seed=0)
    a = root.apply(Recipe.prune(method="l1_unstructured", amount=0.5))
    b = root.apply(Recipe.prune(method="random_unstructured", amount=0.5))
    broken = root.apply(Recipe.prune(method="l1_unstructured", amount=0.3))
    other = exp.init(model="lenet_300_100", dataset="digits", seed=0)
    c = other.apply(Recipe.prune(method="l1_unstructured", amount=0.5))
    d = other.apply(Recipe.prune(method="l1_unstructured", amount=0.7))
    client = MlflowClient(tracking_uri=tracking)
    plain = client.create_run(exp.store.experiment_id, run_name="someone else's run")
    client.set_terminated(plain.info.run_id)
    (Path(client.get_run(broken.run_id).info.artifact_uri) / "masks.safetensors").unlink()
    return SimpleNamespace(exp=exp, a=a, b=b, c=c, d=d, broken=broken, plain=plain)


def test_report_skips_what_it_cannot_use_with_warnings(messy, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["report", "messy", str(out)])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    output = result.output
    assert "warning: skipped 1 run(s) that are not mlprune states (no mlprune.key tag): someone else's run" in output
    assert f"warning: state {messy.broken.run_id[:8]} left out of the mask and weight figures" in output
    assert "masks.safetensors" in output
    assert (
        "warning: pruned states of 2 different architectures (lenet, lenet_300_100): one Jaccard matrix per "
        "architecture" in output
    )
    html = (out / "report.html").read_text()
    assert 'class="warnings"' in html and "someone else" in html
    numbers = json.loads((out / "numbers.json").read_text())
    matrices = [j for j in numbers["jaccard"] if j["what"] == "other states"]
    assert sorted(sorted(j["run_ids"]) for j in matrices) == sorted(
        [sorted([messy.a.run_id, messy.b.run_id]), sorted([messy.c.run_id, messy.d.run_id])]
    )
    assert messy.plain.info.run_id not in {n["id"] for n in numbers["lineage"]["nodes"]}


def test_compare_and_report_errors_are_one_line(messy, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(main, ["compare", messy.a.run_id, messy.b.run_id])
    assert ok.exit_code == 0, ok.output
    overall = analysis.jaccard(messy.a.masks, messy.b.masks)["overall"]
    assert f"overall {overall:.4f}" in ok.output and "features.0.weight" in ok.output
    cases = [
        (["compare", messy.a.run_id, messy.c.run_id], "cannot compare state"),
        (["compare", messy.a.run_id, messy.plain.info.run_id], "is not an mlprune state"),
        (["report", "no-such-experiment", str(tmp_path / "x")], "no experiment 'no-such-experiment'"),
    ]
    for args, message in cases:
        result = runner.invoke(main, args)
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    client = MlflowClient()
    empty = client.create_experiment("empty")
    client.create_run(empty, run_name="plain")
    result = runner.invoke(main, ["report", "empty", str(tmp_path / "y")])
    assert result.exit_code == 2 and "holds no finished mlprune states" in result.output
    assert "Traceback" not in result.output


def test_plot_stability_and_early_stop(tmp_path):
    from matplotlib.figure import Figure

    from mlprune import plots as plotting

    ws = [{"a": torch.randn(4, 5, generator=torch.Generator().manual_seed(t))} for t in range(3)]
    ms = [{"a": torch.arange(20).reshape(4, 5) >= 5 * t} for t in range(3)]
    stab = analysis.weight_stability(ws, ms)
    fig = plotting.plot_stability(stab, ["r0", "r1", "r2"], title="stab")
    assert isinstance(fig, Figure) and fig._suptitle.get_text() == "stab"
    titles = [ax.get_title() for ax in fig.axes[:3]]
    assert titles[0] == "mask overlap (Jaccard)" and "cosine" in titles[1] and "relative change" in titles[2]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["r0→1", "r1→2"]
    lo, hi = fig.axes[1].get_ylim()
    assert hi > 1.0 and lo >= -1.0  # cosine axis keeps 1 in view
    fig.savefig(tmp_path / "stab.png")
    with pytest.raises(SpecError):
        plotting.plot_stability(stab, ["only one"])
    rows = [
        {
            "recipe": "r",
            "round": r,
            "remaining": 0.8**r,
            "test_accuracy": 0.9,
            "seed": s,
            "early_stop_iteration": 3 + r + s,
        }
        for r in range(3)
        for s in range(2)
    ]
    agg = analysis.accuracy_vs_remaining(rows)
    fig = plotting.plot_early_stop_vs_remaining(agg)
    ax = fig.axes[0]
    assert ax.get_ylabel().startswith("early-stopping iteration") and ax.get_xscale() == "log"
    assert ax.get_legend().get_texts()[0].get_text() == "r (n=2)"
    fig.savefig(tmp_path / "es.png")
    empty = plotting.plot_early_stop_vs_remaining(
        analysis.accuracy_vs_remaining([{k: v for k, v in row.items() if k != "early_stop_iteration"} for row in rows])
    )
    assert "validation split" in empty.axes[0].texts[0].get_text()


def test_plot_bias_panels(tmp_path):
    from mlprune import plots as plotting

    fig = plotting.plot_bias_panels({"fc1.bias": torch.randn(120), "fc2.bias": torch.randn(10)}, title="b")
    assert [ax.get_title(loc="left") for ax in fig.axes] == ["fc1.bias (120 units)", "fc2.bias (10 units)"]
    assert fig.axes[-1].get_xlabel() == "output unit" and len(fig.axes[0].patches) == 120
    fig.savefig(tmp_path / "b.png")
    with pytest.raises(SpecError):
        plotting.plot_bias_panels({})
