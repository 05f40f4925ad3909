"""The few edits ``pscompress tune`` makes to an ONNX file, on the protobuf wire format.

Like pscompress.board.onnx_reader, this needs neither onnx nor PyTorch. Every field it does not
edit is copied byte for byte, so the packed weights, the functions and whatever a newer
exporter adds pass through unchanged. Field numbers are those of onnx.proto.
"""
from __future__ import annotations

from typing import Collection, Iterable, Mapping, Sequence

from pscompress.board.onnx_reader import DENSE_DOMAIN, PSCONV_DOMAIN, PSCONV_OPERATORS, field_spans
from pscompress.core.errors import UserError

# ModelProto
_IR_VERSION, _GRAPH, _OPSET_IMPORT, _METADATA, _FUNCTION = 1, 7, 8, 14, 25
# GraphProto
_NODE, _INITIALIZER, _INPUT, _OUTPUT = 1, 5, 11, 12
# NodeProto: input, output, op_type, domain; FunctionProto: name, domain; TensorProto: name
_NODE_INPUT, _NODE_OUTPUT, _OP_TYPE, _DOMAIN = 1, 2, 4, 7
_FUNCTION_NAME, _FUNCTION_DOMAIN = 1, 10
_TENSOR_NAME = 8
# TensorProto.DataType of the element types PSConv and QLinearPSConv inputs have, by numpy dtype name
ELEMENT_TYPES = {"float32": 1, "uint8": 2, "int8": 3, "int32": 6, "int64": 7}


def set_plan(model: bytes, dense: Collection[int], metadata: Mapping[str, str] | None = None) -> bytes:
    """``model`` with the PSConv nodes at graph positions ``dense`` in DENSE_DOMAIN, every other PSConv
    node in PSCONV_DOMAIN, and ``metadata`` set (replacing properties of the same keys).

    When a node runs dense, the file also gets the dense domain's opset import and its PSConv and
    PSConvAdd functions: copies of the ``ai.pscompress`` ones with only the domain changed.
    """
    metadata = dict(metadata or {})
    fields = list(field_spans(model))
    graph, nodes_dense = _retarget_graph(_only(fields, _GRAPH), set(dense))
    functions = {_function_key(v): v for n, _, v, _, _ in fields if n == _FUNCTION}
    opsets = {entry.get(1, b"").decode(): entry.get(2, 1)
              for entry in (_entry(v) for n, _, v, _, _ in fields if n == _OPSET_IMPORT)}
    out = bytearray()
    for number, _, value, start, end in fields:
        if number == _GRAPH:
            out += _message(_GRAPH, graph)
        elif not (number == _METADATA and _entry(value).get(1, b"").decode() in metadata):
            out += model[start:end]
    if nodes_dense and DENSE_DOMAIN not in opsets:  # the same operators, so the same version
        out += _message(_OPSET_IMPORT, _string(1, DENSE_DOMAIN) + _varint_field(2, opsets.get(PSCONV_DOMAIN, 1)))
    for op_type in sorted(nodes_dense - {name for domain, name in functions if domain == DENSE_DOMAIN}):
        source = functions.get((PSCONV_DOMAIN, op_type))
        if source is None:
            raise UserError(f"the model has no portable {op_type} function to run densely (export it again)")
        out += _message(_FUNCTION, _replace(source, _FUNCTION_DOMAIN, _string(_FUNCTION_DOMAIN, DENSE_DOMAIN)))
    for key, value in metadata.items():
        out += _message(_METADATA, _string(1, key) + _string(2, value))
    return bytes(out)


def with_outputs(model: bytes, names: Iterable[str]) -> bytes:
    """``model`` with tensors ``names`` added to its graph outputs, so that a run returns them. The
    outputs carry no type: onnxruntime takes the tensors' own (float or, in int8 files, uint8)."""
    graph = _only(list(field_spans(model)), _GRAPH)
    present = {_entry(v).get(1, b"").decode() for n, _, v, _, _ in field_spans(graph) if n == _OUTPUT}
    extra = b"".join(_message(_OUTPUT, _value_info(name)) for name in dict.fromkeys(names) if name not in present)
    return _replace(model, _GRAPH, _message(_GRAPH, graph + extra))


def node_model(model: bytes, index: int, inputs: Mapping[str, tuple[Sequence[int], str]]) -> bytes:
    """A model of the graph node at position ``index`` alone: its initializer inputs copied, each other
    input a graph input of the shape and numpy dtype name (ELEMENT_TYPES) ``inputs`` gives, its first
    output the graph's output.

    The opsets and functions are the source's, so set_plan can move the node to the dense domain.
    """
    fields = list(field_spans(model))
    graph = list(field_spans(_only(fields, _GRAPH)))
    node = _nth(graph, _NODE, index)
    parts = {n: [] for n in (_NODE_INPUT, _NODE_OUTPUT)}
    for number, _, value, _, _ in field_spans(node):
        if number in parts:
            parts[number].append(value.decode())
    initializers = {_entry(v).get(_TENSOR_NAME, b"").decode(): _message(_INITIALIZER, v)
                    for n, _, v, _, _ in graph if n == _INITIALIZER}
    body = _message(_NODE, node) + _string(2, "node")
    for name in dict.fromkeys(filter(None, parts[_NODE_INPUT])):
        if name in initializers:
            body += initializers[name]
        else:
            shape, dtype = inputs[name]
            body += _message(_INPUT, _value_info(name, shape, ELEMENT_TYPES[dtype]))
    body += _message(_OUTPUT, _value_info(parts[_NODE_OUTPUT][0]))
    out = bytearray()
    for number, _, _, start, end in fields:
        if number in (_IR_VERSION, _OPSET_IMPORT, _FUNCTION):
            out += model[start:end]
    return bytes(out + _message(_GRAPH, body))


# --- graph edits ----------------------------------------------------------------------

def _retarget_graph(graph: bytes, dense: set[int]) -> tuple[bytes, set[str]]:
    """The graph with each PSConv node moved to its domain, and the op types that run dense."""
    out, ops_dense, index = bytearray(), set(), 0
    for number, _, value, start, end in field_spans(graph):
        encoded = graph[start:end]
        if number == _NODE:
            parts = {n: v for n, _, v, _, _ in field_spans(value) if n in (_OP_TYPE, _DOMAIN)}
            op_type, domain = parts.get(_OP_TYPE, b"").decode(), parts.get(_DOMAIN, b"").decode()
            if domain in (PSCONV_DOMAIN, DENSE_DOMAIN) and op_type in PSCONV_OPERATORS:
                wanted = DENSE_DOMAIN if index in dense else PSCONV_DOMAIN
                if wanted == DENSE_DOMAIN:
                    ops_dense.add(op_type)
                if wanted != domain:
                    encoded = _message(_NODE, _replace(value, _DOMAIN, _string(_DOMAIN, wanted)))
            index += 1
        out += encoded
    return bytes(out), ops_dense


def _value_info(name: str, shape: Sequence[int] | None = None, elem_type: int | None = None) -> bytes:
    """ValueInfoProto of a tensor of ``elem_type`` and ``shape`` (TypeProto.tensor_type); only the name
    when elem_type is None."""
    if elem_type is None:
        return _string(1, name)
    dims = b"".join(_message(1, _varint_field(1, d)) for d in shape) if shape is not None else None
    tensor = _varint_field(1, elem_type) + (_message(2, dims) if dims is not None else b"")
    return _string(1, name) + _message(2, _message(1, tensor))


# --- wire format ----------------------------------------------------------------------

def _replace(message: bytes, number: int, encoded: bytes) -> bytes:
    """``message`` without its fields ``number``, then ``encoded`` (parsers take fields in any order)."""
    kept = b"".join(message[s:e] for n, _, _, s, e in field_spans(message) if n != number)
    return kept + encoded


def _only(fields: list, number: int) -> bytes:
    values = [v for n, _, v, _, _ in fields if n == number]
    if len(values) != 1:
        raise ValueError(f"field {number} appears {len(values)} times")
    return values[0]


def _nth(fields: list, number: int, index: int) -> bytes:
    return [v for n, _, v, _, _ in fields if n == number][index]


def _entry(message: bytes) -> dict[int, object]:
    return {n: v for n, _, v, _, _ in field_spans(message)}


def _function_key(function: bytes) -> tuple[str, str]:
    parts = _entry(function)
    return parts.get(_FUNCTION_DOMAIN, b"").decode(), parts.get(_FUNCTION_NAME, b"").decode()


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64s take ten bytes, as protobuf writes them
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _varint_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _message(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _string(number: int, text: str) -> bytes:
    return _message(number, text.encode())
