"""A multi-seed lottery-ticket study as a user runs it: ``mlprune sweep`` with its defaults against the
bare script once per seed, one after the other (``study_vs_bare``).

Workload (OpenLTH's ``mnist_lenet_300_100`` protocol): LeNet-300-100, kaiming-normal init, SGD lr 0.1,
batch 128; train, then per level prune 20 % of the surviving weights by global magnitude (the output layer
excluded), rewind the survivors to the initialization and retrain; 5 levels x 10 epochs, seeds 0-2. The
data are real MNIST IDX files written from scikit-learn's digits (8x8, resized to 20x20 and centred in
28x28 as MNIST's digits are, shifted by up to 2 px): 4,000 training and 1,000 test images, the test
images drawn from digits the training images never saw.

Sides, each a whole process (imports included), alternated A B A B and the medians taken:

- ``sweep``: ``mlprune sweep study.yaml --seeds 0-2`` into an existing store, no flags, the user's
  environment (no MLPRUNE_THREADS, no OMP setting);
- ``bare``: ``bare_lottery.py`` once per seed, one process after the other (the wall of the three);
- ``sweep_one_thread``: the sweep at ``MLPRUNE_THREADS=1 --scheduler sync``, one state after the other
  on one thread: ``defaults_speedup`` = it / ``sweep`` says what the defaults gain over one thread;
- ``sweep_sync``: the sweep at ``--scheduler sync``, one state after the other in one process with all
  cores (the default before ``auto``): ``side_by_side_speedup`` = it / ``sweep``.

Each side's CPU seconds (its processes and their children, ``RUSAGE_CHILDREN``) are reported beside the
walls, and the load average before each: on a shared machine the walls move with the neighbours.

    python benchmarks/bench_study.py [--quick | --tiny] [--reps N] [--before CHECKOUT]   # JSON on stdout
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import _common  # noqa: E402

SIZES = {
    "full": dict(n_train=4_000, n_test=1_000, seeds=3, levels=5, epochs=10, reps=3),
    "quick": dict(n_train=4_000, n_test=1_000, seeds=3, levels=5, epochs=10, reps=2),
    "tiny": dict(n_train=128, n_test=64, seeds=1, levels=1, epochs=1, reps=1),
}
KINDS = ("sweep", "bare", "sweep_one_thread", "sweep_sync")
RECIPE = """\
name: study
params: {{levels: {levels}, epochs: {epochs}, seed: 0}}
root: {{model: lenet_300_100, dataset: mnist, seed: $seed, init: kaiming_normal, augment: false, data_dir: {data}}}
train: {{epochs: $epochs, lr: 0.1, batch_size: 128, optimizer: sgd}}
rounds: $levels
prune: {{method: l1_unstructured, scope: global, amount: 0.2, exclude: ['@output']}}
reinit: {{strategy: rewind, to: root}}
"""
BARE_ARGS = ("--lr", "0.1", "--batch", "128", "--init", "kaiming_normal", "--scope", "global", "--exclude-output")
EXPERIMENT = "bench-study"


def digits_mnist(root: Path, n_train: int, n_test: int) -> Path:
    """MNIST IDX files of scikit-learn's digits resized to 28x28 under ``root/MNIST/raw``; returns root."""
    import importlib.util

    import numpy as np
    import torch

    spec = importlib.util.find_spec("sklearn")
    if spec is None:
        raise SystemExit("bench_study needs scikit-learn (its digits)")
    with gzip.open(Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz") as file:
        table = np.loadtxt(file, delimiter=",")
    images = torch.from_numpy(table[:, :64].reshape(-1, 1, 8, 8) / 16.0).float()
    labels = table[:, 64].astype(np.uint8)
    big = torch.nn.functional.interpolate(images, size=(20, 20), mode="bilinear", align_corners=False)
    big = torch.nn.functional.pad(big, (4, 4, 4, 4)).squeeze(1).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(labels))
    held_out = len(labels) // 5
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for (images_name, labels_name), pool, n in (
        ((_common.IDX[0], _common.IDX[1]), order[held_out:], n_train),
        ((_common.IDX[2], _common.IDX[3]), order[:held_out], n_test),
    ):
        pick = rng.choice(pool, n)
        shifts = rng.integers(-2, 3, (n, 2))
        out = np.stack([np.roll(big[i], tuple(s), axis=(0, 1)) for i, s in zip(pick, shifts)])
        _common._write_idx(raw / images_name, out)
        _common._write_idx(raw / labels_name, labels[pick])
    return root


def bare_args(seed: int, levels: int, epochs: int, *extra: str) -> list[str]:
    return ["--seed", str(seed), "--levels", str(levels), "--epochs", str(epochs), *BARE_ARGS, *extra]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Study:
    def __init__(self, tmp: Path, size: dict, mlprune_from: Path, before: Path | None = None):
        self.tmp, self.size, self.before = tmp, size, before
        self.data = digits_mnist(tmp / "data", size["n_train"], size["n_test"])
        self.recipe = tmp / "study.yaml"
        self.recipe.write_text(RECIPE.format(levels=size["levels"], epochs=size["epochs"], data=self.data))
        self.env = _common.user_env(
            {
                "MLPRUNE_CACHE_DIR": str(tmp / "cache"),
                "MLPRUNE_FIGURES": "0",
                "PYTHONPATH": os.pathsep.join([str(mlprune_from), *filter(None, [os.environ.get("PYTHONPATH")])]),
                "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            }
        )
        self.stores = 0
        self.accuracies: dict[str, list] = {}
        self.bare_runs: list[dict] = []

    def _store(self) -> tuple[str, Path]:
        self.stores += 1
        folder = self.tmp / f"store-{self.stores}"
        uri, _ = _common.fresh_store(folder, EXPERIMENT)
        return uri, folder

    def _sweep(self, one_thread: bool, checkout: Path | None = None, sync: bool = False) -> None:
        uri, folder = self._store()
        env = dict(self.env, MLFLOW_TRACKING_URI=uri, **({"MLPRUNE_THREADS": "1"} if one_thread else {}))
        if checkout is not None:  # another checkout's mlprune (before / after in one run)
            env["PYTHONPATH"] = os.pathsep.join([str(checkout), *filter(None, [os.environ.get("PYTHONPATH")])])
        argv = [
            sys.executable,
            "-m",
            "mlprune",
            "sweep",
            str(self.recipe),
            "--seeds",
            f"0-{self.size['seeds'] - 1}",
            "-e",
            EXPERIMENT,
            *(("--scheduler", "sync") if one_thread or sync else ()),
        ]
        proc = subprocess.run(argv, env=env, cwd=folder, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"mlprune sweep failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        label = "sweep_one_thread" if one_thread else "sweep_sync" if sync else "sweep"
        self.accuracies.setdefault(label, _all_accuracies(uri))

    def _bare(self, *extra: str, label: str = "bare", seeds: int | None = None) -> None:
        finals = []
        for seed in range(seeds or self.size["seeds"]):
            out = _common.run_bare(
                self.data,
                *bare_args(seed, self.size["levels"], self.size["epochs"], *extra),
                env=self.env,
                cwd=self.tmp,
            )
            if not extra or self.size["seeds"] == 1:  # (the smoke test's only bare process is pinned)
                self.bare_runs.append(
                    {k: out[k] for k in ("threads", "omp_env", "mlprune_env", "mlprune_modules", "loop_s")}
                )
            finals += [round(a, 6) for a in out["accuracies"]]
        self.accuracies.setdefault(label, sorted(finals))

    def warm(self) -> None:
        """One process that reads what every side's processes read (torch's libraries, MLflow, the data),
        and the stores' migrated template made (its writes would slow the first side's commits)."""
        _common.migration_s()
        code = "import torch, torch._dynamo, torchvision, mlflow.store.tracking.sqlalchemy_store, mlprune.cli"
        subprocess.run([sys.executable, "-c", code], env=self.env, check=True, timeout=600)
        for path in (self.data / "MNIST" / "raw").iterdir():
            path.read_bytes()

    def time(self, kind: str) -> tuple[float, float]:
        """(wall, CPU seconds) of one side, started with nothing waiting to be written: a side's commits
        (fsync) must not wait for the writes of the side before."""
        os.sync()
        cpu, started = _children_cpu(), time.perf_counter()
        if kind == "bare_one_thread":
            self._bare("--threads", "1", label=kind, seeds=1)
        elif kind == "bare":
            self._bare()
        else:
            before = self.before if kind == "sweep_before" else None
            self._sweep(one_thread=kind == "sweep_one_thread", checkout=before, sync=kind == "sweep_sync")
        return time.perf_counter() - started, _children_cpu() - cpu


def _all_accuracies(uri: str) -> list[float]:
    """Every state's test accuracy in the store, sorted (sqlite, read without MLflow)."""
    import sqlite3

    with sqlite3.connect(uri[len("sqlite:///") :]) as db:
        rows = db.execute("SELECT value FROM latest_metrics WHERE key = 'test_accuracy'").fetchall()
    return sorted(round(value, 6) for (value,) in rows)


def _within(part: list, whole: list) -> bool:
    """Every value of `part` in `whole`, as many times (multisets)."""
    rest = list(whole)
    for value in part:
        if value not in rest:
            return False
        rest.remove(value)
    return True


def measure(
    quick: bool = False,
    tiny: bool = False,
    reps: int | None = None,
    mlprune_from: str | os.PathLike | None = None,
    before: str | os.PathLike | None = None,
) -> dict:
    """`before`: another checkout whose `mlprune sweep` is timed too (``sweep_before``, its defaults)."""
    size = dict(SIZES["tiny" if tiny else "quick" if quick else "full"])
    reps = reps or size["reps"]
    # the smoke test (nothing timed) runs each process once: its bare side is the same-maths check's process
    kinds = ("sweep", "sweep_one_thread", "bare_one_thread") if tiny else KINDS
    kinds += ("sweep_before",) if before else ()
    walls = {k: [] for k in kinds}
    cpus = {k: [] for k in kinds}
    loads = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="mlprune-bench-study-") as tmp:
        study = Study(Path(tmp), size, Path(mlprune_from or REPO).resolve(), Path(before).resolve() if before else None)
        if not tiny:  # warm-up: the page cache (a cold first process reads torch's libraries from disk: +2.5 s)
            study.warm() if quick else study.time("sweep")
        for rep in range(reps):
            order = kinds[rep % len(kinds) :] + kinds[: rep % len(kinds)]  # rotate who goes first
            for kind in order:
                loads[kind].append(_common.load_average())
                wall, cpu = study.time(kind)
                walls[kind].append(wall)
                cpus[kind].append(cpu)
        # the same maths: the bare script at one thread, seed 0, reaches the accuracies of seed 0's states in the
        # one-thread sweep (each of its accuracies is among the sweep's)
        if not tiny:
            study.time("bare_one_thread")
    if tiny:
        for table in (walls, cpus, loads):
            table["bare"] = table.pop("bare_one_thread")
    m = {k: _common.median(v) for k, v in walls.items()}
    c = {k: _common.median(v) for k, v in cpus.items()}
    paired = [s / b for s, b in zip(walls["sweep"], walls["bare"])]
    compared = {"study_before_vs_bare": m["sweep_before"] / m["bare"]} if before else {}
    return {
        **compared,
        "study_vs_bare": m["sweep"] / m["bare"],
        "study_vs_bare_paired_median": _common.median(paired),
        "defaults_speedup": m["sweep_one_thread"] / m["sweep"],
        **({"side_by_side_speedup": m["sweep_sync"] / m["sweep"]} if "sweep_sync" in m else {}),
        "study_cpu_vs_bare": c["sweep"] / c["bare"],
        "medians_s": {k: round(v, 3) for k, v in m.items()},
        "cpu_medians_s": {k: round(v, 3) for k, v in c.items()},
        "walls_s": {k: [round(x, 3) for x in v] for k, v in walls.items()},
        "cpu_s": {k: [round(x, 3) for x in v] for k, v in cpus.items()},
        "load_average_before": loads,
        "test_accuracies": study.accuracies,
        "same_accuracies": _within(study.accuracies["bare_one_thread"], study.accuracies["sweep_one_thread"]),
        "bare_processes": study.bare_runs[: size["seeds"]],
        "workload": {
            **size,
            "repetitions": reps,
            "model": "lenet_300_100",
            "init": "kaiming_normal",
            "lr": 0.1,
            "batch_size": 128,
            "prune": "l1_unstructured 0.2 global, output excluded",
            "reinit": "rewind to init",
            "data": "digits resized to 28x28 as MNIST IDX",
        },
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true")
    group.add_argument("--tiny", action="store_true")
    ap.add_argument("--reps", type=int)
    ap.add_argument("--mlprune-from", metavar="CHECKOUT", help="time the mlprune of another checkout")
    ap.add_argument("--before", metavar="CHECKOUT", help="also time this checkout's sweep (sweep_before)")
    args = ap.parse_args(argv)
    print(json.dumps(measure(args.quick, args.tiny, args.reps, args.mlprune_from, args.before), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
