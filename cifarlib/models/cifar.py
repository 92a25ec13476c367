"""CIFAR-10 CNNs: the assignment's Table-1 baseline (and the improved models of report part 3)."""

from __future__ import annotations

from torch import nn

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
