"""Lean convolutions (Ephrath, Ruthotto et al., LeanConvNets / LeanResNet): a fully coupled 3x3 conv
replaced by the sum of a depth-wise star-stencil 3x3 conv and a 1x1 conv over all channels.

The depth-wise part is a :class:`~pscompress.workstation.layers.PSConv2d` (groups = channels, one
support, period 1), so exporters and fine-tuning treat it like any depth-wise pSConv layer::

    model = build("resnet20", in_channels=1)
    report = leanify(model, "5point")   # model now holds LeanConv2d layers
    print(report)
"""
from __future__ import annotations

from fnmatch import fnmatch
from typing import Any, Sequence

import torch
from torch import nn

from pscompress.core.errors import UserError
from pscompress.core.patterns import PatternSet
from pscompress.workstation.layers import PSConv2d
from pscompress.workstation.measure import ConversionReport, LayerReport, measure
from pscompress.workstation.surgery import replace_module

LEAN = "lean"
CENTRE = 4
# Row-major positions of a 3x3 kernel; "4point" drops the centre, which the 1x1 conv already couples.
STENCILS: dict[str, frozenset[int]] = {"5point": frozenset({1, 3, 4, 5, 7}), "4point": frozenset({1, 3, 5, 7})}


def stencil_pattern(stencil: str) -> PatternSet:
    """The depth-wise kernels' support: one star stencil, period 1."""
    if stencil not in STENCILS:
        raise UserError(f"unknown stencil {stencil!r}: choose {' or '.join(STENCILS)}", "stencil")
    return PatternSet((3, 3), (STENCILS[stencil],))


class LeanConv2d(nn.Module):
    """depthwise(x) + pointwise(x): a star-stencil depth-wise 3x3 conv plus a 1x1 conv, same stride.

    The bias, if any, lives on the 1x1 conv. ``stencil`` travels in the state dict as extra state,
    so a checkpoint rebuilds the layer before its weights load.
    """

    def __init__(self, channels: int, stride: Sequence[int] | int = 1, bias: bool = False, stencil: str = "5point",
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        self.stencil = stencil
        self.depthwise = PSConv2d(channels, channels, 3, stride=stride, padding=1, groups=channels, bias=False,
                                  device=device, dtype=dtype, pattern=stencil_pattern(stencil))
        self.pointwise = nn.Conv2d(channels, channels, 1, stride=stride, bias=bias, device=device, dtype=dtype)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, stencil: str) -> "LeanConv2d":
        """The lean layer closest to ``conv`` in the Frobenius norm.

        The lean family's weights occupy disjoint entries of the dense 3x3 weight W: the 1x1 conv
        is W[:, :, 1, 1] and the depth-wise taps are W[c, c] at the stencil's off-centre
        positions. Copying those entries and dropping the rest is therefore the least-squares
        fit of W. The centre of the diagonal goes to the 1x1 conv (the depth-wise centre of
        "5point" starts at 0, left for fine-tuning to use), so the two parts never overlap.
        """
        layer = cls(conv.in_channels, conv.stride, conv.bias is not None, stencil,
                    device=conv.weight.device, dtype=conv.weight.dtype)
        weight = conv.weight.detach()
        channels = torch.arange(conv.in_channels)
        with torch.no_grad():
            diagonal = weight[channels, channels].clone()  # (C, 3, 3): each channel's own kernel
            diagonal[:, 1, 1] = 0
            layer.depthwise.weight.copy_(diagonal.unsqueeze(1) * layer.depthwise.mask)
            layer.pointwise.weight.copy_(weight[:, :, 1:2, 1:2])
            if conv.bias is not None:
                layer.pointwise.bias.copy_(conv.bias.detach())
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.depthwise(x) + self.pointwise(x)

    def get_extra_state(self) -> dict:
        return {"method": LEAN, "stencil": self.stencil}

    def set_extra_state(self, state: dict) -> None:
        # Checkpoints rebuild the depth-wise layer from its own extra state: it must still be this stencil.
        if self.depthwise.pattern != stencil_pattern(state["stencil"]) or self.depthwise.shift != 0:
            raise UserError(f"a lean layer's depth-wise pattern ({self.depthwise.pattern.describe()}) is not "
                            f"its {state['stencil']} stencil")
        self.stencil = state["stencil"]

    def extra_repr(self) -> str:
        return f"stencil={self.stencil}"


def lean_reason(name: str, conv: nn.Module, first: str | None) -> str | None:
    """Why the conv cannot (or should not) become lean; None when it can."""
    if not isinstance(conv, nn.Conv2d) or isinstance(conv, PSConv2d):
        return "not a dense nn.Conv2d"
    if name == first:
        return "the first conv of the net"
    checks = [(tuple(conv.kernel_size) != (3, 3), f"{conv.kernel_size[0]}x{conv.kernel_size[1]} kernel, not 3x3"),
              (conv.in_channels != conv.out_channels, f"{conv.in_channels} in != {conv.out_channels} out channels"),
              (conv.groups != 1, f"groups={conv.groups}"),
              (tuple(conv.dilation) != (1, 1), f"dilation {tuple(conv.dilation)}"),
              (tuple(conv.padding) != (1, 1) or conv.padding_mode != "zeros", "padding is not 1 (zeros)"),
              (type(conv).forward is not nn.Conv2d.forward, f"a {type(conv).__name__} with its own forward")]
    return next((why for failed, why in checks if failed), None)


def leanify(model: nn.Module, stencil: str = "5point", include: Sequence[str] = (), exclude: Sequence[str] = (),
            input_shape: Sequence[int] | None = None) -> ConversionReport:
    """Replace the model's eligible 3x3 convolutions by LeanConv2d layers, IN PLACE, and report.

    Eligible: square-channel, groups=1, dilation 1, padding 1 3x3 convs, all but the first the model
    runs. ``include`` globs (fnmatch) also take the first conv; ``exclude`` globs stay dense. Every
    other conv is left alone with a reason in the report's notes. Raises UserError when none is eligible.
    """
    from pscompress.workstation.model_io import default_input_shape  # model_io imports checkpoint, which imports us

    stencil_pattern(stencil)
    shape = tuple(int(d) for d in input_shape) if input_shape is not None else default_input_shape(model)
    before = measure(model, shape)
    convs = [layer.name for layer in before.layers if isinstance(model.get_submodule(layer.name), nn.Conv2d)]
    convs = list(dict.fromkeys(convs))
    for option, globs in (("include", include), ("exclude", exclude)):
        for glob in globs:
            if not any(fnmatch(name, glob) for name in convs):
                raise UserError(f"`{option}` {glob!r} matches no convolution", option)
    first = convs[0] if convs else None
    chosen, notes = [], []
    for name in convs:
        conv = model.get_submodule(name)
        included = any(fnmatch(name, glob) for glob in include)
        reason = lean_reason(name, conv, None if included else first)
        if reason is None and not included and any(fnmatch(name, glob) for glob in exclude):
            reason = "matches --exclude"
        if reason is None:
            chosen.append(name)
        else:
            notes.append(f"{name} stays as it is: {reason}")
    if not chosen:
        raise UserError("no convolution to make lean: it needs a 3x3 conv with as many input as output "
                        "channels, groups=1, padding 1 (the first conv stays dense unless named with `include`)",
                        "include")
    for name in chosen:
        replace_module(model, name, LeanConv2d.from_conv(model.get_submodule(name), stencil))
    report = _merge(before, measure(model, shape), chosen, stencil)
    report.notes = notes
    return report


def _merge(before: ConversionReport, after: ConversionReport, chosen: list[str], stencil: str) -> ConversionReport:
    """``after``'s layers with each lean layer's two convs as one row, against the dense conv it replaced."""
    dense = {layer.name: layer for layer in before.layers}
    merged: dict[str, LayerReport] = {}
    layers: list[LayerReport] = []
    for layer in after.layers:
        parent = layer.name.rpartition(".")[0]
        if parent not in chosen:
            layers.append(layer)
            continue
        if parent not in merged:
            merged[parent] = LayerReport(parent, "lean 3x3", 0, 0, dense[parent].macs_dense, 0,
                                         pattern=stencil, method=LEAN)
            layers.append(merged[parent])
        merged[parent].params += layer.params
        merged[parent].nonzero += layer.nonzero
        merged[parent].macs += layer.macs
    return ConversionReport(after.input_shape, layers, after.params, after.nonzero)
