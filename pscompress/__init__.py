"""pscompress: periodic sparse convolutions (pSConv) for fast CNN inference on edge boards.

The public API is small. PyTorch-side names are imported lazily so that the board-side
install (no PyTorch) can still ``import pscompress``.
"""
from __future__ import annotations

from typing import Any

from pscompress.core.errors import UserError
from pscompress.core.patterns import PatternSet, parse_pattern

__version__ = "0.1.0"

_LAZY = {
    "PSConv2d": "pscompress.workstation.layers",
    "sparsify": "pscompress.workstation.sparsify",
    "SparsifyConfig": "pscompress.workstation.sparsify",
    "load_model": "pscompress.workstation.checkpoint",
    "save_checkpoint": "pscompress.workstation.checkpoint",
}

__all__ = ["PatternSet", "UserError", "parse_pattern", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pscompress' has no attribute {name!r}")
