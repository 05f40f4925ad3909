"""The benchmark model set: architectures held in this repository, each with its input shape.

``MODELS = {name: (builder, input_shape, batches)}``: ``builder()`` returns a fresh dense
nn.Module in eval mode (seeded random init, or the repository's sample checkpoint), ``input_shape``
is (C, H, W), ``batches`` the batch sizes the benchmark runs by default. Speed does not depend on
the weight values, so random weights are fine; ``benchmarks/model_set_speed.py`` converts each
model with ``sparsify`` (every 3x3 conv but the first one the model runs) and times the exports.

Why each model is in the set (which kernel paths it stresses):

* ``resnet18_imagenet`` -- ImageNet-style ResNet-18 at 224: the 7x7 stride-2 stem is not a 3x3
  conv, so it stays dense; wide (64-512 channel) regular 3x3 convs on large feature maps
  (56x56 down to 7x7) and three stride-2 3x3 convs. The big-spatial case of the native kernel.
* ``mobilenetv2`` -- MobileNetV2-style inverted residuals (1x1 expand, depthwise 3x3, 1x1 project,
  ReLU6) at reduced width: the depthwise 3x3 convs (groups == channels, one input channel per
  group) become PSConv nodes, some stride 2, with ReLU6 fused as a clip. The 3x3 stem stays dense.
* ``regnetx`` -- RegNet-X-style bottleneck blocks with 3x3 grouped convs of group width 16: many
  small groups (Cg = 16 input and output channels each), stride 2 at each stage entry.
* ``resnet18_cifar`` / ``vgg16_cifar`` -- the project's reference CIFAR architectures
  (pscompress.workstation.archs) at 3x32x32: regular 3x3 convs on small maps, the papers' set.
* ``sample_resnet20`` -- the repository's Fashion-MNIST ResNet-20 (samples/fashion_resnet20.pt,
  1x28x28): narrow layers (16-64 channels) where per-call overhead and tiling matter most; also
  the fastest model, used for smoke runs and batch 100.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from pscompress.workstation.archs import BasicBlock

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "fashion_resnet20.pt"


def _seeded(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def builder() -> nn.Module:
        torch.manual_seed(0)
        return build().eval()
    builder.__doc__ = build.__doc__
    return builder


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: type | None = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


# --- ImageNet-style ResNet-18 -------------------------------------------------------------------
# The CIFAR ResNets' BasicBlock (archs.py), under an ImageNet stem.

class ImageNetResNet18(nn.Module):
    """7x7 stride-2 stem, 3x3 stride-2 max pool, BasicBlocks 64-128-256-512 (2 each)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for stage, width in enumerate((64, 128, 256, 512)):
            for b in range(2):
                blocks.append(BasicBlock(cin, width, 2 if stage > 0 and b == 0 else 1))
                cin = width
        self.layers = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))

    def forward(self, x):
        return self.head(self.layers(self.stem(x)))


# --- MobileNetV2-style --------------------------------------------------------------------------

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


def _channels(c: float) -> int:
    return max(8, int(c + 4) // 8 * 8)


class MobileNetV2(nn.Module):
    """MobileNetV2's (expansion, channels, repeats, stride) table at width ``width``."""

    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, width: float = 0.5, num_classes: int = 1000) -> None:
        super().__init__()
        cin = _channels(32 * width)
        layers: list[nn.Module] = [conv_bn(3, cin, 3, 2, act=nn.ReLU6)]
        for t, c, n, s in self.SETTINGS:
            cout = _channels(c * width)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        last = 1280 if width <= 1 else _channels(1280 * width)
        layers.append(conv_bn(cin, last, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(last, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


# --- RegNet-X-style -----------------------------------------------------------------------------

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
    """Stem 3x3 stride 2 to 32 channels, four stages (each entered at stride 2), like RegNetX-400MF reduced."""

    def __init__(self, widths=(32, 64, 160, 384), depths=(1, 2, 3, 2), group_width: int = 16,
                 num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = conv_bn(3, 32, 3, 2)
        blocks, cin = [], 32
        for width, depth in zip(widths, depths):
            for i in range(depth):
                blocks.append(XBlock(cin, width, 2 if i == 0 else 1, group_width))
                cin = width
        self.stages = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


# --- the project's own architectures and the sample -----------------------------------------------

def _arch(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from pscompress.workstation import archs
        return archs.build(name, in_channels=3, num_classes=10)
    return build


def sample_resnet20() -> nn.Module:
    """The dense sample checkpoint (converted by the benchmark with the pattern asked for)."""
    from pscompress.workstation.checkpoint import load_model
    return load_model(SAMPLE).module.eval()


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, int, int], tuple[int, ...]]] = {
    "resnet18_imagenet": (_seeded(ImageNetResNet18), (3, 224, 224), (1,)),
    "mobilenetv2": (_seeded(lambda: MobileNetV2(width=0.5)), (3, 160, 160), (1,)),
    "regnetx": (_seeded(RegNetX), (3, 224, 224), (1,)),
    "resnet18_cifar": (_seeded(_arch("resnet18")), (3, 32, 32), (1, 8)),
    "vgg16_cifar": (_seeded(_arch("vgg16")), (3, 32, 32), (1, 8)),
    "sample_resnet20": (sample_resnet20, (1, 28, 28), (1, 100)),
}


def conv_kinds(module: nn.Module) -> dict[str, dict[str, int]]:
    """Counts of 3x3 convs by kind ("regular", "grouped", "depthwise"), split into pSConv and dense."""
    from pscompress.workstation.layers import PSConv2d

    counts = {"psconv": {"regular": 0, "grouped": 0, "depthwise": 0},
              "dense": {"regular": 0, "grouped": 0, "depthwise": 0}}
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (3, 3):
            kind = ("depthwise" if m.groups == m.in_channels == m.out_channels
                    else "grouped" if m.groups > 1 else "regular")
            counts["psconv" if isinstance(m, PSConv2d) else "dense"][kind] += 1
    return counts
