"""The torch custom ops ``pscompress::psconv`` and ``pscompress::psconv_add``: the PSConv operators
(docs/operator.md) on the PyTorch side; and ``pscompress::upsample_linear2x``, a virtual-pool layer's
upsample, which the ONNX exporter writes as a standard Resize.

exporters.fuse rewrites each PSConv2d into a call of one of them; the ONNX exporter translates
those calls to ``ai.pscompress`` nodes. Run in PyTorch they compute exactly what the unfused
layers did, and their fake implementations give torch.export the output shapes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pscompress.core.patterns import PatternSet
from pscompress.workstation.virtual_pool import upsample2x


def _dense(w: torch.Tensor, kernel_shape: list[int], in_per_group: int, out_channels: int,
           patterns: list[int], shift: int) -> torch.Tensor:
    mask = PatternSet.from_bitmasks(kernel_shape, patterns).mask(out_channels, in_per_group, shift)
    dense = w.new_zeros(mask.size)
    dense[torch.from_numpy(mask.reshape(-1))] = w
    return dense.reshape(mask.shape)


def _out_shape(x: torch.Tensor, kernel_shape, strides, pads, dilations, out_channels) -> list:
    spatial = [
        (x.shape[2 + d] + pads[d] + pads[d + 2] - dilations[d] * (kernel_shape[d] - 1) - 1) // strides[d] + 1
        for d in range(2)
    ]
    return [x.shape[0], out_channels, *spatial]


@torch.library.custom_op("pscompress::psconv", mutates_args=())
def psconv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, kernel_shape: list[int], strides: list[int],
           pads: list[int], dilations: list[int], group: int, in_channels: int, out_channels: int,
           patterns: list[int], shift: int, clip_min: float, clip_max: float) -> torch.Tensor:
    """The operator's semantics (docs/operator.md) with F.conv2d on the rebuilt dense kernel."""
    dense = _dense(w, kernel_shape, in_channels // group, out_channels, patterns, shift)
    padded = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
    return F.conv2d(padded, dense, b, strides, 0, dilations, group).clamp(clip_min, clip_max)


@torch.library.custom_op("pscompress::psconv_add", mutates_args=())
def psconv_add(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, z: torch.Tensor, kernel_shape: list[int],
               strides: list[int], pads: list[int], dilations: list[int], group: int, in_channels: int,
               out_channels: int, patterns: list[int], shift: int, clip_min: float, clip_max: float) -> torch.Tensor:
    dense = _dense(w, kernel_shape, in_channels // group, out_channels, patterns, shift)
    padded = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
    return (F.conv2d(padded, dense, b, strides, 0, dilations, group) + z).clamp(clip_min, clip_max)


@psconv.register_fake
def _psconv_fake(x, w, b, kernel_shape, strides, pads, dilations, group, in_channels, out_channels,
                 patterns, shift, clip_min, clip_max):
    return x.new_empty(_out_shape(x, kernel_shape, strides, pads, dilations, out_channels))


@psconv_add.register_fake
def _psconv_add_fake(x, w, b, z, kernel_shape, strides, pads, dilations, group, in_channels, out_channels,
                     patterns, shift, clip_min, clip_max):
    return x.new_empty(_out_shape(x, kernel_shape, strides, pads, dilations, out_channels))


@torch.library.custom_op("pscompress::upsample_linear2x", mutates_args=())
def upsample_linear2x(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A virtual-pool layer's upsample of ``y`` to ``like``'s H x W: ONNX Resize (linear, asymmetric, scale 2)
    then a crop to that size (pscompress.workstation.virtual_pool)."""
    return upsample2x(y, like.shape[2], like.shape[3])


@upsample_linear2x.register_fake
def _upsample_linear2x_fake(y, like):
    return y.new_empty([y.shape[0], y.shape[1], like.shape[2], like.shape[3]])
