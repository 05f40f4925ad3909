"""Padding arithmetic both exporters share: PyTorch's conv padding per side, and the TFLite
padding mode (VALID/SAME) that reproduces a given padding, if any."""
from __future__ import annotations

from torch import nn


def conv_pads(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """The zeros ``conv`` pads its input with, as (top, left, bottom, right): ONNX's ``pads`` order."""
    if conv.padding == "valid":
        return (0, 0, 0, 0)
    if conv.padding == "same":
        # As PyTorch does it: the extra pixel of an odd total goes to the bottom/right.
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        return (total[0] // 2, total[1] // 2, total[0] - total[0] // 2, total[1] - total[1] // 2)
    top, left = conv.padding
    return (top, left, top, left)


def pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def tflite_padding(size: tuple[int, int], out: tuple[int, int], kernel, stride, dilation,
                   pads: tuple[int, int]) -> str | None:
    """"VALID" or "SAME" when TFLite's padding gives PyTorch's windows exactly, else None.

    ``pads`` are the top and left pads: PyTorch's bottom/right ones only matter where a window
    reaches them, which ``out`` already says.
    """
    modes = {"VALID", "SAME"}
    for n, o, k, s, d, p in zip(size, out, pair(kernel), pair(stride), pair(dilation), pair(pads)):
        extent = (k - 1) * d + 1
        if not (p == 0 and o == (n - extent) // s + 1):
            modes.discard("VALID")
        same_out = -(-n // s)
        if not (o == same_out and max((same_out - 1) * s + extent - n, 0) // 2 == p):
            modes.discard("SAME")
    return "VALID" if "VALID" in modes else "SAME" if modes else None
