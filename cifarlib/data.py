"""Data: find a data set, decode it once into uint8 tensors (cached), split it, and batch it on the device.

CONTRACT (other modules rely on these names and signatures; keep them):

    ds = load("cifar10", root=None, download=False)   # -> Dataset   (root: arg > $CIFARLIB_DATA / $CIFARLIB_MNIST_DATA
                                                      #    > <cache>/datasets/<name>, downloaded there if it lacks data)
    check_source("cifar10", root=None) -> str         # where load() will get it; one-line error if it cannot
    ds = synthetic(n_train=2000, n_test=500, num_classes=10, channels=3, size=32, seed=0)
    ds = subset(ds, train_per_class=100, test_per_class=50, seed=0)
    sp = split(ds, val_fraction=0.1, seed=0)          # -> Splits(train, val, test, classes, mean, std, ...)
    sp = split(ds, val_size=10_000, seed=0)           # absolute validation size (MNIST: 50,000/10,000)
    for x, y in Loader(sp.train, batch_size=64, mean=sp.mean, std=sp.std, shuffle=True,
                       augment=Augment(crop_pad=4, flip=True), device="cpu", seed=0): ...
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import pickle
import re
import shutil
import sys
import tarfile
import tempfile
import threading
import time
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy
import torch
from PIL import Image, UnidentifiedImageError

from cifarlib import paths
from cifarlib.atomic import atomic_path
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


@dataclass(frozen=True)
class Augment:
    """Batched, on-device augmentation for training batches."""

    crop_pad: int = 0  # random crop after padding this many pixels per side (0 = off)
    flip: bool = False  # random horizontal flip with probability 1/2
    cutout: int = 0  # side of a square zeroed at a random position (0 = off)
    crop_fill: str = "zeros"  # what the crop's padding holds: "zeros" or "reflect" (mirrored edge pixels)
    flip_alternate: bool = False  # with flip: each image is mirrored in every other epoch (the first epoch
    #                               draws which half starts mirrored), instead of a new coin toss each epoch

    def __post_init__(self):
        if self.crop_fill not in CROP_FILLS:
            raise CifarlibError(f"Augment: crop_fill={self.crop_fill!r} is unknown; use one of {', '.join(CROP_FILLS)}")
        if self.flip_alternate and not self.flip:
            raise CifarlibError("Augment: flip_alternate=True needs flip=True; set both, or neither")


CROP_FILLS = ("zeros", "reflect")


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
    if not 0 <= val_size < n:
        raise CifarlibError(f"split: val_size={val_size} leaves no training images out of {n}; "
                            f"pass a val_size below {n}")
    order = _validation_order(ds.train.labels, torch.Generator().manual_seed(seed), stratify)
    val_idx, train_idx = order[:val_size].sort().values, order[val_size:].sort().values
    train, val = _take(ds.train, train_idx), _take(ds.train, val_idx)
    mean, std = channel_stats(train.images)
    identity = short_hash(ds.identity, "split", val_size, seed, stratify)
    return Splits(train, val, ds.test, list(ds.classes), mean, std, identity, ds.name)


# ---------------------------------------------------------------------------------------------
# Batched augmentation and the loader
# ---------------------------------------------------------------------------------------------

def draw_augment_params(n: int, augment: Augment, height: int, width: int,
                        gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random choices for ``n`` images (CPU, from ``gen``): crop offsets ``dy``/``dx`` in
    [0, 2 * crop_pad] (pixels into the padded image), ``flip`` (bool) and the cutout square's
    top-left corner ``cy``/``cx`` (may lie partly outside the image, so the square can be clipped)."""
    p = augment.crop_pad
    params = {}
    if p:
        params["dy"] = torch.randint(0, 2 * p + 1, (n,), generator=gen)
        params["dx"] = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    if augment.flip:
        params["flip"] = torch.rand(n, generator=gen) < 0.5
    if augment.cutout:
        s = augment.cutout
        params["cy"] = torch.randint(-(s // 2), height - s // 2, (n,), generator=gen)
        params["cx"] = torch.randint(-(s // 2), width - s // 2, (n,), generator=gen)
    return params


def _group_bounds(sorted_key: torch.Tensor) -> list[tuple[int, int, int]]:
    """(key, start, stop) of each run of equal values in a sorted 1-D tensor."""
    keys, counts = torch.unique_consecutive(sorted_key, return_counts=True)
    stops = counts.cumsum(0).tolist()
    return [(k, stop - n, stop) for k, n, stop in zip(keys.tolist(), counts.tolist(), stops)]


def _mirror_index(n: int, shift: int, device) -> torch.Tensor:
    """Source positions i + shift for i in 0..n-1, mirrored at the edges without repeating the edge
    pixel (-1 -> 1, n -> n - 2), as ``F.pad(mode="reflect")``; needs |shift| < n."""
    i = torch.arange(n, device=device) + shift
    return torch.where(i < 0, -i, torch.where(i > n - 1, 2 * (n - 1) - i, i))


def _crop_groups(x: torch.Tensor, pad: int, groups: list[tuple[int, int, int]], fill: str = "zeros") -> torch.Tensor:
    """Crop each group of images at its own offset (dy, dx) from the image padded by ``pad`` pixels
    (``fill``: zeros, or the mirrored image): one copy per group, the padding never materialised. A
    group's key encodes dy * (2 * pad + 1) + dx (plus a multiple of (2 * pad + 1)^2 for the flip flag,
    ignored here)."""
    _, _, h, w = x.shape
    side = 2 * pad + 1
    out = torch.zeros_like(x)
    for key, a, b in groups:
        sy, sx = (key % (side * side)) // side - pad, key % side - pad  # shift in source pixels
        if fill == "reflect":
            rows, cols = _mirror_index(h, sy, x.device), _mirror_index(w, sx, x.device)
            out[a:b] = x[a:b].index_select(2, rows).index_select(3, cols)
            continue
        r0, r1, c0, c1 = max(0, -sy), min(h, h - sy), max(0, -sx), min(w, w - sx)
        if r0 < r1 and c0 < c1:
            out[a:b, :, r0:r1, c0:c1] = x[a:b, :, r0 + sy:r1 + sy, c0 + sx:c1 + sx]
    return out


def _cutout(x: torch.Tensor, size: int, cy: torch.Tensor, cx: torch.Tensor) -> torch.Tensor:
    """Zero a ``size`` x ``size`` square with top-left corner (cy, cx) in each image (clipped)."""
    _, _, h, w = x.shape
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    in_rows = (rows >= cy[:, None]) & (rows < cy[:, None] + size)  # (N, H)
    in_cols = (cols >= cx[:, None]) & (cols < cx[:, None] + size)  # (N, W)
    return x.masked_fill_((in_rows[:, :, None] & in_cols[:, None, :])[:, None], 0)


def apply_augment(images: torch.Tensor, augment: Augment, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Augment uint8 images (N, C, H, W) with the choices in ``params`` (see
    :func:`draw_augment_params`): crop from the padded image, then flip, then cutout.

    Vectorised without per-image Python work: images are sorted so that those sharing a crop
    offset and flip flag sit together (at most 2 * (2p + 1)^2 groups), each group is one slice
    copy, and the result is put back in input order. Returns a new tensor on the same device.
    """
    params = {k: v.to(images.device) for k, v in params.items()}
    p, side = augment.crop_pad, 2 * augment.crop_pad + 1  # offsets per axis
    if augment.crop_fill == "reflect" and p >= min(images.shape[2:]):
        raise CifarlibError(f"crop_pad={p} with crop_fill='reflect' needs images wider and taller than {p} pixels "
                            f"(these are {images.shape[2]}x{images.shape[3]}); use a smaller crop_pad")
    key = torch.zeros(len(images), dtype=torch.int64, device=images.device)
    if p:
        key += params["dy"] * side + params["dx"]  # crop group, 0 .. side^2 - 1
    if augment.flip:
        key += side * side * params["flip"].long()  # flipped images sort after all others
    order = torch.argsort(key, stable=True)
    x = images.index_select(0, order)
    if p and len(images):
        x = _crop_groups(x, p, _group_bounds(key[order]), augment.crop_fill)
    if augment.flip:
        first_flipped = int((~params["flip"]).sum())
        x[first_flipped:] = x[first_flipped:].flip(3)
    if augment.cutout:
        x = _cutout(x, augment.cutout, params["cy"][order], params["cx"][order])
    return x.index_select(0, torch.argsort(order))


def epoch_seed(seed: int, epoch: int) -> int:
    """A generator seed for (seed, epoch). Not ``seed + epoch``: then seed 1's epoch k would repeat seed 0's
    epoch k + 1, and runs meant to be independent (mean ± std over seeds) would share batch orders."""
    digest = hashlib.blake2b(f"{seed}:{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class Loader:
    """Iterates (x, y) batches: x float (B, C, H, W) normalized, on ``device``; y int64 on ``device``.

    The whole split is moved to ``device`` once as uint8; each epoch (each ``iter()``) draws a
    ``randperm`` from a generator seeded with :func:`epoch_seed` (seed, epoch); augmentation and normalization
    run batched on the device. ``len(loader)`` is the number of batches.

    Per epoch the generator yields, in this order, ``randperm(N)`` and then
    :func:`draw_augment_params` for the epoch's images in batch order. These are drawn on the CPU,
    so a seed gives the same batches on every device; images are augmented ``chunk`` at a time (a
    multiple of the batch size) to bound memory. ``mean``/``std``: per channel, [0, 1] pixel units.
    """

    def __init__(self, data: ImageSet, batch_size: int, mean, std, shuffle: bool = False,
                 augment: Augment | None = None, device="cpu", channels_last: bool = False,
                 drop_last: bool = False, seed: int = 0, dtype=torch.float32, chunk: int = 8192):
        if batch_size < 1:
            raise CifarlibError(f"Loader: batch_size={batch_size} is below 1; pass a positive batch size")
        self.device = torch.device(device)
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.augment = augment if augment is not None and augment != Augment() else None
        self.channels_last, self.seed, self.dtype = channels_last, seed, dtype
        self.chunk = max(batch_size, chunk // batch_size * batch_size)
        c = self.images.shape[1]
        mean_t = torch.tensor(mean, dtype=torch.float32, device=self.device).reshape(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device).reshape(1, -1, 1, 1)
        if mean_t.shape[1] != c or std_t.shape[1] != c:
            raise CifarlibError(f"Loader: mean/std have {mean_t.shape[1]}/{std_t.shape[1]} values for {c}-channel "
                                "images; pass one value per channel (e.g. Splits.mean, Splits.std)")
        self.scale = 1.0 / (255.0 * std_t)  # x = u8 * scale + shift  ==  (u8 / 255 - mean) / std
        self.shift = -mean_t / std_t
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_images(self) -> int:
        """Images per epoch (after drop_last)."""
        return len(self) * self.batch_size if self.drop_last else len(self.labels)

    def set_epoch(self, epoch: int) -> None:
        """The next ``iter()`` draws epoch ``epoch`` of this seed's sequence."""
        self.epoch = epoch

    def normalize(self, u8: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) on the device -> normalized ``dtype`` tensor."""
        x = u8.to(torch.float32).mul_(self.scale).add_(self.shift).to(self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _first_flip(self) -> torch.Tensor:
        """flip_alternate: per image (by index), whether it is mirrored in epoch 0 (then every even epoch);
        drawn from the seed alone, so that it holds for the whole run."""
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, -1))
        return torch.rand(len(self.labels), generator=gen) < 0.5

    def __iter__(self):
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        self.epoch += 1
        n = self.num_images
        order = torch.randperm(len(self.labels), generator=gen)[:n] if self.shuffle else torch.arange(n)
        _, _, h, w = self.images.shape
        params = draw_augment_params(n, self.augment, h, w, gen) if self.augment else {}
        if self.augment and self.augment.flip_alternate:
            params["flip"] = self._first_flip()[order] ^ bool((self.epoch - 1) % 2)
        order = order.to(self.device)
        for start in range(0, n, self.chunk):
            idx = order[start:start + self.chunk]
            u8 = self.images.index_select(0, idx)
            if self.augment:
                u8 = apply_augment(u8, self.augment, {k: v[start:start + self.chunk] for k, v in params.items()})
            y = self.labels[idx]
            for b in range(0, len(idx), self.batch_size):
                yield self.normalize(u8[b:b + self.batch_size]), y[b:b + self.batch_size]


# ---------------------------------------------------------------------------------------------
# Loading real data (sources, cache, errors) and the CLI
# ---------------------------------------------------------------------------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")
ENV_VARS = {"cifar10": paths.ENV_DATA, "mnist": paths.ENV_MNIST}  # data root variable per data set
TREE_LAYOUTS = "an image-folder tree ROOT/{train,test}/<class>/*.png|jpg|jpeg or a .tar.gz/.tgz/.zip of one"
LAYOUTS = {  # what a data root may hold, per data set (for help texts and error messages)
    "cifar10": f"{TREE_LAYOUTS}, or an official cifar-10-batches-py folder (or its parent)",
    "mnist": f"{TREE_LAYOUTS}, or a torchvision MNIST root (ROOT/MNIST/raw)",
}
CACHE_FORMAT = 1  # bump when the cached payload changes; old cache files are then ignored
LABELS = {"cifar10": "CIFAR-10", "mnist": "MNIST"}
ROOT_PARAMETERS = {"cifar10": "data_root", "mnist": "mnist_root"}  # the notebooks' parameter per data set
ROOT_OPTIONS = {  # how a user gives a root, per data set (for error messages)
    "cifar10": "--data-root PATH (make report DATA=PATH, notebook data_root=PATH)",
    "mnist": "--mnist-root PATH (make report MNIST=PATH, notebook mnist_root=PATH)",
}
DOWNLOADS = {  # what torchvision fetches into the default location: the first URL it tries, and the size
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "about 170 MB"),
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz", "about 12 MB"),
}
PROBE_TIMEOUT_S = 5.0  # how long the reachability check waits for the download server


def _one_line(err) -> str:
    """An exception's text as one short line (the innermost URL error, if any)."""
    text = " ".join(str(err).split())
    url_error = re.search(r"<urlopen error (.*?)>", text)
    text = url_error.group(1) if url_error else text
    return (text[:157] + "...") if len(text) > 160 else text or type(err).__name__


def load(name: str = "cifar10", root=None, download: bool = False, cache_dir=None) -> Dataset:
    """Find, decode (or read from the cache) and return a data set.

    ``root`` (default: $CIFARLIB_DATA for cifar10, $CIFARLIB_MNIST_DATA for mnist) may hold any of
    ``LAYOUTS[name]``; the layout is detected. A given root is only read: ``download=True`` fetches
    the official files with torchvision (checksum-verified) into it when it holds no data. With no
    root given, the data comes from :func:`default_root` (``<cache>/datasets/<name>``), where
    torchvision downloads it the first time (after a reachability check of a few seconds; offline,
    a one-line error names the remedies). Decoded tensors are cached under ``cache_dir`` (default
    :func:`cifarlib.paths.cache_dir`), keyed by the source files' names, sizes and modification
    times, so a changed source is decoded again. ``info`` records ``cache`` ("hit"/"miss"),
    ``load_s`` (seconds) and the cache file. ``name="synthetic"`` returns :func:`synthetic`.
    """
    if name == "synthetic":
        return synthetic()
    if name not in ENV_VARS:
        raise CifarlibError(f"unknown dataset {name!r}; choose one of: cifar10, mnist, synthetic")
    start = time.perf_counter()
    cache = paths.cache_dir(cache_dir)
    given = _given_root(name, root)
    root = given if given is not None else default_root(name, cache)
    if _find_layout(name, root) is None:
        if given is None:
            _fetch_default(name, root)
        elif download:
            _download(name, root)
    kind, where = _detect(name, root)
    cache_file = cache / "data" / f"{name}-{kind}-{short_hash(str(where.resolve()))}-{_source_key(kind, where)}.pt"
    payload = _read_cache(cache_file)
    hit = payload is not None
    if not hit:
        payload = _decode_source(name, kind, where, cache)
        _write_cache(cache_file, payload)
    return _dataset(name, kind, root, payload, {
        "cache": "hit" if hit else "miss", "cache_file": str(cache_file), "layout": kind,
        "load_s": round(time.perf_counter() - start, 3)})


def _dataset(name: str, kind: str, root: Path, payload: dict, info: dict) -> Dataset:
    classes = list(payload["classes"])
    train = ImageSet(payload["train_images"], payload["train_labels"])
    test = ImageSet(payload["test_images"], payload["test_labels"])
    source = "torchvision" if kind == "torchvision-mnist" else payload["layout"]  # what was read, not how it came
    info.update(train_per_class=class_counts(train.labels, len(classes)),
                test_per_class=class_counts(test.labels, len(classes)))
    return Dataset(name, source, classes, train, test, short_hash(name, payload["content"]), str(root), info)


# ----------------------------------------------------------------------------- finding the source

def _given_root(name: str, root) -> Path | None:
    """The root the user gave: the argument, else the data set's environment variable; None if neither."""
    if root is None:
        root = os.environ.get(ENV_VARS[name]) or None
    return Path(root).expanduser() if root is not None else None


def default_root(name: str, cache_dir=None) -> Path:
    """Where ``name`` lives when no root is given: ``<cache>/datasets/<name>`` (a torchvision root,
    filled by the first :func:`load`). Deleting it only costs a new download."""
    return paths.cache_dir(cache_dir) / "datasets" / name


def check_source(name: str, root=None, cache_dir=None) -> str:
    """Where :func:`load` with these arguments will get ``name`` from, as one short line; or a one-line
    CifarlibError saying why it cannot, with the remedies. Decodes nothing and downloads nothing.

    A given root (argument or environment variable) must exist and hold a known layout. Without one,
    the default location must hold the data already or its download server must answer
    :func:`probe` within ``PROBE_TIMEOUT_S`` seconds."""
    if name not in ENV_VARS:
        raise CifarlibError(f"unknown dataset {name!r}; choose one of: {', '.join(ENV_VARS)}")
    given = _given_root(name, root)
    if given is not None:
        kind, where = _detect(name, given)
        origin = "" if root is not None else f", from ${ENV_VARS[name]}"
        return f"{LABELS[name]}: {kind} at {where}{origin}"
    home = default_root(name, cache_dir)
    found = _find_layout(name, home)
    if found is not None:
        return f"{LABELS[name]}: {found[0]} at {found[1]} (the default location)"
    return _check_download(name, home)


def _check_download(name: str, home: Path) -> str:
    """"Downloaded on first use" when :func:`probe` reaches the server of ``name``; else the one-line
    error naming the three remedies (internet once, a local copy, the environment variable)."""
    url, size = DOWNLOADS[name]
    reason = probe(url)
    if reason is not None:
        raise CifarlibError(f"{LABELS[name]} is not in {home} yet and cannot be downloaded "
                            f"({_host(url)}: {reason}); {_remedies(name)}")
    return f"{LABELS[name]}: not in {home} yet, downloaded there on first use ({size} from {_host(url)})"


def probe(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the server of ``url`` answers an HTTP HEAD request within ``timeout`` seconds (any
    status counts: the network works), else why not, in a few words. Goes through the proxy urllib
    uses, as torchvision's download does; waits at most ``timeout`` seconds, name lookup included."""
    import urllib.error
    import urllib.request

    answer: list[str | None] = []

    def ask():
        request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "cifarlib"})
        try:
            with urllib.request.urlopen(request, timeout=timeout):
                answer.append(None)
        except urllib.error.HTTPError:
            answer.append(None)
        except Exception as err:  # noqa: BLE001 - any failure means: cannot download from here
            answer.append(_one_line(err))

    worker = threading.Thread(target=ask, name="cifarlib-probe", daemon=True)  # a hung name lookup
    worker.start()  # cannot be interrupted; a daemon thread left waiting on it does not delay exit
    worker.join(timeout)
    return answer[0] if answer else f"no answer within {timeout:g} s"


def _host(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0]


def _remedies(name: str) -> str:
    return (f"either connect to the internet once (the download is kept there), or point {ROOT_OPTIONS[name]} "
            f"at a local copy ({LAYOUTS[name]}), or set ${ENV_VARS[name]} to one")


def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _find_layout(name: str, root: Path) -> tuple[str, Path] | None:
    """(kind, folder) of the data under ``root``, looking also inside one wrapping folder; or None.
    kind: "image-folder" | "image-archive" | "cifar-batches" | "torchvision-mnist"."""
    if root.is_file():
        return ("image-archive", root) if _is_archive(root) else None
    if not root.is_dir():
        return None
    entries = _visible(root)
    wrapper = entries if len(entries) == 1 and entries[0].is_dir() else []
    for folder in (root, *wrapper):
        if name == "cifar10":
            for candidate in (folder, folder / "cifar-10-batches-py"):
                if (candidate / "batches.meta").is_file():
                    return "cifar-batches", candidate
        if name == "mnist" and (folder / "MNIST" / "raw").is_dir():
            return "torchvision-mnist", folder
        if (folder / "train").is_dir() and (folder / "test").is_dir():
            return "image-folder", folder
    return None


def _detect(name: str, root: Path) -> tuple[str, Path]:
    """Like :func:`_find_layout`, but a root without data is a one-line error saying why."""
    found = _find_layout(name, root)
    if found is not None:
        return found
    env, layouts = ENV_VARS[name], LAYOUTS[name]
    if not root.exists():
        raise CifarlibError(f"data root {root} does not exist; pass --data-root PATH or set ${env} to {layouts}")
    if root.is_file():
        raise CifarlibError(f"data root {root} is a file but not a .tar.gz/.tgz/.zip archive; accepted: {layouts}")
    entries = _visible(root)
    if not entries:
        raise CifarlibError(f"data root {root} is empty; put {layouts} there (or use --download with internet)")
    names = {p.name for p in entries}
    for have, lack in (("train", "test"), ("test", "train")):
        if have in names and lack not in names:
            raise CifarlibError(f"data root {root} has a {have}/ folder but no {lack}/ folder; "
                                f"an image-folder tree needs both ROOT/train/<class>/ and ROOT/test/<class>/")
    shown = ", ".join(sorted(names)[:8]) + (", ..." if len(names) > 8 else "")
    raise CifarlibError(f"data root {root} is not a recognised layout (it holds: {shown}); accepted: {layouts}")


def _scan_tree(root: Path) -> dict[str, dict[str, list[os.DirEntry]]]:
    """split -> class -> image files (sorted by name) of an image-folder tree."""
    tree = {}
    for split_name in ("train", "test"):
        with os.scandir(root / split_name) as it:
            class_dirs = sorted((e for e in it if e.is_dir() and not e.name.startswith(".")), key=lambda e: e.name)
        tree[split_name] = {}
        for cls in class_dirs:
            with os.scandir(cls.path) as it:
                files = [e for e in it if e.is_file() and not e.name.startswith(".")
                         and e.name.lower().endswith(IMAGE_SUFFIXES)]
            tree[split_name][cls.name] = sorted(files, key=lambda e: e.name)
    return tree


def _source_key(kind: str, where: Path) -> str:
    """Cheap fingerprint of the source: names, sizes and modification times of its files."""
    if kind == "image-folder":
        files = [(f"{s}/{c}/{e.name}", e.stat()) for s, classes in _scan_tree(where).items()
                 for c, entries in classes.items() for e in entries]
    elif kind == "image-archive":
        files = [(where.name, where.stat())]
    else:
        folder = where / "MNIST" / "raw" if kind == "torchvision-mnist" else where
        files = [(p.name, p.stat()) for p in _visible(folder) if p.is_file()]
    return short_hash(CACHE_FORMAT, kind, [(n, st.st_size, st.st_mtime_ns) for n, st in files])


# ----------------------------------------------------------------------------- decoding

def _decode_source(name: str, kind: str, where: Path, cache: Path) -> dict:
    """Decode a source into the cache payload (tensors, classes, layout, content hash)."""
    if kind == "image-archive":
        archive, where = where, _extract_archive(where, cache)
        found = _find_layout(name, where)
        if found is None or found[0] == "image-archive":
            raise CifarlibError(f"archive {archive} holds no recognised layout; accepted: {LAYOUTS[name]}")
        kind, where = found
    if kind == "image-folder":
        payload = _decode_tree(where)
    elif kind == "cifar-batches":
        payload = _read_cifar_batches(where)
    else:
        payload = _read_torchvision_mnist(where)
    payload.update(format=CACHE_FORMAT, layout=kind, content=_content_hash(payload))
    return payload


def _extract_archive(archive: Path, cache: Path) -> Path:
    """Extract ``archive`` once into ``<cache>/extracted/``; later calls reuse the folder.

    Extraction goes to a temporary folder that is renamed into place, so an interrupted run
    leaves nothing half-written behind."""
    st = archive.stat()
    stem = re.sub(r"(\.tar\.gz|\.tgz|\.zip)$", "", archive.name, flags=re.IGNORECASE)
    dest = cache / "extracted" / f"{stem}-{short_hash(str(archive.resolve()), st.st_size, st.st_mtime_ns)}"
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        try:
            if archive.name.lower().endswith(".zip"):
                with zipfile.ZipFile(archive) as zf:
                    zf.extractall(tmp)
            else:
                with tarfile.open(archive, "r:gz") as tf:
                    _safe_extract_tar(tf, tmp)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
            raise CifarlibError(f"cannot extract archive {archive} ({_one_line(err)}); "
                                "download or create it again") from None
        try:
            os.replace(tmp, dest)
        except OSError:
            if not dest.is_dir():  # not a concurrent extraction that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _safe_extract_tar(tf: tarfile.TarFile, dest: Path) -> None:
    """Extract refusing absolute paths, '..' and links out of ``dest`` (tarfile's "data" filter
    where this Python has it, else a plain check of the member names)."""
    if hasattr(tarfile, "data_filter"):
        tf.extractall(dest, filter="data")
        return
    for member in tf.getmembers():
        if member.name.startswith("/") or ".." in Path(member.name).parts or member.issym() or member.islnk():
            raise tarfile.TarError(f"unsafe member {member.name!r}")
    tf.extractall(dest)


def _check_tree(root: Path, tree: dict) -> None:
    train, test = tree["train"], tree["test"]
    if not train:
        raise CifarlibError(f"{root / 'train'} has no class folders; expected ROOT/train/<class>/*.png|jpg|jpeg")
    if set(train) != set(test):
        only_train = ", ".join(sorted(set(train) - set(test))) or "none"
        only_test = ", ".join(sorted(set(test) - set(train))) or "none"
        raise CifarlibError(f"train and test class folders differ in {root} (only in train: {only_train}; "
                            f"only in test: {only_test}); give train/ and test/ the same class folders")
    for split_name, classes in tree.items():
        for cls, files in classes.items():
            if not files:
                raise CifarlibError(f"class folder {root / split_name / cls} has no images (*.png, *.jpg, *.jpeg); "
                                    "add images or remove the class from both train/ and test/")


def _decode_tree(root: Path) -> dict:
    """Decode an image-folder tree; classes are the sorted folder names, labels their indices."""
    tree = _scan_tree(root)
    _check_tree(root, tree)
    classes = sorted(tree["train"])
    files = {s: [e.path for c in classes for e in tree[s][c]] for s in ("train", "test")}
    images = _decode_files(files["train"] + files["test"])
    n_train = len(files["train"])
    payload = {"classes": classes, "train_images": images[:n_train].clone(), "test_images": images[n_train:].clone()}
    for s in ("train", "test"):
        payload[f"{s}_labels"] = torch.tensor([k for k, c in enumerate(classes) for _ in tree[s][c]], dtype=torch.int64)
    return payload


def _decode_file(path: str) -> numpy.ndarray:
    """One PNG/JPEG file -> uint8 (H, W, 3) array; grayscale, palette and alpha images become RGB."""
    try:
        with Image.open(path) as image:
            return numpy.asarray(image.convert("RGB"))
    except UnidentifiedImageError:
        raise CifarlibError(f"cannot decode image {path} (not an image format PIL can read); "
                            "delete or replace the file") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise CifarlibError(f"cannot decode image {path} ({_one_line(err)}); delete or replace the file") from None


def _decode_chunk(files: list[str]) -> list[numpy.ndarray]:
    return [_decode_file(f) for f in files]


def _decode_files(files: list[str]) -> torch.Tensor:
    """Decode image files (PIL, threads overlap the reads) -> uint8 (N, C, H, W); C = 1 when every
    image is gray (all three channels equal), else 3."""
    chunks = [files[i:i + 512] for i in range(0, len(files), 512)]
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        images = [image for part in pool.map(_decode_chunk, chunks) for image in part]
    height, width = images[0].shape[:2]
    for path, image in zip(files, images):
        if image.shape[:2] != (height, width):
            raise CifarlibError(f"images of mixed sizes: {path} is {image.shape[0]}x{image.shape[1]} but {files[0]} "
                                f"is {height}x{width} (height x width); resize all images to one size")
    stacked = torch.from_numpy(numpy.stack(images)).permute(0, 3, 1, 2)  # (N, 3, H, W) view
    gray = torch.equal(stacked[:, 0], stacked[:, 1]) and torch.equal(stacked[:, 1], stacked[:, 2])
    return stacked[:, :1].contiguous() if gray else stacked.contiguous()


def _content_hash(payload: dict) -> str:
    """SHA-256 of the decoded tensors and class names: the data's identity, independent of paths."""
    digest = hashlib.sha256(json.dumps(payload["classes"]).encode("utf-8"))
    for key in ("train_images", "train_labels", "test_images", "test_labels"):
        tensor = payload[key].contiguous()
        digest.update(f"{key}{tuple(tensor.shape)}".encode("utf-8"))
        digest.update(tensor.numpy().data)
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------- official formats

def _cifar_batch_md5() -> dict[str, list[tuple[str, str]]]:
    """Official cifar-10-batches-py files and their MD5 sums (torchvision's list), per part."""
    from torchvision.datasets import CIFAR10

    return {"train": [tuple(x) for x in CIFAR10.train_list], "test": [tuple(x) for x in CIFAR10.test_list],
            "meta": [(CIFAR10.meta["filename"], CIFAR10.meta["md5"])]}


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_cifar_batches(folder: Path) -> dict:
    """Verify (MD5) and read the official pickled batches: 10000 x 3072 uint8 rows each."""
    fix = f"delete {folder} and download it again (--download / download=True, or copy it anew)"
    parts = _cifar_batch_md5()
    for file_name, md5 in (entry for files in parts.values() for entry in files):
        path = folder / file_name
        if not path.is_file():
            raise CifarlibError(f"official CIFAR-10 folder {folder} lacks {file_name}; {fix}")
        if _md5(path) != md5:
            raise CifarlibError(f"{path} fails its MD5 check ({path.stat().st_size:,} bytes, expected md5 {md5}): "
                                f"the file is truncated or altered; {fix}")
    meta = _unpickle(folder / parts["meta"][0][0], fix)
    payload = {"classes": [str(c) for c in meta["label_names"]]}
    for part in ("train", "test"):
        batches = [_unpickle(folder / file_name, fix) for file_name, _ in parts[part]]
        rows = numpy.concatenate([numpy.asarray(b["data"], dtype=numpy.uint8) for b in batches])
        payload[f"{part}_images"] = torch.from_numpy(rows.reshape(-1, 3, 32, 32).copy())
        payload[f"{part}_labels"] = torch.tensor([y for b in batches for y in b["labels"]], dtype=torch.int64)
    return payload


def _unpickle(path: Path, fix: str) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, AttributeError) as err:
        raise CifarlibError(f"cannot read {path} ({_one_line(err)}): the file is truncated or corrupt; {fix}") from None


def _read_torchvision_mnist(root: Path) -> dict:
    from torchvision.datasets import MNIST

    try:
        parts = {p: MNIST(str(root), train=(p == "train"), download=False) for p in ("train", "test")}
    except RuntimeError as err:
        raise CifarlibError(f"torchvision MNIST files under {root / 'MNIST' / 'raw'} are missing or fail their checks "
                            f"({_one_line(err)}); delete that folder and use --download again") from None
    payload = {"classes": list(MNIST_CLASSES)}
    for p, d in parts.items():
        payload[f"{p}_images"] = d.data.to(torch.uint8).unsqueeze(1).contiguous()
        payload[f"{p}_labels"] = d.targets.to(torch.int64)
    return payload


def fetch(name: str, root: Path) -> None:
    """Download the official files of ``name`` into ``root`` with torchvision (which verifies their MD5
    sums and shows its progress bar). Its messages go to stderr, so that a notebook's printed output
    stays clean. Raises what torchvision raises."""
    from torchvision import datasets

    dataset = {"cifar10": datasets.CIFAR10, "mnist": datasets.MNIST}[name]
    with contextlib.redirect_stdout(sys.stderr):
        dataset(str(root), train=False, download=True)  # fetches both splits; reads back only the test one


def _download(name: str, root: Path) -> None:
    """``download=True`` into a given ``root``: :func:`fetch`, failures as one line."""
    try:
        fetch(name, root)
    except (OSError, RuntimeError) as err:  # urllib.error.URLError is an OSError
        raise CifarlibError(f"cannot download {name} ({_one_line(err)}); this machine looks offline: point at local "
                            f"data with --data-root PATH or ${ENV_VARS[name]} ({LAYOUTS[name]})") from None


def _fetch_default(name: str, home: Path) -> None:
    """Fill the default location ``home``: first the reachability check (seconds; offline, the one-line
    error with the remedies), then :func:`fetch` into a temporary folder beside it whose contents are
    moved in when complete, so that ``home`` never holds half a data set."""
    import http.client  # IncompleteRead and friends: a connection lost mid-download

    _check_download(name, home)
    url, size = DOWNLOADS[name]
    print(f"downloading {LABELS[name]} ({size}) into {home} with torchvision; later runs reuse it", file=sys.stderr)
    home.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{home.name}.", dir=home.parent))
    try:
        try:
            fetch(name, tmp)
        except (OSError, RuntimeError, http.client.HTTPException) as err:
            raise CifarlibError(f"cannot download {LABELS[name]} from {_host(url)} into {home} ({_one_line(err)}); "
                                f"{_remedies(name)}") from None
        home.mkdir(exist_ok=True)
        for entry in sorted(tmp.iterdir()):
            _move_in(entry, home / entry.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_in(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target`` (one step: a folder appears whole or not at all)."""
    try:
        os.replace(source, target)
    except OSError as err:
        if target.is_dir() and source.is_dir():  # a concurrent download finished first
            return
        raise CifarlibError(f"cannot move the download to {target} ({_one_line(err)}); "
                            f"delete {target.parent} and run again") from None


# ----------------------------------------------------------------------------- cache

def _read_cache(path: Path) -> dict | None:
    """The cached payload, or None when missing, unreadable or of an older format (then rebuilt)."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, weights_only=True)
    except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, never fatal
        return None
    return payload if isinstance(payload, dict) and payload.get("format") == CACHE_FORMAT else None


def _write_cache(path: Path, payload: dict) -> None:
    """Write atomically; drop older cache files of the same source. A read-only cache only warns."""
    try:
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    except OSError as err:
        warnings.warn(f"could not write the data cache {path} ({_one_line(err)}); the next load decodes again")
        return
    prefix = path.name.rsplit("-", 1)[0]
    for old in path.parent.glob(f"{prefix}-*.pt"):
        if old != path:
            old.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- CLI

def describe(ds: Dataset) -> str:
    """A short multi-line summary: source, root, image shape, classes, counts per split and class."""
    c, h, w = ds.train.images.shape[1:]
    train_counts = class_counts(ds.train.labels, len(ds.classes))
    test_counts = class_counts(ds.test.labels, len(ds.classes))
    width = max(len("class"), *(len(c) for c in ds.classes))
    lines = [f"dataset   {ds.name} (source: {ds.source}, layout: {ds.info.get('layout', ds.source)})",
             f"root      {ds.root}",
             f"images    {c} x {h} x {w} (channels x height x width), uint8",
             f"classes   {len(ds.classes)}: {' '.join(ds.classes)}",
             f"identity  {ds.identity}",
             f"counts    train {len(ds.train):,}  test {len(ds.test):,}",
             f"          {'class':<{width}}  {'train':>7}  {'test':>7}"]
    lines += [f"          {cls:<{width}}  {a:>7,}  {b:>7,}" for cls, a, b in zip(ds.classes, train_counts, test_counts)]
    return "\n".join(lines)


def cli(argv: list[str]) -> int:
    """``python -m cifarlib data [--data-root PATH] [--dataset cifar10|mnist]``."""
    from cifarlib.cli import OneLineParser

    parser = OneLineParser(
        prog="python -m cifarlib data",
        description="Show what data set a data root holds, and how long loading takes: cold (cache miss: "
                    "decoded from the source) or warm (cache hit), then a second, warm load.")
    parser.add_argument("--dataset", choices=["cifar10", "mnist"], default="cifar10")
    parser.add_argument("--data-root", default=None,
                        help=f"data root (default: ${paths.ENV_DATA} for cifar10, ${paths.ENV_MNIST} for mnist, "
                             "else <cache>/datasets/<dataset>, downloaded there the first time); "
                             f"cifar10: {LAYOUTS['cifar10']}; mnist: {LAYOUTS['mnist']}")
    parser.add_argument("--download", action="store_true",
                        help="fetch the official files with torchvision into --data-root when it holds no data")
    parser.add_argument("--cache-dir", default=None, help=f"decoded-tensor cache, and datasets/ there the default "
                                                          f"data location (default: ${paths.ENV_CACHE} "
                                                          "or ~/.cache/cifarlib); safe to delete")
    args = parser.parse_args(argv)
    ds = load(args.dataset, args.data_root, download=args.download, cache_dir=args.cache_dir)
    warm = load(args.dataset, ds.root, cache_dir=args.cache_dir)
    first = "cold (cache miss: decoded the source)" if ds.info["cache"] == "miss" else "warm (cache hit)"
    second = "warm (cache hit)" if warm.info["cache"] == "hit" else "cache miss again: is the cache writable?"
    print(describe(ds))
    print(f"load      {ds.info['load_s']:.2f} s {first}; second load {warm.info['load_s']:.2f} s {second}")
    print(f"cache     {ds.info['cache_file']}")
    print(f"loader    {time_loader_epoch(ds):.2f} s for one epoch of training batches (90% of train, batch 64, "
          f"crop 4 + flip, normalized) on the CPU with {torch.get_num_threads()} thread(s)")
    return 0


def time_loader_epoch(ds: Dataset, batch_size: int = 64, device="cpu") -> float:
    """Seconds to draw one epoch of augmented, normalized training batches from :class:`Loader` alone
    (the split of a default training run: 10% held out for validation)."""
    sp = split(ds, val_fraction=0.1, seed=0)
    loader = Loader(sp.train, batch_size, sp.mean, sp.std, shuffle=True, augment=Augment(crop_pad=4, flip=True),
                    device=device, seed=0)
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start
