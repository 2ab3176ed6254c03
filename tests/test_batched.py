"""Sibling trainings batched into one computation (`training.batched`) against each trained alone.

Every sibling of a batch must end where `training.loop.train` takes it alone: its weights up to
floating-point summation order, its masks and pruned zeros exactly, its history, checkpoints
and divergence. Both sides run here at one torch thread (conftest), so each side is bitwise
reproducible and the only difference is the batched kernels' summation order (grouped
channels_last convolutions, batched matmuls).

The tolerance on weights, WEIGHT_TOLERANCE = 5e-4 after one epoch (docs/performance.md):
measured over 24 LeNet siblings on digits (1 epoch, SGD lr 0.01 momentum 0.9, random masks and
inits), max |Δw| was 1.5e-8 for 21 of them and 4e-6, 6e-6, 6e-5 for three whose trajectories
are sensitive (a max-pooling choice that flips: training alone at 2 threads instead of 1 moves
the same siblings by up to 6e-6). One SGD iteration more or less moves the largest weight by
1.4e-3 to 3.3e-3 in every one of them, so a batching error of one batch, one step, a mask or a
learning rate is 3x above the tolerance (`test_the_tolerance_catches_one_iteration`), and the
noise measured is 8x below it.
"""

from __future__ import annotations

import copy

import pytest
import torch

from mlprune.data import load_data
from mlprune.models import MODELS, build_model, model_entry, model_input, prunable
from mlprune.spec.steps import resolve_train
from mlprune.training import OPTIMIZERS
from mlprune.training.batched import BatchedNetwork, NotBatchable, train_batched
from mlprune.training.loop import Callbacks, Diverged, train

WEIGHT_TOLERANCE = 5e-4
LOSS_TOLERANCE = 1e-4
# evaluations cast the logits to float32 (`loop.evaluate`): their losses differ at float32's precision
FLOAT32_EVALUATION = 1e-6

_DATA: dict = {}


def digits_for(model: str, **options):
    channels, size = model_input(model)
    key = (channels, size, tuple(sorted(options.items())))
    if key not in _DATA:
        _DATA[key] = load_data("digits", channels=channels, min_image_size=size, **options)
    return _DATA[key]


def digits_with_val():
    return digits_for("lenet_300_100", val_size=0.1)


class Float64:
    """A dataset's batches in float64: with float64 networks, summation order changes the weights by ~1e-16
    per operation instead of ~1e-7, so even a training that amplifies noise a millionfold (ResNet-20 on
    digits) shows whether batched and separate trainings are the same computation."""

    def __init__(self, data):
        self.data = data

    def __getattr__(self, name):
        return getattr(self.data, name)

    @staticmethod
    def _cast(batches):
        for x, y in batches:
            yield x.double(), y

    def train_batches(self, *args, **kwargs):
        return self._cast(self.data.train_batches(*args, **kwargs))

    def test_batches(self, *args, **kwargs):
        return self._cast(self.data.test_batches(*args, **kwargs))

    def val_batches(self, *args, **kwargs):
        batches = self.data.val_batches(*args, **kwargs)
        return None if batches is None else self._cast(batches)


def random_masks(model, seed: int, keep: float) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.rand(p.shape, generator=generator) < keep
        for name, p in model.named_parameters()
        if name in prunable(model)
    }


def siblings(
    model: str,
    n: int,
    options: dict,
    *,
    data=None,
    keeps=(1.0, 0.7, 0.4, 0.85),
    init_seeds=None,
    data_seeds=None,
    models=None,
    dtype=torch.float32,
):
    """(separate, batched): for each side the trained models, masks and outcomes (history or exception)."""
    data = data or digits_for(model)
    options = resolve_train(options).options
    init_seeds = init_seeds or list(range(n))
    data_seeds = data_seeds or [100 + k for k in range(n)]
    built = models or [
        build_model(model, num_classes=data.num_classes, input_shape=tuple(data.input_shape), seed=s).to(dtype)
        for s in init_seeds
    ]
    if dtype == torch.float64:
        data = Float64(data)
    sides = []
    for batched in (False, True):
        trained = [copy.deepcopy(m) for m in built]
        masks = [random_masks(m, 7 + k, keeps[k % len(keeps)]) for k, m in enumerate(trained)]
        if batched:
            outcomes = train_batched(trained, masks, data, options, seeds=data_seeds)
        else:
            outcomes = []
            for m, mask, seed in zip(trained, masks, data_seeds):
                try:
                    outcomes.append(train(m, mask, data, options, seed=seed))
                except Diverged as error:
                    outcomes.append(error)
        sides.append((trained, masks, outcomes))
    return sides[0], sides[1], data


def max_weight_difference(a, b) -> float:
    return max(
        float((x.double() - y.double()).abs().max())
        for x, y in zip(a.state_dict().values(), b.state_dict().values())
        if x.is_floating_point()
    )


def assert_same_training(separate, batched, data, *, tolerance=WEIGHT_TOLERANCE, loss_tolerance=LOSS_TOLERANCE):
    for k, (alone, together) in enumerate(zip(zip(*separate), zip(*batched))):
        (model_a, masks_a, history_a), (model_b, masks_b, history_b) = alone, together
        assert isinstance(history_b, dict), history_b
        assert max_weight_difference(model_a, model_b) <= tolerance, (k, max_weight_difference(model_a, model_b))
        assert set(masks_a) == set(masks_b)
        for name in masks_a:
            assert torch.equal(masks_a[name], masks_b[name]), (k, name)
            pruned = model_b.state_dict()[name][~masks_b[name]]
            assert bool((pruned == 0).all()) and not bool(torch.signbit(pruned).any()), (k, name)  # +0.0 exactly
        assert set(history_a) == set(history_b)
        assert history_a["iterations"] == history_b["iterations"]
        for metric, values in history_a.items():
            if metric == "iterations":
                continue
            others = history_b[metric]
            assert [e for e, _ in values] == [e for e, _ in others], metric
            for (_, a), (_, b) in zip(values, others):
                if "accuracy" in metric:
                    examples = (
                        data.len_test if "test" in metric else data.len_val if "val" in metric else data.len_train
                    )
                    assert abs(a - b) * examples <= 1 + 1e-9, (k, metric, a, b)  # within one example
                elif metric.endswith("loss"):
                    assert abs(a - b) <= loss_tolerance * max(1.0, abs(a)), (k, metric, a, b)
                else:
                    assert a == pytest.approx(b, rel=1e-9, abs=1e-12), (k, metric, a, b)


# ---- the maths, per architecture -------------------------------------------------------------------


def test_lenet_siblings_differing_in_init_masks_and_data_order_train_as_alone():
    separate, batched, data = siblings("lenet", 4, {"epochs": 1, "lr": 0.01, "momentum": 0.9})
    assert_same_training(separate, batched, data)
    # the siblings really differ from one another (inits, masks, data orders)
    assert max_weight_difference(batched[0][0], batched[0][1]) > 0.05


def test_the_tolerance_catches_one_iteration():
    """The weights tolerance is below what one SGD iteration more changes (the maths, not noise)."""
    data = digits_for("lenet")
    one_epoch = data.batches_per_epoch(32)
    separate, _, _ = siblings("lenet", 2, {"epochs": 1, "lr": 0.01, "momentum": 0.9})
    shorter, _, _ = siblings("lenet", 2, {"steps": f"{one_epoch - 1}it", "lr": 0.01, "momentum": 0.9})
    for full, short in zip(separate[0], shorter[0]):
        assert max_weight_difference(full, short) > 2 * WEIGHT_TOLERANCE


@pytest.mark.parametrize(
    "model, options, dtype",
    [
        ("lenet_300_100", {"epochs": 1, "lr": 0.0012, "optimizer": "adam", "batch_size": 60}, torch.float32),
        # in float64: at fp32 the dense sibling's weights agree to 3e-8 for 10 iterations, then a flip (a max-pooling
        # or ReLU choice decided by the batched kernels' summation order) between iterations 10 and 20 moves them by
        # 2e-5, which nesterov momentum grows to 2.7e-3 by the epoch's end (torch 2.14, AVX512, one thread); in
        # float64 both sides agree to 1e-16 (a whole epoch too): the same computation
        (
            "conv2",
            {"steps": "20it", "lr": 0.02, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
            torch.float64,
        ),
    ],
)
def test_each_architecture_and_optimizer_trains_as_alone(model, options, dtype):
    separate, batched, data = siblings(model, 3, options, dtype=dtype)
    if dtype == torch.float64:
        assert_same_training(separate, batched, data, tolerance=1e-9, loss_tolerance=FLOAT32_EVALUATION)
    else:
        assert_same_training(separate, batched, data)


def test_resnet20_siblings_are_the_same_computation_with_their_own_batchnorm_statistics():
    """ResNet-20 on digits amplifies any summation-order change (another thread count, channels_last, or
    batching) to 1e-2..1e-1 in 20 iterations at fp32 (docs/performance.md): in float64 the batched and
    separate trainings agree to 1e-11, BatchNorm running statistics included."""
    options = {
        "steps": "20it",
        "lr": 0.05,
        "momentum": 0.9,
        "lr_schedule": {"kind": "multistep", "milestones": ["10it"]},
        "warmup": "5it",
    }
    separate, batched, data = siblings("resnet20", 3, options, dtype=torch.float64)
    assert_same_training(separate, batched, data, tolerance=1e-9, loss_tolerance=FLOAT32_EVALUATION)
    for alone, together in zip(separate[0], batched[0]):
        for name, value in alone.state_dict().items():
            if "running" in name or "num_batches_tracked" in name:
                assert torch.allclose(value.double(), together.state_dict()[name].double(), rtol=1e-9, atol=1e-12), name
    stats = [m.state_dict()["bn1.running_mean"] for m in batched[0]]
    assert not torch.equal(stats[0], stats[1])  # each sibling's own statistics


def test_adamw_and_label_smoothing_on_resnet20_with_option_b_shortcuts():
    data = digits_for("resnet20")
    built = [
        build_model(
            "resnet20",
            num_classes=10,
            input_shape=tuple(data.input_shape),
            seed=s,
            options={"shortcut": "B", "width": 8},
        ).double()
        for s in range(2)
    ]
    options = {"steps": "10it", "lr": 0.01, "optimizer": "adamw", "weight_decay": 0.01, "label_smoothing": 0.1}
    separate, batched, data = siblings("resnet20", 2, options, models=built, dtype=torch.float64)
    assert_same_training(separate, batched, data, tolerance=1e-9, loss_tolerance=FLOAT32_EVALUATION)


def test_gradual_pruning_tightens_each_siblings_own_masks():
    options = {
        "epochs": 2,
        "lr": 0.0012,
        "optimizer": "adam",
        "batch_size": 60,
        "sparsity_schedule": {"kind": "agp", "final": 0.8, "start": "5it", "end": "1ep", "every": "5it"},
    }
    separate, batched, data = siblings("lenet_300_100", 3, options, keeps=(1.0, 0.9, 0.95))
    assert_same_training(separate, batched, data)
    assert "train_sparsity" in batched[2][0]
    assert batched[2][0]["train_sparsity"][-1][1] == pytest.approx(0.8, abs=0.01)


def test_global_gradual_pruning_and_a_validation_split():
    options = {
        "epochs": 1,
        "lr": 0.01,
        "momentum": 0.9,
        "sparsity_schedule": {
            "kind": "linear",
            "final": 0.5,
            "start": "0it",
            "end": "20it",
            "every": "10it",
            "scope": "global",
        },
    }
    separate, batched, data = siblings("lenet_300_100", 2, options, data=digits_with_val())
    assert "val_loss" in batched[2][0]
    assert_same_training(separate, batched, data)


def test_bf16_siblings_train_as_alone():
    """Autocast to bf16 (measured: max |Δw| 3.6e-5 over 20 iterations, the fp32 tolerance holds)."""
    separate, batched, data = siblings("lenet", 4, {"steps": "20it", "lr": 0.01, "momentum": 0.9, "precision": "bf16"})
    assert_same_training(separate, batched, data)


def test_dropout_draws_are_each_siblings_own():
    """AlexNet's dropout masks are drawn per sibling from its (seed, step), as training alone draws them."""
    separate, batched, data = siblings(
        "alexnet",
        2,
        {"steps": "3it", "lr": 0.01, "momentum": 0.9, "batch_size": 8},
        data=digits_for("alexnet", test_size=32),
    )
    assert_same_training(separate, batched, data)


def test_a_resumed_or_stopped_schedule_continues_as_alone():
    options = {
        "epochs": 2,
        "lr": 0.01,
        "momentum": 0.9,
        "schedule_from": "40it",
        "stop_at": "60it",
        "lr_schedule": "cosine",
    }
    separate, batched, data = siblings("lenet_300_100", 2, options)
    assert batched[2][0]["iterations"] == 20
    assert_same_training(separate, batched, data)


def test_checkpoints_and_epoch_callbacks_see_each_siblings_own_weights():
    data = digits_for("lenet_300_100")
    options = resolve_train({"epochs": 2, "lr": 0.01, "momentum": 0.9}).options
    built = [
        build_model("lenet_300_100", num_classes=10, input_shape=tuple(data.input_shape), seed=s) for s in range(3)
    ]
    seen: dict = {}

    def recorder(side, k, what):
        def record(*args):
            model = args[-2]
            seen[(side, k, what)] = {n: t.clone() for n, t in model.state_dict().items()}

        return record

    results = {}
    for side in ("alone", "batched"):
        models = [copy.deepcopy(m) for m in built]
        masks = [random_masks(m, k, 0.8) for k, m in enumerate(models)]
        checkpoints = [{10: recorder(side, k, "10it"), 45: recorder(side, k, "1ep")} for k in range(3)]
        on_epoch = [recorder(side, k, "epoch") for k in range(3)]
        if side == "alone":
            for k, m in enumerate(models):
                train(
                    m,
                    masks[k],
                    data,
                    options,
                    seed=k,
                    calls=Callbacks(on_epoch=on_epoch[k], checkpoints=checkpoints[k]),
                )
        else:
            train_batched(
                models,
                masks,
                data,
                options,
                seeds=[0, 1, 2],
                calls=Callbacks(on_epoch=on_epoch, checkpoints=checkpoints),
            )
        results[side] = models
    for k in range(3):
        for what in ("10it", "1ep", "epoch"):
            alone, together = seen[("alone", k, what)], seen[("batched", k, what)]
            assert max(float((alone[n] - together[n]).abs().max()) for n in alone) <= WEIGHT_TOLERANCE, (k, what)
    assert max_weight_difference(results["alone"][0], results["alone"][1]) > 0.01


def test_a_sibling_whose_callback_fails_is_dropped_the_others_go_on():
    data = digits_for("lenet_300_100")
    options = resolve_train({"epochs": 2, "lr": 0.01, "momentum": 0.9}).options
    built = [
        build_model("lenet_300_100", num_classes=10, input_shape=tuple(data.input_shape), seed=s) for s in range(3)
    ]

    class Lost(RuntimeError):
        pass

    def lose(epoch, model, history):
        raise Lost("claim taken over")

    models = [copy.deepcopy(m) for m in built]
    masks = [random_masks(m, k, 1.0) for k, m in enumerate(models)]
    outcomes = train_batched(
        models, masks, data, options, seeds=[0, 1, 2], calls=Callbacks(on_epoch=[None, lose, None])
    )
    assert isinstance(outcomes[1], Lost)
    alone = copy.deepcopy(built[2])
    history = train(alone, random_masks(alone, 2, 1.0), data, options, seed=2)
    assert outcomes[2]["iterations"] == history["iterations"] == 90
    assert max_weight_difference(alone, models[2]) <= WEIGHT_TOLERANCE


@pytest.mark.parametrize("on_divergence", ["fail", "record"])
def test_a_diverging_sibling_stops_alone(on_divergence):
    data = digits_for("lenet_300_100")
    built = [
        build_model("lenet_300_100", num_classes=10, input_shape=tuple(data.input_shape), seed=s) for s in range(3)
    ]
    with torch.no_grad():  # sibling 1 starts with huge weights: its loss overflows in the first epoch
        for p in built[1].parameters():
            p.mul_(1e18)
    options = {"epochs": 2, "lr": 0.01, "momentum": 0.9, "on_divergence": on_divergence}
    separate, batched, data = siblings("lenet_300_100", 3, options, models=built, keeps=(1.0,))
    if on_divergence == "fail":
        assert isinstance(separate[2][1], Diverged) and isinstance(batched[2][1], Diverged)
        assert str(separate[2][1]) == str(batched[2][1])  # both stop at its first non-finite loss
        assert "the train loss of iteration 1 is nan" in str(batched[2][1]), str(batched[2][1])
        keep = [0, 2]
    else:
        assert separate[2][1]["diverged"] == batched[2][1]["diverged"]
        assert separate[2][1]["iterations"] == batched[2][1]["iterations"]
        keep = [0, 1, 2]
    sub = lambda side: tuple([side[i][k] for k in keep] for i in range(3))  # noqa: E731
    if on_divergence == "record":  # the diverged sibling's non-finite weights are not compared numerically
        keep = [0, 2]
    assert_same_training(sub(separate), sub(batched), data)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_one_optimizer_over_stacked_tensors_is_each_siblings_own(optimizer):
    """The batched loop gives one torch.optim optimizer the stacked [N, ...] tensors: every catalog optimizer
    must update elementwise, so that each slice moves exactly as its own optimizer moves it alone."""
    own = {"momentum": 0.9, "nesterov": True} if "momentum" in OPTIMIZERS[optimizer].takes else {}
    options = resolve_train({"lr": 0.01, "optimizer": optimizer, "weight_decay": 0.01, **own}).options
    factory = OPTIMIZERS[optimizer].load()
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(3, 5, 4, generator=generator)
    grads = [torch.randn(3, 5, 4, generator=generator) for _ in range(4)]
    stacked = start.clone().requires_grad_()
    alone = [start[k].clone().requires_grad_() for k in range(3)]
    together, apart = factory([stacked], options), [factory([p], options) for p in alone]
    for grad in grads:
        stacked.grad = grad.clone()
        together.step()
        for k, (p, opt) in enumerate(zip(alone, apart)):
            p.grad = grad[k].clone()
            opt.step()
    for k, p in enumerate(alone):
        assert torch.allclose(stacked[k], p, rtol=0, atol=1e-7), optimizer


# ---- what is batched -------------------------------------------------------------------------------


def test_fp16_is_not_batched():
    data = digits_for("lenet_300_100")
    model = build_model("lenet_300_100", num_classes=10, input_shape=tuple(data.input_shape))
    with pytest.raises(NotBatchable, match="fp16"):
        train_batched(
            [model],
            [random_masks(model, 0, 1.0)],
            data,
            resolve_train({"epochs": 1, "precision": "fp16"}).options,
            seeds=[0],
        )


def test_a_module_the_interpreter_does_not_know_is_not_batched():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10), torch.nn.LayerNorm(10))
    with pytest.raises(NotBatchable, match="LayerNorm"):
        BatchedNetwork([net, copy.deepcopy(net)])


def test_torchvision_models_are_not_flagged_batchable():
    assert not model_entry("tv:resnet18", check_torchvision=False).batchable


@pytest.mark.parametrize("name", sorted(MODELS.where(batchable=True)))
def test_every_model_flagged_batchable_runs_batched_as_alone(name):
    """Two siblings, two iterations and the test pass, in float64: the flag is true of each registry entry."""
    data = digits_for(name, train_size=64, test_size=16)
    separate, batched, data = siblings(
        name, 2, {"steps": "2it", "lr": 0.01, "momentum": 0.9, "batch_size": 4}, data=data, dtype=torch.float64
    )
    assert_same_training(separate, batched, data, tolerance=1e-9, loss_tolerance=FLOAT32_EVALUATION)


def test_only_known_models_are_flagged_batchable():
    assert sorted(MODELS.where(batchable=True)) == sorted(
        ["lenet", "lenet_300_100", "conv2", "conv4", "conv6", "alexnet", "vgg11", "vgg16", "resnet20", "resnet56"]
    )


def test_a_relu_feeding_a_max_pooling_runs_after_it_with_the_same_values_and_gradients():
    """The batched forward pools before the ReLU (a quarter of the elements); both orders give bitwise the same
    values and gradients, ties and all-negative windows included (the training equivalence is tested above)."""
    from mlprune.training.stacked import trace

    model = build_model("lenet", num_classes=10, input_shape=(1, 28, 28), seed=0)
    order = [node.target for node, _ in trace(model) if node.op == "call_module"]
    assert order[:6] == ["features.0", "features.2", "features.1", "features.3", "features.5", "features.4"]
    x = torch.randn(4, 6, 12, 12, dtype=torch.float64)
    x[0, 0, :2, :2] = 0.5  # a tie of positive values
    x[1, 1, :2, :2] = -1.0  # a window with nothing above zero
    pool = torch.nn.MaxPool2d(2)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    relu_first, pool_first = pool(torch.relu(a)), torch.relu(pool(b))
    assert torch.equal(relu_first, pool_first)
    weights = torch.randn_like(relu_first)
    (relu_first * weights).sum().backward()
    (pool_first * weights).sum().backward()
    assert torch.equal(a.grad, b.grad)
