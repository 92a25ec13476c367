"""ResNet18 transfer learning for report part 4 (assignment Task 3).

torchvision's ResNet18 with ImageNet weights; its 1000-way ``fc`` is replaced by a ``num_classes``-way
linear layer, and every parameter is frozen except those of ``layer4`` (the last 4 convolutions and
the 1x1 downsampling convolution: "the last 5 convolutional layers") and ``fc``.

Inputs. The cifarlib ``Loader`` hands every model images normalized with the *data set's* per-channel
mean/std. ImageNet weights expect pixels normalized with the *ImageNet* mean/std. Rather than give this
one model a different loader, the model takes the data-normalized tensor like every other model and
maps it back itself: ``pixels = x * input_std + input_mean`` then ``(pixels - IMAGENET_MEAN) /
IMAGENET_STD`` (one per-channel affine map, done at 32x32 before upsampling, where it is 64x cheaper;
an affine map commutes with nearest and bilinear resizing). ``input_mean``/``input_std`` default to the
CIFAR-10 training set statistics and are kept as buffers, so a saved model carries the statistics it
was trained with.

Weights, in this order: ``weights_path=``, then ``$CIFARLIB_RESNET18_WEIGHTS`` (a torchvision resnet18
state_dict file such as resnet18-f37072fd.pth), then torchvision's ``ResNet18_Weights.IMAGENET1K_V1``
(its cache, else a download). ``pretrained=False`` builds random weights for tests and smoke runs;
such a model reports ``model.pretrained == False`` and everything made from it says NOT PRETRAINED.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from cifarlib.errors import CifarlibError, first_line
from cifarlib.models import register
from cifarlib.paths import ENV_WEIGHTS

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet statistics, [0, 1] pixel units
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # CIFAR-10 training set (50,000 images), [0, 1] pixel units
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
TRAINABLE = ("layer4", "fc")  # the children of the torchvision ResNet that are fine-tuned
WEIGHTS_FILE = "resnet18-f37072fd.pth"  # the file torchvision downloads for IMAGENET1K_V1
UPSAMPLE_MODES = ("nearest", "bilinear")
NOT_PRETRAINED = "NOT PRETRAINED"


def _channels(values, what: str) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float32).flatten()
    if t.numel() != 3:
        raise CifarlibError(f"{what} needs 3 values (one per RGB channel), got {t.tolist()}")
    return t.reshape(1, 3, 1, 1)


class ResNet18Transfer(nn.Module):
    """``net`` is the torchvision ResNet18 itself (so ``model.net.conv1``, ``model.net.layer4`` are the
    assignment's names); forward takes data-normalized images of any size and upsamples them to
    ``resolution`` x ``resolution``.

    Frozen BatchNorm stays in eval mode (``train()`` is overridden): in train mode it would normalize
    with the statistics of each batch of 32 upsampled CIFAR images and pull its running statistics
    away from ImageNet's, so the "frozen" layers would compute a different function in training and
    in evaluation, and a different one after every step. In eval mode stem..layer3 are a fixed
    feature extractor. ``layer4``'s BatchNorm trains normally.

    No autograd graph is built for the frozen part: its parameters have ``requires_grad=False`` and
    its input does not require grad, so autograd records nothing up to layer3's output (tested:
    its ``grad_fn`` is None); the first recorded operation is layer4's first convolution.
    """

    def __init__(self, net: nn.Module, pretrained: bool, resolution: int = 256, upsample: str = "nearest",
                 input_mean=CIFAR10_MEAN, input_std=CIFAR10_STD):
        super().__init__()
        self.net = net
        self.resolution = resolution
        self.upsample = upsample
        self.register_buffer("input_mean", _channels(input_mean, "input_mean"))
        self.register_buffer("input_std", _channels(input_std, "input_std"))
        self.register_buffer("imagenet_mean", _channels(IMAGENET_MEAN, "mean"), persistent=False)
        self.register_buffer("imagenet_std", _channels(IMAGENET_STD, "std"), persistent=False)
        # Saved with the weights, so a model loaded from a run record knows what it started from.
        self.register_buffer("imagenet_weights", torch.tensor(bool(pretrained)))
        for name, child in self.net.named_children():
            child.requires_grad_(name in TRAINABLE)
        self.train()

    @property
    def pretrained(self) -> bool:
        """True when the network started from ImageNet weights."""
        return bool(self.imagenet_weights)

    def frozen_modules(self) -> list[nn.Module]:
        return [m for name, m in self.net.named_children() if name not in TRAINABLE]

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def imagenet_normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels -> what the ImageNet weights expect."""
        return (pixels - self.imagenet_mean) / self.imagenet_std

    def to_imagenet(self, x: torch.Tensor) -> torch.Tensor:
        """Data-normalized images (as the Loader yields them) -> ImageNet-normalized images."""
        return self.imagenet_normalize(x * self.input_std + self.input_mean)

    def resize(self, x: torch.Tensor, size: int | None = None) -> torch.Tensor:
        size = size or self.resolution
        return F.interpolate(x, size=(size, size), mode=self.upsample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.resize(self.to_imagenet(x)))


# ---- weights -------------------------------------------------------------------------------------

def _describe(err: BaseException, limit: int = 160) -> str:
    return f"{type(err).__name__}: {first_line(err, limit)}"


def read_weights_file(path) -> dict:
    """``torch.load(path, weights_only=True)``; a missing, corrupt or non-state_dict file is a one-line error."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CifarlibError(f"ResNet18 weights file {path} does not exist; set weights_path / {ENV_WEIGHTS} "
                            f"to a torchvision resnet18 state_dict file ({WEIGHTS_FILE})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a bad file (pickle, zip, EOF, runtime)
        raise CifarlibError(f"ResNet18 weights file {path} cannot be read as a PyTorch state_dict "
                            f"({_describe(err)}); replace it with a torchvision resnet18 state_dict "
                            f"file ({WEIGHTS_FILE})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CifarlibError(f"ResNet18 weights file {path} holds a {type(state).__name__}, not a state_dict "
                            f"(name -> tensor); save model.state_dict() of a torchvision resnet18 instead")
    return dict(state)


def _examples(keys, k: int = 2) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:k]) + (", ..." if len(keys) > k else "")


def check_state(state: Mapping, net: nn.Module, source: str) -> None:
    """``state`` must fit ``net`` (a torchvision resnet18) apart from the classifier head ``fc``,
    which is replaced anyway; ``num_batches_tracked`` may be absent (torchvision's own file predates it)."""
    expected = {k: v.shape for k, v in net.state_dict().items() if not k.startswith("fc.")}
    given = {k: v.shape for k, v in state.items() if not k.startswith("fc.")}
    missing = {k for k in expected.keys() - given.keys() if not k.endswith("num_batches_tracked")}
    unexpected = given.keys() - expected.keys()
    wrong = {k for k in expected.keys() & given.keys() if expected[k] != given[k]}
    problems = [f"{len(missing)} missing keys ({_examples(missing)})" if missing else "",
                f"{len(unexpected)} unexpected keys ({_examples(unexpected)})" if unexpected else "",
                f"{len(wrong)} shape mismatches ({_examples(wrong)})" if wrong else ""]
    problems = [p for p in problems if p]
    if problems:
        raise CifarlibError(f"{source} is not a torchvision resnet18 state_dict: {'; '.join(problems)}; "
                            f"point weights_path / {ENV_WEIGHTS} at a resnet18 file ({WEIGHTS_FILE})")


def _download_imagenet_state() -> dict:
    """torchvision's ImageNet weights: from its cache (~/.cache/torch/hub), else downloaded there."""
    return torchvision.models.ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False, check_hash=True)


def check_weights(weights_path=None) -> str:
    """Where the ImageNet weights will come from, checked in seconds without loading them: the file
    given (``weights_path``, else ``$CIFARLIB_RESNET18_WEIGHTS``), else torchvision's cache, else its
    download server (reachable). Raises the one-line error of :func:`imagenet_state` otherwise."""
    from cifarlib.data import sources

    path = weights_path or os.environ.get(ENV_WEIGHTS) or None
    if path is not None:
        if not os.path.isfile(path) or os.path.getsize(path) == 0:
            raise CifarlibError(f"ResNet18 weights file {path} does not exist or is empty; set weights_path / "
                                f"{ENV_WEIGHTS} to a torchvision resnet18 state_dict file ({WEIGHTS_FILE}), or "
                                "build without ImageNet weights: --param 04_transfer:pretrained=False")
        return f"ImageNet weights from {path}"
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", WEIGHTS_FILE)
    if os.path.isfile(cached):
        return f"ImageNet weights from torchvision's cache ({cached})"
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    why = sources.probe(url)
    if why is None:
        return f"ImageNet weights: not cached yet, downloaded by torchvision on first use ({url})"
    raise CifarlibError(f"no ImageNet weights for ResNet18: not in torchvision's cache and its download server "
                        f"cannot be reached ({why}); connect to the internet once (torchvision caches the file), or "
                        f"set {ENV_WEIGHTS} / weights_path= to a torchvision resnet18 state_dict file ({WEIGHTS_FILE}), "
                        "or build without them: --param 04_transfer:pretrained=False")


def imagenet_state(weights_path=None) -> tuple[dict, str]:
    """The ImageNet state_dict and where it came from: ``weights_path``, then ``$CIFARLIB_RESNET18_WEIGHTS``,
    then torchvision (cache or download). Neither available -> one-line error naming both remedies."""
    path = weights_path or os.environ.get(ENV_WEIGHTS) or None
    if path is not None:
        return read_weights_file(path), str(path)
    try:
        return _download_imagenet_state(), "torchvision ResNet18_Weights.IMAGENET1K_V1"
    except Exception as err:  # no internet shows up as URLError, socket or SSL errors, ...
        raise CifarlibError(
            f"no ImageNet weights for ResNet18: torchvision's download failed ({_describe(err, 80)}) and "
            f"{ENV_WEIGHTS} is not set; connect to the internet once (torchvision caches the file), or set "
            f"{ENV_WEIGHTS} / weights_path= to a torchvision resnet18 state_dict file ({WEIGHTS_FILE}); "
            f"pretrained=False gives random weights for smoke runs") from None


def load_imagenet_weights(net: nn.Module, weights_path=None) -> str:
    """Load ImageNet weights into a torchvision resnet18, all but the head ``fc`` (it is replaced
    anyway); returns where they came from."""
    state, source = imagenet_state(weights_path)
    check_state(state, net, source)
    net.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")}, strict=False)
    return source


# ---- the registered builder ----------------------------------------------------------------------

def _check_args(resolution, num_classes, in_channels, upsample, pretrained, weights_path) -> None:
    if in_channels != 3:
        raise CifarlibError(f"resnet18_transfer needs RGB images (in_channels=3), got in_channels={in_channels}; "
                            "use it with CIFAR-10, not MNIST")
    if not isinstance(resolution, int) or resolution < 32:
        raise CifarlibError(f"resnet18_transfer resolution={resolution!r} is too small; use an int >= 32 "
                            "(ResNet18 downsamples by 32; the assignment uses 256)")
    if num_classes < 2:
        raise CifarlibError(f"resnet18_transfer num_classes={num_classes} must be >= 2")
    if upsample not in UPSAMPLE_MODES:
        raise CifarlibError(f"resnet18_transfer upsample={upsample!r}; use one of {UPSAMPLE_MODES}")
    if weights_path and not pretrained:
        raise CifarlibError("resnet18_transfer got weights_path with pretrained=False; drop weights_path "
                            "or set pretrained=True")


@register("resnet18_transfer", "ResNet18 with ImageNet weights, inputs upsampled to `resolution`; only layer4 "
                               "and a new fc are trained (kwargs: pretrained, weights_path, resolution)")
def resnet18_transfer(pretrained: bool = True, weights_path: str | None = None, resolution: int = 256,
                      num_classes: int = 10, in_channels: int = 3, upsample: str = "nearest",
                      input_mean=CIFAR10_MEAN, input_std=CIFAR10_STD) -> ResNet18Transfer:
    """The transfer model. ``input_mean``/``input_std``: the normalization of the images the model is
    fed (the data set's per-channel statistics, [0, 1] pixel units)."""
    _check_args(resolution, num_classes, in_channels, upsample, pretrained, weights_path)
    net = torchvision.models.resnet18(weights=None)
    if pretrained:
        load_imagenet_weights(net, weights_path)
    net.fc = nn.Linear(net.fc.in_features, num_classes)  # the softmax lives in the loss
    return ResNet18Transfer(net, pretrained=pretrained, resolution=resolution, upsample=upsample,
                            input_mean=input_mean, input_std=input_std)


def weights_label(model_or_flag) -> str:
    """"ImageNet weights" or "NOT PRETRAINED: random weights", for titles and captions."""
    pretrained = getattr(model_or_flag, "pretrained", model_or_flag)
    return "ImageNet weights" if pretrained else f"{NOT_PRETRAINED}: random weights"
