"""Rewriting a (batch-norm folded) model so each PSConv2d becomes one PSConv operator call.

A PSConv2d, the residual ``+`` that follows it and the ReLU after that become one
``FusedPSConv`` module, which calls the torch custom op ``pscompress::psconv`` (or
``pscompress::psconv_add``, both in exporters.torch_ops). The ONNX exporter translates those
ops to the ``ai.pscompress`` operators.
"""
from __future__ import annotations

import math
import operator
import warnings

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from pscompress.core.errors import UserError
from pscompress.exporters import torch_ops  # noqa: F401  registers the torch.ops.pscompress ops FusedPSConv calls
from pscompress.exporters.padding import conv_pads
from pscompress.workstation.layers import PSConv2d
from pscompress.workstation.surgery import replace_module
from pscompress.workstation.virtual_pool import Upsample2x


class FusedPSConv(nn.Module):
    """PSConv2d [+ residual] [+ ReLU/ReLU6] as one operator call, holding only the packed weights."""

    def __init__(self, conv: PSConv2d, residual: bool, clip: tuple[float, float]) -> None:
        super().__init__()
        self.packed = nn.Parameter(conv.packed_weight().clone(), requires_grad=False)
        # Always a bias (zeros when the conv had none): PSConvAdd then never needs an empty input.
        bias = conv.bias.detach().clone() if conv.bias is not None else conv.weight.new_zeros(conv.out_channels)
        self.bias = nn.Parameter(bias, requires_grad=False)
        self.residual = residual
        self.attributes = operator_attributes(conv, clip)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        a = self.attributes
        args = (a["kernel_shape"], a["strides"], a["pads"], a["dilations"], a["group"], a["in_channels"],
                a["out_channels"], a["patterns"], a["shift"], a["clip_min"], a["clip_max"])
        if self.residual:
            return torch.ops.pscompress.psconv_add(x, self.packed, self.bias, z, *args)
        return torch.ops.pscompress.psconv(x, self.packed, self.bias, *args)


def operator_attributes(conv: PSConv2d, clip: tuple[float, float] = (-math.inf, math.inf)) -> dict:
    """The operator's attributes for a PSConv2d, every one explicit (docs/operator.md)."""
    return {
        "kernel_shape": list(conv.kernel_size), "strides": list(conv.stride), "pads": list(layer_pads(conv)),
        "dilations": list(conv.dilation), "group": conv.groups, "in_channels": conv.in_channels,
        "out_channels": conv.out_channels, "patterns": conv.pattern.bitmasks, "shift": conv.shift,
        "clip_min": float(clip[0]), "clip_max": float(clip[1]),
    }


_ADDS = {operator.add, torch.add}
_RELUS = {F.relu, torch.relu}


def fuse_psconv(gm: fx.GraphModule, example: torch.Tensor) -> int:
    """Replace every PSConv2d (+ residual add) (+ ReLU/ReLU6) of ``gm`` by a FusedPSConv. In place.

    ``example`` (an input batch) gives the shapes that decide whether an add is a residual of
    the conv's own output shape. Returns the number of PSConv2d layers replaced.
    """
    ShapeProp(gm).propagate(example)
    modules = dict(gm.named_modules())
    count, replaced = 0, set()
    for node in list(gm.graph.nodes):
        conv = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(conv, PSConv2d):
            continue
        check_supported(node.target, conv)
        if not packable(conv):
            warnings.warn(f"layer {node.target}: dilation {tuple(conv.dilation)} is exported as a dense Conv "
                          "(the native PSConv kernel supports dilation 1 only)", stacklevel=2)
            replace_module(gm, node.target, plain_conv(conv))
            continue
        chain, residual = [node], None
        add = _single_user(node)
        if add is not None and _is_residual_add(add, node):
            residual = add.args[1] if add.args[0] is node else add.args[0]
            chain.append(add)
        act = _single_user(chain[-1])
        clip = _clip_of(act, modules) if act is not None else None
        if clip is not None:
            chain.append(act)
        # The fused module takes the conv's place, so the exported weights keep the layer's name.
        name = node.target if node.target not in replaced else f"{node.target}_{node.name}"
        replaced.add(node.target)
        gm.add_submodule(name, FusedPSConv(conv, residual is not None, clip or (-math.inf, math.inf)))
        with gm.graph.inserting_before(chain[-1]):
            args = (node.args[0],) if residual is None else (node.args[0], residual)
            fused = gm.graph.call_module(name, args)
        fused.meta = dict(chain[-1].meta)  # its shape lets a later conv recognise it as a residual
        chain[-1].replace_all_uses_with(fused)
        for dead in reversed(chain):
            gm.graph.erase_node(dead)
        count += 1
    gm.delete_all_unused_submodules()
    gm.recompile()
    return count


def layer_pads(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """The zeros a conv pads its input with, (top, left, bottom, right): a PSConv2d's explicit
    (uneven) pads, else its padding's."""
    return conv.pads if isinstance(conv, PSConv2d) and conv.pads is not None else conv_pads(conv)


def packable(conv: PSConv2d) -> bool:
    """Whether the layer becomes a PSConv node. The native kernel takes dilation 1 only, and one
    node it refuses stops the whole model from loading with the library: others stay dense Convs."""
    return tuple(conv.dilation) == (1, 1)


def check_supported(name: str, conv: PSConv2d) -> None:
    if conv.padding_mode != "zeros":
        raise UserError(f"layer {name}: padding_mode={conv.padding_mode!r} is not supported by the PSConv operator (only zeros)")
    if conv.weight.dtype != torch.float32:
        raise UserError(f"layer {name}: weights are {conv.weight.dtype}, the PSConv operator takes float32")


def _single_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _is_residual_add(add: fx.Node, conv_node: fx.Node) -> bool:
    is_add = (add.op == "call_function" and add.target in _ADDS) or (add.op == "call_method" and add.target == "add")
    if not is_add or len(add.args) != 2 or add.kwargs:
        return False
    other = add.args[1] if add.args[0] is conv_node else add.args[0]
    if not isinstance(other, fx.Node) or other is conv_node:
        return False
    mine, theirs = conv_node.meta.get("tensor_meta"), other.meta.get("tensor_meta")
    return mine is not None and theirs is not None and tuple(theirs.shape) == tuple(mine.shape) \
        and theirs.dtype == torch.float32


def _clip_of(node: fx.Node, modules: dict) -> tuple[float, float] | None:
    """The (min, max) an activation node clips to, or None when it is not a plain clip."""
    if node.op == "call_module":
        m = modules.get(node.target)
        if type(m) is nn.ReLU:
            return (0.0, math.inf)
        if type(m) is nn.ReLU6:
            return (0.0, 6.0)
        return None
    if node.op == "call_function" and node.target in _RELUS and len(node.args) == 1:
        return (0.0, math.inf)
    if node.op == "call_method" and node.target == "relu" and len(node.args) == 1:
        return (0.0, math.inf)
    return None


def densify(gm: fx.GraphModule) -> None:
    """Replace every PSConv2d of ``gm`` by a plain nn.Conv2d with its masked weights (the dense baseline). In place."""
    for name, conv in list(gm.named_modules()):
        if isinstance(conv, PSConv2d):
            check_supported(name, conv)
            replace_module(gm, name, plain_conv(conv))


def plain_conv(conv: PSConv2d) -> nn.Module:
    """An nn.Conv2d computing what ``conv`` does, its masked weights stored dense (after a ZeroPad2d
    for uneven pads)."""
    plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, conv.bias is not None)
    with torch.no_grad():
        plain.weight.copy_(conv.masked_weight())
        if conv.bias is not None:
            plain.bias.copy_(conv.bias)
    if conv.pads is None:
        return plain.eval()
    top, left, bottom, right = conv.pads
    return nn.Sequential(nn.ZeroPad2d((left, right, top, bottom)), plain).eval()


class UpsampleOp(nn.Module):
    """A virtual-pool upsample as one ``pscompress::upsample_linear2x`` call (what it computes, as one op)."""

    def forward(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return torch.ops.pscompress.upsample_linear2x(y, like)


def upsample_ops(gm: fx.GraphModule) -> None:
    """Replace every virtual-pool upsample of ``gm`` by an UpsampleOp, for the ONNX exporter. In place."""
    for name in [name for name, m in gm.named_modules() if isinstance(m, Upsample2x)]:
        replace_module(gm, name, UpsampleOp())
