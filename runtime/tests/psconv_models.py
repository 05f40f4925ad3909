"""The one builder of PSConv / PSConvAdd nodes (docs/operator.md) and of the ONNX models that
hold them, for the fuzzers in this folder and the tests in tests/.

It lives here, not in tests/, because the fuzzers also run as scripts from this folder (which
Python puts on sys.path); the tests already put this folder on sys.path for fuzz_cases.py.
onnx is imported inside the functions: the native workers of fuzz_differential.py import this
module (through fuzz_cases.py) but only run models, and onnx costs each of them a second under ASan.
"""
from __future__ import annotations

import numpy as np

DOMAIN = "ai.pscompress"
OPSET = 18  # the standard opset, as in exported models (the portable functions need 18)
IR_VERSION = 10


def psconv_parts(attrs: dict, *, residual: bool = False, bias: bool = True, constants: dict | None = None,
                 shapes: dict | None = None, prefix: str = "", name: str | None = None):
    """(node, graph inputs, initializers, output name) of one PSConv node, PSConvAdd when
    `residual`: inputs X, W, B (when `bias`) and Z (when `residual`), named `prefix` + the
    letter, so that several nodes can share a graph. The inputs in `constants` (letter ->
    array) are initializers, the others graph inputs of shape `shapes`[letter] (absent:
    unknown). Attributes are written as given, wrong types included (the fuzzers mutate them)."""
    from onnx import AttributeProto, TensorProto, helper, numpy_helper

    constants, shapes = constants or {}, shapes or {}
    letters = ["X", "W"] + (["B"] if bias else []) + (["Z"] if residual else [])
    names = [prefix + "X", prefix + "W", prefix + "B" if bias else ""] + ([prefix + "Z"] if residual else [])
    if not names[-1]:  # no B and no Z: a 2-input node; PSConvAdd without B keeps "" in its place
        names = names[:2]
    node = helper.make_node("PSConvAdd" if residual else "PSConv", names, [prefix + "Y"], name=name, domain=DOMAIN)
    # An empty list has no element to infer its type from: it stays a list of ints.
    node.attribute.extend(helper.make_attribute(key, value, attr_type=AttributeProto.INTS if value == [] else None)
                          for key, value in sorted(attrs.items()))
    graph_inputs = [helper.make_tensor_value_info(prefix + k, TensorProto.FLOAT, shapes.get(k))
                    for k in letters if k not in constants]
    initializers = [numpy_helper.from_array(constants[k], prefix + k) for k in letters if k in constants]
    return node, graph_inputs, initializers, prefix + "Y"


def graph_model(parts: list, portable: bool = False):
    """An onnx.ModelProto whose graph holds these nodes (psconv_parts, qlinear_models.qlinear_parts,
    or any node with its graph inputs, initializers and output name), each output a graph output
    (uint8 for QLinearPSConv). `portable` attaches the model-local functions (exporters/
    psconv_onnx.py, qlinear_psconv_onnx.py) that run it without the native library; without
    them only the library can run it."""
    from onnx import TensorProto, helper

    nodes, graph_inputs, initializers, outputs = [], [], [], []
    for node, node_inputs, node_initializers, output in parts:
        nodes.append(node)
        graph_inputs += node_inputs
        initializers += node_initializers
        int8 = node.op_type == "QLinearPSConv"  # qlinear_models.qlinear_parts
        outputs.append(helper.make_tensor_value_info(output, TensorProto.UINT8 if int8 else TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "psconv", graph_inputs, outputs, initializers)
    opsets, functions = {"": OPSET, DOMAIN: 1}, []
    if portable:
        from pscompress.exporters import psconv_onnx

        opsets, functions = psconv_onnx.opset_imports(), psconv_onnx.fallback_functions()
        if any(node.op_type == "QLinearPSConv" for node in nodes):
            from pscompress.exporters import qlinear_psconv_onnx

            functions.append(qlinear_psconv_onnx.function())
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                             functions=functions, ir_version=IR_VERSION)


def psconv_model(attrs: dict, *, residual: bool = False, bias: bool = True, constants: dict | None = None,
                 shapes: dict | None = None, portable: bool = False):
    """A model of one PSConv / PSConvAdd node (the arguments of psconv_parts and graph_model)."""
    return graph_model([psconv_parts(attrs, residual=residual, bias=bias, constants=constants, shapes=shapes)],
                       portable)


def dense_conv_model(attrs: dict, wd: np.ndarray, b: np.ndarray | None, residual: bool):
    """The same layer with onnxruntime's standard Conv (+ Add Z) + Clip on the dense masked
    weights Wd[M, Cg, KH, KW] (float32) and B (None: no bias): an oracle for a PSConv node of
    attributes `attrs` (every one given)."""
    from onnx import TensorProto, helper, numpy_helper

    initializers = [numpy_helper.from_array(wd, "Wd"), numpy_helper.from_array(np.float32(attrs["clip_min"]), "lo"),
                    numpy_helper.from_array(np.float32(attrs["clip_max"]), "hi")]
    conv_inputs = ["X", "Wd"]
    if b is not None:
        initializers.append(numpy_helper.from_array(b, "B"))
        conv_inputs.append("B")
    nodes = [helper.make_node("Conv", conv_inputs, ["T"], kernel_shape=attrs["kernel_shape"], strides=attrs["strides"],
                              pads=attrs["pads"], group=attrs["group"])]
    last, graph_inputs = "T", [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)]
    if residual:
        nodes.append(helper.make_node("Add", ["T", "Z"], ["S"]))
        graph_inputs.append(helper.make_tensor_value_info("Z", TensorProto.FLOAT, None))
        last = "S"
    nodes.append(helper.make_node("Clip", [last, "lo", "hi"], ["Y"]))
    outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "dense", graph_inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
