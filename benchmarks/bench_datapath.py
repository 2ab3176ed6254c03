"""Training throughput: mlprune's in-memory fast path vs a plain DataLoader.

Trains lenet_300_100 (Frankle & Carbin's MLP) for one epoch on MNIST-shaped data
(random 1x28x28 uint8 images written as real MNIST IDX files in a temp dir and loaded
with ``load_data("mnist")``), batch size 60 (F&C's), SGD with momentum, two ways:

A. ``Data.train_batches(60, seed=0, epoch=rep)`` (seeded index_select batches);
B. ``DataLoader(TensorDataset(x, y), batch_size=60, shuffle=True)`` over the SAME
   preprocessed tensors (PyTorch's default per-sample fetch + collate).

Model, optimizer and data are the same; A and B alternate over the repetitions and the
medians of samples/second are reported, with their ratio (``fastpath_vs_dataloader``).

C. ``DataLoader(TensorDataset(x, y))`` with PyTorch's *default settings* (batch_size=1,
   no shuffle): the literal baseline of the data issue's "plain DataLoader with default
   settings". Training one sample per step is a different computation, so
   ``fastpath_vs_default_dataloader`` says what a user gains over that plain loop, not
   what the data path alone is worth; both figures are reported.
The same is measured for the data path alone (iterating the batches of one epoch with
no training: ``datapath_only_ratio``), which is what the fast path changes; in the
training figure the model's forward/backward, identical for A and B, dilutes it.

    python benchmarks/bench_datapath.py [--quick]

``measure(quick)`` returns the figures as a dict for a benchmark runner.
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

BATCH = 60
IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _write_idx(path: Path, arr: np.ndarray) -> None:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    head = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    path.write_bytes(head + arr.tobytes())


def _make_mnist(root: Path, n_train: int, n_test: int = 100) -> None:
    rng = np.random.default_rng(0)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    _write_idx(raw / IDX[0], rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8))
    _write_idx(raw / IDX[1], rng.integers(0, 10, n_train).astype(np.uint8))
    _write_idx(raw / IDX[2], rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8))
    _write_idx(raw / IDX[3], rng.integers(0, 10, n_test).astype(np.uint8))


def _iterate(batches) -> tuple[int, float]:
    n = 0
    t = time.perf_counter()
    for _x, y in batches:
        n += len(y)
    return n, time.perf_counter() - t


def _epoch(model, opt, batches) -> tuple[int, float]:
    loss_fn = torch.nn.CrossEntropyLoss()
    n = 0
    t = time.perf_counter()
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        n += len(y)
    return n, time.perf_counter() - t


def measure(quick: bool = False, tiny: bool = False) -> dict:
    """Median samples/s of both paths and ``fastpath_vs_dataloader`` (their ratio).

    `tiny`: a smoke-test size (seconds), for the test suite.
    """
    from mlprune.data import load_data
    from mlprune.models import build_model

    n_train = 600 if tiny else 4000 if quick else 10_000
    reps = 1 if tiny else 3 if quick else 7
    with tempfile.TemporaryDirectory() as tmp:
        _make_mnist(Path(tmp), n_train)
        data = load_data("mnist", data_dir=tmp, augment=False)
    assert data.fast
    x, y = data._train.x, data._train.y  # the same preprocessed tensors for B
    dataset = torch.utils.data.TensorDataset(x, y)

    model = build_model("lenet_300_100", num_classes=10, input_shape=data.input_shape, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    _epoch(model, opt, data.train_batches(BATCH, seed=0, epoch=0))  # warm-up
    _epoch(model, opt, torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True))

    fast, loader, fast_it, loader_it = [], [], [], []
    for rep in range(reps):
        order = (0, 1) if rep % 2 == 0 else (1, 0)  # alternate A/B
        for which in order:
            if which == 0:
                n, dt = _epoch(model, opt, data.train_batches(BATCH, seed=0, epoch=rep))
                fast.append(n / dt)
                n, dt = _iterate(data.train_batches(BATCH, seed=0, epoch=rep))
                fast_it.append(n / dt)
            else:
                n, dt = _epoch(model, opt, torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True))
                loader.append(n / dt)
                n, dt = _iterate(torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True))
                loader_it.append(n / dt)
    default = []
    default_samples = 300 if tiny else 1000 if quick else 3000
    for _rep in range(reps if not tiny else 1):  # C: PyTorch's defaults, one sample per step
        subset = torch.utils.data.TensorDataset(x[:default_samples], y[:default_samples])
        n, dt = _epoch(model, opt, torch.utils.data.DataLoader(subset))
        default.append(n / dt)
    f, d = statistics.median(fast), statistics.median(loader)
    fi, di = statistics.median(fast_it), statistics.median(loader_it)
    return {
        "fastpath_vs_dataloader": f / d,
        "fastpath_vs_default_dataloader": f / statistics.median(default),
        "default_dataloader_samples_per_s": statistics.median(default),
        "fastpath_samples_per_s": f,
        "dataloader_samples_per_s": d,
        "datapath_only_ratio": fi / di,
        "datapath_only_fastpath_samples_per_s": fi,
        "datapath_only_dataloader_samples_per_s": di,
        "n_train": n_train,
        "batch_size": BATCH,
        "repetitions": reps,
        "torch_threads": torch.get_num_threads(),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples and repetitions")
    ap.add_argument("--tiny", action="store_true", help="smoke-test size")
    args = ap.parse_args(argv)
    res = measure(args.quick, args.tiny)
    print(json.dumps(res, indent=2))
    print(
        f"training: fast path {res['fastpath_samples_per_s']:.0f} samples/s vs DataLoader "
        f"{res['dataloader_samples_per_s']:.0f} samples/s: x{res['fastpath_vs_dataloader']:.2f}"
    )
    print(
        f"vs DataLoader with default settings (batch_size=1): "
        f"{res['default_dataloader_samples_per_s']:.0f} samples/s: x{res['fastpath_vs_default_dataloader']:.1f}"
    )
    print(
        f"data path alone: {res['datapath_only_fastpath_samples_per_s']:.0f} vs "
        f"{res['datapath_only_dataloader_samples_per_s']:.0f} samples/s: x{res['datapath_only_ratio']:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
