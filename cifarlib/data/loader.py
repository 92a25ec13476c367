"""Batches on the device: batched augmentation (crop, flip, cutout) and the :class:`Loader`.

The whole split moves to the device once as uint8; each epoch draws its order and augmentation from a
generator seeded by (seed, epoch), so a run's batches are the same on every machine.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

from cifarlib.data.sets import ImageSet
from cifarlib.errors import CifarlibError


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
        height, width = self.images.shape[2:]
        for key, value in (("crop_pad", augment.crop_pad if augment else 0), ("cutout", augment.cutout if augment else 0)):
            if value >= min(height, width):  # every crop or cutout could blank a whole image
                raise CifarlibError(f"{key}={value} is not smaller than the {height}x{width} images (height x width); "
                                    f"use a {key} below {min(height, width)} (CIFAR-10 recipes: crop_pad 4, cutout 8-16)")
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
