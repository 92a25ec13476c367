"""What the ResNet18 transfer model sees (report part 4, assignment 3(e)-(g)).

- :func:`first_layer_activations`: an image resized to 256 x 256, ImageNet-normalized, through ``conv1``
  only -> 1 x 64 x 128 x 128.
- :func:`last_conv_activations`: the same image through every child of the ResNet except ``avgpool``
  and ``fc`` (module slicing) -> 1 x 512 x 8 x 8 (the output of layer4, after its last BN + ReLU).
- :func:`plot_activations`: the image next to the strongest activation maps, on one shared scale.
- :func:`plot_filters`: the 64 first-layer filters as RGB tiles (``torchvision.utils.make_grid``).

An image is a CIFAR-10 test index (of the data set at ``data_root`` / ``$CIFARLIB_DATA``), an image
file path, or a tensor (C, H, W) of uint8 or [0, 1] floats.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from cifarlib import data, tables
from cifarlib.errors import CifarlibError
from cifarlib.models.transfer import NOT_PRETRAINED, ResNet18Transfer

VIS_SIZE = 256  # the assignment resizes the image to 256 x 256 before the first layer


def load_image(image, data_root=None) -> tuple[torch.Tensor, str]:
    """(pixels (3, H, W) float in [0, 1], a label) for a CIFAR-10 test index, a file path or a tensor."""
    if isinstance(image, torch.Tensor):
        pixels = image.float() / 255 if image.dtype == torch.uint8 else image.float()
        return pixels, "image"
    if isinstance(image, int):
        return _cifar_test_image(image, data_root)
    return _image_file(Path(image))


def _cifar_test_image(index: int, data_root=None) -> tuple[torch.Tensor, str]:
    test = (ds := data.load("cifar10", root=data_root)).test
    if not -len(test) <= index < len(test):
        raise CifarlibError(f"image index {index} is outside the CIFAR-10 test set (0..{len(test) - 1}); "
                            "pass another image_index")
    label = ds.classes[int(test.labels[index])]
    return test.images[index].float() / 255, f"CIFAR-10 test image {index} ({label})"


def _image_file(path: Path) -> tuple[torch.Tensor, str]:
    rgb = data.decode_image(path, fix="pass a PNG/JPEG file or a CIFAR-10 test index")
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255, path.name


def resized(model: ResNet18Transfer, pixels: torch.Tensor, size: int = VIS_SIZE) -> torch.Tensor:
    """(1, 3, size, size) pixels: upsampled as the model upsamples its inputs; a larger image
    (a photo) is shrunk with antialiasing instead."""
    x = pixels[None].float()
    if max(x.shape[-2:]) > size:
        return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True).clamp(0, 1)
    return model.resize(x, size).clamp(0, 1)


@torch.inference_mode()
def _through(model: ResNet18Transfer, layers: nn.Module, image, size: int, data_root):
    pixels, _ = load_image(image, data_root)
    device = next(model.parameters()).device
    x = resized(model, pixels, size).to(device)
    was_training = model.training
    model.eval()
    try:
        acts = layers(model.imagenet_normalize(x)).float().cpu()
    finally:
        model.train(was_training)
    return x[0].cpu(), acts


def first_layer_activations(model: ResNet18Transfer, image, size: int = VIS_SIZE, data_root=None):
    """(image (3, size, size) in [0, 1], conv1 output (1, 64, size/2, size/2)). ``conv1`` alone:
    before BN and ReLU, so the values are signed."""
    return _through(model, model.net.conv1, image, size, data_root)


def last_conv_activations(model: ResNet18Transfer, image, size: int = VIS_SIZE, data_root=None) -> torch.Tensor:
    """(1, 512, size/32, size/32): the image through all children of the ResNet but the last two
    (``avgpool``, ``fc``), i.e. the output of ``layer4`` after its final BN and ReLU."""
    body = nn.Sequential(*list(model.net.children())[:-2])
    return _through(model, body, image, size, data_root)[1]


# ---- figures -------------------------------------------------------------------------------------

def _flagged(title: str, pretrained: bool) -> str:
    """The title, with a second line saying NOT PRETRAINED for a model that started from random weights."""
    return title if pretrained else f"{title}\n{NOT_PRETRAINED}: random weights, not ImageNet features"


def strongest_channels(acts: torch.Tensor, n: int) -> list[int]:
    """The ``n`` channels with the largest mean |activation|, strongest first."""
    acts = acts.reshape(-1, *acts.shape[-2:])
    return acts.abs().mean(dim=(1, 2)).argsort(descending=True)[:n].tolist()


def _image_axes(fig, n: int):
    """One big axes for the image on the left, ``n`` small ones (up to 8 per row) on the right."""
    cols = min(n, 8)
    rows = math.ceil(n / cols)
    grid = fig.add_gridspec(rows, cols + 2)
    return fig.add_subplot(grid[:, :2]), [fig.add_subplot(grid[i // cols, 2 + i % cols]) for i in range(n)]


def _shared_scale(maps: torch.Tensor) -> dict:
    """imshow colour settings common to all maps: diverging around 0 for signed values, else 0..max."""
    top = float(maps.abs().max()) or 1.0
    if bool((maps < 0).any()):
        return dict(cmap="RdBu_r", vmin=-top, vmax=top)
    return dict(cmap="viridis", vmin=0, vmax=top)


def plot_activations(image: torch.Tensor, acts: torch.Tensor, n: int = 16, title: str = "Activations",
                     channels=None, pretrained: bool = True):
    """The image (3, H, W in [0, 1]) next to ``n`` activation maps of ``acts`` ((1,) C, h, w): the
    ``channels`` given, else the strongest ones. All maps share one colour scale (colorbar); signed
    maps use a diverging scale centred on 0."""
    maps = acts.reshape(-1, *acts.shape[-2:]).float()
    which = "" if channels is not None else "strongest "
    channels = list(channels) if channels is not None else strongest_channels(maps, n)
    scale = _shared_scale(maps[channels])
    rows = math.ceil(len(channels) / min(len(channels), 8))
    fig = plt.figure(figsize=(0.55 * (min(len(channels), 8) + 2) + 0.9, 0.8 * rows + 1.0), layout="constrained")
    img_ax, map_axes = _image_axes(fig, len(channels))
    img_ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
    img_ax.set_title(f"input {image.shape[-1]}×{image.shape[-2]}", fontsize=8)
    for ax, c in zip(map_axes, channels):
        im = ax.imshow(maps[c].numpy(), interpolation="nearest", **scale)
        ax.set_title(f"ch {c}", fontsize=7.5, pad=2)
    for ax in [img_ax, *map_axes]:
        ax.axis("off")
    bar = fig.colorbar(im, ax=map_axes, fraction=0.03, pad=0.02)
    bar.set_label("activation (shared scale)", fontsize=7.5)
    bar.ax.tick_params(labelsize=7.5)
    fig.suptitle(_flagged(f"{title}\nthe {len(channels)} {which}of {len(maps)} channels, "
                          f"{maps.shape[-2]}×{maps.shape[-1]}", pretrained), fontsize=9)
    return fig


def plot_filters(conv1_weight: torch.Tensor, title: str = "First-layer filters", nrow: int = 8,
                 pretrained: bool = True):
    """All filters of a conv layer with 3 input channels as RGB tiles (``make_grid``), each scaled to
    [0, 1] on its own (``scale_each``): colours compare within a tile, not between tiles."""
    w = conv1_weight.detach().float().cpu()
    if w.dim() != 4 or w.shape[1] != 3:
        raise CifarlibError(f"plot_filters needs conv weights (out, 3, k, k), got shape {tuple(w.shape)}; "
                            "pass model.net.conv1.weight")
    grid = torchvision.utils.make_grid(w, nrow=nrow, padding=1, normalize=True, scale_each=True, pad_value=1.0)
    fig, ax = plt.subplots(figsize=(4.8, 4.8 * grid.shape[1] / grid.shape[2] + 0.6))
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.axis("off")
    k = w.shape[-1]
    ax.set_title(_flagged(f"{title}: {w.shape[0]} filters of {k}×{k}×3", pretrained), fontsize=10)
    ax.text(0.5, -0.02, "each filter min-max scaled to [0, 1] on its own; mid-grey is not necessarily 0",
            transform=ax.transAxes, ha="center", va="top", fontsize=8.5)
    return fig


# ---- what the figures show, in numbers -------------------------------------------------------------

def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double() - a.double().mean(), b.flatten().double() - b.double().mean()
    return float((a @ b) / (a.norm() * b.norm()).clamp(min=1e-12))


def first_layer_summary(image: torch.Tensor, acts: torch.Tensor, n: int = 16) -> dict:
    """For the ``n`` strongest conv1 channels: how many follow the image's brightness (|correlation|
    with the grey image at the maps' resolution above 0.5) and how many its edges (correlation with
    the grey image's gradient magnitude above 0.3 while not following brightness)."""
    maps = acts.reshape(-1, *acts.shape[-2:]).float()
    grey = F.interpolate(image.mean(0)[None, None], size=maps.shape[-2:], mode="area")[0, 0]
    edges = torch.zeros_like(grey)
    edges[1:-1, 1:-1] = ((grey[1:-1, 2:] - grey[1:-1, :-2]) ** 2 + (grey[2:, 1:-1] - grey[:-2, 1:-1]) ** 2).sqrt()
    shown = strongest_channels(maps, n)
    bright = [c for c in shown if abs(_corr(maps[c], grey)) > 0.5]
    edge = [c for c in shown if c not in bright and _corr(maps[c].abs(), edges) > 0.3]
    return {"shown": len(shown), "channels": len(maps), "brightness": len(bright), "edges": len(edge),
            "inverted": sum(_corr(maps[c], grey) < 0 for c in bright)}


def last_layer_summary(acts: torch.Tensor, n: int = 16) -> dict:
    """How sparse the layer4 output is for one image, and how much of the ``n`` strongest channels'
    activation lies in the central half of the map (where CIFAR-10 objects usually are)."""
    maps = acts.reshape(-1, *acts.shape[-2:]).float()
    h, w = maps.shape[-2:]
    centre = maps[:, h // 4: h - h // 4, w // 4: w - w // 4]
    shown = strongest_channels(maps, n)
    total = float(maps[shown].sum())
    return {"zero_values": float((maps == 0).float().mean()), "silent_channels": int((maps.amax(dim=(1, 2)) == 0).sum()),
            "channels": len(maps), "centre_share": float(centre[shown].sum()) / total if total > 0 else float("nan"),
            "centre_area": centre.shape[-1] * centre.shape[-2] / (h * w), "side": h}


def filter_summary(weight: torch.Tensor) -> dict:
    """How many filters are nearly grey (their three colour channels correlate above 0.9: they weigh
    brightness, not colour) and how many weigh colours against each other (some pair of channels
    correlates below 0)."""
    w = weight.detach().float().cpu()
    grey = opponent = 0
    for f in w:
        r = [_corr(f[i], f[j]) for i, j in ((0, 1), (0, 2), (1, 2))]
        grey += min(r) > 0.9
        opponent += min(r) < 0
    return {"filters": len(w), "grey": grey, "opponent": opponent, "side": w.shape[-1]}


# ---- the discussion of Task 3(e)-(g), from those counts (any count, any profile) -----------------

def _verb(n: int, one: str, many: str) -> str:
    return one if n == 1 else many


def _some_of(n: int, total: int, noun: str) -> str:
    """The subject of a sentence about ``n`` of ``total``: "All 16 maps shown" or "Of the 16 maps shown, three"."""
    return f"All {total} {noun}" if n == total else f"Of the {total} {noun}, {tables.say_count(n)}"


def first_layer_text(s: dict) -> str:
    """Task 3(e)'s paragraph from :func:`first_layer_summary`."""
    shown, bright, edges, inverted = s["shown"], s["brightness"], s["edges"], s["inverted"]
    text = "Each map is one filter slid over the image, at half its resolution, so it is still a picture of the input. "
    if bright == 0:
        text += (f"None of the {shown} maps shown follows the image's brightness (a correlation with the grey image "
                 "above 0.5 in size). ")
    else:
        flipped = "" if not inverted else ", inverted" if bright == 1 else f", {inverted} of them inverted"
        text += (f"{_some_of(bright, shown, 'maps shown')} {_verb(bright, 'follows', 'follow')} the image's brightness ({_verb(bright, 'its', 'their')} "
                 f"correlation with the grey image exceeds 0.5 in size{flipped}): {_verb(bright, 'it responds', 'they respond')} "
                 "to brightness or colour. ")
    if edges == 0:
        return text + "No map shown is an edge detector (a map whose magnitude follows the brightness gradient)."
    return text + (f"Of the rest, {tables.say_count(edges)} {_verb(edges, 'responds', 'respond')} to the image's "
                   f"edges instead ({_verb(edges, 'its', 'their')} magnitude follows the brightness gradient): "
                   f"{_verb(edges, 'it is an edge detector', 'they are edge detectors')} of some orientation, positive on "
                   "one side of an outline and negative on the other.")


def last_layer_text(s: dict) -> str:
    """Task 3(f)'s paragraph from :func:`last_layer_summary`."""
    silent = s["silent_channels"]
    centred = s["centre_share"] > 1.5 * s["centre_area"]
    return (f"Each of the {s['side']}×{s['side']} cells sees a 32×32 patch of the 256×256 input (and, through its "
            f"receptive field, much more), so the maps no longer look like the image. After the ReLU, "
            f"{100 * s['zero_values']:.0f} % of the values are exactly zero, and {tables.count_of(silent, s['channels'], 'channels')} "
            f"{_verb(silent, 'is', 'are')} zero everywhere for this image: each channel lights up a few cells where the "
            f"feature it detects is present. The 16 strongest channels put {100 * s['centre_share']:.0f} % of their "
            f"activation into the central {100 * s['centre_area']:.0f} % of the map"
            + (", where CIFAR-10 photographs usually hold their object" if centred else
               ", no more than its share of the area")
            + ". These cells are what the average pooling and the classifier turn into a class.")


def filter_text(s: dict, pretrained: bool) -> str:
    """Task 3(g)'s paragraph from :func:`filter_summary`, for ImageNet weights or random ones."""
    grey, opponent, filters = s["grey"], s["opponent"], s["filters"]
    text = ("A filter is the pattern its channel responds to most strongly; the activation of Task 3(e) is its match "
            "with each image patch. ")
    if grey == 0:
        text += (f"None of the {filters} filters is nearly grey (three colour channels that correlate above 0.9)"
                 + (". " if pretrained else ": random filters rarely are. "))
    else:
        text += (f"{_some_of(grey, filters, 'filters')} {_verb(grey, 'is', 'are')} nearly grey "
                 f"({_verb(grey, 'its', 'their')} three colour channels correlate above 0.9): "
                 f"{_verb(grey, 'it weighs', 'they weigh')} brightness only, and "
                 + ("in ImageNet's filters these are oriented edge and bar detectors at several angles and frequencies. "
                    if pretrained else "random filters are rarely so. "))
    if opponent == 0:
        text += "None of them weighs colours against each other. "
    else:
        text += (f"{'Of the others' if grey else 'Of them'}, {tables.say_count(opponent)} {_verb(opponent, 'weighs', 'weigh')} colours against "
                 f"each other (two of {_verb(opponent, 'its', 'their')} channels are anti-correlated)"
                 + (", such as green against magenta: colour-opponent edges and blobs. " if pretrained else
                    ", as random weights do by chance. "))
    return text + ("The first convolution is frozen, so these are ImageNet's filters, not learned from CIFAR-10."
                   if pretrained else "These filters are noise, with no structure to interpret.")