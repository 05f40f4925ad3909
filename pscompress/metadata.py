"""The metadata pscompress records with a model, checked once where it is read.

A checkpoint's ``meta`` dict, an ONNX model's ``pscompress.*`` metadata properties and a
.tflite model's ``pscompress`` JSON share their fields: ``input_shape`` [C, H, W], ``classes``
(names), ``accuracy`` (a fraction). Readers pass what they decoded through ``check_metadata``
so the rest of the code can trust those fields. torch-free and numpy-free.
"""
from __future__ import annotations

import json
import math
from typing import Any, Mapping

from pscompress.errors import UserError, short_repr
from pscompress.limits import MAX_CLASSES, check_input_shape, is_int

ONNX_PREFIX = "pscompress."
_FRACTIONS = ("accuracy", "dense_accuracy")
_MAPPINGS = ("finetune", "conversion")  # written by finetune and convert, read back by them


def check_metadata(meta: Any, source: str) -> dict[str, Any]:
    """``meta`` with its known fields validated (input_shape normalised to a list of ints)."""
    if not isinstance(meta, Mapping):
        raise UserError(f"{source}: the metadata is a {type(meta).__name__}, not a mapping of names to values")
    meta = dict(meta)
    if meta.get("input_shape") is not None:
        meta["input_shape"] = list(check_input_shape(meta["input_shape"], f"{source}: input_shape"))
    if meta.get("classes") is not None:
        meta["classes"] = _classes(meta["classes"], source)
    for key in _FRACTIONS:
        value = meta.get(key)
        if value is not None and not (_is_number(value) and 0 <= value <= 1):
            raise UserError(f"{source}: {key} must be a fraction in [0, 1], got {value!r}")
    for key in _MAPPINGS:
        if meta.get(key) is not None and not isinstance(meta[key], Mapping):
            raise UserError(f"{source}: {key} must be a mapping, got {type(meta[key]).__name__}")
    return meta


def decode_onnx_metadata(props: Mapping[str, str], source: str) -> dict[str, Any]:
    """An ONNX model's pscompress metadata: prefix stripped, JSON values (lists, numbers) decoded, validated."""
    meta: dict[str, Any] = {}
    for key, value in props.items():
        if not key.startswith(ONNX_PREFIX):
            continue
        try:
            meta[key[len(ONNX_PREFIX):]] = json.loads(value)
        except ValueError:
            meta[key[len(ONNX_PREFIX):]] = value
    return check_metadata(meta, source)


def _classes(classes: Any, source: str) -> list[str]:
    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) or is_int(c) for c in classes):
        raise UserError(f"{source}: classes must be a list of class names, got {short_repr(classes)}")
    if len(classes) > MAX_CLASSES:
        raise UserError(f"{source}: {len(classes):,} classes, more than the {MAX_CLASSES:,} allowed")
    return [str(c) for c in classes]


def _is_number(value: Any) -> bool:
    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)
