"""The metadata pscompress records with a model: one schema for checkpoints, ONNX and TFLite.

Fields (all optional; readers pass what they decoded through ``check_metadata`` so the rest of
the code can trust them):

- ``schema``: the version of this schema (``SCHEMA``); ``version``: the pscompress version
  that wrote the file.
- ``input_shape`` [C, H, W]; ``input_layout`` ("NCHW" or "NHWC", the exported graph's);
  ``classes`` (names); ``accuracy``, ``dense_accuracy`` (fractions); ``arch``.
- ``pattern`` (the layers' pattern families, "4of9", at most ``MAX_PATTERN_TEXT`` characters:
  ``pattern_text``, ``patterns_text``); ``operator`` (ONNX: the custom operator
  set); ``fp16``, ``psconv_layers`` (TFLite: per layer, its kernel size, patterns and shift);
  ``meta`` (TFLite: the checkpoint's own metadata); ``finetune``, ``conversion``, ``sparsify``
  (checkpoints: how the model was made; ``sparsify`` is the whole SparsifyConfig).
- ``outputs`` (ONNX): the model's outputs in order, each ``{"name", "shape"}`` with the shape
  of one image's output (no batch dimension); absent in older files, which have one
  output, ``logits``.
- ``tune`` (ONNX, written by ``pscompress tune``): the plan the file runs and how it was measured:
  ``plan`` ("per-node", "native" or "dense": every PSConv node native or dense), ``fallback``
  (the per-node choices were slower as a whole model), ``batch``, ``threads`` (null: onnxruntime's
  default), ``cpu`` (model name), ``isa`` (pscompress.runtime.cpu_path()), ``onnxruntime``,
  ``pscompress`` (versions), ``clock``, ``date`` (ISO 8601, UTC), ``model_ms`` (whole-model
  median per variant timed), ``nodes`` (per PSConv node: ``name``, ``op``, ``native_ms``,
  ``dense_ms``, ``choice``: "native" or "dense", how the file runs it).

ONNX stores each field as a ``pscompress.<field>`` metadata property holding JSON; TFLite as one
JSON object in the ``pscompress`` Model.metadata entry. torch-free and numpy-free.
"""
from __future__ import annotations

import json
import math
from typing import Any, Mapping

from pscompress.core.errors import UserError, short_repr
from pscompress.core.limits import MAX_CLASSES, check_input_shape, is_int

SCHEMA = 1
ONNX_PREFIX = "pscompress."
TFLITE_ENTRY = "pscompress"  # the Model.metadata entry name
_FRACTIONS = ("accuracy", "dense_accuracy")
_MAPPINGS = ("finetune", "conversion", "sparsify", "tune")  # the records finetune, convert and tune write
# A pattern's name in metadata and `info`: a family ("4of9") or explicit supports such as
# "0,1,3,4/4,5,7,8" (8 characters a 4-position support, so about ten of them, or the papers'
# period 8 with one dense kernel); beyond this many characters the text gives the period and density.
MAX_PATTERN_TEXT = 80
MAX_OUTPUTS = 256  # outputs of one model
MAX_OUTPUT_RANK = 8


def export_metadata(source_meta: Mapping[str, Any], arch: str | None, input_shape: list[int] | tuple[int, ...],
                    **fields: Any) -> dict[str, Any]:
    """The fields every export records, from the checkpoint's metadata, plus format-specific ``fields``."""
    from pscompress import __version__

    meta: dict[str, Any] = {"schema": SCHEMA, "version": __version__, "input_shape": list(input_shape)}
    if source_meta.get("classes"):
        meta["classes"] = [str(c) for c in source_meta["classes"]]
    if source_meta.get("accuracy") is not None:
        meta["accuracy"] = float(source_meta["accuracy"])
    if arch:
        meta["arch"] = arch
    meta.update(fields)
    return meta


def pattern_text(name: str, period: int, density: float) -> str:
    """How metadata and ``info`` show one layer's pattern: ``name`` when it is short, else its period and density."""
    return name if len(name) <= MAX_PATTERN_TEXT else f"period {period}, density {density:.3f}"


def patterns_text(names: list[str]) -> str:
    """Pattern names joined with "; ", at most ``MAX_PATTERN_TEXT`` characters: the first ones and how many more."""
    shown: list[str] = []
    for index, name in enumerate(names):
        rest = len(names) - index - 1
        more = f"; and {rest} more" if rest else ""
        if len("; ".join([*shown, name])) + len(more) > MAX_PATTERN_TEXT:
            if not shown:
                return f"{len(names)} pattern(s), too long to show"
            return "; ".join(shown) + f"; and {len(names) - len(shown)} more"
        shown.append(name)
    return "; ".join(shown)


def encode_onnx_metadata(meta: Mapping[str, Any]) -> dict[str, str]:
    """``meta`` as ONNX metadata properties: prefixed keys, JSON values (plain strings stay as they are)."""
    return {ONNX_PREFIX + key: value if isinstance(value, str) else json.dumps(value)
            for key, value in meta.items() if value is not None}


def encode_tflite_metadata(meta: Mapping[str, Any]) -> bytes:
    """``meta`` as the JSON stored in a .tflite file's ``pscompress`` metadata buffer."""
    return json.dumps(dict(meta), default=str, sort_keys=True).encode()


def decode_tflite_metadata(raw: bytes | None, source: str) -> dict[str, Any]:
    """The metadata from a .tflite file's ``pscompress`` buffer (None: the file has none), validated."""
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
    except ValueError as exc:  # bad JSON or UTF-8
        raise UserError(f"{source}: its pscompress metadata is damaged ({exc.__class__.__name__})") from exc
    if isinstance(meta, dict) and "schema" not in meta and is_int(meta.get("version")):
        meta["schema"] = meta.pop("version")  # pscompress 0.1 wrote the schema version as "version"
    return check_metadata(meta, source)


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
    if meta.get("outputs") is not None:
        meta["outputs"] = _outputs(meta["outputs"], source)
    return meta


def _outputs(outputs: Any, source: str) -> list[dict[str, Any]]:
    """The ``outputs`` field: a list of {"name": str, "shape": [int, ...]} (one image's shape)."""
    if not isinstance(outputs, (list, tuple)) or not 1 <= len(outputs) <= MAX_OUTPUTS:
        raise UserError(f"{source}: outputs must be a list of 1 to {MAX_OUTPUTS} outputs, got {short_repr(outputs)}")
    checked = []
    for entry in outputs:
        name = entry.get("name") if isinstance(entry, Mapping) else None
        shape = entry.get("shape") if isinstance(entry, Mapping) else None
        if not isinstance(name, str) or not 1 <= len(name) <= 256 or not isinstance(shape, (list, tuple)) \
                or len(shape) > MAX_OUTPUT_RANK or not all(is_int(d) and 0 <= d < 2 ** 31 for d in shape):
            raise UserError(f"{source}: each output must be {{\"name\": text, \"shape\": [up to {MAX_OUTPUT_RANK} sizes]}}, "
                            f"got {short_repr(entry)}")
        checked.append({"name": name, "shape": [int(d) for d in shape]})
    return checked


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
