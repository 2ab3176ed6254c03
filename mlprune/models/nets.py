"""The architectures (torch): builders of the model catalog's entries, inits, `build_model`, `prunable`.

The catalog, the table of models and the contracts are in the package docstring (`mlprune.models`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from ..errors import SpecError, choice_error
from .catalog import BN_INIT_NAMES, INIT_NAMES, model_entry

__all__ = ["INITS", "BN_INITS", "build_model", "prunable"]


# ----------------------------------------------------------------------------- helpers


def _conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """The output size of a convolution or a pooling window along one dimension."""
    return (size + 2 * padding - kernel) // stride + 1


def _classifier(features: int, first: int, second: int, num_classes: int) -> nn.Sequential:
    """Linear -> ReLU -> Linear -> ReLU -> Linear: the fully connected head of LeNet, LeNet-300-100 and
    Conv-2/4/6 (its parameters named ``0.*``, ``2.*``, ``4.*``)."""
    return nn.Sequential(
        nn.Linear(features, first),
        nn.ReLU(inplace=True),
        nn.Linear(first, second),
        nn.ReLU(inplace=True),
        nn.Linear(second, num_classes),
    )


# ----------------------------------------------------------------------------- LeNet


class LeNet(nn.Module):
    """The seed's conv LeNet (LeNet-5 style, ReLU, max pooling)."""

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int]):
        super().__init__()
        c, h, w = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, 6, kernel_size=5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        fh = _conv_out(_conv_out(_conv_out(_conv_out(h, 5), 2, 2), 5), 2, 2)
        fw = _conv_out(_conv_out(_conv_out(_conv_out(w, 5), 2, 2), 5), 2, 2)
        self.classifier = _classifier(16 * fh * fw, 120, 84, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class LeNet300100(nn.Module):
    """Frankle & Carbin's LeNet-300-100 fully connected network."""

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int]):
        super().__init__()
        c, h, w = input_shape
        self.classifier = _classifier(c * h * w, 300, 100, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(x, 1))


# ----------------------------------------------------------------------------- Conv-2/4/6


class ConvNet(nn.Module):
    """Frankle & Carbin 2019's Conv-2 / Conv-4 / Conv-6 (VGG-like, CIFAR-10)."""

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int], pairs: int):
        super().__init__()
        c, h, w = input_shape
        layers: list[nn.Module] = []
        for width in (64, 128, 256)[:pairs]:
            layers += [
                nn.Conv2d(c, width, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            c = width
            h, w = h // 2, w // 2
        self.features = nn.Sequential(*layers)
        self.classifier = _classifier(c * h * w, 256, 256, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


# ----------------------------------------------------------------------------- AlexNet, VGG-11


class AlexNet(nn.Module):
    """torchvision's AlexNet (same module names), adapted to small images.

    conv1 uses stride 1 / padding 5 (torchvision: 4 / 2), and the adaptive pool targets
    min(6, feature size) so a small feature map is not replicated into the classifier.
    """

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int], dropout: float = 0.5):
        super().__init__()
        c, h, w = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, 64, kernel_size=11, stride=1, padding=5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        fh, fw = h, w
        for _ in range(3):
            fh, fw = _conv_out(fh, 3, 2), _conv_out(fw, 3, 2)
        ph, pw = min(6, fh), min(6, fw)
        self.avgpool = nn.AdaptiveAvgPool2d((ph, pw))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * ph * pw, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class VGG11(nn.Module):
    """torchvision's VGG-11 (configuration A, no BN; same module names and init).

    The adaptive pool targets min(7, feature size), so 32 px inputs (1x1 features) feed
    512 values to the classifier, not 49 copies of each.
    """

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int], dropout: float = 0.5):
        super().__init__()
        c, h, w = input_shape
        layers: list[nn.Module] = []
        for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):  # cfg "A"
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(c, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)  # = torchvision.models.vgg.make_layers(cfgs["A"])
        fh, fw = h, w
        for _ in range(5):
            fh, fw = fh // 2, fw // 2
        ph, pw = min(7, fh), min(7, fw)
        self.avgpool = nn.AdaptiveAvgPool2d((ph, pw))
        self.classifier = nn.Sequential(
            nn.Linear(512 * ph * pw, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        # torchvision's VGG init
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


# ----------------------------------------------------------------------------- ResNet-20


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut (parameter-free): stride subsampling, then output channel ``o`` is input
    channel ``index[o]``, or zeros where ``index[o] == -1``.

    Built as He et al.'s zero padding (``pad`` channels split before / after the input's); a
    compacted network (`mlprune.compact`) keeps only some channels on either side, which ``index``
    says. A module of its own (not a function in the block) so that the channel dependency
    tracer (`mlprune.pruning.structure`) can see which input channel each output channel carries.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.in_channels = in_channels
        pad = out_channels - in_channels
        self.index = [-1] * (pad // 2) + list(range(in_channels)) + [-1] * (pad - pad // 2)

    @property
    def out_channels(self) -> int:
        return len(self.index)

    def _padding(self):
        """(before, after) when ``index`` is a plain zero padding of all the inputs, else None."""
        first = next((o for o, i in enumerate(self.index) if i >= 0), len(self.index))
        middle = self.index[first : first + self.in_channels]
        if middle != list(range(self.in_channels)) or any(i >= 0 for i in self.index[first + self.in_channels :]):
            return None
        return first, len(self.index) - first - self.in_channels

    def forward(self, x):
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        padding = self._padding()
        if padding is not None:
            return nn.functional.pad(x, (0, 0, 0, 0, *padding)) if any(padding) else x
        zero = x.new_zeros((x.shape[0], 1, *x.shape[2:]))
        index = torch.tensor([i if i >= 0 else self.in_channels for i in self.index], device=x.device)
        return torch.cat([x, zero], dim=1).index_select(1, index)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, stride={self.stride}"


class _BasicBlockA(nn.Module):
    """CIFAR ResNet basic block. Shortcut option A (He et al.'s CIFAR runs): parameter-free, stride-2
    subsampling plus zero channel padding where the shape changes (`ZeroPadShortcut`); option B
    (OpenLTH): a 1x1 conv and BatchNorm there (``shortcut.0`` / ``shortcut.1``), identity elsewhere."""

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: str = "A"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            if shortcut == "B":
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
                )
            else:  # no parameters: the state_dict is the same as without the module
                self.shortcut = ZeroPadShortcut(in_planes, planes, stride)

    def _shortcut(self, x):
        if hasattr(self, "shortcut"):
            return self.shortcut(x)
        return x

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self._shortcut(x))


class ResNet20(nn.Module):
    """He et al. 2016 CIFAR ResNet-20 (n = 3): stages of width W, 2W, 4W (W = 16), option-A shortcuts
    by default (``shortcut="B"``: 1x1 conv shortcuts, as OpenLTH's cifar_resnet_20_W)."""

    def __init__(
        self, num_classes: int, input_shape: tuple[int, int, int], n: int = 3, width: int = 16, shortcut: str = "A"
    ):
        super().__init__()
        c = input_shape[0]
        self.conv1 = nn.Conv2d(c, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers = []
        in_planes = width
        for i, planes in enumerate((width, 2 * width, 4 * width)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(_BasicBlockA(in_planes, planes, stride, shortcut))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)
        for m in self.modules():  # the paper's init (He et al. 2015)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet56(num_classes: int, input_shape: tuple[int, int, int], width: int = 16, shortcut: str = "A") -> ResNet20:
    """He et al. 2016 CIFAR ResNet-56: the ResNet-20 family with n = 9 blocks per stage."""
    return ResNet20(num_classes, input_shape, n=9, width=width, shortcut=shortcut)


# ----------------------------------------------------------------------------- torchvision


@functools.lru_cache(maxsize=1)
def torchvision_builder(name: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
        import torchvision

        kwargs = {}
        if name in ("googlenet", "inception_v3"):
            kwargs = {"aux_logits": False, "init_weights": True}
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)

    build.__name__ = f"tv_{name}"
    return build


# ----------------------------------------------------------------------------- registries


class VGG16(nn.Module):
    """The CIFAR VGG-16 of Frankle et al. (OpenLTH's cifar_vgg_16): 13 3x3 convs (64, 64, M, 128, 128, M,
    256 x3, M, 512 x3, M, 512 x3) each with BatchNorm and ReLU, a 2x2 average pool, one fc layer."""

    PLAN = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int]):
        super().__init__()
        c, h, w = input_shape
        layers: list[nn.Module] = []
        for v in self.PLAN:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                h, w = h // 2, w // 2
            else:
                layers += [nn.Conv2d(c, v, kernel_size=3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AvgPool2d(2) if min(h, w) >= 2 else nn.Identity()
        ph, pw = (h // 2, w // 2) if min(h, w) >= 2 else (h, w)
        self.fc = nn.Linear(512 * ph * pw, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


# The builders of the catalog's entries (mlprune.models.MODELS[name].impl).
conv2 = functools.partial(ConvNet, pairs=1)
conv4 = functools.partial(ConvNet, pairs=2)
conv6 = functools.partial(ConvNet, pairs=3)


def _conv_linear_modules(model: nn.Module):
    for mod in model.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            yield mod


def _init_fn(weight_fn: Callable[[torch.Tensor], None]) -> Callable[[nn.Module], None]:
    def apply(model: nn.Module) -> None:
        with torch.no_grad():
            for mod in _conv_linear_modules(model):
                weight_fn(mod.weight)
                if mod.bias is not None:
                    mod.bias.zero_()

    return apply


def _default_init(model: nn.Module) -> None:
    """Keep the constructor's initialization."""


INITS: dict[str, Callable[[nn.Module], None]] = {
    "default": _default_init,
    "kaiming_normal": _init_fn(lambda w: nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu")),
    "kaiming_uniform": _init_fn(lambda w: nn.init.kaiming_uniform_(w, mode="fan_in", nonlinearity="relu")),
    "xavier_normal": _init_fn(nn.init.xavier_normal_),
    "xavier_uniform": _init_fn(nn.init.xavier_uniform_),
}
INITS["glorot"] = INITS["xavier_normal"]
assert set(INITS) == set(INIT_NAMES)


def _bn_uniform(model: nn.Module) -> None:
    """OpenLTH's ``uniform`` BatchNorm init: weight ~ U[0, 1), bias 0 (running statistics untouched)."""
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.affine:
                mod.weight.copy_(torch.rand(mod.weight.shape))
                mod.bias.zero_()


BN_INITS: dict[str, Callable[[nn.Module], None]] = {"default": _default_init, "uniform": _bn_uniform}
assert set(BN_INITS) == set(BN_INIT_NAMES)


def _check_shape(name: str, input_shape, need: tuple[int | None, int | None]) -> tuple[int, int, int]:
    try:
        shape = tuple(int(s) for s in input_shape)
        ok = (
            len(shape) == 3
            and all(s >= 1 for s in shape)
            and all(float(a) == float(b) for a, b in zip(shape, input_shape))
        )
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise SpecError(
            f"model {name!r}: input_shape {input_shape!r} is not a (channels, height, width) triple of positive ints"
        )
    c, h, w = shape
    channels, size = need
    if channels is not None and c != channels:
        raise SpecError(
            f"model {name!r} needs {channels}-channel input, got input shape {shape}; "
            f"load the data with channels={channels}"
        )
    if size is not None and min(h, w) < size:
        raise SpecError(
            f"model {name!r} needs images of at least {size}x{size} px, got input shape "
            f"{shape}; load the data with image_size={size} or more"
        )
    return shape


def build_model(
    name: str,
    *,
    num_classes: int,
    input_shape,
    init: str = "default",
    seed: int = 0,
    options: dict | None = None,
    bn_init: str = "default",
) -> nn.Module:
    """Build model `name` for `num_classes` classes and (C, H, W) inputs.

    `init` initializes the Conv2d / Linear weights, then `bn_init` the BatchNorm layers (`BN_INITS`).

    Deterministic in `seed`; the global RNG is not touched (the CPU RNG is forked). The
    model is float32 on the CPU, in training mode (as nn.Module leaves it).
    """
    entry = model_entry(name)
    builder = torchvision_builder(name[3:]) if entry.torchvision else entry.load()
    need = (entry.channels, entry.min_size if entry.min_size is not None else entry.hard_min)
    if init not in INITS:
        raise choice_error("init", init, INITS)
    if bn_init not in BN_INITS:
        raise choice_error("bn_init", bn_init, BN_INITS)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise SpecError(f"model {name!r}: num_classes {num_classes!r} is not a positive int")
    shape = _check_shape(name, input_shape, need)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SpecError(f"model {name!r}: seed {seed!r} is not an int")

    with torch.random.fork_rng(devices=[]):
        # Seed only the (forked) CPU generator: torch.manual_seed would also reseed CUDA.
        torch.default_generator.manual_seed(seed % (2**64))
        model = builder(num_classes, shape, **entry.check_options(options))
        INITS[init](model)
        BN_INITS[bn_init](model)
        model = model.float().cpu()
        if entry.torchvision:
            _probe(name, model, shape, num_classes)
    return model


def _probe(name: str, model: nn.Module, shape: tuple[int, int, int], num_classes: int) -> None:
    """One forward pass on zeros, so an input a model cannot take fails here, in one line."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros((1, *shape)))
    except Exception as exc:  # noqa: BLE001 -- any failure means "cannot take this input"
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError(f"model {name!r} cannot take input shape {shape}: {msg[:200]}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SpecError(f"model {name!r} on input shape {shape} gives output {got}, expected (batch, {num_classes})")


def prunable(model: nn.Module) -> dict[str, str]:
    """Ordered {parameter name: "conv" | "linear"} of the weights of Conv2d and Linear
    modules, in module order (the last entry is the output layer)."""
    params = dict(model.named_parameters())
    out: dict[str, str] = {}
    for mod_name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)) and isinstance(getattr(mod, "weight", None), nn.Parameter):
            pname = f"{mod_name}.weight" if mod_name else "weight"
            if pname in params:
                out[pname] = "conv" if isinstance(mod, nn.Conv2d) else "linear"
    return out
