"""A U-Net-style segmenter: an encoder of 3x3 double convs with 2x2 max pools, a decoder that upsamples
(nearest, x2), concatenates the encoder's map of the same size and convolves again; a 1x1 conv gives one
score per class and pixel ([N, classes, H, W]). Fully convolutional: any H and W divisible by 2**depth."""
from __future__ import annotations

import torch
from torch import nn


def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class UNet(nn.Module):
    """``depth`` down steps from ``base`` channels (doubling), as many up steps, ``num_classes`` output maps."""

    def __init__(self, num_classes: int = 2, base: int = 64, depth: int = 4, in_channels: int = 3) -> None:
        super().__init__()
        widths = [base * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList([double_conv(in_channels, widths[0])] +
                                  [double_conv(widths[i], widths[i + 1]) for i in range(depth)])
        self.pool = nn.MaxPool2d(2)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.up = nn.ModuleList([double_conv(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(depth))])
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x):
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for block in self.up:
            x = block(torch.cat([self.upsample(x), skips.pop()], dim=1))
        return self.classifier(x)
