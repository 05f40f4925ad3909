"""The steps every exporter shares: prepare the model, then verify the written bytes against PyTorch.

An exporter runs ``prepare``, opens its output with ``pscompress.core.files.atomic_output``
before its slow part (an unwritable destination fails early; a failed export leaves no file),
builds its bytes, ``verify``-s them in the format's runtime and writes them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch
from torch import fx

from pscompress.core.errors import UserError
from pscompress.core.limits import check_input_shape
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
    example, expected = _reference(loaded, shape)
    return Prepared(loaded, shape, fold_batchnorm(loaded.module), example, expected)


def _reference(loaded: LoadedModel, shape: tuple[int, int, int]) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """A seeded batch of two images of ``shape`` and PyTorch's outputs on it, by name."""
    # Seeded, so an export and its verification are the same on every run.
    example = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = {name: value.numpy() for name, value in named_outputs(loaded.module(example)).items()}
    return example, expected


def at_other_size(prepared: Prepared) -> Prepared:
    """``prepared`` at another H x W (H+8 x W+16, else twice each), to verify an export whose H and W are dynamic.

    UserError when PyTorch's model runs at neither: it takes one image size only (a Flatten + Linear head).
    """
    channels, height, width = prepared.input_shape
    sizes = [(height + 8, width + 16), (2 * height, 2 * width)]
    reasons = []
    for size in sizes:
        try:
            shape = check_input_shape((channels, *size))
            example, expected = _reference(prepared.loaded, shape)
        except (RuntimeError, ValueError) as exc:  # a layer that needs the recorded size; UserError included
            reasons.append(str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__)
            continue
        if list(expected) == prepared.output_names:
            return replace(prepared, input_shape=shape, example=example, expected=expected)
    tried = " or ".join(f"{h}x{w}" for h, w in sizes)
    raise not_fully_convolutional(prepared.input_shape, f"PyTorch's model does not run at {tried}: "
                                  f"{reasons[0] if reasons else 'its outputs change'}")


def not_fully_convolutional(shape: Sequence[int], reason: str) -> UserError:
    """The one line `dynamic_hw` gives for a model that takes one image size only."""
    return UserError(f"`dynamic_hw` needs a fully convolutional model, one that runs at any H x W; this one takes "
                     f"{shape[1]}x{shape[2]} only ({reason[:200]}): export it without `dynamic_hw`", "dynamic_hw")


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


def output_records(prepared: Prepared) -> list[dict]:
    """The metadata's ``outputs``: each output's name and the shape of one image's output, in the model's order."""
    return [{"name": name, "shape": list(value.shape[1:])} for name, value in prepared.expected.items()]


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b|: one number that does not blow up on near-zero outputs (0 for empty outputs)."""
    if np.size(b) == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-12))
