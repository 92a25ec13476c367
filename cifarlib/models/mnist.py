"""MNIST networks for report part 5: a LeNet-5-style main net and a much smaller one.

Both take 1x28x28 images and return class logits; the softmax lives in the loss (cross-entropy,
or softmax-then-MSE when ``TrainConfig.loss == "mse"``). A conv stage is
conv 5x5 -> ReLU -> max-pool 2x2/2.
"""

from __future__ import annotations

from torch import nn

from cifarlib.models import register

KERNEL = 5  # conv kernel side (pixels)


def _stage(c_in: int, c_out: int, padding: int = 0) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel_size=KERNEL, padding=padding), nn.ReLU(inplace=True), nn.MaxPool2d(2)]


def _side(image_size: int, paddings: tuple[int, ...]) -> int:
    """Feature-map side after one stage per entry of ``paddings``."""
    for pad in paddings:
        image_size = (image_size + 2 * pad - KERNEL + 1) // 2
    return image_size


class LeNet5(nn.Module):
    """LeNet-5 with ReLU and max-pooling: conv 6 (padded, so 28x28 stays 28x28, as LeNet-5 saw
    32x32 digits), conv 16, dense 120, dense 84, dense 10. 61,706 parameters at the defaults."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
                 widths: tuple[int, int] = (6, 16), hidden: tuple[int, int] = (120, 84)):
        super().__init__()
        self.features = nn.Sequential(*_stage(in_channels, widths[0], padding=2), *_stage(widths[0], widths[1]))
        flat = widths[1] * _side(image_size, (2, 0)) ** 2  # 16 * 5 * 5 = 400
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, hidden[0]), nn.ReLU(inplace=True),
            nn.Linear(hidden[0], hidden[1]), nn.ReLU(inplace=True), nn.Linear(hidden[1], num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class SmallMNIST(nn.Module):
    """Two narrow conv stages (4 and 8 filters, no padding) straight into the 10-way output layer,
    no hidden dense layer. 2,202 parameters at the defaults (about 28x fewer than LeNet5)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
                 widths: tuple[int, int] = (4, 8)):
        super().__init__()
        self.features = nn.Sequential(*_stage(in_channels, widths[0]), *_stage(widths[0], widths[1]))
        flat = widths[1] * _side(image_size, (0, 0)) ** 2  # 8 * 4 * 4 = 128
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


@register("mnist_lenet", "MNIST LeNet-5 style: conv5x5 6 (pad 2) -> conv5x5 16, Dense 120, 84, 10 (61,706 params)")
def mnist_lenet(in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> nn.Module:
    return LeNet5(in_channels=in_channels, num_classes=num_classes, image_size=image_size)


@register("mnist_small", "MNIST small: conv5x5 4 -> conv5x5 8, Dense 10, no hidden layer (2,202 params)")
def mnist_small(in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> nn.Module:
    return SmallMNIST(in_channels=in_channels, num_classes=num_classes, image_size=image_size)
