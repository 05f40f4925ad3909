"""TFLite export: a PyTorch CNN (pSConv layers included) to one .tflite file, without TensorFlow.

The model is traced with torch.fx after batch norm is folded into the convolutions, then each
node is lowered to TFLite builtins in NHWC layout. pSConv filters are stored as sparse
constants expanded once at load by DENSIFY. How numbers are stored is the lowering's
``Numerics``: float32 here, ``Float16`` (every weight float16, turned back into float32 by
DEQUANTIZE) and ``tflite_int8.Int8`` (full-integer). The model's input is NHWC [1, H, W, C]
float32 in [0, 1] (the same images as PyTorch's NCHW input, transposed); its output is the logits.
"""
from __future__ import annotations

import math
import operator
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from pscompress.board.tflite_predictor import TFLitePredictor, interpreter_module
from pscompress.core.errors import UserError
from pscompress.core.files import atomic_output
from pscompress.core.metadata import TFLITE_ENTRY, encode_tflite_metadata, export_metadata
from pscompress.exporters.fuse import layer_pads
from pscompress.exporters.padding import pair, tflite_padding
from pscompress.exporters.pipeline import Prepared, prepare, verify
from pscompress.exporters.summary import ExportSummary
from pscompress.exporters.tflite_sparse import smallest_encoding
from pscompress.exporters.tflite_writer import Quantization, TFLiteGraph, enum
from pscompress.workstation.checkpoint import LoadedModel
from pscompress.workstation.layers import PSConv2d
from pscompress.workstation.surgery import psconv_layers

# Export fails when the TFLite interpreter's logits differ from PyTorch's by more than this
# (relative); float16 weights round every weight, so they get a looser bound.
VERIFY_TOLERANCE = {False: 1e-4, True: 1e-2}

_RELUS: dict[Any, str] = {nn.ReLU: "RELU", nn.ReLU6: "RELU6", F.relu: "RELU", torch.relu: "RELU", F.relu6: "RELU6", "relu": "RELU"}


def export_tflite(loaded: LoadedModel, path: str | os.PathLike, *, fp16: bool = False, int8: bool = False,
                  data: str | None = None, calibration: int | None = None,
                  input_shape: Sequence[int] | None = None) -> ExportSummary:
    """Write ``loaded`` as a .tflite file at ``path`` (atomically) and return a size report.

    ``input_shape`` is (C, H, W); by default it comes from the checkpoint's meta. The report
    holds the file size, the size of the same export with every filter dense and, when a TFLite
    interpreter is installed, how far its output is from PyTorch's (export fails beyond
    ``VERIFY_TOLERANCE``). ``int8``: a full-integer file calibrated on ``calibration`` images
    (None: 100) of data set ``data`` (exporters/tflite_int8.py).
    """
    if int8:
        return _export_int8(loaded, path, fp16, data, calibration, input_shape)
    job = prepare(loaded, input_shape)
    check_one_output(job)
    numerics = Float16() if fp16 else Numerics()
    with atomic_output(path) as tmp:
        data = serialize(job, numerics, sparse=True)
        dense = serialize(job, numerics, sparse=False)
        # Exporting needs no interpreter; checking does.
        diff = verify(data, job, _run_tflite, VERIFY_TOLERANCE[fp16], "TFLite model") if interpreter_installed() else None
        tmp.write_bytes(data)
    return ExportSummary(path=str(path), bytes=len(data), input_shape=job.input_shape,
                         psconv_layers=len(psconv_layers(loaded.module)), max_rel_diff=diff,
                         dense_bytes=len(dense), fp16=fp16)


def _export_int8(loaded: LoadedModel, path: str | os.PathLike, fp16: bool, data: str | None,
                 calibration: int | None, input_shape: Sequence[int] | None) -> ExportSummary:
    from pscompress.exporters.tflite_int8 import DEFAULT_CALIBRATION, export_tflite_int8  # it imports this module

    if fp16:
        raise UserError("choose one of --fp16 and --int8")
    if not data:
        raise UserError("int8 TFLite export needs calibration images: give a data set (--data)")
    return export_tflite_int8(loaded, path, data, DEFAULT_CALIBRATION if calibration is None else calibration, input_shape)


def build_tflite(loaded: LoadedModel, input_shape: Sequence[int], *, fp16: bool = False, sparse: bool = True) -> bytes:
    """The bytes of the .tflite model; ``sparse=False`` stores pSConv filters dense (for size comparisons)."""
    return serialize(prepare(loaded, input_shape), Float16() if fp16 else Numerics(), sparse=sparse)


def check_one_output(job: Prepared) -> None:
    """UserError for a model with several outputs."""
    if len(job.output_names) > 1:
        # The lowering writes one output and the board's TFLite predictor reads one.
        raise UserError(f"TFLite export takes models with one output; this one has {len(job.output_names)} "
                        f"({', '.join(job.output_names)}): export it to ONNX instead")


def serialize(job: Prepared, numerics: Numerics, sparse: bool = True, **metadata_fields: Any) -> bytes:
    """The .tflite bytes of the prepared model with numbers stored as ``numerics`` says."""
    with torch.no_grad():  # batch 1: the shapes the file declares (its batch dimension is dynamic)
        ShapeProp(job.graph).propagate(torch.zeros(1, *job.input_shape))
    graph = TFLiteGraph()
    _Lowering(job.graph, graph, numerics, sparse=sparse).run()
    metadata = _metadata(job.loaded, job.input_shape, fp16=isinstance(numerics, Float16), **metadata_fields)
    return graph.serialize(description="pscompress TFLite export", metadata={TFLITE_ENTRY: metadata})


def interpreter_installed() -> bool:
    try:
        interpreter_module()
    except UserError:
        return False
    return True


def _run_tflite(data: bytes, x: np.ndarray) -> list[np.ndarray]:
    return [TFLitePredictor.from_bytes(data).predict_normalized(x)]  # the graph itself: no preprocessing


def _metadata(loaded: LoadedModel, input_shape: tuple[int, int, int], fp16: bool, **fields: Any) -> bytes:
    layers = {name: {"kernel_size": list(m.pattern.kernel_size), "patterns": m.pattern.bitmasks, "shift": m.shift,
                     "density": m.pattern.density()}
              for name, m in psconv_layers(loaded.module).items()}
    return encode_tflite_metadata(export_metadata(loaded.meta, loaded.arch, input_shape, input_layout="NHWC",
                                                  fp16=fp16, psconv_layers=layers, meta=loaded.meta, **fields))


class Numerics:
    """How the lowering stores numbers: float32 activations, weights and biases (Float16 and
    tflite_int8.Int8 store them otherwise)."""

    def graph_input(self, graph: TFLiteGraph, tensor: int, name: str) -> int:
        """The tensor operators read for the float32 model input ``tensor`` (fx node ``name``)."""
        return tensor

    def graph_output(self, graph: TFLiteGraph, tensor: int) -> int:
        """The float32 tensor the model returns for the last operator's output ``tensor``."""
        return tensor

    def activation(self, graph: TFLiteGraph, name: str, shape: tuple[int, ...], like: int | None = None) -> int:
        """The output tensor of the fx node ``name``; ``like``: an input whose quantization it must share."""
        return graph.activation(name, shape)

    def weight(self, graph: TFLiteGraph, name: str, array: np.ndarray, sparse: bool, channel_axis: int) -> int:
        """A weight operators read as float32; ``channel_axis`` indexes its output channels."""
        return stored_constant(graph, name, array.astype(np.float32), sparse)

    def bias(self, graph: TFLiteGraph, name: str, bias: np.ndarray, x: int, weight: int) -> int:
        """The bias of an operator reading ``x`` with ``weight``."""
        return graph.constant(name, bias.astype(np.float32))

    def check_softmax(self, node: fx.Node) -> None:
        """UserError when these numerics cannot lower ``node``, a softmax."""


class Float16(Numerics):
    """Weights stored float16 and turned back into float32 by DEQUANTIZE; computation stays float32."""

    def weight(self, graph: TFLiteGraph, name: str, array: np.ndarray, sparse: bool, channel_axis: int) -> int:
        half = stored_constant(graph, name, array.astype(np.float16), sparse)
        tensor = graph.activation(f"{name}/float32", array.shape, batch_dynamic=False)
        graph.op("DEQUANTIZE", [half], [tensor])
        return tensor


def stored_constant(graph: TFLiteGraph, name: str, data: np.ndarray, sparse: bool,
                    quantization: Quantization | None = None) -> int:
    """A constant operators read dense: with ``sparse``, stored in TFLite's sparse format and expanded
    by DENSIFY when that is smaller."""
    encoding = smallest_encoding(data) if sparse else None
    if encoding is None:
        return graph.constant(name, data, quantization)
    stored = graph.sparse_constant(f"{name}/sparse", encoding, quantization)
    tensor = graph.activation(f"{name}/dense", data.shape, dtype=data.dtype, batch_dynamic=False, quantization=quantization)
    graph.op("DENSIFY", [stored], [tensor])
    return tensor


@dataclass
class _Value:
    tensor: int
    nhwc: bool  # 4-D activations are stored NHWC; anything else keeps PyTorch's layout


class _Lowering:
    """Walks the fx graph once, emitting TFLite operators for each node."""

    def __init__(self, gm: fx.GraphModule, graph: TFLiteGraph, numerics: Numerics, sparse: bool) -> None:
        self.gm, self.graph, self.numerics, self.sparse = gm, graph, numerics, sparse
        self.modules = dict(gm.named_modules())
        self.values: dict[fx.Node, _Value] = {}

    def run(self) -> None:
        for node in self.gm.graph.nodes:
            if node in self.values:
                continue  # an activation already fused into its producer
            if node.op == "placeholder":
                self._input(node)
            elif node.op == "output":
                self._output(node)
            elif node.op == "call_module":
                self._module(node, self.modules[node.target])
            elif node.op in ("call_function", "call_method"):
                self._function(node)
            else:
                raise UserError(f"cannot export {node.name} ({node.op} {node.target}) to TFLite")

    # -- graph boundary

    def _input(self, node: fx.Node) -> None:
        if self.graph.inputs:
            raise UserError("TFLite export supports models with one input")
        n, c, h, w = self._shape(node)
        tensor = self.graph.activation("input", (n, h, w, c))
        self.graph.inputs.append(tensor)
        self.values[node] = _Value(self.numerics.graph_input(self.graph, tensor, node.name), True)

    def _output(self, node: fx.Node) -> None:
        result = node.args[0]
        if isinstance(result, (tuple, list)) and len(result) == 1:
            result = result[0]  # a one-element tuple is the model's one output (model_io.named_outputs)
        if not isinstance(result, fx.Node):
            raise UserError("TFLite export supports models that return one tensor")
        value = self.values[result]
        if value.nhwc or value.tensor in self.graph.inputs:
            raise UserError("the model must end in logits of shape [N, classes] to be exported to TFLite")
        tensor = self.numerics.graph_output(self.graph, value.tensor)
        self.graph.tensors[tensor].name = "logits"
        self.graph.outputs.append(tensor)

    # -- dispatch

    def _module(self, node: fx.Node, m: nn.Module) -> None:
        if isinstance(m, nn.Conv2d):
            self._conv(node, m)
        elif isinstance(m, nn.Linear):
            self._linear(node, m)
        elif type(m) in _RELUS:
            self._activation(node, _RELUS[type(m)])
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            self._pool(node, m)
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            self._adaptive_avg_pool(node)
        elif isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
            self._flatten(node)
        elif isinstance(m, nn.Softmax) and m.dim in (1, -1):
            self._softmax(node)
        elif isinstance(m, (nn.Identity, nn.Dropout)):
            self.values[node] = self.values[node.args[0]]
        elif isinstance(m, nn.BatchNorm2d):
            raise UserError(f"layer {node.target}: a batch norm that does not directly follow a convolution cannot be exported to TFLite")
        else:
            raise UserError(f"layer {node.target} ({type(m).__name__}) cannot be exported to TFLite")

    def _function(self, node: fx.Node) -> None:
        target = node.target
        if target in (operator.add, torch.add) and len(node.args) == 2 and not node.kwargs:
            self._add(node)
        elif target in _RELUS:
            self._activation(node, _RELUS[target])
        elif target in (torch.flatten, "flatten") and tuple(node.args[1:]) == (1,) and not node.kwargs:
            self._flatten(node)
        elif target in (F.softmax, torch.softmax, "softmax") and (node.args[1:] or (node.kwargs.get("dim"),))[0] in (1, -1):
            self._softmax(node)
        else:
            name = getattr(target, "__name__", str(target))
            raise UserError(f"operation {node.name} ({name}) cannot be exported to TFLite")

    # -- operators

    def _conv(self, node: fx.Node, conv: nn.Conv2d) -> None:
        if conv.padding_mode != "zeros":
            raise UserError(f"layer {node.target}: padding_mode={conv.padding_mode!r} cannot be exported to TFLite (only zeros)")
        x = self._nhwc(node.args[0], node)
        _, c, h, w = self._shape(node.args[0])
        _, out_c, oh, ow = self._shape(node)
        weight = (conv.masked_weight() if isinstance(conv, PSConv2d) else conv.weight).detach().numpy()
        bias = conv.bias.detach().numpy() if conv.bias is not None else np.zeros(out_c, np.float32)
        pads = layer_pads(conv)
        padding = tflite_padding((h, w), (oh, ow), conv.kernel_size, conv.stride, conv.dilation, pads[:2])
        if padding is None:  # PyTorch's padding is not what SAME would pad: pad explicitly
            x = self._pad(x, node, pads)
            padding = "VALID"
        if conv.groups == 1:
            opcode, table, channel_axis = "CONV_2D", "Conv2DOptions", 0
            filt, extra = weight.transpose(0, 2, 3, 1), {}  # [O, KH, KW, I]
        elif conv.groups == c and out_c % c == 0:
            opcode, table, channel_axis = "DEPTHWISE_CONV_2D", "DepthwiseConv2DOptions", 3
            filt, extra = weight[:, 0].transpose(1, 2, 0)[None], {"DepthMultiplier": out_c // c}  # [1, KH, KW, O]
        else:
            raise UserError(f"layer {node.target}: grouped convolution (groups={conv.groups}) cannot be exported to TFLite")
        filt_tensor = self.numerics.weight(self.graph, f"{node.name}/filter", filt,
                                           sparse=self.sparse and isinstance(conv, PSConv2d), channel_axis=channel_axis)
        bias_tensor = self.numerics.bias(self.graph, f"{node.name}/bias", bias, x, filt_tensor)
        out, fused = self._result(node, (1, oh, ow, out_c))
        self.graph.op(opcode, [x, filt_tensor, bias_tensor], [out], table, Padding=enum("Padding", padding),
                      StrideH=conv.stride[0], StrideW=conv.stride[1], DilationHFactor=conv.dilation[0],
                      DilationWFactor=conv.dilation[1], FusedActivationFunction=fused, **extra)

    def _linear(self, node: fx.Node, linear: nn.Linear) -> None:
        x = self.values[node.args[0]]
        if x.nhwc or len(self._shape(node.args[0])) != 2:
            raise UserError(f"layer {node.target}: TFLite export supports Linear on flattened [N, features] inputs only")
        weight = self.numerics.weight(self.graph, f"{node.name}/weight", linear.weight.detach().numpy(), sparse=False,
                                      channel_axis=0)
        bias = linear.bias.detach().numpy() if linear.bias is not None else np.zeros(linear.out_features, np.float32)
        bias_tensor = self.numerics.bias(self.graph, f"{node.name}/bias", bias, x.tensor, weight)
        out, fused = self._result(node, (1, linear.out_features), nhwc=False)
        self.graph.op("FULLY_CONNECTED", [x.tensor, weight, bias_tensor], [out], "FullyConnectedOptions",
                      FusedActivationFunction=fused, KeepNumDims=False)

    def _add(self, node: fx.Node) -> None:
        a, b = node.args
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)) or self._shape(a) != self._shape(b):
            raise UserError(f"operation {node.name}: TFLite export supports adding two tensors of the same shape only")
        left, right = self.values[a], self.values[b]  # same shape, so the same layout
        out, fused = self._result(node, self._tflite_shape(node, left.nhwc), nhwc=left.nhwc)
        self.graph.op("ADD", [left.tensor, right.tensor], [out], "AddOptions", FusedActivationFunction=fused)

    def _activation(self, node: fx.Node, opcode: str) -> None:
        x = self.values[node.args[0]]
        out = self.numerics.activation(self.graph, node.name, self._tflite_shape(node, x.nhwc))
        self.graph.op(opcode, [x.tensor], [out])
        self.values[node] = _Value(out, x.nhwc)

    def _pool(self, node: fx.Node, pool: nn.MaxPool2d | nn.AvgPool2d) -> None:
        x = self._nhwc(node.args[0], node)
        _, _, h, w = self._shape(node.args[0])
        _, c, oh, ow = self._shape(node)
        kernel, stride, pads = (pair(pool.kernel_size), pair(pool.stride or pool.kernel_size), pair(pool.padding))
        dilation = pair(getattr(pool, "dilation", 1))
        padding = tflite_padding((h, w), (oh, ow), kernel, stride, dilation, pads)
        is_max = isinstance(pool, nn.MaxPool2d)
        # TFLite's SAME average pool leaves padding out of the count where PyTorch may not: VALID only.
        if padding is None or dilation != (1, 1) or (not is_max and padding != "VALID"):
            raise UserError(f"layer {node.target}: this pooling window, stride and padding have no TFLite equivalent")
        out = self.numerics.activation(self.graph, node.name, (1, oh, ow, c), like=x)  # int8 pools keep the scale
        self.graph.op("MAX_POOL_2D" if is_max else "AVERAGE_POOL_2D", [x], [out], "Pool2DOptions",
                      Padding=enum("Padding", padding), StrideH=stride[0], StrideW=stride[1],
                      FilterHeight=kernel[0], FilterWidth=kernel[1])
        self.values[node] = _Value(out, True)

    def _adaptive_avg_pool(self, node: fx.Node) -> None:
        x = self._nhwc(node.args[0], node)
        _, _, h, w = self._shape(node.args[0])
        _, c, oh, ow = self._shape(node)
        if (oh, ow) == (1, 1):
            out = self.numerics.activation(self.graph, node.name, (1, oh, ow, c))
            axes = self.graph.constant(f"{node.name}/axes", np.array([1, 2], np.int32))
            self.graph.op("MEAN", [x, axes], [out], "ReducerOptions", KeepDims=True)
        elif h % oh == 0 and w % ow == 0:
            out = self.numerics.activation(self.graph, node.name, (1, oh, ow, c), like=x)
            self.graph.op("AVERAGE_POOL_2D", [x], [out], "Pool2DOptions", Padding=enum("Padding", "VALID"),
                          StrideH=h // oh, StrideW=w // ow, FilterHeight=h // oh, FilterWidth=w // ow)
        else:
            raise UserError(f"layer {node.target}: adaptive average pooling from {h}x{w} to {oh}x{ow} has no TFLite equivalent")
        self.values[node] = _Value(out, True)

    def _flatten(self, node: fx.Node) -> None:
        source = node.args[0]
        x = self.values[source]
        features = math.prod(self._shape(source)[1:])
        tensor = x.tensor
        if x.nhwc and self._shape(source)[2:] != (1, 1):  # PyTorch flattens C, H, W in that order
            tensor = self._transpose(tensor, (0, 3, 1, 2), f"{node.name}/nchw")
        shape = self.graph.constant(f"{node.name}/shape", np.array([-1, features], np.int32))
        out = self.numerics.activation(self.graph, node.name, (1, features), like=tensor)
        self.graph.op("RESHAPE", [tensor, shape], [out])
        self.values[node] = _Value(out, False)

    def _softmax(self, node: fx.Node) -> None:
        x = self.values[node.args[0]]
        if x.nhwc or len(self._shape(node)) != 2:
            raise UserError(f"operation {node.name}: TFLite export supports softmax over [N, classes] only")
        self.numerics.check_softmax(node)
        out = self.numerics.activation(self.graph, node.name, self._shape(node))
        self.graph.op("SOFTMAX", [x.tensor], [out], "SoftmaxOptions", Beta=1.0)
        self.values[node] = _Value(out, False)

    # -- helpers

    def _result(self, node: fx.Node, shape: tuple[int, ...], nhwc: bool = True) -> tuple[int, int]:
        """The output tensor of ``node``, with a single following ReLU fused into it."""
        fused, produced_by = "NONE", node
        users = list(node.users)
        if len(users) == 1 and self._relu_kind(users[0]) is not None and users[0].args[0] is node:
            fused, produced_by = self._relu_kind(users[0]), users[0]
        out = self.numerics.activation(self.graph, produced_by.name, shape)
        self.values[node] = self.values[produced_by] = _Value(out, nhwc)
        return out, enum("ActivationFunctionType", fused)

    def _relu_kind(self, node: fx.Node) -> str | None:
        if node.op == "call_module":
            return _RELUS.get(type(self.modules[node.target]))
        if node.op in ("call_function", "call_method"):
            return _RELUS.get(node.target)
        return None

    def _nhwc(self, source: Any, user: fx.Node) -> int:
        value = self.values.get(source) if isinstance(source, fx.Node) else None
        if value is None or not value.nhwc:
            raise UserError(f"operation {user.name}: expects a 4-D image tensor")
        return value.tensor

    def _pad(self, x: int, node: fx.Node, pads: tuple[int, int, int, int]) -> int:
        """``x`` padded with zeros by (top, left, bottom, right)."""
        n, h, w, c = self.graph.shape_of(x)
        top, left, bottom, right = pads
        widths = self.graph.constant(f"{node.name}/pads", np.array([[0, 0], [top, bottom], [left, right], [0, 0]], np.int32))
        out = self.numerics.activation(self.graph, f"{node.name}/padded", (n, h + top + bottom, w + left + right, c), like=x)
        self.graph.op("PAD", [x, widths], [out])
        return out

    def _transpose(self, x: int, perm: tuple[int, ...], name: str) -> int:
        shape = self.graph.shape_of(x)
        out = self.numerics.activation(self.graph, name, tuple(shape[p] for p in perm), like=x)
        self.graph.op("TRANSPOSE", [x, self.graph.constant(f"{name}/perm", np.array(perm, np.int32))], [out])
        return out

    def _shape(self, node: Any) -> tuple[int, ...]:
        meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        if meta is None or not hasattr(meta, "shape"):
            raise UserError(f"operation {getattr(node, 'name', node)} does not produce one tensor: cannot export it to TFLite")
        return tuple(int(d) for d in meta.shape)

    def _tflite_shape(self, node: fx.Node, nhwc: bool) -> tuple[int, ...]:
        shape = self._shape(node)
        return (shape[0], shape[2], shape[3], shape[1]) if nhwc else shape
