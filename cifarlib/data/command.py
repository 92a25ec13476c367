"""``python -m cifarlib data``: what a data root holds, and how long loading and batching take."""

from __future__ import annotations

import time

import torch

from cifarlib import paths
from cifarlib.data.loader import Augment, Loader
from cifarlib.data.sets import Dataset, class_counts, split
from cifarlib.data.sources import LAYOUTS, load
from cifarlib.errors import OneLineParser


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


def main(argv: list[str]) -> int:
    """``python -m cifarlib data [--data-root PATH] [--dataset cifar10|mnist]``."""
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
