"""PSConv2d: a drop-in nn.Conv2d whose kernels keep a periodic, pre-defined support."""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pscompress.core.errors import UserError
from pscompress.core.patterns import PatternSet


class PSConv2d(nn.Conv2d):
    """nn.Conv2d with weight[o, i] restricted to support (o + i + shift) mod P.

    The forward multiplies the weight by the fixed mask, so the gradient of every masked
    weight is exactly zero: optimizer state (momentum, Adam moments, weight decay on a zero
    weight) can never revive it. The stored weight is also kept zeroed outside the mask.
    The pattern set and shift travel in the state dict as extra state.

    ``pads`` (top, left, bottom, right), when given, replaces ``padding``: the zeros TF-style 'same'
    padding adds, which PyTorch's symmetric ``padding`` cannot express when they are uneven
    (a Conv2d subclass that pads in its forward, converted by ``sparsify``). They travel in the
    extra state too; the exported operator takes them as its ``pads``.
    """

    pads: tuple[int, int, int, int] | None = None  # a class default: layers pickled before pads existed have none

    def __init__(self, *args: Any, pattern: PatternSet, shift: int = 0, pads: Sequence[int] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("mask", torch.ones_like(self.weight, dtype=torch.bool), persistent=False)
        if pads is not None:
            self.set_pads(pads)
        self.set_pattern(pattern, shift)

    def set_pads(self, pads: Sequence[int]) -> None:
        """Pad (top, left, bottom, right) zeros: even pads become ``padding``, uneven ones ``self.pads``."""
        valid = isinstance(pads, (list, tuple)) and len(pads) == 4 \
            and all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p <= 1 << 16 for p in pads)
        if not valid:
            raise UserError(f"pads must be four integers (top, left, bottom, right) in [0, 65536], got {pads!r}")
        if self.padding_mode != "zeros":
            raise UserError(f"explicit pads need padding_mode='zeros', the layer has {self.padding_mode!r}")
        top, left, bottom, right = pads
        even = (top, left) == (bottom, right)
        self.padding = (top, left) if even else (0, 0)
        self.pads = None if even else (top, left, bottom, right)

    def set_pattern(self, pattern: PatternSet, shift: int = 0) -> None:
        if tuple(pattern.kernel_size) != tuple(self.kernel_size):
            raise UserError(f"pattern is for {pattern.kernel_size} kernels, layer has {self.kernel_size}")
        self.pattern = pattern
        self.shift = int(shift)
        mask = pattern.mask(self.out_channels, self.in_channels // self.groups, self.shift)
        self.mask = torch.from_numpy(mask).to(self.weight.device)
        with torch.no_grad():
            self.weight.mul_(self.mask)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, pattern: PatternSet, shift: int = 0,
                  pads: Sequence[int] | None = None) -> "PSConv2d":
        """A PSConv2d with the conv's hyper-parameters and its weights masked; ``pads`` replace its padding."""
        layer = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size,
            stride=conv.stride, padding=conv.padding if pads is None else 0, dilation=conv.dilation,
            groups=conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
            device=conv.weight.device, dtype=conv.weight.dtype, pattern=pattern, shift=shift, pads=pads,
        )
        with torch.no_grad():
            layer.weight.copy_(conv.weight * layer.mask)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer

    def masked_weight(self) -> torch.Tensor:
        return self.weight * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pads is not None:
            top, left, bottom, right = self.pads
            x = F.pad(x, (left, right, top, bottom))
        return self._conv_forward(x, self.masked_weight(), self.bias)

    def packed_weight(self) -> torch.Tensor:
        """The kept weights in (o, i, position) order: the operator's W_packed input."""
        return self.weight.detach().flatten()[self.mask.flatten()]

    def get_extra_state(self) -> dict:
        state = {"kernel_size": list(self.pattern.kernel_size), "patterns": self.pattern.bitmasks, "shift": self.shift}
        return state if self.pads is None else {**state, "pads": list(self.pads)}

    def set_extra_state(self, state: dict) -> None:
        if "pads" in state:
            self.set_pads(state["pads"])
        self.set_pattern(PatternSet.from_bitmasks(state["kernel_size"], state["patterns"]), state["shift"])

    def extra_repr(self) -> str:
        pads = "" if self.pads is None else f", pads={self.pads}"
        return f"{super().extra_repr()}{pads}, pattern={self.pattern.describe()}, shift={self.shift}"

