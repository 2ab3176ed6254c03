"""Sibling trainings batched: wall time of 8 trainings one after the other / as one batch.

    python benchmarks/bench_batched.py                 # CPU figures (a few minutes on 2 cores)
    python benchmarks/bench_batched.py --quick         # about a minute
    python benchmarks/bench_batched.py --device cuda   # on a GPU (skips with a message without one)

Each figure trains 8 siblings (initial weights of seeds 0..7, random masks keeping 80 % of each
layer, data orders 100..107) from the same starting tensors on the same data, as mlprune's
executor would: separately, ``training.loop.train`` 8 times in a row; batched, one
``training.batched.train_batched``. Both sides run in this process at the same torch thread count
(torch's default: all cores, as ``mlprune run`` computes), every training includes its epoch-end
test pass; the two sides alternate over repetitions and the medians are compared (wall time; the
process's CPU time is reported beside it, ``cpu_speedup``: on a machine other processes share it
varies less). The batched side's weights are checked against the separate side's
(``max_weight_difference``).

- ``batched_speedup``               lenet on digits (28 px), 1 epoch, SGD momentum, batch 32  goal >= 3
- ``batched_speedup_lenet_300_100`` lenet_300_100 on digits, 1 epoch, Adam, batch 60 (the LTH
                                    recipe's training)                                  (reported)
- ``batched_speedup_resnet20``      resnet20 on digits at 32 px, SGD momentum, batch 64, 10
                                    iterations (the CPU); on CUDA (`gpu_check.py`) on CIFAR-10
                                    format data, batch 128                 (reported; GPU goal >= 5)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import mlprune  # noqa: E402,F401 -- before torch: passive OpenMP waits, as in `mlprune run`

N_SIBLINGS = 8


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def siblings(model: str, data, n: int = N_SIBLINGS, *, options: dict | None = None):
    """n freshly initialized models of `model` and their masks (80 % kept per layer, seeded)."""
    import torch

    from mlprune.models import build_model, prunable

    models = [
        build_model(model, num_classes=data.num_classes, input_shape=tuple(data.input_shape), seed=k, options=options)
        for k in range(n)
    ]
    masks = []
    for k, m in enumerate(models):
        generator = torch.Generator().manual_seed(1000 + k)
        masks.append(
            {
                name: torch.rand(p.shape, generator=generator) < 0.8
                for name, p in m.named_parameters()
                if name in prunable(m)
            }
        )
    return models, masks


def speedup(
    model: str,
    data,
    train_options: dict,
    *,
    device=None,
    repetitions: int = 3,
    n: int = N_SIBLINGS,
    model_options: dict | None = None,
) -> dict:
    """Wall time of n sibling trainings separately / batched (medians of alternating repetitions)."""
    import torch

    from mlprune.spec.steps import resolve_train
    from mlprune.training.batched import train_batched
    from mlprune.training.loop import Placement, train

    device = device or torch.device("cpu")
    options = resolve_train(train_options).options
    models, masks = siblings(model, data, n, options=model_options)
    seeds = [100 + k for k in range(n)]

    def fresh():
        return [copy.deepcopy(m).to(device) for m in models], [{k: v.to(device) for k, v in m.items()} for m in masks]

    def separate():
        trained, own = fresh()
        _sync(device)
        started, cpu = time.perf_counter(), time.process_time()
        for m, mask, seed in zip(trained, own, seeds):
            train(m, mask, data, options, seed=seed, on=Placement(device))
        _sync(device)
        return time.perf_counter() - started, time.process_time() - cpu, trained

    def batched():
        trained, own = fresh()
        _sync(device)
        started, cpu = time.perf_counter(), time.process_time()
        outcomes = train_batched(trained, own, data, options, seeds=seeds, device=device)
        _sync(device)
        assert all(isinstance(o, dict) for o in outcomes), outcomes
        return time.perf_counter() - started, time.process_time() - cpu, trained

    # warm-up (kernel choices, allocator, first-call costs) on both sides, not timed
    warm = dict(train_options, steps="2it")
    warm.pop("epochs", None)
    warm_options = resolve_train(warm).options
    w_models, w_masks = fresh()
    train(w_models[0], w_masks[0], data, warm_options, seed=0, on=Placement(device))
    train_batched(w_models, w_masks, data, warm_options, seeds=seeds, device=device)
    times = {"separate": [], "batched": []}
    cpu_times = {"separate": [], "batched": []}
    last = {}
    for _ in range(repetitions):
        for side, fn in (("separate", separate), ("batched", batched)):
            seconds, cpu, trained = fn()
            times[side].append(seconds)
            cpu_times[side].append(cpu)
            last[side] = trained
    difference = max(
        float((a.state_dict()[k].double() - b.state_dict()[k].double()).abs().max())
        for a, b in zip(last["separate"], last["batched"])
        for k in a.state_dict()
        if a.state_dict()[k].is_floating_point()
    )
    separate_s, batched_s = statistics.median(times["separate"]), statistics.median(times["batched"])
    # CPU seconds of the process: what the work costs, less sensitive to other processes than wall time
    cpu_speedup = statistics.median(cpu_times["separate"]) / statistics.median(cpu_times["batched"])
    return {
        "speedup": separate_s / batched_s,
        "separate_s": separate_s,
        "batched_s": batched_s,
        "times": times,
        "cpu_times": cpu_times,
        "cpu_speedup": cpu_speedup,
        "siblings": n,
        "model": model,
        "options": train_options,
        "max_weight_difference": difference,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }


def cpu_workloads(quick: bool, tiny: bool) -> dict:
    """(model, data options, train options, model options) of each CPU figure."""
    if tiny:
        return {
            "lenet": ("lenet", {}, {"steps": "3it", "lr": 0.01, "momentum": 0.9, "batch_size": 32}, None),
            "lenet_300_100": (
                "lenet_300_100",
                {},
                {"steps": "3it", "lr": 0.0012, "optimizer": "adam", "batch_size": 60},
                None,
            ),
            "resnet20": (
                "resnet20",
                {"test_size": 64},
                {"steps": "2it", "lr": 0.05, "momentum": 0.9, "batch_size": 16},
                None,
            ),
        }
    return {
        "lenet": ("lenet", {}, {"epochs": 1, "lr": 0.01, "momentum": 0.9, "batch_size": 32}, None),
        "lenet_300_100": (
            "lenet_300_100",
            {},
            {"epochs": 1, "lr": 0.0012, "optimizer": "adam", "batch_size": 60},
            None,
        ),
        "resnet20": (
            "resnet20",
            {"image_size": 32},
            {"steps": "5it" if quick else "10it", "lr": 0.05, "momentum": 0.9, "batch_size": 64},
            None,
        ),
    }


def measure(quick: bool = False, tiny: bool = False, device_name: str = "cpu") -> dict:
    """The figures on `device_name` (digits data); {"skipped": why} when that device is not there."""
    import torch

    from mlprune.data import load_data
    from mlprune.models import model_input

    if device_name.startswith("cuda") and not torch.cuda.is_available():
        return {"skipped": f"no CUDA device ({device_name} asked)"}
    device = torch.device(device_name)
    repetitions = 1 if tiny else 3
    details = {}
    for figure, (model, data_options, train_options, model_options) in cpu_workloads(quick, tiny).items():
        channels, size = model_input(model)
        data = load_data("digits", channels=channels, min_image_size=size, device=device, **data_options)
        details[figure] = speedup(
            model, data, train_options, device=device, repetitions=repetitions, model_options=model_options
        )
    return {
        "batched_speedup": details["lenet"]["speedup"],
        "batched_speedup_lenet_300_100": details["lenet_300_100"]["speedup"],
        "batched_speedup_resnet20": details["resnet20"]["speedup"],
        "details": details,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true")
    group.add_argument("--tiny", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    result = measure(args.quick, args.tiny, args.device)
    if "skipped" in result:
        print(f"bench_batched: skipped: {result['skipped']}")
    else:
        for name, figure in result["details"].items():
            print(
                f"{name}: {figure['separate_s']:.2f} s separately / {figure['batched_s']:.2f} s batched = "
                f"x{figure['speedup']:.2f}, CPU time x{figure['cpu_speedup']:.2f} ({figure['siblings']} siblings, "
                f"{figure['torch_threads']} threads, "
                f"max |Δw| {figure['max_weight_difference']:.1e}; times {figure['times']})"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
