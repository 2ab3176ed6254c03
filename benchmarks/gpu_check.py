"""GPU check: ResNet-20 on CIFAR-10-format data through mlprune on an accelerator, end to end, and its speed.

    python benchmarks/gpu_check.py                      # on the GPU (cuda), a couple of minutes
    python benchmarks/gpu_check.py --json gpu.json      # ... and the figures as JSON
    python benchmarks/gpu_check.py --device cpu --tiny  # the same path on the CPU in seconds (CI runs this)

What it does, in a temp dir (nothing is downloaded; the store is a real sqlite MLflow store):

1. writes synthetic, learnable CIFAR-10 in the real format (``cifar-10-batches-py``: pickled
   ``data_batch_1..5``, ``test_batch``, ``batches.meta``; read with ``MLPRUNE_VERIFY_MD5=0``);
2. through mlprune on ``--device``: the root (OpenLTH's ResNet-20: 1x1 shortcuts, kaiming_normal,
   BatchNorm uniform), a bf16 training with SGD + momentum + weight decay, a global magnitude prune
   of 20 % (output layer excluded), a rewind to iteration ``--rewind`` (stored while the first
   training ran) and a bf16 retraining that continues the schedule;
3. checks the CUDA path end to end: the states are FINISHED and tagged with the device; read back
   on the CPU from a fresh store object, weights are float32 CPU tensors, the pruned state's masks
   are exactly the masks the CPU computes from the stored trained weights, pruned weights of the
   retrained state are exactly zero, BatchNorm buffers came back, and the CPU's test accuracy of
   the retrained state is within ``--accuracy-tolerance`` of the one recorded on the device;
4. throughput in images/s on the same device and data placement (the whole preprocessed training
   set resident on the device when it fits): mlprune's training loop (``training.loop.train``: masks
   enforced each step, seeded batched augmentation on the device) in bf16 and fp32, against a bare
   PyTorch loop (index_select batches of the resident tensor, forward, backward, SGD step) with AMP
   (bf16 autocast) on and off. CUDA is synchronized around every timed part; warm-up steps are not
   timed;
5. sibling trainings batched (``bench_batched.speedup``): 8 ResNet-20 siblings (different
   inits, masks and data orders) trained one after the other / as one batch on the device, fp32 and
   bf16 (``batched_speedup_resnet20``, goal >= 5 on a GPU; ``batched_speedup_resnet20_bf16``), with
   the largest weight difference between the two sides.

Exit status 0 when every check passed (the figures are printed as a Markdown table either way).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "benchmarks"))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


# ---- CIFAR-10 in its real format ------------------------------------------------------------------


def synthetic_cifar(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3072) uint8 rows (CIFAR's channel-major 32x32x3) and labels: smooth class prototypes,
    shifted by up to 3 px, plus noise; a ResNet learns them in a few hundred steps."""
    protos = np.random.default_rng(2024).random((10, 3, 8, 8))
    protos = np.kron(protos, np.ones((1, 1, 4, 4)))  # (10, 3, 32, 32) in [0, 1]
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    shifts = rng.integers(-3, 4, (n, 2))
    images = np.empty((n, 3, 32, 32))
    for i in range(n):
        images[i] = np.roll(protos[labels[i]], tuple(shifts[i]), axis=(1, 2))
    images = images * 180 + 30 + rng.normal(0, 30, images.shape)
    return np.clip(images, 0, 255).astype(np.uint8).reshape(n, 3072), labels


def write_cifar10(root: Path, n_train: int, n_test: int) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    x, y = synthetic_cifar(n_train + n_test, seed=0)
    per = n_train // 5
    for b in range(5):
        end = n_train if b == 4 else (b + 1) * per
        rows = slice(b * per, end)
        with open(folder / f"data_batch_{b + 1}", "wb") as f:
            pickle.dump(
                {
                    "batch_label": f"training batch {b + 1} of 5",
                    "labels": [int(v) for v in y[rows]],
                    "data": x[rows],
                    "filenames": [f"{i}.png" for i in range(rows.start, rows.stop)],
                },
                f,
                2,
            )
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(
            {
                "batch_label": "testing batch 1 of 1",
                "labels": [int(v) for v in y[n_train:]],
                "data": x[n_train:],
                "filenames": [f"t{i}.png" for i in range(n_test)],
            },
            f,
            2,
        )
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(
            {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": per, "num_vis": 3072}, f, 2
        )
    return root


# ---- timing -----------------------------------------------------------------------------------------


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mlprune_throughput(data, device, precision: str, iterations: int, batch: int, warmup: int) -> float:
    """Images/s of mlprune's training loop (`training.loop.train`) on resident data."""
    import torch

    from mlprune.models import build_model, prunable
    from mlprune.spec.steps import resolve_train
    from mlprune.training.loop import Placement, train

    model = build_model(
        "resnet20",
        num_classes=10,
        input_shape=data.input_shape,
        init="kaiming_normal",
        options={"shortcut": "B"},
        bn_init="uniform",
    ).to(device)
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if n in prunable(model)}
    masks[next(iter(masks))][..., 0] = False  # one pruned entry: the masking work runs as in a real round

    def run(steps):
        options = resolve_train(
            {
                "steps": f"{steps}it",
                "lr": 0.1,
                "momentum": 0.9,
                "weight_decay": 1e-4,
                "batch_size": batch,
                "precision": precision,
            }
        ).options
        train(model, masks, data, options, seed=0, on=Placement(device))

    if warmup:
        run(warmup)
    _sync(device)
    start = time.perf_counter()
    run(iterations)
    _sync(device)
    return iterations * batch / (time.perf_counter() - start)


def resident_training_set(data_dir: Path, device):
    """The preprocessed CIFAR training set as two tensors on `device` (the bare loop's own copy)."""
    import torch

    from mlprune.data import load_data

    plain = load_data("cifar10", data_dir=data_dir, augment=False)
    xs, ys = zip(*plain.train_batches(4096, seed=0, epoch=0))
    return torch.cat(xs).to(device), torch.cat(ys).to(device)


def bare_throughput(resident, input_shape, device, amp: bool, iterations: int, batch: int, warmup: int) -> float:
    """Images/s of a bare PyTorch loop on resident tensors (random batches, no masks, no augmentation)."""
    import torch

    from mlprune.models import build_model

    x_all, y_all = resident
    model = build_model(
        "resnet20",
        num_classes=10,
        input_shape=input_shape,
        init="kaiming_normal",
        options={"shortcut": "B"},
        bn_init="uniform",
    ).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(0)

    def step():
        idx = torch.randint(0, x_all.shape[0], (batch,), generator=gen).to(x_all.device)
        x, y = x_all.index_select(0, idx), y_all.index_select(0, idx)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    _sync(device)
    return iterations * batch / (time.perf_counter() - start)


def batched_figures(data, device, args) -> dict:
    """8 ResNet-20 siblings separately / batched on the device (`bench_batched.speedup`), fp32 and bf16."""
    import bench_batched

    out = {}
    for precision, name in (("fp32", "batched_speedup_resnet20"), ("bf16", "batched_speedup_resnet20_bf16")):
        options = {
            "steps": f"{args.batched_iterations}it",
            "lr": 0.1,
            "momentum": 0.9,
            "weight_decay": 1e-4,
            "batch_size": args.batch,
            "precision": precision,
        }
        out[name] = bench_batched.speedup(
            "resnet20", data, options, device=device, repetitions=1 if args.tiny else 3, model_options={"shortcut": "B"}
        )
    return out


# ---- the end-to-end check ----------------------------------------------------------------------------


def end_to_end(device_name: str, data_dir: Path, work: Path, args) -> dict:
    import torch
    from mlflow.tracking import MlflowClient

    from mlprune import Experiment, Recipe
    from mlprune.data import load_data
    from mlprune.training.loop import evaluate

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work}/mlflow.db"
    os.chdir(work)
    train = dict(
        steps=f"{args.iterations}it",
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        batch_size=args.batch,
        precision="bf16",
        lr_schedule={"kind": "multistep", "milestones": [f"{args.iterations // 2}it"]},
    )
    prune = dict(method="l1_unstructured", amount=0.2, scope="global", exclude=["@output"])
    root_spec = dict(
        model="resnet20",
        model_options={"shortcut": "B"},
        init="kaiming_normal",
        bn_init="uniform",
        dataset="cifar10",
        seed=0,
        data_dir=str(data_dir),
    )
    exp = Experiment("gpu-check", device=device_name)
    started = time.perf_counter()
    root = exp.init(**root_spec)
    trained = root.apply(Recipe.train(**train))
    pruned = trained.apply(Recipe.prune(**prune))
    ticket = pruned.apply(Recipe.reinit(strategy="rewind", to="root", at=f"{args.rewind}it") + Recipe.train(**train))
    wall = time.perf_counter() - started

    client = MlflowClient()
    checks, notes = {}, {}
    runs = {
        name: client.get_run(s.run_id)
        for name, s in (("root", root), ("trained", trained), ("pruned", pruned), ("ticket", ticket))
    }
    checks["states_finished"] = all(r.info.status == "FINISHED" for r in runs.values())
    labels = {r.data.tags.get("mlprune.device") for r in runs.values()}
    notes["device_tag"] = sorted(labels)
    want = torch.cuda.get_device_name() if device_name.startswith("cuda") else device_name
    checks["device_tagged"] = labels == {want}
    # read back on the CPU from a fresh store object
    fresh = Experiment(experiment_id=exp.store.experiment_id)
    back = {name: fresh.state(s.run_id) for name, s in (("trained", trained), ("pruned", pruned), ("ticket", ticket))}
    checks["weights_float32_cpu"] = all(
        t.device.type == "cpu" and (t.dtype == torch.float32 or not t.is_floating_point()) and t.is_contiguous()
        for s in back.values()
        for t in s.weights.values()
    )
    weights = back["trained"].weights
    # the masks the CPU computes from the stored trained weights, as mlprune's prune step does
    cpu_pruned = _cpu_prune(back["trained"], prune)
    stored_masks = back["pruned"].masks
    checks["masks_identical_on_cpu"] = set(cpu_pruned) == set(stored_masks) and all(
        torch.equal(cpu_pruned[n], stored_masks[n]) for n in stored_masks
    )
    checks["masks_identical_after_retraining"] = all(
        torch.equal(back["ticket"].masks[n], stored_masks[n]) for n in stored_masks
    )
    checks["pruned_weights_zero"] = all(
        float(back["ticket"].weights[n][~m].abs().sum()) == 0.0 for n, m in stored_masks.items()
    )
    checks["batchnorm_restored"] = all(
        torch.equal(back["trained"].weights[n], back["pruned"].weights[n])
        for n in weights
        if "running" in n or "num_batches" in n
    )
    notes["sparsity"] = runs["pruned"].data.metrics["sparsity"]
    ticket_model = back["ticket"].model()
    data = load_data("cifar10", data_dir=data_dir)
    _, cpu_accuracy = evaluate(ticket_model, data.test_batches(256))
    device_accuracy = runs["ticket"].data.metrics["test_accuracy"]
    notes["test_accuracy_device"], notes["test_accuracy_cpu"] = device_accuracy, cpu_accuracy
    notes["test_accuracy_trained"] = runs["trained"].data.metrics["test_accuracy"]
    checks["cpu_accuracy_matches"] = abs(cpu_accuracy - device_accuracy) <= args.accuracy_tolerance
    notes["iterations_retrained"] = runs["ticket"].data.metrics["iterations"]
    checks["rewind_continues_schedule"] = notes["iterations_retrained"] == args.iterations - args.rewind
    notes["end_to_end_s"] = wall
    return {"checks": checks, "notes": notes}


def _cpu_prune(trained_state, prune: dict) -> dict:
    """The masks mlprune's prune step computes, on the CPU, from a stored trained state."""
    import torch

    from mlprune.models import prunable
    from mlprune.pruning import prune_masks
    from mlprune.spec.steps import resolve_prune

    model = trained_state.model()
    kinds = prunable(model)
    weights, masks = trained_state.weights, trained_state.masks
    options = resolve_prune(prune).options
    effective = {n: weights[n] * masks[n] for n in masks}
    return prune_masks(effective, masks, kinds, options, generator=torch.Generator().manual_seed(0))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, mps or cpu (default: cuda)")
    parser.add_argument("--tiny", action="store_true", help="seconds-long sizes (a smoke test of the same path)")
    parser.add_argument("--json", default=None, help="write the figures and checks here")
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--iterations", type=int, default=None, help="training iterations of each mlprune state")
    parser.add_argument("--timed", type=int, default=None, help="timed iterations of each throughput figure")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--rewind", type=int, default=None, help="rewind point (iterations)")
    parser.add_argument(
        "--batched-iterations",
        type=int,
        default=None,
        help="iterations of each of the 8 sibling trainings of the batched figure",
    )
    parser.add_argument(
        "--accuracy-tolerance",
        type=float,
        default=0.02,
        help="device vs CPU test accuracy of the same weights (bf16 / kernels differ)",
    )
    args = parser.parse_args(argv)
    tiny = {"train_size": 40, "iterations": 4, "timed": 2, "batch": 8, "rewind": 2, "test": 16, "batched_iterations": 2}
    full = {
        "train_size": 50000,
        "iterations": 400,
        "timed": 200,
        "batch": 128,
        "rewind": 100,
        "test": 10000,
        "batched_iterations": 50,
    }
    sizes = tiny if args.tiny else full
    for name in ("train_size", "iterations", "timed", "batch", "rewind", "batched_iterations"):
        if getattr(args, name.replace("-", "_")) is None:
            setattr(args, name, sizes[name])

    import torch

    from mlprune.data import load_data
    from mlprune.training.devices import device_label, resolve_device

    device = resolve_device(args.device)
    torch.set_num_threads(max(1, os.cpu_count() or 1) if device.type != "cpu" else torch.get_num_threads())
    os.environ["MLPRUNE_VERIFY_MD5"] = "0"  # hand-made CIFAR files
    result = {
        "device": device_label(device),
        "device_name": str(device),
        "tiny": args.tiny,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "sizes": {k: getattr(args, k) for k in ("train_size", "iterations", "timed", "batch", "rewind")},
    }
    with tempfile.TemporaryDirectory(prefix="mlprune-gpu-check-") as tmp:
        tmp = Path(tmp)
        data_dir = write_cifar10(tmp / "data", args.train_size, sizes["test"])
        work = tmp / "store"
        work.mkdir()
        cwd = os.getcwd()
        try:
            result.update(end_to_end(args.device, data_dir, work, args))
        finally:
            os.chdir(cwd)
        data = load_data("cifar10", data_dir=data_dir, device=device)
        result["placement"] = data.placement
        warmup = 0 if args.tiny else 20
        figures = {}
        for precision in ("bf16", "fp32"):
            figures[f"mlprune_{precision}_img_s"] = mlprune_throughput(
                data, device, precision, args.timed, args.batch, warmup
            )
        resident = resident_training_set(data_dir, device)
        for amp in (True, False):
            figures[f"bare_{'amp_bf16' if amp else 'fp32'}_img_s"] = bare_throughput(
                resident, data.input_shape, device, amp, args.timed, args.batch, warmup
            )
        figures["mlprune_vs_bare_bf16"] = figures["mlprune_bf16_img_s"] / figures["bare_amp_bf16_img_s"]
        figures["mlprune_vs_bare_fp32"] = figures["mlprune_fp32_img_s"] / figures["bare_fp32_img_s"]
        result["batched"] = batched_figures(data, device, args)
        figures.update({name: value["speedup"] for name, value in result["batched"].items()})
        result["notes"].update(
            {
                f"{name}_max_weight_difference": value["max_weight_difference"]
                for name, value in result["batched"].items()
            }
        )
        result["figures"] = figures
    ok = all(result["checks"].values())
    result["ok"] = ok
    print(
        f"## gpu_check on {result['device']} ({result['device_name']}), torch {result['torch']}, "
        f"data placement {result['placement']}, sizes {result['sizes']}\n"
    )
    print("| check | passed |\n|---|---|")
    for name, passed in result["checks"].items():
        print(f"| {name} | {'yes' if passed else 'NO'} |")
    print("\n| figure | value |\n|---|---:|")
    for name, value in {
        **result["figures"],
        **{k: v for k, v in result["notes"].items() if isinstance(v, (int, float))},
    }.items():
        print(f"| `{name}` | {value:.4g} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
