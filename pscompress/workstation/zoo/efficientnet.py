"""EfficientNet-Lite-style: MBConv blocks with 3x3 and 5x5 depthwise convs, ReLU6, no squeeze-excitation,
TensorFlow 'same' padding done inside a Conv2d subclass (as EfficientNet ports from TensorFlow do)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from pscompress.workstation.zoo.common import channels


def same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's 'same' padding of one dimension: output ceil(size / stride), the odd pixel at the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """A Conv2d that pads TF-style 'same' for the input it gets (dynamically, from its size), then convolves unpadded."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["padding"] = 0
        super().__init__(*args, **kwargs)

    def forward(self, x):
        top, bottom = same_pads(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = same_pads(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def conv_bn_same(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [SameConv2d(cin, cout, k, stride, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """1x1 expand (skipped at expansion 1), depthwise KxK with 'same' padding, 1x1 linear project; residual at stride 1."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [conv_bn_same(cin, hidden, 1)] if expand != 1 else []
        layers += [conv_bn_same(hidden, hidden, kernel, stride, groups=hidden), conv_bn_same(hidden, cout, 1, act=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0's (expansion, kernel, stride, channels, repeats) table at width ``width``.

    Lite as in TensorFlow's EfficientNet-Lite: ReLU6 instead of swish, no squeeze-excitation, stem
    (32) and head (1280) not scaled. ``settings`` replaces the table (smaller test models), ``last``
    the head's width.
    """

    SETTINGS = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))

    def __init__(self, width: float = 1.0, num_classes: int = 1000, settings=None, last: int = 1280,
                 stem: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_same(3, stem, 3, 2)]
        cin = stem
        for t, k, s, c, n in settings or self.SETTINGS:
            cout = channels(c * width)
            for i in range(n):
                layers.append(MBConv(cin, cout, k, s if i == 0 else 1, t))
                cin = cout
        layers.append(conv_bn_same(cin, last, 1))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(last, num_classes))

    def forward(self, x):
        return self.head(self.features(x))
