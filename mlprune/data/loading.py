"""`load_data`: the one entry to every dataset, checked, then read in memory (`data.pipeline`) or
per sample from image folders (`data.folders`)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import SpecError
from .catalog import DATASETS, default_data_dir
from .folders import load_folder_data
from .readers import Folders
from .pipeline import Data, load_in_memory
from .sampling import resolve_augment


def as_folders(name: str, read) -> Folders:
    """A per-sample reader's result as `Folders`: built-in readers return them; a dataset plugin's may return
    ``(train, test)`` map-style ``torch.utils.data.Dataset`` s of (image tensor (C, H, W), label)."""
    import torch

    if isinstance(read, Folders):
        return read
    if not (isinstance(read, (tuple, list)) and len(read) == 2
            and all(isinstance(d, torch.utils.data.Dataset) and hasattr(d, "__len__") for d in read)):
        raise SpecError(f"dataset {name!r}: its reader returned {type(read).__name__}; allowed for a dataset that is "
                        f"not in memory: (train, test) map-style torch Datasets of (image tensor, label)")
    return Folders(read[0], read[1], ("plugin", name))


def load_data(name: str = "digits", *, image_size: int | None = None, channels: int | None = None,
              val_size: int | float = 0, split_seed: int = 0, augment: bool | str | None = None,
              data_dir: str | os.PathLike | None = None, fast: bool | None = None,
              min_image_size: int | None = None, train_size: int | None = None,
              test_size: int | None = None, device=None) -> Data:
    """Load dataset `name`, adapted to `image_size` (square, bilinear) and `channels`
    (1 or 3), with `val_size` held out of the train split (seeded by `split_seed`).

    `min_image_size`: upsample only images smaller than this (what a model needs);
    larger ones keep their size. `train_size` / `test_size`: use only that many
    samples (train: a seeded subset of what remains after the validation split,
    test: the first ones), for quick runs of large models.

    `augment`: None = dataset default, True = dataset standard, False / "none", or
    "crop", "flip", "crop+flip". `fast`: None = in-memory path when it fits.
    `device`: deliver batches there (`Data.on`); None = the CPU.
    """
    info = DATASETS[name]
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                   or image_size < 1):
        raise SpecError(f"image_size {image_size!r} is not valid; allowed: None (native) or a positive int")
    if channels not in (None, 1, 3) or isinstance(channels, bool):
        raise SpecError(f"channels {channels!r} is not valid; allowed: None (native), 1, 3")
    if isinstance(split_seed, bool) or not isinstance(split_seed, int):
        raise SpecError(f"split_seed {split_seed!r} is not an int")
    if fast not in (None, True, False):
        raise SpecError(f"fast {fast!r} is not valid; allowed: None (auto), true, false")
    aug = resolve_augment(name, augment)

    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if not info.in_memory:  # image folders (ImageNet): decoded per sample
        if fast:
            raise SpecError(f"fast True is not possible for {name}: an image-folder dataset is decoded per sample")
        data = load_folder_data(name, as_folders(name, DATASETS[name](root)), image_size=image_size, channels=channels,
                                val_size=val_size, split_seed=split_seed, aug=aug, train_size=train_size,
                                test_size=test_size, min_image_size=min_image_size)
        return data if device is None else data.on(device)
    return load_in_memory(name, root, image_size=image_size, channels=channels, val_size=val_size,
                          split_seed=split_seed, aug=aug, fast=fast, min_image_size=min_image_size,
                          train_size=train_size, test_size=test_size, device=device)
