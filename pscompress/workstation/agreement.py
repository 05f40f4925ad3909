"""How far a conversion moved a model's predictions, measured on real images, and the batch-norm
recalibration that brings most of them back without any training.

Weight energy kept says little about predictions: a converted EfficientNet-Lite0 kept 76% of its
weight energy and gave the same class for every image. What a user sees is whether the converted
model still predicts what the dense one did, so ``convert --data`` reports top-1 agreement with the
dense model on test images, before and after re-estimating the batch-norm statistics (zeroing
weights shifts every later activation's mean and variance; the dense model's statistics no longer fit).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from pscompress.board.data import ArrayDataset
from pscompress.core.inputs import normalize
from pscompress.workstation.model_io import named_outputs

AGREEMENT_IMAGES = 1000  # test images agreement is measured on: a 95% interval of about +-3 points
BATCH_SIZE = 256


@dataclass
class Agreement:
    """Top-1 agreement with the dense model (per image, or per pixel for a dense-prediction output)."""

    images: int           # test images measured on
    before: float         # converted as is
    after: float | None   # after batch-norm recalibration (None: not recalibrated)
    recalibrated: int     # training images the statistics were re-estimated on (0: none)

    def summary(self) -> dict[str, Any]:
        return {"images": self.images, "before": self.before, "after": self.after, "recalibrated": self.recalibrated}

    def describe(self) -> str:
        line = f"top-1 agreement with the dense model on {self.images:,} test images: {self.before:.1%}"
        if self.after is not None:
            line += f", {self.after:.1%} after batch-norm recalibration on {self.recalibrated:,} training images"
        return line


class _NormalizedImages:
    """Images in [0, 1] as the module takes them: (x - mean) / std, as every predictor applies (core.inputs.normalize)."""

    def __init__(self, images, preprocess: dict) -> None:
        self.images, self.preprocess, self.shape = images, preprocess, images.shape

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index) -> np.ndarray:
        x = self.images[index]
        return normalize(x, self.preprocess) if x.ndim == 4 else normalize(x[None], self.preprocess)[0]


def model_inputs(data: ArrayDataset, preprocess: dict | None) -> ArrayDataset:
    """``data`` as the model takes it: decoded in its channel order, its mean and std applied to every image."""
    data = data.in_channel_order((preprocess or {}).get("channel_order"))
    if not preprocess:
        return data
    return replace(data, images=_NormalizedImages(data.images, preprocess))


@torch.no_grad()
def recalibrate_batchnorm(net: nn.Module, data: ArrayDataset, examples: int, batch_size: int = BATCH_SIZE,
                          world: int = 1, rank: int = 0) -> None:
    """Re-estimate batch-norm running statistics on the first ``examples`` images of ``data``.

    With the dense model's statistics a converted model can collapse to one class in eval mode, and
    a momentum of 0.1 needs many steps to forget them. A plain average over fresh batches does not.
    """
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or examples <= 0:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was_training = net.training
    net.train()
    for x, _ in data.batches(batch_size, np.arange(rank, min(examples, len(data)), world)):
        net(torch.from_numpy(x))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    net.train(was_training)


@torch.no_grad()
def predictions(net: nn.Module, data: ArrayDataset, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """The argmax over channels of the first output, per image (per pixel for a dense-prediction output)."""
    net.eval()
    return np.concatenate([next(iter(named_outputs(net(torch.from_numpy(x))).values())).argmax(1).numpy()
                           for x, _ in data.batches(batch_size)])


def top1_agreement(reference: nn.Module, candidate: nn.Module, data: ArrayDataset,
                   batch_size: int = BATCH_SIZE) -> float:
    """Fraction of predictions (argmax over channels of the first output) on which the two models agree."""
    if not len(data):
        return float("nan")
    return float(np.mean(predictions(reference, data, batch_size) == predictions(candidate, data, batch_size)))


def measure_conversion(dense: nn.Module, converted: nn.Module, train: ArrayDataset, test: ArrayDataset,
                       recalibrate: int) -> Agreement:
    """Agreement of ``converted`` with ``dense`` on the first test images; with ``recalibrate`` > 0, the
    batch norms of ``converted`` are re-estimated on that many training images (in place) and measured again."""
    test = test.subset(AGREEMENT_IMAGES)
    before = top1_agreement(dense, converted, test)
    if recalibrate <= 0 or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in converted.modules()):
        return Agreement(len(test), before, None, 0)
    recalibrate_batchnorm(converted, train, recalibrate)
    recalibrated = min(recalibrate, len(train))
    return Agreement(len(test), before, top1_agreement(dense, converted, test), recalibrated)
