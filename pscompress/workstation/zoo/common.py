"""Pieces the zoo's families share: a conv + batch norm + activation block and channel rounding."""
from __future__ import annotations

from torch import nn


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: type | None = nn.ReLU) -> nn.Sequential:
    """``k`` x ``k`` conv (PyTorch padding k // 2, no bias), batch norm, then ``act`` (None: linear)."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


def channels(c: float, divisor: int = 8) -> int:
    """``c`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``), as MobileNet scales widths."""
    return max(divisor, int(c + divisor / 2) // divisor * divisor)
