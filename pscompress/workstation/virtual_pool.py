"""Virtual Pooling (Chen et al., "Virtual Pooling", cmu-enyac/VirtualPooling): a stride-1 conv computed at
stride 2, a quarter of its MACs, then upsampled back by 2 with linear interpolation.

The upsample is Caffe's ``interp_layer`` at factor 2: out[2i, 2j] = y[i, j], an odd row or column is the
mean of its 2 neighbours (4 at odd/odd positions) and the last one, which has no lower or right
neighbour, repeats the edge; the result is cropped to the input's size (odd sizes). That is exactly ONNX
Resize (mode=linear, coordinate_transformation_mode=asymmetric, scale 2) and TFLite RESIZE_BILINEAR
(align_corners and half_pixel_centers false), not F.interpolate(align_corners=False), which samples at
half pixels. The wrapped conv may be a PSConv2d, so Virtual Pooling combines with pSConv::

    report = sparsify(model, "4of9")
    report = virtual_pool(model, ["layers.7.*", "layers.8.*"], (1, 28, 28), prior=report)
"""
from __future__ import annotations

import copy
from dataclasses import replace
from fnmatch import fnmatch
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pscompress.core.errors import UserError
from pscompress.workstation.layers import PSConv2d
from pscompress.workstation.measure import ConversionReport, LayerReport, layer_inputs, measure
from pscompress.workstation.surgery import replace_module

VIRTUAL_POOL = "virtual-pool"
FACTOR = 2


def upsample2x(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``y`` [N, C, h, w] linearly upsampled by 2 (edge replicated), cropped to ``height`` x ``width``."""
    padded = F.pad(y, (0, 1, 0, 1), mode="replicate")  # the last odd row/column averages the edge with itself
    rows = _interleave(padded[..., :-1, :], (padded[..., :-1, :] + padded[..., 1:, :]) / 2, dim=-2)
    both = _interleave(rows[..., :-1], (rows[..., :-1] + rows[..., 1:]) / 2, dim=-1)
    return both[..., :height, :width]


def _interleave(even: torch.Tensor, odd: torch.Tensor, dim: int) -> torch.Tensor:
    """even[0], odd[0], even[1], odd[1], ... along ``dim`` (-2 or -1)."""
    return torch.stack((even, odd), dim=dim).flatten(dim - 1, dim)


class Upsample2x(nn.Module):
    """``upsample2x`` of ``y`` to the size of ``like`` (the conv's input): a module of its own, so exporters
    find it in a traced graph (a Resize node, a RESIZE_BILINEAR) and batch norm folds through it."""

    def forward(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return upsample2x(y, like.shape[-2], like.shape[-1])


class VirtualPoolConv2d(nn.Module):
    """``conv`` (an nn.Conv2d or PSConv2d, run at stride 2), then ``upsample`` back to the input's size.

    Its extra state ({"method": "virtual-pool"}) tells a checkpoint to rebuild the layer before its
    weights (``conv.weight``, the conv's own pattern) load.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        self.upsample = Upsample2x()

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "VirtualPoolConv2d":
        """A copy of the stride-1 ``conv`` at stride 2 (same weights, same padding), wrapped; UserError if ineligible."""
        reason = virtual_pool_reason("", conv)
        if reason is not None:
            raise UserError(f"cannot virtual-pool this convolution: {reason}")
        strided = copy.deepcopy(conv)
        strided.stride = (FACTOR, FACTOR)
        if isinstance(strided.padding, str):  # PyTorch pads 'same' for stride 1 only: the numbers it padded
            strided.padding = same_padding(conv)
        return cls(strided)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample(self.conv(x), x)

    def get_extra_state(self) -> dict:
        return {"method": VIRTUAL_POOL}

    def set_extra_state(self, state: dict) -> None:
        if state != {"method": VIRTUAL_POOL}:
            raise UserError(f"a virtual-pool layer's extra state must be {{'method': {VIRTUAL_POOL!r}}}, got {state!r}")


def virtual_pool_reason(name: str, conv: nn.Module) -> str | None:
    """Why ``conv`` cannot be virtual-pooled; None when it can. ``name`` is for the caller's messages only.

    Eligible: an nn.Conv2d or PSConv2d of stride 1 whose output is the input's size (any kernel, groups and
    dilation), so that its stride-2 outputs are the stride-1 outputs at even positions.
    """
    if not isinstance(conv, nn.Conv2d):
        return "not a convolution"
    if type(conv).forward not in (nn.Conv2d.forward, PSConv2d.forward):
        return f"a {type(conv).__name__} with its own forward"
    if tuple(conv.stride) != (1, 1):
        return f"stride {tuple(conv.stride)}, not 1"
    if same_padding(conv) is None:
        return "its output is not the size of its input (padding other than 'same')"
    return None


def same_padding(conv: nn.Conv2d) -> tuple[int, int] | tuple[int, int, int, int] | None:
    """The padding with which ``conv`` keeps its input's size: its own (PyTorch's or a PSConv2d's uneven
    pads, as given), the even numbers 'same' stands for, or None when it changes the size."""
    reach = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
    if isinstance(conv, PSConv2d) and conv.pads is not None:
        top, left, bottom, right = conv.pads
        return conv.pads if [top + bottom, left + right] == reach else None
    if conv.padding == "same":
        return tuple(r // 2 for r in reach) if all(r % 2 == 0 for r in reach) else None
    if conv.padding == "valid":
        return (0, 0) if reach == [0, 0] else None
    return tuple(conv.padding) if [2 * p for p in conv.padding] == reach else None


def upsample_macs(channels: int, height: int, width: int) -> int:
    """What ``channels`` upsampled planes of ``height`` x ``width`` cost, counted as MACs: an interpolated
    value is a weighted sum of its 2 (odd row or column) or 4 (both odd) neighbours; copies count 0."""
    even_rows, odd_rows = (height + 1) // 2, height // 2
    even_cols, odd_cols = (width + 1) // 2, width // 2
    return channels * (2 * even_rows * odd_cols + 2 * odd_rows * even_cols + 4 * odd_rows * odd_cols)


def virtual_pool(model: nn.Module, layers: Sequence[str], input_shape: Sequence[int] | None = None,
                 prior: ConversionReport | None = None) -> ConversionReport:
    """Replace the convolutions whose module names match the ``layers`` globs (fnmatch) by VirtualPoolConv2d
    layers, IN PLACE, and report.

    Every matching conv that cannot be virtual-pooled stays as it is, with a reason in the report's notes;
    so does the first conv the model runs unless a glob is exactly its name. UserError when a glob matches
    no convolution, or none that can be virtual-pooled. ``prior``: the report of a conversion already
    applied to ``model`` (``sparsify``), whose rows (dense MACs, placement) the new report keeps.
    """
    from pscompress.workstation.model_io import default_input_shape  # model_io imports checkpoint, which imports us

    shape = tuple(int(d) for d in input_shape) if input_shape is not None else default_input_shape(model)
    before = prior if prior is not None else measure(model, shape)
    convs = _run_order_convs(model, before)
    chosen, notes = _select(model, layers, convs)
    sizes = layer_inputs(model, chosen, shape)
    for name in chosen:
        replace_module(model, name, VirtualPoolConv2d.from_conv(model.get_submodule(name)))
    after = measure(model, shape)
    rows = [_pooled_row(b, a, model.get_submodule(b.name).conv.out_channels, sizes[b.name])
            if a.name == f"{b.name}.conv" else b
            for b, a in zip(before.layers, after.layers, strict=True)]
    return ConversionReport(after.input_shape, rows, after.params, after.nonzero, before.retained_energy,
                            before.config, [*before.notes, *notes])


def eligible_convs(model: nn.Module, input_shape: Sequence[int]) -> list[str]:
    """The convs of ``model`` a glob could virtual-pool, in run order (the first conv the net runs excluded)."""
    convs = _run_order_convs(model, measure(model, tuple(input_shape)))
    reasons = _reasons(model, convs, globs=())
    return [name for name in convs if reasons[name] is None]


def _run_order_convs(model: nn.Module, report: ConversionReport) -> list[str]:
    return list(dict.fromkeys(row.name for row in report.layers if isinstance(model.get_submodule(row.name), nn.Conv2d)))


def _reasons(model: nn.Module, convs: list[str], globs: Sequence[str]) -> dict[str, str | None]:
    """Per conv, why it stays as it is (None: it can be virtual-pooled)."""
    first = convs[0] if convs else None
    reasons = {name: virtual_pool_reason(name, model.get_submodule(name)) for name in convs}
    if first is not None and reasons[first] is None and first not in globs:
        reasons[first] = "the first conv of the net (give its exact name to virtual-pool it)"
    for parent in {name.rpartition(".")[0] for name in convs}:
        if parent and isinstance(model.get_submodule(parent), VirtualPoolConv2d):
            reasons[f"{parent}.conv"] = "already virtual-pooled"
    return reasons


def _select(model: nn.Module, globs: Sequence[str], convs: list[str]) -> tuple[list[str], list[str]]:
    """The convs to virtual-pool, in run order, and a note for each matching one that stays as it is."""
    reasons = _reasons(model, convs, globs)
    matched = []
    for glob in globs:
        names = [name for name in convs if fnmatch(name, glob)]
        if not names:
            raise UserError(f"`virtual_pool` {glob!r} matches no convolution", "virtual_pool")
        if all(reasons[name] for name in names):
            why = "; ".join(f"{name}: {reasons[name]}" for name in names[:3]) + ("; ..." if len(names) > 3 else "")
            raise UserError(f"`virtual_pool` {glob!r} matches no convolution that can be virtual-pooled "
                            f"(stride 1, output the input's size): {why}", "virtual_pool")
        matched += names
    matched = [name for name in convs if name in set(matched)]
    chosen = [name for name in matched if reasons[name] is None]
    return chosen, [f"{name} stays as it is: {reasons[name]}" for name in matched if reasons[name]]


def _pooled_row(before: LayerReport, after: LayerReport, channels: int, input_size: torch.Size) -> LayerReport:
    """The row of a virtual-pooled layer: its conv at stride 2 plus the upsample, against the MACs before."""
    upsample = upsample_macs(channels, input_size[-2], input_size[-1])
    return replace(before, kind=f"ViP {after.kind}", params=after.params, nonzero=after.nonzero,
                   macs=after.macs + upsample, method=before.method or VIRTUAL_POOL)
