"""QLinearPSConv (docs/operator.md, "QLinearPSConv"), the int8 PSConv, on the ONNX side: its
schema and its portable function.

The function rebuilds the dense int8 kernel from the packed weights with PSConv's own
DenseKernel (on exact float copies of the int8 values) and calls the standard QLinearConv, so
a quantized model runs in stock onnxruntime on its int8 kernels; onnxruntime folds the rebuild
to a constant at load.
"""
from __future__ import annotations

import onnx
import onnxscript
from onnx.defs import OpSchema
from onnxscript import opset18 as op

from pscompress.exporters.psconv_onnx import DOMAIN, VERSION, DenseKernel, psconv_opset

OPERATOR = "QLinearPSConv"
_FLOAT, _INT8 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT8


@onnxscript.script(psconv_opset, default_opset=op)
def QLinearPSConv(X, x_scale, x_zero_point, W, w_scale, y_scale, y_zero_point, B, kernel_shape: list[int],
                  in_channels: int, out_channels: int, patterns: list[int], strides: list[int] = [1, 1],
                  pads: list[int] = [0, 0, 0, 0], dilations: list[int] = [1, 1], group: int = 1, shift: int = 0):
    # int8 -> float -> int8 is exact; DenseKernel is PSConv's, so both operators unpack alike.
    dense = op.Cast(DenseKernel(op.Cast(W, to=_FLOAT), kernel_shape=kernel_shape, group=group,
                                in_channels=in_channels, out_channels=out_channels, patterns=patterns, shift=shift),
                    to=_INT8)
    w_zero_point = op.Cast(op.Mul(w_scale, op.Constant(value_float=0.0)), to=_INT8)  # symmetric: zeros like w_scale
    y = op.QLinearConv(X, x_scale, x_zero_point, dense, w_scale, w_zero_point, y_scale, y_zero_point, B,
                       kernel_shape=kernel_shape, strides=strides, pads=pads, dilations=dilations, group=group)
    return y


def function() -> onnx.FunctionProto:
    """The model-local function a quantized file carries beside PSConv's (fallback_functions)."""
    return QLinearPSConv.to_function_proto()


# (name, type constraint, optional) in input order; attributes as PSConv's, without the clamp.
INPUTS = (("X", "T1", False), ("x_scale", "F", False), ("x_zero_point", "T1", False), ("W", "T2", False),
          ("w_scale", "F", False), ("y_scale", "F", False), ("y_zero_point", "T1", False), ("B", "T3", True))
_ATTRIBUTES = [
    ("kernel_shape", OpSchema.AttrType.INTS), ("strides", OpSchema.AttrType.INTS), ("pads", OpSchema.AttrType.INTS),
    ("dilations", OpSchema.AttrType.INTS), ("group", OpSchema.AttrType.INT), ("in_channels", OpSchema.AttrType.INT),
    ("out_channels", OpSchema.AttrType.INT), ("patterns", OpSchema.AttrType.INTS), ("shift", OpSchema.AttrType.INT),
]
_REQUIRED = {"kernel_shape", "in_channels", "out_channels", "patterns"}


def register_schema() -> None:
    """Make onnx know the operator in this process (for the checker and shape inference). Idempotent."""
    try:
        onnx.defs.get_schema(OPERATOR, VERSION, DOMAIN)
        return
    except onnx.defs.SchemaError:
        pass
    option = OpSchema.FormalParameterOption
    onnx.defs.register_schema(OpSchema(
        OPERATOR, DOMAIN, VERSION, "See docs/operator.md.",
        inputs=[OpSchema.FormalParameter(n, t, param_option=option.Optional if opt else option.Single)
                for n, t, opt in INPUTS],
        outputs=[OpSchema.FormalParameter("Y", "T1")],
        type_constraints=[("T1", ["tensor(uint8)"], "u8 activations"), ("T2", ["tensor(int8)"], "s8 weights"),
                          ("T3", ["tensor(int32)"], "int32 bias"), ("F", ["tensor(float)"], "scales")],
        attributes=[OpSchema.Attribute(a, t, "", required=a in _REQUIRED) for a, t in _ATTRIBUTES],
    ))
