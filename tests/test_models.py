"""mlprune.models: registry, determinism, inits, prunable layers, input checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mlprune.errors import SpecError
from mlprune.models import INITS, MODELS, build_model, catalog, model_input, nets, prunable

OWN = ["lenet", "lenet_300_100", "conv2", "conv4", "conv6", "alexnet", "vgg11", "resnet20", "resnet56", "vgg16"]
SMALL = ["lenet", "lenet_300_100", "conv2", "conv4", "conv6", "resnet20"]


def shape_for(name: str, size: int = 8):
    channels, min_size = model_input(name)
    s = max(size, min_size or 0)
    return (channels or 1, s, s)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert msg and "\n" not in msg
    return msg


def test_registry_names_and_input_table():
    assert list(MODELS) == OWN
    assert {"default", "kaiming_normal", "kaiming_uniform", "xavier_normal", "xavier_uniform", "glorot"} <= set(INITS)
    assert model_input("lenet") == (None, 28)
    assert model_input("lenet_300_100") == (None, None)
    assert [model_input(f"conv{k}") for k in (2, 4, 6)] == [(None, None)] * 3  # build_model: >= 2 / 4 / 8 px
    assert model_input("alexnet") == (3, 32) and model_input("vgg11") == (3, 32)
    assert model_input("resnet20") == (None, None)
    assert model_input("tv:resnet18") == (3, 32) and model_input("tv:inception_v3") == (3, 75)


@pytest.mark.parametrize("name", OWN)
def test_forward_shape_dtype_device(name):
    shape = shape_for(name)
    net = build_model(name, num_classes=7, input_shape=shape, seed=0).eval()
    with torch.no_grad():
        out = net(torch.randn(3, *shape, generator=torch.Generator().manual_seed(0)))
    assert out.shape == (3, 7)
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in net.parameters())
    kinds = prunable(net)
    last = list(kinds)[-1]
    assert dict(net.named_parameters())[last].shape[0] == 7  # the output layer is last


@pytest.mark.parametrize("name", SMALL + ["tv:resnet18"])
def test_deterministic_in_seed_and_independent_of_global_rng(name):
    shape = shape_for(name, 32 if name.startswith("tv:") else 8)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = build_model(name, num_classes=10, input_shape=shape, seed=5)
    assert torch.equal(state, torch.get_rng_state())  # global RNG untouched
    torch.manual_seed(999)
    b = build_model(name, num_classes=10, input_shape=shape, seed=5)
    c = build_model(name, num_classes=10, input_shape=shape, seed=6)
    assert same_weights(a, b)
    assert not same_weights(a, c)


@pytest.mark.parametrize("init", sorted(INITS))
def test_inits_deterministic_and_biases_zero(init):
    a = build_model("lenet", num_classes=10, input_shape=(1, 28, 28), init=init, seed=1)
    b = build_model("lenet", num_classes=10, input_shape=(1, 28, 28), init=init, seed=1)
    assert same_weights(a, b)
    if init != "default":
        assert all(
            float(m.bias.detach().abs().sum()) == 0 for m in a.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
        )
        assert not same_weights(a, build_model("lenet", num_classes=10, input_shape=(1, 28, 28), seed=1))


def test_glorot_is_xavier_normal_and_scales_are_right():
    g = build_model("lenet_300_100", num_classes=10, input_shape=(1, 28, 28), init="glorot", seed=3)
    x = build_model("lenet_300_100", num_classes=10, input_shape=(1, 28, 28), init="xavier_normal", seed=3)
    assert same_weights(g, x)
    w = g.classifier[0].weight.detach()  # 300 x 784
    assert float(w.std()) == pytest.approx(math.sqrt(2 / (784 + 300)), rel=0.03)
    k = build_model("lenet_300_100", num_classes=10, input_shape=(1, 28, 28), init="kaiming_normal", seed=3)
    assert float(k.classifier[0].weight.detach().std()) == pytest.approx(math.sqrt(2 / 784), rel=0.03)
    u = build_model("lenet_300_100", num_classes=10, input_shape=(1, 28, 28), init="kaiming_uniform", seed=3)
    assert float(u.classifier[0].weight.detach().abs().max()) <= math.sqrt(6 / 784)
    xu = build_model("lenet_300_100", num_classes=10, input_shape=(1, 28, 28), init="xavier_uniform", seed=3)
    assert float(xu.classifier[0].weight.detach().abs().max()) <= math.sqrt(6 / (784 + 300))


def test_lenet_architecture_follows_input():
    net = build_model("lenet", num_classes=10, input_shape=(1, 28, 28))
    kinds = prunable(net)
    assert kinds == {
        "features.0.weight": "conv",
        "features.3.weight": "conv",
        "classifier.0.weight": "linear",
        "classifier.2.weight": "linear",
        "classifier.4.weight": "linear",
    }
    p = dict(net.named_parameters())
    assert p["features.0.weight"].shape == (6, 1, 5, 5) and p["features.3.weight"].shape == (16, 6, 5, 5)
    assert p["classifier.0.weight"].shape == (120, 16 * 4 * 4)
    assert p["classifier.2.weight"].shape == (84, 120) and p["classifier.4.weight"].shape == (10, 84)
    net3 = build_model("lenet", num_classes=10, input_shape=(3, 32, 32))
    q = dict(net3.named_parameters())
    assert q["features.0.weight"].shape == (6, 3, 5, 5) and q["classifier.0.weight"].shape == (120, 16 * 5 * 5)


def test_lenet_300_100_and_convnets():
    mlp = build_model("lenet_300_100", num_classes=10, input_shape=(1, 28, 28))
    assert [tuple(p.shape) for n, p in mlp.named_parameters() if n in prunable(mlp)] == [
        (300, 784),
        (100, 300),
        (10, 100),
    ]
    for k, widths in ((2, [64, 64]), (4, [64, 64, 128, 128]), (6, [64, 64, 128, 128, 256, 256])):
        net = build_model(f"conv{k}", num_classes=10, input_shape=(3, 32, 32))
        params = dict(net.named_parameters())
        kinds = prunable(net)
        convs = [params[n] for n, t in kinds.items() if t == "conv"]
        fcs = [params[n] for n, t in kinds.items() if t == "linear"]
        assert [c.shape[0] for c in convs] == widths and all(c.shape[2:] == (3, 3) for c in convs)
        side = 32 // 2 ** (k // 2)
        assert [tuple(f.shape) for f in fcs] == [(256, widths[-1] * side * side), (256, 256), (10, 256)]


def test_resnet56_is_he_et_al_s_cifar_network():
    """He et al. 2016, CIFAR ResNet-56: 6n + 2 = 56 layers with n = 9 (55 convolutions + fc), 0.85M parameters."""
    net = build_model("resnet56", num_classes=10, input_shape=(3, 32, 32))
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 55 and sum(p.numel() for p in net.parameters()) == 853_018
    assert type(net).__name__ == "ResNet20" and len(net.layer1) == len(net.layer2) == len(net.layer3) == 9


def test_resnet20_option_a():
    net = build_model("resnet20", num_classes=10, input_shape=(3, 32, 32))
    kinds = prunable(net)
    assert list(kinds.values()).count("conv") == 19 and list(kinds.values())[-1] == "linear"
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(0.27e6, rel=0.01)  # He et al.: 0.27M
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    net.eval()
    assert torch.equal(net(x), net(x))


def test_alexnet_vgg11_match_torchvision_names():
    import torchvision

    for ours, theirs in (("alexnet", torchvision.models.alexnet), ("vgg11", torchvision.models.vgg11)):
        net = build_model(ours, num_classes=10, input_shape=(3, 32, 32))
        with torch.device("meta"):  # shapes only: no 100M-weight init
            ref = theirs(num_classes=10)
        assert list(net.state_dict()) == list(ref.state_dict())
        assert any(isinstance(m, nn.Dropout) for m in net.modules())  # evaluation must set eval mode
        diff = [k for k, v in net.state_dict().items() if v.shape != ref.state_dict()[k].shape]
        assert diff == ["classifier.1.weight" if ours == "alexnet" else "classifier.0.weight"]
        assert net.state_dict()[diff[0]].shape[1] == (256 * 3 * 3 if ours == "alexnet" else 512)
    with torch.device("meta"):
        big = nets.VGG11(10, (3, 224, 224))  # what build_model builds at 224 px
        ref = torchvision.models.vgg11(num_classes=10)
    assert {k: v.shape for k, v in big.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


def test_prunable_orders_modules_and_skips_others():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.bn = nn.BatchNorm2d(2)
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(2, 3))

    assert prunable(Net()) == {"conv.weight": "conv", "head.1.weight": "linear"}


def test_tv_models():
    net = build_model("tv:resnet18", num_classes=10, input_shape=(3, 32, 32))
    assert list(prunable(net))[-1] == "fc.weight"
    g = build_model("tv:googlenet", num_classes=10, input_shape=(3, 32, 32))  # no aux heads
    g.train()
    assert isinstance(g(torch.zeros(2, 3, 32, 32)), torch.Tensor)


def test_tv_probe_turns_a_forward_failure_into_a_spec_error(monkeypatch):
    monkeypatch.delitem(catalog._TV_MIN_SIZE, "alexnet")  # torchvision's AlexNet needs 63 px
    with pytest.raises(SpecError) as e:
        build_model("tv:alexnet", num_classes=10, input_shape=(3, 32, 32))
    assert "tv:alexnet" in one_line(e) and "(3, 32, 32)" in str(e.value)


@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"name": "resnet50"}, ["resnet50", "lenet"]),
        ({"name": "tv:nonexistent_net"}, ["nonexistent_net", "tv:"]),
        ({"name": "lenet", "init": "orthogonal"}, ["orthogonal", "glorot"]),
        ({"name": "lenet", "input_shape": (1, 8, 8)}, ["lenet", "(1, 8, 8)", "28"]),
        ({"name": "vgg11", "input_shape": (1, 32, 32)}, ["vgg11", "3-channel", "channels=3"]),
        ({"name": "vgg11", "input_shape": (3, 16, 16)}, ["vgg11", "32"]),
        ({"name": "tv:inception_v3", "input_shape": (3, 32, 32)}, ["inception_v3", "75"]),
        ({"name": "conv6", "input_shape": (1, 4, 4)}, ["conv6", "8"]),
        ({"name": "lenet", "input_shape": (28, 28)}, ["input_shape"]),
        ({"name": "lenet", "num_classes": 0}, ["num_classes"]),
    ],
)
def test_bad_input_is_a_one_line_spec_error(kwargs, words):
    args = {"num_classes": 10, "input_shape": (3, 32, 32), **kwargs}
    with pytest.raises(SpecError) as e:
        build_model(args.pop("name"), **args)
    msg = one_line(e)
    assert all(w in msg for w in words), msg


def test_model_input_unknown_name():
    with pytest.raises(SpecError):
        model_input("nope")
