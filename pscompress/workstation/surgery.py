"""Finding and replacing submodules of a PyTorch model by name: how conversion and export edit a network."""
from __future__ import annotations

from torch import nn

from pscompress.workstation.layers import PSConv2d


def psconv_layers(module: nn.Module) -> dict[str, PSConv2d]:
    return {name: m for name, m in module.named_modules() if isinstance(m, PSConv2d)}


def has_submodule(module: nn.Module, name: str) -> bool:
    try:
        module.get_submodule(name)
        return True
    except AttributeError:
        return False


def replace_module(module: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` in place of the submodule called ``name`` (dotted path)."""
    parent_name, _, child = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    setattr(parent, child, new)
