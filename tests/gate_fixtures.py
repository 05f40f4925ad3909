"""Small real models and a CLI runner shared by the eval/check tests.

The models are linear classifiers fitted on Fashion-MNIST by least squares (a second of
numpy, ~80% accuracy), so their predictions vary from image to image like a real model's.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from pscompress.board.data import load_dataset
from pscompress.workstation.checkpoint import LoadedModel, save_checkpoint


def fit_linear(images: int = 5000, ridge: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression of one-hot labels on pixels: weight [10, 784], bias [10]."""
    train = load_dataset("fashion-mnist", "train").subset(images)
    x = train.x.reshape(len(train), -1).astype(np.float64)
    x1 = np.hstack([x, np.ones((len(x), 1))])
    targets = np.eye(10)[train.y]
    solution = np.linalg.solve(x1.T @ x1 + ridge * np.eye(x1.shape[1]), x1.T @ targets)
    return solution[:-1].T.astype(np.float32), solution[-1].astype(np.float32)


def linear_module(weight: np.ndarray, bias: np.ndarray) -> nn.Module:
    """An identity 1x1 conv (so the model declares 1 input channel), then the linear classifier."""
    conv = nn.Conv2d(1, 1, 1)
    linear = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.zero_()
        linear.weight.copy_(torch.from_numpy(weight))
        linear.bias.copy_(torch.from_numpy(bias))
    return nn.Sequential(conv, nn.Flatten(), linear).eval()


def psconv_module(weight: np.ndarray, bias: np.ndarray, channels: int = 4) -> nn.Module:
    """The linear classifier behind a 4-of-9 pSConv layer that (nearly) copies the image to every channel.

    Every 4-of-9 support keeps the centre: weight 1 there plus a little noise on the other kept
    positions, so the packed weights are all exercised and the accuracy stays the classifier's.
    """
    from pscompress.workstation.layers import PSConv2d
    from pscompress.core.patterns import parse_pattern

    conv = PSConv2d(1, channels, 3, padding=1, pattern=parse_pattern("4of9"))
    linear = nn.Linear(channels * weight.shape[1], weight.shape[0])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        conv.weight.copy_(0.02 * torch.randn(conv.weight.shape, generator=generator))
        conv.weight[:, :, 1, 1] = 1.0
        conv.weight.mul_(conv.mask)
        conv.bias.zero_()
        linear.weight.copy_(torch.from_numpy(np.tile(weight, channels) / channels))
        linear.bias.copy_(torch.from_numpy(bias))
    return nn.Sequential(conv, nn.ReLU(), nn.Flatten(), linear).eval()


def save_module(module: nn.Module, path: Path) -> Path:
    """A pickled module: loading it needs --trust-pickle."""
    save_checkpoint(LoadedModel(module), path)
    return path


def torch_predictions(module: nn.Module, x: np.ndarray) -> np.ndarray:
    """The oracle: the module's own top-1 predictions."""
    with torch.inference_mode():
        return module(torch.from_numpy(x)).argmax(1).numpy()
