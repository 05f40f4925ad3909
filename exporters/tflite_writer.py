"""Building a .tflite flatbuffer with the ``tflite`` schema package (no TensorFlow).

``TFLiteGraph`` collects tensors and operators of a single subgraph; ``serialize`` turns them
into the bytes of a schema-version-3 model ("TFL3"). Constant data is 16-byte aligned so
runtimes can map weights in place.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import flatbuffers
import numpy as np

from pscompress.exporters.tflite_sparse import SPARSE_CSR, SparseTensor

_SCHEMA_VERSION = 3
_FILE_IDENTIFIER = b"TFL3"
_ALIGN = 16
_INDEX_VECTOR_TYPES = {np.dtype(np.int32): "Int32Vector", np.dtype(np.uint16): "Uint16Vector", np.dtype(np.uint8): "Uint8Vector"}
_TENSOR_TYPES = {np.dtype(np.float32): "FLOAT32", np.dtype(np.float16): "FLOAT16", np.dtype(np.int32): "INT32",
                 np.dtype(np.int8): "INT8"}
# Operator versions above 1, by (operator, type of its data input), as TFLite's op_version.cc
# assigns them: runtimes that predate a version refuse the model instead of misreading it.
_INT8 = np.dtype(np.int8)
_OP_VERSIONS = {
    ("DEQUANTIZE", np.dtype(np.float16)): 3, ("DEQUANTIZE", _INT8): 2,
    ("CONV_2D", _INT8): 3, ("DEPTHWISE_CONV_2D", _INT8): 3, ("FULLY_CONNECTED", _INT8): 4,
    ("ADD", _INT8): 2, ("MUL", _INT8): 2, ("MEAN", _INT8): 2, ("MAX_POOL_2D", _INT8): 2, ("AVERAGE_POOL_2D", _INT8): 2,
    ("PAD", _INT8): 2, ("PADV2", _INT8): 2, ("TRANSPOSE", _INT8): 2, ("RELU", _INT8): 2, ("RELU6", _INT8): 2,
    ("LOGISTIC", _INT8): 2, ("CONCATENATION", _INT8): 2, ("SPLIT", _INT8): 2, ("RESIZE_NEAREST_NEIGHBOR", _INT8): 2,
    ("RESIZE_BILINEAR", _INT8): 2, ("SLICE", _INT8): 2, ("SUB", _INT8): 2,
}
_DATA_INPUT = {"SPLIT": 1}  # the input op_version.cc types the operator by (SPLIT's first input is the axis)


def schema(name: str) -> Any:
    """A module of the tflite schema package (``import tflite.X`` gives the class, not the module)."""
    return importlib.import_module(f"tflite.{name}")


def enum(name: str, member: str) -> int:
    return getattr(getattr(schema(name), name), member)


@dataclass(frozen=True)
class Quantization:
    """real = scale * (q - zero_point): one scale and zero point per tensor, or one per index of ``axis``."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int = 0

    @classmethod
    def per_tensor(cls, scale: float, zero_point: int) -> "Quantization":
        return cls(np.array([scale], np.float32), np.array([zero_point], np.int64))


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    data: np.ndarray | None = None
    sparse: SparseTensor | None = None
    batch_dynamic: bool = False
    quantization: Quantization | None = None


@dataclass
class _Operator:
    opcode: str
    inputs: list[int]
    outputs: list[int]
    options_table: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


class TFLiteGraph:
    """One subgraph under construction: add tensors and operators, then serialize."""

    def __init__(self) -> None:
        self.tensors: list[_Tensor] = []
        self.operators: list[_Operator] = []
        self.inputs: list[int] = []
        self.outputs: list[int] = []

    def activation(self, name: str, shape: tuple[int, ...], dtype=np.float32, batch_dynamic: bool = True,
                   quantization: Quantization | None = None) -> int:
        """A tensor computed at run time; with ``batch_dynamic`` its first dimension is the batch."""
        self.tensors.append(_Tensor(name, tuple(int(d) for d in shape), np.dtype(dtype), batch_dynamic=batch_dynamic,
                                    quantization=quantization))
        return len(self.tensors) - 1

    def constant(self, name: str, data: np.ndarray, quantization: Quantization | None = None) -> int:
        data = np.ascontiguousarray(data)
        self.tensors.append(_Tensor(name, data.shape, data.dtype, data=data, quantization=quantization))
        return len(self.tensors) - 1

    def sparse_constant(self, name: str, sparse: SparseTensor, quantization: Quantization | None = None) -> int:
        self.tensors.append(_Tensor(name, sparse.shape, sparse.values.dtype, data=sparse.values, sparse=sparse,
                                    quantization=quantization))
        return len(self.tensors) - 1

    def shape_of(self, tensor: int) -> tuple[int, ...]:
        return self.tensors[tensor].shape

    def dtype_of(self, tensor: int) -> np.dtype:
        return self.tensors[tensor].dtype

    def quantization_of(self, tensor: int) -> Quantization | None:
        return self.tensors[tensor].quantization

    def op(self, opcode: str, inputs: list[int], outputs: list[int], options_table: str | None = None, **options: Any) -> None:
        """Append an operator; ``inputs`` may hold -1 for an omitted optional input."""
        self.operators.append(_Operator(opcode, list(inputs), list(outputs), options_table, options))

    def serialize(self, description: str, metadata: dict[str, bytes]) -> bytes:
        return _Serializer(self).run(description, metadata)


class _Serializer:
    def __init__(self, graph: TFLiteGraph) -> None:
        self.graph = graph
        self.b = flatbuffers.Builder(1024)
        self.buffers: list[bytes | np.ndarray] = [b""]  # buffer 0 is the conventional empty buffer

    def run(self, description: str, metadata: dict[str, bytes]) -> bytes:
        b = self.b
        opcodes = sorted({op.opcode for op in self.graph.operators})
        tensor_offsets = [self._tensor(t) for t in self.graph.tensors]
        operator_offsets = [self._operator(op, opcodes.index(op.opcode)) for op in self.graph.operators]
        subgraph = self._table("SubGraph", {
            "Tensors": self._offsets("SubGraph", "Tensors", tensor_offsets),
            "Inputs": self._ints(self.graph.inputs, np.int32),
            "Outputs": self._ints(self.graph.outputs, np.int32),
            "Operators": self._offsets("SubGraph", "Operators", operator_offsets),
            "Name": b.CreateString("main"),
        })
        opcode_offsets = [self._table("OperatorCode", {
            "DeprecatedBuiltinCode": min(enum("BuiltinOperator", name), 127),  # 127: "see builtin_code"
            "BuiltinCode": enum("BuiltinOperator", name),
            "Version": self._version(name),
        }) for name in opcodes]
        metadata_offsets = []
        for name, payload in metadata.items():
            self.buffers.append(payload)
            metadata_offsets.append(self._table("Metadata", {"Name": b.CreateString(name), "Buffer": len(self.buffers) - 1}))
        buffer_offsets = [self._buffer(data) for data in self.buffers]
        model = self._table("Model", {
            "Version": _SCHEMA_VERSION,
            "OperatorCodes": self._offsets("Model", "OperatorCodes", opcode_offsets),
            "Subgraphs": self._offsets("Model", "Subgraphs", [subgraph]),
            "Description": b.CreateString(description),
            "Buffers": self._offsets("Model", "Buffers", buffer_offsets),
            "Metadata": self._offsets("Model", "Metadata", metadata_offsets),
        })
        b.Finish(model, file_identifier=_FILE_IDENTIFIER)
        return bytes(b.Output())

    def _tensor(self, t: _Tensor) -> int:
        buffer = 0
        if t.data is not None:
            self.buffers.append(t.data)
            buffer = len(self.buffers) - 1
        fields: dict[str, Any] = {
            "Shape": self._ints(t.shape, np.int32),
            "Type": enum("TensorType", _TENSOR_TYPES[t.dtype]),
            "Buffer": buffer,
            "Name": self.b.CreateString(t.name),
        }
        if t.batch_dynamic:
            fields["ShapeSignature"] = self._ints((-1,) + t.shape[1:], np.int32)
        if t.sparse is not None:
            fields["Sparsity"] = self._sparsity(t.sparse)
        if t.quantization is not None:
            fields["Quantization"] = self._quantization(t.quantization)
        return self._table("Tensor", fields)

    def _quantization(self, q: Quantization) -> int:
        return self._table("QuantizationParameters", {
            "Scale": self._ints(q.scale, np.float32),
            "ZeroPoint": self._ints(q.zero_point, np.int64),
            "QuantizedDimension": q.axis,
        })

    def _version(self, opcode: str) -> int:
        """The highest version any operator with this opcode needs."""
        return max(self._op_version(op) for op in self.graph.operators if op.opcode == opcode)

    def _op_version(self, op: _Operator) -> int:
        tensors = self.graph.tensors
        data = tensors[op.inputs[_DATA_INPUT.get(op.opcode, 0)]]
        if op.opcode == "MUL" and data.dtype == _INT8:
            # An int8 MUL whose input scales multiply to at least its output scale needs version 3.
            a, b, out = (tensors[t].quantization.scale[0] for t in (*op.inputs, *op.outputs))
            return 3 if a * b / out >= 1 else 2
        if op.opcode == "TRANSPOSE" and len(data.shape) > 4:
            return 6 if len(data.shape) > 5 else 5  # 5-D and 6-D permutations (op_version.cc)
        return _OP_VERSIONS.get((op.opcode, data.dtype), 1)

    def _sparsity(self, s: SparseTensor) -> int:
        levels = []
        for level in s.levels:
            fields: dict[str, Any] = {"Format": level.format, "DenseSize": level.dense_size}
            if level.format == SPARSE_CSR:
                for part, values in (("Segments", level.segments), ("Indices", level.indices)):
                    kind = _INDEX_VECTOR_TYPES[values.dtype]
                    fields[f"Array{part}Type"] = enum("SparseIndexVector", kind)
                    fields[f"Array{part}"] = self._table(kind, {"Values": self._ints(values, values.dtype)})
            levels.append(self._table("DimensionMetadata", fields))
        return self._table("SparsityParameters", {
            "TraversalOrder": self._ints(s.traversal_order, np.int32),
            "DimMetadata": self._offsets("SparsityParameters", "DimMetadata", levels),
        })

    def _operator(self, op: _Operator, opcode_index: int) -> int:
        fields: dict[str, Any] = {
            "OpcodeIndex": opcode_index,
            "Inputs": self._ints(op.inputs, np.int32),
            "Outputs": self._ints(op.outputs, np.int32),
        }
        if op.options_table is not None:
            fields["BuiltinOptionsType"] = enum("BuiltinOptions", op.options_table)
            fields["BuiltinOptions"] = self._table(op.options_table, op.options)
        return self._table("Operator", fields)

    def _buffer(self, data: bytes | np.ndarray) -> int:
        raw = data if isinstance(data, bytes) else np.ascontiguousarray(data).tobytes()
        if not raw:
            return self._table("Buffer", {})
        b = self.b
        b.StartVector(1, len(raw), _ALIGN)
        b.head -= len(raw)
        b.Bytes[b.head:b.head + len(raw)] = raw
        return self._table("Buffer", {"Data": b.EndVector()})

    # -- generic flatbuffer helpers: every nested object is built before its parent table starts

    def _table(self, name: str, fields: dict[str, Any]) -> int:
        module = schema(name)
        module.Start(self.b)
        for key, value in fields.items():
            getattr(module, f"Add{key}")(self.b, value)
        return module.End(self.b)

    def _ints(self, values, dtype) -> int:
        return self.b.CreateNumpyVector(np.asarray(values, dtype=dtype))

    def _offsets(self, table: str, field_name: str, offsets: list[int]) -> int:
        getattr(schema(table), f"Start{field_name}Vector")(self.b, len(offsets))
        for off in reversed(offsets):
            self.b.PrependUOffsetTRelative(off)
        return self.b.EndVector()
