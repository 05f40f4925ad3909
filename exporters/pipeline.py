"""The steps every exporter shares: prepare the model, then verify the written bytes against PyTorch.

An exporter runs ``prepare``, opens its output with ``pscompress.core.files.atomic_output``
before its slow part (an unwritable destination fails early; a failed export leaves no file),
builds its bytes, ``verify``-s them in the format's runtime and writes them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import fx

from pscompress.core.errors import UserError
from pscompress.exporters.fold import fold_batchnorm
from pscompress.workstation.checkpoint import LoadedModel
from pscompress.workstation.model_io import model_input_shape

# Runs serialized model bytes on NCHW float32 images and returns the logits.
Runner = Callable[[bytes, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Prepared:
    loaded: LoadedModel  # its module is in eval mode: the reference verify compares with
    input_shape: tuple[int, int, int]
    graph: fx.GraphModule  # an eval copy with batch norm folded into the convs; exporters may rewrite it
    example: torch.Tensor  # two seeded random images: traced by the ONNX exporter, compared by verify


def prepare(loaded: LoadedModel, input_shape: Sequence[int] | None = None) -> Prepared:
    """``loaded`` ready to export: ``input_shape`` (C, H, W) or the checkpoint's, BN folded, an example batch."""
    shape = model_input_shape(loaded, input_shape)
    loaded.module.eval()
    # Seeded, so an export and its verification are the same on every run.
    example = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    return Prepared(loaded, shape, fold_batchnorm(loaded.module), example)


def verify(data: bytes, prepared: Prepared, run: Runner, tolerance: float, what: str = "model") -> float:
    """Max relative difference between ``run`` on ``data`` and PyTorch on the example; UserError beyond ``tolerance``."""
    got = run(data, prepared.example.numpy())
    with torch.no_grad():
        expected = prepared.loaded.module(prepared.example).numpy()
    diff = relative_difference(got, expected)
    if not diff <= tolerance:
        raise UserError(f"the exported {what} disagrees with PyTorch (relative difference {diff:.2e}): please report this")
    return diff


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b|: one number that does not blow up on near-zero outputs."""
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-12))
