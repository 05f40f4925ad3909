"""MobileNetV2-style: inverted residuals (1x1 expand, depthwise 3x3, 1x1 linear project), ReLU6."""
from __future__ import annotations

from torch import nn

from pscompress.workstation.zoo.common import channels, conv_bn


class InvertedResidual(nn.Module):
    """1x1 expand (skipped at expansion 1), depthwise 3x3, 1x1 linear project; residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [conv_bn(cin, hidden, 1, act=nn.ReLU6)] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                   conv_bn(hidden, cout, 1, act=None)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2(nn.Module):
    """MobileNetV2's (expansion, channels, repeats, stride) table at width ``width``.

    ``settings`` replaces the table (a shorter one for small test models); ``last`` the width of
    the final 1x1 conv (default 1280, scaled when ``width`` > 1).
    """

    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, width: float = 1.0, num_classes: int = 1000, settings=None, last: int | None = None) -> None:
        super().__init__()
        cin = channels(32 * width)
        layers: list[nn.Module] = [conv_bn(3, cin, 3, 2, act=nn.ReLU6)]
        for t, c, n, s in settings or self.SETTINGS:
            cout = channels(c * width)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        if last is None:
            last = 1280 if width <= 1 else channels(1280 * width)
        layers.append(conv_bn(cin, last, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(last, num_classes))

    def forward(self, x):
        return self.head(self.features(x))
