"""mlprune's benchmark suite: what tracking, storage and caching cost over a bare PyTorch loop.

    python benchmarks/run.py                 # full sizes (several minutes on 2 cores)
    python benchmarks/run.py --quick         # small sizes (minutes; the first run builds the 10,000-state store)
    python benchmarks/run.py --tiny          # smoke test (the test suite runs this)
    python benchmarks/run.py --json out.json # also write the figures as JSON
    python benchmarks/run.py --plot benchmarks/store_scaling.png   # and the overhead vs store size plot

Figures (each a ratio or a distribution measured side by side in one process; A and B
alternate over repetitions and medians are taken):

- ``pipeline_vs_bare``       lottery ticket through mlprune's API at its default
                             threads (fresh sqlite store, full tracking) /
                             the same maths as a bare script's loop, in its
                             own process as a user runs it                  goal <= 1.10
- ``per_state_overhead_ms``  median time per state outside the training,
                             evaluation, mask and reinit maths              goal <= 40
- ``storage_ratio``          artifact bytes of a 20-round tree beyond 1 byte per
                             weight per mask / raw float32 bytes of its
                             weight-changing states                         goal <= 1.10
- ``cache_ratio``            re-running the finished 20-round recipe / its
                             first run (nothing recomputed)                 goal <= 0.05
- ``fastpath_vs_dataloader`` samples/s of the data path (one epoch of shuffled
                             batches), in-memory fast path / a default
                             DataLoader over the same tensors, same batch
                             size (``datapath_only_ratio``); in training the
                             model's maths dilutes it (reported beside)     goal >= 3

Whole processes (``bench_process.py``: each a fresh ``python``, as a user runs them; the
workload is lenet_300_100, 3 rounds x 5 epochs on 5 000 MNIST-format images for every
size but ``--tiny``):

- ``end_to_end_vs_bare``     ``mlprune run`` on an existing store / a bare
                             PyTorch script doing the same maths (both as a
                             user runs them: torch's default threads, no
                             OpenMP setting, the bare one without mlprune)  goal <= 1.25
- ``end_to_end_fresh_store_vs_bare``  the same where the run creates the
                             sqlite store                                   goal <= 1.4
- ``cached_rerun_s``         a re-run where every state exists (seconds)    (reported)
- ``cached_rerun_vs_import_mlflow``  that / ``python -c "import mlflow"``    goal <= 1.2
- ``mlflow_run_cached_vs_import_mlflow``  the README's ``mlflow run . -e
                             lt_structuredL1 --env-manager local`` where
                             every state exists / ``import mlflow``         goal <= 2.5

A study as a user runs it (``bench_study.py``: LeNet-300-100, OpenLTH's protocol, 3 seeds x 5
levels x 10 epochs on 4,000 digits resized to 28x28 in MNIST IDX files; whole processes):

- ``study_vs_bare``          ``mlprune sweep --seeds 0-2`` with its defaults /
                             the bare script once per seed, one after the
                             other                                          goal <= 0.75
- ``defaults_speedup``       the same sweep at one thread, one state after
                             the other (``MLPRUNE_THREADS=1 --scheduler
                             sync``) / with the defaults                    goal >= 1.3

Only the study: ``python benchmarks/bench_study.py [--quick] [--reps N]`` (JSON on stdout).

Resumable checkpoints (``bench_checkpoint.py``: the presets ``lth_lenet_300_100`` and
``lth_resnet20_cifar10`` at their default protocol, in this process):

- ``checkpoint_cost_lenet_300_100``, ``checkpoint_cost_resnet20``  a recipe run with a
                             checkpoint due every epoch (the default) / with
                             none                                           goal <= 1.05

Sibling trainings batched (``bench_batched.py``: 8 siblings of one architecture and
train step, different inits, masks and data orders; torch's default thread count):

- ``batched_speedup``        lenet on digits: 8 trainings one after the other /
                             the same 8 as one batch                        goal >= 3
- ``batched_speedup_lenet_300_100``, ``batched_speedup_resnet20``: the same for
                             those models (reported; ResNet-20 on a GPU: ``gpu_check.py``)

Experiments of 100, 1,000 and 10,000 states (``bench_scale.py``: built once through
``mlprune sweep``, cached in ``MLPRUNE_BENCH_CACHE``, default ``~/.cache/mlprune-bench``):

- ``store_scaling``          per-state overhead with 10,000 states in the
                             experiment / with 100                          goal <= 1.5
- ``tree_10k_s``             ``mlprune tree`` of the 10,000 (s)              goal <= 10
- ``report_10k_s``           ``mlprune report`` of the 10,000 (s)            goal <= 120

Planning (``bench_plan.py``: ``bench_scale``'s two recipes over 200 seeds, in this process):

- ``plan_10k_s``             planning a 10,000-state sweep and building its
                             dask graph against an empty store, nothing
                             computed (s)                                    goal <= 2

Details of each are in ``bench_pipeline.py``, ``bench_store.py``, ``bench_datapath.py``,
``bench_process.py``, ``bench_checkpoint.py``, ``bench_batched.py``, ``bench_scale.py`` and ``bench_plan.py``; ``--json`` writes the
figures at the top level, plus ``details``,
``goals`` and ``environment``. The in-process figures are measured at one torch thread
(``MLPRUNE_THREADS=1`` unless set: comparable with earlier results); the process figures
at mlprune's default, except where a figure says otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import _common  # noqa: E402

import mlprune  # noqa: E402,F401 -- before torch, as `mlprune run`: passive OpenMP waits (docs/performance.md)

# figure: (goal, "<=" or ">=", what)
GOALS = {
    "pipeline_vs_bare": (1.10, "<=", "mlprune / bare loop wall time"),
    "per_state_overhead_ms": (40.0, "<=", "median ms per state outside the maths"),
    "storage_ratio": (1.10, "<=", "artifact bytes beyond masks / (weight states x param bytes)"),
    "cache_ratio": (0.05, "<=", "re-run / first run of a finished 20-round recipe"),
    "fastpath_vs_dataloader": (3.0, ">=", "data path samples/s: fast path / DataLoader"),
    "end_to_end_vs_bare": (1.25, "<=", "`mlprune run` process, existing store / bare script process"),
    "end_to_end_fresh_store_vs_bare": (1.4, "<=", "`mlprune run` process creating its store / bare script"),
    "cached_rerun_vs_import_mlflow": (1.2, "<=", "fully cached re-run process / `import mlflow` process"),
    "mlflow_run_cached_vs_import_mlflow": (
        2.5,
        "<=",
        "fully cached `mlflow run . -e lt_structuredL1` / `import mlflow` process",
    ),
    "study_vs_bare": (0.75, "<=", "`mlprune sweep --seeds 0-2` (defaults) / bare script per seed, in a row"),
    "defaults_speedup": (1.3, ">=", "that sweep at one thread, one state after the other / with the defaults"),
    "checkpoint_cost_lenet_300_100": (1.05, "<=", "lth_lenet_300_100, a checkpoint due every epoch / none"),
    "checkpoint_cost_resnet20": (1.05, "<=", "lth_resnet20_cifar10, a checkpoint due every epoch / none"),
    "batched_speedup": (3.0, ">=", "8 lenet trainings one after the other / as one batch"),
    "store_scaling": (1.5, "<=", "per-state overhead, 10,000 states in the experiment / 100"),
    "tree_10k_s": (10.0, "<=", "`mlprune tree` of a 10,000-state experiment (s)"),
    "report_10k_s": (120.0, "<=", "`mlprune report` of a 10,000-state experiment (s)"),
    "plan_10k_s": (2.0, "<=", "planning a 10,000-state sweep and building its dask graph, nothing computed (s)"),
}
REPORTED = {
    "cached_rerun_s": "seconds of a fully cached re-run process",  # top-level, no goal of their own
    "mlflow_run_cached_s": "seconds of a fully cached `mlflow run` (README's command)",
    "batched_speedup_lenet_300_100": "8 lenet_300_100 trainings separately / batched",
    "batched_speedup_resnet20": "8 resnet20 trainings separately / batched (CPU)",
    "single_chain_one_thread_vs_default": "`mlprune run` process at MLPRUNE_THREADS=1 / at the default",
}


SECTION = {  # figure -> the section of `run` that measures it (load averages are per section)
    "pipeline_vs_bare": "pipeline",
    "per_state_overhead_ms": "pipeline",
    "storage_ratio": "store",
    "cache_ratio": "store",
    "fastpath_vs_dataloader": "datapath",
    "end_to_end_vs_bare": "process",
    "end_to_end_fresh_store_vs_bare": "process",
    "cached_rerun_vs_import_mlflow": "process",
    "mlflow_run_cached_vs_import_mlflow": "process",
    "cached_rerun_s": "process",
    "mlflow_run_cached_s": "process",
    "single_chain_one_thread_vs_default": "process",
    "study_vs_bare": "study",
    "defaults_speedup": "study",
    "checkpoint_cost_lenet_300_100": "checkpoint",
    "checkpoint_cost_resnet20": "checkpoint",
    "batched_speedup": "batched",
    "batched_speedup_lenet_300_100": "batched",
    "batched_speedup_resnet20": "batched",
    "store_scaling": "scale",
    "tree_10k_s": "scale",
    "report_10k_s": "scale",
    "plan_10k_s": "plan",
}


def _met(name: str, value: float) -> bool:
    goal, op, _ = GOALS[name]
    return value <= goal if op == "<=" else value >= goal


def environment() -> dict:
    import mlflow
    import torch

    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=HERE.parent, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "torch_threads_default": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "mlflow": mlflow.__version__,
        "platform": platform.platform(),
        "git_commit": commit,
    }


def _datapath(quick: bool, tiny: bool) -> dict:
    """bench_datapath at the torch thread count mlprune trains with (MLPRUNE_THREADS, default 1)."""
    import bench_datapath
    import torch
    from bench_pipeline import mlprune_threads

    before = torch.get_num_threads()
    torch.set_num_threads(mlprune_threads())
    try:
        return bench_datapath.measure(quick, tiny=tiny)
    finally:
        torch.set_num_threads(before)


def _batched(quick: bool, tiny: bool) -> dict:
    """bench_batched at torch's default thread count (all cores, as `mlprune run` computes states)."""
    import bench_batched
    import torch

    from mlprune.executor import torch_default_threads

    before = torch.get_num_threads()
    torch.set_num_threads(torch_default_threads())
    try:
        return bench_batched.measure(quick, tiny)
    finally:
        torch.set_num_threads(before)


def run(size: str) -> dict:
    import bench_checkpoint
    import bench_pipeline
    import bench_plan
    import bench_process
    import bench_scale
    import bench_store
    import bench_study

    # the in-process figures at one thread, as they always were (comparable over time); the
    # process benchmark sets each process's threads itself
    os.environ.setdefault("MLPRUNE_THREADS", "1")
    quick, tiny = size == "quick", size == "tiny"
    details, seconds, loads = {}, {}, {}
    load_before = _common.load_average()
    for name, fn in (
        ("pipeline", lambda: bench_pipeline.measure(quick=quick, tiny=tiny)),
        ("store", lambda: bench_store.measure(quick=quick, tiny=tiny)),
        ("datapath", lambda: _datapath(quick, tiny)),
        ("process", lambda: bench_process.measure(quick=quick, tiny=tiny)),
        ("study", lambda: bench_study.measure(quick=quick, tiny=tiny)),
        ("checkpoint", lambda: bench_checkpoint.measure(quick=quick, tiny=tiny)),
        ("batched", lambda: _batched(quick, tiny)),
        ("scale", lambda: bench_scale.measure(quick=quick, tiny=tiny)),
        ("plan", lambda: bench_plan.measure(quick=quick, tiny=tiny)),
    ):
        started = time.perf_counter()
        loads[name] = _common.load_average()
        details[name] = fn()
        seconds[name] = time.perf_counter() - started
    figures = {
        "pipeline_vs_bare": details["pipeline"]["pipeline_vs_bare"],
        "per_state_overhead_ms": details["pipeline"]["per_state_overhead_ms"],
        "storage_ratio": details["store"]["storage_ratio"],
        "cache_ratio": details["store"]["cache_ratio"],
        # the data path: batches of one epoch, fast path vs DataLoader(TensorDataset) over the same
        # tensors and batch size; the training figure (the same model maths on both sides) is beside it
        "fastpath_vs_dataloader": details["datapath"]["datapath_only_ratio"],
        **{
            name: details["process"][name]
            for name in (
                "end_to_end_vs_bare",
                "end_to_end_fresh_store_vs_bare",
                "cached_rerun_s",
                "cached_rerun_vs_import_mlflow",
                "mlflow_run_cached_vs_import_mlflow",
                "mlflow_run_cached_s",
                "single_chain_one_thread_vs_default",
            )
        },
        **{name: details["study"][name] for name in ("study_vs_bare", "defaults_speedup")},
        **{name: details["checkpoint"][name] for name in ("checkpoint_cost_lenet_300_100", "checkpoint_cost_resnet20")},
        **{
            name: details["batched"][name]
            for name in ("batched_speedup", "batched_speedup_lenet_300_100", "batched_speedup_resnet20")
        },
        **{name: details["scale"][name] for name in ("store_scaling", "tree_10k_s", "report_10k_s")},
        "plan_10k_s": details["plan"]["plan_10k_s"],
    }
    env = environment()
    env.update(
        size=size,
        load_average_before=load_before,
        load_average_after=_common.load_average(),
        seconds=seconds,
        load_average_by_section=loads,
    )
    return {
        **figures,
        "goals": {k: {"goal": g, "op": op, "met": _met(k, figures[k])} for k, (g, op, _) in GOALS.items()},
        "details": details,
        "environment": env,
    }


def table(result: dict) -> str:
    lines = ["| figure | value | goal | met | load | what |", "|---|---:|---|---|---:|---|"]
    loads = result["environment"].get("load_average_by_section", {})

    def load(name: str) -> str:  # the 1-minute load average when the figure's section started
        value = loads.get(SECTION[name])
        return "" if value is None else f"{value:.1f}"

    for name, (goal, op, what) in GOALS.items():
        value = result[name]
        shown = f"{value:.1f}" if name in ("per_state_overhead_ms", "tree_10k_s", "report_10k_s") else f"{value:.3f}"
        lines.append(
            f"| `{name}` | {shown} | {op} {goal:g} | {'yes' if _met(name, value) else '**no**'} | "
            f"{load(name)} | {what} |"
        )
    for name, what in REPORTED.items():
        lines.append(f"| `{name}` | {result[name]:.2f} | | | {load(name)} | {what} |")
    d = result["details"]
    p, s, dp, pr, sc = d["pipeline"], d["store"], d["datapath"], d["process"], d["scale"]
    batched = [
        f"{name} {b['separate_s']:.2f} s / {b['batched_s']:.2f} s = x{b['speedup']:.2f} (max |Δw| "
        f"{b['max_weight_difference']:.1e})"
        for name, b in d["batched"]["details"].items()
    ]
    lines += [
        "",
        f"- pipeline: mlprune {p['pipeline_s']:.2f} s vs bare {p['bare_s']:.2f} s (medians of "
        f"{p['workload']['repetitions']}; paired median x{p['pipeline_vs_bare_paired_median']:.3f}, fastest runs "
        f"x{p['pipeline_vs_bare_of_minima']:.3f}), {p['states']} states, equal results: {p['bitwise_equal']}; "
        f"overhead p90 {p['per_state_overhead_ms_p90']:.1f} ms, from walls {p['per_state_overhead_ms_from_walls']:.1f} ms; "
        f"store calls per state {p['store_calls_per_state']}; torch threads {p['torch_threads']}, the bare "
        f"process's {p['bare_process']['threads']}",
        f"- storage: {s['artifact_bytes'] / 1e6:.2f} MB for {s['states']} states "
        f"({s['weight_changing_states']} weight-changing x {s['param_bytes'] / 1e6:.3f} MB params, masks "
        f"{s['artifact_bytes_by_file'].get('masks.safetensors', 0) / 1e6:.2f} MB), {s['bytes_per_state'] / 1e3:.0f} kB/state",
        f"- cache: first run {s['first_run_s']:.2f} s, re-run {s['rerun_s']:.3f} s "
        f"({s['rerun_ms_per_state']:.1f} ms/state), recomputed {s['recomputed']}"
        + (f"; importing torch + mlflow in a fresh interpreter: {s['import_s']:.1f} s" if s.get("import_s") else ""),
        f"- data path alone: fast {dp['datapath_only_fastpath_samples_per_s']:.0f} vs DataLoader "
        f"{dp['datapath_only_dataloader_samples_per_s']:.0f} samples/s; training lenet_300_100 on them: "
        f"{dp['fastpath_samples_per_s']:.0f} vs {dp['dataloader_samples_per_s']:.0f} samples/s "
        f"(x{dp['fastpath_vs_dataloader']:.2f})"
        + (
            f", vs PyTorch's default DataLoader (batch 1) x{dp['fastpath_vs_default_dataloader']:.1f}"
            if dp.get("fastpath_vs_default_dataloader")
            else ""
        ),
        "- processes (medians of {}, s): {}; cached re-run {:.2f} s; first store a machine ever creates "
        "(MLflow's migrations): {}; torch threads {}; same final accuracy: {}".format(
            pr["workload"]["repetitions"],
            ", ".join(f"{k} {v:.2f}" for k, v in pr["medians_s"].items()),
            pr["cached_rerun_s"],
            "skipped" if pr["first_store_ever_s"] is None else f"{pr['first_store_ever_s']:.2f} s",
            pr["torch_threads"],
            pr["same_final_accuracy"],
        )
        + f"; `mlflow run` cached {pr['mlflow_run_cached_s']:.2f} s; waited for background work "
        f"(figures, records; untimed) {pr['background_s']:.1f} s",
        "- scale: per-state overhead (ms, median / p90 / mean with the run's look-ups) by states in the experiment: "
        + ", ".join(
            f"{n}: {sc['per_state_overhead_ms'][n]:.1f} / {sc['per_state_overhead_ms_p90'][n]:.1f} / "
            f"{sc['per_state_mean_ms_with_lookups'][n]:.1f}"
            for n in sc["per_state_overhead_ms"]
        )
        + f" (x{sc['store_scaling_with_lookups']:.2f} with the look-ups); at {max(map(int, sc['states_in_store']))} "
        f"states: tree {sc['tree_10k_s']:.2f} s ({sc['checks']['tree_lines']} lines), report "
        f"{sc['report_10k_s']:.1f} s ({sc['checks']['report_series']} series), verify {sc['verify_10k_s']:.1f} s "
        f"({sc['checks']['verify']}), cached re-run {sc['cached_rerun_10k_s']:.2f} s ({sc['checks']['cached_rerun']}); "
        f"stores {'built now in' if sc['build']['built_now'] else 'cached, built in'} {sc['build']['build_s']:.0f} s",
        "- planning {} states ({} plans of {} nodes): plan {:.2f} s, Execution {:.2f} s, graph {:.2f} s (CPU {:.2f} s); "
        "with batch 8: {:.2f} s ({} tasks)".format(
            d["plan"]["details"]["default"]["states"],
            d["plan"]["details"]["default"]["plans"],
            d["plan"]["details"]["default"]["plan_nodes"],
            d["plan"]["details"]["default"]["plan_s"],
            d["plan"]["details"]["default"]["execution_s"],
            d["plan"]["details"]["default"]["graph_s"],
            d["plan"]["details"]["default"]["cpu_s"],
            d["plan"]["plan_10k_batched_s"],
            d["plan"]["details"]["batch_8"]["graph_tasks"],
        ),
        f"- batched siblings ({next(iter(d['batched']['details'].values()))['siblings']} trainings, "
        f"{next(iter(d['batched']['details'].values()))['torch_threads']} threads, separately / batched): "
        + "; ".join(batched),
    ]
    st = d["study"]
    lines.append(
        "- study (medians of {}, s; CPU s in brackets; load average before each): {}; bare processes ran with "
        "{} threads, OMP variables {}, mlprune modules {}; the bare script at one thread "
        "reaches the one-thread sweep's accuracies: {}".format(
            st["workload"]["repetitions"],
            ", ".join(
                f"{k} {v:.2f} [{st['cpu_medians_s'][k]:.1f}] (load "
                f"{', '.join(f'{x:.1f}' for x in st['load_average_before'][k] if x is not None)})"
                for k, v in st["medians_s"].items()
            ),
            st["bare_processes"][0]["threads"],
            st["bare_processes"][0]["omp_env"] or "none",
            st["bare_processes"][0]["mlprune_modules"] or "none",
            st["same_accuracies"],
        )
    )
    for c in d["checkpoint"]["details"].values():
        lines.append(
            f"- checkpoints, {c['workload']['recipe']} (medians of {c['workload']['repetitions']}, s): "
            + ", ".join(f"{mode} {value:.2f}" for mode, value in c["medians_s"].items())
            + f"; written per run: {c['1ep_checkpoints_per_run']:.1f} by default, "
            f"{c['strict_checkpoints_per_run']:.1f} strict (every due one: x{c['strict_ratio']:.3f}, {c['strict_bytes_per_checkpoint'] / 1e6:.2f} MB, "
            f"{c['strict_training_thread_ms_per_checkpoint']:.1f} ms in the training thread, "
            f"{c['strict_writer_thread_ms_per_checkpoint']:.1f} ms in the writer); equal results: {c['equal_results']}"
        )
    env = result["environment"]
    lines += [
        "",
        f"{env['date']}, {env['cores']} cores, python {env['python']}, torch {env['torch']}, "
        f"mlflow {env['mlflow']}, size {env['size']}, load average {env['load_average_before']} -> "
        f"{env['load_average_after']}, commit {env['git_commit']}",
    ]
    return "\n".join(lines)


def _finite(obj):
    """JSON-safe: NaN / inf become None (json.dump would write invalid JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    group.add_argument("--tiny", action="store_true", help="smoke test sizes (seconds)")
    ap.add_argument("--json", metavar="PATH", help="write the figures and details as JSON")
    ap.add_argument(
        "--plot",
        metavar="PNG",
        help="draw per-state overhead vs states in the experiment (e.g. benchmarks/store_scaling.png)",
    )
    args = ap.parse_args(argv)
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    result = run("tiny" if args.tiny else "quick" if args.quick else "full")
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(_finite(result), indent=2, default=str))
    if args.plot:
        import bench_scale

        bench_scale.plot(result["details"]["scale"], args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
