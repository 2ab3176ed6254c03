"""What resumable checkpoints cost: a recipe run with a checkpoint every epoch / without any.

Workloads: the presets ``recipes/lth_lenet_300_100.yaml`` and ``recipes/lth_resnet20_cifar10.yaml``
at their default protocol (digits, a few rounds of short trainings, their controls), each
run into a fresh sqlite store (full tracking) in this process, three ways:

- ``1ep``: the default (run option ``checkpoint_every: 1ep``, ``MLPRUNE_CHECKPOINT_BUDGET``
  unset): a checkpoint is due after every epoch but a training's last, and written unless
  checkpoints would cost more than 5% of the training's time (the previous one still being
  written, or less than 20x its cost since it); each written one is copied in the training
  thread, then serialized, hashed and committed on the claim run in a background thread, the
  newest two kept, all deleted when the state is finished;
- ``strict``: every due checkpoint written (``MLPRUNE_CHECKPOINT_BUDGET=inf``);
- ``off``: no checkpoint (``checkpoint_every: off``).

The three alternate over the repetitions (the order rotates), after one warm-up run of each
(imports, data in memory); medians.

Figures:
- ``checkpoint_cost_lenet_300_100`` and ``checkpoint_cost_resnet20``: median wall time of ``1ep``
  / ``off`` (goal <= 1.05); beside them ``strict`` / ``off`` (``strict_ratio``), the median of the
  per-repetition ratios, the checkpoints committed per run and their bytes, the milliseconds a
  checkpoint costs in the training thread and in the writer thread, and ``equal_results`` (the
  three reach the same keys with bitwise the same weights: checkpointing changes nothing stored).

    python benchmarks/bench_checkpoint.py [--quick | --tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import _common  # noqa: E402

import mlprune  # noqa: E402,F401 -- before torch, as `mlprune run`: passive OpenMP waits (docs/performance.md)

REPO = Path(__file__).resolve().parents[1]
RECIPES = {"lenet_300_100": "lth_lenet_300_100", "resnet20": "lth_resnet20_cifar10"}
SIZES = {  # repetitions of each side; overrides of the recipes' default protocol
    "full": dict(reps=5, overrides={}),
    "quick": dict(reps=2, overrides={}),
    "tiny": dict(reps=1, overrides={"rounds": 1, "epochs": 2, "train_size": 128, "test_size": 64}),
}


MODES = {"1ep": ("1ep", None), "strict": ("1ep", "inf"), "off": ("off", None)}  # checkpoint_every, budget


def _run(recipe: str, overrides: dict, folder: Path, mode: str) -> tuple[float, dict, str, str]:
    """(wall seconds, {key: run id}, tracking URI, experiment id) of one run of a recipe into a new store."""
    from mlprune import Experiment, compile_recipe, run_plan
    from mlprune.names import ENV_CHECKPOINT_BUDGET

    every, budget = MODES[mode]
    uri, exp_id = _common.fresh_store(folder)
    plan = compile_recipe(REPO / "recipes" / f"{recipe}.yaml", overrides)
    before = os.environ.pop(ENV_CHECKPOINT_BUDGET, None)
    if budget is not None:
        os.environ[ENV_CHECKPOINT_BUDGET] = budget
    try:
        started = time.perf_counter()
        states = run_plan(plan, Experiment(tracking_uri=uri, experiment_id=exp_id, checkpoint_every=every))
        wall = time.perf_counter() - started
    finally:
        os.environ.pop(ENV_CHECKPOINT_BUDGET, None)
        if before is not None:
            os.environ[ENV_CHECKPOINT_BUDGET] = before
    return wall, {node.key: states[node.name].run_id for node in plan.nodes}, uri, exp_id


class CheckpointClock:
    """Wraps the two halves of a checkpoint: ``TrainingHooks.save`` (in the training thread: copying the
    tensors) and ``RunCheckpoints.commit`` (in the writer thread: serializing, hashing, files, record,
    metric, deleting the oldest); counts them, their seconds and the bytes committed."""

    def __init__(self):
        self.saves, self.save_s, self.commits, self.commit_s, self.bytes = 0, 0.0, 0, 0.0, 0

    def __enter__(self):
        from mlprune.store.checkpoints import RunCheckpoints
        from mlprune.training.checkpoint import TrainingHooks

        self._originals = [
            (TrainingHooks, "save", TrainingHooks.save),
            (RunCheckpoints, "commit", RunCheckpoints.commit),
        ]
        clock = self

        def save(hooks, i, sums):
            started = time.perf_counter()
            try:
                return clock._originals[0][2](hooks, i, sums)
            finally:
                clock.saves += 1
                clock.save_s += time.perf_counter() - started

        def commit(writer, label, step, iteration, files):
            started = time.perf_counter()
            try:
                return clock._originals[1][2](writer, label, step, iteration, files)
            finally:
                clock.commits += 1
                clock.commit_s += time.perf_counter() - started
                clock.bytes += sum(len(content) for content in files.values())

        TrainingHooks.save, RunCheckpoints.commit = save, commit
        return self

    def __exit__(self, *exc):
        for owner, name, original in self._originals:
            setattr(owner, name, original)


def _same_weights(a: tuple, b: tuple) -> bool:
    import torch

    from mlprune.store import Store

    (_, runs_a, uri_a, id_a), (_, runs_b, uri_b, id_b) = a, b
    if set(runs_a) != set(runs_b):
        return False
    store_a, store_b = Store(tracking_uri=uri_a, experiment_id=id_a), Store(tracking_uri=uri_b, experiment_id=id_b)
    for key in runs_a:
        if store_a.spec(runs_a[key]).get("analysis"):
            continue
        x, y = store_a.load(runs_a[key]), store_b.load(runs_b[key])
        if any(not torch.equal(x.weights[n], y.weights[n]) for n in x.weights) or any(
            not torch.equal(x.masks[n], y.masks[n]) for n in x.masks
        ):
            return False
    return True


def measure_recipe(name: str, quick: bool = False, tiny: bool = False, reps: int | None = None) -> dict:
    size = SIZES["tiny" if tiny else "quick" if quick else "full"]
    reps = reps or size["reps"]
    recipe = RECIPES[name]
    with tempfile.TemporaryDirectory(prefix="mlprune-bench-checkpoint-") as tmp:
        tmp = Path(tmp)
        runs = {mode: [] for mode in MODES}
        last = {}
        for mode in MODES if not tiny else ():  # warm-up: imports, data and model templates in memory
            _run(recipe, size["overrides"], tmp / f"warm-{mode}", mode)
        clocks = {mode: CheckpointClock() for mode in MODES}
        for rep in range(reps):
            order = list(MODES)[rep % len(MODES) :] + list(MODES)[: rep % len(MODES)]
            for mode in order:
                with clocks[mode]:
                    result = _run(recipe, size["overrides"], tmp / f"{mode}-{rep}", mode)
                runs[mode].append(result[0])
                last[mode] = result
        medians = {mode: _common.median(times) for mode, times in runs.items()}
        per_mode = {
            mode: {
                "checkpoints_per_run": clock.commits / reps,
                "bytes_per_checkpoint": clock.bytes / clock.commits if clock.commits else 0,
                # all the training thread spent in save (due ones skipped included) per one written
                "training_thread_ms_per_checkpoint": 1000 * clock.save_s / clock.commits if clock.commits else 0.0,
                "writer_thread_ms_per_checkpoint": 1000 * clock.commit_s / clock.commits if clock.commits else 0.0,
            }
            for mode, clock in clocks.items()
            if mode != "off"
        }
        return {
            "ratio": medians["1ep"] / medians["off"],
            "strict_ratio": medians["strict"] / medians["off"],
            "ratio_paired_median": _common.median([a / b for a, b in zip(runs["1ep"], runs["off"])]),
            "strict_ratio_paired_median": _common.median([a / b for a, b in zip(runs["strict"], runs["off"])]),
            "medians_s": medians,
            "runs_s": runs,
            **{f"{mode}_{name}": value for mode, figures in per_mode.items() for name, value in figures.items()},
            "states": len(last["1ep"][1]),
            "equal_results": _same_weights(last["1ep"], last["off"]) and _same_weights(last["strict"], last["off"]),
            "workload": {"recipe": recipe, "overrides": size["overrides"], "repetitions": reps},
        }


def measure(quick: bool = False, tiny: bool = False, reps: int | None = None) -> dict:
    details = {name: measure_recipe(name, quick, tiny, reps) for name in RECIPES}
    return {**{f"checkpoint_cost_{name}": details[name]["ratio"] for name in RECIPES}, "details": details}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--reps", type=int)
    args = ap.parse_args(argv)
    os.environ.setdefault("MLPRUNE_THREADS", "1")
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    print(json.dumps(measure(args.quick, args.tiny, args.reps), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
