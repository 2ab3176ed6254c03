"""The CPU data path and training loop: what is machine-independent is pinned, the rest is checked here.

`tests/data/cpu_results_v0.2.json` pins only what is the same on every machine:
- SHA-256 digests of training and test batches (preprocessing, seeded shuffling, augmentation,
  skipping into an epoch: integer indexing and exactly rounded elementwise float maths);
- the states' keys, and the digests of masks that do not depend on trained floats.
Trained floats are never pinned: CPU kernels (summation order, vector width, bf16 rounding of
accumulations) differ between processors, and training amplifies a last-bit difference, so pinned
trained weights (digests or fingerprints within a tolerance) fail on the next machine. Instead the
trained weights are compared, bitwise, with a training written by hand in this file from the
documented protocol (SGD as torch.optim, the LR of step i from the schedule's formula, the batches of
`Data.train_batches` in the documented order, pruned entries masked after every step), computed on
this machine at the same thread count: that pins the loop's maths on any machine. Masks that follow
trained weights (magnitude pruning) are compared with torch.nn.utils.prune on the same weights.
Regenerate the pins only when keys or the data path change on purpose:
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
BATCH = 32


def digest(tensors) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of tensors given as a dict or a list."""
    items = sorted(tensors.items()) if isinstance(tensors, dict) else list(enumerate(tensors))
    h = hashlib.sha256()
    for name, tensor in items:
        tensor = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(
            tensor.numpy().tobytes() if tensor.dtype != torch.bfloat16 else tensor.view(torch.int16).numpy().tobytes()
        )
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
        out[f"digits28 crop+flip fast={fast}"] = {
            "train": digest(batches),
            "skip2": digest(skipped),
            "test": digest(test),
        }
    return out


STATES = {
    "lenet crop+flip sgd": (
        dict(model="lenet", dataset="digits", seed=0, train_size=256, augment="crop+flip"),
        [{"train": dict(steps=2, lr=0.05, momentum=0.9, batch_size=BATCH)}],
    ),
    "lenet_300_100 bf16 multistep warmup": (
        dict(model="lenet_300_100", dataset="digits", seed=1, train_size=256),
        [
            {
                "train": dict(
                    steps="20it",
                    lr=0.1,
                    momentum=0.9,
                    nesterov=True,
                    weight_decay=5e-4,
                    batch_size=BATCH,
                    precision="bf16",
                    warmup="5it",
                    lr_schedule={"kind": "multistep", "milestones": ["10it"]},
                )
            }
        ],
    ),
    "resnet20 B crop then prune+rewind@4it": (
        dict(
            model="resnet20",
            model_options={"shortcut": "B"},
            dataset="digits",
            seed=2,
            channels=3,
            train_size=128,
            augment="crop",
        ),
        [
            {"train": dict(steps=2, lr=0.05, momentum=0.9, batch_size=BATCH)},
            {"prune": dict(method="l1_unstructured", amount=0.5, scope="global")},
            {"reinit": dict(strategy="rewind", to="root", at="4it")},
            {"train": dict(steps=2, lr=0.05, momentum=0.9, batch_size=BATCH)},
        ],
    ),
}

# masks computed from trained weights (magnitude pruning): compared with torch's pruning on this machine
FLOAT_DEPENDENT_MASKS = {"resnet20 B crop then prune+rewind@4it"}


def compute_states(experiment) -> dict:
    """{name: [root, then the state after each step (a reinit together with the training after it)]}."""
    from mlprune import Recipe

    out = {}
    for name, (root_spec, steps) in STATES.items():
        state = experiment.init(**root_spec)
        chain, states = [], [state]
        for step in steps:
            chain.append(step)
            if "reinit" in step:
                continue  # applied together with the retraining that follows it
            state = state.apply(Recipe(tuple(chain)))
            states.append(state)
            chain = []
        out[name] = states
    return out


def state_results(states: dict) -> dict:
    out = {}
    for name, chain in states.items():
        final = chain[-1]
        out[name] = {"key": final.key, "keys": [s.key for s in chain]}
        if name not in FLOAT_DEPENDENT_MASKS:
            out[name]["masks"] = digest(final.masks)
    return out


def test_cpu_batches_are_bitwise_what_they_were():
    pinned = json.loads(PINNED.read_text())["batches"]
    assert batch_digests() == pinned


@pytest.fixture(scope="module")
def computed(tmp_path_factory):
    """The states computed once for the module, in a fresh real store, at one torch thread."""
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
        yield compute_states(Experiment("pinned"))
    finally:
        os.chdir(cwd)
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_cpu_states_match_the_pinned_keys_and_masks(computed):
    pinned = json.loads(PINNED.read_text())["states"]
    assert state_results(computed) == pinned


# ---- the training written by hand ------------------------------------------------------------------


def _data(root_spec: dict):
    """The dataset as a state of `root_spec` trains on it (the model's channels and minimum image size)."""
    from mlprune.data import load_data
    from mlprune.models import model_input

    channels, min_size = model_input(root_spec["model"])
    return load_data(
        root_spec["dataset"],
        train_size=root_spec["train_size"],
        augment=root_spec.get("augment"),
        channels=root_spec.get("channels") or channels,
        min_image_size=min_size,
        val_size=0,
    )


def _hand_train(
    model, data, *, start: int, stop: int, lr_of, seed: int, optimizer, masks=None, precision: str = "fp32"
) -> dict:
    """Optimizer steps start..stop-1 of a training: step i uses LR lr_of(i) and batch i mod per_epoch of
    epoch i // per_epoch (data order seeded by `seed`); the mean cross-entropy of the batch; pruned
    entries' gradients zeroed before the step and the entries set to 0 after it. One torch thread, as the
    states were computed."""
    per_epoch = data.batches_per_epoch(BATCH)
    keeps = [(p, masks[n].to(p.dtype)) for n, p in model.named_parameters() if masks and n in masks]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # as mlprune's loop (deterministic; denormals only cost time)
    model.train()
    try:
        with torch.no_grad():
            for param, keep in keeps:
                param.mul_(keep)
        i = start
        while i < stop:
            epoch, first = divmod(i, per_epoch)
            for x, y in data.train_batches(BATCH, seed=seed, epoch=epoch, skip=first):
                for group in optimizer.param_groups:
                    group["lr"] = lr_of(i)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                with torch.no_grad():
                    for param, keep in keeps:
                        param.grad.mul_(keep)
                    optimizer.step()
                    for param, keep in keeps:
                        param.mul_(keep)
                i += 1
                if i == stop:
                    break
    finally:
        torch.set_num_threads(threads)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _model_at(state):
    from mlprune.models import build_model

    root = state.spec["root"]
    data = _data({**root, **root["data"]})
    model = build_model(
        root["model"],
        num_classes=data.num_classes,
        input_shape=tuple(data.input_shape),
        options=root.get("model_options"),
    )
    model.load_state_dict(state.weights)
    return model, data


def _assert_bitwise(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), (name, float((got[name].double() - tensor.double()).abs().max()))


def test_a_plain_sgd_training_is_bitwise_the_hand_written_one(computed):
    root, trained = computed["lenet crop+flip sgd"]
    model, data = _model_at(root)
    per_epoch = data.batches_per_epoch(BATCH)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    want = _hand_train(model, data, start=0, stop=2 * per_epoch, lr_of=lambda i: 0.05, seed=0, optimizer=optimizer)
    _assert_bitwise(trained.weights, want)
    assert any(not torch.equal(trained.weights[n], root.weights[n]) for n in want)  # it did train


def test_bf16_nesterov_weight_decay_multistep_warmup_is_bitwise_the_hand_written_one(computed):
    root, trained = computed["lenet_300_100 bf16 multistep warmup"]
    model, data = _model_at(root)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def lr_of(i: int) -> float:  # multistep (gamma 0.1 at 10it) times a linear warmup over 5it
        return 0.1 * (0.1 ** (1 if i >= 10 else 0) * min(1.0, i / 5))

    want = _hand_train(model, data, start=0, stop=20, lr_of=lr_of, seed=1, optimizer=optimizer, precision="bf16")
    _assert_bitwise(trained.weights, want)


def test_batchnorm_training_prune_rewind_and_retraining_are_bitwise_the_hand_written_ones(computed):
    """ResNet-20 (BatchNorm, 1x1 shortcuts): the training, the global magnitude mask (torch's pruning on the
    same weights), the rewind to iteration 4 of the first training and the retraining that continues its
    schedule from there, with a fresh optimizer and the mask enforced."""
    from torch.nn.utils import prune

    root, trained, pruned, retrained = computed["resnet20 B crop then prune+rewind@4it"]
    model, data = _model_at(root)
    per_epoch = data.batches_per_epoch(BATCH)
    assert per_epoch == 4  # so the rewind point (4it) is the end of epoch 1
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    at_4 = _hand_train(model, data, start=0, stop=4, lr_of=lambda i: 0.05, seed=2, optimizer=optimizer)
    full = _hand_train(model, data, start=4, stop=2 * per_epoch, lr_of=lambda i: 0.05, seed=2, optimizer=optimizer)
    _assert_bitwise(trained.weights, full)

    oracle, _ = _model_at(trained)
    params = [(module, "weight") for name, module in oracle.named_modules() if f"{name}.weight" in pruned.masks]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=0.5)
    want_masks = {
        f"{name}.weight": module.weight_mask.bool()
        for name, module in oracle.named_modules()
        if hasattr(module, "weight_mask")
    }
    assert sorted(want_masks) == sorted(pruned.masks)
    for name, mask in want_masks.items():
        assert torch.equal(pruned.masks[name], mask), name
        assert not pruned.weights[name][~mask].any(), name

    assert torch.equal(retrained.parents()["weights"].weights["conv1.weight"], at_4["conv1.weight"])
    model, _ = _model_at(root)
    model.load_state_dict(at_4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    want = _hand_train(
        model, data, start=4, stop=2 * per_epoch, lr_of=lambda i: 0.05, seed=2, optimizer=optimizer, masks=pruned.masks
    )
    _assert_bitwise(retrained.weights, want)
    assert all(torch.equal(retrained.masks[n], pruned.masks[n]) for n in pruned.masks)


def test_cpu_states_are_bitwise_reproducible_here(computed, tracking):
    """Computed again from nothing in another store on this machine at one thread: the same bits."""
    from mlprune import Experiment

    again = compute_states(Experiment("again"))
    for name, chain in computed.items():
        for state, other in zip(chain, again[name]):
            assert other.key == state.key and other.run_id != state.run_id
            assert digest(other.weights) == digest(state.weights), name
            assert digest(other.masks) == digest(state.masks), name


def test_placement_keeps_what_fits_on_the_accelerator_and_pins_the_rest():
    from mlprune.data.pipeline import placement

    cifar10 = 60000 * 3 * 32 * 32 * 4 + 60000 * 8  # preprocessed float32 images and int64 labels
    assert placement("cpu", True, cifar10, None) == "host"
    assert placement("cuda", True, cifar10, 140 * 1024**3) == "device"  # an H200: resident
    assert placement("cuda", True, cifar10, 1024**3) == "pinned"  # over half of what is free
    assert placement("cuda", False, 10, 140 * 1024**3) == "pinned"  # the per-sample path never moves
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
    for (xc, yc), (xg, yg) in zip(
        cpu.train_batches(32, seed=3, epoch=1, skip=1), gpu.train_batches(32, seed=3, epoch=1, skip=1)
    ):
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
        result = {
            "_about": "CPU batch digests, state keys and masks that do not depend on trained floats; "
            "see tests/test_device_data.py",
            "batches": batch_digests(),
            "states": state_results(compute_states(Experiment("pins"))),
        }
    json.dump(result, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
