"""What mlprune costs over a bare PyTorch loop: the same lottery-ticket workload, two ways.

Workload: lenet_300_100 on synthetic MNIST-shaped data (``_common.write_mnist``: real
IDX files, read by ``load_data("mnist")``), SGD (lr 0.01, momentum 0.9), batch 60;
train, then R rounds of: prune 20% of the remaining weights of every layer by |w|
(``l1_unstructured``, layer scope), rewind the survivors to the initialization, retrain
E epochs. Every state is evaluated on the test split.

A. mlprune: the recipe as a YAML file, ``compile_recipe`` + ``run_plan`` into a fresh
   sqlite store (full tracking: runs, tags, metrics, safetensors artifacts, lookups).
B. bare: the loop one writes by hand (``bare_lottery.py``), in its own process as a user runs
   it: mlprune never imported, no OpenMP setting, torch's default thread count; tensors in
   memory, ``torch.randperm`` batches (the seed schedule mlprune documents), masks applied
   after every optimizer step (``p.mul_(mask)``), masks by hand (top-k of |w| among
   survivors), no tracking and no files. Its loop is timed inside its process (imports and
   reading the files excluded, as for A).

A runs at mlprune's default (the API computes in this process with all cores; ``run.py``'s
``MLPRUNE_THREADS=1`` of the other in-process figures is lifted for it). The maths is the
same, so B at A's thread count reproduces A's states exactly (``bitwise_equal``, one untimed
run: the final weights and masks are ``torch.equal``, every state's test accuracy is the
same float; B's pruned weights may be -0.0 where A's are +0.0). B skips mlprune's gradient
masking and loss bookkeeping, which favours B. A and B alternate over the repetitions;
medians are reported.

Figures:
- ``pipeline_vs_bare``: median wall time of A / median of B (goal <= 1.10); beside it the
  median of the per-repetition ratios and the ratio of the fastest runs, to judge noise.
- ``per_state_overhead_ms``: per state, the wall time of reaching it in A minus the time
  spent in training, evaluation, mask and reinit maths (``training.train``,
  ``training.evaluate``, ``pruning.prune_masks``, ``reinit.reinit_weights``, timed by
  wrapping them); the median over states and repetitions (goal <= 50 ms). The mean of
  (A - B) / states is reported beside it as a cross-check.

    python benchmarks/bench_pipeline.py [--quick | --tiny]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import _common  # noqa: E402

import mlprune  # noqa: E402,F401 -- before torch, as `mlprune run`: passive OpenMP waits (docs/performance.md)

# isort: split
import torch  # noqa: E402

SIZES = {  # n_train, n_test, rounds, epochs, repetitions
    "full": dict(n_train=10_000, n_test=2_000, rounds=3, epochs=3, reps=15),
    "quick": dict(n_train=10_000, n_test=2_000, rounds=1, epochs=2, reps=3),
    "tiny": dict(n_train=600, n_test=200, rounds=1, epochs=1, reps=1),
}
LR, MOMENTUM, BATCH, AMOUNT, SEED = 0.01, 0.9, 60, 0.2, 0

RECIPE = """\
name: bench_lt
params: {{rounds: {rounds}, epochs: {epochs}, data_dir: null}}
root: {{model: lenet_300_100, dataset: mnist, seed: {seed}, augment: false}}
train: {{epochs: $epochs, lr: {lr}, momentum: {momentum}, batch_size: {batch}, optimizer: sgd}}
rounds: $rounds
prune: {{method: l1_unstructured, amount: {amount}}}
reinit: {{strategy: rewind, to: root}}
"""


# ----------------------------------------------------------------------------- A: mlprune


def write_recipe(folder: Path, rounds: int, epochs: int) -> Path:
    path = folder / "bench_lt.yaml"
    path.write_text(
        RECIPE.format(rounds=rounds, epochs=epochs, seed=SEED, lr=LR, momentum=MOMENTUM, batch=BATCH, amount=AMOUNT)
    )
    return path


class MathsClock:
    """Wraps the maths functions mlprune's DAG calls and accumulates their time."""

    TARGETS = (
        ("training.loop", "train"),
        ("training.loop", "evaluate"),
        ("pruning.masks", "prune_masks"),
        ("reinit.strategies", "reinit_weights"),
    )

    def __init__(self):
        self.total = 0.0
        self._saved = []
        self._depth = 0

    def __enter__(self):
        import importlib

        for module_name, attr in self.TARGETS:
            module = importlib.import_module(f"mlprune.{module_name}")
            original = getattr(module, attr)
            self._saved.append((module, attr, original))
            setattr(module, attr, self._wrap(original))
        return self

    def _wrap(self, fn):
        def timed(*args, **kwargs):
            self._depth += 1
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:  # evaluate() inside train() is counted once
                    self.total += time.perf_counter() - started

        return timed

    def __exit__(self, *exc):
        for module, attr, original in reversed(self._saved):
            setattr(module, attr, original)


class StoreCalls:
    """Counts the MlflowClient calls made while it is active (store round trips), by method."""

    METHODS = (
        "search_runs",
        "get_run",
        "create_run",
        "log_batch",
        "set_tag",
        "set_terminated",
        "log_artifacts",
        "log_artifact",
        "download_artifacts",
        "get_experiment",
        "get_experiment_by_name",
    )

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.seconds = 0.0
        self._saved = []

    def __enter__(self):
        from mlflow.tracking import MlflowClient

        for name in self.METHODS:
            original = getattr(MlflowClient, name)
            self._saved.append((MlflowClient, name, original))
            setattr(MlflowClient, name, self._wrap(name, original))
        return self

    def _wrap(self, name, fn):
        def counted(*args, **kwargs):
            self.counts[name] = self.counts.get(name, 0) + 1
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        return counted

    def __exit__(self, *exc):
        for cls, name, original in reversed(self._saved):
            setattr(cls, name, original)


def run_mlprune(recipe: Path, data_dir: Path, store_dir: Path) -> dict:
    """One timed run of the recipe into a fresh store; per-state wall and maths times."""
    from mlprune import Experiment, compile_recipe, run_plan

    uri, exp_id = _common.fresh_store(store_dir)
    per_state = []
    with MathsClock() as maths:
        started = time.perf_counter()
        last = [started, 0.0]

        def on_state(node, state):
            now = time.perf_counter()
            per_state.append({"node": node.name, "wall_s": now - last[0], "maths_s": maths.total - last[1]})
            last[0], last[1] = now, maths.total

        plan = compile_recipe(recipe, {"data_dir": str(data_dir)})
        experiment = Experiment(tracking_uri=uri, experiment_id=exp_id)
        states = run_plan(plan, experiment, on_state=on_state)
        wall = time.perf_counter() - started
    return {"wall_s": wall, "states": per_state, "experiment": experiment, "result": states}


# ----------------------------------------------------------------------------- B: bare loop

BARE_ARGS = (
    "--lr",
    str(LR),
    "--momentum",
    str(MOMENTUM),
    "--batch",
    str(BATCH),
    "--amount",
    str(AMOUNT),
    "--scope",
    "layer",
    "--seed",
    str(SEED),
)


def bare_lottery(data_dir: Path, tmp: Path, *, rounds: int, epochs: int, threads: int | None = None) -> dict:
    """B in its own process (`_common.run_bare`): {"loop_s", "accuracies", "threads", ...}; with `threads`,
    pinned to that count and its final weights and masks read back ("state")."""
    extra = ["--threads", str(threads), "--save", str(tmp / "bare.safetensors")] if threads else []
    out = _common.run_bare(data_dir, "--levels", str(rounds), "--epochs", str(epochs), *BARE_ARGS, *extra, cwd=tmp)
    if threads:
        from safetensors.torch import load_file

        out["state"] = load_file(str(tmp / "bare.safetensors"))
    return out


def _bare_name(key: str) -> str:
    """mlprune's lenet_300_100 parameter name -> the bare script's (its Sequential starts with a Flatten)."""
    return re.sub(r"^classifier\.(\d+)", lambda m: str(int(m.group(1)) + 1), key)


def mlprune_threads() -> int:
    """The torch thread count mlprune computes states with in this process."""
    from mlprune.executor import compute_threads

    return compute_threads()


# ----------------------------------------------------------------------------- measure


def _same(a_run: dict, bare: dict) -> bool:
    states = a_run["result"]
    order = list(states)
    accs = [states[n].metrics["test_accuracy"] for n in order]
    last = states[order[-1]]
    theirs = bare["state"]
    return (
        accs == bare["accuracies"]
        and len(theirs) == len(last.weights) + len(last.masks)
        and all(torch.equal(v, theirs[f"weight:{_bare_name(k)}"]) for k, v in last.weights.items())
        and all(torch.equal(v, theirs[f"mask:{_bare_name(k)}"]) for k, v in last.masks.items())
    )


@contextlib.contextmanager
def _defaults():
    """mlprune's default thread count for A (MLPRUNE_THREADS lifted), restored after."""
    pinned = os.environ.pop("MLPRUNE_THREADS", None)
    try:
        yield
    finally:
        if pinned is not None:
            os.environ["MLPRUNE_THREADS"] = pinned


def measure(quick: bool = False, tiny: bool = False, reps: int | None = None) -> dict:
    size = dict(SIZES["tiny" if tiny else "quick" if quick else "full"])
    reps = reps or size["reps"]
    with tempfile.TemporaryDirectory(prefix="mlprune-bench-") as tmp, _defaults():
        tmp = Path(tmp)
        data_dir = _common.write_mnist(tmp / "data", size["n_train"], size["n_test"])
        recipe = write_recipe(tmp, size["rounds"], size["epochs"])
        # warm-up (imports, allocator, the data's in-process cache), and the bitwise check at A's threads
        with StoreCalls() as calls:
            warm = run_mlprune(recipe, data_dir, tmp / "store-warm")
        threads = mlprune_threads()
        bare = bare_lottery(data_dir, tmp, rounds=size["rounds"], epochs=size["epochs"], threads=threads)
        bitwise = _same(warm, bare)
        a_walls, b_walls, overheads, diffs = [], [], [], []
        bare_process = None
        n_states = len(warm["states"])
        for rep in range(reps):
            for which in (0, 1) if rep % 2 == 0 else (1, 0):  # alternate A and B
                if which == 0:
                    run = run_mlprune(recipe, data_dir, tmp / f"store-{rep}")
                    a_walls.append(run["wall_s"])
                    overheads += [s["wall_s"] - s["maths_s"] for s in run["states"]]
                else:  # the smoke test times nothing: its bitwise check's run (at A's threads) stands in
                    out = bare if tiny else bare_lottery(data_dir, tmp, rounds=size["rounds"], epochs=size["epochs"])
                    b_walls.append(out["loop_s"])
                    bare_process = {k: out[k] for k in ("threads", "omp_env", "mlprune_env", "mlprune_modules")}
            diffs.append((a_walls[-1] - b_walls[-1]) / n_states)
    a, b = _common.median(a_walls), _common.median(b_walls)
    return {
        "pipeline_vs_bare": a / b,
        # the same from other estimators, to judge the noise: the median of the ratios of the
        # runs made back to back, and the ratio of the fastest runs (noise only adds time)
        "pipeline_vs_bare_paired_median": _common.median([x / y for x, y in zip(a_walls, b_walls)]),
        "pipeline_vs_bare_of_minima": min(a_walls) / min(b_walls),
        "per_state_overhead_ms": 1000 * _common.median(overheads),
        "per_state_overhead_ms_p90": 1000 * sorted(overheads)[int(0.9 * (len(overheads) - 1))],
        "per_state_overhead_ms_max": 1000 * max(overheads),
        "per_state_overhead_ms_from_walls": 1000 * _common.median(diffs),
        "pipeline_s": a,
        "bare_s": b,
        "pipeline_walls_s": [round(x, 4) for x in a_walls],
        "bare_walls_s": [round(x, 4) for x in b_walls],
        "bitwise_equal": bitwise,
        "store_calls_per_state": {k: round(v / n_states, 2) for k, v in sorted(calls.counts.items())},
        "store_ms_per_state_warmup_run": 1000 * calls.seconds / n_states,
        "torch_threads": threads,
        "bare_process": bare_process,
        "states": n_states,
        "final_test_accuracy": bare["accuracies"][-1],
        "store_migration_s": _common.migration_s(),
        "workload": {
            **size,
            "repetitions": reps,
            "model": "lenet_300_100",
            "batch_size": BATCH,
            "lr": LR,
            "momentum": MOMENTUM,
            "prune": f"l1_unstructured {AMOUNT} per layer",
            "reinit": "rewind to root",
        },
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
