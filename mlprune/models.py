"""Model registry: the seed's networks, the Frankle & Carbin networks, and torchvision.

Contract (docs/architecture.md):

    MODELS: dict[str, Callable[..., nn.Module]]   # name -> builder(num_classes, input_shape)
    INITS:  dict[str, Callable[[nn.Module], None]]
    model_input(name) -> (channels, min_image_size)   # None = any
    build_model(name, *, num_classes, input_shape, init="default", seed=0) -> nn.Module
    prunable(model) -> dict[str, str]                 # ordered {param name: "conv" | "linear"}

Models (``model_input`` gives what each needs; ``build_model`` rejects anything else
with a one-line :class:`SpecError`):

=================  ========  =========  ==================================================
name               channels  min size   architecture
=================  ========  =========  ==================================================
``lenet``          any       28         the seed's conv LeNet: conv 6 (5x5) - maxpool -
                                        conv 16 (5x5) - maxpool - fc 120 - fc 84 - fc
                                        classes, ReLU. 28 is the seed's MNIST geometry
                                        (8x8 digits are resized to 28x28); the flatten size
                                        follows the input (4x4x16 at 28 px).
``lenet_300_100``  any       any        Frankle & Carbin's MLP: flatten, 300, 100, classes.
``conv2/4/6``      any       any (*)    Frankle & Carbin 2019: pairs of 3x3 convs (padding
                                        1) of 64, 128, 256 channels, maxpool 2 after each
                                        pair, then fc 256 - 256 - classes (flatten size
                                        follows the input).
``alexnet``        3         32         torchvision's AlexNet adapted to small images
                                        (below): conv1 stride 1 / padding 5 instead of
                                        4 / 2; same parameter names as torchvision.
``vgg11``          3         32         torchvision's VGG-11 (configuration A, no BN,
                                        torchvision's init), classifier head sized to
                                        num_classes.
``resnet20``       any       any        He et al. 2016's CIFAR ResNet: 3x3 conv 16, 3 stages
                                        of 3 basic blocks (16, 32, 64 channels), global
                                        average pool, fc. Shortcut **option A** (identity;
                                        stride-2 subsampling plus zero channel padding where
                                        the shape changes), as in the paper's CIFAR runs: no
                                        shortcut parameters, so every conv is prunable.
``tv:<name>``      3         32 (**)    any torchvision classification model,
                                        ``get_model(name, weights=None, num_classes=n)``.
=================  ========  =========  ==================================================

(*) ``conv2`` / ``conv4`` / ``conv6`` build from 2 / 4 / 8 px (one halving per max
pool); ``model_input`` says None because every built-in dataset is at least 8 px.

(**) ``tv:alexnet`` needs 63 px, ``tv:inception_v3`` 75 px and the ViT models exactly
their image size (224). Every ``tv:`` model is checked with one forward pass on a zero input of the requested
shape at build time, so a size it cannot take is a one-line SpecError, not a traceback
later. ``googlenet`` / ``inception_v3`` are built without auxiliary classifiers (the
training loop expects one output tensor).

Small-input adaptation of ``alexnet`` / ``vgg11`` (both need 3 channels: load grayscale
data with ``channels=3``): torchvision's AdaptiveAvgPool2d would blow a small feature map
(1x1 for VGG at 32 px) up to 7x7 (6x6) and feed 49 (36) identical copies of each value
to a 25088 (9216)-wide first fc layer. We pool to ``min(7, feature size)`` instead and
size the first fc layer to match: the same kind of function, without replicated
inputs (VGG-11 at 32 px: 28.5 M parameters instead of 128.8 M). At 224 px
both are exactly torchvision's architectures except alexnet's conv1 stride / padding.

Inits (``INITS``; applied to every Conv2d and Linear weight, biases set to zero; BatchNorm
keeps weight 1 / bias 0):

- ``default``: whatever the model's constructor does (PyTorch's default layer init, or
  torchvision's own init for VGG / torchvision models);
- ``kaiming_normal``, ``kaiming_uniform``: He et al., fan_in, ReLU gain;
- ``xavier_normal``, ``xavier_uniform``: Glorot & Bengio, gain 1;
- ``glorot``: alias of ``xavier_normal`` (Frankle & Carbin's "Gaussian Glorot").

Train / eval mode: ``alexnet`` and ``vgg11`` have Dropout, ``resnet20`` and many ``tv:``
models BatchNorm; ``build_model`` returns the model in training mode and the training
loop (training.py) owns the mode: it must call ``model.eval()`` before evaluating.

Determinism: ``build_model`` forks the CPU RNG and seeds the fork with ``seed``, so the
same (name, num_classes, input_shape, init, seed) gives bitwise the same weights in any
process, and the caller's global RNG state is left exactly as it was.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import nn

from .errors import SpecError, choice_error

__all__ = ["MODELS", "INITS", "model_input", "build_model", "prunable"]


# ----------------------------------------------------------------------------- helpers

def _pool_out(size: int, kernel: int, stride: int, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1


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
        fh = _pool_out(_conv_out(_pool_out(_conv_out(h, 5), 2, 2), 5), 2, 2)
        fw = _pool_out(_conv_out(_pool_out(_conv_out(w, 5), 2, 2), 5), 2, 2)
        self.classifier = nn.Sequential(
            nn.Linear(16 * fh * fw, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class LeNet300100(nn.Module):
    """Frankle & Carbin's LeNet-300-100 fully connected network."""

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int]):
        super().__init__()
        c, h, w = input_shape
        self.classifier = nn.Sequential(
            nn.Linear(c * h * w, 300),
            nn.ReLU(inplace=True),
            nn.Linear(300, 100),
            nn.ReLU(inplace=True),
            nn.Linear(100, num_classes),
        )

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
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(inplace=True),
                       nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c = width
            h, w = h // 2, w // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(c * h * w, 256),
            nn.ReLU(inplace=True),
            nn.Linear(256, 256),
            nn.ReLU(inplace=True),
            nn.Linear(256, num_classes),
        )

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
            fh, fw = _pool_out(fh, 3, 2), _pool_out(fw, 3, 2)
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

class _BasicBlockA(nn.Module):
    """CIFAR ResNet basic block with an option-A (parameter-free) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.pad = planes - in_planes

    def _shortcut(self, x):
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = nn.functional.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self._shortcut(x))


class ResNet20(nn.Module):
    """He et al. 2016 CIFAR ResNet-20 (n = 3), option-A shortcuts."""

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int], n: int = 3):
        super().__init__()
        c = input_shape[0]
        self.conv1 = nn.Conv2d(c, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers = []
        in_planes = 16
        for i, planes in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(_BasicBlockA(in_planes, planes, stride))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():  # the paper's init (He et al. 2015)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ----------------------------------------------------------------------------- torchvision

@functools.lru_cache(maxsize=1)
def _tv_names() -> tuple[str, ...]:
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


# Known minimum / required sizes of torchvision models beyond the default of 32 px.
_TV_MIN_SIZE = {"alexnet": 63, "inception_v3": 75, "vit_b_16": 224, "vit_b_32": 224, "vit_l_16": 224,
                "vit_l_32": 224, "vit_h_14": 224, "maxvit_t": 224}
_TV_DEFAULT_MIN = 32


def _tv_builder(name: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
        import torchvision

        kwargs = {}
        if name in ("googlenet", "inception_v3"):
            kwargs = {"aux_logits": False, "init_weights": True}
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)

    build.__name__ = f"tv_{name}"
    return build


# ----------------------------------------------------------------------------- registries

MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet": LeNet,
    "lenet_300_100": LeNet300100,
    "conv2": functools.partial(ConvNet, pairs=1),
    "conv4": functools.partial(ConvNet, pairs=2),
    "conv6": functools.partial(ConvNet, pairs=3),
    "alexnet": AlexNet,
    "vgg11": VGG11,
    "resnet20": ResNet20,
}

# (channels, min image size); None = any
_INPUT: dict[str, tuple[int | None, int | None]] = {
    "lenet": (None, 28),
    "lenet_300_100": (None, None),
    "conv2": (None, None),
    "conv4": (None, None),
    "conv6": (None, None),
    "alexnet": (3, 32),
    "vgg11": (3, 32),
    "resnet20": (None, None),
}


# Sizes below which a model cannot run at all, where model_input says None: each of the
# F&C convnets' max pools halves the image. model_input returns None for them because
# every built-in dataset is at least 8 px, and a caller that resizes *to* the returned
# size must never shrink CIFAR to 2x2 for conv2. build_model still rejects smaller inputs.
_HARD_MIN = {"conv2": 2, "conv4": 4, "conv6": 8}


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


def _model_names() -> list[str]:
    return [*MODELS, "tv:<torchvision name>"]


def _resolve(name) -> tuple[str, Callable[..., nn.Module], tuple[int | None, int | None]]:
    """-> (kind, builder, (channels, min size)); kind is 'own' or 'tv'."""
    if not isinstance(name, str):
        raise choice_error("model", name, _model_names())
    if name.startswith("tv:"):
        tv = name[3:]
        if tv not in _tv_names():
            raise SpecError(
                f"unknown torchvision model {tv!r} in {name!r}; allowed: tv:<name> for a name in "
                f"torchvision.models.list_models() (e.g. tv:resnet18, tv:mobilenet_v2)")
        return "tv", _tv_builder(tv), (3, _TV_MIN_SIZE.get(tv, _TV_DEFAULT_MIN))
    if name not in MODELS:
        raise choice_error("model", name, _model_names())
    return "own", MODELS[name], _INPUT.get(name, (None, None))


def model_input(name: str) -> tuple[int | None, int | None]:
    """(channels, minimum image size) the model needs; None = any."""
    return _resolve(name)[2]


def _check_shape(name: str, input_shape, need: tuple[int | None, int | None]) -> tuple[int, int, int]:
    try:
        shape = tuple(int(s) for s in input_shape)
        ok = len(shape) == 3 and all(s >= 1 for s in shape) and all(
            float(a) == float(b) for a, b in zip(shape, input_shape))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise SpecError(f"model {name!r}: input_shape {input_shape!r} is not a (channels, height, width) "
                        f"triple of positive ints")
    c, h, w = shape
    channels, size = need
    if channels is not None and c != channels:
        raise SpecError(f"model {name!r} needs {channels}-channel input, got input shape {shape}; "
                        f"load the data with channels={channels}")
    if size is not None and min(h, w) < size:
        raise SpecError(f"model {name!r} needs images of at least {size}x{size} px, got input shape "
                        f"{shape}; load the data with image_size={size} or more")
    return shape


def build_model(name: str, *, num_classes: int, input_shape, init: str = "default", seed: int = 0) -> nn.Module:
    """Build model `name` for `num_classes` classes and (C, H, W) inputs.

    Deterministic in `seed`; the global RNG is not touched (the CPU RNG is forked). The
    model is float32 on the CPU, in training mode (as nn.Module leaves it).
    """
    kind, builder, need = _resolve(name)
    if need[1] is None and name in _HARD_MIN:
        need = (need[0], _HARD_MIN[name])
    if init not in INITS:
        raise choice_error("init", init, INITS)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise SpecError(f"model {name!r}: num_classes {num_classes!r} is not a positive int")
    shape = _check_shape(name, input_shape, need)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SpecError(f"model {name!r}: seed {seed!r} is not an int")

    with torch.random.fork_rng(devices=[]):
        # Seed only the (forked) CPU generator: torch.manual_seed would also reseed CUDA.
        torch.default_generator.manual_seed(seed % (2 ** 64))
        model = builder(num_classes, shape)
        INITS[init](model)
        model = model.float().cpu()
        if kind == "tv":
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
        raise SpecError(f"model {name!r} on input shape {shape} gives output {got}, "
                        f"expected (batch, {num_classes})")


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

