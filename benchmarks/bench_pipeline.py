"""What mlprune costs over a bare PyTorch loop: the same lottery-ticket workload, two ways.

Workload: lenet_300_100 on synthetic MNIST-shaped data (``_common.write_mnist``: real
IDX files, read by ``load_data("mnist")``), SGD (lr 0.01, momentum 0.9), batch 60;
train, then R rounds of: prune 20% of the remaining weights of every layer by |w|
(``l1_unstructured``, layer scope), rewind the survivors to the initialization, retrain
E epochs. Every state is evaluated on the test split.

A. mlprune: the recipe as a YAML file, ``compile_recipe`` + ``run_plan`` into a fresh
   sqlite store (full tracking: runs, tags, metrics, safetensors artifacts, lookups).
B. bare: the loop one writes by hand: tensors in memory, ``torch.randperm`` batches
   (the seed schedule mlprune documents), masks applied after every optimizer step
   (``p.mul_(mask)``), masks by hand (top-k of |w| among survivors), no tracking and no
   files, the same torch thread count as mlprune (``MLPRUNE_THREADS``, default 1).

The maths is the same, so B reproduces A's states exactly (``bitwise_equal``: the final
weights and masks are ``torch.equal``, every state's test accuracy is the same float;
B's pruned weights may be -0.0 where A's are +0.0). B skips mlprune's gradient masking
and loss bookkeeping, which favours B. A and B alternate over the repetitions; medians
are reported. C, the bare loop once at torch's default thread count, says what pinning
the threads costs or saves (``bare_default_threads_vs_pinned``, one sample).

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
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import _common  # noqa: E402
import mlprune  # noqa: E402,F401 -- before torch, as `mlprune run`: passive OpenMP waits (docs/performance.md)

import torch  # noqa: E402

SIZES = {  # n_train, n_test, rounds, epochs, repetitions
    "full": dict(n_train=10_000, n_test=2_000, rounds=3, epochs=3, reps=15),
    "quick": dict(n_train=10_000, n_test=2_000, rounds=1, epochs=2, reps=3),
    "tiny": dict(n_train=600, n_test=200, rounds=1, epochs=1, reps=1),
}
LR, MOMENTUM, BATCH, AMOUNT, SEED = 0.01, 0.9, 60, 0.2, 0
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # mlprune.data.STATS["mnist"]: the standard constants

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
    path.write_text(RECIPE.format(rounds=rounds, epochs=epochs, seed=SEED, lr=LR, momentum=MOMENTUM,
                                  batch=BATCH, amount=AMOUNT))
    return path


class MathsClock:
    """Wraps the maths functions mlprune's DAG calls and accumulates their time."""

    TARGETS = (("training.loop", "train"), ("training.loop", "evaluate"), ("pruning.masks", "prune_masks"),
               ("reinit.strategies", "reinit_weights"))

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

    METHODS = ("search_runs", "get_run", "create_run", "log_batch", "set_tag", "set_terminated",
               "log_artifacts", "log_artifact", "download_artifacts", "get_experiment", "get_experiment_by_name")

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

def load_tensors(data_dir: Path):
    """The IDX files as tensors, normalized the standard MNIST way (untimed: both sides cache it)."""
    import numpy as np

    raw = data_dir / "MNIST" / "raw"

    def idx(name, offset, shape):
        arr = np.frombuffer((raw / name).read_bytes(), dtype=np.uint8, offset=offset)
        return torch.from_numpy(arr.copy()).reshape(shape)

    n_train = (raw / _common.IDX[1]).stat().st_size - 8
    n_test = (raw / _common.IDX[3]).stat().st_size - 8
    x_train = idx(_common.IDX[0], 16, (n_train, 1, 28, 28))
    y_train = idx(_common.IDX[1], 8, (n_train,)).long()
    x_test = idx(_common.IDX[2], 16, (n_test, 1, 28, 28))
    y_test = idx(_common.IDX[3], 8, (n_test,)).long()
    return x_train, y_train, x_test, y_test


def mlprune_threads() -> int:
    """The torch thread count mlprune computes states with (MLPRUNE_THREADS, for bitwise reproducibility)."""
    try:
        from mlprune.executor import compute_threads
    except ImportError:  # a version without thread pinning computes with torch's default
        return torch.get_num_threads()
    return compute_threads()


def bare_lottery(x_train_u8, y_train, x_test_u8, y_test, *, rounds: int, epochs: int,
                 threads: int | None = None) -> dict:
    """The lottery-ticket loop by hand: no tracking, no files. Returns accuracies, final weights, masks.

    `threads`: torch threads for the loop (default: as many as mlprune computes with).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads or mlprune_threads())
    try:
        return _bare_lottery(x_train_u8, y_train, x_test_u8, y_test, rounds=rounds, epochs=epochs)
    finally:
        torch.set_num_threads(before)


def _bare_lottery(x_train_u8, y_train, x_test_u8, y_test, *, rounds: int, epochs: int) -> dict:
    from mlprune.models import build_model  # the same architecture and initialization

    torch.set_flush_denormal(True)  # as mlprune's train() does (see training.py)
    x_train = (x_train_u8.to(torch.float32) / 255.0 - MNIST_MEAN) / MNIST_STD
    x_test = (x_test_u8.to(torch.float32) / 255.0 - MNIST_MEAN) / MNIST_STD
    model = build_model("lenet_300_100", num_classes=10, input_shape=(1, 28, 28), seed=SEED)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    masks = {name: torch.ones_like(p, dtype=torch.bool) for name, p in params.items() if name.endswith("weight")}
    loss_fn = torch.nn.CrossEntropyLoss()
    accuracies = []

    def evaluate():
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(y_test), 256):
                correct += int((model(x_test[i:i + 256]).argmax(1) == y_test[i:i + 256]).sum())
        model.train()
        accuracies.append(correct / len(y_test))

    def train():
        keep = [(params[n], m.to(torch.float32)) for n, m in masks.items()]
        with torch.no_grad():
            for p, k in keep:
                p.mul_(k)
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        for epoch in range(epochs):
            gen = torch.Generator().manual_seed((SEED * 1_000_003 + epoch) & ((1 << 63) - 1))
            perm = torch.randperm(len(y_train), generator=gen)
            for i in range(0, len(y_train), BATCH):
                idx = perm[i:i + BATCH]
                opt.zero_grad()
                loss_fn(model(x_train.index_select(0, idx)), y_train.index_select(0, idx)).backward()
                opt.step()
                with torch.no_grad():
                    for p, k in keep:
                        p.mul_(k)

    evaluate()                                   # init
    train()
    evaluate()                                   # trained
    for _ in range(rounds):
        with torch.no_grad():                    # prune 20% of each layer's survivors by |w|
            for name, mask in masks.items():
                alive = mask.reshape(-1).nonzero().squeeze(1)
                k = round(AMOUNT * alive.numel())
                gone = torch.topk(params[name].detach().reshape(-1)[alive].abs(), k, largest=False).indices
                mask.view(-1)[alive[gone]] = False
                params[name].masked_fill_(~mask, 0.0)
        evaluate()                               # pruned
        model.load_state_dict(init)              # rewind to the initialization
        train()
        evaluate()                               # retrained ticket
    return {"accuracies": accuracies, "weights": {k: v.clone() for k, v in model.state_dict().items()},
            "masks": {k: v.clone() for k, v in masks.items()}}


# ----------------------------------------------------------------------------- measure

def _same(a_run: dict, bare: dict) -> bool:
    states = a_run["result"]
    order = list(states)
    accs = [states[n].metrics["test_accuracy"] for n in order]
    last = states[order[-1]]
    weights, masks = last.weights, last.masks
    return (accs == bare["accuracies"]
            and set(weights) == set(bare["weights"])
            and all(torch.equal(weights[k], bare["weights"][k]) for k in weights)
            and set(masks) == set(bare["masks"])
            and all(torch.equal(masks[k], bare["masks"][k]) for k in masks))


def measure(quick: bool = False, tiny: bool = False, reps: int | None = None) -> dict:
    size = dict(SIZES["tiny" if tiny else "quick" if quick else "full"])
    reps = reps or size["reps"]
    default_threads = torch.get_num_threads()  # torch's own choice, before mlprune pins anything
    with tempfile.TemporaryDirectory(prefix="mlprune-bench-") as tmp:
        tmp = Path(tmp)
        data_dir = _common.write_mnist(tmp / "data", size["n_train"], size["n_test"])
        recipe = write_recipe(tmp, size["rounds"], size["epochs"])
        tensors = load_tensors(data_dir)
        # warm-up (imports, allocator, the data's in-process cache), and the bitwise check
        with StoreCalls() as calls:
            warm = run_mlprune(recipe, data_dir, tmp / "store-warm")
        bare = bare_lottery(*tensors, rounds=size["rounds"], epochs=size["epochs"])
        bitwise = _same(warm, bare)
        a_walls, b_walls, c_walls, overheads, diffs = [], [], [], [], []
        n_states = len(warm["states"])
        for rep in range(reps):
            for which in ((0, 1) if rep % 2 == 0 else (1, 0)):        # alternate A and B
                if which == 0:
                    run = run_mlprune(recipe, data_dir, tmp / f"store-{rep}")
                    a_walls.append(run["wall_s"])
                    overheads += [s["wall_s"] - s["maths_s"] for s in run["states"]]
                else:
                    started = time.perf_counter()
                    bare_lottery(*tensors, rounds=size["rounds"], epochs=size["epochs"],
                                 threads=None if which == 1 else default_threads)
                    (b_walls if which == 1 else c_walls).append(time.perf_counter() - started)
            diffs.append((a_walls[-1] - b_walls[-1]) / n_states)
        if not tiny and default_threads != mlprune_threads():  # C, once: B at torch's default threads
            started = time.perf_counter()
            bare_lottery(*tensors, rounds=size["rounds"], epochs=size["epochs"], threads=default_threads)
            c_walls.append(time.perf_counter() - started)
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
        "torch_threads": mlprune_threads(),
        "torch_threads_default": default_threads,
        # what pinning the thread count (for reproducibility) costs a bare loop: > 1 = pinned is faster
        # (one sample, after the A/B repetitions: context, not a figure)
        "bare_default_threads_vs_pinned": c_walls[0] / b if c_walls else None,
        "states": n_states,
        "final_test_accuracy": bare["accuracies"][-1],
        "store_migration_s": _common.migration_s(),
        "workload": {**size, "repetitions": reps, "model": "lenet_300_100", "batch_size": BATCH,
                     "lr": LR, "momentum": MOMENTUM, "prune": f"l1_unstructured {AMOUNT} per layer",
                     "reinit": "rewind to root"},
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
