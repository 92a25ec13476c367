"""Tests for cifarlib.data: synthetic data, selection, batched augmentation, the loader, sources,
the decoded-tensor cache, error messages and the CLI. Real-data tests are marked ``realdata``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import pytest
from torch import nn

from cifarlib import data as D
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


def test_synthetic_is_learnable_by_a_small_cnn_even_in_grayscale():
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
        out = F.pad(out, (p, p, p, p))[:, dy:dy + h, dx:dx + w]
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
    gen = torch.Generator().manual_seed(4)  # the documented recipe: randperm, then the epoch's choices
    order = torch.randperm(len(small.train), generator=gen)
    params = D.draw_augment_params(len(order), aug, 12, 12, gen)
    want = D.apply_augment(small.train.images[order], aug, params)
    assert torch.allclose(x * 255, want.float(), atol=1e-3)


def test_loader_channels_last_dtype_and_mean_length_check(small):
    loader = D.Loader(small.train, 16, (0.5,) * 3, (0.25,) * 3, channels_last=True, dtype=torch.bfloat16)
    x, y = next(iter(loader))
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    assert y.dtype == torch.int64
    with pytest.raises(CifarlibError, match="one value per channel"):
        D.Loader(small.train, 16, (0.5,), (0.25,))
