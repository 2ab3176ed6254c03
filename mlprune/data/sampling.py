"""Seeds and checks shared by both data paths (in memory, image folders): the data order and the
augmentation draws of (seed, epoch), the augmentations, batch sizes, validation split sizes."""

from __future__ import annotations

from ..errors import SpecError
from .catalog import DATASETS

MASK63 = (1 << 63) - 1
SHUFFLE_MULT = 1_000_003
AUGMENTS = {"crop": (True, False), "flip": (False, True), "crop+flip": (True, True)}


def shuffle_seed(seed: int, epoch: int) -> int:
    return (int(seed) * SHUFFLE_MULT + int(epoch)) & MASK63


def aug_seed(seed: int, epoch: int) -> int:
    return (shuffle_seed(seed, epoch) * 6364136223846793005 + 1442695040888963407) & MASK63


def check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SpecError(f"batch_size {batch_size!r} is not a positive int")
    return batch_size


def resolve_augment(name: str, augment) -> str | None:
    info = DATASETS[name]
    if augment is None:
        augment = info.default_augment
    if augment is True:
        return info.augment
    if augment is False or augment == "none":
        return None
    if isinstance(augment, str) and augment in AUGMENTS:
        return augment
    raise SpecError(
        f"augment {augment!r} is not valid; allowed: None (dataset default), true, false, "
        f"'none', {', '.join(repr(a) for a in AUGMENTS)}"
    )


def val_count(val_size, n_train: int) -> int:
    if isinstance(val_size, bool):
        raise SpecError(f"val_size {val_size!r} is not valid; allowed: an int in [0, {n_train}) or a float in [0, 1)")
    if isinstance(val_size, int):
        k = val_size
    elif isinstance(val_size, float) and 0.0 <= val_size < 1.0:
        k = int(round(val_size * n_train))
    else:
        k = -1
    if not 0 <= k < n_train:
        raise SpecError(f"val_size {val_size!r} is not valid; allowed: an int in [0, {n_train}) or a float in [0, 1)")
    return k
