"""tiny_imagenet and imagenet: real JPEG files in the real folder layouts, read through torchvision.

Expected images are computed here from the files with PIL and torchvision's classic transforms
(Resize, CenterCrop, ToTensor, Normalize), independently of mlprune's per-sample transform code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mlprune.data import DATASETS, load_data
from mlprune.data.folders import resized_crop_box
from mlprune.errors import SpecError

WNIDS = ["n01443537", "n01629819", "n01641577"]


def _jpeg(path, height, width, rng):
    path.parent.mkdir(parents=True, exist_ok=True)
    # smooth images: JPEG keeps them close, and a crop of one is recognisable
    base = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    Image.fromarray(base).resize((width, height), Image.BILINEAR).save(path, "JPEG", quality=95)


def make_tiny_imagenet(root, per_class=4, val_per_class=2, reorganized_val=False, seed=0):
    """tiny-imagenet-200 as distributed: train/<wnid>/images/<wnid>_<k>.JPEG (+ boxes file), val/images +
    val_annotations.txt (or val/<wnid>/ folders), wnids.txt, words.txt, test/images without labels."""
    rng = np.random.default_rng(seed)
    folder = root / "tiny-imagenet-200"
    lines = []
    for c, wnid in enumerate(WNIDS):
        for k in range(per_class):
            _jpeg(folder / "train" / wnid / "images" / f"{wnid}_{k}.JPEG", 64, 64, rng)
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t63\t63\n")
        for k in range(val_per_class):
            name = f"val_{c * val_per_class + k}.JPEG"
            if reorganized_val:
                _jpeg(folder / "val" / wnid / name, 64, 64, rng)
            else:
                _jpeg(folder / "val" / "images" / name, 64, 64, rng)
                lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    if not reorganized_val:
        (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    _jpeg(folder / "test" / "images" / "test_0.JPEG", 64, 64, rng)
    (folder / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (folder / "words.txt").write_text("\n".join(f"{w}\tthing {i}" for i, w in enumerate(WNIDS)) + "\n")
    return folder


def make_imagenet(root, per_class=3, val_per_class=2, seed=1):
    """imagenet/train/<wnid>/<wnid>_<k>.JPEG and imagenet/val/<wnid>/ILSVRC2012_val_<k>.JPEG, mixed sizes."""
    rng = np.random.default_rng(seed)
    sizes = [(300, 400), (375, 500), (256, 256), (500, 333)]
    folder = root / "imagenet"
    n = 0
    for wnid in WNIDS:
        for k in range(per_class):
            h, w = sizes[(k + n) % len(sizes)]
            _jpeg(folder / "train" / wnid / f"{wnid}_{k}.JPEG", h, w, rng)
        for _ in range(val_per_class):
            n += 1
            h, w = sizes[n % len(sizes)]
            _jpeg(folder / "val" / wnid / f"ILSVRC2012_val_{n:08d}.JPEG", h, w, rng)
    return folder


def normalized(image: Image.Image, mean, std) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def test_tiny_imagenet_reads_the_distributed_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("MLPRUNE_DATA_WORKERS", "0")
    folder = make_tiny_imagenet(tmp_path)
    data = load_data("tiny_imagenet", data_dir=tmp_path)
    info = DATASETS["tiny_imagenet"]
    assert (data.num_classes, data.input_shape, data.len_train, data.len_test) == (200, (3, 64, 64), 12, 6)
    assert data.augment == "crop+flip" and not data.fast
    # the test split is val, labelled by val_annotations.txt, images as they are (normalized)
    x, y = next(iter(data.test_batches(64)))
    annotations = [line.split("\t") for line in (folder / "val" / "val_annotations.txt").read_text().splitlines()]
    expected = sorted((name, WNIDS.index(wnid)) for name, wnid, *_ in annotations)
    assert y.tolist() == [label for _, label in expected]
    for i, (name, _) in enumerate(expected):
        want = normalized(Image.open(folder / "val" / "images" / name), info.mean, info.std)
        assert torch.allclose(x[i], want, atol=1e-6), name
    # the reorganized val layout (val/<wnid>/) gives the same labels
    other = tmp_path / "reorganized"
    make_tiny_imagenet(other, reorganized_val=True)
    assert [y for _, y in load_data("tiny_imagenet", data_dir=other).test_batches(64)][0].tolist() == [0, 0, 1, 1, 2, 2]


def test_tiny_imagenet_training_batches_are_seeded_padded_crops_and_flips(tmp_path, monkeypatch):
    monkeypatch.setenv("MLPRUNE_DATA_WORKERS", "0")
    folder = make_tiny_imagenet(tmp_path)
    data = load_data("tiny_imagenet", data_dir=tmp_path)
    info = DATASETS["tiny_imagenet"]
    first = [(x.clone(), y.clone()) for x, y in data.train_batches(5, seed=7, epoch=2)]
    again = list(data.train_batches(5, seed=7, epoch=2))
    assert [len(y) for _, y in first] == [5, 5, 2]
    for (x1, y1), (x2, y2) in zip(first, again):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    skipped = list(data.train_batches(5, seed=7, epoch=2, skip=1))
    assert len(skipped) == 2 and all(torch.equal(a[0], b[0]) for a, b in zip(first[1:], skipped))
    other_epoch = torch.cat([x for x, _ in data.train_batches(5, seed=7, epoch=3)])
    assert not torch.equal(other_epoch, torch.cat([x for x, _ in first]))
    # the same batches from 2 loader processes: randomness is per sample, not per process
    monkeypatch.setenv("MLPRUNE_DATA_WORKERS", "2")
    for (x1, _), (x2, _) in zip(first, data.train_batches(5, seed=7, epoch=2)):
        assert torch.equal(x1, x2)
    # every sample is one of the 9x9 crops of its image padded by 4 black px, maybe flipped
    images = {}
    for wnid in WNIDS:
        for path in sorted((folder / "train" / wnid / "images").iterdir()):
            padded = torch.nn.functional.pad(
                torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1), (4, 4, 4, 4)
            )
            images.setdefault(WNIDS.index(wnid), []).append(padded)
    flipped = 0
    for x, y in first:
        for sample, label in zip(x, y.tolist()):
            candidates = []
            for padded in images[label]:
                for top in range(9):
                    for left in range(9):
                        crop = padded[:, top : top + 64, left : left + 64].float() / 255.0
                        crop = (crop - torch.tensor(info.mean).view(3, 1, 1)) / torch.tensor(info.std).view(3, 1, 1)
                        candidates += [(crop, False), (crop.flip(-1), True)]
            match = [was_flipped for crop, was_flipped in candidates if torch.allclose(crop, sample, atol=1e-6)]
            assert match, "a training sample is no padded crop of an image of its class"
            flipped += match[0]
    assert 0 < flipped < 12  # coins were thrown


def test_imagenet_uses_the_usual_train_and_val_transforms(tmp_path, monkeypatch):
    from torchvision import transforms

    monkeypatch.setenv("MLPRUNE_DATA_WORKERS", "0")
    folder = make_imagenet(tmp_path)
    data = load_data("imagenet", data_dir=tmp_path)
    info = DATASETS["imagenet"]
    assert (data.num_classes, data.input_shape, data.len_train, data.len_test) == (1000, (3, 224, 224), 9, 6)
    usual_val = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(info.mean, info.std),
        ]
    )
    files = sorted((p, WNIDS.index(p.parent.name)) for p in (folder / "val").rglob("*.JPEG"))
    x, y = next(iter(data.test_batches(64)))
    assert y.tolist() == [label for _, label in files]
    for i, (path, _) in enumerate(files):
        assert torch.allclose(x[i], usual_val(Image.open(path).convert("RGB")), atol=1e-5), path.name
    batches = list(data.train_batches(4, seed=0, epoch=0))
    assert [tuple(b.shape) for b, _ in batches] == [(4, 3, 224, 224), (4, 3, 224, 224), (1, 3, 224, 224)]
    train_files = sorted((folder / "train").rglob("*.JPEG"))
    evaluated = [usual_val(Image.open(p).convert("RGB")) for p in train_files]
    assert not any(torch.allclose(b, e, atol=1e-3) for x, _ in batches for b in x for e in evaluated)  # random crops
    # image_size scales both: train crops to it, val resizes to 256/224 of it and center-crops
    small = load_data("imagenet", data_dir=tmp_path, image_size=32, test_size=2)
    assert small.input_shape == (3, 32, 32) and next(iter(small.test_batches(8)))[0].shape == (2, 3, 32, 32)
    # without augmentation the training images are the evaluation ones
    plain = load_data("imagenet", data_dir=tmp_path, augment=False)
    seen = torch.cat([x for x, _ in plain.train_batches(4, seed=0, epoch=0)])
    assert all(any(torch.allclose(s, e, atol=1e-5) for e in evaluated) for s in seen)


def test_random_resized_crop_boxes_follow_the_recipe():
    gen = torch.Generator().manual_seed(0)
    for height, width in [(375, 500), (224, 224), (500, 300)]:
        for _ in range(200):
            top, left, h, w = resized_crop_box(height, width, gen)
            assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
            assert 0.08 * height * width * 0.9 <= h * w <= height * width
            assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    # no box of the allowed shapes fits a 1000x10 strip: the central box, aspect clamped to 3/4
    assert resized_crop_box(1000, 10, gen) == ((1000 - 13) // 2, 0, 13, 10)


def test_missing_folders_are_one_line_errors_naming_the_layout(tmp_path):
    for name, fragment in (
        ("imagenet", "imagenet/train/<wnid>/*.JPEG"),
        ("tiny_imagenet", "tiny-imagenet-200/train/<wnid>/images/*.JPEG"),
    ):
        with pytest.raises(SpecError) as error:
            load_data(name, data_dir=tmp_path)
        assert "\n" not in str(error.value) and fragment in str(error.value) and "not found" in str(error.value)
    make_imagenet(tmp_path)
    with pytest.raises(SpecError, match="channels 1 is not available"):
        load_data("imagenet", data_dir=tmp_path, channels=1)


def test_a_network_trains_on_tiny_imagenet_and_imagenet_files(experiment, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from mlprune import Recipe

    monkeypatch.setenv("MLPRUNE_DATA_WORKERS", "0")
    make_tiny_imagenet(tmp_path)
    make_imagenet(tmp_path)
    tiny = experiment.init(model="resnet20", dataset="tiny_imagenet", seed=0, data_dir=str(tmp_path)).apply(
        Recipe.train(steps="3it", lr=0.05, batch_size=4)
    )
    big = experiment.init(
        model="lenet_300_100", dataset="imagenet", seed=0, image_size=32, data_dir=str(tmp_path)
    ).apply(Recipe.train(steps="2it", lr=0.05, batch_size=4))
    client = MlflowClient()
    for state in (tiny, big):
        metrics = client.get_run(state.run_id).data.metrics
        assert metrics["iterations"] in (2, 3) and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert tiny.weights["fc.weight"].shape == (200, 64) and big.weights["classifier.4.weight"].shape == (1000, 100)
