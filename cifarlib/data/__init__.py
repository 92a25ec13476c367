"""Data: find a data set, decode it once into uint8 tensors (cached), split it, and batch it on the device.

Four modules, each importing only the ones above it in this list:

    sets     containers (ImageSet, Dataset, Splits), synthetic data, seeded subset and split
    loader   batched on-device augmentation (Augment) and the Loader
    sources  files on disk: layouts, decoding, archives, checksums, the default download, the cache
    command  ``python -m cifarlib data`` (imported by nothing but the CLI)

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
    pixels = decode_image(path)                       # uint8 (H, W, 3), size checked before decoding

Settings that tests change (``MAX_IMAGE_PIXELS``, ``probe``) live in :mod:`cifarlib.data.sources`;
change them there, not on this package.
"""

from cifarlib.data.loader import CROP_FILLS, Augment, Loader, apply_augment, draw_augment_params, epoch_seed
from cifarlib.data.sets import (CIFAR10_CLASSES, MNIST_CLASSES, Dataset, ImageSet, Splits, channel_stats,
                                class_counts, short_hash, split, subset, synthetic)
from cifarlib.data.sources import (DOWNLOADS, ENV_VARS, LABELS, LAYOUTS, ROOT_OPTIONS, ROOT_PARAMETERS,
                                   check_source, decode_image, default_root, fetch, load, probe)

__all__ = ["CROP_FILLS", "Augment", "Loader", "apply_augment", "draw_augment_params", "epoch_seed",
           "CIFAR10_CLASSES", "MNIST_CLASSES", "Dataset", "ImageSet", "Splits", "channel_stats", "class_counts",
           "short_hash", "split", "subset", "synthetic", "DOWNLOADS", "ENV_VARS", "LABELS", "LAYOUTS",
           "ROOT_OPTIONS", "ROOT_PARAMETERS", "check_source", "decode_image", "default_root", "fetch", "load", "probe"]
