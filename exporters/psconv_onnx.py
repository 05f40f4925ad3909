"""The PSConv operators (docs/operator.md) on the ONNX side: schemas and portable functions.

The schemas let onnx and onnxscript type-check nodes of the ``ai.pscompress`` domain while a
model is written. The functions go into every exported model: their bodies rebuild the dense
kernel from the packed weights and the attributes alone (so onnxruntime folds them to
constants at load) and call the standard Conv, so a model runs where the native kernel
library is not installed.
"""
from __future__ import annotations

import math

import onnx
import onnx.inliner
import onnx.shape_inference
import onnxscript
from onnx.defs import OpSchema
from onnxscript import opset18 as op
from onnxscript.values import Opset

DOMAIN = "ai.pscompress"
VERSION = 1
# The shared helper lives in its own domain: the native library registers ai.pscompress and
# must never be asked for an operator it does not implement.
HELPER_DOMAIN = "ai.pscompress.fallback"
OPSET = 18
OPERATORS = ("PSConv", "PSConvAdd")

psconv_opset = Opset(DOMAIN, VERSION)
_helper_opset = Opset(HELPER_DOMAIN, VERSION)

_INT64, _UINT64, _BOOL = onnx.TensorProto.INT64, onnx.TensorProto.UINT64, onnx.TensorProto.BOOL


@onnxscript.script(_helper_opset, default_opset=op)
def ExactShape(V, dims):
    """V itself when its shape is `dims`, else an error: never a broadcast, never a silent
    reinterpretation. Arithmetic on a few int64 values only: the Reshape to V's own shape
    aliases its data.

    Each dimension that differs becomes -2 in the Reshape target, (dims + 2) * same - 2, which
    the ONNX spec forbids and onnxruntime rejects; a rank that differs fails Equal's broadcast
    (but a 1-element V for dims of all ones, the same tensor). onnx.reference is laxer: its
    numpy Reshape takes any negative dimension for -1. No Where: tests/test_parity.py takes a
    Where at run time for a kernel rebuild that was not folded.
    """
    same = op.Cast(op.Equal(op.Shape(V), dims), to=_INT64)
    two = op.Constant(value_int=2)
    checked = op.Reshape(V, op.Sub(op.Mul(op.Add(dims, two), same), two))
    return checked


@onnxscript.script(_helper_opset, default_opset=op)
def DenseKernel(W, kernel_shape: list[int], group: int, in_channels: int, out_channels: int,
                patterns: list[int], shift: int):
    """Wd[M, Cg, KH, KW]: zeros, with the packed W at the kept positions in (o, i, p) order."""
    zero = op.Constant(value_int=0)
    one = op.Constant(value_int=1)
    m = op.Constant(value_int=out_channels)
    cg = op.Div(op.Constant(value_int=in_channels), op.Constant(value_int=group))
    ks = op.Constant(value_ints=kernel_shape)
    masks = op.Constant(value_ints=patterns)
    # Support index of kernel (o, i): (o + i + shift) mod P, as an [M, Cg] table.
    o = op.Unsqueeze(op.Range(zero, m, one), op.Constant(value_ints=[1]))
    i = op.Unsqueeze(op.Range(zero, cg, one), op.Constant(value_ints=[0]))
    support = op.Mod(op.Add(op.Add(o, i), op.Constant(value_int=shift)), op.Size(masks))
    # Bit p of each pattern: a [P, K2] table of kept positions.
    positions = op.Cast(op.Range(zero, op.ReduceProd(ks, keepdims=0), one), to=_UINT64)
    shifted = op.BitShift(op.Unsqueeze(op.Cast(masks, to=_UINT64), op.Constant(value_ints=[1])), positions,
                          direction="RIGHT")
    kept = op.Cast(op.BitwiseAnd(shifted, op.Cast(one, to=_UINT64)), to=_BOOL)
    mask = op.Reshape(op.Gather(kept, support, axis=0), op.Constant(value_ints=[-1]))
    # The k-th kept position takes W[k]; a masked position reads any index and is zeroed.
    index = op.Sub(op.CumSum(op.Cast(mask, to=_INT64), zero), one)
    # W holds exactly the kept weights: longer, shorter or not 1-D is an error, as natively.
    packed = ExactShape(W, op.ReduceSum(op.Cast(mask, to=_INT64), keepdims=1))
    flat = op.Where(mask, op.Gather(packed, index, axis=0), op.CastLike(zero, W))
    shape = op.Concat(op.Unsqueeze(m, zero), op.Unsqueeze(cg, zero), ks, axis=0)
    dense = op.Reshape(flat, shape)
    return dense


@onnxscript.script(_helper_opset, default_opset=op)
def Clamp(T, clip_min: float, clip_max: float):
    """Clip(T, clip_min, clip_max) written as the op onnxruntime can fuse into the Conv before it:
    Identity when unbounded, Relu for [0, inf), Clip otherwise. The conditions depend on the
    attributes alone, so onnxruntime folds both Ifs at load. Its NCHWc layout fuses Relu after a
    Conv + Add but not Clip, which would cost a reorder and a pass over the data each way.
    Relu(x) equals Clip(x, 0, inf) for every x, NaN included; a clip_min of -0.0 takes Relu."""
    lo = op.Constant(value_float=clip_min)
    hi = op.Constant(value_float=clip_max)
    no_max = op.Equal(hi, op.Constant(value_float=math.inf))
    if op.And(op.Equal(lo, op.Constant(value_float=-math.inf)), no_max):
        y = op.Identity(T)
    else:
        if op.And(op.Equal(lo, op.Constant(value_float=0.0)), no_max):
            y = op.Relu(T)
        else:
            y = op.Clip(T, lo, hi)
    return y


# Optional attributes carry the contract's defaults (FunctionProto.attribute_proto), so a node
# that leaves them out still inlines; the exporter writes every attribute anyway.
@onnxscript.script(psconv_opset, default_opset=op)
def PSConv(X, W, B, kernel_shape: list[int], in_channels: int, out_channels: int, patterns: list[int],
           strides: list[int] = [1, 1], pads: list[int] = [0, 0, 0, 0], dilations: list[int] = [1, 1],
           group: int = 1, shift: int = 0, clip_min: float = -math.inf, clip_max: float = math.inf):
    dense = DenseKernel(W, kernel_shape=kernel_shape, group=group, in_channels=in_channels,
                        out_channels=out_channels, patterns=patterns, shift=shift)
    t = op.Conv(X, dense, B, kernel_shape=kernel_shape, strides=strides, pads=pads, dilations=dilations, group=group)
    y = Clamp(t, clip_min=clip_min, clip_max=clip_max)
    return y


@onnxscript.script(psconv_opset, default_opset=op)
def PSConvAdd(X, W, B, Z, kernel_shape: list[int], in_channels: int, out_channels: int, patterns: list[int],
              strides: list[int] = [1, 1], pads: list[int] = [0, 0, 0, 0], dilations: list[int] = [1, 1],
              group: int = 1, shift: int = 0, clip_min: float = -math.inf, clip_max: float = math.inf):
    dense = DenseKernel(W, kernel_shape=kernel_shape, group=group, in_channels=in_channels,
                        out_channels=out_channels, patterns=patterns, shift=shift)
    t = op.Conv(X, dense, B, kernel_shape=kernel_shape, strides=strides, pads=pads, dilations=dilations, group=group)
    z = ExactShape(Z, op.Shape(t))  # Y's shape exactly, as natively: never a broadcast
    y = Clamp(op.Add(t, z), clip_min=clip_min, clip_max=clip_max)
    return y


@onnxscript.script(psconv_opset, default_opset=op)
def PSConvAddProven(X, W, B, Z, kernel_shape: list[int], in_channels: int, out_channels: int, patterns: list[int],
                    strides: list[int] = [1, 1], pads: list[int] = [0, 0, 0, 0], dilations: list[int] = [1, 1],
                    group: int = 1, shift: int = 0, clip_min: float = -math.inf, clip_max: float = math.inf):
    """PSConvAdd for a file whose every Z is proven at write time to have Y's shape
    (residual_shapes_proven). Without the run-time check onnxruntime can fuse the Add into the
    Conv: any use of Z's shape, even Shape(Z), keeps Z out of its NCHWc layout."""
    dense = DenseKernel(W, kernel_shape=kernel_shape, group=group, in_channels=in_channels,
                        out_channels=out_channels, patterns=patterns, shift=shift)
    t = op.Conv(X, dense, B, kernel_shape=kernel_shape, strides=strides, pads=pads, dilations=dilations, group=group)
    y = Clamp(op.Add(t, Z), clip_min=clip_min, clip_max=clip_max)
    return y


def fallback_functions(residual_proven: bool = False) -> list[onnx.FunctionProto]:
    """The model-local functions every exported model carries. `residual_proven`: every
    PSConvAdd node's Z is known to have Y's shape (residual_shapes_proven), so its function
    leaves out the run-time check."""
    add = PSConvAddProven.to_function_proto() if residual_proven else PSConvAdd.to_function_proto()
    add.name = "PSConvAdd"
    return [f.to_function_proto() for f in (ExactShape, DenseKernel, Clamp, PSConv)] + [add]


def residual_shapes_proven(model: onnx.ModelProto) -> bool:
    """Whether shape inference proves, for every PSConvAdd node, that Z has exactly the shape
    the node's Conv gives: [N of X, out_channels, OH, OW], each dimension the same number or the
    same symbol. The model must carry the functions (inference runs on the inlined graph).
    Every intermediate shape is a function of the graph inputs' shapes, so no input the model
    accepts can then make Z broadcast."""
    nodes = [n for n in model.graph.node if n.domain == DOMAIN and n.op_type == "PSConvAdd"]
    if not nodes:
        return True
    try:
        inferred = onnx.shape_inference.infer_shapes(onnx.inliner.inline_local_functions(model),
                                                     strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        return False
    values = list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output)
    shapes = {v.name: _dims(v) for v in values}
    return all(_conv_output_dims(node, shapes.get(node.input[0])) == shapes.get(node.input[3]) is not None
               for node in nodes)


def _dims(value: onnx.ValueInfoProto) -> list | None:
    """Each dimension as its number or its symbol; None when unknown."""
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param if d.HasField("dim_param") else None
            for d in tensor.shape.dim]
    return None if None in dims or "" in dims else dims


def _conv_output_dims(node: onnx.NodeProto, x: list | None) -> list | None:
    """[N, out_channels, OH, OW] of the node's Conv for X of dimensions `x`; None when H or W is not a number."""
    if x is None or len(x) != 4 or not all(isinstance(d, int) for d in x[2:]):
        return None
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    kh, kw = attrs["kernel_shape"]
    sh, sw = attrs.get("strides", [1, 1])
    dh, dw = attrs.get("dilations", [1, 1])
    pt, pl, pb, pr = attrs.get("pads", [0, 0, 0, 0])
    oh = (x[2] + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (x[3] + pl + pr - dw * (kw - 1) - 1) // sw + 1
    return [x[0], attrs["out_channels"], oh, ow]


def opset_imports() -> dict[str, int]:
    """Domain -> version for a model that uses the operators and carries the functions."""
    return {"": OPSET, DOMAIN: VERSION, HELPER_DOMAIN: VERSION}


_ATTRIBUTES = [
    ("kernel_shape", OpSchema.AttrType.INTS), ("strides", OpSchema.AttrType.INTS), ("pads", OpSchema.AttrType.INTS),
    ("dilations", OpSchema.AttrType.INTS), ("group", OpSchema.AttrType.INT), ("in_channels", OpSchema.AttrType.INT),
    ("out_channels", OpSchema.AttrType.INT), ("patterns", OpSchema.AttrType.INTS), ("shift", OpSchema.AttrType.INT),
    ("clip_min", OpSchema.AttrType.FLOAT), ("clip_max", OpSchema.AttrType.FLOAT),
]
_REQUIRED = {"kernel_shape", "in_channels", "out_channels", "patterns"}


def register_schemas() -> None:
    """Make onnx (and onnxscript, which asks onnx) know the operators in this process. Idempotent."""
    for name, inputs in (("PSConv", "X W B?"), ("PSConvAdd", "X W B? Z")):
        try:
            onnx.defs.get_schema(name, VERSION, DOMAIN)
            continue
        except onnx.defs.SchemaError:
            pass
        params = [
            OpSchema.FormalParameter(n.rstrip("?"), "T", param_option=OpSchema.FormalParameterOption.Optional
                                     if n.endswith("?") else OpSchema.FormalParameterOption.Single)
            for n in inputs.split()
        ]
        onnx.defs.register_schema(OpSchema(
            name, DOMAIN, VERSION, "See docs/operator.md.", inputs=params,
            outputs=[OpSchema.FormalParameter("Y", "T")],
            type_constraints=[("T", ["tensor(float)"], "float32 only in version 1")],
            attributes=[OpSchema.Attribute(a, t, "", required=a in _REQUIRED) for a, t in _ATTRIBUTES],
        ))
