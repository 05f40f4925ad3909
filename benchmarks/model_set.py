"""The benchmark model set: architectures held in this repository, each with its input shape.

``MODELS = {name: (builder, input_shape, batches)}``: ``builder()`` returns a fresh dense
nn.Module in eval mode (seeded random init, or the repository's sample checkpoint), ``input_shape``
is (C, H, W), ``batches`` the batch sizes the benchmark runs by default. Speed does not depend on
the weight values, so random weights are fine; ``benchmarks/model_set_speed.py`` converts each
model with ``sparsify`` (every 3x3 conv but the first one the model runs) and times the exports.

The ImageNet-style ResNet-18, MobileNetV2 and RegNet-X are the model zoo's architectures at their
full size (``pscompress.workstation.zoo``, docs/zoo.md; MobileNetV2 at width 0.5 here), built
with the zoo's seeded weights and batch-norm statistics.

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

from pscompress.workstation.zoo import builder as zoo

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "fashion_resnet20.pt"


def _seeded(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def builder() -> nn.Module:
        torch.manual_seed(0)
        return build().eval()
    builder.__doc__ = build.__doc__
    return builder


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
    "resnet18_imagenet": (zoo("resnet18_imagenet", "full"), (3, 224, 224), (1,)),
    "mobilenetv2": (zoo("mobilenetv2", "full", width=0.5), (3, 160, 160), (1,)),
    "regnetx": (zoo("regnetx", "full"), (3, 224, 224), (1,)),
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
