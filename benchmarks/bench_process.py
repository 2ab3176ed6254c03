"""What a user waits for: whole processes, from the shell prompt back to the shell prompt.

The other benchmarks time the pipeline inside one warm process; a user runs ``mlprune run``,
which also pays for starting Python, importing torch and mlflow, opening (or creating) the
store and writing the workflow run's files. Here every figure is the wall time of a whole
process, A and B alternating over the repetitions (the order rotates), medians taken.

Workload: lenet_300_100 on 5 000 synthetic MNIST-format images (``_common.write_mnist``:
real IDX files, read by ``load_data("mnist")``), 2 000 test images; train 5 epochs, then
3 rounds of prune 20 % per layer by |w| -> rewind to the init -> retrain 5 epochs (8
states, SGD lr 0.01 momentum 0.9, batch 60: the recipe of ``bench_pipeline.py``, written
as a YAML file). ``--tiny`` shrinks it to a smoke test.

Processes (each a fresh ``python``; ``mlprune`` is ``python -m mlprune``, the console script's code):

- ``bare``: a PyTorch script doing the same maths by hand (``bare_lottery.py``: reads the IDX
  files, no tracking, no files) as a user runs it: mlprune never imported, no OpenMP setting,
  torch's default thread count (``bare_process`` records what its process ran with).
- ``run``: ``mlprune run recipe.yaml`` on an existing store (migrated, experiment made),
  at mlprune's default thread count (torch's, like the bare script), figures on (the default).
- ``run_fresh_store``: the same, where the run creates the sqlite store. mlprune copies a
  migrated empty store from its user cache (``MLPRUNE_CACHE_DIR``, warm here, as on a
  machine that ran mlprune once); the first store a machine ever gets pays MLflow's
  migrations once (``first_store_ever_s``, one sample, cache empty).
- ``run_one_thread``: ``run`` with ``MLPRUNE_THREADS=1`` (``single_chain_one_thread_vs_default``).
- ``cached_rerun``: ``mlprune run`` again on a store where every state exists.
- ``mlflow_run_cached``: the README's ``mlflow run <repo> -e lt_structuredL1 --env-manager local``
  on a store where that recipe's states exist (computed once, untimed, by the same command):
  MLflow's project runner (its CLI, the MLproject, a run, git) plus ``mlprune run``'s process.
- ``import_mlflow``: ``python -c "import mlflow"``, the floor of anything that talks to MLflow.

What a run leaves to the background (figures, a cached run's record: ``mlprune.background``)
is waited for after each timed process, untimed (``background_s``), so that it never runs
during the next one.

Figures: ``end_to_end_vs_bare`` = run / bare (goal <= 1.25), ``end_to_end_fresh_store_vs_bare``
= run_fresh_store / bare (<= 1.6), ``cached_rerun_s`` and ``cached_rerun_vs_import_mlflow`` =
cached_rerun / import_mlflow (<= 1.5), ``mlflow_run_cached_vs_import_mlflow`` = mlflow_run_cached /
import_mlflow (<= 2.5); ``single_chain_one_thread_vs_default`` = run_one_thread / run (reported:
what the default threads of a single chain gain over one). Beside them: ``import_torch_s`` and the final test accuracy each side printed (the
same maths at the same thread count gives the same accuracy).

    python benchmarks/bench_process.py [--quick | --tiny] [--mlprune-from CHECKOUT]

``--mlprune-from`` times another checkout's mlprune (before / after comparisons).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import _common  # noqa: E402

SIZES = {  # the workload stays the same for --quick (only repetitions are cut): figures are comparable
    "full": dict(n_train=5_000, n_test=2_000, rounds=3, epochs=5, reps=5),
    "quick": dict(n_train=5_000, n_test=2_000, rounds=3, epochs=5, reps=2),
    "tiny": dict(n_train=300, n_test=100, rounds=1, epochs=1, reps=1),
}
KINDS = (
    "bare",
    "run",
    "run_fresh_store",
    "run_one_thread",
    "cached_rerun",
    "mlflow_run_cached",
    "import_mlflow",
    "import_torch",
)
# the README's command; the smoke test (--tiny) shrinks the recipe it computes once
MLFLOW_RUN = ("-e", "lt_structuredL1", "--env-manager", "local")
MLFLOW_RUN_TINY = ("-P", "rounds=1", "-P", "epochs=1", "-P", "train_size=128")
EXPERIMENT = "bench-process"
_ACCURACY = re.compile(r"test_accuracy=([0-9.]+)")


class Processes:
    """The command lines and environments of the processes timed, in one temp dir."""

    def __init__(self, tmp: Path, size: dict, mlprune_from: Path, tiny: bool = False):
        self.tmp, self.size, self.repo = tmp, size, mlprune_from
        self.mlflow_args = (*MLFLOW_RUN, *(MLFLOW_RUN_TINY if tiny else ()))
        self.mlflow_store: tuple[str, Path] | None = None  # a store where `mlflow run`'s recipe is computed
        self.background_s: list[float] = []  # waited for background work, untimed
        self.data = _common.write_mnist(tmp / "data", size["n_train"], size["n_test"])
        self.recipe = tmp / "bench_process.yaml"
        self.recipe.write_text(
            "name: bench_process\n"
            f"params: {{rounds: {size['rounds']}, epochs: {size['epochs']}}}\n"
            f"root: {{model: lenet_300_100, dataset: mnist, seed: 0, augment: false, data_dir: {self.data}}}\n"
            "train: {epochs: $epochs, lr: 0.01, momentum: 0.9, batch_size: 60, optimizer: sgd}\n"
            "rounds: $rounds\n"
            "prune: {method: l1_unstructured, amount: 0.2}\n"
            "reinit: {strategy: rewind, to: root}\n"
        )
        self.cache = tmp / "cache"
        # a user's environment on both sides: no OpenMP setting (mlprune sets its own when imported, the
        # bare script none), torch's default threads, no MLPRUNE_* (run_one_thread pins MLPRUNE_THREADS)
        env = _common.user_env(
            dict(
                MLPRUNE_CACHE_DIR=str(self.cache),
                PYTHONPATH=os.pathsep.join([str(mlprune_from), *filter(None, [os.environ.get("PYTHONPATH")])]),
                # `mlflow run` starts `python -m mlprune ...` through the shell: this interpreter's
                PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            )
        )
        if tiny:  # the smoke test waits for no background figures it does not time (12 s of matplotlib)
            env["MLPRUNE_FIGURES"] = "0"
        self.env = env
        self.stores = 0
        self.bare_process: dict = {}  # what the bare script's process ran with
        self.finished_store: str | None = None  # a store holding every state (for cached re-runs)

    def _new_dir(self) -> Path:
        self.stores += 1
        folder = self.tmp / f"store-{self.stores}"
        folder.mkdir()
        return folder

    def existing_store(self) -> tuple[str, Path]:
        """A migrated store with the experiment made (a user's second run), as (URI, folder)."""
        folder = self._new_dir()
        uri, _ = _common.fresh_store(folder, EXPERIMENT)
        return uri, folder

    def command(self, kind: str) -> tuple[list[str], dict, Path]:
        """(argv, env, cwd) of one process of `kind`."""
        env = dict(self.env)
        if kind == "bare":
            return (
                [sys.executable, str(_common.BARE_SCRIPT), str(self.data), *bare_args(self.size)],
                _common.bare_env(env),
                self.tmp,
            )
        if kind == "import_mlflow":
            return [sys.executable, "-c", "import mlflow"], env, self.tmp
        if kind == "import_torch":
            return [sys.executable, "-c", "import torch"], env, self.tmp
        if kind == "mlflow_run_cached":
            uri, folder = self.mlflow_store
            env["MLFLOW_TRACKING_URI"] = uri
            return [sys.executable, "-m", "mlflow", "run", str(self.repo), *self.mlflow_args], env, folder
        run = [sys.executable, "-m", "mlprune", "run", str(self.recipe), "-e", EXPERIMENT]
        if kind == "cached_rerun":
            env["MLFLOW_TRACKING_URI"] = self.finished_store
            return run, env, self.tmp
        if kind == "run_fresh_store":
            folder = self._new_dir()
            env["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"  # created by the run
            return run, env, folder
        uri, folder = self.existing_store()
        env["MLFLOW_TRACKING_URI"] = uri
        if kind == "run_one_thread":
            env["MLPRUNE_THREADS"] = "1"
        return run, env, folder

    def time(self, kind: str) -> tuple[float, str]:
        """(wall, stdout) of one process of `kind`; the bare script's JSON line becomes ``threads=N
        test_accuracy=X`` like a run's summary."""
        argv, env, cwd = self.command(kind)
        started = time.perf_counter()
        proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=1800)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"{kind} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        if kind == "bare":
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            self.bare_process = {k: out[k] for k in ("threads", "omp_env", "mlprune_env", "mlprune_modules")}
            return wall, f"threads={out['threads']} test_accuracy={out['accuracies'][-1]:.4f}"
        if kind == "run" and self.finished_store is None:
            self.finished_store = env["MLFLOW_TRACKING_URI"]
        self.background_s.append(self.wait_background(env.get("MLFLOW_TRACKING_URI")))
        return wall, proc.stdout

    def wait_background(self, uri: str | None) -> float:
        """Wait (untimed) for what the process left to the background on its store; the seconds waited."""
        if not uri:
            return 0.0
        try:
            from mlprune.background import wait_pending
        except ImportError:  # a version without background work (--mlprune-from an older checkout)
            return 0.0
        started = time.perf_counter()
        wait_pending(uri)  # sqlite stores: the lock is beside the database
        return time.perf_counter() - started

    def prepare_mlflow_store(self) -> None:
        """A store where `mlflow run`'s recipe is computed: the same command, once (untimed)."""
        folder = self._new_dir()
        uri, _ = _common.fresh_store(folder, "mlprune")
        self.mlflow_store = (uri, folder)
        env = dict(self.env, MLFLOW_TRACKING_URI=uri)
        proc = subprocess.run(
            [sys.executable, "-m", "mlflow", "run", str(self.repo), *self.mlflow_args],
            env=env,
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=3600,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"mlflow run failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        self.wait_background(uri)

    def first_store_ever(self) -> float:
        """One run creating a store with an empty user cache: MLflow's migrations, once per machine."""
        cache, self.env["MLPRUNE_CACHE_DIR"] = self.env["MLPRUNE_CACHE_DIR"], str(self.tmp / "empty-cache")
        try:
            return self.time("run_fresh_store")[0]
        finally:
            self.env["MLPRUNE_CACHE_DIR"] = cache


def bare_args(size: dict) -> list[str]:
    """The bare script's arguments for the recipe of `Processes` (SGD lr 0.01, momentum 0.9, batch 60, 20 % of
    each layer by magnitude per round, rewind to the initialization)."""
    return [
        "--levels",
        str(size["rounds"]),
        "--epochs",
        str(size["epochs"]),
        "--lr",
        "0.01",
        "--momentum",
        "0.9",
        "--batch",
        "60",
        "--scope",
        "layer",
    ]


def measure(
    quick: bool = False, tiny: bool = False, reps: int | None = None, mlprune_from: str | os.PathLike | None = None
) -> dict:
    size = dict(SIZES["tiny" if tiny else "quick" if quick else "full"])
    reps = reps or size["reps"]
    walls: dict[str, list[float]] = {k: [] for k in KINDS}
    accuracy: dict[str, str] = {}
    threads = None
    with tempfile.TemporaryDirectory(prefix="mlprune-bench-process-") as tmp:
        procs = Processes(Path(tmp), size, Path(mlprune_from or REPO).resolve(), tiny=tiny)
        procs.prepare_mlflow_store()
        first_ever = None
        if not tiny:  # the smoke test skips the warm-up: its first `run` leaves the store to re-run
            first_ever = procs.first_store_ever()  # also fills the user cache: a machine that ran mlprune once
            procs.time("run")  # warm-up (page cache), and the store of the cached re-runs
        kinds = [k for k in KINDS if not (tiny and k == "import_torch")]
        for rep in range(reps):
            order = kinds[rep % len(kinds) :] + kinds[: rep % len(kinds)]  # rotate who goes first
            for kind in order:
                wall, out = procs.time(kind)
                walls[kind].append(wall)
                found = _ACCURACY.search(out)
                if found:
                    accuracy.setdefault(kind, found.group(1))
                if kind == "bare":
                    threads = int(out.split("threads=")[1].split()[0])
        shutil.rmtree(procs.tmp / "data", ignore_errors=True)
    m = {k: _common.median(v) for k, v in walls.items() if v}
    return {
        "end_to_end_vs_bare": m["run"] / m["bare"],
        "end_to_end_fresh_store_vs_bare": m["run_fresh_store"] / m["bare"],
        "cached_rerun_s": m["cached_rerun"],
        "cached_rerun_vs_import_mlflow": m["cached_rerun"] / m["import_mlflow"],
        "mlflow_run_cached_vs_import_mlflow": m["mlflow_run_cached"] / m["import_mlflow"],
        "mlflow_run_cached_s": m["mlflow_run_cached"],
        "background_s": round(sum(procs.background_s), 2),
        # a single chain in one process at mlprune's default threads (all cores) / at MLPRUNE_THREADS=1
        "single_chain_one_thread_vs_default": m["run_one_thread"] / m["run"],
        "bare_process": procs.bare_process,
        "medians_s": {k: round(v, 3) for k, v in m.items()},
        "walls_s": {k: [round(x, 3) for x in v] for k, v in walls.items()},
        "first_store_ever_s": first_ever,
        "import_torch_s": m.get("import_torch"),
        "torch_threads": threads,
        "final_test_accuracy": accuracy,
        "same_final_accuracy": len({accuracy.get(k) for k in ("bare", "run", "run_fresh_store")}) == 1,
        "mlprune_from": str(Path(mlprune_from or REPO).resolve()),
        "workload": {
            **size,
            "repetitions": reps,
            "model": "lenet_300_100",
            "batch_size": 60,
            "lr": 0.01,
            "momentum": 0.9,
            "prune": "l1_unstructured 0.2 per layer",
            "reinit": "rewind to root",
        },
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true")
    group.add_argument("--tiny", action="store_true")
    ap.add_argument("--reps", type=int)
    ap.add_argument("--mlprune-from", metavar="CHECKOUT", help="time the mlprune of another checkout")
    args = ap.parse_args(argv)
    print(json.dumps(measure(args.quick, args.tiny, args.reps, args.mlprune_from), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
