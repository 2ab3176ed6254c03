"""benchmarks/gpu_check.py in its CPU mode (--device cpu --tiny): the GPU check's own path, end to end.

On a GPU machine the same script runs on CUDA (see benchmarks/RESULTS.md); CI never needs one.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu_and_passes_its_checks(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "PYTEST_CURRENT_TEST" and not k.startswith(("MLFLOW_TRACKING", "MLFLOW_EXPERIMENT", "MLFLOW_RUN"))
    }
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny", "--json", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["ok"] is True and result["device"] == "cpu" and result["placement"] == "host"
    assert set(result["checks"]) >= {
        "states_finished",
        "device_tagged",
        "masks_identical_on_cpu",
        "pruned_weights_zero",
        "batchnorm_restored",
        "cpu_accuracy_matches",
        "rewind_continues_schedule",
    }
    assert all(result["checks"].values()), result["checks"]
    for name in ("mlprune_bf16_img_s", "mlprune_fp32_img_s", "bare_amp_bf16_img_s", "bare_fp32_img_s"):
        value = result["figures"][name]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (name, value)
        assert f"`{name}`" in proc.stdout  # the printed table
    assert result["notes"]["sparsity"] == pytest.approx(0.2, abs=0.01)
    assert not list(tmp_path.glob("mlflow.db")) and not list(tmp_path.glob("mlruns"))  # all in a temp dir
