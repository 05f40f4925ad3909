"""Models and exports shared by the ONNX export, parity, inference and CLI tests.

Exports take seconds: conftest's ``exported`` fixture makes each one once per test session.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pscompress.exporters.summary import ExportSummary
from pscompress.workstation import archs
from pscompress.workstation.checkpoint import LoadedModel
from pscompress.workstation.sparsify import sparsify

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Running statistics and affine parameters as after training, so folding matters."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(1 + 0.2 * torch.randn(n, generator=gen))
            m.bias.data.copy_(0.1 * torch.randn(n, generator=gen))


def psconv_model(arch: str = "resnet20", in_channels: int = 1, hw: int = 28, pattern: str | None = "4of9",
                 seed: int = 0, align: bool = True) -> LoadedModel:
    """A reference architecture with random weights, converted to ``pattern`` (None: dense)."""
    torch.manual_seed(seed)
    module = archs.build(arch, in_channels=in_channels, num_classes=10)
    randomise_batchnorm(module, seed)
    if pattern is not None:
        sparsify(module, pattern, input_shape=(in_channels, hw, hw), align=align)
    meta = {"input_shape": [in_channels, hw, hw], "classes": FASHION_CLASSES, "accuracy": 0.5}
    return LoadedModel(module.eval(), arch, {"in_channels": in_channels, "num_classes": 10}, meta)


def export_model(directory: Path, arch: str = "resnet20", pattern: str | None = "4of9",
                 dense: bool = False) -> tuple[Path, ExportSummary, LoadedModel]:
    """(path, export summary, source model) of ``psconv_model`` exported into ``directory``."""
    from pscompress.exporters.onnx_export import export_onnx

    loaded = psconv_model(arch, in_channels=1 if arch == "resnet20" else 3, hw=28 if arch == "resnet20" else 32,
                          pattern=pattern, align=arch == "resnet20")  # aligning 11M random weights buys nothing
    path = directory / f"{arch}-{pattern}-{'dense' if dense else 'packed'}.onnx"
    summary = export_onnx(loaded, path, dense=dense)
    return path, summary, loaded


class TwoHeads(nn.Module):
    """A small detector-style net: a conv trunk, a 4-D box-regression head and a classification head.

    Returns (boxes [N, 4, H/2, W/2], logits [N, classes]), or ``{"boxes": ..., "scores": ...}`` with
    ``as_dict``: the first output is deliberately not the classifier.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, as_dict: bool = False) -> None:
        super().__init__()
        self.as_dict = as_dict
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.boxes = nn.Conv2d(16, 4, 1)
        self.classifier = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor):
        features = self.body(self.stem(x))
        boxes = self.boxes(features)
        logits = self.classifier(features.mean(dim=(2, 3)))
        return {"boxes": boxes, "scores": logits} if self.as_dict else (boxes, logits)


def two_heads_model(as_dict: bool = False, hw: int = 16, seed: int = 0) -> LoadedModel:
    """``TwoHeads`` with random weights and batch norm statistics, converted to 4of9."""
    torch.manual_seed(seed)
    module = TwoHeads(as_dict=as_dict)
    randomise_batchnorm(module, seed)
    sparsify(module, "4of9", input_shape=(1, hw, hw))
    return LoadedModel(module.eval(), meta={"input_shape": [1, hw, hw]})
