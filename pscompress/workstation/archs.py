"""Reference architectures from the pSConv papers, CIFAR style (3x3 stem, no max-pool).

Every builder takes ``in_channels`` and ``num_classes`` so the same code serves
Fashion-MNIST (1 channel, 28x28) and CIFAR-like data (3 channels, 32x32).
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from pscompress.core.arch_names import ARCHITECTURE_NAMES
from pscompress.core.errors import UserError


class BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm; a 1x1 projection shortcut when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


def residual_stages(block: Callable[[int, int, int], nn.Module], in_planes: int, widths, depths) -> nn.Sequential:
    """Stages of ``block(in_planes, planes, stride)``: depths[i] blocks of widths[i] channels, the first of each stage
    after the first at stride 2 (the CIFAR and ImageNet ResNets' layout; the last width is the output's)."""
    blocks = []
    for stage, (planes, count) in enumerate(zip(widths, depths)):
        for b in range(count):
            blocks.append(block(in_planes, planes, 2 if stage > 0 and b == 0 else 1))
            in_planes = planes
    return nn.Sequential(*blocks)


class CifarResNet(nn.Module):
    def __init__(self, widths: list[int], blocks: list[int], in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.layers = residual_stages(BasicBlock, widths[0], widths, blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        return self.fc(self.flatten(self.pool(self.layers(x))))


_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    """VGG-16 with batch norm. Pools round up so 28x28 inputs survive all five of them."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in _VGG16:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(channels, item, 3, 1, 1, bias=False), nn.BatchNorm2d(item), nn.ReLU()]
                channels = item
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.features(x))))


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": lambda in_channels=3, num_classes=10: CifarResNet([64, 128, 256, 512], [2, 2, 2, 2], in_channels, num_classes),
    "resnet20": lambda in_channels=3, num_classes=10: CifarResNet([16, 32, 64], [3, 3, 3], in_channels, num_classes),
    "vgg16": lambda in_channels=3, num_classes=10: VGG(in_channels, num_classes),
}
assert tuple(ARCHITECTURES) == ARCHITECTURE_NAMES, "name each architecture in pscompress/core/arch_names.py"


def build(name: str, in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """Instantiate a reference architecture by name."""
    if name not in ARCHITECTURES:
        raise UserError(f"unknown architecture {name!r}: choose one of {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[name](in_channels=in_channels, num_classes=num_classes)
