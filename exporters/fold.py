"""Folding batch norm into the convolution before it, so exporters see one op per conv.

An eval-mode BatchNorm2d is an affine map per channel: y = (x - mean) * g / sqrt(var + eps) + b.
After a conv it becomes part of the conv's weight (scaled per output channel) and bias.
Scaling a PSConv2d's weight per output channel keeps every zero a zero, so the pattern holds.
A virtual-pool layer's upsample (pscompress.workstation.virtual_pool) averages within each channel with
weights summing to 1, so a per-channel affine map commutes with it: the batch norm after it folds into
the conv before it. After a sum of two convs (a lean layer's depth-wise stencil and 1x1), it scales
both and adds its shift to one.
"""
from __future__ import annotations

import copy
import operator

import torch
from torch import fx, nn

from pscompress.core.errors import UserError
from pscompress.workstation.virtual_pool import Upsample2x


class _ConvLeafTracer(fx.Tracer):
    """Keeps every Conv2d subclass (PSConv2d included) and every virtual-pool upsample as one call_module node."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (nn.Conv2d, Upsample2x)) or super().is_leaf_module(m, module_qualified_name)


def trace(module: nn.Module) -> fx.GraphModule:
    """Symbolically trace a model with convolutions kept as leaves; a clear error when it cannot."""
    tracer = _ConvLeafTracer()
    try:
        graph = tracer.trace(module)
    except Exception as exc:  # fx fails in many ways on data-dependent Python control flow
        raise UserError(f"cannot trace the model's forward with torch.fx ({exc.__class__.__name__}: {exc})") from exc
    return fx.GraphModule(tracer.root, graph, module.__class__.__name__)


def fold_batchnorm(module: nn.Module) -> fx.GraphModule:
    """An eval copy of ``module`` in which every BatchNorm2d that follows a conv is folded into it.

    A batch norm whose input is not a conv's output (or a conv whose output is also used
    elsewhere) is left in place. The input module is not modified.
    """
    gm = trace(copy.deepcopy(module).eval())
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        source = node.args[0]
        convs = _summed_convs(source, modules) or [_through_upsample(source, modules)]
        if not (all(_is_module(c, modules, nn.Conv2d) and len(c.users) == 1 and _call_count(gm, c.target) == 1
                    for c in convs) and len(source.users) == 1):
            continue  # folding would change the conv's other uses too
        bn = modules[node.target]
        if bn.running_mean is None or bn.running_var is None:
            continue  # batch statistics at inference time: nothing constant to fold
        fold_into_conv(modules[convs[0].target], bn)
        for other in convs[1:]:  # a sum of convs: each is scaled, the shift goes in once
            fold_into_conv(modules[other.target], bn, shift=False)
        node.replace_all_uses_with(source)
        gm.graph.erase_node(node)
        _delete_submodule(gm, node.target)
    gm.graph.lint()
    gm.recompile()
    return gm.eval()


@torch.no_grad()
def fold_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d, shift: bool = True) -> None:
    """Fold ``bn`` (applied to ``conv``'s output) into ``conv``'s weight and bias, in place; with
    ``shift=False`` only its scale (the other convs of a sum the batch norm follows)."""
    scale = bn.running_var.add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight
    offset = -bn.running_mean * scale
    if bn.bias is not None:
        offset = offset + bn.bias
    shift = offset if shift else torch.zeros_like(offset)
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype))
    bias = shift if conv.bias is None else conv.bias * scale + shift
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype))


def _summed_convs(node: fx.Node, modules: dict[str, nn.Module]) -> list[fx.Node] | None:
    """The two conv nodes ``node`` adds (a lean layer: depth-wise stencil + 1x1), else None."""
    if not (isinstance(node, fx.Node) and node.op == "call_function" and node.target in (operator.add, torch.add)
            and len(node.args) == 2 and not node.kwargs):
        return None
    convs = list(node.args)
    return convs if all(_is_module(c, modules, nn.Conv2d) for c in convs) and convs[0] is not convs[1] else None


def _through_upsample(node: fx.Node, modules: dict[str, nn.Module]) -> fx.Node:
    """The node whose output a virtual-pool upsample ``node`` upsamples; ``node`` itself if it is no upsample."""
    return node.args[0] if _is_module(node, modules, Upsample2x) else node


def _is_module(node: object, modules: dict[str, nn.Module], kind: type) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_module" and isinstance(modules[node.target], kind)


def _call_count(gm: fx.GraphModule, target: str) -> int:
    return sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == target)


def _delete_submodule(gm: fx.GraphModule, target: str) -> None:
    # A module called twice stays until its last call is gone.
    if _call_count(gm, target) == 0:
        gm.delete_submodule(target)
