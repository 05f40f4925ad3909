"""A squeeze-excitation net: residual blocks of two 3x3 convs whose output channels are re-weighted by a
gate computed from their global mean (x.mean over H, W -> 1x1 reduce -> ReLU -> 1x1 expand -> sigmoid),
broadcast-multiplied back onto the [N, C, H, W] map, as in SE-ResNet."""
from __future__ import annotations

import torch
from torch import nn

from pscompress.workstation.archs import BasicBlock, residual_stages


class SqueezeExcite(nn.Module):
    """x * sigmoid(expand(relu(reduce(mean(x))))), the gate [N, C, 1, 1] broadcast over H and W."""

    def __init__(self, c: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(4, c // reduction)
        self.reduce = nn.Conv2d(c, hidden, 1)
        self.expand = nn.Conv2d(hidden, c, 1)
        self.relu = nn.ReLU()

    def forward(self, x):
        gate = torch.sigmoid(self.expand(self.relu(self.reduce(x.mean((2, 3), keepdim=True)))))
        return x * gate


class SEBlock(BasicBlock):
    """The CIFAR ResNets' BasicBlock with squeeze-excitation on its second conv's output, before the residual."""

    def __init__(self, cin: int, cout: int, stride: int, reduction: int = 4) -> None:
        super().__init__(cin, cout, stride)
        self.se = SqueezeExcite(cout, reduction)

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return self.relu2(out + self.shortcut(x))


class SENet(nn.Module):
    """3x3 stem, stages of SE blocks (the first of each after the first at stride 2), global mean, linear."""

    def __init__(self, num_classes: int = 1000, widths=(64, 128, 256, 512), depths=(2, 2, 2, 2), stem_stride: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, stem_stride, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        self.layers = residual_stages(SEBlock, widths[0], widths, depths)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        return self.fc(self.layers(self.stem(x)).mean((2, 3)))
