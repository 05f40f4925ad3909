"""TFLite export: a PyTorch CNN (pSConv layers included) to one .tflite file, without TensorFlow.

The model is traced with torch.fx after batch norm is folded into the convolutions, then each
node is lowered to TFLite builtins in NHWC layout. pSConv filters are stored as sparse
constants expanded once at load by DENSIFY. How numbers are stored is the lowering's
``Numerics``: float32 here, ``Float16`` (every weight float16, turned back into float32 by
DEQUANTIZE) and ``tflite_int8.Int8`` (full-integer). The model's input is NHWC [1, H, W, C]
float32 in [0, 1] (the same images as PyTorch's NCHW input, transposed); its outputs are PyTorch's, in
its order and shapes (an image-shaped output is transposed back to NCHW), named as model_io.named_outputs
names them.
"""
from __future__ import annotations

import functools
import math
import operator
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import _extract_tensor_metadata

from pscompress.board.tflite_predictor import TFLitePredictor, interpreter_module
from pscompress.core.errors import UserError
from pscompress.core.files import atomic_output
from pscompress.core.metadata import TFLITE_ENTRY, encode_tflite_metadata, export_metadata
from pscompress.exporters.fuse import layer_pads
from pscompress.exporters.padding import pair, tflite_padding
from pscompress.exporters.pipeline import Prepared, output_records, prepare, verify
from pscompress.exporters.summary import ExportSummary
from pscompress.exporters.tflite_sparse import smallest_encoding
from pscompress.exporters.tflite_writer import Quantization, TFLiteGraph, enum
from pscompress.workstation.checkpoint import LoadedModel
from pscompress.workstation.layers import PSConv2d
from pscompress.workstation.surgery import psconv_layers
from pscompress.workstation.virtual_pool import FACTOR, Upsample2x

aten = torch.ops.aten

# Export fails when the TFLite interpreter's logits differ from PyTorch's by more than this
# (relative); float16 weights round every weight, so they get a looser bound.
VERIFY_TOLERANCE = {False: 1e-4, True: 1e-2}

_RELUS: dict[Any, str] = {nn.ReLU: "RELU", nn.ReLU6: "RELU6", F.relu: "RELU", torch.relu: "RELU", F.relu6: "RELU6", "relu": "RELU"}
# One-input activations with a TFLite builtin (keyed by module class, function or method name).
# F.sigmoid traces as the method "sigmoid"; F.prelu is torch.prelu.
_ACTIVATIONS: dict[Any, str] = {**_RELUS, nn.Hardswish: "HARD_SWISH", F.hardswish: "HARD_SWISH", nn.Sigmoid: "LOGISTIC",
                                torch.sigmoid: "LOGISTIC", "sigmoid": "LOGISTIC"}
_BINARY: dict[Any, str] = {operator.add: "ADD", torch.add: "ADD", "add": "ADD", operator.mul: "MUL", torch.mul: "MUL",
                           "mul": "MUL", operator.sub: "SUB", torch.sub: "SUB", "sub": "SUB", operator.truediv: "DIV",
                           torch.div: "DIV", torch.true_divide: "DIV", "div": "DIV", "true_divide": "DIV"}
_HARDSIGMOIDS = (nn.Hardsigmoid, F.hardsigmoid)
# The functional pools and the module each builds from its arguments (PyTorch's parameter order).
_POOL_FUNCTIONS: dict[Any, tuple[type, tuple[str, ...]]] = {
    F.max_pool2d: (nn.MaxPool2d, ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")),
    F.avg_pool2d: (nn.AvgPool2d, ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                                  "divisor_override")),
}
_RESHAPES = ("view", "reshape", torch.reshape)
_PERMUTES = ("permute", torch.permute, "transpose", torch.transpose)
_BATCH = "batch"  # a static dimension that is the batch size, whatever it is at run time
_CATS = (torch.cat, torch.concat, torch.concatenate)
_PADS = {F.pad: ("pad", "mode", "value"), aten.pad.default: ("pad", "mode", "value"),
         aten.constant_pad_nd.default: ("pad", "value")}  # their arguments after the input, in order
# A torch.export program's graph (pscompress.workstation.program) calls aten operators where a module graph calls
# functions and methods: each lowers as the form of the module graph it stands for, whose arguments it takes in the
# same order. (F.interpolate's lowering runs the call itself; aten.hardtanh and aten.clamp are ReLU6 or ReLU for the
# bounds of one, see _form; F.pad's arguments are read by target.)
_ATEN_FORMS: dict[Any, Any] = {
    aten.relu.default: torch.relu, aten.relu6.default: F.relu6, aten.sigmoid.default: torch.sigmoid,
    aten.hardswish.default: F.hardswish, aten.hardsigmoid.default: F.hardsigmoid, aten.silu.default: F.silu,
    aten.prelu.default: torch.prelu, aten.max_pool2d.default: F.max_pool2d, aten.avg_pool2d.default: F.avg_pool2d,
    aten.adaptive_avg_pool2d.default: F.adaptive_avg_pool2d, aten.mean.dim: torch.mean, aten.cat.default: torch.cat,
    aten.add.Tensor: operator.add, aten.add.Scalar: operator.add, aten.sub.Tensor: operator.sub,
    aten.sub.Scalar: operator.sub, aten.mul.Tensor: operator.mul, aten.mul.Scalar: operator.mul,
    aten.div.Tensor: operator.truediv, aten.div.Scalar: operator.truediv,
    aten.upsample_nearest2d.vec: F.interpolate, aten.upsample_nearest2d.default: F.interpolate,
    aten.upsample_bilinear2d.vec: F.interpolate, aten.flatten.using_ints: torch.flatten, aten.view.default: "view",
    aten._unsafe_view.default: "view", aten.reshape.default: "reshape", aten.permute.default: "permute",
    aten.transpose.int: "transpose", aten.contiguous.default: "contiguous", aten.clone.default: "clone",
    aten.alias.default: "clone", aten.rsub.Scalar: operator.sub, aten.rsub.Tensor: operator.sub,
    aten.linear.default: F.linear,
    aten.softmax.int: F.softmax, aten._softmax.default: F.softmax, aten.sym_size.int: "size",
    aten.pad.default: F.pad, aten.constant_pad_nd.default: F.pad,
}
_SWAPPED = (aten.rsub.Scalar, aten.rsub.Tensor)  # rsub(x, c) is c - x
_CLAMPS = {aten.hardtanh.default: (-1, 1), aten.clamp.default: (None, None)}  # their default (min, max)
# NCHW dimension -> NHWC axis.
_NHWC_AXIS = (0, 3, 1, 2)


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
    if data is not None or calibration is not None:  # silently ignored, they would suggest a calibrated file
        given = "--data" if data is not None else "--calibration"
        raise UserError(f"{given} calibrates an int8 TFLite file: add --int8, or leave {given} out")
    job = prepare(loaded, input_shape)
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


def serialize(job: Prepared, numerics: Numerics, sparse: bool = True, **metadata_fields: Any) -> bytes:
    """The .tflite bytes of the prepared model with numbers stored as ``numerics`` says."""
    with torch.no_grad():  # batch 1: the shapes the file declares (its batch dimension is dynamic)
        _Shapes(job.graph).run(torch.zeros(1, *job.input_shape))
    graph = TFLiteGraph()
    _Lowering(job.graph, graph, numerics, sparse=sparse, output_names=job.output_names).run()
    metadata = _metadata(job.loaded, job.input_shape, fp16=isinstance(numerics, Float16), outputs=output_records(job),
                         **metadata_fields)
    return graph.serialize(description="pscompress TFLite export", metadata={TFLITE_ENTRY: metadata})


def interpreter_installed() -> bool:
    try:
        interpreter_module()
    except UserError:
        return False
    return True


def _run_tflite(data: bytes, x: np.ndarray) -> list[np.ndarray]:
    return list(TFLitePredictor.from_bytes(data).run_normalized(x).values())  # the graph itself: no preprocessing


def _metadata(loaded: LoadedModel, input_shape: tuple[int, int, int], fp16: bool, **fields: Any) -> bytes:
    layers = {name: {"kernel_size": list(m.pattern.kernel_size), "patterns": m.pattern.bitmasks, "shift": m.shift,
                     "density": m.pattern.density()}
              for name, m in psconv_layers(loaded.module).items()}
    return encode_tflite_metadata(export_metadata(loaded.meta, loaded.arch, input_shape, input_layout="NHWC",
                                                  fp16=fp16, psconv_layers=layers, meta=loaded.meta, **fields))


class _Shapes(fx.Interpreter):
    """fx's shape propagation (each node's ``tensor_meta``, as ShapeProp records it), with a node that fails on one
    image (a reshape to a fixed batch size, say) a one-line error naming it."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.extra_traceback = False  # fx would append its node dump to the one-line error

    def run_node(self, n: fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except Exception as exc:
            cause = exc
            while cause.__cause__ is not None:
                cause = cause.__cause__
            reason = (str(cause).strip().splitlines() or [cause.__class__.__name__])[0][:200]
            label = f"layer {n.target}" if n.op == "call_module" else f"operation {n.name}"
            raise UserError(f"{label}: PyTorch's model does not run on one image ({reason}): TFLite export needs a model "
                            "that takes any batch size") from exc
        found = []

        def extract(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                found.append(value)
                return _extract_tensor_metadata(value)
            return value

        meta = map_aggregate(result, extract)
        if found:
            n.meta["tensor_meta"] = meta
        n.meta["type"] = type(result)
        return result


class Numerics:
    """How the lowering stores numbers: float32 activations, weights and biases (Float16 and
    tflite_int8.Int8 store them otherwise)."""

    def graph_input(self, graph: TFLiteGraph, tensor: int, name: str) -> int:
        """The tensor operators read for the float32 model input ``tensor`` (fx node ``name``)."""
        return tensor

    def graph_output(self, graph: TFLiteGraph, tensor: int, name: str) -> int:
        """The float32 tensor the model returns as its output ``name`` for the lowered ``tensor``."""
        graph.tensors[tensor].name = name
        return tensor

    def scaled(self, graph: TFLiteGraph, name: str, shape: tuple[int, ...], of: str, factor: float) -> int:
        """A tensor holding ``factor`` times the values of fx node ``of`` (what int8 quantizes it by)."""
        return graph.activation(name, shape)

    def activation(self, graph: TFLiteGraph, name: str, shape: tuple[int, ...], like: int | None = None) -> int:
        """The output tensor of the fx node ``name``; ``like``: an input whose quantization it must share."""
        return graph.activation(name, shape)

    def weight(self, graph: TFLiteGraph, name: str, array: np.ndarray, sparse: bool, channel_axis: int) -> int:
        """A weight operators read as float32; ``channel_axis`` indexes its output channels."""
        return stored_constant(graph, name, array.astype(np.float32), sparse)

    def bias(self, graph: TFLiteGraph, name: str, bias: np.ndarray, x: int, weight: int) -> int:
        """The bias of an operator reading ``x`` with ``weight``."""
        return graph.constant(name, bias.astype(np.float32))

    def operand(self, graph: TFLiteGraph, name: str, array: np.ndarray) -> int:
        """A constant an elementwise operator reads (PRELU's alpha), one quantization for the whole tensor."""
        return graph.constant(name, array.astype(np.float32))

    def logistic(self, graph: TFLiteGraph, name: str, shape: tuple[int, ...]) -> int:
        """The output tensor of a LOGISTIC (whose int8 form has fixed output parameters)."""
        return graph.activation(name, shape)

    def lowest(self, graph: TFLiteGraph, name: str, like: int) -> int:
        """A scalar holding the smallest value ``like``'s numbers hold: what PADV2 pads with before a max pool."""
        return graph.constant(name, np.array(np.finfo(np.float32).min, np.float32))

    def requantize(self, graph: TFLiteGraph, tensor: int, like: int, name: str) -> int:
        """``tensor`` in ``like``'s quantization (CONCATENATION's inputs must share its output's)."""
        return tensor

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

    def __init__(self, gm: fx.GraphModule, graph: TFLiteGraph, numerics: Numerics, sparse: bool,
                 output_names: Sequence[str] = ("logits",)) -> None:
        self.gm, self.graph, self.numerics, self.sparse = gm, graph, numerics, sparse
        self.output_names = list(output_names)
        self.modules = dict(gm.named_modules())
        self.values: dict[fx.Node, _Value] = {}
        self.static: dict[fx.Node, Any] = {}  # shapes and sizes read from tensors (x.size(0)): known when exporting
        self.conv_pads: dict[fx.Node, tuple[int, int, int, int]] = {}  # F.pad nodes whose one reader is a conv

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
            # get_attr: a model parameter, stored as a constant by the operator that reads it (F.prelu's weight)

    # -- graph boundary

    def _input(self, node: fx.Node) -> None:
        if self.graph.inputs:
            raise UserError("TFLite export supports models with one input")
        n, c, h, w = self._shape(node)
        tensor = self.graph.activation("input", (n, h, w, c))
        self.graph.inputs.append(tensor)
        self.values[node] = _Value(self.numerics.graph_input(self.graph, tensor, node.name), True)

    def _output(self, node: fx.Node) -> None:
        """Every output in the model's order, named as model_io.named_outputs names them (the recorded names);
        an image-shaped one transposed back to PyTorch's NCHW, so each output has PyTorch's shape."""
        result = node.args[0]
        results = list(result.values()) if isinstance(result, dict) else \
            list(result) if isinstance(result, (tuple, list)) else [result]
        if len(results) != len(self.output_names):
            raise UserError(f"the model returns {len(results)} value(s) but {len(self.output_names)} output(s) when it "
                            "runs: cannot export it to TFLite")
        for name, source in zip(self.output_names, results):
            if not isinstance(source, fx.Node):
                raise UserError(f"output {name} is not a tensor computed from the input: cannot export it to TFLite")
            value = self._value(source, node)
            tensor = self._transpose(value.tensor, (0, 3, 1, 2), f"{name}/nchw") if value.nhwc else value.tensor
            if tensor in self.graph.inputs or tensor in self.graph.outputs:
                raise UserError(f"output {name} is the model's input or another output: cannot export it to TFLite")
            self.graph.outputs.append(self.numerics.graph_output(self.graph, tensor, name))

    # -- dispatch

    def _module(self, node: fx.Node, m: nn.Module) -> None:
        if isinstance(m, nn.Conv2d):
            self._conv(node, m)
        elif isinstance(m, nn.Linear):
            self._linear(node, m)
        elif type(m) in _ACTIVATIONS:
            self._activation(node, _ACTIVATIONS[type(m)])
        elif isinstance(m, nn.Hardsigmoid):
            self._hardsigmoid(node)
        elif isinstance(m, nn.SiLU):
            self._silu(node)
        elif isinstance(m, nn.PReLU):
            self._prelu(node, m.weight)
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            self._pool(node, m)
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            self._adaptive_avg_pool(node)
        elif isinstance(m, nn.Upsample):
            self._resize_nearest(node, m)
        elif isinstance(m, Upsample2x):
            self._virtual_pool_upsample(node)
        elif isinstance(m, nn.Flatten):
            self._flatten(node, m.start_dim, m.end_dim)
        elif isinstance(m, nn.Softmax) and m.dim in (1, -1):
            self._softmax(node)
        elif isinstance(m, (nn.Identity, nn.Dropout)):
            self.values[node] = self._value(node.args[0], node)
        elif isinstance(m, nn.BatchNorm2d):
            raise UserError(f"layer {node.target}: a batch norm that does not directly follow a convolution cannot be exported to TFLite")
        else:
            raise UserError(f"layer {node.target} ({type(m).__name__}) cannot be exported to TFLite")

    def _function(self, node: fx.Node) -> None:
        target = _form(node)
        if self._static(node, target):
            return
        if target in _BINARY and len(node.args) == 2 and not node.kwargs:
            self._arithmetic(node, _BINARY[target], node.args[::-1] if node.target in _SWAPPED else node.args)
        elif target is F.linear:
            self._linear(node, self._linear_module(node))
        elif target in _ACTIVATIONS:
            self._activation(node, _ACTIVATIONS[target])
        elif target in _HARDSIGMOIDS:
            self._hardsigmoid(node)
        elif target in _POOL_FUNCTIONS:
            self._pool(node, self._pool_module(node, *_POOL_FUNCTIONS[target]))
        elif target is F.adaptive_avg_pool2d:
            self._adaptive_avg_pool(node)
        elif target is F.silu:
            self._silu(node)
        elif target is torch.prelu:
            self._prelu(node, self._parameter(node.args[1] if len(node.args) > 1 else node.kwargs.get("weight"), node))
        elif target in _CATS:
            self._concat(node)
        elif target in (torch.mean, "mean"):
            self._mean(node)
        elif target is F.interpolate:  # the call itself, F.interpolate's or an aten upsample's, picks the pixels
            self._resize_nearest(node, lambda x: node.target(x, *node.args[1:], **node.kwargs))
        elif target is F.pad:
            self._explicit_pad(node)
        elif target in (torch.flatten, "flatten"):
            args = {**dict(zip(("start_dim", "end_dim"), node.args[1:])), **node.kwargs}
            self._flatten(node, args.get("start_dim", 0), args.get("end_dim", -1))
        elif target in _RESHAPES:
            self._reshape(node)
        elif target in _PERMUTES:
            self._permute(node, target)
        elif target in ("contiguous", "clone") and len(node.args) == 1:
            self.values[node] = self._value(node.args[0], node)
        elif target in (F.softmax, torch.softmax, "softmax") and (node.args[1:] or (node.kwargs.get("dim"),))[0] in (1, -1):
            self._softmax(node)
        else:
            name = getattr(node.target, "__name__", str(node.target))
            raise UserError(f"operation {node.name} ({name}) cannot be exported to TFLite")

    # -- operators

    def _conv(self, node: fx.Node, conv: nn.Conv2d) -> None:
        if conv.padding_mode != "zeros":
            raise UserError(f"layer {node.target}: padding_mode={conv.padding_mode!r} cannot be exported to TFLite (only zeros)")
        source, before = node.args[0], self.conv_pads.get(node.args[0], (0, 0, 0, 0))
        if source in self.conv_pads:  # the zeros an F.pad before it adds (TF-style 'same' padding) are its own
            source = source.args[0]
        x = self._nhwc(source, node)
        _, c, h, w = self._shape(source)
        _, out_c, oh, ow = self._shape(node)
        # A pSConv filter is its masked weight, whatever the groups: sparse storage sees the zeros.
        weight = (conv.masked_weight() if isinstance(conv, PSConv2d) else conv.weight).detach().numpy()
        bias = conv.bias.detach().numpy() if conv.bias is not None else np.zeros(out_c, np.float32)
        pads = tuple(a + b for a, b in zip(layer_pads(conv), before))
        padding = tflite_padding((h, w), (oh, ow), conv.kernel_size, conv.stride, conv.dilation, pads[:2])
        if padding is None:  # PyTorch's padding is not what SAME would pad: pad explicitly
            x = self._pad(x, node, pads)
            padding = "VALID"
        out, fused = self._result(node, (1, oh, ow, out_c))
        options = {"Padding": enum("Padding", padding), "StrideH": conv.stride[0], "StrideW": conv.stride[1],
                   "DilationHFactor": conv.dilation[0], "DilationWFactor": conv.dilation[1],
                   "FusedActivationFunction": fused}
        sparse = self.sparse and isinstance(conv, PSConv2d)
        if conv.groups == 1:
            self._conv_op("CONV_2D", node.name, x, weight.transpose(0, 2, 3, 1), bias, out, sparse, options)  # [O, KH, KW, I]
        elif conv.groups == c:
            self._conv_op("DEPTHWISE_CONV_2D", node.name, x, weight[:, 0].transpose(1, 2, 0)[None], bias, out, sparse,
                          {**options, "DepthMultiplier": out_c // c})  # [1, KH, KW, O]
        else:
            self._grouped_conv(node.name, x, weight, bias, out, conv.groups, sparse, options)

    def _conv_op(self, opcode: str, name: str, x: int, filt: np.ndarray, bias: np.ndarray, out: int, sparse: bool,
                 options: dict[str, Any]) -> None:
        """One CONV_2D ([O, KH, KW, I] filter) or DEPTHWISE_CONV_2D ([1, KH, KW, O]) from ``x`` into ``out``."""
        depthwise = opcode == "DEPTHWISE_CONV_2D"
        filt_tensor = self.numerics.weight(self.graph, f"{name}/filter", filt, sparse=sparse, channel_axis=3 if depthwise else 0)
        bias_tensor = self.numerics.bias(self.graph, f"{name}/bias", bias, x, filt_tensor)
        self.graph.op(opcode, [x, filt_tensor, bias_tensor], [out],
                      "DepthwiseConv2DOptions" if depthwise else "Conv2DOptions", **options)

    def _grouped_conv(self, name: str, x: int, weight: np.ndarray, bias: np.ndarray, out: int, groups: int, sparse: bool,
                      options: dict[str, Any]) -> None:
        # TFLite's CONV_2D takes a grouped filter (C / groups input channels) only from operator version 6
        # (TensorFlow 2.9), which older runtimes, TFLite Micro and the GPU and NNAPI delegates do not run:
        # a SPLIT, one CONV_2D per group and a CONCATENATION run everywhere, XNNPACK included.
        n, oh, ow, out_c = self.graph.shape_of(out)
        per_group = out_c // groups
        results = []
        for g, part in enumerate(self._split(x, groups, name)):
            rows = slice(g * per_group, (g + 1) * per_group)
            # int8: CONCATENATION needs its inputs in its output's quantization.
            result = self.numerics.activation(self.graph, f"{name}/group{g}", (n, oh, ow, per_group), like=out)
            self._conv_op("CONV_2D", f"{name}/group{g}", part, weight[rows].transpose(0, 2, 3, 1), bias[rows], result, sparse, options)
            results.append(result)
        # The ReLU is fused into each group's CONV_2D: CONCATENATION runs no activation in every runtime.
        self.graph.op("CONCATENATION", results, [out], "ConcatenationOptions", Axis=3,
                      FusedActivationFunction=enum("ActivationFunctionType", "NONE"))

    def _linear(self, node: fx.Node, linear: nn.Linear) -> None:
        x = self._value(node.args[0], node)
        if x.nhwc or len(self._shape(node.args[0])) != 2:
            raise UserError(f"{self._label(node)}: TFLite export supports Linear on flattened [N, features] inputs only")
        weight = self.numerics.weight(self.graph, f"{node.name}/weight", linear.weight.detach().numpy(), sparse=False,
                                      channel_axis=0)
        bias = linear.bias.detach().numpy() if linear.bias is not None else np.zeros(linear.out_features, np.float32)
        bias_tensor = self.numerics.bias(self.graph, f"{node.name}/bias", bias, x.tensor, weight)
        out, fused = self._result(node, (1, linear.out_features), nhwc=False)
        self.graph.op("FULLY_CONNECTED", [x.tensor, weight, bias_tensor], [out], "FullyConnectedOptions",
                      FusedActivationFunction=fused, KeepNumDims=False)

    def _arithmetic(self, node: fx.Node, opcode: str, args: Sequence[Any]) -> None:
        """+, -, *, / of two tensors (no division) or of a tensor and a Python number (x / c as x * (1 / c),
        x - c as x + (-c); not c / x): one ADD, SUB or MUL, the number a constant of the tensor's rank. ``args``:
        the operands in the operation's order."""
        a, b = args
        if isinstance(a, fx.Node) and isinstance(b, fx.Node):
            if opcode == "DIV":
                raise UserError(f"operation {node.name}: TFLite export divides a tensor by a number only")
            self._binary(node, opcode, a, b)
            return
        reverse = _is_number(a) and isinstance(b, fx.Node)
        source, number = (b, a) if reverse else (a, b)
        if not (isinstance(source, fx.Node) and _is_number(number)):
            raise UserError(f"operation {node.name}: TFLite export supports {opcode.lower()} of two tensors or of a "
                            "tensor and a number only")
        if opcode == "DIV":
            if reverse or number == 0:
                raise UserError(f"operation {node.name}: TFLite export divides a tensor by a nonzero number only")
            opcode, number = "MUL", 1.0 / number
        elif opcode == "SUB" and not reverse:
            opcode, number = "ADD", -number
        x = self._value(source, node)
        rank = len(self._shape(node))
        constant = self.numerics.operand(self.graph, f"{node.name}/operand", np.full((1,) * rank, number, np.float32))
        out, fused = self._result(node, self._tflite_shape(node, x.nhwc), nhwc=x.nhwc)
        inputs = [constant, x.tensor] if reverse and opcode == "SUB" else [x.tensor, constant]
        self.graph.op(opcode, inputs, [out], f"{opcode.title()}Options", FusedActivationFunction=fused)

    def _hardsigmoid(self, node: fx.Node) -> None:
        """TFLite has no HARD_SIGMOID: relu6(x + 3) / 6 as an ADD of 3 with RELU6 fused, then a MUL by 1/6. In int8
        the ADD's output is quantized as six times the hardsigmoid's calibrated range, so the MUL loses nothing."""
        x = self._value(node.args[0], node)
        shape = self.graph.shape_of(x.tensor)
        ones = (1,) * len(shape)
        shifted = self.numerics.scaled(self.graph, f"{node.name}/relu6", shape, node.name, 6.0)
        self.graph.op("ADD", [x.tensor, self.numerics.operand(self.graph, f"{node.name}/three", np.full(ones, 3, np.float32))],
                      [shifted], "AddOptions", FusedActivationFunction=enum("ActivationFunctionType", "RELU6"))
        out, fused = self._result(node, shape, nhwc=x.nhwc)
        sixth = self.numerics.operand(self.graph, f"{node.name}/sixth", np.full(ones, 1 / 6, np.float32))
        self.graph.op("MUL", [shifted, sixth], [out], "MulOptions", FusedActivationFunction=fused)

    def _pool_module(self, node: fx.Node, cls: type, names: tuple[str, ...]) -> nn.Module:
        """The module F.max_pool2d / F.avg_pool2d behaves as, built from the call's arguments: both forms have one
        lowering (``_pool``)."""
        params = {**dict(zip(names, node.args[1:])), **node.kwargs}
        if any(isinstance(v, fx.Node) for v in params.values()):
            raise UserError(f"operation {node.name}: its pooling parameters are computed at run time: cannot export "
                            "it to TFLite")
        if params.pop("return_indices", False):
            raise UserError(f"operation {node.name}: a max pool that returns indices cannot be exported to TFLite")
        try:
            return cls(**params)
        except (TypeError, ValueError) as exc:
            raise UserError(f"operation {node.name}: cannot read its pooling parameters ({exc})") from exc

    def _linear_module(self, node: fx.Node) -> nn.Linear:
        """The nn.Linear F.linear (aten.linear) of model parameters behaves as: both forms have one lowering
        (``_linear``)."""
        args = {**dict(zip(("weight", "bias"), node.args[1:])), **node.kwargs}
        weight = self._parameter(args.get("weight"), node)
        bias = None if args.get("bias") is None else self._parameter(args["bias"], node)
        if weight.dim() != 2:
            raise UserError(f"operation {node.name}: TFLite export supports linear layers of a 2-D weight only")
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        linear.weight = nn.Parameter(weight.detach(), requires_grad=False)
        if bias is not None:
            linear.bias = nn.Parameter(bias.detach(), requires_grad=False)
        return linear

    def _binary(self, node: fx.Node, opcode: str, a: fx.Node, b: fx.Node) -> None:
        if len(self._shape(a)) != len(self._shape(b)):
            raise UserError(f"operation {node.name}: TFLite export supports {opcode.lower()} of two tensors of the same rank only")
        left, right = self._value(a, node), self._value(b, node)
        # Same rank, so the same layout: TFLite broadcasts NHWC [N, 1, 1, C] over [N, H, W, C] as PyTorch
        # broadcasts [N, C, 1, 1] over [N, C, H, W] (squeeze-and-excitation).
        out, fused = self._result(node, self._tflite_shape(node, left.nhwc), nhwc=left.nhwc)
        self.graph.op(opcode, [left.tensor, right.tensor], [out], f"{opcode.title()}Options", FusedActivationFunction=fused)

    def _activation(self, node: fx.Node, opcode: str) -> None:
        x = self._value(node.args[0], node)
        self.values[node] = _Value(self._elementwise(opcode, x.tensor, node.name), x.nhwc)

    def _silu(self, node: fx.Node) -> None:
        x = self._value(node.args[0], node)
        gate = self._elementwise("LOGISTIC", x.tensor, f"{node.name}/sigmoid")  # TFLite has no SiLU: x * sigmoid(x)
        out, fused = self._result(node, self.graph.shape_of(x.tensor), nhwc=x.nhwc)
        self.graph.op("MUL", [x.tensor, gate], [out], "MulOptions", FusedActivationFunction=fused)

    def _prelu(self, node: fx.Node, weight: torch.Tensor) -> None:
        x = self._value(node.args[0], node)
        shape = self._shape(node)
        if len(shape) < 2:
            raise UserError(f"{self._label(node)}: TFLite export supports PReLU on [N, C, ...] tensors only")
        # PyTorch's alpha runs along dim 1, TFLite broadcasts it over the trailing dimensions: NHWC takes
        # [1, 1, C] (the one shape every runtime's PRELU accepts), other layouts [C, 1, ...].
        alpha_shape = (1, 1, shape[1]) if x.nhwc else (shape[1],) + (1,) * (len(shape) - 2)
        alpha = np.broadcast_to(weight.detach().numpy().reshape(-1), (shape[1],)).reshape(alpha_shape)
        alpha_tensor = self.numerics.operand(self.graph, f"{node.name}/alpha", alpha)
        out = self.numerics.activation(self.graph, node.name, self.graph.shape_of(x.tensor))
        self.graph.op("PRELU", [x.tensor, alpha_tensor], [out])
        self.values[node] = _Value(out, x.nhwc)

    def _concat(self, node: fx.Node) -> None:
        sources = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        shape = self._shape(node)
        axis = dim % len(shape)
        if not isinstance(sources, (list, tuple)) or axis == 0:
            raise UserError(f"operation {node.name}: TFLite export concatenates a list of tensors along channels, "
                            "height or width only (not the batch)")
        values = [self._value(source, node) for source in sources]
        nhwc = values[0].nhwc
        out = self.numerics.activation(self.graph, node.name, self._tflite_shape(node, nhwc))
        inputs = [self.numerics.requantize(self.graph, v.tensor, out, f"{node.name}/input{i}") for i, v in enumerate(values)]
        self.graph.op("CONCATENATION", inputs, [out], "ConcatenationOptions", Axis=_NHWC_AXIS[axis] if nhwc else axis,
                      FusedActivationFunction=enum("ActivationFunctionType", "NONE"))
        self.values[node] = _Value(out, nhwc)

    def _pool(self, node: fx.Node, pool: nn.MaxPool2d | nn.AvgPool2d) -> None:
        x = self._nhwc(node.args[0], node)
        _, _, h, w = self._shape(node.args[0])
        _, c, oh, ow = self._shape(node)
        kernel, stride, pads = (pair(pool.kernel_size), pair(pool.stride or pool.kernel_size), pair(pool.padding))
        dilation = pair(getattr(pool, "dilation", 1))
        if dilation != (1, 1) or getattr(pool, "divisor_override", None) is not None:
            raise UserError(f"{self._label(node)}: this pooling window, stride and padding have no TFLite equivalent")
        padding = tflite_padding((h, w), (oh, ow), kernel, stride, dilation, pads)
        window = _window_pads((h, w), (oh, ow), kernel, stride, pads)
        is_max = isinstance(pool, nn.MaxPool2d)
        if is_max and padding is None:  # a padded value never wins a max: pad with the lowest one, pool VALID
            x, padding = self._pad(x, node, window, lowest=True), "VALID"
        elif not is_max and not _counts_like_tflite(pool, padding, pads):
            # PyTorch counts the zeros of its padding (not what reaches past it); TFLite's SAME counts
            # no padding: explicit zeros and VALID pooling match PyTorch when no window reaches past its pads.
            if not (pool.count_include_pad and window[2] <= pads[0] and window[3] <= pads[1]):
                raise UserError(f"{self._label(node)}: average pooling with this padding (count_include_pad="
                                f"{pool.count_include_pad}, ceil_mode={pool.ceil_mode}) has no TFLite equivalent")
            x, padding = self._pad(x, node, window), "VALID"
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
            out = self._spatial_mean(x, node.name, keepdim=True)
        elif h % oh == 0 and w % ow == 0:
            out = self.numerics.activation(self.graph, node.name, (1, oh, ow, c), like=x)
            self.graph.op("AVERAGE_POOL_2D", [x], [out], "Pool2DOptions", Padding=enum("Padding", "VALID"),
                          StrideH=h // oh, StrideW=w // ow, FilterHeight=h // oh, FilterWidth=w // ow)
        else:
            raise UserError(f"{self._label(node)}: adaptive average pooling from {h}x{w} to {oh}x{ow} has no TFLite equivalent")
        self.values[node] = _Value(out, True)

    def _mean(self, node: fx.Node) -> None:
        x = self._nhwc(node.args[0], node)
        args = {**dict(zip(("dim", "keepdim"), node.args[1:])), **node.kwargs}
        dims = args.get("dim")
        if not isinstance(dims, (tuple, list)) or {d % 4 for d in dims} != {2, 3} or "dtype" in args:
            raise UserError(f"operation {node.name}: TFLite export takes the mean of an image over its height and width only")
        keepdim = bool(args.get("keepdim", False))
        self.values[node] = _Value(self._spatial_mean(x, node.name, keepdim), keepdim)

    def _resize_nearest(self, node: fx.Node, resample: Callable[[torch.Tensor], torch.Tensor]) -> None:
        x = self._nhwc(node.args[0], node)
        _, _, h, w = self._shape(node.args[0])
        _, c, oh, ow = self._shape(node)
        if oh % h or ow % w or not _picks_like_tflite_nearest(resample, (h, w), (oh, ow)):
            raise UserError(f"{self._label(node)}: only nearest-neighbour upsampling by an integer factor can be "
                            "exported to TFLite")
        size = self.graph.constant(f"{node.name}/size", np.array([oh, ow], np.int32))
        out = self.numerics.activation(self.graph, node.name, (1, oh, ow, c), like=x)  # int8: it copies input values
        self.graph.op("RESIZE_NEAREST_NEIGHBOR", [x, size], [out], "ResizeNearestNeighborOptions",
                      AlignCorners=False, HalfPixelCenters=False)
        self.values[node] = _Value(out, True)

    def _virtual_pool_upsample(self, node: fx.Node) -> None:
        """RESIZE_BILINEAR by 2 (no align_corners, no half-pixel centers: a virtual-pool layer's linear upsample,
        edge replicated), then a SLICE to the layer's input size when that is odd."""
        x = self._nhwc(node.args[0], node)
        _, c, h, w = self._shape(node.args[0])
        _, _, oh, ow = self._shape(node)
        size = (FACTOR * h, FACTOR * w)
        cropped = size != (oh, ow)
        # int8: every value is a mean of input values, in their range, so the output keeps their quantization.
        out = self.numerics.activation(self.graph, f"{node.name}/resized" if cropped else node.name, (1, *size, c),
                                       like=x)
        self.graph.op("RESIZE_BILINEAR", [x, self.graph.constant(f"{node.name}/size", np.array(size, np.int32))],
                      [out], "ResizeBilinearOptions", AlignCorners=False, HalfPixelCenters=False)
        if cropped:
            begin = self.graph.constant(f"{node.name}/begin", np.zeros(4, np.int32))
            extent = self.graph.constant(f"{node.name}/extent", np.array([-1, oh, ow, c], np.int32))  # -1: every image
            resized, out = out, self.numerics.activation(self.graph, node.name, (1, oh, ow, c), like=out)
            self.graph.op("SLICE", [resized, begin, extent], [out])
        self.values[node] = _Value(out, True)

    def _explicit_pad(self, node: fx.Node) -> None:
        """F.pad (aten.pad, aten.constant_pad_nd) of an image's height and width with zeros: the padding of the
        convolution that is its one reader (``_conv``), else one PAD."""
        args = {**dict(zip(_PADS[node.target], node.args[1:])), **node.kwargs}
        pads = args.get("pad")
        if not (isinstance(pads, (tuple, list)) and len(pads) in (2, 4) and all(type(p) is int and p >= 0 for p in pads)) \
                or args.get("mode", "constant") != "constant" or args.get("value") not in (None, 0):
            raise UserError(f"operation {node.name}: TFLite export pads an image's height and width with zeros only")
        left, right, top, bottom = (*pads, 0, 0)[:4]
        x = self._nhwc(node.args[0], node)
        readers = list(node.users)
        if len(readers) == 1 and readers[0].op == "call_module" and readers[0].args[0] is node \
                and isinstance(self.modules[readers[0].target], nn.Conv2d):
            self.conv_pads[node] = (top, left, bottom, right)  # the conv pads (_conv): SAME where that matches
            self.values[node] = _Value(x, True)  # nothing else reads it
            return
        self.values[node] = _Value(self._pad(x, node, (top, left, bottom, right)), True)

    def _flatten(self, node: fx.Node, start: int, end: int) -> None:
        """nn.Flatten, torch.flatten, x.flatten: a reshape that keeps the batch dimension."""
        if start % len(self._shape(node.args[0])) == 0:
            raise UserError(f"{self._label(node)}: TFLite export flattens each image on its own (start_dim 1 or more), "
                            "not the batch")
        self._reshape_to(node, node.args[0])

    def _reshape(self, node: fx.Node) -> None:
        """x.view, x.reshape, torch.reshape to a shape that keeps the batch first (x.size(0) or -1)."""
        dims = node.args[1:] if node.args[1:] else (node.kwargs.get("shape"),)
        dims = self._resolve(dims, node)
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        rest = self._shape(node.args[0])[1:]
        batch_first = dims and (dims[0] == _BATCH or (dims[0] == -1 and all(isinstance(d, int) and d >= 0 for d in dims[1:])
                                                      and math.prod(dims[1:]) == math.prod(rest)))
        if not batch_first or _BATCH in dims[1:]:
            raise UserError(f"operation {node.name}: TFLite export reshapes each image on its own: give the batch "
                            "dimension first as x.size(0) or -1 (not a number)")
        self._reshape_to(node, node.args[0])

    def _reshape_to(self, node: fx.Node, source: Any) -> None:
        """``source`` reshaped to ``node``'s shape as PyTorch reshapes it: in PyTorch's NCHW order (a TRANSPOSE first
        and after where an image is not 1x1), the batch dimension dynamic."""
        x = self._value(source, node)
        tensor, out_shape = x.tensor, self._shape(node)
        if x.nhwc and self._shape(source)[2:] != (1, 1):  # PyTorch reads C, H, W in that order
            tensor = self._transpose(tensor, (0, 3, 1, 2), f"{node.name}/nchw")
        image = len(out_shape) == 4
        reordered = image and out_shape[2:] != (1, 1)
        target = (out_shape[0], *out_shape[2:], out_shape[1]) if image and not reordered else out_shape
        shape = self.graph.constant(f"{node.name}/shape", np.array([-1, *target[1:]], np.int32))
        out = self.numerics.activation(self.graph, f"{node.name}/nchw_out" if reordered else node.name, target,
                                       like=tensor)
        self.graph.op("RESHAPE", [tensor, shape], [out])
        if reordered:
            out = self._transpose(out, (0, 2, 3, 1), node.name)
        self.values[node] = _Value(out, image)

    def _permute(self, node: fx.Node, target: Any) -> None:
        """x.permute, x.transpose, torch.permute, torch.transpose (the batch dimension stays first): one TRANSPOSE
        from the stored layout to the result's (none when they coincide)."""
        x = self._value(node.args[0], node)
        rank = len(self._shape(node))
        if target in ("transpose", torch.transpose):
            pair_ = self._resolve(tuple(node.args[1:3]) or (node.kwargs.get("dim0"), node.kwargs.get("dim1")), node)
            perm = list(range(rank))
            i, j = (d % rank for d in pair_)
            perm[i], perm[j] = perm[j], perm[i]
        else:
            dims = self._resolve(node.args[1:] or (node.kwargs.get("dims"),), node)
            perm = [d % rank for d in (dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims)]
        if perm[0] != 0:
            raise UserError(f"operation {node.name}: TFLite export permutes each image's dimensions, not the batch's")
        stored_in = (0, 3, 1, 2) if x.nhwc else tuple(range(rank))  # PyTorch's dimension -> stored one
        stored_out = (0, 2, 3, 1) if rank == 4 else tuple(range(rank))
        order = tuple(stored_in[perm[stored_out[j]]] for j in range(rank))
        out = x.tensor if order == tuple(range(rank)) else self._transpose(x.tensor, order, node.name)
        self.values[node] = _Value(out, rank == 4)

    def _static(self, node: fx.Node, target: Any) -> bool:
        """Records a value known when exporting (a tensor's shape or size, an item of it, arithmetic on them);
        False for any other node. The batch size is ``_BATCH``: only a reshape can use it, first."""
        args = node.args
        if target == "size" or (target is getattr and len(args) == 2 and args[1] == "shape"):
            shape = (_BATCH, *self._shape(args[0])[1:])
            dim = args[1] if target == "size" and len(args) > 1 else node.kwargs.get("dim")
            self.static[node] = shape if dim is None or target is getattr else shape[dim]
        elif target is operator.getitem and args[0] in self.static:
            self.static[node] = self.static[args[0]][args[1]]
        elif target in (operator.mul, operator.add, operator.sub, operator.floordiv) \
                and any(isinstance(a, fx.Node) and a in self.static for a in args):
            a, b = self._resolve(args, node)
            if _BATCH in (a, b) or not (isinstance(a, int) and isinstance(b, int)):
                raise UserError(f"operation {node.name}: TFLite export computes with image dimensions only, "
                                "not the batch size")
            self.static[node] = target(a, b)
        else:
            return False
        return True

    def _resolve(self, value: Any, user: fx.Node) -> Any:
        """``value`` with the static nodes in it replaced by what they hold; UserError for a tensor in it."""
        if isinstance(value, fx.Node):
            if value not in self.static:
                raise UserError(f"operation {user.name}: its shape or dimension {value.name} is computed at run time: "
                                "cannot export it to TFLite")
            return self.static[value]
        if isinstance(value, (tuple, list)):
            return tuple(self._resolve(v, user) for v in value)
        return value

    def _softmax(self, node: fx.Node) -> None:
        x = self._value(node.args[0], node)
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
            return _RELUS.get(_form(node))
        return None

    def _elementwise(self, opcode: str, x: int, name: str) -> int:
        """The output of the one-input operator ``opcode`` on ``x``, named ``name``."""
        shape = self.graph.shape_of(x)
        out = (self.numerics.logistic if opcode == "LOGISTIC" else self.numerics.activation)(self.graph, name, shape)
        self.graph.op(opcode, [x], [out])
        return out

    def _spatial_mean(self, x: int, name: str, keepdim: bool) -> int:
        """The mean of NHWC ``x`` over H and W: [N, 1, 1, C], or [N, C] without ``keepdim``."""
        n, _, _, c = self.graph.shape_of(x)
        out = self.numerics.activation(self.graph, name, (n, 1, 1, c) if keepdim else (n, c))
        axes = self.graph.constant(f"{name}/axes", np.array([1, 2], np.int32))
        self.graph.op("MEAN", [x, axes], [out], "ReducerOptions", KeepDims=keepdim)
        return out

    def _value(self, source: Any, user: fx.Node) -> _Value:
        value = self.values.get(source) if isinstance(source, fx.Node) else None
        if value is None:
            raise UserError(f"operation {user.name}: reads {getattr(source, 'name', source)}, which is not a tensor "
                            "computed from the input: cannot export it to TFLite")
        return value

    def _nhwc(self, source: Any, user: fx.Node) -> int:
        value = self._value(source, user)
        if not value.nhwc:
            raise UserError(f"operation {user.name}: expects a 4-D image tensor")
        return value.tensor

    def _parameter(self, source: Any, user: fx.Node) -> torch.Tensor:
        """The model parameter or buffer the get_attr node ``source`` reads, which ``user`` stores as a constant."""
        if not (isinstance(source, fx.Node) and source.op == "get_attr"):
            raise UserError(f"operation {user.name}: TFLite export takes its weight from a model parameter only")
        return functools.reduce(getattr, source.target.split("."), self.gm)

    def _pad(self, x: int, node: fx.Node, pads: tuple[int, int, int, int], lowest: bool = False) -> int:
        """``x`` padded by (top, left, bottom, right) with zeros or, with ``lowest``, the lowest value its numbers hold."""
        n, h, w, c = self.graph.shape_of(x)
        top, left, bottom, right = pads
        widths = self.graph.constant(f"{node.name}/pads", np.array([[0, 0], [top, bottom], [left, right], [0, 0]], np.int32))
        out = self.numerics.activation(self.graph, f"{node.name}/padded", (n, h + top + bottom, w + left + right, c), like=x)
        if lowest:
            self.graph.op("PADV2", [x, widths, self.numerics.lowest(self.graph, f"{node.name}/lowest", x)], [out])
        else:
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

    @staticmethod
    def _label(node: fx.Node) -> str:
        return f"layer {node.target}" if node.op == "call_module" else f"operation {node.name}"

    def _split(self, x: int, parts: int, name: str) -> list[int]:
        """``x`` split into ``parts`` equal slices of its channels."""
        n, h, w, c = self.graph.shape_of(x)
        axis = self.graph.constant(f"{name}/split_axis", np.array(3, np.int32))
        outs = [self.numerics.activation(self.graph, f"{name}/split{i}", (n, h, w, c // parts), like=x) for i in range(parts)]
        self.graph.op("SPLIT", [axis, x], outs, "SplitOptions", NumSplits=parts)
        return outs


def _form(node: fx.Node) -> Any:
    """The function or method name of the module graph that ``node``'s call stands for: its target, or for an aten
    operator of a torch.export program, the form in ``_ATEN_FORMS`` (a clamp to [0, 6] is ReLU6, to [0, inf) ReLU)."""
    target = node.target
    if target in _CLAMPS:
        bounds = dict(zip(("min", "max"), _CLAMPS[target]))
        bounds.update(zip(("min", "max"), node.args[1:]))
        bounds.update({key.split("_")[0]: value for key, value in node.kwargs.items()})  # min_val, max_val
        low, high = bounds["min"], bounds["max"]
        return F.relu6 if (low, high) == (0, 6) else torch.relu if low == 0 and high is None else target
    return _ATEN_FORMS.get(target, target) if isinstance(target, torch._ops.OpOverload) else target


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _window_pads(size: tuple[int, int], out: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
                 pads: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) pads after which VALID pooling has PyTorch's windows: its top/left pads,
    and at the bottom/right as far as its last window reaches past the input (ceil_mode included)."""
    ends = [max((o - 1) * s + k - n - p, 0) for n, o, k, s, p in zip(size, out, kernel, stride, pads)]
    return (pads[0], pads[1], ends[0], ends[1])


def _counts_like_tflite(pool: nn.AvgPool2d, padding: str | None, pads: tuple[int, int]) -> bool:
    """Whether TFLite's ``padding`` averages over what PyTorch's pool averages over: VALID, or SAME (which
    leaves padding out of the count) where PyTorch leaves it out too or has none."""
    return padding == "VALID" or (padding == "SAME" and (not pool.count_include_pad or pads == (0, 0)))


def _picks_like_tflite_nearest(resample: Callable[[torch.Tensor], torch.Tensor], size: tuple[int, int],
                               out: tuple[int, int]) -> bool:
    """Whether ``resample`` copies to every output pixel the input pixel TFLite's RESIZE_NEAREST_NEIGHBOR
    (no align_corners, no half-pixel centers) copies: min(floor(dst * float32(in / out)), in - 1) per axis.
    Checked on an image whose pixels hold their own index, so any mode or rounding that differs shows."""
    h, w = size
    probe = torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w)
    with torch.no_grad():
        got = resample(probe)
    rows, cols = (np.minimum(np.floor(np.arange(o, dtype=np.float32) * (np.float32(n) / np.float32(o))), n - 1).astype(np.int64)
                  for n, o in zip(size, out))
    return tuple(got.shape[2:]) == out and np.array_equal(got[0, 0].numpy(), rows[:, None] * w + cols[None, :])
