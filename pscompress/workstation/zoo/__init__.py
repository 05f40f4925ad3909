"""The model zoo: CNN architectures written for this project, each in a small configuration (for CI:
reduced widths, 3x12x12 to 3x48x48 inputs) and its full-size one (for benchmarks).

``ZOO = {name: ZooModel}`` is the one table; every test and benchmark that walks the zoo reads it.
``build(name, size="small")`` returns a fresh dense model in eval mode with seeded random weights
(and batch-norm statistics that are not the identity, as a trained model's are). See docs/zoo.md.

Families, one module each: ``resnet`` (ImageNet-style ResNet-18), ``mobilenet`` (MobileNetV2-style),
``efficientnet`` (EfficientNet-Lite-style, TF 'same' padding in a Conv2d subclass), ``cascade`` (PNet /
RNet / ONet face-detector cascade), ``regnet`` (RegNet-X-style grouped convs), ``unet`` (U-Net-style
segmenter), ``senet`` (squeeze-excitation net).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from pscompress.workstation.zoo.cascade import ONet, PNet, RNet
from pscompress.workstation.zoo.efficientnet import EfficientNetLite
from pscompress.workstation.zoo.mobilenet import MobileNetV2
from pscompress.workstation.zoo.regnet import RegNetX
from pscompress.workstation.zoo.resnet import ImageNetResNet18
from pscompress.workstation.zoo.senet import SENet
from pscompress.workstation.zoo.unet import UNet

SIZES = ("small", "full")


@dataclass(frozen=True)
class Config:
    """One size of a zoo model: the builder's keyword arguments and the input (C, H, W) it is built for."""

    kwargs: dict[str, Any]
    input_shape: tuple[int, int, int]


@dataclass(frozen=True)
class ZooModel:
    """A zoo entry.

    ``task``: ``classifier`` (one [N, classes] output), ``detector`` (several heads, a tuple or dict) or
    ``segmenter`` (one [N, classes, H, W] output). ``patterns``: the ``--pattern`` specs that convert
    every kernel size the model has that pSConv takes. ``classifier_output``: the output that scores
    ``classes`` classes (``eval --output``), None when there is one output. ``dynamic_hw``: fully
    convolutional, exports with ``--dynamic-hw``.
    """

    family: str
    cls: type[nn.Module]
    small: Config
    full: Config
    task: str = "classifier"
    patterns: tuple[str, ...] = ("4of9",)
    classes: int = 10
    classifier_output: str | None = None
    dynamic_hw: bool = False
    notes: str = ""

    def config(self, size: str = "small") -> Config:
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}: choose {' or '.join(SIZES)}")
        return self.small if size == "small" else self.full

    def input_shape(self, size: str = "small") -> tuple[int, int, int]:
        return self.config(size).input_shape


_MOBILENET_SMALL = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 1, 2))
_EFFICIENTNET_SMALL = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 1), (6, 5, 2, 40, 2), (6, 3, 2, 80, 1))

ZOO: dict[str, ZooModel] = {
    "resnet18_imagenet": ZooModel(
        "resnet", ImageNetResNet18,
        small=Config({"width": 0.125, "num_classes": 10}, (3, 48, 48)),
        full=Config({"width": 1.0, "num_classes": 1000}, (3, 224, 224)),
        classes=10, notes="7x7 stride-2 stem and 3x3/2 max pool (pad 1), BasicBlocks 64-512"),
    "mobilenetv2": ZooModel(
        "mobilenet", MobileNetV2,
        small=Config({"width": 0.25, "num_classes": 10, "settings": _MOBILENET_SMALL, "last": 64}, (3, 32, 32)),
        full=Config({"width": 1.0, "num_classes": 1000}, (3, 224, 224)),
        notes="inverted residuals, depthwise 3x3, ReLU6"),
    "efficientnet_lite": ZooModel(
        "efficientnet", EfficientNetLite,
        small=Config({"width": 0.5, "num_classes": 10, "settings": _EFFICIENTNET_SMALL, "last": 64, "stem": 16},
                     (3, 48, 48)),
        full=Config({"width": 1.0, "num_classes": 1000}, (3, 224, 224)),
        patterns=("4of9", "13of25"), notes="TF 'same' padding in a Conv2d subclass, depthwise 3x3 and 5x5, ReLU6"),
    "face_pnet": ZooModel(
        "cascade", PNet,
        small=Config({"width": 1.0}, (3, 12, 12)),
        full=Config({"width": 1.0}, (3, 240, 320)),
        task="detector", classes=2, classifier_output="output0", dynamic_hw=True,
        notes="fully convolutional proposal net: PReLU, (face, box) maps as a tuple; full size = one pyramid level"),
    "face_rnet": ZooModel(
        "cascade", RNet,
        small=Config({"width": 0.5}, (3, 24, 24)),
        full=Config({"width": 1.0}, (3, 24, 24)),
        task="detector", patterns=("4of9", "2of4"), classes=2, classifier_output="output0",
        notes="refine net: PReLU, a 2x2 conv, (face, box) as a tuple"),
    "face_onet": ZooModel(
        "cascade", ONet,
        small=Config({"width": 0.5}, (3, 48, 48)),
        full=Config({"width": 1.0}, (3, 48, 48)),
        task="detector", patterns=("4of9", "2of4"), classes=2, classifier_output="face",
        notes="output net: PReLU, a 2x2 conv, {face, box, landmarks} as a dict"),
    "regnetx": ZooModel(
        "regnet", RegNetX,
        small=Config({"widths": (16, 32, 48, 64), "depths": (1, 1, 2, 1), "group_width": 8, "stem": 16,
                      "num_classes": 10}, (3, 32, 32)),
        full=Config({"num_classes": 1000}, (3, 224, 224)),
        notes="3x3 grouped convs of a fixed group width (8 small, 16 full)"),
    "unet": ZooModel(
        "unet", UNet,
        small=Config({"base": 8, "depth": 2, "num_classes": 3}, (3, 32, 32)),
        full=Config({"base": 64, "depth": 4, "num_classes": 2}, (3, 256, 256)),
        task="segmenter", classes=3, dynamic_hw=True, notes="nearest upsample + concat, per-pixel class scores"),
    "senet": ZooModel(
        "senet", SENet,
        small=Config({"widths": (16, 32, 64), "depths": (1, 1, 1), "num_classes": 10}, (3, 32, 32)),
        full=Config({"num_classes": 10}, (3, 32, 32)),
        notes="squeeze-excitation: global mean, sigmoid gate, broadcast multiply; full = SE-ResNet-18 (CIFAR)"),
}


def _trained_like(model: nn.Module) -> nn.Module:
    """Batch-norm statistics and affine parameters that are not the identity (as after training)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.1, 0.1)
    return model


def build(name: str, size: str = "small", seed: int = 0, **overrides: Any) -> nn.Module:
    """A fresh dense ``ZOO[name]`` at ``size`` (``small`` or ``full``), eval mode, weights seeded by ``seed``.

    ``overrides`` replace the configuration's builder arguments (``width=0.5``, ``num_classes=100``).
    """
    if name not in ZOO:
        raise KeyError(f"no zoo model {name!r}: choose one of {', '.join(ZOO)}")
    entry = ZOO[name]
    torch.manual_seed(seed)
    return _trained_like(entry.cls(**{**entry.config(size).kwargs, **overrides})).eval()


def builder(name: str, size: str = "small", **overrides: Any) -> Callable[[], nn.Module]:
    """``build`` with its arguments bound: a callable that returns a fresh model each call."""
    def make() -> nn.Module:
        return build(name, size, **overrides)
    make.__doc__ = f"zoo model {name} ({size})"
    return make


__all__ = ["ZOO", "SIZES", "Config", "ZooModel", "build", "builder",
           "ImageNetResNet18", "MobileNetV2", "EfficientNetLite", "PNet", "RNet", "ONet", "RegNetX", "UNet", "SENet"]
