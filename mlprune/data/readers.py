"""Dataset readers: files (or scikit-learn's embedded digits) -> uint8 tensors (`Raw`).

One reader per entry of `mlprune.data.DATASETS`; see the package docstring for the
file layouts, md5 checks and errors. Nothing is unpickled except through
`load_data_pickle`, which resolves numpy arrays only.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
import tarfile
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..errors import SpecError

__all__ = [
    "Raw",
    "Folders",
    "read_digits",
    "read_idx",
    "read_mnist",
    "read_fashion_mnist",
    "read_cifar10",
    "read_cifar100",
    "read_tiny_imagenet",
    "read_imagenet",
    "load_data_pickle",
    "clear_cache",
]

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2
_CACHE_LIMIT_BYTES = 1536 * 1024**2


class Raw(NamedTuple):
    """A dataset as read from disk: uint8 images (N, C, H, W) and int64 labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    scale: float  # x / scale is in [0, 1]
    source: tuple = ()  # identifies the content read (name, files' path / size / mtime)


class Folders(NamedTuple):
    """An image-folder dataset as found on disk: torchvision ``ImageFolder`` s (``samples``: (path,
    class index) pairs, ``loader``, ``classes``) of the train and test splits; decoded per sample
    (`data.folders`)."""

    train: object
    test: object
    source: tuple = ()


class _PlainDataUnpickler(pickle.Unpickler):
    """Reads pickled *data* only: CIFAR's batches are dicts of bytes, str, lists and numpy arrays.

    Unpickling can call any importable function; this one resolves nothing but what
    rebuilds a numpy array, so a crafted file cannot run code (`find_class` refuses).
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }  # protocol-2 pickles rebuild bytes with it: str -> bytes, no effects

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a data file holds only plain data and numpy arrays"
        )


def load_data_pickle(fh):
    """A pickled dataset batch (e.g. CIFAR's), read without running code from it."""
    return _PlainDataUnpickler(fh, encoding="latin1").load()


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
PREP_CACHE = _ByteLRU(_CACHE_LIMIT_BYTES)


_FOLDER_CACHE: dict = {}  # (dataset, root, stamps) -> Folders: listing ImageNet's 1.3 M files takes seconds


def clear_cache() -> None:
    """Forget the cached raw and preprocessed tensors and the image-folder listings."""
    _RAW_CACHE.clear()
    PREP_CACHE.clear()
    _FOLDER_CACHE.clear()


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

_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _decompress_gz(gz: Path, dest: Path) -> None:
    """Decompress `gz` to `dest`, atomically (a failure leaves no `dest`)."""
    import shutil
    import zlib

    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        try:
            with gzip.open(gz, "rb") as src, open(Path(tmp) / dest.name, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        except (OSError, EOFError, zlib.error) as exc:
            raise SpecError(f"cannot decompress {gz}: {_first_line(exc)}") from None
        os.replace(Path(tmp) / dest.name, dest)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def read_idx(path: Path, ndim: int) -> torch.Tensor:
    """A uint8 IDX file (MNIST's format: magic 0x00000800 + ndim, ndim big-endian int32 sizes, the
    bytes) as a tensor of that shape: the tensor torchvision's ``read_image_file`` (ndim 3) or
    ``read_label_file`` (ndim 1, before its ``.long()``) returns for it (tests/test_data.py checks it).
    Read here because importing torchvision costs a second per process; a file of another type or
    shape, or of the wrong length, is a SpecError naming it."""
    data = Path(path).read_bytes()
    head = 4 * (ndim + 1)
    if len(data) < head or data[:4] != bytes((0, 0, 8, ndim)):
        found = data[:4].hex() if len(data) >= 4 else f"{len(data)} bytes"
        raise SpecError(
            f"corrupt or truncated file {path}: not a uint8 IDX file of {ndim} dimension(s) (magic "
            f"{found}, allowed 00000800{ndim:02x})"
        )
    shape = [int.from_bytes(data[4 * (i + 1) : 4 * (i + 2)], "big") for i in range(ndim)]
    if len(data) - head != int(np.prod(shape)):
        raise SpecError(
            f"corrupt or truncated file {path}: its header says {' x '.join(map(str, shape))} bytes of data "
            f"({int(np.prod(shape))}), it holds {len(data) - head}"
        )
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=head).view(*shape)


def _mnist_reader(name: str, cls_name: str) -> Callable[..., Raw]:
    def read(root) -> Raw:
        root = Path(root)
        raw_dir = root / cls_name / "raw"
        for f in _IDX_FILES:
            if not (raw_dir / f).is_file() and (raw_dir / (f + ".gz")).is_file():
                _decompress_gz(raw_dir / (f + ".gz"), raw_dir / f)
        missing = [f for f in _IDX_FILES if not (raw_dir / f).is_file()]
        if missing and _download_allowed():
            import torchvision

            try:
                getattr(torchvision.datasets, cls_name)(str(root), train=True, download=True)
            except Exception as exc:  # noqa: BLE001
                raise SpecError(f"{name}: download to {raw_dir} failed: {_first_line(exc)}") from None
            missing = [f for f in _IDX_FILES if not (raw_dir / f).is_file()]
        if missing:
            raise SpecError(
                f"{name}: files not found under {raw_dir} (need {', '.join(_IDX_FILES)}; missing "
                f"{', '.join(missing)}; .gz versions are fine): put them there (the files torchvision's "
                f"{cls_name} downloads), give data_dir / MLPRUNE_DATA_DIR, or set MLPRUNE_DOWNLOAD=1 to let "
                f"torchvision download them"
            )
        paths = [raw_dir / f for f in _IDX_FILES]
        key = (name, _stamp(paths))
        hit = _RAW_CACHE.get(key)
        if hit is not None:
            return hit
        parts = []
        for images, labels in (paths[:2], paths[2:]):
            x, y = read_idx(images, 3), read_idx(labels, 1)
            if len(x) != len(y):
                raise SpecError(f"{name}: {images} has {len(x)} images but {labels} has {len(y)} labels")
            if len(y) and int(y.max()) >= 10:
                raise SpecError(f"{name}: {labels} has labels outside 0..9")
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
                f"{', '.join(missing)}): put them there (or {cls.filename} from {cls.url} in {root}), give "
                f"data_dir / MLPRUNE_DATA_DIR, or set MLPRUNE_DOWNLOAD=1 to let torchvision download it"
            )
        paths = [folder / f for f in names]
        key = (name, _stamp(paths), _verify_md5())
        hit = _RAW_CACHE.get(key)
        if hit is not None:
            return hit
        if _verify_md5():
            for f, md5 in entries:
                if not check_integrity(str(folder / f), md5):
                    raise SpecError(
                        f"{name}: {folder / f} fails its md5 check (corrupt, truncated or not "
                        f"the official file); replace it, or set MLPRUNE_VERIFY_MD5=0 for "
                        f"hand-made files"
                    )

        try:
            with open(folder / meta[0], "rb") as fh:
                load_data_pickle(fh)[cls.meta["key"]]
        except Exception as exc:  # noqa: BLE001
            raise SpecError(f"{name}: corrupt or truncated file {folder / meta[0]}: {_first_line(exc)}") from None
        raw = Raw(
            *_cifar_arrays(name, folder, train_list, num_classes),
            *_cifar_arrays(name, folder, test_list, num_classes),
            255.0,
            key,
        )
        _RAW_CACHE.put(key, raw)
        return raw

    read.__name__ = f"read_{name}"
    return read


def _cifar_arrays(name: str, folder: Path, files: list, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The uint8 images (N, 3, 32, 32) and int64 labels of CIFAR batch `files` ((file name, md5) pairs)."""
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
                raise ValueError(
                    f"data {data.shape} / labels {labels.shape} do not form (N, 3072) images with N labels"
                )
        except Exception as exc:  # noqa: BLE001 -- one line naming the file
            raise SpecError(f"{name}: corrupt or truncated file {path}: {_first_line(exc)}") from None
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise SpecError(f"{name}: {path} has labels outside 0..{num_classes - 1}")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    return (torch.from_numpy(np.concatenate(xs)).contiguous(), torch.from_numpy(np.concatenate(ys)).contiguous())


read_mnist = _mnist_reader("mnist", "MNIST")
read_fashion_mnist = _mnist_reader("fashion_mnist", "FashionMNIST")
read_cifar10 = _cifar_reader("cifar10", "CIFAR10", 10)
read_cifar100 = _cifar_reader("cifar100", "CIFAR100", 100)


# ----------------------------------------------------------------------------- image folders (ImageNet-like)


def _image_folder(directory: Path, classes: list[str] | None = None, allow_empty: bool = False):
    """torchvision's ImageFolder over `directory` (its class folders searched recursively); with `classes`,
    the class indices of another split (a class folder it lacks is allowed, one it adds is an error)."""
    from torchvision.datasets import ImageFolder

    if classes is None:
        return ImageFolder(str(directory), allow_empty=allow_empty)
    known = {c: i for i, c in enumerate(classes)}
    extra = sorted(e.name for e in os.scandir(directory) if e.is_dir() and e.name not in known)
    if extra:
        raise SpecError(f"{directory}: class folder {extra[0]!r} is not a class of the train split")

    class _SameClasses(ImageFolder):
        def find_classes(self, _directory):
            present = sorted(c for c in classes if (directory / c).is_dir())
            return present, {c: known[c] for c in present}

    return _SameClasses(str(directory), allow_empty=True)


class _AnnotatedFolder:
    """Tiny ImageNet's official val split: flat images/ and val_annotations.txt (file, wnid, box);
    ImageFolder's attributes, torchvision's default image loader."""

    def __init__(self, folder: Path, classes: list[str]):
        from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader

        known = {c: i for i, c in enumerate(classes)}
        self.classes, self.class_to_idx, self.loader = list(classes), known, default_loader
        self.samples = []
        annotations = folder / "val_annotations.txt"
        for number, line in enumerate(annotations.read_text().splitlines(), 1):
            parts = line.split("\t")
            if not line.strip():
                continue
            if len(parts) < 2 or parts[1] not in known:
                raise SpecError(
                    f"{annotations} line {number}: expected '<file>\\t<wnid of the train split>...', got {line[:80]!r}"
                )
            path = folder / "images" / parts[0]
            if path.suffix.lower() not in IMG_EXTENSIONS or not path.is_file():
                raise SpecError(f"{annotations} line {number}: image {path} not found")
            self.samples.append((str(path), known[parts[1]]))
        self.samples.sort()
        self.targets = [t for _, t in self.samples]


def _folder_stamp(paths) -> tuple:
    return tuple((str(p), os.stat(p).st_mtime_ns) for p in paths if p.exists())


def _folders(name: str, train_dir: Path, test_dir: Path, layout: str, num_classes: int, make_test) -> Folders:
    missing = [str(d) for d in (train_dir, test_dir) if not d.is_dir()]
    if missing:
        raise SpecError(f"{name}: folder {missing[0]} not found; expected {layout} (set data_dir or MLPRUNE_DATA_DIR)")
    key = (name, str(train_dir), _folder_stamp([train_dir, test_dir, *sorted(train_dir.iterdir())[:1]]))
    hit = _FOLDER_CACHE.get(key)
    if hit is not None:
        return hit
    try:
        train = _image_folder(train_dir)
    except (FileNotFoundError, OSError) as exc:
        raise SpecError(f"{name}: {train_dir}: {_first_line(exc)}; expected {layout}") from None
    if len(train.classes) > num_classes:
        raise SpecError(f"{name}: {train_dir} has {len(train.classes)} class folders; {name} has {num_classes}")
    test = make_test(train.classes)
    if not test.samples:
        raise SpecError(f"{name}: no images in {test_dir}; expected {layout}")
    found = Folders(train, test, key)
    _FOLDER_CACHE[key] = found
    return found


def read_tiny_imagenet(root) -> Folders:
    """Tiny ImageNet (tiny-imagenet-200): train/<wnid>/images/*.JPEG; val as distributed (images/ and
    val_annotations.txt) or reorganized into val/<wnid>/ folders."""
    folder = Path(root) / "tiny-imagenet-200"
    layout = (
        f"{folder}/train/<wnid>/images/*.JPEG and {folder}/val/images/*.JPEG with "
        f"{folder}/val/val_annotations.txt (or {folder}/val/<wnid>/*.JPEG)"
    )
    val_dir = folder / "val"

    def make_test(classes):
        if (val_dir / "val_annotations.txt").is_file() and (val_dir / "images").is_dir():
            return _AnnotatedFolder(val_dir, classes)
        return _image_folder(val_dir, classes)

    return _folders("tiny_imagenet", folder / "train", val_dir, layout, 200, make_test)


def read_imagenet(root) -> Folders:
    """ImageNet (ILSVRC 2012): imagenet/train/<wnid>/*.JPEG and imagenet/val/<wnid>/*.JPEG."""
    folder = Path(root) / "imagenet"
    layout = f"{folder}/train/<wnid>/*.JPEG and {folder}/val/<wnid>/*.JPEG"
    return _folders(
        "imagenet",
        folder / "train",
        folder / "val",
        layout,
        1000,
        lambda classes: _image_folder(folder / "val", classes),
    )
