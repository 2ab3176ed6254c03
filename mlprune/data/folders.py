"""Image-folder datasets that do not fit in memory (ImageNet, Tiny ImageNet): decoded per sample.

The readers (`data.readers`) find the user's files and return torchvision ``ImageFolder`` s of the
train and test splits (`Folders`); this module turns them into a `data.pipeline.Data`: seeded
splits and subsets, a seeded shuffle per epoch, and the usual train / evaluation transforms with
randomness drawn per sample from a generator seeded by (seed, epoch, position in the epoch), so the
batches do not depend on the number of loader processes, on the global RNG or on the device.

Transforms (images are RGB, ``x / 255`` then normalized with the dataset's statistics):

- ``imagenet`` (side S = ``image_size``, default 224): train ``crop``: random-resized crop to S
  (area 8-100 %, aspect 3/4-4/3, 10 tries, else a center crop of clamped aspect: the
  Inception / torchvision recipe) and ``flip`` (horizontal, p = 1/2); evaluation (and training
  without ``crop``): resize the short side to round(S * 256 / 224) (256 at 224) and center-crop S.
- ``tiny_imagenet`` (64 px, or resized to ``image_size``): train ``crop``: a random 64 px crop of
  the image zero-padded by 4 px (black), ``flip``; evaluation: the image as it is.

Batches come from a ``torch.utils.data.DataLoader`` (``MLPRUNE_DATA_WORKERS`` worker processes,
default min(4, cores); pinned memory when training on CUDA, `Data.placement` "pinned").
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import torch

from ..errors import SpecError
from ..names import ENV_DATA_WORKERS
from .catalog import DATASETS
from .fingerprint import data_fingerprint
from .pipeline import Data, DataRequest
from .readers import Folders
from .sampling import AUGMENTS, MASK63, aug_seed, check_batch_size, shuffle_seed, val_count

__all__ = ["Folders", "FolderData", "FolderTransform", "resized_crop_box", "load_folder_data"]


def resized_crop_box(
    height: int, width: int, gen: torch.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), tries: int = 10
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random-resized crop: a box of a random share of the area (`scale`) and a
    log-uniform aspect ratio (`ratio`), placed uniformly; after `tries` boxes that do not fit, the
    largest central box whose aspect is clamped into `ratio`. Draws only from `gen`."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(tries):
        u = torch.rand(2, generator=gen, dtype=torch.float64).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[1])
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class FolderTransform:
    """PIL image -> normalized float32 (3, S, S), train or evaluation, its randomness from `gen`."""

    def __init__(self, style: str, size: int, mean, std, crop: bool, flip: bool):
        self.style, self.size = style, size  # style: "resized_crop" (ImageNet) or "padded_crop" (Tiny ImageNet)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.crop, self.flip = crop, flip

    def _evaluation(self, image):
        from torchvision.transforms.v2 import functional as F

        if self.style == "resized_crop":
            image = F.resize(image, [int(round(self.size * 256 / 224))], antialias=True)
            return F.center_crop(image, [self.size, self.size])
        if image.size != (self.size, self.size):
            image = F.resize(image, [self.size, self.size], antialias=True)
        return image

    def __call__(self, image, gen: torch.Generator | None) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        if isinstance(image, torch.Tensor):  # a dataset plugin's map-style Dataset: (C, H, W) uint8 or [0, 1]
            return self._tensor(image, gen)
        image = image.convert("RGB")
        if gen is not None and self.crop and self.style == "resized_crop":
            top, left, h, w = resized_crop_box(image.height, image.width, gen)
            image = F.resized_crop(image, top, left, h, w, [self.size, self.size], antialias=True)
        else:
            image = self._evaluation(image)
        x = F.pil_to_tensor(image)  # uint8 (3, S, S)
        if gen is not None and self.crop and self.style == "padded_crop":
            pad = max(1, int(self.size / 16 + 0.5))  # 4 px at 64 px
            offsets = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
            x = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # black
            x = x[:, offsets[0] : offsets[0] + self.size, offsets[1] : offsets[1] + self.size]
        if gen is not None and self.flip and bool(torch.rand(1, generator=gen) < 0.5):
            x = x.flip(-1)
        return ((x.to(torch.float32) / 255.0 - self.mean) / self.std).contiguous()

    def _tensor(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        x = x.to(torch.float32) / 255.0 if x.dtype == torch.uint8 else x.to(torch.float32)
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = torch.nn.functional.interpolate(
                x[None], size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True
            )[0]
        if gen is not None and self.crop:
            pad = max(1, int(self.size / 8 + 0.5))  # 4 px at 32 px, as the in-memory pipeline
            offsets = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
            x = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # black
            x = x[:, offsets[0] : offsets[0] + self.size, offsets[1] : offsets[1] + self.size]
        if gen is not None and self.flip and bool(torch.rand(1, generator=gen) < 0.5):
            x = x.flip(-1)
        return ((x - self.mean) / self.std).contiguous()


def _count(split) -> int:
    """The samples of an image folder, or of a plugin's map-style Dataset."""
    return len(split.samples) if hasattr(split, "samples") else len(split)


class _FolderSamples(torch.utils.data.Dataset):
    """Items are (index, sample seed or None): the image at `index`, transformed with that seed."""

    def __init__(self, folder, indices: list[int], transform: FolderTransform):
        self.folder, self.indices, self.transform = folder, indices, transform

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, item):
        position, seed = item
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        if not hasattr(self.folder, "samples"):  # a plugin's map-style Dataset of (image tensor, label)
            image, label = self.folder[self.indices[position]]
            return self.transform(image, gen), int(label)
        path, label = self.folder.samples[self.indices[position]]
        try:
            image = self.folder.loader(path)
        except Exception as exc:  # noqa: BLE001 - one line naming the file
            raise SpecError(f"cannot read image {path}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
        return self.transform(image, gen), int(label)


def data_workers() -> int:
    text = os.environ.get(ENV_DATA_WORKERS, "").strip()
    if not text:
        return min(4, os.cpu_count() or 1)
    if not (text.isascii() and text.isdigit()) or len(text) > 4:
        raise SpecError(f"{ENV_DATA_WORKERS} must be an integer in 0..9999, got {text[:40]!r}")
    return int(text)


class _FolderSplit:
    """One split of a folder dataset: which files, how they are transformed, where batches go."""

    def __init__(
        self,
        folder,
        indices: list[int],
        train_transform: FolderTransform | None,
        eval_transform: FolderTransform,
        device: torch.device | None = None,
    ):
        self.folder, self.indices = folder, list(indices)
        self.train_transform, self.eval_transform = train_transform, eval_transform
        self.device = device

    def __len__(self):
        return len(self.indices)

    @property
    def pin(self) -> bool:
        return self.device is not None and self.device.type == "cuda"

    def _batches(self, items: list, transform, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        workers = data_workers()
        loader = torch.utils.data.DataLoader(
            _FolderSamples(self.folder, self.indices, transform),
            batch_size=batch_size,
            sampler=items,
            num_workers=workers,
            pin_memory=self.pin,
            persistent_workers=False,
        )
        for x, y in loader:
            if self.device is not None:
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            yield x, y

    def sequential(self, batch_size: int):
        return self._batches([(i, None) for i in range(len(self))], self.eval_transform, batch_size)

    def shuffled(self, batch_size: int, order_seed: int, aug_seed: int, skip: int):
        perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(order_seed)).tolist()
        start = skip * batch_size
        transform = self.train_transform or self.eval_transform
        randomized = self.train_transform is not None
        items = [
            (perm[p], ((aug_seed * 1_000_003 + p) & MASK63) if randomized else None) for p in range(start, len(perm))
        ]
        return self._batches(items, transform, batch_size)


class FolderData(Data):
    """A `Data` whose splits are image folders decoded per sample (``fast`` False)."""

    def __init__(self, *, spec: dict, num_classes, input_shape, splits: tuple, mean, std, device=None):
        """`spec`: the resolved options (its ``name`` and ``augment`` are the dataset's); `splits`: (train,
        validation or None, test) `_FolderSplit`s."""
        self.name, self.num_classes, self.input_shape = spec["name"], num_classes, input_shape
        self._train, self._val, self._test = splits
        self.augment, self.fast, self.mean, self.std, self.spec = spec["augment"], False, tuple(mean), tuple(std), spec
        self.device = device
        self.placement = "pinned" if device is not None and device.type == "cuda" else "host"

    def train_batches(self, batch_size: int, *, seed: int, epoch: int, skip: int = 0):
        check_batch_size(batch_size)
        for what, v in (("seed", seed), ("epoch", epoch), ("skip", skip)):
            if isinstance(v, bool) or not isinstance(v, int) or (what == "skip" and v < 0):
                raise SpecError(f"{what} {v!r} is not an int{' >= 0' if what == 'skip' else ''}")
        return self._train.shuffled(batch_size, shuffle_seed(seed, epoch), aug_seed(seed, epoch), skip)

    def on(self, device) -> FolderData:
        device = torch.device(device)
        if device.type == "cpu":
            return self
        moved = [
            None if s is None else _FolderSplit(s.folder, s.indices, s.train_transform, s.eval_transform, device)
            for s in (self._train, self._val, self._test)
        ]
        return FolderData(
            spec=self.spec,
            num_classes=self.num_classes,
            input_shape=self.input_shape,
            splits=tuple(moved),
            mean=self.mean,
            std=self.std,
            device=device,
        )


def load_folder_data(name: str, folders: Folders, request: DataRequest) -> FolderData:
    """`data.loading.load_data` for an image-folder dataset (see the module docstring)."""
    image_size, channels, val_size, split_seed = (
        request.image_size,
        request.channels,
        request.val_size,
        request.split_seed,
    )
    aug, train_size, test_size, min_image_size = (
        request.aug,
        request.train_size,
        request.test_size,
        request.min_image_size,
    )
    info = DATASETS[name]
    native = 3 if hasattr(folders.train, "samples") else info.channels  # image files are read as RGB
    if channels not in (None, native):
        raise SpecError(
            f"{name}: channels {channels!r} is not available for this dataset (decoded per sample); "
            f"allowed: null or {native}"
        )
    size = image_size or info.image_size
    if min_image_size is not None and size < min_image_size:
        size = min_image_size
    crop, flip = AUGMENTS.get(aug, (False, False))
    style = info.folder_style
    train_transform = FolderTransform(style, size, info.mean, info.std, crop, flip) if aug else None
    eval_transform = FolderTransform(style, size, info.mean, info.std, False, False)
    n_train = _count(folders.train)
    k = val_count(val_size, n_train)
    train_idx = list(range(n_train))
    val = None
    if k:
        perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(split_seed & MASK63))
        val_idx = sorted(perm[:k].tolist())
        train_idx = sorted(perm[k:].tolist())
        val = _FolderSplit(folders.train, val_idx, None, eval_transform)
    test_idx = list(range(_count(folders.test)))
    for what, wanted, available in (
        ("train_size", train_size, len(train_idx)),
        ("test_size", test_size, len(test_idx)),
    ):
        if wanted is not None and (
            isinstance(wanted, bool) or not isinstance(wanted, int) or not 1 <= wanted <= available
        ):
            raise SpecError(f"{what} {wanted!r} is not valid; allowed: null (all) or an int in [1, {available}]")
    if train_size is not None and train_size < len(train_idx):
        perm = torch.randperm(len(train_idx), generator=torch.Generator().manual_seed((split_seed + 1) & MASK63))
        train_idx = [train_idx[i] for i in sorted(perm[:train_size].tolist())]
    if test_size is not None:
        test_idx = test_idx[:test_size]
    spec = {
        "name": name,
        "image_size": size,
        "channels": native,
        "val_size": k,
        "split_seed": split_seed if k else 0,
        "augment": aug,
        "train_size": train_size,
        "test_size": test_size,
        "fingerprint": data_fingerprint(folders),
    }
    splits = (
        _FolderSplit(folders.train, train_idx, train_transform, eval_transform),
        val,
        _FolderSplit(folders.test, test_idx, None, eval_transform),
    )
    return FolderData(
        spec=spec,
        num_classes=info.num_classes,
        input_shape=(native, size, size),
        splits=splits,
        mean=info.mean,
        std=info.std,
    )
