"""mlprune.data: datasets in their real on-disk formats, determinism, fast vs generic path.

Files are written in tmp dirs in the official formats (MNIST IDX, CIFAR pickles) and
read through torchvision's classes / utilities. Nothing is ever downloaded.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlprune import data as D
from mlprune.data import DATASETS, load_data
from mlprune.data import pipeline as DP
from mlprune.data import sampling as DS
from mlprune.errors import SpecError
from mlprune.models import build_model, model_input

IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# ----------------------------------------------------------------------------- writers (official formats)


def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> None:
    """IDX (SN3 Pascal Vincent) file: magic 0x00000800 | ndim, big-endian int32 dims, uint8 data."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    payload = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    payload += arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def make_mnist(
    root: Path, folder: str = "MNIST", n_train: int = 40, n_test: int = 20, gz: bool = False, seed: int = 0
) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        IDX[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        IDX[1]: (np.arange(n_train) % 10).astype(np.uint8),
        IDX[2]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        IDX[3]: (np.arange(n_test) % 10).astype(np.uint8),
    }
    for name, arr in arrays.items():
        write_idx(root / folder / "raw" / name, arr, gz=gz)
    return arrays


def make_cifar(root: Path, hundred: bool = False, per_batch: int = 8, n_test: int = 20, seed: int = 0) -> dict:
    """The official python-version pickles (dicts with data (N, 3072) uint8 and labels)."""
    rng = np.random.default_rng(seed)
    ncls = 100 if hundred else 10
    label_key = "fine_labels" if hundred else "labels"
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True, exist_ok=True)

    def batch(n, tag):
        d = {
            "batch_label": tag,
            label_key: [int(v) for v in rng.integers(0, ncls, n)],
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "filenames": [f"img_{i}.png" for i in range(n)],
        }
        if hundred:
            d["coarse_labels"] = [v // 5 for v in d[label_key]]
        return d

    out = {}
    train_files = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    for f in train_files:
        out[f] = batch(per_batch * (5 if hundred else 1), f"training batch {f}")
    out["test"] = batch(n_test, "testing batch")
    for f, d in out.items():
        with open(folder / (f if hundred or f != "test" else "test_batch"), "wb") as fh:
            pickle.dump(d, fh, protocol=2)
    meta = (
        {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": [f"s{i}" for i in range(20)]}
        if hundred
        else {"label_names": [f"c{i}" for i in range(10)], "num_cases_per_batch": per_batch, "num_vis": 3072}
    )
    with open(folder / ("meta" if hundred else "batches.meta"), "wb") as fh:
        pickle.dump(meta, fh, protocol=2)
    return out


@pytest.fixture(autouse=True)
def _no_download(monkeypatch):
    monkeypatch.delenv("MLPRUNE_DOWNLOAD", raising=False)
    monkeypatch.setenv("MLPRUNE_VERIFY_MD5", "0")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One data dir with every on-disk dataset written (small)."""
    root = tmp_path_factory.mktemp("data")
    make_mnist(root, "MNIST", seed=1)
    make_mnist(root, "FashionMNIST", seed=2, gz=True)
    make_cifar(root, hundred=False, seed=3)
    make_cifar(root, hundred=True, seed=4)
    return root


def batches_equal(a, b) -> bool:
    a, b = list(a), list(b)
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and msg
    return msg


# ----------------------------------------------------------------------------- digits


def test_digits_is_default_and_matches_sklearn():
    from sklearn.datasets import load_digits

    data = load_data()
    assert data.name == "digits" and data.num_classes == 10 and data.input_shape == (1, 8, 8)
    raw = DATASETS["digits"](None)
    ref = load_digits()
    x = torch.cat([raw.x_train, raw.x_test]).reshape(-1, 64).numpy()
    y = torch.cat([raw.y_train, raw.y_test]).numpy()
    order = np.lexsort(np.column_stack([x, y]).T)
    ref_order = np.lexsort(np.column_stack([ref.data, ref.target]).T)
    assert np.array_equal(x[order], ref.data[ref_order]) and np.array_equal(y[order], ref.target[ref_order])
    assert data.len_train + data.len_test == 1797 and data.len_val == 0


def test_digits_split_fixed_and_stratified():
    a = load_data("digits", split_seed=0)
    b = load_data("digits", split_seed=123, val_size=100)
    assert batches_equal(a.test_batches(500), b.test_batches(500))  # split_seed never moves the test split
    y = torch.cat([y for _, y in a.test_batches(1000)])
    counts = torch.bincount(y, minlength=10).float()
    assert abs(len(y) / 1797 - 0.2) < 0.01
    assert ((counts / len(y) - 0.1).abs() < 0.01).all()


def test_digits_scaled_and_normalized():
    data = load_data("digits")
    raw = DATASETS["digits"](None)
    x = torch.cat([x for x, _ in data.test_batches(1000)])
    expect = (raw.x_test.float() / 16 - 0.3054) / 0.3761
    assert torch.equal(x, expect)
    xt = torch.cat([x for x, _ in data.train_batches(2000, seed=0, epoch=0)])
    assert abs(float(xt.mean())) < 0.01 and abs(float(xt.std()) - 1) < 0.01


def test_digits_load_is_fast():
    D.clear_cache()
    t = time.perf_counter()
    data = load_data("digits", image_size=28)
    cold = time.perf_counter() - t
    t = time.perf_counter()
    load_data("digits", image_size=28, val_size=0.1)
    warm = time.perf_counter() - t
    assert data.input_shape == (1, 28, 28)
    assert cold < 1.0 and warm < 0.25, (cold, warm)  # generous: shared 2-core machine


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("augment", [False, "crop+flip"])
def test_same_seed_same_batches_regardless_of_global_rng(augment):
    a = load_data("digits", image_size=16, augment=augment)
    D.clear_cache()
    b = load_data("digits", image_size=16, augment=augment)
    torch.manual_seed(1)
    first = list(a.train_batches(64, seed=7, epoch=3))
    torch.manual_seed(2)
    state = torch.get_rng_state()
    second = list(b.train_batches(64, seed=7, epoch=3))
    assert torch.equal(state, torch.get_rng_state())  # global RNG untouched
    assert batches_equal(first, second)
    assert not batches_equal(first, a.train_batches(64, seed=8, epoch=3))
    assert not batches_equal(first, a.train_batches(64, seed=7, epoch=4))


def test_order_is_seeded_randperm():
    data = load_data("digits")
    ys = torch.cat([y for _, y in data.train_batches(100, seed=5, epoch=2)])
    perm = torch.randperm(data.len_train, generator=torch.Generator().manual_seed(5 * 1_000_003 + 2))
    assert torch.equal(ys, data._train.y[perm])
    sizes = [len(y) for _, y in data.train_batches(100, seed=0, epoch=0)]
    assert sum(sizes) == data.len_train and sizes[-1] == data.len_train % 100  # last batch kept


def test_augmentation_is_crop_and_flip_of_the_image():
    plain = load_data("digits", image_size=16, augment=False)
    aug = load_data("digits", image_size=16, augment="crop+flip")
    assert aug.augment == "crop+flip" and aug._pad == 2
    fill = -0.3054 / 0.3761
    changed = 0
    for (x0, y0), (x1, y1) in zip(plain.train_batches(256, seed=1, epoch=0), aug.train_batches(256, seed=1, epoch=0)):
        assert torch.equal(y0, y1)
        p = aug._pad
        padded = F.pad(x0, (p, p, p, p), value=fill)
        for i in range(len(x0)):
            windows = [padded[i, :, r : r + 16, c : c + 16] for r in range(2 * p + 1) for c in range(2 * p + 1)]
            windows += [w.flip(-1) for w in windows]
            assert any(torch.equal(x1[i], w) for w in windows)
            changed += not torch.equal(x1[i], x0[i])
    assert changed > 0.7 * plain.len_train


def test_augment_defaults_and_values(files):
    assert load_data("digits").augment is None
    assert load_data("digits", augment=True).augment == "crop"
    assert load_data("cifar10", data_dir=files).augment == "crop+flip"
    assert load_data("cifar10", data_dir=files, augment=False).augment is None
    assert load_data("fashion_mnist", data_dir=files, augment=True).augment == "crop+flip"
    assert load_data("mnist", data_dir=files).augment is None
    with pytest.raises(SpecError) as e:
        load_data("digits", augment="rotate")
    assert "rotate" in one_line(e)


@pytest.mark.parametrize(
    "name,kw",
    [
        ("digits", {"image_size": 28, "augment": "crop+flip", "val_size": 100}),
        ("mnist", {"channels": 3, "image_size": 32}),
        ("cifar10", {}),
        ("cifar100", {"channels": 1, "image_size": 20, "augment": "crop"}),
    ],
)
def test_fast_and_generic_paths_give_identical_batches(files, name, kw):
    fast = load_data(name, data_dir=files, fast=True, **kw)
    slow = load_data(name, data_dir=files, fast=False, **kw)
    assert fast.fast and not slow.fast
    assert fast.input_shape == slow.input_shape
    for seed, epoch in [(0, 0), (3, 1)]:
        assert batches_equal(
            fast.train_batches(32, seed=seed, epoch=epoch), slow.train_batches(32, seed=seed, epoch=epoch)
        )
    assert batches_equal(fast.test_batches(7), slow.test_batches(7))
    if fast.len_val:
        assert batches_equal(fast.val_batches(30), slow.val_batches(30))


def test_generic_path_uses_dataloader_with_seeded_random_sampler():
    data = load_data("digits", fast=False)
    ds = DP._SampleDataset(data._train.x, data._train.y, data._pipeline)
    g = torch.Generator().manual_seed(DS.shuffle_seed(4, 1))
    loader = torch.utils.data.DataLoader(ds, batch_size=50, sampler=torch.utils.data.RandomSampler(ds, generator=g))
    assert batches_equal(loader, data.train_batches(50, seed=4, epoch=1))


def test_auto_path_falls_back_to_generic_when_too_big(monkeypatch):
    monkeypatch.setattr(DP, "FAST_LIMIT_BYTES", 1000)
    assert not load_data("digits").fast
    assert load_data("digits", fast=True).fast


# ----------------------------------------------------------------------------- adaptation


def test_grayscale_to_rgb_normalizes_every_channel_with_gray_stats(files):
    gray = load_data("mnist", data_dir=files)
    rgb = load_data("mnist", data_dir=files, channels=3)
    raw = DATASETS["mnist"](files)
    assert rgb.input_shape == (3, 28, 28) and rgb.mean == (0.1307,) * 3 and rgb.std == (0.3081,) * 3
    xg = torch.cat([x for x, _ in gray.test_batches(100)])
    xr = torch.cat([x for x, _ in rgb.test_batches(100)])
    expect = (raw.x_test.float() / 255 - 0.1307) / 0.3081
    assert torch.allclose(xg, expect, atol=1e-6)
    for c in range(3):
        assert torch.equal(xr[:, c : c + 1], xg)


def test_rgb_to_grayscale_uses_luminance_and_measured_std(files):
    data = load_data("cifar10", data_dir=files, channels=1, augment=False)
    raw = DATASETS["cifar10"](files)
    assert data.input_shape == (1, 32, 32)
    gray = (raw.x_train.double() / 255 * torch.tensor([0.299, 0.587, 0.114]).double().view(1, 3, 1, 1)).sum(1)
    assert data.std[0] == pytest.approx(float(gray.std(unbiased=False)), rel=1e-4)
    assert data.mean[0] == pytest.approx(0.299 * 0.4914 + 0.587 * 0.4822 + 0.114 * 0.4465, rel=1e-6)


def test_resize_is_bilinear_on_the_unit_range():
    data = load_data("digits", image_size=28)
    raw = DATASETS["digits"](None)
    x = torch.cat([x for x, _ in data.test_batches(1000)])
    ref = F.interpolate(raw.x_test.float() / 16, size=(28, 28), mode="bilinear", align_corners=False)
    assert torch.allclose(x, (ref - 0.3054) / 0.3761, atol=1e-5)
    assert load_data("digits", image_size=4).input_shape == (1, 4, 4)  # shrinking works too


def test_val_split(files):
    base = load_data("mnist", data_dir=files)
    a = load_data("mnist", data_dir=files, val_size=10, split_seed=1)
    b = load_data("mnist", data_dir=files, val_size=0.25, split_seed=1)
    c = load_data("mnist", data_dir=files, val_size=10, split_seed=2)
    assert (a.len_train, a.len_val, a.len_test) == (30, 10, 20)
    assert b.len_val == 10 and batches_equal(a.val_batches(4), b.val_batches(4))
    assert not batches_equal(a.val_batches(10), c.val_batches(10))
    xs = torch.cat([x for x, _ in a.val_batches(100)] + [x for x, _ in a.train_batches(100, seed=0, epoch=0)])
    full = torch.cat([x for x, _ in base.train_batches(100, seed=0, epoch=0)])
    key = lambda t: sorted(map(tuple, t.reshape(len(t), -1)[:, :20].tolist()))  # noqa: E731
    assert key(xs) == key(full)
    assert base.val_batches(8) is None
    for bad in (-1, 40, 1.0, 1.5, "a", True):
        with pytest.raises(SpecError) as e:
            load_data("mnist", data_dir=files, val_size=bad)
        assert "val_size" in one_line(e)


# ----------------------------------------------------------------------------- on-disk formats


def test_mnist_and_fashion_read_as_torchvisions_classes_read_them(files):
    import torchvision

    for name, cls in (("mnist", torchvision.datasets.MNIST), ("fashion_mnist", torchvision.datasets.FashionMNIST)):
        data = load_data(name, data_dir=files)
        assert (data.len_train, data.len_test, data.input_shape, data.num_classes) == (40, 20, (1, 28, 28), 10)
        raw = DATASETS[name](files)
        for train, x, y in ((True, raw.x_train, raw.y_train), (False, raw.x_test, raw.y_test)):
            ref = cls(str(files), train=train, download=False)
            assert x.dtype == ref.data.dtype and y.dtype == ref.targets.dtype
            assert torch.equal(x[:, 0], ref.data) and torch.equal(y, ref.targets)
    assert (files / "FashionMNIST" / "raw" / IDX[0]).is_file()  # decompressed from .gz


def test_reading_mnist_and_computing_on_it_imports_no_torchvision(files):
    # importing torchvision costs a second of every process: a process that reads MNIST and records a
    # state's environment never imports it, and still records torchvision's version
    import subprocess
    import sys

    import torchvision

    code = (
        "import sys; from mlprune.data import load_data; from mlprune.training.devices import environment_tags; "
        f"import torch; load_data('mnist', data_dir={str(files)!r}); "
        "v = environment_tags(torch.device('cpu'))['mlprune.env.torchvision']; "
        "print(v, 'torchvision' in sys.modules, 'torch._dynamo' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [torchvision.__version__, "False", "False"]


@pytest.mark.parametrize(
    "damage,says",
    [
        (lambda b: b[:500], "holds"),  # truncated
        (lambda b: b + b"\0", "holds"),  # a byte too many
        (lambda b: b"\0\0\x0d\x03" + b[4:], "magic 00000d03"),  # floats, not bytes
        (lambda b: b[:3], "3 bytes"),
    ],
)
def test_damaged_idx_file_is_one_line_naming_it(tmp_path, damage, says):
    make_mnist(tmp_path)
    bad = tmp_path / "MNIST" / "raw" / IDX[0]
    bad.write_bytes(damage(bad.read_bytes()))
    with pytest.raises(SpecError) as e:
        load_data("mnist", data_dir=tmp_path)
    assert str(bad) in one_line(e) and says in one_line(e)


def test_cifar_read_in_official_format(files):
    for name, hundred in (("cifar10", False), ("cifar100", True)):
        data = load_data(name, data_dir=files, augment=False)
        assert data.input_shape == (3, 32, 32) and data.num_classes == (100 if hundred else 10)
        assert (data.len_train, data.len_test) == (40, 20)
        raw = DATASETS[name](files)
        folder = files / ("cifar-100-python" if hundred else "cifar-10-batches-py")
        with open(folder / ("test" if hundred else "test_batch"), "rb") as fh:
            entry = pickle.load(fh, encoding="latin1")
        assert np.array_equal(raw.x_test.numpy().reshape(20, 3072), entry["data"])
        assert raw.y_test.tolist() == entry["fine_labels" if hundred else "labels"]


def test_cifar_tarball_in_data_dir_is_extracted(tmp_path):
    import tarfile

    src = tmp_path / "src"
    make_cifar(src, hundred=True)
    dst = tmp_path / "dst"
    dst.mkdir()
    with tarfile.open(dst / "cifar-100-python.tar.gz", "w:gz") as tf:
        tf.add(src / "cifar-100-python", arcname="cifar-100-python")
    assert load_data("cifar100", data_dir=dst).len_train == 40
    assert (dst / "cifar-100-python" / "train").is_file()


def test_cifar_md5_is_checked_by_default(files, monkeypatch):
    monkeypatch.delenv("MLPRUNE_VERIFY_MD5")
    with pytest.raises(SpecError) as e:
        load_data("cifar10", data_dir=files)
    msg = one_line(e)
    assert "md5" in msg and "data_batch_1" in msg and "MLPRUNE_VERIFY_MD5=0" in msg


def test_data_dir_from_environment(files, monkeypatch):
    monkeypatch.setenv("MLPRUNE_DATA_DIR", str(files))
    assert load_data("mnist").len_train == 40


@pytest.mark.parametrize(
    "name,where,needs",
    [
        ("mnist", "MNIST/raw", "train-images-idx3-ubyte"),
        ("fashion_mnist", "FashionMNIST/raw", "t10k-labels-idx1-ubyte"),
        ("cifar10", "cifar-10-batches-py", "data_batch_1"),
        ("cifar100", "cifar-100-python", "meta"),
    ],
)
def test_missing_files_say_what_to_place_where(tmp_path, name, where, needs):
    with pytest.raises(SpecError) as e:
        load_data(name, data_dir=tmp_path)
    msg = one_line(e)
    assert str(tmp_path / where) in msg and needs in msg and "MLPRUNE_DATA_DIR" in msg


def test_truncated_idx_file_names_the_file(tmp_path):
    make_mnist(tmp_path)
    bad = tmp_path / "MNIST" / "raw" / IDX[2]
    bad.write_bytes(bad.read_bytes()[:500])
    with pytest.raises(SpecError) as e:
        load_data("mnist", data_dir=tmp_path)
    assert str(bad) in one_line(e)


def test_mismatched_idx_counts(tmp_path):
    arrays = make_mnist(tmp_path)
    write_idx(tmp_path / "MNIST" / "raw" / IDX[1], arrays[IDX[1]][:-3])
    with pytest.raises(SpecError) as e:
        load_data("mnist", data_dir=tmp_path)
    assert "40 images" in one_line(e) and "37 labels" in str(e.value)


def test_corrupt_gz_names_the_file(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    make_mnist(tmp_path, gz=True)
    (raw / (IDX[0] + ".gz")).write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(SpecError) as e:
        load_data("mnist", data_dir=tmp_path)
    assert IDX[0] + ".gz" in one_line(e)
    assert not (raw / IDX[0]).exists()


def test_corrupt_cifar_pickle_names_the_file(tmp_path):
    make_cifar(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(SpecError) as e:
        load_data("cifar10", data_dir=tmp_path)
    assert str(bad) in one_line(e)


def test_rewritten_files_are_reread(tmp_path):
    make_mnist(tmp_path, n_train=40)
    assert load_data("mnist", data_dir=tmp_path).len_train == 40
    make_mnist(tmp_path, n_train=30)
    assert load_data("mnist", data_dir=tmp_path).len_train == 30


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kw,word",
    [
        ({"name": "imagenet"}, "imagenet"),
        ({"name": "digits", "channels": 2}, "channels"),
        ({"name": "digits", "image_size": 0}, "image_size"),
        ({"name": "digits", "image_size": 2.5}, "image_size"),
        ({"name": "digits", "split_seed": "x"}, "split_seed"),
        ({"name": "digits", "fast": "yes"}, "fast"),
    ],
)
def test_bad_arguments_are_one_line_spec_errors(kw, word):
    with pytest.raises(SpecError) as e:
        load_data(**kw)
    assert word in one_line(e)


def test_bad_batch_arguments():
    data = load_data("digits")
    for call in (
        lambda: data.train_batches(0, seed=0, epoch=0),
        lambda: data.test_batches(1.5),
        lambda: data.train_batches(8, seed="a", epoch=0),
        lambda: data.val_batches(-1),
    ):
        with pytest.raises(SpecError) as e:
            call()
        one_line(e)


# ----------------------------------------------------------------------------- models x datasets

MODEL_NAMES = ["lenet", "lenet_300_100", "conv2", "conv4", "conv6", "alexnet", "vgg11", "resnet20"]
DATASET_NAMES = ["digits", "mnist", "fashion_mnist", "cifar10", "cifar100"]


def adapted(model: str, name: str, root: Path):
    channels, size = model_input(model)
    native = 8 if name == "digits" else (28 if "mnist" in name else 32)
    image_size = size if size is not None and native < size else None
    return load_data(name, data_dir=root, channels=channels, image_size=image_size)


@pytest.mark.parametrize(
    "model,name", [(m, d) for m in MODEL_NAMES for d in DATASET_NAMES] + [("tv:resnet18", "cifar10")]
)  # one tv: case, on cifar-shaped data
def test_every_model_runs_on_every_dataset(files, model, name):
    data = adapted(model, name, files)
    net = build_model(model, num_classes=data.num_classes, input_shape=data.input_shape, seed=0)
    x, y = next(data.train_batches(4, seed=0, epoch=0))
    assert x.shape[1:] == data.input_shape
    net.eval()
    with torch.no_grad():
        out = net(x)
    assert out.shape == (4, data.num_classes) and torch.isfinite(out).all()


def test_pickled_data_files_cannot_run_code(tmp_path):
    """CIFAR's official format is pickled; our reader resolves numpy arrays only, never a callable."""
    import io
    import os
    import pickle

    import numpy as np

    from mlprune.data import load_data_pickle

    plain = {"data": np.arange(12, dtype=np.uint8).reshape(1, 12), "labels": [3], "batch_label": b"x"}
    assert load_data_pickle(io.BytesIO(pickle.dumps(plain)))["labels"] == [3]

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        load_data_pickle(io.BytesIO(pickle.dumps({"data": Evil()})))
    assert not marker.exists()
