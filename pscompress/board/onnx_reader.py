"""Just enough of the ONNX file format to describe a model, with neither onnx nor PyTorch.

A board-side install has onnxruntime but not the ``onnx`` package, and onnxruntime does not
show a model's nodes. ONNX files are protobuf messages: this reads the few fields that
``pscompress info`` reports (nodes, their attributes, initializer shapes, opsets, metadata)
straight from the wire format. Field numbers are those of onnx.proto (stable since IR 3).
"""
from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pscompress.core.errors import UserError, short_repr
from pscompress.core.limits import is_int
from pscompress.core.patterns import MAX_KERNEL_POSITIONS, MAX_PERIOD


@dataclass
class Node:
    name: str
    op_type: str
    domain: str
    inputs: list[str]
    attributes: dict[str, object]
    outputs: list[str] = field(default_factory=list)


@dataclass
class OnnxSummary:
    ir_version: int = 0
    producer: str = ""
    opsets: dict[str, int] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    initializers: dict[str, tuple[list[int], int]] = field(default_factory=dict)  # name -> (dims, bytes)
    functions: list[str] = field(default_factory=list)  # "domain.name"


def read_onnx(path: str | os.PathLike) -> OnnxSummary:
    """Parse the parts of an .onnx file that describe it; a clear error when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"cannot read {path}: no such file")
    try:
        return _model(path.read_bytes())
    # TypeError, AttributeError: a field of an unexpected wire type (an int where bytes belong)
    except (IndexError, ValueError, TypeError, AttributeError, struct.error) as exc:
        raise UserError(f"{path} is not an ONNX model ({exc.__class__.__name__})") from exc


PSCONV_DOMAIN = "ai.pscompress"
# The same operators, which a runtime runs densely: `pscompress tune` moves a node here when the
# dense Conv is faster for it (docs/operator.md, "The dense domain").
DENSE_DOMAIN = "ai.pscompress.dense"
# QLinearPSConv is the int8 operator (docs/operator.md): PSConv's attributes without the clamp.
PSCONV_OPERATORS = ("PSConv", "PSConvAdd", "QLinearPSConv")
WEIGHT_INPUT = {"PSConv": 1, "PSConvAdd": 1, "QLinearPSConv": 3}  # where each holds its packed weights


def is_psconv(node: Node) -> bool:
    """Whether ``node`` is a PSConv/PSConvAdd/QLinearPSConv node, in either domain."""
    return node.domain in (PSCONV_DOMAIN, DENSE_DOMAIN) and node.op_type in PSCONV_OPERATORS


def psconv_attributes(node: Node) -> dict[str, Any]:
    """A PSConv/PSConvAdd/QLinearPSConv node's attributes checked against docs/operator.md's table, defaults filled in.

    Raises UserError naming the node and the attribute. Every reader of PSConv nodes uses this.
    """
    where = f"node {node.name or node.op_type}"
    a = node.attributes
    kernel_shape = _ints(a, "kernel_shape", where, count=2, low=1)
    out = {
        "kernel_shape": kernel_shape,
        "strides": _ints(a, "strides", where, count=2, low=1, high=64, default=[1, 1]),
        "pads": _ints(a, "pads", where, count=4, low=0, high=1024, default=[0, 0, 0, 0]),
        "dilations": _ints(a, "dilations", where, count=2, low=1, default=[1, 1]),
        "group": _int(a, "group", where, low=1, default=1),
        "in_channels": _int(a, "in_channels", where, low=1),
        "out_channels": _int(a, "out_channels", where, low=1),
        "shift": _int(a, "shift", where, low=0, default=0),
        "clip_min": _float(a, "clip_min", where, -math.inf),
        "clip_max": _float(a, "clip_max", where, math.inf),
    }
    positions = kernel_shape[0] * kernel_shape[1]
    if positions > MAX_KERNEL_POSITIONS:
        raise UserError(f"{where}: kernel_shape {kernel_shape} has {positions} positions, more than {MAX_KERNEL_POSITIONS}")
    out["patterns"] = _ints(a, "patterns", where, low=1, high=(1 << positions) - 1)
    if len(out["patterns"]) > MAX_PERIOD:
        raise UserError(f"{where}: patterns has {len(out['patterns'])} entries, more than {MAX_PERIOD}")
    if out["shift"] >= len(out["patterns"]):
        raise UserError(f"{where}: shift {out['shift']} must be below the number of patterns ({len(out['patterns'])})")
    if out["in_channels"] % out["group"] or out["out_channels"] % out["group"]:
        raise UserError(f"{where}: group {out['group']} must divide in_channels ({out['in_channels']}) "
                        f"and out_channels ({out['out_channels']})")
    if not out["clip_min"] <= out["clip_max"]:
        raise UserError(f"{where}: clip_min {out['clip_min']} is above clip_max {out['clip_max']}")
    return out


def _present(attributes: dict[str, object], name: str, where: str, default: Any) -> Any:
    if attributes.get(name) is None:
        if default is None:
            raise UserError(f"{where}: the required attribute {name} is missing (or not of the type docs/operator.md gives)")
        return default
    return attributes[name]


def _ints(attributes: dict[str, object], name: str, where: str, count: int | None = None, low: int = 0,
          high: int | None = None, default: list[int] | None = None) -> list[int]:
    value = _present(attributes, name, where, default)
    if not isinstance(value, list) or (count is not None and len(value) != count) or not all(map(is_int, value)):
        raise UserError(f"{where}: {name} must be {count or 'a list of'} integers, got {short_repr(value)}")
    if any(v < low or (high is not None and v > high) for v in value):
        raise UserError(f"{where}: {name} {short_repr(value)} must lie in [{low}, {'inf' if high is None else high}]")
    return value


def _int(attributes: dict[str, object], name: str, where: str, low: int, default: int | None = None) -> int:
    value = _present(attributes, name, where, default)
    if not is_int(value):
        raise UserError(f"{where}: {name} must be one integer, got {short_repr(value)}")
    if value < low:
        raise UserError(f"{where}: {name} must be at least {low}, got {value}")
    return value


def _float(attributes: dict[str, object], name: str, where: str, default: float) -> float:
    value = _present(attributes, name, where, default)
    if not isinstance(value, float):
        raise UserError(f"{where}: {name} must be one float, got {short_repr(value)}")
    return value


# --- protobuf wire format -------------------------------------------------------------

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise ValueError("varint too long")


def _fields(buf: bytes) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value): ints for varints/fixed, bytes for length-delimited."""
    for number, wire, value, _, _ in field_spans(buf):
        yield number, wire, value


def field_spans(buf: bytes) -> Iterator[tuple[int, int, object, int, int]]:
    """(field number, wire type, value, start, end) of each field of a message: ``buf[start:end]``
    is the field's whole encoding, which an editor (pscompress.board.onnx_writer) copies unchanged."""
    pos = 0
    while pos < len(buf):
        start = pos
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<q", buf, pos)[0], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise ValueError("truncated field")
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, wire, value, start, pos


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _packed_ints(value: object) -> list[int]:
    if isinstance(value, int):
        return [_signed(value)]
    out, pos = [], 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        out.append(_signed(v))
    return out


def _model(buf: bytes) -> OnnxSummary:
    summary = OnnxSummary()
    seen_graph = False
    for number, _, value in _fields(buf):
        if number == 1:
            summary.ir_version = value
        elif number == 2:
            summary.producer = value.decode()
        elif number == 7:
            seen_graph = True
            _graph(value, summary)
        elif number == 8:
            parts = {n: v for n, _, v in _fields(value)}
            summary.opsets[parts.get(1, b"").decode()] = _signed(parts.get(2, 0))
        elif number == 14:
            parts = {n: v for n, _, v in _fields(value)}
            summary.metadata[parts.get(1, b"").decode()] = parts.get(2, b"").decode()
        elif number == 25:
            parts = {n: v for n, _, v in _fields(value) if n in (1, 10)}
            summary.functions.append(f"{parts.get(10, b'').decode()}.{parts.get(1, b'').decode()}")
    if not seen_graph or not summary.ir_version:
        raise ValueError("no graph")
    return summary


def _graph(buf: bytes, summary: OnnxSummary) -> None:
    for number, _, value in _fields(buf):
        if number == 1:
            summary.nodes.append(_node(value))
        elif number == 5:
            name, dims, size = _tensor(value)
            summary.initializers[name] = (dims, size)


def _node(buf: bytes) -> Node:
    node = Node("", "", "", [], {})
    for number, _, value in _fields(buf):
        if number == 1:
            node.inputs.append(value.decode())
        elif number == 2:
            node.outputs.append(value.decode())
        elif number == 3:
            node.name = value.decode()
        elif number == 4:
            node.op_type = value.decode()
        elif number == 7:
            node.domain = value.decode()
        elif number == 5:
            name, attr = _attribute(value)
            node.attributes[name] = attr
    return node


def _attribute(buf: bytes) -> tuple[str, object]:
    name, value, values = "", None, []
    for number, _, v in _fields(buf):
        if number == 1:
            name = v.decode()
        elif number == 2:
            value = _float32(v)
        elif number == 3:
            value = _signed(v)
        elif number == 4:
            value = v.decode(errors="replace")
        elif number == 7:  # floats: kept so that a validator can tell them from ints
            values.extend([_float32(v)] if isinstance(v, int) else [f for (f,) in struct.iter_unpack("<f", v)])
        elif number == 8:
            values.extend(_packed_ints(v))
    return name, values if values else value


def _float32(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits))[0]


_ELEMENT_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}


def _tensor(buf: bytes) -> tuple[str, list[int], int]:
    name, dims, dtype, raw = "", [], 1, None
    for number, _, v in _fields(buf):
        if number == 1:
            dims.extend(_packed_ints(v))
        elif number == 2:
            dtype = v
        elif number == 8:
            name = v.decode()
        elif number == 9:
            raw = len(v)
    elements = 1
    for d in dims:
        elements *= d
    return name, dims, raw if raw is not None else elements * _ELEMENT_BYTES.get(dtype, 4)
