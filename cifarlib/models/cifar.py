"""CIFAR-10 CNNs: the assignment's Table-1 baseline, a switchable Table-1 family for the ablation,
and the two improved models of report part 3.

- ``baseline``: Table 1 exactly (kept as the assignment states it).
- ``table1_variant``: the same network with switches (batch norm, widths, convs per stage, kernel
  size, pooling vs strided convolution, dropout, weight initialisation); with no switches set it *is*
  the Table-1 network, so each ablation entry is "the baseline with one switch turned".
- ``improved_a``: a compact member of that family (two 3x3 conv-BN-ReLU per stage).

Model B (``improved_b``) lives in :mod:`cifarlib.models.whitened`.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from cifarlib.errors import CifarlibError
from cifarlib.models import register


class Table1Net(nn.Module):
    """TDT4265 Assignment 3, Table 1: three (conv 5x5 pad 2 -> ReLU -> max-pool 2x2/2) stages with
    32/64/128 filters, then Dense 64 + ReLU and Dense 10. The softmax lives in the loss.

    For a 32x32 input the feature map entering the classifier is 128 x 4 x 4 = 2048 values.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32,
                 widths: tuple[int, int, int] = (32, 64, 128), hidden: int = 64):
        super().__init__()
        layers, c = [], in_channels
        for w in widths:
            layers += [nn.Conv2d(c, w, kernel_size=5, stride=1, padding=2), nn.ReLU(inplace=True),
                       nn.MaxPool2d(kernel_size=2, stride=2)]
            c = w
        self.features = nn.Sequential(*layers)
        side = image_size // 2 ** len(widths)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c * side * side, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.features(x))


@register("baseline", "Table-1 CNN: 3x(conv5x5-ReLU-maxpool) 32/64/128, Dense 64, Dense 10 (390,410 params)")
def baseline(in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> nn.Module:
    return Table1Net(in_channels=in_channels, num_classes=num_classes, image_size=image_size)


# --------------------------------------------------------------------------------------------
# The Table-1 family with switches (ablation) and Model A
# --------------------------------------------------------------------------------------------

INITS = ("default", "xavier", "kaiming")  # default = PyTorch's own (uniform, fan-in scaled)
DOWNSAMPLES = ("pool", "stride")  # halve the side with a 2x2/2 max-pool, or with stride 2 in the stage's last conv


def _check_variant(widths, depth, kernel, downsample, dropout, init) -> None:
    if not widths or min(widths) < 1:
        raise CifarlibError(f"widths must be positive filter counts, got {list(widths)}")
    if depth < 1 or kernel < 1 or kernel % 2 == 0:
        raise CifarlibError(f"need depth >= 1 and an odd kernel size, got depth={depth} kernel={kernel}")
    if downsample not in DOWNSAMPLES:
        raise CifarlibError(f"downsample must be one of {DOWNSAMPLES}, got {downsample!r}")
    if not 0.0 <= dropout < 1.0:
        raise CifarlibError(f"dropout is a probability in [0, 1), got {dropout}")
    if init not in INITS:
        raise CifarlibError(f"init must be one of {INITS}, got {init!r}")


def _stage(c_in: int, c_out: int, depth: int, kernel: int, bn: bool, downsample: str) -> list[nn.Module]:
    """``depth`` x (conv k x k 'same' -> [BN] -> ReLU), then halve the side (pool, or stride in the last conv)."""
    layers = []
    for i in range(depth):
        stride = 2 if downsample == "stride" and i == depth - 1 else 1
        layers.append(nn.Conv2d(c_in if i == 0 else c_out, c_out, kernel, stride=stride, padding=kernel // 2,
                                bias=not bn))  # BN's shift makes a conv bias redundant
        layers += [nn.BatchNorm2d(c_out)] if bn else []
        layers.append(nn.ReLU(inplace=True))
    return layers + ([nn.MaxPool2d(2, 2)] if downsample == "pool" else [])


def init_weights(model: nn.Module, scheme: str) -> nn.Module:
    """Re-initialise conv and dense weights: "xavier" (Glorot uniform) or "kaiming" (He normal, ReLU
    gain), biases zero. "default" keeps PyTorch's initialisation."""
    if scheme == "default":
        return model
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if scheme == "xavier":
                nn.init.xavier_uniform_(m.weight)
            else:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


class Table1Variant(nn.Module):
    """Table 1 with switches. Defaults reproduce Table 1 (390,410 parameters):
    ``len(widths)`` stages of ``depth`` convs each, then Flatten -> Dense ``hidden`` -> ReLU -> Dense 10.
    ``bn`` adds BatchNorm after every conv and after the hidden Dense; ``dropout`` is applied to the
    classifier inputs (flattened features and hidden units)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32,
                 widths: Sequence[int] = (32, 64, 128), depth: int = 1, kernel: int = 5, bn: bool = False,
                 downsample: str = "pool", dropout: float = 0.0, hidden: int = 64, init: str = "default"):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        _check_variant(widths, depth, kernel, downsample, dropout, init)
        layers, c = [], in_channels
        for w in widths:
            layers += _stage(c, w, depth, kernel, bn, downsample)
            c = w
        self.features = nn.Sequential(*layers)
        side = image_size // 2 ** len(widths)
        drop = [nn.Dropout(dropout)] if dropout > 0 else []
        self.classifier = nn.Sequential(
            nn.Flatten(), *drop, nn.Linear(c * side * side, hidden, bias=not bn),
            *([nn.BatchNorm1d(hidden)] if bn else []), nn.ReLU(inplace=True), *drop, nn.Linear(hidden, num_classes),
        )
        init_weights(self, init)

    def forward(self, x):
        return self.classifier(self.features(x))


@register("table1_variant", "Table-1 CNN with switches: bn, widths, depth, kernel, downsample, dropout, hidden, init")
def table1_variant(in_channels: int = 3, num_classes: int = 10, image_size: int = 32, **switches) -> nn.Module:
    return Table1Variant(in_channels=in_channels, num_classes=num_classes, image_size=image_size, **switches)


# Model A: the Table-1 layout with two 3x3 conv-BN-ReLU per stage instead of one 5x5 conv.
IMPROVED_A = dict(widths=(32, 64, 128), depth=2, kernel=3, bn=True, downsample="pool", dropout=0.0,
                  hidden=64, init="kaiming")


@register("improved_a", "Model A: Table-1 layout, 2x(conv3x3-BN-ReLU) per stage, 32/64/128, Dense 64, Dense 10")
def improved_a(in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> nn.Module:
    return Table1Variant(in_channels=in_channels, num_classes=num_classes, image_size=image_size, **IMPROVED_A)
