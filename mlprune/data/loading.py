"""`load_data`: the one entry to every dataset, checked, then read in memory (`data.pipeline`) or
per sample from image folders (`data.folders`)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import SpecError
from .catalog import DATASETS, default_data_dir
from .folders import load_folder_data
from .pipeline import Data, DataRequest, load_in_memory
from .readers import Folders
from .sampling import resolve_augment


def as_folders(name: str, read) -> Folders:
    """A per-sample reader's result as `Folders`: built-in readers return them; a dataset plugin's may return
    ``(train, test)`` map-style ``torch.utils.data.Dataset`` s of (image tensor (C, H, W), label)."""
    import torch

    if isinstance(read, Folders):
        return read
    if not (
        isinstance(read, (tuple, list))
        and len(read) == 2
        and all(isinstance(d, torch.utils.data.Dataset) and hasattr(d, "__len__") for d in read)
    ):
        raise SpecError(
            f"dataset {name!r}: its reader returned {type(read).__name__}; allowed for a dataset that is "
            f"not in memory: (train, test) map-style torch Datasets of (image tensor, label)"
        )
    return Folders(read[0], read[1], ("plugin", name))


# what `load_data` takes besides the dataset, where it is read and where batches go (`DataRequest`)
OPTIONS = (
    "image_size",
    "channels",
    "val_size",
    "split_seed",
    "augment",
    "fast",
    "min_image_size",
    "train_size",
    "test_size",
)


def load_data(name: str = "digits", *, data_dir: str | os.PathLike | None = None, device=None, **options) -> Data:
    """Load dataset `name`, adapted to `image_size` (square, bilinear; None: native) and `channels`
    (1 or 3; None: native), with `val_size` (default 0) held out of the train split (seeded by
    `split_seed`, default 0). The `options` are `OPTIONS`, each None by default but those two.

    `min_image_size`: upsample only images smaller than this (what a model needs);
    larger ones keep their size. `train_size` / `test_size`: use only that many
    samples (train: a seeded subset of what remains after the validation split,
    test: the first ones), for quick runs of large models.

    `augment`: None = dataset default, True = dataset standard, False / "none", or
    "crop", "flip", "crop+flip". `fast`: None = in-memory path when it fits.
    `device`: deliver batches there (`Data.on`); None = the CPU.
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise SpecError(f"load_data has no option {unknown[0]!r}; allowed: {', '.join(OPTIONS)}, data_dir, device")
    image_size, channels, fast = (options.get(k) for k in ("image_size", "channels", "fast"))
    split_seed = options.get("split_seed", 0)
    info = DATASETS[name]
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise SpecError(f"image_size {image_size!r} is not valid; allowed: None (native) or a positive int")
    if channels not in (None, 1, 3) or isinstance(channels, bool):
        raise SpecError(f"channels {channels!r} is not valid; allowed: None (native), 1, 3")
    if isinstance(split_seed, bool) or not isinstance(split_seed, int):
        raise SpecError(f"split_seed {split_seed!r} is not an int")
    if fast not in (None, True, False):
        raise SpecError(f"fast {fast!r} is not valid; allowed: None (auto), true, false")
    request = DataRequest(
        image_size,
        channels,
        options.get("val_size", 0),
        split_seed,
        resolve_augment(name, options.get("augment")),
        fast,
        options.get("min_image_size"),
        options.get("train_size"),
        options.get("test_size"),
    )

    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if not info.in_memory:  # image folders (ImageNet): decoded per sample
        if fast:
            raise SpecError(f"fast True is not possible for {name}: an image-folder dataset is decoded per sample")
        data = load_folder_data(name, as_folders(name, DATASETS[name](root)), request)
        return data if device is None else data.on(device)
    return load_in_memory(name, root, request, device=device)
