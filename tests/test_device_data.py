"""The data path on the training device (issue 15): CPU results stay bitwise what they were.

`tests/data/cpu_results_v0.1.json` pins SHA-256 digests of training batches and of trained states
computed on the CPU by mlprune *before* the device-resident data path existed (the lead's main at
the redesign). Any change of the data path, the augmentation or the loop that moves one bit of a
CPU result fails here. Regenerate only when the maths change on purpose:
``python tests/test_device_data.py > tests/data/cpu_results_v0.1.json`` (and say why in the commit).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

PINNED = Path(__file__).resolve().parent / "data" / "cpu_results_v0.1.json"


def digest(tensors) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of tensors given as a dict or a list."""
    items = sorted(tensors.items()) if isinstance(tensors, dict) else list(enumerate(tensors))
    h = hashlib.sha256()
    for name, tensor in items:
        tensor = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(tensor.numpy().tobytes() if tensor.dtype != torch.bfloat16 else tensor.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def batch_digests() -> dict:
    """Training and test batches on both data paths: shuffling, augmentation, skipping into an epoch."""
    from mlprune.data import load_data

    out = {}
    for fast in (True, False):
        data = load_data("digits", image_size=28, augment="crop+flip", train_size=200, fast=fast)
        batches = [t for x, y in data.train_batches(32, seed=3, epoch=1) for t in (x, y)]
        skipped = [t for x, y in data.train_batches(32, seed=3, epoch=1, skip=2) for t in (x, y)]
        test = [t for x, y in data.test_batches(64) for t in (x, y)]
        out[f"digits28 crop+flip fast={fast}"] = {"train": digest(batches), "skip2": digest(skipped),
                                                   "test": digest(test)}
    return out


STATES = {
    "lenet crop+flip sgd": (dict(model="lenet", dataset="digits", seed=0, train_size=256, augment="crop+flip"),
                            [{"train": dict(steps=2, lr=0.05, momentum=0.9, batch_size=32)}]),
    "lenet_300_100 bf16 multistep warmup": (
        dict(model="lenet_300_100", dataset="digits", seed=1, train_size=256),
        [{"train": dict(steps="20it", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, batch_size=32,
                        precision="bf16", warmup="5it", lr_schedule={"kind": "multistep", "milestones": ["10it"]})}]),
    "resnet20 B crop then prune+rewind@4it": (
        dict(model="resnet20", model_options={"shortcut": "B"}, dataset="digits", seed=2, channels=3,
             train_size=128, augment="crop"),
        [{"train": dict(steps=2, lr=0.05, momentum=0.9, batch_size=32)},
         {"prune": dict(method="l1_unstructured", amount=0.5, scope="global")},
         {"reinit": dict(strategy="rewind", to="root", at="4it")},
         {"train": dict(steps=2, lr=0.05, momentum=0.9, batch_size=32)}]),
}


def state_digests(experiment) -> dict:
    from mlprune import Recipe

    out = {}
    for name, (root_spec, steps) in STATES.items():
        state = experiment.init(**root_spec)
        chain = []
        for step in steps:
            chain.append(step)
            if "reinit" in step:
                continue   # applied together with the retraining that follows it
            state = state.apply(Recipe(tuple(chain)))
            chain = []
        out[name] = {"key": state.key, "weights": digest(state.weights), "masks": digest(state.masks)}
    return out


def test_cpu_batches_are_bitwise_what_they_were():
    pinned = json.loads(PINNED.read_text())["batches"]
    assert batch_digests() == pinned


def test_cpu_states_are_bitwise_what_they_were(experiment):
    pinned = json.loads(PINNED.read_text())["states"]
    assert state_digests(experiment) == pinned


def test_placement_keeps_what_fits_on_the_accelerator_and_pins_the_rest():
    from mlprune.data.pipeline import placement

    cifar10 = 60000 * 3 * 32 * 32 * 4 + 60000 * 8           # preprocessed float32 images and int64 labels
    assert placement("cpu", True, cifar10, None) == "host"
    assert placement("cuda", True, cifar10, 140 * 1024 ** 3) == "device"     # an H200: resident
    assert placement("cuda", True, cifar10, 1024 ** 3) == "pinned"           # over half of what is free
    assert placement("cuda", False, 10, 140 * 1024 ** 3) == "pinned"         # the per-sample path never moves
    assert placement("mps", True, cifar10, None) == "device" and placement("mps", False, 10, None) == "host"


def test_data_on_the_cpu_is_the_data_itself():
    from mlprune.data import load_data

    data = load_data("digits", train_size=64)
    assert data.on(torch.device("cpu")) is data and data.device is None and data.placement == "host"
    assert load_data("digits", train_size=64, device=torch.device("cpu")).placement == "host"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fast", [True, False])
def test_cuda_batches_are_bitwise_the_cpu_batches(fast):
    from mlprune.data import load_data

    cpu = load_data("digits", image_size=28, augment="crop+flip", train_size=200, fast=fast)
    gpu = cpu.on(torch.device("cuda"))
    assert gpu.placement == ("device" if fast else "pinned")
    for (xc, yc), (xg, yg) in zip(cpu.train_batches(32, seed=3, epoch=1, skip=1),
                                  gpu.train_batches(32, seed=3, epoch=1, skip=1)):
        assert xg.device.type == "cuda" and torch.equal(xg.cpu(), xc) and torch.equal(yg.cpu(), yc)
    for (xc, yc), (xg, yg) in zip(cpu.test_batches(64), gpu.test_batches(64)):
        assert torch.equal(xg.cpu(), xc) and torch.equal(yg.cpu(), yc)


if __name__ == "__main__":  # regenerate the pins (see the module docstring)
    import os
    import tempfile

    from mlprune import Experiment

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
        result = {"_about": "SHA-256 of CPU batches and states; see tests/test_device_data.py",
                  "batches": batch_digests(), "states": state_digests(Experiment("pins"))}
    json.dump(result, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
