"""MNIST networks for report part 5: a LeNet-style main net and a much smaller one.

Both take 1x28x28 images and return class logits; the softmax lives in the loss (cross-entropy,
or softmax-then-MSE when ``TrainConfig.loss == "mse"``). Each conv stage is
conv 5x5 (no padding) -> max-pool 2x2/2 -> ReLU, so the side shrinks 28 -> 24 -> 12 -> 8 -> 4.
"""

from __future__ import annotations

from torch import nn

from cifarlib.models import register

KERNEL = 5  # conv kernel side (pixels)


def _side_after_stages(image_size: int, stages: int) -> int:
    """Feature-map side after ``stages`` of (valid 5x5 conv, 2x2 pool)."""
    side = image_size
    for _ in range(stages):
        side = (side - KERNEL + 1) // 2
    return side


def _stage(c_in: int, c_out: int, dropout: float = 0.0) -> list[nn.Module]:
    layers = [nn.Conv2d(c_in, c_out, kernel_size=KERNEL)]
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout))  # drops whole feature maps
    return layers + [nn.MaxPool2d(2), nn.ReLU(inplace=True)]


class LeNetMNIST(nn.Module):
    """Two conv stages (10 and 20 filters, 5x5) and a 50-unit hidden layer, with dropout on the
    second conv stage and on the hidden layer: the classic PyTorch MNIST example network.
    21,840 parameters at the defaults."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
                 widths: tuple[int, int] = (10, 20), hidden: int = 50, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(*_stage(in_channels, widths[0]), *_stage(widths[0], widths[1], dropout))
        flat = widths[1] * _side_after_stages(image_size, 2) ** 2  # 20 * 4 * 4 = 320
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class SmallMNIST(nn.Module):
    """Two narrow conv stages (4 and 8 filters, 5x5) straight into the 10-way output layer:
    no hidden layer, no dropout. 2,202 parameters at the defaults (about 10x fewer)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
                 widths: tuple[int, int] = (4, 8)):
        super().__init__()
        self.features = nn.Sequential(*_stage(in_channels, widths[0]), *_stage(widths[0], widths[1]))
        flat = widths[1] * _side_after_stages(image_size, 2) ** 2  # 8 * 4 * 4 = 128
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


@register("mnist_lenet", "MNIST LeNet-style: conv5x5 10 -> conv5x5 20 (+dropout), Dense 50, Dense 10 (21,840 params)")
def mnist_lenet(in_channels: int = 1, num_classes: int = 10, image_size: int = 28, dropout: float = 0.5) -> nn.Module:
    return LeNetMNIST(in_channels=in_channels, num_classes=num_classes, image_size=image_size, dropout=dropout)


@register("mnist_small", "MNIST small: conv5x5 4 -> conv5x5 8, Dense 10, no hidden layer (2,202 params)")
def mnist_small(in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> nn.Module:
    return SmallMNIST(in_channels=in_channels, num_classes=num_classes, image_size=image_size)
