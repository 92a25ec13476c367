"""Data sets in memory: the containers, a synthetic data set, and the seeded selection (subset, split).

Everything here works on uint8 tensors on the CPU; nothing reads files or knows about devices.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

import torch

from cifarlib.errors import CifarlibError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MNIST_CLASSES = [str(d) for d in range(10)]


@dataclass
class ImageSet:
    """One split: ``images`` uint8 (N, C, H, W) and ``labels`` int64 (N,), both on the CPU."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Dataset:
    """A decoded data set. ``identity`` is a short hash of the source and the selection, so that
    run records can tell which data they were trained on (it changes when the data changes)."""

    name: str  # "cifar10" | "mnist" | "synthetic"
    source: str  # "torchvision" | "cifar-batches" | "image-folder" | "synthetic"
    classes: list[str]
    train: ImageSet
    test: ImageSet
    identity: str
    root: str | None = None
    info: dict = field(default_factory=dict)  # e.g. load seconds, cache path, per-class counts


@dataclass
class Splits:
    """Train/validation/test for training. ``mean``/``std`` are per-channel, in [0, 1] pixel units,
    computed on the training split (after the validation split is taken out)."""

    train: ImageSet
    val: ImageSet
    test: ImageSet
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    identity: str  # dataset identity + split parameters
    name: str = ""


def short_hash(*parts) -> str:
    """A 12-hex-digit SHA-256 of ``parts`` (anything JSON can write)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def class_counts(labels: torch.Tensor, num_classes: int) -> list[int]:
    """Images per class, index = class id."""
    return torch.bincount(labels, minlength=num_classes).tolist()


# ---------------------------------------------------------------------------------------------
# Synthetic data
# ---------------------------------------------------------------------------------------------

def synthetic(n_train: int = 2000, n_test: int = 500, num_classes: int = 10, channels: int = 3,
              size: int = 32, seed: int = 0, noise: float = 0.25) -> Dataset:
    """Images with learnable class structure, for tests and quick runs.

    Each class has its own colour (per-channel brightness) and its own sinusoidal grating
    (frequency and orientation); every image gets a random phase and Gaussian pixel noise of
    standard deviation ``noise`` (in [0, 1] pixel units). Labels are balanced (round robin, then
    shuffled). Same arguments -> identical tensors.
    """
    if min(n_train, n_test) < 0 or num_classes < 2 or channels < 1 or size < 4:
        raise CifarlibError(f"synthetic(n_train={n_train}, n_test={n_test}, num_classes={num_classes}, "
                            f"channels={channels}, size={size}) is not a valid shape; use n >= 0, "
                            "num_classes >= 2, channels >= 1, size >= 4")
    gen = torch.Generator().manual_seed(seed)
    colour = 0.25 + 0.5 * torch.rand(num_classes, channels, generator=gen)  # [0.25, 0.75]
    freq = 1.0 + 3.0 * torch.rand(num_classes, generator=gen)  # cycles per image side
    angle = math.pi * torch.rand(num_classes, generator=gen)  # grating orientation, radians
    classes = [f"class{k}" for k in range(num_classes)]

    def make(n: int) -> ImageSet:
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=gen)]
        coords = torch.arange(size, dtype=torch.float32) / size
        yy, xx = torch.meshgrid(coords, coords, indexing="ij")
        along = (torch.cos(angle)[labels, None, None] * xx + torch.sin(angle)[labels, None, None] * yy)
        phase = 2 * math.pi * torch.rand(n, 1, 1, generator=gen)
        grating = 0.2 * torch.sin(2 * math.pi * freq[labels, None, None] * along + phase)  # (n, H, W)
        pixels = colour[labels][:, :, None, None] + grating[:, None]
        pixels = pixels + noise * torch.randn(n, channels, size, size, generator=gen)
        images = (pixels.clamp(0, 1) * 255).round().to(torch.uint8)
        return ImageSet(images, labels.to(torch.int64))

    train, test = make(n_train), make(n_test)
    identity = short_hash("synthetic", n_train, n_test, num_classes, channels, size, seed, noise)
    info = {"train_per_class": class_counts(train.labels, num_classes),
            "test_per_class": class_counts(test.labels, num_classes)}
    return Dataset("synthetic", "synthetic", classes, train, test, identity, None, info)


# ---------------------------------------------------------------------------------------------
# Selection: subset and split
# ---------------------------------------------------------------------------------------------

def _per_class_first(labels: torch.Tensor, limit: int | None, gen: torch.Generator) -> torch.Tensor:
    """Indices of at most ``limit`` images per class, chosen at random (seeded), in original order."""
    if limit is None:
        return torch.arange(len(labels))
    order = torch.randperm(len(labels), generator=gen)
    rank = _rank_within_class(labels[order])
    return order[rank < limit].sort().values


def _rank_within_class(labels: torch.Tensor) -> torch.Tensor:
    """For each position, how many earlier positions have the same label (0, 1, 2, ... per class)."""
    order = torch.sort(labels, stable=True).indices
    sorted_labels = labels[order]
    starts = torch.searchsorted(sorted_labels, sorted_labels, right=False)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(labels)) - starts
    return rank


def _take(s: ImageSet, idx: torch.Tensor) -> ImageSet:
    return ImageSet(s.images[idx], s.labels[idx])


def subset(ds: Dataset, train_per_class: int | None = None, test_per_class: int | None = None,
           seed: int = 0) -> Dataset:
    """Keep at most ``train_per_class`` / ``test_per_class`` images per class (None = all).

    Which images are kept is a seeded random choice; they stay in their original order.
    """
    for value in (train_per_class, test_per_class):
        if value is not None and value < 1:
            raise CifarlibError(f"subset: per-class limit {value} is below 1; pass a positive count or None for all")
    gen = torch.Generator().manual_seed(seed)
    train = _take(ds.train, _per_class_first(ds.train.labels, train_per_class, gen))
    test = _take(ds.test, _per_class_first(ds.test.labels, test_per_class, gen))
    k = len(ds.classes)
    info = {**ds.info, "subset": {"train_per_class": train_per_class, "test_per_class": test_per_class,
                                  "seed": seed},
            "train_per_class": class_counts(train.labels, k), "test_per_class": class_counts(test.labels, k)}
    identity = short_hash(ds.identity, "subset", train_per_class, test_per_class, seed)
    return Dataset(ds.name, ds.source, list(ds.classes), train, test, identity, ds.root, info)


def _validation_order(labels: torch.Tensor, gen: torch.Generator, stratify: bool) -> torch.Tensor:
    """A seeded order of all indices; the first k of it are the validation set for any k.

    Stratified: each class is spread evenly along the order (the i-th of n_c images of a class sits
    at key (i + 0.5) / n_c), so any prefix holds every class in proportion, to within one image.
    """
    order = torch.randperm(len(labels), generator=gen)
    if not stratify:
        return order
    shuffled = labels[order]
    counts = torch.bincount(shuffled).to(torch.float64)
    key = (_rank_within_class(shuffled).to(torch.float64) + 0.5) / counts[shuffled]
    return order[torch.sort(key, stable=True).indices]


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of uint8 images, in [0, 1] pixel units.

    Exact: computed from a 256-bin histogram per channel, so it needs no float copy of the images.
    """
    values = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        total = hist.sum().clamp_min(1)
        mean = (hist * values).sum() / total
        var = (hist * (values - mean) ** 2).sum() / total
        means.append(float(mean))
        stds.append(float(var.sqrt().clamp_min(1e-6)))
    return tuple(means), tuple(stds)


def split(ds: Dataset, val_fraction: float = 0.1, seed: int = 0, *, val_size: int | None = None,
          stratify: bool = True) -> Splits:
    """Hold out a validation set from ``ds.train``; ``ds.test`` stays the test set.

    ``val_size`` (images) overrides ``val_fraction``. The choice is seeded: the same seed gives the
    same split on every run and machine. ``stratify`` keeps class proportions (to within one image
    per class). ``mean``/``std`` are per channel, in [0, 1] pixel units, computed on the training
    part only (the validation images are not seen), as used for normalization.
    """
    n = len(ds.train)
    if val_size is None:
        if not 0 <= val_fraction < 1:
            raise CifarlibError(f"split: val_fraction={val_fraction} is outside [0, 1); pass e.g. 0.1")
        val_size = int(round(n * val_fraction))
        if val_fraction > 0 and val_size == 0:
            if n < 2:
                raise CifarlibError(f"split: {n} training image(s) leave none to hold out for validation; select "
                                    "more images, or set val_fraction=0 for no validation set")
            raise CifarlibError(f"split: val_fraction={val_fraction} of {n} training images is no image; raise it "
                                f"to at least {math.ceil(100 / n) / 100:g}, or set val_size, "
                                "or 0 for no validation set")
    if not 0 <= val_size < n:
        raise CifarlibError(f"split: val_size={val_size} leaves no training images out of {n}; "
                            f"pass a val_size below {n}")
    order = _validation_order(ds.train.labels, torch.Generator().manual_seed(seed), stratify)
    val_idx, train_idx = order[:val_size].sort().values, order[val_size:].sort().values
    train, val = _take(ds.train, train_idx), _take(ds.train, val_idx)
    mean, std = channel_stats(train.images)
    identity = short_hash(ds.identity, "split", val_size, seed, stratify)
    return Splits(train, val, ds.test, list(ds.classes), mean, std, identity, ds.name)
