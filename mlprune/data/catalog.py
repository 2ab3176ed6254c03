"""The dataset catalog: entries, statistics, where data is read from; pure Python, no torch (see `mlprune.data`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..names import ENV_DATA_DIR
from ..registry import Registry, load_impl


@dataclass(frozen=True)
class Dataset:
    """One dataset: its reader ``impl(root) -> Raw`` and what preprocessing needs to know."""

    name: str
    impl: str
    num_classes: int
    channels: int
    mean: tuple[float, ...]  # per-channel training-set statistics of x / scale
    std: tuple[float, ...]
    augment: str  # what augment=True means
    default_augment: bool  # augment=None
    needs_files: bool = True  # read from data_dir (False: embedded)
    help: str = ""
    # image-folder datasets (too big for memory: decoded per sample, `data.folders`)
    in_memory: bool = True  # False: the reader returns `readers.Folders`, not uint8 tensors
    image_size: int | None = None  # the side it is prepared at by default (image folders)
    folder_style: str = ""  # its transforms: "resized_crop" (ImageNet) or "padded_crop" (Tiny ImageNet)
    torchvision: bool = False  # its reader imports torchvision (what local workers load before they fork)

    def load(self):
        return load_impl(self.impl)

    def __call__(self, root):
        """Read the dataset from `root` (a data_dir): a ``readers.Raw`` of uint8 tensors."""
        return self.load()(root)


DATASETS: Registry[Dataset] = Registry("dataset", group="mlprune.datasets")
DATASETS.add(
    Dataset(
        "digits",
        "mlprune.data.readers:read_digits",
        10,
        1,
        (0.3054,),
        (0.3761,),
        "crop",
        False,
        needs_files=False,
        help="scikit-learn's 8x8 digits (embedded)",
    )
)
DATASETS.add(
    Dataset(
        "mnist",
        "mlprune.data.readers:read_mnist",
        10,
        1,
        (0.1307,),
        (0.3081,),
        "crop",
        False,
        help="MNIST (IDX files under <data_dir>/MNIST/raw)",
    )
)
DATASETS.add(
    Dataset(
        "fashion_mnist",
        "mlprune.data.readers:read_fashion_mnist",
        10,
        1,
        (0.2860,),
        (0.3530,),
        "crop+flip",
        False,
        help="Fashion-MNIST (IDX files under <data_dir>/FashionMNIST/raw)",
    )
)
DATASETS.add(
    Dataset(
        "cifar10",
        "mlprune.data.readers:read_cifar10",
        10,
        3,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        "crop+flip",
        True,
        torchvision=True,
        help="CIFAR-10 (<data_dir>/cifar-10-batches-py)",
    )
)
DATASETS.add(
    Dataset(
        "cifar100",
        "mlprune.data.readers:read_cifar100",
        100,
        3,
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        "crop+flip",
        True,
        torchvision=True,
        help="CIFAR-100 (<data_dir>/cifar-100-python)",
    )
)
DATASETS.add(
    Dataset(
        "tiny_imagenet",
        "mlprune.data.readers:read_tiny_imagenet",
        200,
        3,
        (0.480, 0.448, 0.397),
        (0.276, 0.269, 0.282),
        "crop+flip",
        True,
        in_memory=False,
        image_size=64,
        folder_style="padded_crop",
        torchvision=True,
        help="Tiny ImageNet, 64 px (<data_dir>/tiny-imagenet-200: train/<wnid>/images, val)",
    )
)
DATASETS.add(
    Dataset(
        "imagenet",
        "mlprune.data.readers:read_imagenet",
        1000,
        3,
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
        "crop+flip",
        True,
        in_memory=False,
        image_size=224,
        folder_style="resized_crop",
        torchvision=True,
        help="ImageNet (ILSVRC 2012), 224 px (<data_dir>/imagenet/{train,val}/<wnid>/*.JPEG)",
    )
)

# Per-channel training-set statistics of x / scale.
STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    name: (entry.mean, entry.std) for name, entry in DATASETS.builtins().items()
}


def default_data_dir() -> Path:
    """``$MLPRUNE_DATA_DIR``, else ``~/.cache/mlprune/data``."""
    return Path(os.environ.get(ENV_DATA_DIR) or "~/.cache/mlprune/data").expanduser()
