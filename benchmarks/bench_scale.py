"""How mlprune scales with the size of an experiment: 100, 1,000 and 10,000 states.

The stores: `build` makes one experiment (``bench-scale``) through mlprune's own code,
``mlprune sweep`` run in this process over growing ranges of seeds, as a study grows:
two recipes (``scale_l1``: 12 rounds of l1_unstructured 20 % per layer, rewind to the
init, retrain; ``scale_struct``: the same with ln_structured, n=1, dim=1) sharing their
root and first training per seed, i.e. 50 states per seed, on a tiny workload
(lenet_300_100 on 64 ``digits`` images, 2-iteration trainings, 64 test images): every
state is computed, evaluated, claimed, stored, hashed and tagged like any other, and
the sweep records its workflow run (plan.json). Copies of the database are taken at
100, 1,000 and 10,000 states (the artifacts are shared: they never change). Building
takes a while (its time is in the figures' details), so the stores are cached in
``MLPRUNE_BENCH_CACHE`` (default ``~/.cache/mlprune-bench``) under a name that changes
with the recipes, the MLflow version and the keys (a new key semantics builds anew).
Measurements run on copies of the databases: the cached stores never change.

Figures:
- ``store_scaling``: per-state overhead (wall time of reaching a state minus the time in
  training, evaluation, mask and reinit maths, as ``per_state_overhead_ms``) of a probe
  workload (the two recipes, 3 rounds, 26 states of a new seed) in the experiment that
  holds 10,000 states / the same in the one that holds 100; medians over states and
  repetitions, the sizes alternating, the same seeds on every size (goal <= 1.5). The
  mean per state including the look-ups the run starts with is beside it.
- ``tree_10k_s``: ``mlprune tree`` of the 10,000-state experiment, a whole process (<= 10 s).
- ``report_10k_s``: ``mlprune report`` of it, a whole process (<= 120 s).
- Checks (details): ``mlprune verify`` passes on the 10,000-state store, and a cached
  re-run of a recipe whose states are in it (``mlprune run scale_l1.yaml -P seed=0``)
  computes nothing; their times are reported.

    python benchmarks/bench_scale.py [--quick | --tiny] [--plot benchmarks/store_scaling.png]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import _common  # noqa: E402

EXPERIMENT = "bench-scale"
BUILDER_VERSION = 1
RECIPE = """\
name: {name}
params: {{seed: 0, rounds: 12}}
root: {{model: lenet_300_100, dataset: digits, seed: $seed, train_size: 64, test_size: 64}}
train: {{epochs: 1, lr: 0.05, momentum: 0.9, batch_size: 32, optimizer: sgd}}
rounds: $rounds
prune: {prune}
reinit: {{strategy: rewind, to: root}}
"""
RECIPES = {
    "scale_l1": "{method: l1_unstructured, amount: 0.2}",
    "scale_struct": "{method: ln_structured, n: 1, dim: 1, amount: 0.2}",
}
SIZES = {  # states in the stores; probe rounds and repetitions; whole-process repetitions
    "full": dict(sizes=(100, 1_000, 10_000), rounds=12, probe_rounds=3, reps=5, process_reps=3),
    "quick": dict(sizes=(100, 1_000, 10_000), rounds=12, probe_rounds=3, reps=3, process_reps=1),
    "tiny": dict(sizes=(10, 20, 40), rounds=2, probe_rounds=1, reps=1, process_reps=1),
}
PROBE_SEED = 1_000_000  # probe workloads use seeds from here: never in a built store


def states_per_seed(rounds: int) -> int:
    return 2 + 2 * 2 * rounds  # root and training shared; per recipe and round a prune and a retraining


def write_recipes(folder: Path, rounds: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, prune in RECIPES.items():
        path = folder / f"{name}.yaml"
        path.write_text(RECIPE.format(name=name, prune=prune).replace("rounds: 12}", f"rounds: {rounds}}}"))
        paths.append(path)
    return paths


def fingerprint(size: dict) -> str:
    """What the cached stores depend on: recipes, sizes, builder, MLflow's schema, mlprune's keys."""
    import mlflow

    from mlprune.recipes import compile_recipe

    with tempfile.TemporaryDirectory() as tmp:
        keys = [compile_recipe(p, {}).nodes[-1].key for p in write_recipes(Path(tmp), size["rounds"])]
    text = json.dumps([BUILDER_VERSION, RECIPES, RECIPE, size["sizes"], size["rounds"], mlflow.__version__, keys])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cache_root() -> Path:
    return Path(os.environ.get("MLPRUNE_BENCH_CACHE") or Path.home() / ".cache" / "mlprune-bench")


@contextlib.contextmanager
def _env(**values):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _cli(*args: str) -> str:
    """`mlprune ARGS` in this process (the CLI's code, without a new interpreter's imports); its stdout."""
    from mlprune.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(list(args), standalone_mode=False)
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                raise RuntimeError(
                    f"mlprune {' '.join(args)} failed ({exit_.code}): {out.getvalue()[-500:]}"
                ) from exit_
    return out.getvalue()


def _snapshot(db: Path, target: Path) -> None:
    """A consistent copy of a sqlite database (sqlite's backup API: a WAL store included)."""
    source = sqlite3.connect(str(db))
    copy = sqlite3.connect(str(target))
    try:
        source.backup(copy)
    finally:
        copy.close()
        source.close()


def build(folder: Path, size: dict, log=print) -> dict:
    """The stores of `size` in `folder`: db-<N>.db per size, artifacts/ shared; returns build facts."""
    folder.mkdir(parents=True, exist_ok=True)
    work = folder / "building"
    shutil.rmtree(work, ignore_errors=True)
    # the experiment's artifacts live beside the snapshots, where every copy of the database finds them
    artifacts = folder / "artifacts"
    shutil.rmtree(artifacts, ignore_errors=True)
    uri, _ = _common.fresh_store(work, EXPERIMENT, artifacts=artifacts)
    recipes = write_recipes(folder / "recipes", size["rounds"])
    per_seed = states_per_seed(size["rounds"])
    seeds_done, chunks, started = 0, [], time.perf_counter()
    with _env(MLFLOW_TRACKING_URI=uri, MLPRUNE_THREADS=os.environ.get("MLPRUNE_THREADS", "1")):
        for target in size["sizes"]:
            goal = -(-target // per_seed)
            while seeds_done < goal:
                upto = min(goal, seeds_done + max(1, 500 // per_seed))
                chunk_started = time.perf_counter()
                _cli("sweep", *map(str, recipes), "--seeds", f"{seeds_done}-{upto - 1}", "-e", EXPERIMENT)
                chunk_s = time.perf_counter() - chunk_started
                chunks.append(
                    {
                        "states_before": seeds_done * per_seed,
                        "states": (upto - seeds_done) * per_seed,
                        "seconds": round(chunk_s, 2),
                        "ms_per_state": round(1000 * chunk_s / ((upto - seeds_done) * per_seed), 1),
                    }
                )
                seeds_done = upto
                log(f"  bench-scale store: {seeds_done * per_seed} states ({time.perf_counter() - started:.0f} s)")
            _snapshot(work / "mlflow.db", folder / f"db-{target}.db")
    facts = {
        "build_s": round(time.perf_counter() - started, 1),
        "chunks": chunks,
        "states_per_seed": per_seed,
        "seeds": seeds_done,
        "artifact_bytes": sum(_common.dir_bytes(artifacts).values()),
        "db_bytes": {n: (folder / f"db-{n}.db").stat().st_size for n in size["sizes"]},
    }
    shutil.rmtree(work, ignore_errors=True)
    (folder / "built.json").write_text(json.dumps(facts, indent=1))
    return facts


def stores(size_name: str, log=print) -> tuple[Path, dict, bool]:
    """(folder with db-<N>.db and artifacts/, build facts, whether it was built now): cached unless tiny."""
    size = SIZES[size_name]
    if size_name == "tiny":
        folder = Path(tempfile.mkdtemp(prefix="mlprune-bench-scale-"))
        return folder, build(folder, size, log), True
    folder = cache_root() / f"scale-{fingerprint(size)}"
    if (folder / "built.json").is_file():
        return folder, json.loads((folder / "built.json").read_text()), False
    log(f"building the bench-scale stores once into {folder} (cached for the next runs)")
    return folder, build(folder, size, log), True


def working_copy(folder: Path, n: int, tmp: Path) -> str:
    """A tracking URI on a copy of the n-state database (its artifacts: the shared, unchanged ones)."""
    target = tmp / f"store-{n}"
    target.mkdir(parents=True, exist_ok=True)
    _snapshot(folder / f"db-{n}.db", target / "mlflow.db")
    return f"sqlite:///{target}/mlflow.db"


# ----------------------------------------------------------------------------- measurements


def probe(uri: str, recipes: list[Path], seed: int) -> dict:
    """The probe workload (both recipes, one new seed) into the store at `uri`: per-state overheads."""
    from bench_pipeline import MathsClock

    from mlprune.executor import run_plans
    from mlprune.recipes import compile_recipe
    from mlprune.store import Store

    per_state, seen = [], set()
    with MathsClock() as maths:
        started = time.perf_counter()
        store = Store(EXPERIMENT, tracking_uri=uri)
        plans = [compile_recipe(path, {"seed": seed}) for path in recipes]
        last = [time.perf_counter(), 0.0]

        def on_state(_index, _name, run_id):
            if run_id in seen:  # the shared root and training are reported once per plan
                return
            seen.add(run_id)
            now = time.perf_counter()
            per_state.append((now - last[0]) - (maths.total - last[1]))
            last[0], last[1] = now, maths.total

        result = run_plans(plans, store, on_state=on_state)
        wall = time.perf_counter() - started
    if result.reused:
        raise RuntimeError(f"probe seed {seed} found {result.reused} existing states: not a fresh workload")
    return {"overheads_s": per_state, "wall_s": wall, "maths_s": maths.total, "states": len(per_state)}


def _process(args: list[str], uri: str, cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_TRACKING", "MLFLOW_EXPERIMENT", "MLFLOW_RUN", "PYTEST_"))
    }
    env.update(MLFLOW_TRACKING_URI=uri, MLFLOW_DISABLE_TELEMETRY="true")
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "mlprune", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=3600
    )
    return time.perf_counter() - started, proc


def measure(quick: bool = False, tiny: bool = False, reps: int | None = None, log=None) -> dict:
    size_name = "tiny" if tiny else "quick" if quick else "full"
    size = SIZES[size_name]
    reps = reps or size["reps"]
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    folder, built, built_now = stores(size_name, log)
    sizes = size["sizes"]
    with tempfile.TemporaryDirectory(prefix="mlprune-bench-scale-run-") as tmp:
        tmp = Path(tmp)
        uris = {n: working_copy(folder, n, tmp) for n in sizes}
        probes = write_recipes(tmp / "probe", size["probe_rounds"])
        overheads = {n: [] for n in sizes}
        means = {n: [] for n in sizes}
        for rep in range(reps):
            order = sizes[rep % len(sizes) :] + sizes[: rep % len(sizes)]  # rotate who goes first
            for n in order:
                found = probe(uris[n], probes, PROBE_SEED + rep)
                overheads[n] += found["overheads_s"]
                means[n].append((found["wall_s"] - found["maths_s"]) / found["states"])
        big, small = sizes[-1], sizes[0]
        checks_dir = tmp / "cwd"
        checks_dir.mkdir()
        walls: dict[str, list[float]] = {"tree": [], "report": [], "verify": [], "cached_rerun": []}
        outputs = {}
        for rep in range(size["process_reps"]):
            for kind, args in (
                ("tree", ["tree", "-e", EXPERIMENT]),
                ("report", ["report", EXPERIMENT, str(tmp / f"report-{rep}")]),
                ("verify", ["verify", EXPERIMENT]),
                ("cached_rerun", ["run", str(folder / "recipes" / "scale_l1.yaml"), "-P", "seed=0", "-e", EXPERIMENT]),
            ):
                wall, proc = _process(args, uris[big], checks_dir)
                if proc.returncode != 0:
                    raise RuntimeError(
                        f"mlprune {kind} on the {big}-state store failed ({proc.returncode}): {proc.stderr[-2000:]}"
                    )
                walls[kind].append(wall)
                outputs[kind] = proc.stdout
        from mlprune.background import wait_pending

        wait_pending(uris[big])  # the cached re-run's record, if it had to write one (not timed)
        tree_lines = len(outputs["tree"].splitlines())
        verified = outputs["verify"].strip().splitlines()[-1]
        rerun = outputs["cached_rerun"].strip().splitlines()[-1]
        report = json.loads((tmp / "report-0" / "report.json").read_text())
        in_store = {n: _count_states(uris[n]) for n in sizes}
    if size_name == "tiny":  # built in a temp dir for this run only
        shutil.rmtree(folder, ignore_errors=True)
    med = {n: 1000 * _common.median(v) for n, v in overheads.items()}
    mean = {n: 1000 * _common.median(v) for n, v in means.items()}
    return {
        "store_scaling": med[big] / med[small],
        "store_scaling_with_lookups": mean[big] / mean[small],
        "tree_10k_s": _common.median(walls["tree"]),
        "report_10k_s": _common.median(walls["report"]),
        "verify_10k_s": _common.median(walls["verify"]),
        "cached_rerun_10k_s": _common.median(walls["cached_rerun"]),
        "per_state_overhead_ms": {str(n): round(v, 2) for n, v in med.items()},
        "per_state_overhead_ms_p90": {
            str(n): round(1000 * sorted(v)[int(0.9 * (len(v) - 1))], 2) for n, v in overheads.items()
        },
        "per_state_mean_ms_with_lookups": {str(n): round(v, 2) for n, v in mean.items()},
        "states_in_store": {str(n): in_store[n] for n in sizes},
        "checks": {
            "verify": verified,
            "verify_passed": verified.endswith(": 0 broken"),
            "cached_rerun": rerun,
            "cached_rerun_computed_nothing": " 0 computed," in rerun,
            "tree_lines": tree_lines,
            "report_series": len(report.get("series", [])),
        },
        "walls_s": {k: [round(x, 3) for x in v] for k, v in walls.items()},
        "build": {**built, "built_now": built_now, "folder": str(folder)},
        "workload": {
            "sizes": list(sizes),
            "rounds": size["rounds"],
            "probe_rounds": size["probe_rounds"],
            "repetitions": reps,
            "process_repetitions": size["process_reps"],
            "states_per_seed": states_per_seed(size["rounds"]),
            "model": "lenet_300_100",
            "data": "digits, 64 train / 64 test",
            "recipes": RECIPES,
        },
    }


def _count_states(uri: str) -> int:
    from mlprune.store import Store

    return len(Store(EXPERIMENT, tracking_uri=uri, create=False).states())


def plot(result: dict, path: str | os.PathLike) -> None:
    """Per-state overhead vs states in the experiment (median and p90), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [int(n) for n in result["per_state_overhead_ms"]]
    median = [result["per_state_overhead_ms"][str(n)] for n in sizes]
    p90 = [result["per_state_overhead_ms_p90"][str(n)] for n in sizes]
    mean = [result["per_state_mean_ms_with_lookups"][str(n)] for n in sizes]
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
    ax.plot(sizes, median, "o-", label="median per state")
    ax.plot(sizes, p90, "v--", alpha=0.7, label="p90")
    ax.plot(sizes, mean, "s:", alpha=0.7, label="mean, with the run's look-ups")
    ax.set_xscale("log")
    ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("states already in the experiment")
    ax.set_ylabel("overhead per state (ms)")
    ax.set_title(f"store_scaling = {result['store_scaling']:.2f}  (10,000 / 100, medians)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true")
    group.add_argument("--tiny", action="store_true")
    ap.add_argument("--reps", type=int)
    ap.add_argument("--plot", metavar="PNG", help="also draw the overhead vs states plot")
    args = ap.parse_args(argv)
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    os.environ.setdefault("MLPRUNE_THREADS", "1")
    result = measure(args.quick, args.tiny, args.reps)
    if args.plot:
        plot(result, args.plot)
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
