"""Numbers a reviewer trusts, end to end on real stores: a 5-seed lottery-ticket sweep compared with its
`random` control (paired statistics recomputed here from report.json's per-seed values with
scipy.stats and Holm written out), the report's Claims section and CI bands, the ShrinkBench grid's
metrics checked against parameter counts, the one-seed line and the mixed-environment warning."""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from scipy import stats as scipy_stats

from mlprune import names
from mlprune.cli import main

REPO = Path(__file__).resolve().parents[1]
LTH = str(REPO / "recipes" / "lth_lenet_300_100.yaml")
GRID = str(REPO / "recipes" / "shrinkbench_grid.yaml")


def holm_by_hand(p):
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adjusted, previous = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        previous = max(previous, min(1.0, (m - rank) * p[i]))
        adjusted[i] = previous
    return adjusted


def only_sections(mp, *wanted):
    """The report with only the sections a test reads (the others are tested in tests/test_report.py and cost
    seconds of figures each)."""
    from mlprune.registry import Registry
    from mlprune.report import sections

    subset = Registry("report section")
    for name in wanted:
        subset.add(sections.SECTIONS[name])
    mp.setattr(sections, "SECTIONS", subset)


@pytest.fixture(scope="module")
def study(store_folder):
    """5 seeds of lth_lenet_300_100 (2 rounds of 1 epoch on 600 digits), one batch of 5, and its report."""
    with store_folder("claims-store") as (folder, uri, mp):
        mp.setenv(names.ENV_FIGURES, "0")
        result = CliRunner().invoke(
            main,
            [
                "sweep",
                LTH,
                "--seeds",
                "0-4",
                "-P",
                "rounds=2",
                "-P",
                "epochs=1",
                "-P",
                "train_size=600",
                "--batch",
                "5",
                "-e",
                "lth",
            ],
        )
        assert result.exit_code == 0, result.output
        compared = CliRunner().invoke(main, ["compare", "-e", "lth", "--against", "random"])
        assert compared.exit_code == 0, compared.output
        table = CliRunner().invoke(main, ["compare", "-e", "lth"])
        assert table.exit_code == 0, table.output
        only_sections(mp, "accuracy", "claims", "sanity")
        reported = CliRunner().invoke(main, ["report", "lth", str(folder / "report")])
        assert reported.exit_code == 0, reported.output
    report = json.loads((folder / "report" / "report.json").read_text())
    numbers = json.loads((folder / "report" / "numbers.json").read_text())
    return {
        "folder": folder,
        "uri": uri,
        "compare": compared.output,
        "table": table.output,
        "report": report,
        "numbers": numbers,
        "html": (folder / "report" / "report.html").read_text(),
    }


def per_seed(report, branch, rnd):
    """{seed: test accuracy} of a branch at a round, from report.json's series."""
    out = {}
    for series in report["series"]:
        if series["recipe"] == "lth_lenet_300_100" and series["branch"] == branch:
            for row in series["rounds"]:
                if row["round"] == rnd:
                    out[str(series["seed"])] = row["test_accuracy"]
    return out


def test_paired_claims_equal_scipy_from_report_json_per_seed_values(study):
    report = study["report"]
    rows = [r for r in report["claims"] if r["against"] == "lth_lenet_300_100 / random"]
    assert [r["round"] for r in rows] == [1, 2]
    p_t, p_w = [], []
    for row in rows:
        ticket, control = per_seed(report, "main", row["round"]), per_seed(report, "random", row["round"])
        seeds = sorted(ticket)
        assert seeds == ["0", "1", "2", "3", "4"] == row["seeds"] and row["paired"] and row["n"] == 5
        a, b = np.array([ticket[s] for s in seeds]), np.array([control[s] for s in seeds])
        diff = a - b
        low, high = scipy_stats.t.interval(0.95, 4, loc=diff.mean(), scale=scipy_stats.sem(diff))
        assert row["mean_difference"] == pytest.approx(diff.mean(), abs=1e-9)
        assert row["ci_low"] == pytest.approx(low, abs=1e-9) and row["ci_high"] == pytest.approx(high, abs=1e-9)
        assert row["p_t"] == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue, abs=1e-9)
        assert row["p_wilcoxon"] == pytest.approx(scipy_stats.wilcoxon(a, b).pvalue, abs=1e-9)
        p_t.append(scipy_stats.ttest_rel(a, b).pvalue)
        p_w.append(scipy_stats.wilcoxon(a, b).pvalue)
    for row, adjusted_t, adjusted_w in zip(rows, holm_by_hand(p_t), holm_by_hand(p_w)):
        assert row["p_t_holm"] == pytest.approx(adjusted_t, abs=1e-9)
        assert row["p_wilcoxon_holm"] == pytest.approx(adjusted_w, abs=1e-9)
        expected = "no difference" if adjusted_t >= 0.05 else "better" if row["mean_difference"] > 0 else "worse"
        assert row["verdict"] == expected


def test_compare_against_prints_the_claims_table_of_the_report(study):
    """`compare --against random` and the report's Claims section: the same rows, the same numbers."""
    from mlprune.report.claims import difference, interval, p

    rows = [r for r in study["report"]["claims"] if r["against"] == "lth_lenet_300_100 / random"]
    lines = [line for line in study["compare"].splitlines() if line.startswith("lth_lenet_300_100 ")]
    assert len(lines) == len(rows) == 2, study["compare"]
    for line, row in zip(lines, rows):
        for cell in (
            str(row["round"]),
            "paired",
            difference(row),
            interval(row),
            p(row["p_t"]),
            p(row["p_wilcoxon"]),
            p(row["p_t_holm"]),
            p(row["p_wilcoxon_holm"]),
            row["verdict"],
        ):
            assert cell in line, (cell, line)
        for cell in (difference(row), interval(row), p(row["p_t_holm"]), row["verdict"]):
            assert cell in study["html"]  # the report's Claims section: the same table
    assert '<section id="claims">' in study["html"]
    assert "1 seed" not in study["compare"] and "mixes environments" not in study["compare"]


def test_accuracy_table_intervals_and_figure_bands_equal_the_cis(study):
    from matplotlib.collections import PolyCollection

    from mlprune import plots
    from mlprune.plots.style import CI_BAND

    report, agg = study["report"], study["numbers"]["accuracy_vs_remaining"]
    assert report["accuracy_vs_remaining"] == agg
    for row in agg:
        values = per_seed(report, "main" if " / " not in row["recipe"] else row["recipe"].split(" / ")[1], row["round"])
        arr = np.array([values[s] for s in sorted(values)])
        low, high = scipy_stats.t.interval(0.95, 4, loc=arr.mean(), scale=scipy_stats.sem(arr))
        assert row["n"] == 5
        assert row["ci_low"] == pytest.approx(low, abs=1e-9) and row["ci_high"] == pytest.approx(high, abs=1e-9)
        shown = f"[{100 * row['ci_low']:.2f}, {100 * row['ci_high']:.2f}]"
        assert any(line.startswith(row["recipe"] + " ") and shown in line for line in study["table"].splitlines())
    assert "95% CI" in study["table"].splitlines()[0]
    # the report's figure: one band per series, its edges the intervals (in %)
    fig = plots.plot_accuracy_vs_remaining(agg)
    bands = [c for c in fig.axes[0].collections if isinstance(c, PolyCollection) and c.get_gid() == CI_BAND]
    labels = list(dict.fromkeys(row["recipe"] for row in agg))
    assert len(bands) == len(labels) == 3
    for band, label in zip(bands, labels):
        points = sorted([r for r in agg if r["recipe"] == label], key=lambda r: -r["remaining"])
        ys = band.get_paths()[0].vertices[:, 1]
        for point in points:
            assert np.isclose(ys, 100 * point["ci_low"], atol=1e-9).any()
            assert np.isclose(ys, 100 * point["ci_high"], atol=1e-9).any()
    assert all("(n=5)" in t.get_text() for t in fig.axes[0].get_legend().get_texts() if "lth" in t.get_text())


def test_bootstrap_intervals_are_stated(study):
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(study["folder"])
        mp.setenv("MLFLOW_TRACKING_URI", study["uri"])
        result = CliRunner().invoke(main, ["compare", "-e", "lth", "--against", "random", "--ci", "bootstrap"])
        bad = CliRunner().invoke(main, ["compare", "-e", "lth", "--against", "nope"])
    assert result.exit_code == 0 and "bootstrap, 10000 resamples, seed 0" in result.output, result.output
    assert bad.exit_code == 2 and "'nope'" in bad.output and "random" in bad.output


def test_every_state_carries_the_environment_and_a_series_mixing_torch_versions_is_warned(study):
    client = MlflowClient(tracking_uri=study["uri"])
    experiment = client.get_experiment_by_name("lth").experiment_id
    runs = client.search_runs([experiment], "tags.`mlprune.key` != ''", max_results=1000)
    assert len(runs) == 50  # 5 seeds: init, train, 2 rounds of prune, ticket, random, shuffle
    for run in runs:
        tags = run.data.tags
        assert (
            tags[names.TAG_ENV_TORCH] == torch.__version__ and tags[names.TAG_ENV_PYTHON] == platform.python_version()
        )
        assert all(tags.get(tag) for tag in names.ENV_TAGS)
    control = next(r for r in study["report"]["series"] if r["branch"] == "random" and r["seed"] == 3)
    run_id = next(row["run_id"] for row in control["rounds"] if row["round"] == 2)
    client.set_tag(run_id, names.TAG_ENV_TORCH, "1.13.0")
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(study["folder"])
            mp.setenv("MLFLOW_TRACKING_URI", study["uri"])
            result = CliRunner().invoke(main, ["compare", "-e", "lth", "--against", "random"])
            only_sections(mp, "claims")
            reported = CliRunner().invoke(main, ["report", "lth", str(study["folder"] / "mixed")])
    finally:
        client.set_tag(run_id, names.TAG_ENV_TORCH, torch.__version__)
    assert result.exit_code == 0, result.output
    warned = [line for line in result.output.splitlines() if "mixes environments" in line]
    assert len(warned) == 1 and "lth_lenet_300_100 / random" in warned[0] and "1.13.0 (1 states)" in warned[0]
    warnings = json.loads((study["folder"] / "mixed" / "numbers.json").read_text())["warnings"]
    assert reported.exit_code == 0 and [w for w in warnings if "mixes environments" in w] == [
        warned[0].split(": ", 1)[1]
    ]


@pytest.fixture(scope="module")
def grid(store_folder):
    """shrinkbench_grid on 300 digits, 1 epoch of training and of fine-tuning, one seed, and its report."""
    with store_folder("grid-store") as (folder, uri, mp):
        mp.setenv(names.ENV_FIGURES, "0")
        result = CliRunner().invoke(
            main,
            [
                "run",
                GRID,
                "-P",
                "epochs=1",
                "-P",
                "finetune_epochs=1",
                "-P",
                "train_size=300",
                "-P",
                "score_batches=2",
                "-e",
                "grid",
            ],
        )
        assert result.exit_code == 0, result.output
        compared = CliRunner().invoke(main, ["compare", "-e", "grid"])
        against = CliRunner().invoke(main, ["compare", "-e", "grid", "--against", "random"])
        only_sections(mp, "accuracy", "compression", "claims")
        reported = CliRunner().invoke(main, ["report", "grid", str(folder / "report")])
        assert reported.exit_code == 0, reported.output
    return {
        "folder": folder,
        "uri": uri,
        "compare": compared.output,
        "against": against.output,
        "html": (folder / "report" / "report.html").read_text(),
        "report": json.loads((folder / "report" / "report.json").read_text()),
        "numbers": json.loads((folder / "report" / "numbers.json").read_text()),
    }


def test_grid_states_carry_shrinkbench_metrics_checked_against_parameter_counts(grid):
    from safetensors.torch import load as load_tensors

    from mlprune.models import build_model

    client = MlflowClient(tracking_uri=grid["uri"])
    experiment = client.get_experiment_by_name("grid").experiment_id
    runs = [
        r
        for r in client.search_runs([experiment], "tags.`mlprune.key` != ''", max_results=1000)
        if r.data.tags.get(names.TAG_KIND) != "init"
    ]
    model = build_model("lenet_300_100", num_classes=10, input_shape=(1, 8, 8))
    total = sum(p.numel() for p in model.parameters())
    prunable_total = sum(p.numel() for name, p in model.named_parameters() if name.endswith("weight"))
    methods = set()
    for run in runs:
        metrics = run.data.metrics
        masks = load_tensors(Path(client.download_artifacts(run.info.run_id, names.MASKS_FILE)).read_bytes())
        masked_out = sum(int((~m.bool()).sum()) for m in masks.values())
        assert metrics[names.M_COMPRESSION_ALL] == pytest.approx(total / (total - masked_out), rel=1e-12)
        assert metrics[names.M_COMPRESSION] == pytest.approx(prunable_total / (prunable_total - masked_out), rel=1e-12)
        # an MLP: each kept weight is one multiply-add, so the theoretical speedup is the prunable compression
        assert metrics[names.M_THEORETICAL_SPEEDUP] == pytest.approx(metrics[names.M_COMPRESSION], rel=1e-12)
        assert names.M_TEST_ACCURACY_TOP5 not in metrics  # digits: 10 classes
        assert all(run.data.tags.get(tag) for tag in names.ENV_TAGS)
        methods.add(run.data.params.get("prune.method"))
    assert {"l1_unstructured", "mag_grad", "random_unstructured"} <= methods
    trained = [r for r in runs if r.data.params.get("round") == "5"]
    assert len(trained) == 4 * 2  # four methods, a prune state and its fine-tuned state at compression 32
    assert all(r.data.metrics[names.M_COMPRESSION] == pytest.approx(32, rel=0.01) for r in trained)


def test_grid_report_has_compression_and_speedup_figures_and_the_pareto_front(grid):
    from mlprune.analysis import pareto_front

    figures = sorted(p.name for p in (grid["folder"] / "report" / "figures").iterdir())
    assert any("accuracy_vs_compression" in f for f in figures)
    assert any("accuracy_vs_theoretical_speedup" in f for f in figures)
    rows = grid["numbers"]["accuracy_vs_cost"]
    for key in ("compression_ratio_all", "theoretical_speedup"):
        front = grid["report"]["pareto_front"][key]
        assert front and front == [
            {k: p[k] for k in ("recipe", "round", "n", key, "mean", "ci_low", "ci_high")}
            for p in pareto_front(rows, key)
        ]
        for point in front:  # nothing beats a point of the front on both
            assert not any(r[key] >= point[key] and r["mean"] > point["mean"] for r in rows)


def test_one_seed_study_says_so_and_draws_no_band(grid):
    from matplotlib.collections import PolyCollection

    from mlprune import plots

    line = "claims need several seeds"
    assert (
        line in grid["compare"]
        and "mlprune sweep recipes/shrinkbench_grid.yaml --seeds 0-4 --batch 5" in grid["compare"]
    )
    assert "1 seed: no interval" in grid["compare"]
    assert line in grid["against"] and "too few seeds (n < 3)" in grid["against"]
    assert line in grid["html"]  # the report's Claims section says it too
    # the report compares every method with the random-pruning one: the same rows as compare --against random
    rows = grid["report"]["claims"]
    assert {r["against"] for r in rows} == {"shrinkbench_grid / random"} and len(rows) == 3 * 5
    assert all(r["verdict"] == "too few seeds (n < 3)" and r["paired"] for r in rows)
    for row in rows:
        assert any(
            line.startswith(row["series"] + " ")
            and f" {row['round']} " in line
            and f"{100 * row['mean_difference']:+.2f}" in line
            for line in grid["against"].splitlines()
        )
    agg = grid["numbers"]["accuracy_vs_remaining"]
    assert all(r["ci_low"] is None and r["n"] == 1 for r in agg)
    fig = plots.plot_accuracy_vs_remaining(agg)
    assert not [c for c in fig.axes[0].collections if isinstance(c, PolyCollection)]
    assert all(
        "1 seed: no interval" in t.get_text() for t in fig.axes[0].get_legend().get_texts() if "grid" in t.get_text()
    )
    assert not any(math.isfinite(r["ci_low"] or math.nan) for r in grid["numbers"]["accuracy_vs_cost"])


def test_top5_accuracy_is_the_true_class_among_the_five_largest_logits_above_ten_classes():
    from types import SimpleNamespace

    from mlprune.runners.evaluations import Evaluated, evaluate_test
    from mlprune.training.loop import predict

    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(6, 12)
    batches = [(torch.randn(40, 6, generator=gen), torch.randint(0, 12, (40,), generator=gen)) for _ in range(3)]
    result = predict(model, batches)
    with torch.no_grad():
        hits = sum(
            int(y[i]) in torch.argsort(model(x)[i], descending=True)[:5].tolist()
            for x, y in batches
            for i in range(len(y))
        )
    assert result.top5_accuracy == hits / 120 and result.top5_accuracy >= result.accuracy
    for classes, logged in ((12, True), (10, False)):
        ev = Evaluated(model, None, SimpleNamespace(num_classes=classes), {}, {}, [], None, _test=result)
        metrics, _ = evaluate_test(ev)
        assert (names.M_TEST_ACCURACY_TOP5 in metrics) == logged
        assert not logged or metrics[names.M_TEST_ACCURACY_TOP5] == result.top5_accuracy


def test_instability_interval_is_over_seeds_of_each_seeds_mean_over_its_pairs():
    from mlprune.report.instability import instability_table

    values = {0: [0.010, 0.014, 0.012], 1: [0.020, 0.018, 0.025], 2: [0.011, 0.009, 0.016]}
    rows = [
        {"series": "lmc", "remaining": 1.0, "iteration": 0, "instability": v, "seed": seed, "run_id": f"{seed}{i}"}
        for seed, vs in values.items()
        for i, v in enumerate(vs)
    ]
    [row] = instability_table(rows)
    means = np.array([np.mean(vs) for vs in values.values()])
    low, high = scipy_stats.t.interval(0.95, 2, loc=means.mean(), scale=scipy_stats.sem(means))
    assert row["n"] == 9 and row["seeds"] == 3
    assert row["ci_low"] == pytest.approx(low, abs=1e-12) and row["ci_high"] == pytest.approx(high, abs=1e-12)
    [alone] = instability_table([r for r in rows if r["seed"] == 0])
    assert alone["seeds"] == 1 and alone["ci_low"] is None
