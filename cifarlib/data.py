"""Data: find a data set, decode it once into uint8 tensors (cached), split it, and batch it on the device.

CONTRACT (other modules rely on these names and signatures; keep them):

    ds = load("cifar10", root=None, download=False)   # -> Dataset   (root: arg > $CIFARLIB_DATA / $CIFARLIB_MNIST_DATA)
    ds = synthetic(n_train=2000, n_test=500, num_classes=10, channels=3, size=32, seed=0)
    ds = subset(ds, train_per_class=100, test_per_class=50, seed=0)
    sp = split(ds, val_fraction=0.1, seed=0)          # -> Splits(train, val, test, classes, mean, std, ...)
    for x, y in Loader(sp.train, batch_size=64, mean=sp.mean, std=sp.std, shuffle=True,
                       augment=Augment(crop_pad=4, flip=True), device="cpu", seed=0): ...

TODO(data helper): implement the bodies marked NotImplementedError.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cifarlib.errors import CifarlibError  # noqa: F401

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


@dataclass(frozen=True)
class Augment:
    """Batched, on-device augmentation for training batches."""

    crop_pad: int = 0  # random crop after zero-padding this many pixels per side (0 = off)
    flip: bool = False  # random horizontal flip with probability 1/2
    cutout: int = 0  # side of a square zeroed at a random position (0 = off)


def load(name: str = "cifar10", root=None, download: bool = False, cache_dir=None) -> Dataset:
    raise NotImplementedError


def synthetic(n_train: int = 2000, n_test: int = 500, num_classes: int = 10, channels: int = 3,
              size: int = 32, seed: int = 0) -> Dataset:
    raise NotImplementedError


def subset(ds: Dataset, train_per_class: int | None = None, test_per_class: int | None = None,
           seed: int = 0) -> Dataset:
    raise NotImplementedError


def split(ds: Dataset, val_fraction: float = 0.1, seed: int = 0) -> Splits:
    raise NotImplementedError


class Loader:
    """Iterates (x, y) batches: x float (B, C, H, W) normalized, on ``device``; y int64 on ``device``.

    The whole split is moved to ``device`` once as uint8; each epoch (each ``iter()``) draws a
    ``randperm`` from a generator seeded with ``seed + epoch``; augmentation and normalization
    run batched on the device. ``len(loader)`` is the number of batches.
    """

    def __init__(self, data: ImageSet, batch_size: int, mean, std, shuffle: bool = False,
                 augment: Augment | None = None, device="cpu", channels_last: bool = False,
                 drop_last: bool = False, seed: int = 0, dtype=torch.float32):
        raise NotImplementedError


def cli(argv: list[str]) -> int:
    """``python -m cifarlib data [--data-root PATH] [--dataset cifar10|mnist]``."""
    raise NotImplementedError
