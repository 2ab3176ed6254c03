"""The bare PyTorch script every ``*_vs_bare`` figure compares with: a lottery ticket as a user writes it.

It imports torch and numpy only (never mlprune), sets nothing of OpenMP's and keeps torch's default
thread count (``--threads`` pins one, for the bitwise check against mlprune only): the process a user
runs. It reads the MNIST IDX files the benchmark wrote, trains LeNet-300-100, then per level prunes 20 %
of the surviving weights by magnitude, rewinds the survivors to the initialization and retrains,
evaluating every state on the test split. The maths is mlprune's for the same recipe (the same
initialization for the seed, data order, masks), so both sides reach the same accuracies.

    python benchmarks/bare_lottery.py DATA_DIR --seed 0 --levels 5 --epochs 10 --lr 0.1 --batch 128 \\
        --init kaiming_normal --scope global            # the study of benchmarks/bench_study.py

Prints one JSON line: accuracies, the loop's seconds (data loaded, imports done), the thread count,
and what the process ran with (``omp_env``: the OpenMP variables, ``mlprune_env``: the MLPRUNE_* ones,
``mlprune_modules``: mlprune modules imported), which tests/test_benchmarks.py checks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def read_idx(path: Path) -> torch.Tensor:
    raw = path.read_bytes()
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).copy()).reshape(shape)


def load(data_dir: Path):
    raw = data_dir / "MNIST" / "raw"
    x_train, y_train, x_test, y_test = (read_idx(raw / name) for name in IDX)
    return normalized(x_train), y_train.long(), normalized(x_test), y_test.long()


def normalized(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float [N, 1, 28, 28], the standard MNIST normalization (as mlprune's)."""
    return ((images.to(torch.float32) / 255.0 - MNIST_MEAN) / MNIST_STD).unsqueeze(1)


def lenet_300_100(seed: int, init: str) -> nn.Module:
    """LeNet-300-100, seeded (the CPU generator, as mlprune does it); `init` kaiming_normal redraws the
    weights (fan_in, ReLU gain) and zeroes the biases, `default` keeps nn.Linear's."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        model = nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, 300),
            nn.ReLU(inplace=True),
            nn.Linear(300, 100),
            nn.ReLU(inplace=True),
            nn.Linear(100, 10),
        )
        if init == "kaiming_normal":
            with torch.no_grad():
                for layer in (model[1], model[3], model[5]):
                    nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
                    layer.bias.zero_()
    return model


def lottery(data, args) -> dict:
    x_train, y_train, x_test, y_test = data
    torch.set_flush_denormal(True)
    model = lenet_300_100(args.seed, args.init)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    weights = {name: p for name, p in model.named_parameters() if name.endswith("weight")}
    masks = {name: torch.ones_like(p, dtype=torch.bool) for name, p in weights.items()}
    prunable = list(weights)[:-1] if args.exclude_output else list(weights)
    loss_fn = nn.CrossEntropyLoss()
    accuracies = []

    def evaluate():
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(y_test), 256):
                correct += int((model(x_test[i : i + 256]).argmax(1) == y_test[i : i + 256]).sum())
        model.train()
        accuracies.append(correct / len(y_test))

    def train():
        keep = [(weights[n], m.to(torch.float32)) for n, m in masks.items()]
        with torch.no_grad():
            for p, k in keep:
                p.mul_(k)
        opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
        for epoch in range(args.epochs):
            gen = torch.Generator().manual_seed((args.seed * 1_000_003 + epoch) & ((1 << 63) - 1))
            perm = torch.randperm(len(y_train), generator=gen)
            for i in range(0, len(y_train), args.batch):
                idx = perm[i : i + args.batch]
                opt.zero_grad()
                loss_fn(model(x_train.index_select(0, idx)), y_train.index_select(0, idx)).backward()
                opt.step()
                with torch.no_grad():
                    for p, k in keep:
                        p.mul_(k)

    def prune():
        with torch.no_grad():
            groups = [[n] for n in prunable] if args.scope == "layer" else [prunable]
            for names in groups:  # the smallest |w| among the survivors of the group
                alive = [masks[n].reshape(-1).nonzero().squeeze(1) for n in names]
                values = torch.cat([weights[n].detach().reshape(-1)[a].abs() for n, a in zip(names, alive)])
                gone = torch.topk(values, round(args.amount * values.numel()), largest=False).indices
                start = 0
                for n, a in zip(names, alive):
                    mine = gone[(gone >= start) & (gone < start + a.numel())] - start
                    masks[n].view(-1)[a[mine]] = False
                    weights[n].masked_fill_(~masks[n], 0.0)
                    start += a.numel()

    evaluate()
    train()
    evaluate()
    for _ in range(args.levels):
        prune()
        evaluate()
        model.load_state_dict(init)  # rewind to the initialization
        train()
        evaluate()
    state = {f"weight:{k}": v.detach().clone() for k, v in model.state_dict().items()}
    state.update({f"mask:{k}": v.clone() for k, v in masks.items()})
    return {"accuracies": accuracies, "state": state}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--momentum", type=float, default=0.0)
    ap.add_argument("--batch", type=int, default=60)
    ap.add_argument("--amount", type=float, default=0.2)
    ap.add_argument("--init", choices=("default", "kaiming_normal"), default="default")
    ap.add_argument("--scope", choices=("layer", "global"), default="layer")
    ap.add_argument("--exclude-output", action="store_true")
    ap.add_argument("--threads", type=int, help="pin torch's threads (the bitwise check only; default: torch's)")
    ap.add_argument("--save", type=Path, help="write the final weights and masks here (safetensors)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load(args.data_dir)
    started = time.perf_counter()
    result = lottery(data, args)
    loop_s = time.perf_counter() - started
    if args.save:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in result["state"].items()}, str(args.save))
    print(
        json.dumps(
            {
                "accuracies": result["accuracies"],
                "loop_s": loop_s,
                "threads": torch.get_num_threads(),
                "omp_env": {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "GOMP_", "KMP_"))},
                "mlprune_env": sorted(k for k in os.environ if k.startswith("MLPRUNE_")),
                "mlprune_modules": sorted(m for m in sys.modules if m.split(".")[0] == "mlprune"),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
