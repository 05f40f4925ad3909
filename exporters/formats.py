"""The export formats in one table: per format its suffix, the options it takes and its exporter.

The CLI reads everything format-specific from here (ultralytics-exporter style), so a new
format is one more row. Exporters are named, not imported, so reading the table loads neither
PyTorch nor onnx.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pscompress.core.errors import UserError
from pscompress.exporters.summary import ExportSummary


@dataclass(frozen=True)
class ExportFormat:
    name: str  # the --format value
    label: str  # how messages name it
    suffix: str
    options: tuple[str, ...]  # keywords its exporter takes besides input_shape (--NAME on the CLI, _ as -)
    exporter: str  # "module:function", called as function(loaded, path, input_shape=..., **options)

    def load(self) -> Callable[..., ExportSummary]:
        """The exporter function; a UserError when this install lacks a package it needs."""
        module, _, function = self.exporter.partition(":")
        try:
            return getattr(importlib.import_module(module), function)
        except ImportError as exc:
            raise UserError(f"{self.label} export is not available in this install ({exc})") from exc


FORMATS: dict[str, ExportFormat] = {f.name: f for f in (
    ExportFormat("onnx", "ONNX", ".onnx", ("dense", "dynamic_hw"), "pscompress.exporters.onnx_export:export_onnx"),
    ExportFormat("tflite", "TFLite", ".tflite", ("fp16", "int8", "data", "calibration"),
                 "pscompress.exporters.tflite:export_tflite"),
)}


def format_of(path: str | os.PathLike) -> ExportFormat | None:
    """The format a file name's suffix (any case) names, or None."""
    suffix = Path(path).suffix.lower()
    return next((f for f in FORMATS.values() if f.suffix == suffix), None)


def format_taking(option: str) -> ExportFormat:
    """The format whose exporter takes ``option``."""
    return next(f for f in FORMATS.values() if option in f.options)
