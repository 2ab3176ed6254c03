"""Planning a 10,000-state sweep and building its dask graph, nothing computed: ``plan_10k_s``.

The sweep is `bench_scale`'s: its two recipes (``scale_l1`` and ``scale_struct``, 12 rounds of
pruning 20 % and rewinding to the init, sharing their root and first training per seed) over
200 seeds, i.e. 50 distinct states per seed and 10,000 in all (10,400 plan nodes: each plan
lists the shared root and training again). Timed, in this process after the imports:

- ``plan_s``: ``recipes.sweep_plans`` (compiling, resolving and keying every recipe x seed);
- ``execution_s``: ``executor.Execution`` of those plans against an empty sqlite store (merging
  by key, the look-up of the existing states: none), with the default run options;
- ``graph_s``: the dask graph of the 10,000 missing states (``Execution._graph``: the task of
  each, its dependencies, its emitted checkpoints, the sibling groups where batching is on).

``plan_10k_s`` is their sum (wall time, goal <= 2 s; ``cpu_s`` beside it, this process's CPU time, is
what to compare on a machine other processes share); ``plan_10k_batched_s`` the same with the run option
``batch: 8`` (sibling trainings grouped: `executor.batching`). Nothing is written to the store:
a run is created only when a task runs.

    python benchmarks/bench_plan.py [--quick | --tiny]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import _common  # noqa: E402

ROUNDS = 12
SEEDS = {"full": 200, "quick": 200, "tiny": 4}  # 50 states a seed: 10,000 states (tiny: 2 rounds, 40)


def _timed(recipes: list[Path], seeds: int, store, batch: int) -> dict:
    from mlprune.executor import Execution, RunOptions
    from mlprune.recipes import sweep_plans

    cpu, started = time.process_time(), time.perf_counter()
    plans = sweep_plans(recipes, list(range(seeds)), [])
    planned = time.perf_counter()
    execution = Execution([plan for _, plan in plans], store, options=RunOptions(batch=batch))
    executed = time.perf_counter()
    graph = execution._graph(None)
    built, cpu = time.perf_counter(), time.process_time() - cpu
    return {
        "plan_s": planned - started,
        "execution_s": executed - planned,
        "graph_s": built - executed,
        "total_s": built - started,
        "cpu_s": cpu,
        "plans": len(plans),
        "plan_nodes": sum(len(p.nodes) for _, p in plans),
        "states": len(execution.nodes),
        "missing": len(execution.missing),
        "graph_tasks": len(graph),
    }


def measure(quick: bool = False, tiny: bool = False) -> dict:
    import bench_scale

    from mlprune.store import Store

    size = "tiny" if tiny else "quick" if quick else "full"
    rounds = 2 if tiny else ROUNDS
    with tempfile.TemporaryDirectory(prefix="mlprune-bench-plan-") as tmp:
        recipes = bench_scale.write_recipes(Path(tmp) / "recipes", rounds)
        uri, experiment_id = _common.fresh_store(Path(tmp) / "store")
        store = Store(tracking_uri=uri, experiment_id=experiment_id)
        default = _timed(recipes, SEEDS[size], store, batch=1)
        batched = _timed(recipes, SEEDS[size], store, batch=8)
        written = store.client.search_runs([experiment_id], max_results=1)
    return {
        "plan_10k_s": default["total_s"],
        "plan_10k_batched_s": batched["total_s"],
        "details": {
            "default": default,
            "batch_8": batched,
            "rounds": rounds,
            "seeds": SEEDS[size],
            "runs_written": len(written),
        },
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true")
    group.add_argument("--tiny", action="store_true")
    args = ap.parse_args(argv)
    print(json.dumps(measure(args.quick, args.tiny), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
