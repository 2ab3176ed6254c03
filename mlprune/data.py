"""Datasets: registry, deterministic loaders, in-memory fast path.

Contract (docs/architecture.md)::

    DATASETS: dict[str, Callable[..., ...]]      # name -> reader(root) -> Raw (uint8 tensors)
    load_data(name, *, image_size=None, channels=None, val_size=0, split_seed=0,
              augment=None, data_dir=None, fast=None) -> Data
    class Data:
        num_classes, input_shape (C, H, W after adaptation), len_train, len_val, len_test
        train_batches(batch_size, *, seed, epoch)  # seeded shuffle + augmentation
        test_batches(batch_size)                   # sequential
        val_batches(batch_size)                    # sequential; None without a val split

Datasets
--------
``digits`` (default; embedded in scikit-learn, no files): 1797 8x8 grayscale images with
values 0..16, scaled to [0, 1]. Train/test split: stratified 80/20 (per class,
``round(0.2 * n_class)`` test images chosen by a permutation from
``numpy.random.default_rng(DIGITS_SPLIT_SEED)``), FIXED: it does not depend on the
experiment seed or on ``split_seed`` (which only selects the validation hold-out). The
CSV that ``sklearn.datasets.load_digits`` reads is read directly: importing
``sklearn.datasets`` costs ~2 s (scipy) and this path is used by every end-to-end test.

``mnist``, ``fashion_mnist``: torchvision's ``MNIST`` / ``FashionMNIST`` classes over
``<data_dir>/MNIST/raw/`` (``FashionMNIST/raw/``) holding ``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``;
``.gz`` versions are decompressed there with torchvision's ``extract_archive``.

``cifar10``, ``cifar100``: ``<data_dir>/cifar-10-batches-py/`` (``data_batch_1..5``,
``test_batch``, ``batches.meta``) and ``<data_dir>/cifar-100-python/`` (``train``,
``test``, ``meta``), the official pickled dicts (a ``<name>-python.tar.gz`` in
``data_dir`` is extracted first). torchvision's ``CIFAR10`` class md5-checks every file
at construction with no way to skip it, so these are read by our own reader: the same
file list and md5 sums (taken from torchvision's class), the same
``pickle.load(f, encoding="latin1")`` of ``data`` / ``labels`` (``fine_labels``), and
torchvision's ``check_integrity`` for the md5 check, which is ON unless
``MLPRUNE_VERIFY_MD5=0`` (for hand-made or subset files, e.g. in tests).

``data_dir`` defaults to ``$MLPRUNE_DATA_DIR``, else ``~/.cache/mlprune/data``. Nothing is
downloaded unless ``MLPRUNE_DOWNLOAD=1`` (then torchvision's own download is used).
Missing files and unreadable / truncated files are one-line :class:`SpecError` s that
name the file(s) and where they go.

Preprocessing (the same function for every sample, on both paths)
-----------------------------------------------------------------
uint8 -> float32 / scale (255; 16 for digits) -> channel conversion (grayscale -> RGB
repeats the channel; RGB -> grayscale is ``0.299 R + 0.587 G + 0.114 B``) -> bilinear
resize to ``image_size`` (``align_corners=False``, antialias when shrinking) ->
per-channel normalization ``(x - mean) / std`` with the dataset's training-set
statistics (``STATS``). Grayscale -> RGB normalizes every one of the three channels
with the grayscale statistics (the seed used a 1-channel Normalize on 3-channel MNIST);
RGB -> grayscale uses the luminance of the RGB means and a std measured on the
converted training images.

Splits, order, augmentation
---------------------------
- ``val_size``: an int (count) or a float in [0, 1) (fraction of the train split) held
  out of the train split by ``torch.randperm(n_train, generator=seeded(split_seed))``;
  both parts keep the original order.
- ``train_batches(batch_size, seed=s, epoch=e)``: the order is
  ``torch.randperm(len_train, generator)`` with the generator seeded
  ``(s * 1_000_003 + e) mod 2**63`` (exactly what ``RandomSampler(generator=...)``
  draws); the last batch may be smaller (no drop_last). Augmentation uses a second
  generator seeded ``(that seed * 6364136223846793005 + 1442695040888963407) mod 2**63``
  and is applied per batch, on tensors, in the same way on both paths, so the same
  (seed, epoch) gives bitwise the same batches and augmentations on every run, on both
  paths, regardless of the global RNG (which is never touched).
- Augmentation ``"crop"``: random crop of the image zero-padded (black, i.e. the
  normalized value of 0) by ``pad = max(1, round(H / 8))`` px (4 at 28-32 px);
  ``"flip"``: horizontal flip with probability 1/2; ``True`` = the dataset's standard
  (cifar10/100, fashion_mnist: ``"crop+flip"``; mnist, digits: ``"crop"``); ``None`` =
  default (on for cifar10/100, off for digits / mnist / fashion_mnist).
- ``test_batches`` / ``val_batches``: sequential, unaugmented.

Fast path vs generic path
-------------------------
``fast=None`` (auto) holds the preprocessed float32 tensors in memory when they take
at most ``FAST_LIMIT_BYTES`` (all built-in datasets at their native size); batches are
``index_select`` s of a seeded permutation, no per-sample Python work. ``fast=False``
(or data too big, e.g. CIFAR resized to 224 px) keeps the raw uint8 images and runs
the per-sample preprocessing in a ``torch.utils.data.DataLoader`` (seeded
``RandomSampler``, ``num_workers=0``). Both give bitwise the same batches (tested).

Preprocessed digits / file contents are cached in-process (keyed by path, size and
mtime of the files read).
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import os
import pickle
import tarfile
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .errors import SpecError, choice_error

__all__ = ["DATASETS", "STATS", "Data", "Raw", "load_data", "default_data_dir",
           "FAST_LIMIT_BYTES", "DIGITS_SPLIT_SEED"]

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2
FAST_LIMIT_BYTES = 2 * 1024 ** 3
_CACHE_LIMIT_BYTES = 1536 * 1024 ** 2

_SHUFFLE_MULT = 1_000_003
_MASK63 = (1 << 63) - 1


class Raw(NamedTuple):
    """A dataset as read from disk: uint8 images (N, C, H, W) and int64 labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    scale: float          # x / scale is in [0, 1]
    source: tuple = ()    # identifies the content read (name, files' path / size / mtime)


@dataclass(frozen=True)
class _Info:
    num_classes: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str          # what augment=True means
    default_augment: bool  # augment=None


# Per-channel training-set statistics of x / scale.
STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "digits": ((0.3054,), (0.3761,)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

_INFO: dict[str, _Info] = {
    "digits": _Info(10, 1, *STATS["digits"], "crop", False),
    "mnist": _Info(10, 1, *STATS["mnist"], "crop", False),
    "fashion_mnist": _Info(10, 1, *STATS["fashion_mnist"], "crop+flip", False),
    "cifar10": _Info(10, 3, *STATS["cifar10"], "crop+flip", True),
    "cifar100": _Info(100, 3, *STATS["cifar100"], "crop+flip", True),
}

_GRAY_WEIGHTS = (0.299, 0.587, 0.114)


class _PlainDataUnpickler(pickle.Unpickler):
    """Reads pickled *data* only: CIFAR's batches are dicts of bytes, str, lists and numpy arrays.

    Unpickling can call any importable function; this one resolves nothing but what
    rebuilds a numpy array, so a crafted file cannot run code (`find_class` refuses).
    """

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                ("numpy", "ndarray"), ("numpy", "dtype"),
                ("_codecs", "encode")}  # protocol-2 pickles rebuild bytes with it: str -> bytes, no effects

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a data file holds only plain data "
                                     f"and numpy arrays")


def load_data_pickle(fh):
    """A pickled dataset batch (e.g. CIFAR's), read without running code from it."""
    return _PlainDataUnpickler(fh, encoding="latin1").load()


def default_data_dir() -> Path:
    """``$MLPRUNE_DATA_DIR``, else ``~/.cache/mlprune/data``."""
    return Path(os.environ.get("MLPRUNE_DATA_DIR") or "~/.cache/mlprune/data").expanduser()


def _download_allowed() -> bool:
    return os.environ.get("MLPRUNE_DOWNLOAD", "") == "1"


def _verify_md5() -> bool:
    return os.environ.get("MLPRUNE_VERIFY_MD5", "1") != "0"


def _stamp(paths) -> tuple:
    out = []
    for p in paths:
        st = os.stat(p)
        out.append((str(p), st.st_size, st.st_mtime_ns))
    return tuple(out)


# ----------------------------------------------------------------------------- in-process cache

class _ByteLRU:
    """A small LRU cache bounded by the bytes of the tensors it holds."""

    def __init__(self, limit: int):
        self.limit = limit
        self._d: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _size(value) -> int:
        return sum(t.numel() * t.element_size() for t in value if isinstance(t, torch.Tensor))

    def get(self, key):
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
        return None

    def put(self, key, value):
        size = self._size(value)
        if size > self.limit:
            return
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while sum(self._size(v) for v in self._d.values()) > self.limit:
                self._d.popitem(last=False)

    def clear(self):
        with self._lock:
            self._d.clear()


_RAW_CACHE = _ByteLRU(_CACHE_LIMIT_BYTES)
_PREP_CACHE = _ByteLRU(_CACHE_LIMIT_BYTES)


def clear_cache() -> None:
    """Forget the cached raw and preprocessed tensors."""
    _RAW_CACHE.clear()
    _PREP_CACHE.clear()


# ----------------------------------------------------------------------------- digits

def _digits_csv() -> Path:
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise SpecError("dataset 'digits' needs scikit-learn (pip install scikit-learn)")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"


def _digits_split(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fixed stratified 80/20 split: (train indices, test indices), each sorted."""
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    test = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = int(round(DIGITS_TEST_FRACTION * len(idx)))
        test.append(rng.permutation(idx)[:k])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(y)), test_idx)
    return train_idx, test_idx


def read_digits(root=None) -> Raw:
    """scikit-learn's digits (the file ``load_digits`` reads), fixed stratified split."""
    path = _digits_csv()
    key = ("digits",)
    hit = _RAW_CACHE.get(key)
    if hit is not None:
        return hit
    try:
        with gzip.open(path, "rb") as f:
            rows = [line.split(b",") for line in f.read().splitlines() if line.strip()]
        arr = np.array(rows, dtype=np.uint8)
    except (OSError, ValueError, EOFError) as exc:
        raise SpecError(f"digits: cannot read {path}: {exc}") from None
    if arr.ndim != 2 or arr.shape[1] != 65:
        raise SpecError(f"digits: {path} is not the 65-column digits CSV")
    x = torch.from_numpy(arr[:, :64].reshape(-1, 1, 8, 8).copy())
    y = torch.from_numpy(arr[:, 64].astype(np.int64))
    tr, te = _digits_split(arr[:, 64])
    tr, te = torch.from_numpy(tr), torch.from_numpy(te)
    raw = Raw(x[tr].contiguous(), y[tr].contiguous(), x[te].contiguous(), y[te].contiguous(), 16.0, key)
    _RAW_CACHE.put(key, raw)
    return raw


# ----------------------------------------------------------------------------- MNIST-like

_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _decompress_gz(gz: Path, dest: Path) -> None:
    """Decompress `gz` to `dest` with torchvision's utility, atomically."""
    from torchvision.datasets.utils import extract_archive

    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        try:
            extract_archive(str(gz), tmp)
        except (OSError, EOFError, gzip.BadGzipFile, RuntimeError, ValueError) as exc:
            raise SpecError(f"cannot decompress {gz}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                            ) from None
        os.replace(Path(tmp) / dest.name, dest)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def _mnist_reader(name: str, cls_name: str) -> Callable[..., Raw]:
    def read(root) -> Raw:
        import torchvision
        from torchvision.datasets.mnist import read_image_file, read_label_file

        cls = getattr(torchvision.datasets, cls_name)
        root = Path(root)
        raw_dir = root / cls_name / "raw"
        for f in _IDX_FILES:
            if not (raw_dir / f).is_file() and (raw_dir / (f + ".gz")).is_file():
                _decompress_gz(raw_dir / (f + ".gz"), raw_dir / f)
        missing = [f for f in _IDX_FILES if not (raw_dir / f).is_file()]
        if missing and _download_allowed():
            try:
                cls(str(root), train=True, download=True)
            except Exception as exc:  # noqa: BLE001
                raise SpecError(f"{name}: download to {raw_dir} failed: {_first_line(exc)}") from None
            missing = [f for f in _IDX_FILES if not (raw_dir / f).is_file()]
        if missing:
            raise SpecError(
                f"{name}: files not found under {raw_dir} (need {', '.join(_IDX_FILES)}; missing "
                f"{', '.join(missing)}; .gz versions are fine); place them there or set MLPRUNE_DATA_DIR")
        paths = [raw_dir / f for f in _IDX_FILES]
        key = (name, _stamp(paths))
        hit = _RAW_CACHE.get(key)
        if hit is not None:
            return hit

        def load(train: bool):
            try:
                ds = cls(str(root), train=train, download=False)
                return ds.data, ds.targets
            except Exception:  # noqa: BLE001 -- find the file to blame, in one line
                pass
            for fname, reader in ((_IDX_FILES[0 if train else 2], read_image_file),
                                  (_IDX_FILES[1 if train else 3], read_label_file)):
                try:
                    reader(str(raw_dir / fname))
                except Exception as exc:  # noqa: BLE001
                    raise SpecError(f"{name}: corrupt or truncated file {raw_dir / fname}: "
                                    f"{_first_line(exc)}") from None
            raise SpecError(f"{name}: cannot load {raw_dir} with torchvision.datasets.{cls_name}")

        parts = []
        for train in (True, False):
            x, y = load(train)
            img, lab = (raw_dir / _IDX_FILES[0 if train else 2], raw_dir / _IDX_FILES[1 if train else 3])
            if x.dtype != torch.uint8 or x.ndim != 3:
                raise SpecError(f"{name}: {img} does not hold uint8 images (N, H, W)")
            if len(x) != len(y):
                raise SpecError(f"{name}: {img} has {len(x)} images but {lab} has {len(y)} labels")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= 10):
                raise SpecError(f"{name}: {lab} has labels outside 0..9")
            parts += [x.unsqueeze(1).contiguous(), y.long().contiguous()]
        raw = Raw(*parts, 255.0, key)
        _RAW_CACHE.put(key, raw)
        return raw

    read.__name__ = f"read_{name}"
    return read


# ----------------------------------------------------------------------------- CIFAR

def _cifar_reader(name: str, cls_name: str, num_classes: int) -> Callable[..., Raw]:
    def read(root) -> Raw:
        import torchvision
        from torchvision.datasets.utils import check_integrity

        cls = getattr(torchvision.datasets, cls_name)
        root = Path(root)
        folder = root / cls.base_folder
        train_list = [tuple(e) for e in cls.train_list]
        test_list = [tuple(e) for e in cls.test_list]
        meta = (cls.meta["filename"], cls.meta["md5"])
        entries = train_list + test_list + [meta]
        names = [f for f, _ in entries]

        def missing_files():
            return [f for f in names if not (folder / f).is_file()]

        missing = missing_files()
        if missing and (root / cls.filename).is_file():
            try:
                with tarfile.open(root / cls.filename, "r:gz") as tf:
                    tf.extractall(root, filter="data")
            except (OSError, EOFError, tarfile.TarError) as exc:
                raise SpecError(f"{name}: cannot extract {root / cls.filename}: {_first_line(exc)}") from None
            missing = missing_files()
        if missing and _download_allowed():
            try:
                cls(str(root), train=True, download=True)
            except Exception as exc:  # noqa: BLE001
                raise SpecError(f"{name}: download to {root} failed: {_first_line(exc)}") from None
            missing = missing_files()
        if missing:
            raise SpecError(
                f"{name}: files not found under {folder} (need {', '.join(names)}; missing "
                f"{', '.join(missing)}); place them there (or {cls.filename} in {root}) or set "
                f"MLPRUNE_DATA_DIR")
        paths = [folder / f for f in names]
        key = (name, _stamp(paths), _verify_md5())
        hit = _RAW_CACHE.get(key)
        if hit is not None:
            return hit
        if _verify_md5():
            for f, md5 in entries:
                if not check_integrity(str(folder / f), md5):
                    raise SpecError(f"{name}: {folder / f} fails its md5 check (corrupt, truncated or not "
                                    f"the official file); replace it, or set MLPRUNE_VERIFY_MD5=0 for "
                                    f"hand-made files")

        def load(files):
            xs, ys = [], []
            for f, _ in files:
                path = folder / f
                try:
                    with open(path, "rb") as fh:
                        entry = load_data_pickle(fh)
                    data = np.asarray(entry["data"], dtype=np.uint8)
                    labels = entry["labels"] if "labels" in entry else entry["fine_labels"]
                    labels = np.asarray(labels, dtype=np.int64)
                    if data.size % 3072 or data.shape[0] != labels.shape[0] or labels.ndim != 1:
                        raise ValueError(f"data {data.shape} / labels {labels.shape} do not form "
                                         f"(N, 3072) images with N labels")
                except Exception as exc:  # noqa: BLE001 -- one line naming the file
                    raise SpecError(f"{name}: corrupt or truncated file {path}: {_first_line(exc)}") from None
                if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
                    raise SpecError(f"{name}: {path} has labels outside 0..{num_classes - 1}")
                xs.append(data.reshape(-1, 3, 32, 32))
                ys.append(labels)
            return (torch.from_numpy(np.concatenate(xs)).contiguous(),
                    torch.from_numpy(np.concatenate(ys)).contiguous())

        try:
            with open(folder / meta[0], "rb") as fh:
                load_data_pickle(fh)[cls.meta["key"]]
        except Exception as exc:  # noqa: BLE001
            raise SpecError(f"{name}: corrupt or truncated file {folder / meta[0]}: {_first_line(exc)}") from None
        raw = Raw(*load(train_list), *load(test_list), 255.0, key)
        _RAW_CACHE.put(key, raw)
        return raw

    read.__name__ = f"read_{name}"
    return read


DATASETS: dict[str, Callable[..., Raw]] = {
    "digits": read_digits,
    "mnist": _mnist_reader("mnist", "MNIST"),
    "fashion_mnist": _mnist_reader("fashion_mnist", "FashionMNIST"),
    "cifar10": _cifar_reader("cifar10", "CIFAR10", 10),
    "cifar100": _cifar_reader("cifar100", "CIFAR100", 100),
}


# ----------------------------------------------------------------------------- preprocessing

class _Pipeline:
    """uint8 (N, C, H, W) -> normalized float32 (N, C', S, S); elementwise per sample, so a
    batch and its samples one by one give bitwise the same values."""

    def __init__(self, scale: float, c_in: int, c_out: int, size_in: tuple[int, int],
                 size_out: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...]):
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
            out[i:i + chunk] = self(x[i:i + chunk])
        return out


def _gray_stats_of_rgb(raw: Raw, mean_rgb) -> tuple[tuple[float], tuple[float]]:
    w = torch.tensor(_GRAY_WEIGHTS, dtype=torch.float64)
    mean = float((w * torch.tensor(mean_rgb, dtype=torch.float64)).sum())
    total, total_sq, n = 0.0, 0.0, 0
    for i in range(0, raw.x_train.shape[0], 4096):
        x = raw.x_train[i:i + 4096].to(torch.float64) / raw.scale
        g = x[:, 0] * w[0] + x[:, 1] * w[1] + x[:, 2] * w[2]
        total += float(g.sum())
        total_sq += float((g * g).sum())
        n += g.numel()
    var = max(total_sq / max(n, 1) - (total / max(n, 1)) ** 2, 1e-12)
    return (mean,), (math.sqrt(var),)


# ----------------------------------------------------------------------------- augmentation

_AUGMENTS = {"crop": (True, False), "flip": (False, True), "crop+flip": (True, True)}


def _crop_pad(size: int) -> int:
    return max(1, int(size / 8 + 0.5))


def _augment(x: torch.Tensor, gen: torch.Generator, crop: bool, flip: bool, pad: int,
             fill: torch.Tensor) -> torch.Tensor:
    """Random crop (zero-padded by `pad`, padding = `fill`) then horizontal flip, batched.

    Draws: crop offsets (B, 2) in [0, 2 pad], then flip coins (B,), from `gen`.
    """
    b, c, h, w = x.shape
    if not (crop or flip) or b == 0:
        return x
    if crop:
        xp = fill.view(1, c, 1, 1).expand(b, c, h + 2 * pad, w + 2 * pad).clone()
        xp[:, :, pad:pad + h, pad:pad + w] = x
        off = torch.randint(0, 2 * pad + 1, (b, 2), generator=gen)
    else:
        xp = x
        off = torch.zeros((b, 2), dtype=torch.long)
    ar_h = torch.arange(h)
    ar_w = torch.arange(w)
    rows = off[:, 0:1] + ar_h                                   # (B, H)
    cols = off[:, 1:2] + ar_w                                   # (B, W)
    if flip:
        flips = torch.rand(b, generator=gen) < 0.5
        cols = torch.where(flips[:, None], off[:, 1:2] + (w - 1 - ar_w), cols)
    bi = torch.arange(b).view(b, 1, 1, 1)
    ci = torch.arange(c).view(1, c, 1, 1)
    return xp[bi, ci, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)].contiguous()


def _shuffle_seed(seed: int, epoch: int) -> int:
    return (int(seed) * _SHUFFLE_MULT + int(epoch)) & _MASK63


def _aug_seed(seed: int, epoch: int) -> int:
    return (_shuffle_seed(seed, epoch) * 6364136223846793005 + 1442695040888963407) & _MASK63


# ----------------------------------------------------------------------------- Data

class _SampleDataset(torch.utils.data.Dataset):
    """Generic path: raw uint8 images, preprocessed one sample at a time."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, pipeline: _Pipeline):
        self.x, self.y, self.pipeline = x, y, pipeline

    def __len__(self):
        return self.x.shape[0]

    def __getitem__(self, i):
        return self.pipeline(self.x[i:i + 1])[0], self.y[i]


class _Split:
    def __init__(self, x: torch.Tensor, y: torch.Tensor, fast: bool, pipeline: _Pipeline):
        # fast: x is the preprocessed float32 tensor; generic: x is raw uint8
        self.x, self.y, self.fast, self.pipeline = x, y, fast, pipeline

    def __len__(self):
        return int(self.y.shape[0])

    def sequential(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.fast:
            for i in range(0, len(self), batch_size):
                yield self.x[i:i + batch_size].clone(), self.y[i:i + batch_size].clone()
        else:
            loader = torch.utils.data.DataLoader(
                _SampleDataset(self.x, self.y, self.pipeline), batch_size=batch_size, shuffle=False,
                num_workers=0, generator=torch.Generator().manual_seed(0))
            yield from loader

    def shuffled(self, batch_size: int, gen: torch.Generator):
        if self.fast:
            perm = torch.randperm(len(self), generator=gen)
            for i in range(0, len(self), batch_size):
                idx = perm[i:i + batch_size]
                yield self.x.index_select(0, idx), self.y.index_select(0, idx)
        else:
            ds = _SampleDataset(self.x, self.y, self.pipeline)
            loader = torch.utils.data.DataLoader(
                ds, batch_size=batch_size, sampler=torch.utils.data.RandomSampler(ds, generator=gen),
                num_workers=0, generator=torch.Generator().manual_seed(0))
            yield from loader


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SpecError(f"batch_size {batch_size!r} is not a positive int")
    return batch_size


class Data:
    """A loaded dataset, adapted (channels, size, normalization) and split.

    Attributes: ``name``, ``num_classes``, ``input_shape`` (C, H, W), ``len_train``,
    ``len_val``, ``len_test``, ``augment`` (``"crop"``, ``"flip"``, ``"crop+flip"`` or
    None), ``fast`` (in-memory path?), ``mean`` / ``std`` (normalization), ``spec`` (the
    resolved options, a JSON-able dict).
    """

    def __init__(self, *, name: str, num_classes: int, input_shape: tuple[int, int, int],
                 train: _Split, val: _Split | None, test: _Split, augment: str | None, fast: bool,
                 pipeline: _Pipeline, spec: dict):
        self.name = name
        self.num_classes = num_classes
        self.input_shape = input_shape
        self._train, self._val, self._test = train, val, test
        self.augment = augment
        self.fast = fast
        self._pipeline = pipeline
        self.mean = pipeline.mean_values
        self.std = pipeline.std_values
        self.spec = spec
        crop, flip = _AUGMENTS.get(augment, (False, False))
        self._crop, self._flip = crop, flip
        self._pad = _crop_pad(min(input_shape[1], input_shape[2]))
        self._fill = pipeline.fill()

    @property
    def len_train(self) -> int:
        return len(self._train)

    @property
    def len_val(self) -> int:
        return len(self._val) if self._val is not None else 0

    @property
    def len_test(self) -> int:
        return len(self._test)

    def train_batches(self, batch_size: int, *, seed: int, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled, augmented training batches; the same (seed, epoch) gives the same
        batches bitwise. The last batch may be smaller."""
        _check_batch_size(batch_size)
        for what, v in (("seed", seed), ("epoch", epoch)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise SpecError(f"{what} {v!r} is not an int")
        gen = torch.Generator().manual_seed(_shuffle_seed(seed, epoch))
        aug = torch.Generator().manual_seed(_aug_seed(seed, epoch))
        return self._train_iter(batch_size, gen, aug)

    def _train_iter(self, batch_size, gen, aug):
        for x, y in self._train.shuffled(batch_size, gen):
            if self._crop or self._flip:
                x = _augment(x, aug, self._crop, self._flip, self._pad, self._fill)
            yield x, y

    def test_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Sequential, unaugmented test batches."""
        _check_batch_size(batch_size)
        return self._test.sequential(batch_size)

    def val_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]] | None:
        """Sequential, unaugmented validation batches; None without a validation split."""
        _check_batch_size(batch_size)
        if self._val is None:
            return None
        return self._val.sequential(batch_size)

    def __repr__(self) -> str:
        return (f"Data({self.name!r}, input_shape={self.input_shape}, num_classes={self.num_classes}, "
                f"train={self.len_train}, val={self.len_val}, test={self.len_test}, "
                f"augment={self.augment!r}, fast={self.fast})")


# ----------------------------------------------------------------------------- load_data

def _resolve_augment(name: str, augment) -> str | None:
    info = _INFO[name]
    if augment is None:
        augment = info.default_augment
    if augment is True:
        return info.augment
    if augment is False or augment == "none":
        return None
    if isinstance(augment, str) and augment in _AUGMENTS:
        return augment
    raise SpecError(f"augment {augment!r} is not valid; allowed: None (dataset default), true, false, "
                    f"'none', {', '.join(repr(a) for a in _AUGMENTS)}")


def _val_count(val_size, n_train: int) -> int:
    if isinstance(val_size, bool):
        raise SpecError(f"val_size {val_size!r} is not valid; allowed: an int in [0, {n_train}) or a float in [0, 1)")
    if isinstance(val_size, int):
        k = val_size
    elif isinstance(val_size, float) and 0.0 <= val_size < 1.0:
        k = int(round(val_size * n_train))
    else:
        k = -1
    if not 0 <= k < n_train:
        raise SpecError(f"val_size {val_size!r} is not valid; allowed: an int in [0, {n_train}) "
                        f"or a float in [0, 1)")
    return k


def load_data(name: str = "digits", *, image_size: int | None = None, channels: int | None = None,
              val_size: int | float = 0, split_seed: int = 0, augment: bool | str | None = None,
              data_dir: str | os.PathLike | None = None, fast: bool | None = None,
              min_image_size: int | None = None, train_size: int | None = None,
              test_size: int | None = None) -> Data:
    """Load dataset `name`, adapted to `image_size` (square, bilinear) and `channels`
    (1 or 3), with `val_size` held out of the train split (seeded by `split_seed`).

    `min_image_size`: upsample only images smaller than this (what a model needs);
    larger ones keep their size. `train_size` / `test_size`: use only that many
    samples (train: a seeded subset of what remains after the validation split,
    test: the first ones), for quick runs of large models.

    `augment`: None = dataset default, True = dataset standard, False / "none", or
    "crop", "flip", "crop+flip". `fast`: None = in-memory path when it fits.
    """
    if not isinstance(name, str) or name not in DATASETS:
        raise choice_error("dataset", name, DATASETS)
    info = _INFO[name]
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                   or image_size < 1):
        raise SpecError(f"image_size {image_size!r} is not valid; allowed: None (native) or a positive int")
    if channels not in (None, 1, 3) or isinstance(channels, bool):
        raise SpecError(f"channels {channels!r} is not valid; allowed: None (native), 1, 3")
    if isinstance(split_seed, bool) or not isinstance(split_seed, int):
        raise SpecError(f"split_seed {split_seed!r} is not an int")
    if fast not in (None, True, False):
        raise SpecError(f"fast {fast!r} is not valid; allowed: None (auto), true, false")
    aug = _resolve_augment(name, augment)

    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    raw = DATASETS[name](root)

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
        hit = _PREP_CACHE.get(key)
        if hit is None:
            stats = _gray_stats_of_rgb(raw, mean)
            hit = (torch.tensor(stats[0]), torch.tensor(stats[1]))
            _PREP_CACHE.put(key, hit)
        mean, std = (float(hit[0][0]),), (float(hit[1][0]),)
    pipeline = _Pipeline(raw.scale, c_in, c_out, size_in, size_out, mean, std)

    n_all = raw.x_train.shape[0] + raw.x_test.shape[0]
    nbytes = n_all * c_out * size_out[0] * size_out[1] * 4
    use_fast = fast if fast is not None else nbytes <= FAST_LIMIT_BYTES

    if use_fast:
        key = ("prep", raw.source, c_out, size_out)
        hit = _PREP_CACHE.get(key)
        if hit is None:
            hit = (pipeline.apply_chunked(raw.x_train), pipeline.apply_chunked(raw.x_test))
            _PREP_CACHE.put(key, hit)
        x_train, x_test = hit
    else:
        x_train, x_test = raw.x_train, raw.x_test
    y_train, y_test = raw.y_train, raw.y_test

    n_train = raw.x_train.shape[0]
    k = _val_count(val_size, n_train)
    val = None
    if k:
        perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(split_seed & _MASK63))
        val_idx, _ = torch.sort(perm[:k])
        tr_idx, _ = torch.sort(perm[k:])
        val = _Split(x_train.index_select(0, val_idx), y_train.index_select(0, val_idx), use_fast, pipeline)
        train = _Split(x_train.index_select(0, tr_idx), y_train.index_select(0, tr_idx), use_fast, pipeline)
    else:
        train = _Split(x_train, y_train, use_fast, pipeline)
    test = _Split(x_test, y_test, use_fast, pipeline)
    for what, size, available in (("train_size", train_size, train.x.shape[0]),
                                  ("test_size", test_size, test.x.shape[0])):
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= available):
            raise SpecError(f"{what} {size!r} is not valid; allowed: null (all) or an int in [1, {available}]")
    if train_size is not None and train_size < train.x.shape[0]:
        perm = torch.randperm(train.x.shape[0], generator=torch.Generator().manual_seed((split_seed + 1) & _MASK63))
        keep, _ = torch.sort(perm[:train_size])
        train = _Split(train.x.index_select(0, keep), train.y.index_select(0, keep), use_fast, pipeline)
    if test_size is not None and test_size < test.x.shape[0]:
        test = _Split(test.x[:test_size], test.y[:test_size], use_fast, pipeline)

    spec = {"name": name, "image_size": size_out[0] if size_out[0] == size_out[1] else list(size_out),
            "channels": c_out, "val_size": k, "split_seed": split_seed if k else 0, "augment": aug,
            "train_size": train_size, "test_size": test_size}
    return Data(name=name, num_classes=info.num_classes, input_shape=(c_out, *size_out), train=train,
                val=val, test=test, augment=aug, fast=use_fast, pipeline=pipeline, spec=spec)
