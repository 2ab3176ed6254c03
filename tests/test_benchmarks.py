"""The benchmark suite runs and writes its figures (tiny sizes: a smoke test, nothing is timed)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = (
    "pipeline_vs_bare",
    "per_state_overhead_ms",
    "storage_ratio",
    "cache_ratio",
    "fastpath_vs_dataloader",
    "end_to_end_vs_bare",
    "end_to_end_fresh_store_vs_bare",
    "cached_rerun_s",
    "cached_rerun_vs_import_mlflow",
    "mlflow_run_cached_vs_import_mlflow",
    "mlflow_run_cached_s",
    "single_chain_one_thread_vs_default",
    "study_vs_bare",
    "defaults_speedup",
    "checkpoint_cost_lenet_300_100",
    "checkpoint_cost_resnet20",
    "batched_speedup",
    "batched_speedup_lenet_300_100",
    "batched_speedup_resnet20",
    "store_scaling",
    "tree_10k_s",
    "report_10k_s",
    "plan_10k_s",
)


def test_benchmark_suite_runs_tiny_and_writes_the_figures(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "PYTEST_CURRENT_TEST" and not k.startswith(("MLFLOW_TRACKING", "MLFLOW_EXPERIMENT", "MLFLOW_RUN"))
    }
    out = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--tiny", "--json", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())
    for name in FIGURES:
        value = result[name]
        assert isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value), (name, value)
        assert value > 0, (name, value)
        assert f"`{name}`" in proc.stdout  # the printed table
    details = result["details"]
    # same maths: the bare loop reproduces mlprune's states bitwise (weights, masks, accuracies)
    assert details["pipeline"]["bitwise_equal"] is True
    # a re-run of a finished recipe computes nothing
    assert details["store"]["recomputed"] == 0
    # prune-only states reference their parent's weights; masks take a byte per weight
    assert details["store"]["storage_ratio"] < 1.1
    # checkpoints change nothing stored: the same keys and weights with and without them
    assert all(c["equal_results"] for c in details["checkpoint"]["details"].values())
    assert all(c["strict_checkpoints_per_run"] > 0 for c in details["checkpoint"]["details"].values())
    # whole processes: mlprune and the bare script reach the same accuracy (same maths)
    assert details["process"]["same_final_accuracy"] is True, details["process"]["final_test_accuracy"]
    # every bare baseline ran as a user runs it: no mlprune imported, no OpenMP or mlprune variable
    for bare in (
        details["pipeline"]["bare_process"],
        details["process"]["bare_process"],
        *details["study"]["bare_processes"],
    ):
        assert bare["mlprune_modules"] == [] and bare["omp_env"] == {} and bare["mlprune_env"] == [], bare
    # the study: the bare script does the sweep's maths (its accuracies at one thread are the sweep's)
    assert details["study"]["same_accuracies"] is True, details["study"]["test_accuracies"]
    # batched sibling trainings end where each trained alone does (tests/test_batched.py's tolerance)
    assert details["batched"]["details"]["lenet"]["max_weight_difference"] <= 5e-4
    # the benchmark's scale stores are real: verify passes, and a cached re-run computes nothing
    checks = details["scale"]["checks"]
    assert checks["verify_passed"] and checks["cached_rerun_computed_nothing"], checks
    # planning writes nothing into the store: every state of the sweep is missing, one task each
    plan = details["plan"]["details"]
    assert plan["runs_written"] == 0 and plan["default"]["missing"] == plan["default"]["graph_tasks"] == 40, plan
    assert not list(tmp_path.glob("mlruns")) and not list(tmp_path.glob("mlflow.db"))  # nothing left in cwd


def test_the_bare_baseline_runs_as_a_user_runs_it(tmp_path, monkeypatch):
    """The bare script's process: no OpenMP or mlprune variable (whatever this process has), mlprune never
    imported although it is importable (cheap: one epoch on 64 images)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import _common
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # mlprune importable there: the script must not import it
    env = _common.user_env()
    assert not [k for k in env if k.startswith(("OMP_", "MLPRUNE_"))]
    data = _common.write_mnist(tmp_path / "data", 64, 32)
    out = _common.run_bare(data, "--levels", "1", "--epochs", "1", "--batch", "32", cwd=tmp_path)
    assert out["omp_env"] == {} and out["mlprune_env"] == [] and out["mlprune_modules"] == [], out
    assert out["threads"] >= 1  # torch's default: nothing pins it (no --threads, no variable)
    assert len(out["accuracies"]) == 4  # init, trained, pruned, retrained
