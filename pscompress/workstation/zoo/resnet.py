"""ImageNet-style ResNet-18: 7x7 stride-2 stem, 3x3 stride-2 max pool (pad 1), BasicBlocks 64-128-256-512."""
from __future__ import annotations

from torch import nn

from pscompress.workstation.archs import BasicBlock, residual_stages


class ImageNetResNet18(nn.Module):
    """7x7 stride-2 stem, 3x3 stride-2 max pool, four stages of two BasicBlocks; widths 64-512 times ``width``."""

    def __init__(self, num_classes: int = 1000, width: float = 1.0) -> None:
        super().__init__()
        widths = [max(4, int(round(w * width))) for w in (64, 128, 256, 512)]
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 7, 2, 3, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        self.layers = residual_stages(BasicBlock, widths[0], widths, [2] * len(widths))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], num_classes))

    def forward(self, x):
        return self.head(self.layers(self.stem(x)))
