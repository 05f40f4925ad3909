"""PSConv2d: a drop-in nn.Conv2d whose kernels keep a periodic, pre-defined support."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pscompress.core.errors import UserError
from pscompress.core.patterns import PatternSet


class PSConv2d(nn.Conv2d):
    """nn.Conv2d with weight[o, i] restricted to support (o + i + shift) mod P.

    The forward multiplies the weight by the fixed mask, so the gradient of every masked
    weight is exactly zero: optimizer state (momentum, Adam moments, weight decay on a zero
    weight) can never revive it. The stored weight is also kept zeroed outside the mask.
    The pattern set and shift travel in the state dict as extra state.
    """

    def __init__(self, *args: Any, pattern: PatternSet, shift: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("mask", torch.ones_like(self.weight, dtype=torch.bool), persistent=False)
        self.set_pattern(pattern, shift)

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
    def from_conv(cls, conv: nn.Conv2d, pattern: PatternSet, shift: int = 0) -> "PSConv2d":
        """A PSConv2d with the conv's hyper-parameters and its weights masked."""
        layer = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size,
            stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
            bias=conv.bias is not None, padding_mode=conv.padding_mode,
            device=conv.weight.device, dtype=conv.weight.dtype, pattern=pattern, shift=shift,
        )
        with torch.no_grad():
            layer.weight.copy_(conv.weight * layer.mask)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer

    def masked_weight(self) -> torch.Tensor:
        return self.weight * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.masked_weight(), self.bias)

    def packed_weight(self) -> torch.Tensor:
        """The kept weights in (o, i, position) order: the operator's W_packed input."""
        return self.weight.detach().flatten()[self.mask.flatten()]

    def get_extra_state(self) -> dict:
        return {"kernel_size": list(self.pattern.kernel_size), "patterns": self.pattern.bitmasks, "shift": self.shift}

    def set_extra_state(self, state: dict) -> None:
        self.set_pattern(PatternSet.from_bitmasks(state["kernel_size"], state["patterns"]), state["shift"])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pattern={self.pattern.describe()}, shift={self.shift}"

