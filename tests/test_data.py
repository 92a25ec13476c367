"""Tests for cifarlib.data: synthetic data, selection, batched augmentation, the loader, sources,
the decoded-tensor cache, error messages and the CLI. Real-data tests are marked ``realdata``."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import struct
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cifarlib import data as D
from cifarlib.data import command as data_command
from cifarlib import paths
from cifarlib.cli import main as cli_main
from cifarlib.errors import CifarlibError


@pytest.fixture(scope="module")
def small():
    return D.synthetic(n_train=600, n_test=200, num_classes=5, channels=3, size=12, seed=3)


# ----------------------------------------------------------------------------- synthetic

def test_synthetic_shapes_balance_and_determinism():
    ds = D.synthetic(n_train=103, n_test=31, num_classes=4, channels=2, size=10, seed=1)
    assert ds.train.images.shape == (103, 2, 10, 10) and ds.train.images.dtype == torch.uint8
    assert ds.test.images.shape == (31, 2, 10, 10) and ds.test.labels.dtype == torch.int64
    counts = torch.bincount(ds.train.labels, minlength=4)
    assert counts.max() - counts.min() <= 1
    assert ds.classes == ["class0", "class1", "class2", "class3"]
    again = D.synthetic(n_train=103, n_test=31, num_classes=4, channels=2, size=10, seed=1)
    assert torch.equal(ds.train.images, again.train.images) and ds.identity == again.identity
    other = D.synthetic(n_train=103, n_test=31, num_classes=4, channels=2, size=10, seed=2)
    assert not torch.equal(ds.train.images, other.train.images) and ds.identity != other.identity


def test_synthetic_rejects_bad_shape():
    with pytest.raises(CifarlibError, match="num_classes"):
        D.synthetic(num_classes=1)


def test_synthetic_is_learnable_by_a_small_cnn_even_in_grayscale(one_thread):
    torch.manual_seed(0)
    ds = D.synthetic(n_train=1000, n_test=300, num_classes=10, channels=1, size=12, seed=0)
    sp = D.split(ds, 0.1, seed=0)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    loader = D.Loader(sp.train, 64, sp.mean, sp.std, shuffle=True, seed=0)
    for _ in range(7):  # 7 epochs x 15 batches = 105 steps
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    x, y = next(iter(D.Loader(sp.test, len(sp.test), sp.mean, sp.std)))
    with torch.no_grad():
        acc = (net(x).argmax(1) == y).float().mean().item()
    assert acc > 0.4, f"test accuracy {acc:.2f} (chance 0.10)"


# ----------------------------------------------------------------------------- subset

def test_subset_limits_per_class_and_keeps_original_images(small):
    sub = D.subset(small, train_per_class=7, test_per_class=3, seed=0)
    assert torch.bincount(sub.train.labels, minlength=5).tolist() == [7] * 5
    assert torch.bincount(sub.test.labels, minlength=5).tolist() == [3] * 5
    # every kept image is one of the originals, with its label
    flat = small.train.images.reshape(len(small.train), -1)
    for img, label in zip(sub.train.images, sub.train.labels):
        match = (flat == img.reshape(1, -1)).all(1).nonzero().squeeze(1)
        assert len(match) >= 1 and (small.train.labels[match] == label).any()
    assert sub.identity != small.identity


def test_subset_is_seeded_and_none_keeps_all(small):
    a = D.subset(small, 5, 5, seed=0)
    b = D.subset(small, 5, 5, seed=0)
    c = D.subset(small, 5, 5, seed=1)
    assert torch.equal(a.train.images, b.train.images) and a.identity == b.identity
    assert not torch.equal(a.train.images, c.train.images) and a.identity != c.identity
    full = D.subset(small, None, None)
    assert torch.equal(full.train.images, small.train.images)
    big = D.subset(small, train_per_class=10_000)  # more than there are: keeps all of each class
    assert len(big.train) == len(small.train)
    with pytest.raises(CifarlibError, match="positive"):
        D.subset(small, train_per_class=0)


# ----------------------------------------------------------------------------- split

def test_split_sizes_disjoint_stratified(small):
    sp = D.split(small, val_fraction=0.2, seed=0)
    assert len(sp.val) == 120 and len(sp.train) == 480 and sp.test is small.test
    assert torch.bincount(sp.val.labels, minlength=5).tolist() == [24] * 5
    rows = lambda s: {tuple(r.tolist()) for r in s.images.reshape(len(s), -1)}  # noqa: E731
    assert not rows(sp.train) & rows(sp.val)
    assert len(rows(sp.train) | rows(sp.val)) == len(rows(small.train))


def test_split_absolute_val_size_and_unstratified(small):
    sp = D.split(small, val_size=101, seed=0)
    assert len(sp.val) == 101 and len(sp.train) == 499
    counts = torch.bincount(sp.val.labels, minlength=5)
    assert counts.max() - counts.min() <= 1
    plain = D.split(small, val_size=101, seed=0, stratify=False)
    assert len(plain.val) == 101 and plain.identity != sp.identity


def test_split_is_deterministic_and_seed_dependent(small):
    a, b, c = D.split(small, 0.1, seed=5), D.split(small, 0.1, seed=5), D.split(small, 0.1, seed=6)
    assert torch.equal(a.val.images, b.val.images) and a.identity == b.identity and a.mean == b.mean
    assert not torch.equal(a.val.images, c.val.images) and a.identity != c.identity


def test_split_mean_std_are_computed_on_train_part_in_unit_range(small):
    sp = D.split(small, 0.25, seed=0)
    pixels = sp.train.images.double() / 255
    expected_mean = pixels.mean(dim=(0, 2, 3))
    expected_std = pixels.std(dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(torch.tensor(sp.mean, dtype=torch.float64), expected_mean, atol=1e-9)
    assert torch.allclose(torch.tensor(sp.std, dtype=torch.float64), expected_std, atol=1e-9)
    whole = small.train.images.double() / 255
    assert not torch.allclose(whole.mean(dim=(0, 2, 3)), expected_mean, atol=1e-9)


def test_split_rejects_bad_sizes(small):
    with pytest.raises(CifarlibError, match="val_fraction"):
        D.split(small, val_fraction=1.5)
    with pytest.raises(CifarlibError, match="val_size"):
        D.split(small, val_size=600)


# ----------------------------------------------------------------------------- augmentation

def reference_augment(img: torch.Tensor, aug: D.Augment, dy: int, dx: int, flip: bool,
                      cy: int, cx: int) -> torch.Tensor:
    """One image, written the obvious way: pad, crop, flip, cutout."""
    _, h, w = img.shape
    out = img.clone()
    if aug.crop_pad:
        p = aug.crop_pad
        mode = "reflect" if aug.crop_fill == "reflect" else "constant"
        out = F.pad(out.float(), (p, p, p, p), mode=mode).to(img.dtype)[:, dy:dy + h, dx:dx + w]
    if aug.flip and flip:
        out = out.flip(2)
    if aug.cutout:
        out = out.clone()
        out[:, max(cy, 0):max(cy + aug.cutout, 0), max(cx, 0):max(cx + aug.cutout, 0)] = 0
    return out


@pytest.mark.parametrize("aug,shape", [
    (D.Augment(crop_pad=4, flip=True), (300, 3, 12, 12)),
    (D.Augment(crop_pad=2, flip=True, cutout=5), (200, 1, 9, 14)),  # non-square catches axis mix-ups
    (D.Augment(crop_pad=0, flip=False, cutout=4), (50, 3, 8, 8)),
    (D.Augment(crop_pad=3), (50, 2, 7, 7)),
    (D.Augment(crop_pad=2, flip=True, crop_fill="reflect"), (300, 3, 12, 12)),
    (D.Augment(crop_pad=3, crop_fill="reflect", cutout=3), (100, 2, 7, 9)),
])
def test_batched_augment_matches_per_image_reference(aug, shape):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, shape, dtype=torch.uint8, generator=gen)  # no zeros: fill is visible
    n, _, h, w = shape
    params = D.draw_augment_params(n, aug, h, w, gen)
    got = D.apply_augment(images, aug, params)
    zeros = torch.zeros(n, dtype=torch.long)
    dy, dx = params.get("dy", zeros), params.get("dx", zeros)
    flip = params.get("flip", zeros.bool())
    cy, cx = params.get("cy", zeros), params.get("cx", zeros)
    for i in range(n):
        want = reference_augment(images[i], aug, int(dy[i]), int(dx[i]), bool(flip[i]), int(cy[i]), int(cx[i]))
        assert torch.equal(got[i], want), f"image {i} differs"
    if aug.flip:
        assert 0.3 < flip.float().mean() < 0.7
    if aug.crop_pad:
        assert set(dy.tolist()) == set(range(2 * aug.crop_pad + 1))


# ----------------------------------------------------------------------------- loader

def indexed_set(n: int = 100, size: int = 6) -> D.ImageSet:
    """Image i is filled with value i % 256 in channel 0 and i // 256 in channel 1."""
    i = torch.arange(n)
    images = torch.stack([(i % 256), (i // 256)], 1)[:, :, None, None].expand(n, 2, size, size)
    return D.ImageSet(images.to(torch.uint8).contiguous(), i % 7)


def test_loader_batches_normalization_and_len():
    data = indexed_set(100)
    mean, std = (0.2, 0.1), (0.5, 0.25)
    loader = D.Loader(data, 32, mean, std)
    assert len(loader) == 4
    batches = list(loader)
    assert [len(y) for _, y in batches] == [32, 32, 32, 4]
    x = torch.cat([b[0] for b in batches])
    assert x.dtype == torch.float32 and x.shape == (100, 2, 6, 6)
    restored = x * torch.tensor(std).view(1, 2, 1, 1) + torch.tensor(mean).view(1, 2, 1, 1)
    assert torch.allclose(restored * 255, data.images.float(), atol=1e-3)
    assert torch.equal(torch.cat([b[1] for b in batches]), data.labels)
    dropped = D.Loader(data, 32, mean, std, drop_last=True)
    assert len(dropped) == 3 and [len(y) for _, y in dropped] == [32, 32, 32]


def ids_of(x: torch.Tensor, mean=(0.0, 0.0), std=(1.0, 1.0)) -> list[int]:
    """Recover image ids from normalized batches of :func:`indexed_set` (unaugmented)."""
    px = (x[:, :, 0, 0] * torch.tensor(std) + torch.tensor(mean)) * 255
    return (px[:, 0].round() + 256 * px[:, 1].round()).long().tolist()


def test_loader_shuffle_is_a_seeded_permutation_per_epoch():
    data = indexed_set(300)
    loader = D.Loader(data, 64, (0.0, 0.0), (1.0, 1.0), shuffle=True, seed=7)
    epoch0 = [i for x, _ in loader for i in ids_of(x)]
    epoch1 = [i for x, _ in loader for i in ids_of(x)]
    assert sorted(epoch0) == list(range(300)) and sorted(epoch1) == list(range(300))
    assert epoch0 != epoch1 and epoch0 != list(range(300))
    again = D.Loader(data, 64, (0.0, 0.0), (1.0, 1.0), shuffle=True, seed=7)
    assert [i for x, _ in again for i in ids_of(x)] == epoch0
    again.set_epoch(1)
    assert [i for x, _ in again for i in ids_of(x)] == epoch1
    labels = torch.cat([y for _, y in D.Loader(data, 64, (0, 0), (1, 1), shuffle=True, seed=7)])
    assert labels.tolist() == [i % 7 for i in epoch0]  # labels travel with their images


def test_loader_with_augmentation_is_deterministic_given_seed(small):
    aug = D.Augment(crop_pad=2, flip=True, cutout=3)
    a = D.Loader(small.train, 50, (0.5,) * 3, (0.25,) * 3, shuffle=True, augment=aug, seed=1, chunk=100)
    b = D.Loader(small.train, 50, (0.5,) * 3, (0.25,) * 3, shuffle=True, augment=aug, seed=1, chunk=300)
    c = D.Loader(small.train, 50, (0.5,) * 3, (0.25,) * 3, shuffle=True, augment=aug, seed=2)
    xa, xb, xc = (torch.cat([x for x, _ in loader]) for loader in (a, b, c))
    assert torch.equal(xa, xb)  # chunking does not change the result
    assert not torch.equal(xa, xc)
    plain = torch.cat([x for x, _ in D.Loader(small.train, 50, (0.5,) * 3, (0.25,) * 3, shuffle=True, seed=1)])
    assert not torch.equal(xa, plain)  # augmentation did something


def test_loader_augmented_batches_match_reference(small):
    aug = D.Augment(crop_pad=3, flip=True)
    loader = D.Loader(small.train, 64, (0.0,) * 3, (1.0,) * 3, shuffle=True, augment=aug, seed=4)
    x = torch.cat([b for b, _ in loader])
    gen = torch.Generator().manual_seed(D.epoch_seed(4, 0))  # documented recipe: randperm, then the choices
    order = torch.randperm(len(small.train), generator=gen)
    params = D.draw_augment_params(len(order), aug, 12, 12, gen)
    want = D.apply_augment(small.train.images[order], aug, params)
    assert torch.allclose(x * 255, want.float(), atol=1e-3)


def test_alternating_flip_mirrors_each_image_in_every_other_epoch():
    data = indexed_set(400, size=4)
    data = D.ImageSet(data.images.clone(), data.labels)
    data.images[:, 1, :, 0] = 255  # left column marked: a mirrored image has it on the right

    def flipped_by_id(loader):
        x = torch.cat([b for b, _ in loader])
        return dict(zip(ids_of(x[..., 1:]), (x[:, 1, 0, -1] > 0.5).tolist()))  # channel 1 holds i // 256 <= 1

    aug = D.Augment(flip=True, flip_alternate=True)
    loader = D.Loader(data, 64, (0.0, 0.0), (1.0, 1.0), shuffle=True, augment=aug, seed=3)
    epochs = [flipped_by_id(loader) for _ in range(3)]
    assert all(len(e) == 400 for e in epochs)
    assert 150 < sum(epochs[0].values()) < 250  # about half start mirrored
    first = loader._first_flip()
    assert all(epochs[0][i] == bool(first[i]) for i in range(400))  # epoch 0 uses the drawn choice itself
    assert all(epochs[1][i] != epochs[0][i] and epochs[2][i] == epochs[0][i] for i in range(400))
    loader.set_epoch(1)  # an epoch's flips depend on the seed and the epoch only
    assert flipped_by_id(loader) == epochs[1]
    other = D.Loader(data, 64, (0.0, 0.0), (1.0, 1.0), shuffle=True, augment=aug, seed=4)
    assert flipped_by_id(other) != epochs[0]
    with pytest.raises(CifarlibError, match="flip_alternate=True needs flip=True"):
        D.Augment(flip_alternate=True)
    with pytest.raises(CifarlibError, match="crop_fill='edge' is unknown; use one of zeros, reflect"):
        D.Augment(crop_pad=2, crop_fill="edge")


def test_mirrored_crop_wider_than_the_image_is_a_clear_error():
    aug = D.Augment(crop_pad=4, crop_fill="reflect")
    images = torch.zeros(2, 1, 4, 6, dtype=torch.uint8)
    params = D.draw_augment_params(2, aug, 4, 6, torch.Generator().manual_seed(0))
    with pytest.raises(CifarlibError, match=r"crop_pad=4 with crop_fill='reflect' .* \(these are 4x6\)"):
        D.apply_augment(images, aug, params)


def test_loader_channels_last_dtype_and_mean_length_check(small):
    loader = D.Loader(small.train, 16, (0.5,) * 3, (0.25,) * 3, channels_last=True, dtype=torch.bfloat16)
    x, y = next(iter(loader))
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    assert y.dtype == torch.int64
    with pytest.raises(CifarlibError, match="one value per channel"):
        D.Loader(small.train, 16, (0.5,), (0.25,))


# ----------------------------------------------------------------------------- tiny image trees

def write_tree(root: Path, classes=("cat", "dog"), n_train=3, n_test=2, size=(6, 8), mode="RGB",
               ext="png", seed=0) -> dict[str, list[np.ndarray]]:
    """Write ROOT/{train,test}/<class>/<i>.<ext> with PIL; return the pixel arrays per split in the
    order a loader must produce them (class folders sorted, then file names sorted)."""
    rng = np.random.default_rng(seed)
    h, w = size
    written = {"train": [], "test": []}
    for split_name, n in (("train", n_train), ("test", n_test)):
        for cls in sorted(classes):
            folder = root / split_name / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                shape = (h, w, 3) if mode == "RGB" else (h, w)
                pixels = rng.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(pixels, mode).save(folder / f"{i:03d}.{ext}")
                written[split_name].append(pixels)
    return written


def as_chw(arrays: list[np.ndarray]) -> torch.Tensor:
    t = torch.from_numpy(np.stack(arrays))
    return t.permute(0, 3, 1, 2) if t.ndim == 4 else t[:, None]


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and len(message) < 600, message
    return message


def test_png_tree_loads_exact_pixels_labels_and_classes(tmp_path):
    written = write_tree(tmp_path / "data", classes=("dog", "cat", "bird"))
    ds = D.load("cifar10", root=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert ds.source == "image-folder" and ds.classes == ["bird", "cat", "dog"]
    assert ds.train.images.dtype == torch.uint8 and ds.train.images.shape == (9, 3, 6, 8)
    assert torch.equal(ds.train.images, as_chw(written["train"]))
    assert torch.equal(ds.test.images, as_chw(written["test"]))
    assert ds.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and ds.test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert ds.info["cache"] == "miss" and ds.info["train_per_class"] == [3, 3, 3]


def test_grayscale_png_and_jpeg_trees_give_one_channel(tmp_path):
    written = write_tree(tmp_path / "png", mode="L", size=(5, 5))
    ds = D.load("mnist", root=tmp_path / "png", cache_dir=tmp_path / "cache")
    assert ds.train.images.shape == (6, 1, 5, 5)
    assert torch.equal(ds.train.images, as_chw(written["train"]))
    write_tree(tmp_path / "jpg", mode="L", size=(8, 8), ext="jpg")
    assert D.load("mnist", root=tmp_path / "jpg", cache_dir=tmp_path / "cache").test.images.shape == (4, 1, 8, 8)


def test_jpeg_tree_matches_pil_decoding(tmp_path):
    write_tree(tmp_path / "data", size=(16, 16), ext="jpeg")
    ds = D.load("cifar10", root=tmp_path / "data", cache_dir=tmp_path / "cache")
    files = sorted((tmp_path / "data" / "train").glob("*/*.jpeg"))
    want = as_chw([np.asarray(Image.open(f).convert("RGB")) for f in files]).int()
    assert (ds.train.images.int() - want).abs().max() <= 2


def test_cache_hit_then_invalidated_by_a_changed_file(tmp_path):
    write_tree(tmp_path / "data")
    cache = tmp_path / "cache"
    first = D.load("cifar10", root=tmp_path / "data", cache_dir=cache)
    second = D.load("cifar10", root=tmp_path / "data", cache_dir=cache)
    assert (first.info["cache"], second.info["cache"]) == ("miss", "hit")
    assert torch.equal(first.train.images, second.train.images) and first.identity == second.identity
    changed = tmp_path / "data" / "train" / "cat" / "000.png"
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(changed)
    os.utime(changed, ns=(1, 1))  # a different mtime even on coarse-clock file systems
    third = D.load("cifar10", root=tmp_path / "data", cache_dir=cache)
    assert third.info["cache"] == "miss" and third.identity != first.identity
    assert third.train.images[0].sum() == 0
    assert len(list((cache / "data").glob("*.pt"))) == 1  # the stale cache file was replaced
    shutil.rmtree(cache)  # safe to delete
    assert D.load("cifar10", root=tmp_path / "data", cache_dir=cache).identity == third.identity


def test_identity_depends_on_content_not_location(tmp_path):
    write_tree(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    a = D.load("cifar10", root=tmp_path / "a", cache_dir=tmp_path / "cache")
    b = D.load("cifar10", root=tmp_path / "b", cache_dir=tmp_path / "cache")
    assert a.identity == b.identity and b.info["cache"] == "miss"


def test_root_from_environment_variables(tmp_path, monkeypatch):
    write_tree(tmp_path / "c10", classes=("a", "b"))
    write_tree(tmp_path / "mn", classes=("0", "1", "2"), mode="L")
    monkeypatch.setenv(paths.ENV_DATA, str(tmp_path / "c10"))
    monkeypatch.setenv(paths.ENV_MNIST, str(tmp_path / "mn"))
    assert D.load("cifar10", cache_dir=tmp_path / "cache").classes == ["a", "b"]
    assert D.load("mnist", cache_dir=tmp_path / "cache").classes == ["0", "1", "2"]
    monkeypatch.delenv(paths.ENV_DATA)
    monkeypatch.setattr(D.sources, "probe", lambda url, timeout=None: "offline (stand-in)")  # default location, no network
    with pytest.raises(CifarlibError) as excinfo:
        D.load("cifar10", cache_dir=tmp_path / "cache")
    assert "--data-root" in one_line_error(excinfo) and "$CIFARLIB_DATA" in str(excinfo.value)


@pytest.mark.parametrize("fmt", ["tar.gz", "tgz", "zip"])
@pytest.mark.parametrize("wrapped", [False, True])
def test_archive_of_a_tree_is_extracted_once(tmp_path, fmt, wrapped):
    tree = tmp_path / "src" / "mydata"
    written = write_tree(tree, mode="L")
    archive = tmp_path / f"mydata.{fmt}"
    top = tree.parent if wrapped else tree
    if fmt == "zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for f in sorted(top.rglob("*")):
                zf.write(f, f.relative_to(top))
    else:
        with tarfile.open(archive, "w:gz") as tf:
            for f in sorted(top.iterdir()):
                tf.add(f, f.name)
    cache = tmp_path / "cache"
    ds = D.load("mnist", root=archive, cache_dir=cache)
    assert torch.equal(ds.train.images, as_chw(written["train"])) and ds.info["layout"] == "image-archive"
    extracted = list((cache / "extracted").iterdir())
    assert len(extracted) == 1
    stamp = extracted[0].stat().st_mtime_ns
    assert D.load("mnist", root=archive, cache_dir=cache).info["cache"] == "hit"
    shutil.rmtree(cache / "data")  # decoded cache gone: decode again from the extracted folder
    again = D.load("mnist", root=archive, cache_dir=cache)
    assert again.identity == ds.identity and list((cache / "extracted").iterdir()) == extracted
    assert extracted[0].stat().st_mtime_ns == stamp


def test_download_skipped_when_root_has_data_and_offline_error_otherwise(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    write_tree(tmp_path / "data")
    assert len(D.load("cifar10", root=tmp_path / "data", download=True, cache_dir=tmp_path / "c").train) == 6
    for name in ("cifar10", "mnist"):
        with pytest.raises(CifarlibError) as excinfo:
            D.load(name, root=tmp_path / f"dl-{name}", download=True, cache_dir=tmp_path / "c")
        message = one_line_error(excinfo)
        assert "offline" in message and "--data-root" in message and "cannot download" in message


# ----------------------------------------------------------------------------- official formats

def write_cifar_batches(folder: Path, rows_per_batch=4, seed=0) -> dict:
    """Fake cifar-10-batches-py: the official pickle format, fewer rows. Returns the MD5 list."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    md5s = {"train": [], "test": [], "meta": []}
    names = [("train", f"data_batch_{i}") for i in range(1, 6)] + [("test", "test_batch")]
    for part, name in names:
        batch = {"data": rng.integers(0, 256, (rows_per_batch, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, rows_per_batch).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
        md5s[part].append((name, hashlib.md5((folder / name).read_bytes()).hexdigest()))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": D.CIFAR10_CLASSES}))
    md5s["meta"].append(("batches.meta", hashlib.md5((folder / "batches.meta").read_bytes()).hexdigest()))
    return md5s


def test_official_batches_load_and_verify(tmp_path, monkeypatch):
    md5s = write_cifar_batches(tmp_path / "root" / "cifar-10-batches-py")
    monkeypatch.setattr(D.sources, "_cifar_batch_md5", lambda: md5s)
    ds = D.load("cifar10", root=tmp_path / "root", cache_dir=tmp_path / "cache")
    assert ds.source == "cifar-batches" and ds.classes == D.CIFAR10_CLASSES
    assert ds.train.images.shape == (20, 3, 32, 32) and ds.test.images.shape == (4, 3, 32, 32)
    batch = pickle.loads((tmp_path / "root" / "cifar-10-batches-py" / "data_batch_2").read_bytes())
    assert torch.equal(ds.train.images[4:8].reshape(4, -1), torch.from_numpy(batch["data"]))
    assert ds.train.labels[4:8].tolist() == batch["labels"]


def test_official_batches_truncated_or_wrong_checksum(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    md5s = write_cifar_batches(folder)
    monkeypatch.setattr(D.sources, "_cifar_batch_md5", lambda: md5s)
    data = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(data[: len(data) // 2])
    with pytest.raises(CifarlibError) as excinfo:
        D.load("cifar10", root=folder, cache_dir=tmp_path / "cache")
    message = one_line_error(excinfo)
    assert "data_batch_3" in message and "MD5" in message and "truncated" in message and "download" in message
    (folder / "data_batch_3").write_bytes(data)
    (folder / "test_batch").unlink()
    with pytest.raises(CifarlibError, match="lacks test_batch"):
        D.load("cifar10", root=folder, cache_dir=tmp_path / "cache")
    monkeypatch.undo()  # the real MD5 list: these fake files fail it
    write_cifar_batches(tmp_path / "other" / "cifar-10-batches-py")
    with pytest.raises(CifarlibError, match="fails its MD5 check"):
        D.load("cifar10", root=tmp_path / "other", cache_dir=tmp_path / "cache")


def write_mnist_raw(root: Path, n_train=5, n_test=3, seed=0) -> None:
    """Fake torchvision MNIST root: ROOT/MNIST/raw/*-ubyte in the IDX format."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())


def test_torchvision_mnist_root(tmp_path):
    write_mnist_raw(tmp_path / "tv")
    ds = D.load("mnist", root=tmp_path / "tv", cache_dir=tmp_path / "cache")
    assert ds.source == "torchvision" and ds.classes == D.MNIST_CLASSES
    assert ds.train.images.shape == (5, 1, 28, 28) and ds.test.images.shape == (3, 1, 28, 28)
    raw = (tmp_path / "tv" / "MNIST" / "raw" / "t10k-images-idx3-ubyte").read_bytes()[16:]
    assert torch.equal(ds.test.images.reshape(-1), torch.frombuffer(bytearray(raw), dtype=torch.uint8))


# ----------------------------------------------------------------------------- bad input

def test_missing_empty_and_unrecognised_roots(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(CifarlibError) as excinfo:
        D.load("cifar10", root=tmp_path / "nope", cache_dir=cache)
    assert "does not exist" in one_line_error(excinfo) and "--data-root" in str(excinfo.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CifarlibError) as excinfo:
        D.load("cifar10", root=tmp_path / "empty", cache_dir=cache)
    assert "is empty" in one_line_error(excinfo)
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "notes.txt").write_text("x")
    (tmp_path / "odd" / "images").mkdir()
    with pytest.raises(CifarlibError) as excinfo:
        D.load("cifar10", root=tmp_path / "odd", cache_dir=cache)
    message = one_line_error(excinfo)
    assert "not a recognised layout" in message and "notes.txt" in message
    assert "ROOT/{train,test}/<class>" in message and "cifar-10-batches-py" in message and ".tar.gz" in message
    with pytest.raises(CifarlibError, match="not a .tar.gz/.tgz/.zip archive"):
        D.load("cifar10", root=tmp_path / "odd" / "notes.txt", cache_dir=cache)
    (tmp_path / "bad.tar.gz").write_bytes(b"not really gzip")
    with pytest.raises(CifarlibError, match="cannot extract archive .*bad.tar.gz"):
        D.load("cifar10", root=tmp_path / "bad.tar.gz", cache_dir=cache)
    with pytest.raises(CifarlibError, match="unknown dataset"):
        D.load("imagenet", root=tmp_path)
    assert D.load("synthetic").identity == D.synthetic().identity


def test_train_without_test_folder(tmp_path):
    write_tree(tmp_path / "data")
    shutil.rmtree(tmp_path / "data" / "test")
    with pytest.raises(CifarlibError) as excinfo:
        D.load("cifar10", root=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert "no test/ folder" in one_line_error(excinfo)


def test_train_and_test_class_folders_differ(tmp_path):
    write_tree(tmp_path / "data", classes=("cat", "dog"))
    (tmp_path / "data" / "train" / "bird").mkdir()
    Image.new("RGB", (8, 6)).save(tmp_path / "data" / "train" / "bird" / "x.png")
    with pytest.raises(CifarlibError) as excinfo:
        D.load("cifar10", root=tmp_path / "data", cache_dir=tmp_path / "cache")
    message = one_line_error(excinfo)
    assert "class folders differ" in message and "only in train: bird" in message and "only in test: none" in message


def test_class_folder_without_images(tmp_path):
    write_tree(tmp_path / "data")
    for f in (tmp_path / "data" / "test" / "dog").iterdir():
        f.rename(f.with_suffix(".txt"))
    with pytest.raises(CifarlibError) as excinfo:
        D.load("cifar10", root=tmp_path / "data", cache_dir=tmp_path / "cache")
    message = one_line_error(excinfo)
    assert "has no images" in message and str(Path("test") / "dog") in message


@pytest.mark.parametrize("damage", ["garbage", "truncated-jpeg", "empty"])
def test_corrupt_image_is_named(tmp_path, damage):
    write_tree(tmp_path / "data", ext="jpg", size=(16, 16))
    bad = tmp_path / "data" / "train" / "dog" / "001.jpg"
    data = bad.read_bytes()
    bad.write_bytes({"garbage": b"this is not an image" * 5, "truncated-jpeg": data[: len(data) // 2],
                     "empty": b""}[damage])
    with pytest.raises(CifarlibError) as excinfo:
        D.load("cifar10", root=tmp_path / "data", cache_dir=tmp_path / "cache")
    message = one_line_error(excinfo)
    assert "cannot decode image" in message and str(bad) in message and "replace" in message


def test_mixed_image_sizes_name_file_and_both_sizes(tmp_path):
    write_tree(tmp_path / "data", size=(6, 8))
    odd = tmp_path / "data" / "test" / "cat" / "001.png"
    Image.new("RGB", (9, 7)).save(odd)  # PIL takes (width, height)
    with pytest.raises(CifarlibError) as excinfo:
        D.load("cifar10", root=tmp_path / "data", cache_dir=tmp_path / "cache")
    message = one_line_error(excinfo)
    assert "mixed sizes" in message and str(odd) in message and "7x9" in message and "6x8" in message


# ----------------------------------------------------------------------------- CLI

def test_cli_prints_summary_and_cold_then_warm(tmp_path, capsys):
    write_tree(tmp_path / "data", classes=("cat", "dog"), n_train=3, n_test=2)
    assert data_command.main(["--data-root", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "image-folder" in out and str(tmp_path / "data") in out and "3 x 6 x 8" in out
    assert "cold (cache miss" in out and "warm (cache hit)" in out
    assert "train 6" in out and "test 4" in out
    cat_row = next(line for line in out.splitlines() if line.split()[:1] == ["cat"])
    assert cat_row.split()[1:] == ["3", "2"]
    assert data_command.main(["--data-root", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "s warm (cache hit); second load" in capsys.readouterr().out


def test_cli_error_is_one_line_with_exit_status_2(tmp_path, capsys):
    assert cli_main(["data", "--data-root", str(tmp_path / "missing"), "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data root") and err.count("\n") == 1


# ----------------------------------------------------------------------------- real data

@pytest.mark.realdata
def test_real_cifar10(real_cifar10):
    ds = real_cifar10
    assert ds.classes == D.CIFAR10_CLASSES
    assert ds.train.images.shape == (50_000, 3, 32, 32) and ds.test.images.shape == (10_000, 3, 32, 32)
    assert ds.info["train_per_class"] == [5000] * 10 and ds.info["test_per_class"] == [1000] * 10
    sp = D.split(ds, 0.1, seed=0)
    assert len(sp.train) == 45_000 and len(sp.val) == 5_000
    assert all(0.4 < m < 0.55 for m in sp.mean) and all(0.2 < s < 0.3 for s in sp.std)


@pytest.mark.realdata
def test_real_mnist(real_mnist):
    ds = real_mnist
    assert ds.classes == D.MNIST_CLASSES
    assert ds.train.images.shape == (60_000, 1, 28, 28) and ds.test.images.shape == (10_000, 1, 28, 28)
    assert sum(ds.info["train_per_class"]) == 60_000 and min(ds.info["train_per_class"]) > 5000
    sp = D.split(ds, val_size=10_000, seed=0)
    assert len(sp.train) == 50_000 and len(sp.val) == 10_000
    assert 0.1 < sp.mean[0] < 0.15 and 0.28 < sp.std[0] < 0.33


@pytest.mark.parametrize("old_python", [False, True])
def test_archive_with_a_path_outside_the_tree_is_refused(tmp_path, monkeypatch, old_python):
    if old_python:  # Pythons before 3.10.12 lack tarfile's "data" filter: the fallback check runs
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    write_tree(tmp_path / "tree")
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tmp_path / "tree" / "train", "train")
        tf.add(tmp_path / "tree" / "test" / "cat" / "000.png", "../escaped.png")
    with pytest.raises(CifarlibError) as excinfo:
        D.load("cifar10", root=archive, cache_dir=tmp_path / "cache")
    assert "cannot extract archive" in one_line_error(excinfo)
    assert not list(tmp_path.rglob("escaped.png"))


def test_runs_with_different_seeds_do_not_share_epochs(small):
    """seed 1's first epoch must not be seed 0's second epoch (as it would be with seed + epoch)."""
    def epoch(seed, k):
        loader = D.Loader(small.train, 50, (0.5,) * 3, (0.25,) * 3, shuffle=True, seed=seed)
        loader.set_epoch(k)
        return torch.cat([y for _, y in loader])

    assert not torch.equal(epoch(1, 0), epoch(0, 1))
    assert torch.equal(epoch(1, 0), epoch(1, 0))


# ----------------------------------------------------------------------------- faults from the probe (issue 18)

def test_16_bit_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    root = tmp_path / "data"
    values = np.array([[0, 257 * 100, 65535], [257, 257 * 200, 128]], dtype=np.uint16)
    for split_name in ("train", "test"):
        for cls in ("a", "b"):
            (root / split_name / cls).mkdir(parents=True)
            Image.fromarray(values).save(root / split_name / cls / "0.png")
    assert Image.open(root / "train" / "a" / "0.png").mode.startswith("I")
    ds = D.load("cifar10", root=root, cache_dir=tmp_path / "cache")
    assert ds.train.images.shape[1:] == (1, 2, 3)
    assert ds.train.images[0, 0].tolist() == [[0, 100, 255], [1, 200, 0]]


def test_a_tree_with_one_class_is_refused(tmp_path):
    write_tree(tmp_path / "data", classes=("cat",))
    with pytest.raises(CifarlibError) as excinfo:
        D.load("cifar10", root=tmp_path / "data", cache_dir=tmp_path / "cache")
    message = one_line_error(excinfo)
    assert "only one class folder (cat)" in message and "at least 2" in message


def test_an_oversized_image_is_refused_from_its_header_before_decoding(tmp_path, monkeypatch):
    write_tree(tmp_path / "data", size=(40, 50))

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(D.sources, "MAX_IMAGE_PIXELS", 1000)
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    with pytest.raises(CifarlibError) as excinfo:
        D.load("cifar10", root=tmp_path / "data", cache_dir=tmp_path / "cache")
    message = one_line_error(excinfo)
    assert "000.png is 50x40 pixels" in message and "resize" in message


def test_a_decompression_bomb_is_one_line_not_a_traceback(tmp_path, monkeypatch):
    write_tree(tmp_path / "data", size=(40, 50))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 2000 pixels > 2 x 100: PIL raises its bomb error
    with pytest.raises(CifarlibError) as excinfo:
        D.load("cifar10", root=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert "000.png" in one_line_error(excinfo)


def test_an_archive_with_an_uncreatable_cache_folder_is_one_line(tmp_path):
    write_tree(tmp_path / "tree")
    archive = tmp_path / "tree.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tmp_path / "tree", "tree")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(CifarlibError) as excinfo:
        D.load("cifar10", root=archive, cache_dir=blocker / "cache")
    message = one_line_error(excinfo)
    assert str(blocker / "cache") in message and paths.ENV_CACHE in message


def _tar_with(archive: Path, tree: Path, extra: list) -> None:
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tree / "train", "train")
        tf.add(tree / "test", "test")
        for info, payload in extra:
            tf.addfile(info, payload)


@pytest.mark.parametrize("old_python", [False, True])
def test_archive_device_nodes_are_refused(tmp_path, monkeypatch, old_python):
    if old_python:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    write_tree(tmp_path / "tree")
    device = tarfile.TarInfo("train/cat/null")
    device.type, device.devmajor, device.devminor = tarfile.CHRTYPE, 1, 3
    _tar_with(tmp_path / "dev.tar.gz", tmp_path / "tree", [(device, None)])
    with pytest.raises(CifarlibError) as excinfo:
        D.load("cifar10", root=tmp_path / "dev.tar.gz", cache_dir=tmp_path / "cache")
    assert "cannot extract archive" in one_line_error(excinfo)
    assert not [p for p in (tmp_path / "cache").rglob("null")]


@pytest.mark.parametrize("old_python", [False, True])
def test_archive_setuid_bits_are_dropped(tmp_path, monkeypatch, old_python):
    import io
    import stat

    if old_python:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    write_tree(tmp_path / "tree")
    payload = b"#!/bin/sh\n"
    tool = tarfile.TarInfo("tool.sh")
    tool.size, tool.mode = len(payload), 0o6777
    _tar_with(tmp_path / "suid.tar.gz", tmp_path / "tree", [(tool, io.BytesIO(payload))])
    D.load("cifar10", root=tmp_path / "suid.tar.gz", cache_dir=tmp_path / "cache")
    [extracted] = (tmp_path / "cache").rglob("tool.sh")
    mode = extracted.stat().st_mode
    assert not mode & (stat.S_ISUID | stat.S_ISGID) and not mode & stat.S_IWOTH


def test_a_half_extracted_folder_is_removed_by_the_next_load(tmp_path):
    write_tree(tmp_path / "tree")
    archive = tmp_path / "tree.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tmp_path / "tree", "tree")
    D.load("cifar10", root=archive, cache_dir=tmp_path / "cache")
    [done] = [p for p in (tmp_path / "cache" / "extracted").iterdir() if not p.name.startswith(".")]
    shutil.rmtree(done)
    for cached in (tmp_path / "cache" / "data").iterdir():
        cached.unlink()
    killed = done.parent / f".{done.name}.k1lled_x"  # what a process killed mid-extraction leaves (mkdtemp's name)
    other = done.parent / f".{done.name}.kept-by-another-archive"  # not a staging folder of this archive
    (killed / "tree" / "train").mkdir(parents=True)
    other.mkdir()
    D.load("cifar10", root=archive, cache_dir=tmp_path / "cache")
    assert done.is_dir() and not killed.exists() and other.is_dir()


def test_an_archive_is_extracted_under_a_lock_that_a_second_process_waits_for(tmp_path):
    import fcntl
    import threading

    write_tree(tmp_path / "tree")
    archive = tmp_path / "tree.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tmp_path / "tree", "tree")
    cache = tmp_path / "cache"
    D.load("cifar10", root=archive, cache_dir=cache)
    [done] = [p for p in (cache / "extracted").iterdir() if not p.name.startswith(".")]
    shutil.rmtree(done)
    shutil.rmtree(cache / "data")
    with open(cache / "locks" / f"extract-{done.name}.lock", "a+") as held:  # another process is extracting
        fcntl.flock(held, fcntl.LOCK_EX)
        loading = threading.Thread(target=D.load, args=("cifar10", archive), kwargs={"cache_dir": cache})
        loading.start()
        loading.join(1.0)
        assert loading.is_alive() and not done.exists(), "the extraction must wait for the lock"
    loading.join(60)
    assert not loading.is_alive() and done.is_dir()


def test_a_validation_fraction_that_rounds_to_no_images_names_it(small):
    tiny = D.subset(small, train_per_class=4)  # 20 training images
    with pytest.raises(CifarlibError) as excinfo:
        D.split(tiny, val_fraction=0.01)
    message = one_line_error(excinfo)
    assert "val_fraction=0.01" in message and "20 training images" in message and "0.05" in message
    assert len(D.split(tiny, val_fraction=0.0).val) == 0  # no validation set asked for: fine


@pytest.mark.parametrize("augment, key", [(D.Augment(crop_pad=12), "crop_pad=12"), (D.Augment(cutout=40), "cutout=40")])
def test_augmentation_larger_than_the_image_is_refused(small, augment, key):
    with pytest.raises(CifarlibError) as excinfo:
        D.Loader(small.train, 16, (0.5,) * 3, (0.25,) * 3, augment=augment)
    message = one_line_error(excinfo)
    assert key in message and "12x12" in message
    D.Loader(small.train, 16, (0.5,) * 3, (0.25,) * 3, augment=D.Augment(crop_pad=11, cutout=11))


def test_non_utf8_file_names_print_under_a_strict_utf8_stdout(tmp_path):
    import subprocess
    import sys

    root = tmp_path / "data"
    write_tree(root)
    for split_name in ("train", "test"):
        os.rename(root / split_name / "cat", os.fsencode(root / split_name) + b"/caf\xe9")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict", "CIFARLIB_CACHE": str(tmp_path / "cache"),
           "CIFARLIB_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "cifarlib", "data", "--data-root", str(root)], env=env,
                          capture_output=True, text=True, errors="replace", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "caf" in proc.stdout
