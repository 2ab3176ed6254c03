"""The model catalog: entries, init names, input needs; pure Python, no torch (see `mlprune.models`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SpecError
from ..registry import Registry, load_impl
from ..spec.options import Option, Schema, choice


@dataclass(frozen=True)
class Model:
    """One architecture: its builder ``impl(num_classes, (C, H, W)) -> nn.Module`` and what input it needs."""

    name: str
    impl: str
    channels: int | None = None  # the input channels it needs; None = any
    min_size: int | None = None  # the smallest image side it needs (data is upsampled to it); None = any
    hard_min: int | None = None  # below this it cannot run at all (build_model refuses)
    torchvision: bool = False  # a torchvision model: probed with one forward pass at build time
    options: Schema = Schema("model option", ())  # the root's model_options it takes
    # siblings of it train as one batched computation (`training.batched`, run option batch): its forward
    # uses only what the batched interpreter implements, and tests/test_batched.py checks it against
    # training alone
    batchable: bool = False
    help: str = ""

    def load(self):
        return load_impl(self.impl)

    def check_options(self, given: dict | None) -> dict:
        """The model's options (`model_options` of the root), checked; defaults left out."""
        given = dict(given or {})
        for name, value in given.items():
            if name not in self.options:
                raise SpecError(
                    f"model {self.name!r} takes no option {name!r}; allowed: {', '.join(self.options.names) or 'none'}"
                )
            self.options[name].check(value, f"model {self.name!r} option {name}")
        return self.options.resolve(given)


MODELS: Registry[Model] = Registry("model", extra_names=("tv:<torchvision name>",), group="mlprune.models")
MODELS.add(Model("lenet", "mlprune.models.nets:LeNet", min_size=28, batchable=True, help="the seed's conv LeNet"))
MODELS.add(Model("lenet_300_100", "mlprune.models.nets:LeNet300100", batchable=True, help="Frankle & Carbin's MLP"))
# each max pool of the F&C convnets halves the image: below 2/4/8 px they cannot run (min_size stays
# None: a caller that resizes *to* it must never shrink CIFAR to 2x2 for conv2)
MODELS.add(
    Model("conv2", "mlprune.models.nets:conv2", hard_min=2, batchable=True, help="Frankle & Carbin 2019's Conv-2")
)
MODELS.add(
    Model("conv4", "mlprune.models.nets:conv4", hard_min=4, batchable=True, help="Frankle & Carbin 2019's Conv-4")
)
MODELS.add(
    Model("conv6", "mlprune.models.nets:conv6", hard_min=8, batchable=True, help="Frankle & Carbin 2019's Conv-6")
)
MODELS.add(
    Model(
        "alexnet",
        "mlprune.models.nets:AlexNet",
        channels=3,
        min_size=32,
        batchable=True,
        help="torchvision's AlexNet adapted to small images",
    )
)
MODELS.add(Model("vgg11", "mlprune.models.nets:VGG11", channels=3, min_size=32, batchable=True, help="VGG-11 (no BN)"))
# the CIFAR ResNets' options (the root's model_options); at their defaults they leave keys as they were
_RESNET = Schema(
    "resnet option",
    (
        Option(
            "width", 16, choice(8, 16, 32, 64, 128), "filters of the first stage (then 2W, 4W)", key="unless_default"
        ),
        Option(
            "shortcut",
            "A",
            choice("A", "B"),
            "A: parameter-free (He et al.), B: 1x1 conv + BN (OpenLTH)",
            key="unless_default",
        ),
    ),
)
MODELS.add(
    Model(
        "resnet20",
        "mlprune.models.nets:ResNet20",
        options=_RESNET,
        batchable=True,
        help="He et al.'s CIFAR ResNet-20 (model_options: width, shortcut)",
    )
)
MODELS.add(
    Model(
        "resnet56",
        "mlprune.models.nets:resnet56",
        options=_RESNET,
        batchable=True,
        help="He et al.'s CIFAR ResNet-56 (ShrinkBench's CIFAR-10 network; model_options: width, shortcut)",
    )
)
MODELS.add(
    Model(
        "vgg16",
        "mlprune.models.nets:VGG16",
        channels=3,
        min_size=32,
        batchable=True,
        help="the CIFAR VGG-16 with BatchNorm of Frankle et al. / OpenLTH",
    )
)

INIT_NAMES = ("default", "kaiming_normal", "kaiming_uniform", "xavier_normal", "xavier_uniform", "glorot")
# BatchNorm inits (functions: models.nets.BN_INITS): "default" keeps PyTorch's (weight 1, bias 0); "uniform" is
# OpenLTH's default for its CIFAR ResNets and VGGs (weight ~ U[0, 1), bias 0).
BN_INIT_NAMES = ("default", "uniform")

# Known minimum / required sizes of torchvision models beyond the default of 32 px.
_TV_MIN_SIZE = {
    "alexnet": 63,
    "inception_v3": 75,
    "vit_b_16": 224,
    "vit_b_32": 224,
    "vit_l_16": 224,
    "vit_l_32": 224,
    "vit_h_14": 224,
    "maxvit_t": 224,
}
_TV_DEFAULT_MIN = 32


def torchvision_names() -> tuple[str, ...]:
    """torchvision's classification models (imports torchvision: only for a ``tv:`` name)."""
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


def model_entry(name, *, check_torchvision: bool = True) -> Model:
    """The catalog entry of `name`; ``tv:<name>`` makes one for a torchvision model.

    ``check_torchvision=False`` accepts any ``tv:<name>`` without importing torchvision
    (planning); building it checks the name.
    """
    if isinstance(name, str) and name.startswith("tv:") and len(name) > 3:
        tv = name[3:]
        if check_torchvision:
            if tv not in torchvision_names():
                raise SpecError(
                    f"unknown torchvision model {tv!r} in {name!r}; allowed: tv:<name> for a name in "
                    f"torchvision.models.list_models() (e.g. tv:resnet18, tv:mobilenet_v2)"
                )
        return Model(
            name,
            "mlprune.models.nets:torchvision_builder",
            channels=3,
            min_size=_TV_MIN_SIZE.get(tv, _TV_DEFAULT_MIN),
            torchvision=True,
        )
    return MODELS[name]


def model_input(name: str) -> tuple[int | None, int | None]:
    """(channels, minimum image size) the model needs; None = any."""
    entry = model_entry(name)
    return entry.channels, entry.min_size
