"""A three-net face-detector-style cascade (PNet, RNet, ONet in the manner of MTCNN): PReLU, 2x2 convs,
several output heads.

* ``PNet`` is fully convolutional: on a 12x12 crop its heads are 1x1 maps, on a larger image a map of
  windows (stride 2), so it exports with ``--dynamic-hw`` and runs an image pyramid. It returns a tuple
  ``(face logits [N, 2, h, w], box offsets [N, 4, h, w])``.
* ``RNet`` (24x24 crops) ends in a 2x2 conv, a flatten and a linear layer; it returns a tuple
  ``(face logits [N, 2], box offsets [N, 4])``.
* ``ONet`` (48x48 crops) ends in a 2x2 conv too and returns a dict ``{"face": [N, 2], "box": [N, 4],
  "landmarks": [N, 10]}``.

Heads give raw scores (no softmax), so a caller applies whatever it needs.
"""
from __future__ import annotations

from torch import nn


def _conv_prelu(cin: int, cout: int, k: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k), nn.PReLU(cout)]


def _w(c: int, width: float) -> int:
    return max(2, int(round(c * width)))


class PNet(nn.Module):
    """Proposal net: 3x3 conv, 2x2 max pool, two 3x3 convs (PReLU after each), 1x1 face and box heads."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        a, b, c = _w(10, width), _w(16, width), _w(32, width)
        self.body = nn.Sequential(*_conv_prelu(3, a, 3), nn.MaxPool2d(2, 2), *_conv_prelu(a, b, 3), *_conv_prelu(b, c, 3))
        self.face = nn.Conv2d(c, 2, 1)
        self.box = nn.Conv2d(c, 4, 1)

    def forward(self, x):
        features = self.body(x)
        return self.face(features), self.box(features)


class RNet(nn.Module):
    """Refine net: two 3x3 conv + 3x3/2 max pool stages, a 2x2 conv, a linear layer, face and box heads."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        a, b, c, d = _w(28, width), _w(48, width), _w(64, width), _w(128, width)
        self.body = nn.Sequential(*_conv_prelu(3, a, 3), nn.MaxPool2d(3, 2, ceil_mode=True),
                                  *_conv_prelu(a, b, 3), nn.MaxPool2d(3, 2, ceil_mode=True),
                                  *_conv_prelu(b, c, 2), nn.Flatten(), nn.Linear(c * 3 * 3, d), nn.PReLU(d))
        self.face = nn.Linear(d, 2)
        self.box = nn.Linear(d, 4)

    def forward(self, x):
        features = self.body(x)
        return self.face(features), self.box(features)


class ONet(nn.Module):
    """Output net: three 3x3 conv + max pool stages, a 2x2 conv, a linear layer, face, box and landmark heads."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        a, b, c, d = _w(32, width), _w(64, width), _w(128, width), _w(256, width)
        self.body = nn.Sequential(*_conv_prelu(3, a, 3), nn.MaxPool2d(3, 2, ceil_mode=True),
                                  *_conv_prelu(a, b, 3), nn.MaxPool2d(3, 2, ceil_mode=True),
                                  *_conv_prelu(b, b, 3), nn.MaxPool2d(2, 2),
                                  *_conv_prelu(b, c, 2), nn.Flatten(), nn.Linear(c * 3 * 3, d), nn.PReLU(d))
        self.face = nn.Linear(d, 2)
        self.box = nn.Linear(d, 4)
        self.landmarks = nn.Linear(d, 10)

    def forward(self, x):
        features = self.body(x)
        return {"face": self.face(features), "box": self.box(features), "landmarks": self.landmarks(features)}
