"""RegNet-X-style: bottleneck blocks (ratio 1) whose 3x3 convs are grouped with a fixed group width."""
from __future__ import annotations

from torch import nn

from pscompress.workstation.zoo.common import conv_bn


class XBlock(nn.Module):
    """RegNet X block: 1x1, 3x3 grouped (group width ``group_width``, stride here), 1x1; bottleneck ratio 1."""

    def __init__(self, cin: int, cout: int, stride: int, group_width: int) -> None:
        super().__init__()
        self.a = conv_bn(cin, cout, 1)
        self.b = conv_bn(cout, cout, 3, stride, groups=cout // group_width)
        self.c = conv_bn(cout, cout, 1, act=None)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = conv_bn(cin, cout, 1, stride, act=None)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.c(self.b(self.a(x))) + self.shortcut(x))


class RegNetX(nn.Module):
    """Stem 3x3 stride 2, four stages each entered at stride 2; the defaults are RegNetX-400MF reduced.

    Every width must be a multiple of ``group_width``.
    """

    def __init__(self, widths=(32, 64, 160, 384), depths=(1, 2, 3, 2), group_width: int = 16,
                 num_classes: int = 1000, stem: int = 32) -> None:
        super().__init__()
        if any(w % group_width for w in widths):
            raise ValueError(f"every width of {widths} must be a multiple of the group width {group_width}")
        self.stem = conv_bn(3, stem, 3, 2)
        blocks, cin = [], stem
        for width, depth in zip(widths, depths):
            for i in range(depth):
                blocks.append(XBlock(cin, width, 2 if i == 0 else 1, group_width))
                cin = width
        self.stages = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))
