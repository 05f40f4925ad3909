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
from pscompress.workstation.model_io import model_input_shape, named_outputs

# Runs serialized model bytes on NCHW float32 images and returns every output, in the model's order.
Runner = Callable[[bytes, np.ndarray], Sequence[np.ndarray]]


@dataclass(frozen=True)
class Prepared:
    loaded: LoadedModel  # its module is in eval mode: the reference verify compares with
    input_shape: tuple[int, int, int]
    graph: fx.GraphModule  # an eval copy with batch norm folded into the convs; exporters may rewrite it
    example: torch.Tensor  # two seeded random images: traced by the ONNX exporter, compared by verify
    expected: dict[str, np.ndarray]  # PyTorch's outputs on the example, by name (model_io.named_outputs), in order

    @property
    def output_names(self) -> list[str]:
        return list(self.expected)


def prepare(loaded: LoadedModel, input_shape: Sequence[int] | None = None) -> Prepared:
    """``loaded`` ready to export: ``input_shape`` (C, H, W) or the checkpoint's, BN folded, an example batch."""
    shape = model_input_shape(loaded, input_shape)
    loaded.module.eval()
    # Seeded, so an export and its verification are the same on every run.
    example = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = {name: value.numpy() for name, value in named_outputs(loaded.module(example)).items()}
    return Prepared(loaded, shape, fold_batchnorm(loaded.module), example, expected)


def verify(data: bytes, prepared: Prepared, run: Runner, tolerance: float, what: str = "model") -> float:
    """Largest relative difference, over every output, between ``run`` on ``data`` and PyTorch on the example.

    UserError, naming the output, when one differs beyond ``tolerance`` or the outputs do not correspond.
    """
    got = list(run(data, prepared.example.numpy()))
    names = prepared.output_names
    if len(got) != len(names):
        raise UserError(f"the exported {what} has {len(got)} output(s), PyTorch's {len(names)}: please report this")
    worst = 0.0
    for name, value in zip(names, got):
        expected = prepared.expected[name]
        if np.shape(value) != expected.shape:
            raise UserError(f"the exported {what}'s output {name} has shape {list(np.shape(value))}, "
                            f"PyTorch's {list(expected.shape)}: please report this")
        diff = relative_difference(value, expected)
        if not diff <= tolerance:
            label = f"'s output {name}" if len(names) > 1 else ""
            raise UserError(f"the exported {what}{label} disagrees with PyTorch (relative difference {diff:.2e}): "
                            "please report this")
        worst = max(worst, diff)
    return worst


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b|: one number that does not blow up on near-zero outputs (0 for empty outputs)."""
    if np.size(b) == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-12))
