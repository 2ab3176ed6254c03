"""The CPU data path and training loop give what they gave, on any machine.

`tests/data/cpu_results_v0.2.json` pins, for a few small trainings computed by mlprune on the CPU:
- SHA-256 digests of training and test batches (preprocessing, seeded shuffling, augmentation,
  skipping into an epoch: integer indexing and exactly rounded elementwise float maths, the same
  bits on every x86/ARM CPU);
- the states' keys and the digests of masks that do not depend on trained floats (exact);
- for trained weights, a fingerprint per tensor (sum, L2 norm and a projection on a fixed vector
  made with integer arithmetic), compared within a tolerance. Trained floats are NOT pinned
  bitwise: CPU kernels (summation order, vector width, bf16 rounding of accumulations) differ
  between processors, so a digest of trained weights pinned on one machine fails on the next one.
  The tolerance (`TOLERANCE`, relative to the tensor's norm) is far above the spread between thread
  counts (measured: 2.5e-6 at 2 threads vs 1) and below what a change of the maths moves: one more
  iteration of 16 moves a fingerprint by 3.3e-2 (test_the_fingerprint_tolerance_catches_a_change_of_the_maths);
- masks that follow trained weights (magnitude pruning) as kept counts per tensor, equal up to ties
  at the threshold (`MASK_SLACK` entries).
Bitwise reproducibility is checked where it holds: the same states computed twice on this machine,
at one thread, are bitwise equal (test_cpu_states_are_bitwise_reproducible_here).
Regenerate only when the maths change on purpose:
``python tests/test_device_data.py > tests/data/cpu_results_v0.2.json`` (and say why in the commit).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

PINNED = Path(__file__).resolve().parent / "data" / "cpu_results_v0.2.json"
TOLERANCE = 5e-3     # fingerprint deviation allowed, relative to the tensor's L2 norm
MASK_SLACK = 4      # masked entries per tensor that may move across machines (ties at the threshold)


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


def fingerprint(tensor: torch.Tensor) -> list[float]:
    """[sum, L2 norm, projection] of a tensor in float64; the projection vector is integer arithmetic
    (no RNG, no transcendental function), the same on every machine."""
    flat = tensor.detach().cpu().reshape(-1).double()
    index = torch.arange(flat.numel(), dtype=torch.int64)
    direction = ((index * 2654435761) % 1009).double() / 1009 - 0.5
    return [flat.sum().item(), flat.norm().item(), (flat * direction).sum().item()]


# masks computed from trained weights (magnitude pruning): exact only up to ties at the threshold
FLOAT_DEPENDENT_MASKS = {"resnet20 B crop then prune+rewind@4it"}


def compute_states(experiment) -> dict:
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
        out[name] = state
    return out


def state_results(states: dict) -> dict:
    out = {}
    for name, state in states.items():
        masks = ({"kept": {k: int(m.sum()) for k, m in sorted(state.masks.items())}}
                 if name in FLOAT_DEPENDENT_MASKS else {"masks": digest(state.masks)})
        out[name] = {"key": state.key, **masks,
                     "weights": {k: fingerprint(w) for k, w in sorted(state.weights.items())}}
    return out


def test_cpu_batches_are_bitwise_what_they_were():
    pinned = json.loads(PINNED.read_text())["batches"]
    assert batch_digests() == pinned


@pytest.fixture(scope="module")
def computed(tmp_path_factory):
    """The pinned states computed once for the module, in a fresh real store."""
    import os

    from mlflow.tracking import MlflowClient

    from mlprune import Experiment

    folder = tmp_path_factory.mktemp("pinned-states")
    before = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLPRUNE_THREADS", "MLPRUNE_CACHE_DIR")}
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
    os.environ["MLPRUNE_THREADS"] = "1"
    os.environ["MLPRUNE_CACHE_DIR"] = str(folder / "cache")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        MlflowClient().search_experiments()
        yield compute_states(Experiment("pinned")), folder
    finally:
        os.chdir(cwd)
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_cpu_states_match_the_pinned_keys_masks_and_weights(computed):
    pinned = json.loads(PINNED.read_text())["states"]
    got = state_results(computed[0])
    assert sorted(got) == sorted(pinned)
    for name, want in pinned.items():
        have = got[name]
        assert have["key"] == want["key"], name
        if "masks" in want:
            assert have["masks"] == want["masks"], name
        else:
            assert sorted(have["kept"]) == sorted(want["kept"]), name
            for param, count in want["kept"].items():
                assert abs(have["kept"][param] - count) <= MASK_SLACK, (name, param, have["kept"][param], count)
        assert sorted(have["weights"]) == sorted(want["weights"]), name
        for param, (total, norm, projection) in want["weights"].items():
            scale = max(norm, 1e-6)
            deviation = max(abs(a - b) for a, b in zip(have["weights"][param], (total, norm, projection))) / scale
            assert deviation <= TOLERANCE, f"{name} {param}: fingerprint moved by {deviation:.2e} of its norm"


def test_cpu_states_are_bitwise_reproducible_here(computed, tracking):
    """Computed again from nothing in another store on this machine at one thread: the same bits."""
    from mlprune import Experiment

    again = compute_states(Experiment("again"))
    for name, state in computed[0].items():
        assert again[name].key == state.key
        assert digest(again[name].weights) == digest(state.weights), name
        assert digest(again[name].masks) == digest(state.masks), name


def test_the_fingerprint_tolerance_catches_a_change_of_the_maths(computed, tracking):
    """One more iteration of training (a change far smaller than a real change of the loop) is caught."""
    from mlprune import Experiment, Recipe

    root_spec, steps = STATES["lenet crop+flip sgd"]
    longer = dict(steps[0]["train"], steps="17it")      # the pinned training is 2 epochs (16 iterations or fewer)
    state = Experiment("longer").init(**root_spec).apply(Recipe(({"train": longer},)))
    pinned = json.loads(PINNED.read_text())["states"]["lenet crop+flip sgd"]["weights"]
    moved = max(max(abs(a - b) for a, b in zip(fingerprint(state.weights[p]), want)) / max(want[1], 1e-6)
                for p, want in pinned.items())
    assert moved > 4 * TOLERANCE, moved              # measured: 3.3e-2


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
    os.environ["MLPRUNE_THREADS"] = "1"
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
        result = {"_about": "CPU batch digests, state keys, masks and weight fingerprints; see tests/test_device_data.py",
                  "batches": batch_digests(), "states": state_results(compute_states(Experiment("pins")))}
    json.dump(result, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
