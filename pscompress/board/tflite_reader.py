"""What a .tflite file holds, read from its flatbuffer directly: the pscompress metadata and the
layers that carry weights. A few lines of flatbuffer reading, so neither the ``tflite`` schema
package, ``flatbuffers`` nor an interpreter is needed (``info`` runs on a board without them).

Field numbers are the TFLite schema's (tensorflow/lite/schema/schema.fbs). Every offset is read
with bounds checks by ``struct``; a damaged file is a UserError, never an IndexError.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pscompress.core.errors import UserError
from pscompress.core.metadata import TFLITE_ENTRY, decode_tflite_metadata

# BuiltinOperator codes of the operators whose input 1 is a weight constant.
WEIGHTED_OPERATORS = {3: "CONV_2D", 4: "DEPTHWISE_CONV_2D", 9: "FULLY_CONNECTED"}
# Operators between a stored constant and the layer that uses it: they decode, the layer reads their output.
_DECODERS = {6: "DEQUANTIZE", 124: "DENSIFY"}
_DECODE_DEPTH = 4  # a chain longer than DENSIFY -> DEQUANTIZE is not one the exporters write
# TensorType -> (name, bytes per element)
_TYPES = {0: ("float32", 4), 1: ("float16", 2), 2: ("int32", 4), 3: ("uint8", 1), 4: ("int64", 8),
          7: ("int16", 2), 9: ("int8", 1)}


@dataclass(frozen=True)
class WeightedLayer:
    """One convolution or fully connected layer and the constant its weights are stored in."""

    name: str                # the weight tensor's layer part ("layers_0_conv1" of "layers_0_conv1/filter/dense")
    operator: str            # CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED
    shape: tuple[int, ...]   # the weights as the layer reads them (TFLite's O x H x W x I for a conv)
    dtype: str               # how the constant is stored: float32, float16, int8
    sparse: bool             # stored in TFLite's sparse format (a DENSIFY op restores it)
    stored: int              # values the file stores for it


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The pscompress metadata of the .tflite file at ``path``, validated, without loading it in an interpreter."""
    content = read_tflite(path)
    return file_metadata(content, str(path))


def read_tflite(path: str | os.PathLike) -> bytes:
    """The bytes of a .tflite file; UserError when it is missing or not a TFLite model."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"cannot read {path}: no such file")
    content = path.read_bytes()
    if content[4:8] != b"TFL3":
        raise UserError(f"{path} is not a TFLite model")
    return content


def file_metadata(content: bytes, source: str) -> dict[str, Any]:
    """The validated pscompress metadata in a .tflite file's bytes ({} when it has none)."""
    try:
        raw = metadata_buffer(content)
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise UserError(f"{source}: its pscompress metadata is damaged ({exc.__class__.__name__})") from exc
    return decode_tflite_metadata(raw, source)


def metadata_buffer(content: bytes) -> bytes | None:
    """The bytes of a .tflite file's ``pscompress`` Model.metadata buffer, or None if it has none."""
    model = _u32(content, 0)
    buffers = _vector(content, model, 4)  # Model field 4: buffers
    for entry in _vector(content, model, 6):  # Model field 6: metadata
        name_at = _field(content, entry, 0)
        if name_at is None or _string(content, name_at) != TFLITE_ENTRY:
            continue
        buffer_at = _field(content, entry, 1)
        return None if buffer_at is None else _buffer_data(content, buffers[_u32(content, buffer_at)])
    return None


def weighted_layers(content: bytes, source: str) -> list[WeightedLayer]:
    """The first subgraph's convolutions and fully connected layers, in execution order, each with the constant
    that stores its weights (followed back through DENSIFY and DEQUANTIZE)."""
    try:
        return _weighted_layers(content)
    except (struct.error, IndexError, KeyError, UnicodeDecodeError) as exc:
        raise UserError(f"{source}: its operators or tensors are damaged ({exc.__class__.__name__})") from exc


def _weighted_layers(content: bytes) -> list[WeightedLayer]:
    model = _u32(content, 0)
    codes = [max(_scalar(content, code, 0, "<b"), _scalar(content, code, 3, "<i"))  # deprecated / full builtin code
             for code in _vector(content, model, 1)]                                 # Model field 1: operator_codes
    subgraphs = _vector(content, model, 2)
    if not subgraphs:
        return []
    buffers = _vector(content, model, 4)
    tensors = _vector(content, subgraphs[0], 0)
    operators = [(codes[_scalar(content, op, 0, "<I")], _ints(content, op, 1), _ints(content, op, 2))
                 for op in _vector(content, subgraphs[0], 3)]
    decoder_of = {output: (code, inputs) for code, inputs, outputs in operators if code in _DECODERS
                  for output in outputs}
    layers = []
    for code, inputs, _ in operators:
        if code not in WEIGHTED_OPERATORS or len(inputs) < 2 or inputs[1] < 0:
            continue
        index, sparse = inputs[1], False
        shape = tuple(_ints(content, tensors[index], 0))
        for _ in range(_DECODE_DEPTH):
            if index not in decoder_of:
                break
            decoder, decoded = decoder_of[index]
            sparse = sparse or _DECODERS[decoder] == "DENSIFY"
            index = decoded[0]
            if index < 0:
                raise IndexError("a decoding operator without an input")
        tensor = tensors[index]
        dtype, width = _TYPES.get(_scalar(content, tensor, 1, "<b"), ("other", 1))
        data = _buffer_data(content, buffers[_scalar(content, tensor, 2, "<I")])
        name_at = _field(content, tensors[inputs[1]], 3)
        name = _string(content, name_at).split("/")[0] if name_at is not None else f"tensor {inputs[1]}"
        sparse = sparse or _field(content, tensor, 6) is not None  # Tensor field 6: sparsity
        layers.append(WeightedLayer(name, WEIGHTED_OPERATORS[code], shape, dtype, sparse,
                                    len(data or b"") // width))
    return layers


def _buffer_data(content: bytes, buffer: int) -> bytes | None:
    """A Buffer's bytes: its data vector (field 0), or the span offset/size (fields 1, 2) of a file over 2 GB."""
    data = _field(content, buffer, 0)
    if data is not None:
        start = data + _u32(content, data)
        return bytes(content[start + 4:start + 4 + _u32(content, start)])
    offset, size = _scalar(content, buffer, 1, "<Q"), _scalar(content, buffer, 2, "<Q")
    return bytes(content[offset:offset + size]) if size else None


def _u32(buf: bytes, at: int) -> int:
    return struct.unpack_from("<I", buf, at)[0]


def _field(buf: bytes, table: int, index: int) -> int | None:
    """Where field ``index`` of the table at ``table`` is stored, or None when absent."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    vtable_size = struct.unpack_from("<H", buf, vtable)[0]
    slot = 4 + 2 * index
    offset = struct.unpack_from("<H", buf, vtable + slot)[0] if slot < vtable_size else 0
    return table + offset if offset else None


def _scalar(buf: bytes, table: int, index: int, fmt: str, default: int = 0) -> int:
    at = _field(buf, table, index)
    return default if at is None else struct.unpack_from(fmt, buf, at)[0]


def _vector(buf: bytes, table: int, index: int) -> list[int]:
    """The tables of a vector-of-tables field."""
    at = _field(buf, table, index)
    if at is None:
        return []
    start = at + _u32(buf, at)
    return [start + 4 + 4 * i + _u32(buf, start + 4 + 4 * i) for i in range(_u32(buf, start))]


def _ints(buf: bytes, table: int, index: int) -> list[int]:
    """An int32 vector field."""
    at = _field(buf, table, index)
    if at is None:
        return []
    start = at + _u32(buf, at)
    count = _u32(buf, start)
    if start + 4 + 4 * count > len(buf):
        raise IndexError("an int vector runs past the end of the file")
    return list(struct.unpack_from(f"<{count}i", buf, start + 4))


def _string(buf: bytes, at: int) -> str:
    start = at + _u32(buf, at)
    return buf[start + 4:start + 4 + _u32(buf, start)].decode()
