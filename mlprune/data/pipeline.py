"""Preprocessing, splits, seeded shuffling and augmentation of in-memory datasets: `load_in_memory` -> `Data`.

See the package docstring (`mlprune.data`) for what each option means and the
guarantees (the same (seed, epoch) gives bitwise the same batches on both paths).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import SpecError
from .catalog import DATASETS
from .fingerprint import data_fingerprint
from .readers import PREP_CACHE, Raw
from .sampling import AUGMENTS, MASK63, aug_seed, check_batch_size, shuffle_seed, val_count

__all__ = ["Data", "load_in_memory", "FAST_LIMIT_BYTES", "DEVICE_SHARE", "placement"]

FAST_LIMIT_BYTES = 2 * 1024**3
DEVICE_SHARE = 0.5  # an in-memory dataset moves onto an accelerator when it takes at most this share of its free memory

_GRAY_WEIGHTS = (0.299, 0.587, 0.114)

# ----------------------------------------------------------------------------- preprocessing


class _Pipeline:
    """uint8 (N, C, H, W) -> normalized float32 (N, C', S, S); elementwise per sample, so a
    batch and its samples one by one give bitwise the same values."""

    def __init__(
        self,
        scale: float,
        c_in: int,
        c_out: int,
        size_in: tuple[int, int],
        size_out: tuple[int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ):
        self.scale = float(scale)
        self.mean_values = tuple(float(v) for v in mean)
        self.std_values = tuple(float(v) for v in std)
        self.c_in, self.c_out = c_in, c_out
        self.size_in, self.size_out = size_in, size_out
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 -> [0, 1] float, channels converted, resized (not normalized)."""
        x = x.to(torch.float32) / self.scale
        if self.c_in == 1 and self.c_out == 3:
            x = x.expand(-1, 3, -1, -1)
        elif self.c_in == 3 and self.c_out == 1:
            w0, w1, w2 = _GRAY_WEIGHTS
            x = x[:, 0:1] * w0 + x[:, 1:2] * w1 + x[:, 2:3] * w2
        if self.size_out != self.size_in:
            shrink = self.size_out[0] < self.size_in[0] or self.size_out[1] < self.size_in[1]
            x = F.interpolate(x, size=self.size_out, mode="bilinear", align_corners=False, antialias=shrink)
        return x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return ((self.to_unit(x) - self.mean) / self.std).contiguous()

    def fill(self) -> torch.Tensor:
        """The normalized value of a black (0) pixel, per channel."""
        return (-self.mean / self.std).view(-1)

    def apply_chunked(self, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        c, (h, w) = self.c_out, self.size_out
        out = torch.empty((x.shape[0], c, h, w), dtype=torch.float32)
        for i in range(0, x.shape[0], chunk):
            out[i : i + chunk] = self(x[i : i + chunk])
        return out


def _gray_stats_of_rgb(raw: Raw, mean_rgb) -> tuple[tuple[float], tuple[float]]:
    w = torch.tensor(_GRAY_WEIGHTS, dtype=torch.float64)
    mean = float((w * torch.tensor(mean_rgb, dtype=torch.float64)).sum())
    total, total_sq, n = 0.0, 0.0, 0
    for i in range(0, raw.x_train.shape[0], 4096):
        x = raw.x_train[i : i + 4096].to(torch.float64) / raw.scale
        g = x[:, 0] * w[0] + x[:, 1] * w[1] + x[:, 2] * w[2]
        total += float(g.sum())
        total_sq += float((g * g).sum())
        n += g.numel()
    var = max(total_sq / max(n, 1) - (total / max(n, 1)) ** 2, 1e-12)
    return (mean,), (math.sqrt(var),)


# ----------------------------------------------------------------------------- augmentation


def _crop_pad(size: int) -> int:
    return max(1, int(size / 8 + 0.5))


def _augment(
    x: torch.Tensor, gen: torch.Generator, crop: bool, flip: bool, pad: int, fill: torch.Tensor
) -> torch.Tensor:
    """Random crop (zero-padded by `pad`, padding = `fill`) then horizontal flip, batched, on x's device.

    Draws: crop offsets (B, 2) in [0, 2 pad], then flip coins (B,), from `gen` (a CPU generator: a few
    numbers per batch, the same on every device); the padding and the gather run where `x` is. Pure
    indexing, no arithmetic: a batch gets bitwise the same pixels on every device.
    """
    b, c, h, w = x.shape
    if not (crop or flip) or b == 0:
        return x
    device = x.device
    if crop:
        xp = fill.to(device).view(1, c, 1, 1).expand(b, c, h + 2 * pad, w + 2 * pad).clone()
        xp[:, :, pad : pad + h, pad : pad + w] = x
        off = torch.randint(0, 2 * pad + 1, (b, 2), generator=gen)
    else:
        xp = x
        off = torch.zeros((b, 2), dtype=torch.long)
    flips = torch.rand(b, generator=gen) < 0.5 if flip else None
    off = off.to(device, non_blocking=True)
    ar_h = torch.arange(h, device=device)
    ar_w = torch.arange(w, device=device)
    rows = off[:, 0:1] + ar_h  # (B, H)
    cols = off[:, 1:2] + ar_w  # (B, W)
    if flip:
        flips = flips.to(device, non_blocking=True)
        cols = torch.where(flips[:, None], off[:, 1:2] + (w - 1 - ar_w), cols)
    bi = torch.arange(b, device=device).view(b, 1, 1, 1)
    ci = torch.arange(c, device=device).view(1, c, 1, 1)
    return xp[bi, ci, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)].contiguous()


def _augment_draws(b: int, gen: torch.Generator, crop: bool, flip: bool, pad: int) -> None:
    """Draw from `gen` exactly what `_augment` draws for a batch of `b` (a skipped batch)."""
    if b == 0 or not (crop or flip):
        return
    if crop:
        torch.randint(0, 2 * pad + 1, (b, 2), generator=gen)
    if flip:
        torch.rand(b, generator=gen)


# ----------------------------------------------------------------------------- Data


class _SampleDataset(torch.utils.data.Dataset):
    """Generic path: raw uint8 images, preprocessed one sample at a time."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, pipeline: _Pipeline):
        self.x, self.y, self.pipeline = x, y, pipeline

    def __len__(self):
        return self.x.shape[0]

    def __getitem__(self, i):
        return self.pipeline(self.x[i : i + 1])[0], self.y[i]


class _Split:
    """One split's examples and how its batches reach the training device.

    ``fast``: x is the preprocessed float32 tensor (else raw uint8, preprocessed per sample in a
    DataLoader). ``device``: where batches go (None: the CPU, where they are made). x and y are
    *resident* there when they fit (``placement`` "device"); otherwise batches are gathered on the
    host and copied through pinned memory, asynchronously (``pin``).
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        fast: bool,
        pipeline: _Pipeline,
        device: torch.device | None = None,
        pin: bool = False,
    ):
        self.x, self.y, self.fast, self.pipeline = x, y, fast, pipeline
        self.device, self.pin = device, pin

    def __len__(self):
        return int(self.y.shape[0])

    def deliver(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A host batch onto the training device (pinned, non-blocking); resident batches are there already."""
        if self.pin:
            if not x.is_pinned():
                x, y = x.pin_memory(), y.pin_memory()
            return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        return x, y

    def _indices(self, idx: torch.Tensor) -> torch.Tensor:
        return idx if self.x.device == idx.device else idx.to(self.x.device, non_blocking=True)

    def sequential(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.fast:
            for i in range(0, len(self), batch_size):
                x, y = self.x[i : i + batch_size], self.y[i : i + batch_size]
                yield self.deliver(x, y) if self.pin else (x.clone(), y.clone())
        else:
            loader = torch.utils.data.DataLoader(
                _SampleDataset(self.x, self.y, self.pipeline),
                batch_size=batch_size,
                shuffle=False,
                num_workers=0,
                generator=torch.Generator().manual_seed(0),
                pin_memory=self.pin,
            )
            for x, y in loader:
                yield self.deliver(x, y)

    def shuffled(self, batch_size: int, gen: torch.Generator, skip: int = 0):
        """Batches of a seeded permutation (drawn on the CPU: the same order on every device), as
        gathered (on the host, or where the split is resident; `deliver` moves host batches); the
        first `skip` batches come as empty stand-ins of their size on the fast path (nothing is gathered)."""
        if self.fast:
            perm = torch.randperm(len(self), generator=gen)
            for i in range(0, len(self), batch_size):
                idx = perm[i : i + batch_size]
                if i < skip * batch_size:
                    yield torch.empty((idx.numel(), 0)), None
                    continue
                idx = self._indices(idx)
                yield self.x.index_select(0, idx), self.y.index_select(0, idx)
        else:
            ds = _SampleDataset(self.x, self.y, self.pipeline)
            loader = torch.utils.data.DataLoader(
                ds,
                batch_size=batch_size,
                sampler=torch.utils.data.RandomSampler(ds, generator=gen),
                num_workers=0,
                generator=torch.Generator().manual_seed(0),
                pin_memory=self.pin,
            )
            yield from loader

    def placed(self, device: torch.device, resident: bool) -> _Split:
        """This split for training on `device`: moved there (resident) or delivered through pinned memory."""
        if resident:
            return _Split(self.x.to(device), self.y.to(device), self.fast, self.pipeline, device)
        return _Split(self.x, self.y, self.fast, self.pipeline, device, pin=device.type == "cuda")


def placement(device_type: str, fast: bool, nbytes: int, free_bytes: int | None) -> str:
    """Where an in-memory dataset lives for training on a device of `device_type`.

    "host": on the CPU (CPU training, or a device without pinned memory); "device": the whole
    preprocessed dataset on the accelerator (in-memory path and at most DEVICE_SHARE of its free
    memory: CIFAR-10 takes 0.7 GB as float32), batches gathered and augmented there;
    "pinned": host batches copied through pinned memory (data that does not fit, the per-sample path).
    """
    if device_type == "cpu":
        return "host"
    if fast and (free_bytes is None or nbytes <= DEVICE_SHARE * free_bytes):
        return "device"
    return "pinned" if device_type == "cuda" else "host"


def _free_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return None  # mps: unified memory; the in-memory limit (FAST_LIMIT_BYTES) already applies


@dataclass(frozen=True)
class DataRequest:
    """What `load_data` was asked for besides the dataset and where it is read (checked there): the size
    and channels to adapt to, the held-out validation split, the resolved augmentation (``aug``), the path
    (``fast``: in memory; None: when it fits) and the subsets of the train and test splits."""

    image_size: int | None = None
    channels: int | None = None
    val_size: int | float = 0
    split_seed: int = 0
    aug: str | None = None
    fast: bool | None = None
    min_image_size: int | None = None
    train_size: int | None = None
    test_size: int | None = None


class Data:
    """A loaded dataset, adapted (channels, size, normalization) and split.

    Attributes: ``name``, ``num_classes``, ``input_shape`` (C, H, W), ``len_train``,
    ``len_val``, ``len_test``, ``augment`` (``"crop"``, ``"flip"``, ``"crop+flip"`` or
    None), ``fast`` (in-memory path?), ``mean`` / ``std`` (normalization), ``spec`` (the
    resolved options, a JSON-able dict), ``device`` (where batches are delivered; None: the
    CPU) and ``placement`` ("host", "device": resident there, "pinned": copied per batch).
    """

    def __init__(
        self,
        *,
        spec: dict,
        num_classes: int,
        input_shape: tuple[int, int, int],
        splits: tuple,
        fast: bool,
        pipeline: _Pipeline,
        device: torch.device | None = None,
        placement: str = "host",
    ):
        """`spec`: the resolved options (its ``name`` and ``augment`` are the dataset's); `splits`: (train,
        validation or None, test)."""
        self.name = spec["name"]
        self.num_classes = num_classes
        self.input_shape = input_shape
        self._train, self._val, self._test = splits
        self.augment = augment = spec["augment"]
        self.fast = fast
        self._pipeline = pipeline
        self.mean = pipeline.mean_values
        self.std = pipeline.std_values
        self.spec = spec
        crop, flip = AUGMENTS.get(augment, (False, False))
        self._crop, self._flip = crop, flip
        self._pad = _crop_pad(min(input_shape[1], input_shape[2]))
        self.device, self.placement = device, placement
        self._fill = pipeline.fill() if device is None else pipeline.fill().to(device)

    @property
    def len_train(self) -> int:
        return len(self._train)

    @property
    def len_val(self) -> int:
        return len(self._val) if self._val is not None else 0

    @property
    def len_test(self) -> int:
        return len(self._test)

    def batches_per_epoch(self, batch_size: int) -> int:
        """Optimizer steps in one epoch (the last batch may be smaller)."""
        return -(-self.len_train // check_batch_size(batch_size))

    def train_batches(
        self, batch_size: int, *, seed: int, epoch: int, skip: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled, augmented training batches; the same (seed, epoch) gives the same
        batches bitwise. The last batch may be smaller. ``skip``: start at that batch of
        the epoch, with exactly the batches (and augmentations) it would have had."""
        check_batch_size(batch_size)
        for what, v in (("seed", seed), ("epoch", epoch), ("skip", skip)):
            if isinstance(v, bool) or not isinstance(v, int) or (what == "skip" and v < 0):
                raise SpecError(f"{what} {v!r} is not an int{' >= 0' if what == 'skip' else ''}")
        gen = torch.Generator().manual_seed(shuffle_seed(seed, epoch))
        aug = torch.Generator().manual_seed(aug_seed(seed, epoch))
        return self._train_iter(batch_size, gen, aug, skip)

    def _train_iter(self, batch_size, gen, aug, skip=0):
        for index, (x, y) in enumerate(self._train.shuffled(batch_size, gen, skip)):
            if index < skip:
                if self._crop or self._flip:  # draw what its augmentation would have drawn, so later batches match
                    _augment_draws(x.shape[0], aug, self._crop, self._flip, self._pad)
                continue
            x, y = self._train.deliver(x, y)  # augmented where it trains
            if self._crop or self._flip:
                x = _augment(x, aug, self._crop, self._flip, self._pad, self._fill)
            yield x, y

    def train_eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The training examples as evaluated, not as trained on: sequential, unaugmented batches."""
        check_batch_size(batch_size)
        return self._train.sequential(batch_size)

    def test_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Sequential, unaugmented test batches."""
        check_batch_size(batch_size)
        return self._test.sequential(batch_size)

    def val_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]] | None:
        """Sequential, unaugmented validation batches; None without a validation split."""
        check_batch_size(batch_size)
        if self._val is None:
            return None
        return self._val.sequential(batch_size)

    def __repr__(self) -> str:
        where = "" if self.device is None else f", device={str(self.device)!r}, placement={self.placement!r}"
        return (
            f"Data({self.name!r}, input_shape={self.input_shape}, num_classes={self.num_classes}, "
            f"train={self.len_train}, val={self.len_val}, test={self.len_test}, "
            f"augment={self.augment!r}, fast={self.fast}{where})"
        )

    def on(self, device) -> Data:
        """This dataset delivering its batches on `device` (a torch.device): resident there when it fits
        (`placement`), else through pinned host memory. Same batches, bitwise, on every device."""
        device = torch.device(device)
        if device.type == "cpu":
            return self
        splits = [s for s in (self._train, self._val, self._test) if s is not None]
        nbytes = sum(s.x.numel() * s.x.element_size() + s.y.numel() * s.y.element_size() for s in splits)
        where = placement(device.type, self.fast, nbytes, _free_bytes(device) if self.fast else None)
        resident = where == "device"
        train, test = self._train.placed(device, resident), self._test.placed(device, resident)
        val = self._val.placed(device, resident) if self._val is not None else None
        return Data(
            spec=self.spec,
            num_classes=self.num_classes,
            input_shape=self.input_shape,
            splits=(train, val, test),
            fast=self.fast,
            pipeline=self._pipeline,
            device=device,
            placement=where,
        )


# ----------------------------------------------------------------------------- load_data


def as_raw(name: str, read) -> Raw:
    """A reader's result as a `Raw`: built-in readers return one; a dataset plugin's may return the tensors
    ``(x_train, y_train, x_test, y_test)``: images (N, C, H, W), uint8 or floats in [0, 1], labels int64."""
    if isinstance(read, Raw):
        return read
    if not isinstance(read, (tuple, list)) or len(read) != 4 or not all(isinstance(t, torch.Tensor) for t in read):
        raise SpecError(
            f"dataset {name!r}: its reader returned {type(read).__name__}; allowed: a Raw or four "
            f"tensors (x_train, y_train, x_test, y_test)"
        )
    x_train, y_train, x_test, y_test = read
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if x.dim() != 4 or y.dim() != 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise SpecError(
                f"dataset {name!r}: {split} images {tuple(x.shape)} and labels {tuple(y.shape)}; allowed: "
                f"(N, C, H, W) images and N labels, N > 0"
            )
        if x.dtype != torch.uint8 and not (x.is_floating_point() and bool(((x >= 0) & (x <= 1)).all())):
            raise SpecError(f"dataset {name!r}: {split} images are {x.dtype}; allowed: uint8 or floats in [0, 1]")
        if y.dtype not in (torch.int64, torch.int32, torch.uint8):
            raise SpecError(f"dataset {name!r}: {split} labels are {y.dtype}; allowed: integers")
    if x_train.dtype != x_test.dtype or x_train.shape[1:] != x_test.shape[1:]:
        raise SpecError(
            f"dataset {name!r}: train images {x_train.dtype} {tuple(x_train.shape[1:])} and test images "
            f"{x_test.dtype} {tuple(x_test.shape[1:])} differ"
        )
    scale = 255.0 if x_train.dtype == torch.uint8 else 1.0
    found = DATASETS.plugin(name)
    source = ("plugin", name, found.digest() if found is not None else "")
    return Raw(x_train.contiguous(), y_train.long(), x_test.contiguous(), y_test.long(), scale, source)


def load_in_memory(name: str, root: Path, request: DataRequest, device=None) -> Data:
    """`data.loading.load_data` for a dataset read into memory as uint8 tensors (arguments checked there)."""
    image_size, channels, val_size, split_seed = (
        request.image_size,
        request.channels,
        request.val_size,
        request.split_seed,
    )
    aug, fast, min_image_size, train_size, test_size = (
        request.aug,
        request.fast,
        request.min_image_size,
        request.train_size,
        request.test_size,
    )
    info = DATASETS[name]
    raw = as_raw(name, DATASETS[name](root))

    c_in = raw.x_train.shape[1]
    size_in = (int(raw.x_train.shape[2]), int(raw.x_train.shape[3]))
    c_out = channels or c_in
    size_out = (image_size, image_size) if image_size is not None else size_in
    if image_size is None and min_image_size is not None and min(size_in) < min_image_size:
        size_out = (min_image_size, min_image_size)
    mean, std = info.mean, info.std
    if c_in == 1 and c_out == 3:
        mean, std = mean * 3, std * 3
    elif c_in == 3 and c_out == 1:
        key = ("graystats", raw.source)
        hit = PREP_CACHE.get(key)
        if hit is None:
            stats = _gray_stats_of_rgb(raw, mean)
            hit = (torch.tensor(stats[0]), torch.tensor(stats[1]))
            PREP_CACHE.put(key, hit)
        mean, std = (float(hit[0][0]),), (float(hit[1][0]),)
    pipeline = _Pipeline(raw.scale, c_in, c_out, size_in, size_out, mean, std)

    n_all = raw.x_train.shape[0] + raw.x_test.shape[0]
    nbytes = n_all * c_out * size_out[0] * size_out[1] * 4
    use_fast = fast if fast is not None else nbytes <= FAST_LIMIT_BYTES

    if use_fast:
        key = ("prep", raw.source, c_out, size_out)
        hit = PREP_CACHE.get(key)
        if hit is None:
            hit = (pipeline.apply_chunked(raw.x_train), pipeline.apply_chunked(raw.x_test))
            PREP_CACHE.put(key, hit)
        x_train, x_test = hit
    else:
        x_train, x_test = raw.x_train, raw.x_test
    y_train, y_test = raw.y_train, raw.y_test

    n_train = raw.x_train.shape[0]
    k = val_count(val_size, n_train)
    val = None
    if k:
        perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(split_seed & MASK63))
        val_idx, _ = torch.sort(perm[:k])
        tr_idx, _ = torch.sort(perm[k:])
        val = _Split(x_train.index_select(0, val_idx), y_train.index_select(0, val_idx), use_fast, pipeline)
        train = _Split(x_train.index_select(0, tr_idx), y_train.index_select(0, tr_idx), use_fast, pipeline)
    else:
        train = _Split(x_train, y_train, use_fast, pipeline)
    test = _Split(x_test, y_test, use_fast, pipeline)
    for what, size, available in (
        ("train_size", train_size, train.x.shape[0]),
        ("test_size", test_size, test.x.shape[0]),
    ):
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= available):
            raise SpecError(f"{what} {size!r} is not valid; allowed: null (all) or an int in [1, {available}]")
    if train_size is not None and train_size < train.x.shape[0]:
        perm = torch.randperm(train.x.shape[0], generator=torch.Generator().manual_seed((split_seed + 1) & MASK63))
        keep, _ = torch.sort(perm[:train_size])
        train = _Split(train.x.index_select(0, keep), train.y.index_select(0, keep), use_fast, pipeline)
    if test_size is not None and test_size < test.x.shape[0]:
        test = _Split(test.x[:test_size], test.y[:test_size], use_fast, pipeline)

    spec = {
        "name": name,
        "image_size": size_out[0] if size_out[0] == size_out[1] else list(size_out),
        "channels": c_out,
        "val_size": k,
        "split_seed": split_seed if k else 0,
        "augment": aug,
        "train_size": train_size,
        "test_size": test_size,
        "fingerprint": data_fingerprint(raw),
    }
    data = Data(
        spec=spec,
        num_classes=info.num_classes,
        input_shape=(c_out, *size_out),
        splits=(train, val, test),
        fast=use_fast,
        pipeline=pipeline,
    )
    return data if device is None else data.on(device)


def test_images(data, indices: torch.Tensor) -> torch.Tensor:
    """The preprocessed test images at `indices` (in that order), gathered from the test batches
    (the order every evaluation sees; one pass, nothing else is kept)."""
    wanted = {int(i): position for position, i in enumerate(indices)}
    out = None
    seen = 0
    for x, _y in data.test_batches(256):
        for offset in range(x.shape[0]):
            position = wanted.get(seen + offset)
            if position is not None:
                if out is None:
                    out = torch.empty((len(indices), *x.shape[1:]), dtype=x.dtype)
                out[position] = x[offset]
        seen += x.shape[0]
    return out
