"""Storage and caching: what a 20-round lottery-ticket tree costs on disk, and re-running it.

Workload: the recipe of ``bench_pipeline`` (lenet_300_100, synthetic MNIST-shaped data,
l1_unstructured 20% per layer, rewind to the init) with 20 rounds: root, train, and
20 x (prune, rewind+retrain) = 42 states, into a fresh sqlite store.

- ``storage_ratio``: (artifact bytes of the tree - 1 byte per prunable weight per state,
  the masks' allowance) / (weight-changing states x float32 parameter bytes). Prune-only
  states reference their parent's weights; a mask is one byte per weight; so the ratio
  is 1 plus the small files and headers (goal <= 1.10). Masks stored larger than a byte
  per weight, or weights duplicated by prune-only states, push it up.
- ``cache_ratio``: wall time of re-running the finished recipe (``compile_recipe`` +
  ``run_plan``, a new ``Experiment``: nothing in memory from the first run) / wall time
  of the first run, median over pairs (goal <= 0.05); the store must hold exactly the
  same runs afterwards (``recomputed`` = new runs, must be 0). Both are in-process: the
  interpreter's imports (``import_s``, reported) are paid once by either.

    python benchmarks/bench_store.py [--quick | --tiny]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import _common  # noqa: E402
import bench_pipeline  # noqa: E402

SIZES = {
    "full": dict(n_train=10_000, n_test=2_000, rounds=20, epochs=1, reps=3),
    "quick": dict(n_train=10_000, n_test=2_000, rounds=20, epochs=1, reps=1),
    "tiny": dict(n_train=300, n_test=100, rounds=3, epochs=1, reps=1),
}


def _run(recipe: Path, data_dir: Path, uri: str, exp_id: str) -> tuple[float, dict]:
    from mlprune import Experiment, compile_recipe, run_plan

    started = time.perf_counter()
    plan = compile_recipe(recipe, {"data_dir": str(data_dir)})
    states = run_plan(plan, Experiment(tracking_uri=uri, experiment_id=exp_id))
    return time.perf_counter() - started, {name: s.run_id for name, s in states.items()}


def _all_runs(uri: str, exp_id: str) -> list:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri).search_runs([exp_id], max_results=50000)


def storage(store_dir: Path, uri: str, exp_id: str, states: dict, data_dir: Path) -> dict:
    """Artifact bytes of the tree vs the raw float32 parameter bytes of its weight-changing states."""
    import torch

    from mlprune import Experiment
    from mlprune.models import prunable

    exp = Experiment(tracking_uri=uri, experiment_id=exp_id, data_dir=str(data_dir))
    by_file = _common.dir_bytes(store_dir / "mlruns")
    total = sum(by_file.values())
    last = exp.state(states[list(states)[-1]])
    model = last.model()
    param_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values() if t.dtype == torch.float32)
    prunable_weights = sum(dict(model.named_parameters())[n].numel() for n in prunable(model))
    kinds = [exp.state(run_id).kind for run_id in states.values()]
    weight_changing = sum(1 for k in kinds if k != "prune")
    mask_allowance = len(kinds) * prunable_weights
    return {
        "storage_ratio": (total - mask_allowance) / (weight_changing * param_bytes),
        "artifact_bytes": total,
        "artifact_bytes_by_file": by_file,
        "states": len(kinds),
        "weight_changing_states": weight_changing,
        "param_bytes": param_bytes,
        "mask_allowance_bytes": mask_allowance,
        "bytes_per_state": total / len(kinds),
        "sqlite_bytes": (store_dir / "mlflow.db").stat().st_size,
    }


def import_seconds() -> float:
    """How long a fresh interpreter takes to import mlprune's DAG (torch, mlflow): context."""
    code = "import time; t = time.perf_counter(); import mlprune.api, mlprune.executor, mlprune.runners, mlprune.store, mlprune.recipes; print(time.perf_counter() - t)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def measure(quick: bool = False, tiny: bool = False, reps: int | None = None) -> dict:
    size = dict(SIZES["tiny" if tiny else "quick" if quick else "full"])
    reps = reps or size["reps"]
    with tempfile.TemporaryDirectory(prefix="mlprune-bench-") as tmp:
        tmp = Path(tmp)
        data_dir = _common.write_mnist(tmp / "data", size["n_train"], size["n_test"])
        recipe = bench_pipeline.write_recipe(tmp, size["rounds"], size["epochs"])
        warm_uri, warm_id = _common.fresh_store(tmp / "store-warm")  # imports, data cache
        _run(bench_pipeline.write_recipe(tmp / "data", 1, 1), data_dir, warm_uri, warm_id)
        firsts, reruns, ratios, recomputed, store_figures = [], [], [], 0, None
        for rep in range(reps):
            store_dir = tmp / f"store-{rep}"
            uri, exp_id = _common.fresh_store(store_dir)
            first_s, states = _run(recipe, data_dir, uri, exp_id)
            before = {r.info.run_id for r in _all_runs(uri, exp_id)}
            rerun_s, again = _run(recipe, data_dir, uri, exp_id)
            after = {r.info.run_id for r in _all_runs(uri, exp_id)}
            recomputed += len(after - before) + sum(again[n] != states[n] for n in states)
            firsts.append(first_s)
            reruns.append(rerun_s)
            ratios.append(rerun_s / first_s)
            if store_figures is None:
                store_figures = storage(store_dir, uri, exp_id, states, data_dir)
    return {
        **store_figures,
        "cache_ratio": _common.median(ratios),
        "first_run_s": _common.median(firsts),
        "rerun_s": _common.median(reruns),
        "rerun_ms_per_state": 1000 * _common.median(reruns) / store_figures["states"],
        "recomputed": recomputed,
        "import_s": None if tiny or quick else import_seconds(),
        "workload": {**size, "repetitions": reps},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--reps", type=int)
    args = ap.parse_args(argv)
    print(json.dumps(measure(args.quick, args.tiny, args.reps), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
