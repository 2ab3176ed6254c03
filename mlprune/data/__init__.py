"""Datasets: registry, deterministic loaders, in-memory fast path.

Contract (docs/architecture.md)::

    DATASETS: Registry[Dataset]                  # name -> entry; entry(root) reads it -> Raw (uint8 tensors)
    load_data(name, *, data_dir=None, device=None, image_size=None, channels=None, val_size=0,
              split_seed=0, augment=None, fast=None, min_image_size=None, train_size=None,
              test_size=None) -> Data
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

``mnist``, ``fashion_mnist``: ``<data_dir>/MNIST/raw/`` (``FashionMNIST/raw/``), the files
torchvision's ``MNIST`` / ``FashionMNIST`` classes read: ``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``;
``.gz`` versions are decompressed there. The IDX files are read by our own reader
(`readers.read_idx`: importing torchvision costs a second of every process that computes a
state), which gives the tensors torchvision's classes give (tests/test_data.py checks it).

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

Image folders (too big for memory)
----------------------------------
``tiny_imagenet``: ``<data_dir>/tiny-imagenet-200/`` as distributed: ``train/<wnid>/images/*.JPEG``
and ``val/images/*.JPEG`` with ``val/val_annotations.txt`` (file, wnid, box), or ``val/<wnid>/``
folders (the common reorganized layout). Test split = ``val`` (the official test images have
no labels). 200 classes, 64 px; standard augmentation a random 64 px crop of the image padded
by 4 px, and a horizontal flip.

``imagenet``: ``<data_dir>/imagenet/train/<wnid>/*.JPEG`` and ``<data_dir>/imagenet/val/<wnid>/*.JPEG``,
the layout torchvision's ``ImageNet`` class prepares from the official archives (and the usual
``valprep.sh`` one). Test split = ``val``. 1000 classes, 224 px; train: random-resized crop and
flip; evaluation: resize 256, center crop 224.

Both are read with torchvision's ``ImageFolder`` (classes = the sorted ``train`` class folders;
``val`` uses the same class indices), decoded per sample in a ``DataLoader``
(``MLPRUNE_DATA_WORKERS`` processes) with seeded per-sample transforms: ``data.folders``.
``val_size``, ``train_size``, ``test_size``, ``split_seed``, ``augment`` and ``image_size`` mean
what they mean for the other datasets; ``channels`` is 3.

Layout: this module (no torch) is the catalog: one ``Dataset`` entry per dataset
(reader, classes, channels, normalization statistics, standard augmentation).
``data.readers`` reads files into uint8 tensors; ``data.pipeline`` preprocesses,
splits, shuffles and augments them (``load_data``, ``Data``). Adding a dataset is one
``DATASETS.add(Dataset(...))`` entry and its reader.
"""

from __future__ import annotations

from .catalog import DATASETS, STATS, Dataset, default_data_dir

__all__ = ["DATASETS", "Dataset", "STATS", "default_data_dir", "load_data", "Data", "Raw"]

_READERS = ("Raw", "clear_cache", "load_data_pickle", "read_digits", "DIGITS_SPLIT_SEED")
_PIPELINE = ("Data", "FAST_LIMIT_BYTES")


def __getattr__(name):
    # the readers and the pipeline need torch: loaded on first use
    if name in _READERS:
        from . import readers

        return getattr(readers, name)
    if name in _PIPELINE:
        from . import pipeline

        return getattr(pipeline, name)
    if name == "load_data":
        from .loading import load_data

        return load_data
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
