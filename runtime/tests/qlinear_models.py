"""The builder of one-node QLinearPSConv models (the int8 operator, runtime/src/qlinear_psconv.h),
of their oracle (onnxruntime's QLinearConv on the dense masked weights) and an exact numpy
reference, for tests/test_runtime_int8.py and benchmarks/int8_layer_speed.py. onnx is imported
inside the functions, as in psconv_models.py."""
from __future__ import annotations

import numpy as np

from psconv_models import DOMAIN, IR_VERSION, OPSET

LAYER_ATTRIBUTES = ("kernel_shape", "strides", "pads", "dilations", "group", "in_channels", "out_channels",
                    "patterns", "shift")


def kept_mask(m: int, cg: int, kernel: tuple[int, int], patterns, shift: int) -> np.ndarray:
    """[M, Cg, KH, KW] bool: kernel (o, i) keeps patterns[(o + i + shift) % P] (docs/operator.md)."""
    o, i = np.meshgrid(np.arange(m), np.arange(cg), indexing="ij")
    masks = np.array(patterns, dtype=np.int64)[(o + i + shift) % len(patterns)]
    keep = (masks[..., None] >> np.arange(kernel[0] * kernel[1])) & 1
    return keep.astype(bool).reshape(m, cg, *kernel)


def packed(w_dense: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The packed W: the kept weights in (o, i, p) order, zeros among them kept."""
    return w_dense[mask]


QUANT_INPUTS = ("x_scale", "x_zero_point", "W", "w_scale", "y_scale", "y_zero_point")


def qlinear_parts(attrs: dict, values: dict, inputs: tuple[str, ...] = (), prefix: str = "", name: str | None = None):
    """(node, graph inputs, initializers, output name) of one QLinearPSConv node, in the form of
    psconv_models.psconv_parts (so that several nodes can share a graph): X a graph input,
    values (x_scale, x_zero_point, W, w_scale, y_scale, y_zero_point and optionally B, numpy
    arrays) initializers unless named in `inputs`; names prefixed by `prefix`."""
    from onnx import TensorProto, helper, numpy_helper

    names = ["X", *QUANT_INPUTS] + (["B"] if "B" in values else [])
    node = helper.make_node("QLinearPSConv", [prefix + k for k in names], [prefix + "Y"], name=name, domain=DOMAIN,
                            **{k: v for k, v in attrs.items() if k in LAYER_ATTRIBUTES or k.startswith("clip")})
    graph_inputs = [helper.make_tensor_value_info(prefix + "X", TensorProto.UINT8, None)]
    graph_inputs += [helper.make_tensor_value_info(prefix + k, helper.np_dtype_to_tensor_dtype(values[k].dtype), None)
                     for k in names[1:] if k in inputs]
    initializers = [numpy_helper.from_array(values[k], prefix + k) for k in names[1:] if k not in inputs]
    return node, graph_inputs, initializers, prefix + "Y"


def qlinear_psconv_model(attrs: dict, w_packed: np.ndarray, quant: dict, b: np.ndarray | None,
                         inputs: tuple[str, ...] = ()) -> bytes:
    """One QLinearPSConv node: X a graph input, everything else an initializer unless named in
    `inputs` (then a graph input). quant holds x_scale, x_zero_point, w_scale, y_scale,
    y_zero_point as numpy arrays; b None leaves B out."""
    from onnx import TensorProto, helper

    values = {"W": w_packed, **quant, **({"B": b} if b is not None else {})}
    node, graph_inputs, initializers, output = qlinear_parts(attrs, values, inputs)
    graph = helper.make_graph([node], "qlinear_psconv", graph_inputs,
                              [helper.make_tensor_value_info(output, TensorProto.UINT8, None)], initializers)
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION).SerializeToString()


def qlinear_conv_model(attrs: dict, w_dense: np.ndarray, quant: dict, b: np.ndarray | None) -> bytes:
    """The same layer with onnxruntime's QLinearConv on the dense masked weights Wd[M, Cg, KH, KW]
    (int8), w_zero_point int8 zeros of w_scale's shape."""
    from onnx import TensorProto, helper, numpy_helper

    values = {"x_scale": quant["x_scale"], "x_zero_point": quant["x_zero_point"], "Wd": w_dense,
              "w_scale": quant["w_scale"], "w_zero_point": np.zeros(quant["w_scale"].shape, np.int8),
              "y_scale": quant["y_scale"], "y_zero_point": quant["y_zero_point"]}
    if b is not None:
        values["B"] = b
    node = helper.make_node("QLinearConv", ["X", *values], ["Y"], kernel_shape=attrs["kernel_shape"],
                            strides=attrs["strides"], pads=attrs["pads"], group=attrs["group"],
                            dilations=attrs["dilations"])
    graph = helper.make_graph([node], "qlinear_conv", [helper.make_tensor_value_info("X", TensorProto.UINT8, None)],
                              [helper.make_tensor_value_info("Y", TensorProto.UINT8, None)],
                              [numpy_helper.from_array(v, k) for k, v in values.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                             ir_version=IR_VERSION).SerializeToString()


def accumulate(x: np.ndarray, w_dense: np.ndarray, x_zero_point: int, attrs: dict) -> np.ndarray:
    """acc[n, o, oh, ow] = sum Wd * (Xpad - x_zero_point), padding counting as x_zero_point; int64, exact."""
    (kh, kw), (sh, sw), (pt, pl, pb, pr), group = attrs["kernel_shape"], attrs["strides"], attrs["pads"], attrs["group"]
    xs = np.pad(x.astype(np.int64) - x_zero_point, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    n, c, hp, wp = xs.shape
    m, cg = w_dense.shape[:2]
    oh, ow, mg = (hp - kh) // sh + 1, (wp - kw) // sw + 1, m // group
    acc = np.zeros((n, m, oh, ow), np.int64)
    w = w_dense.astype(np.int64)
    for g in range(group):
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, g * cg:(g + 1) * cg, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
                acc[:, g * mg:(g + 1) * mg] += np.einsum("nchw,mc->nmhw", patch, w[g * mg:(g + 1) * mg, :, i, j])
    return acc


def requantize(acc: np.ndarray, b: np.ndarray | None, quant: dict) -> np.ndarray:
    """clamp(nearbyint(float32(acc + B) * ((x_scale * w_scale[o]) / y_scale)) + y_zero_point, 0, 255),
    in float32 and rounding half to even, as MLAS requantizes."""
    m = acc.shape[1]
    v = acc + (b.astype(np.int64)[None, :, None, None] if b is not None else 0)
    assert np.abs(v).max(initial=0) < 2 ** 31
    w_scale = np.broadcast_to(quant["w_scale"].reshape(-1), (m,)).astype(np.float32)
    scale = (np.float32(quant["x_scale"].reshape(-1)[0]) * w_scale) / np.float32(quant["y_scale"].reshape(-1)[0])
    zp = int(quant["y_zero_point"].reshape(-1)[0])
    f = v.astype(np.int32).astype(np.float32) * scale.astype(np.float32)[None, :, None, None]
    f = np.minimum(np.float32(255 - zp), np.maximum(np.float32(-zp), f))
    return (np.rint(f).astype(np.int32) + zp).astype(np.uint8)
