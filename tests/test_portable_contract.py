"""The portable ONNX functions (exporters/psconv_onnx.py) keep the operator contract
(docs/operator.md) where onnxruntime runs them without the native library: optional attributes
take the contract's defaults, and Z, B and W must have exactly their contract shapes (never a
broadcast). The shape checks stay cheap: the dense kernel still folds to a constant at load."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

import fuzz_cases
import psconv_models
from fuzz_differential import bind_function_defaults
from pscompress import runtime
from pscompress.exporters import psconv_onnx

ROOT = Path(__file__).resolve().parents[1]

ort.set_default_logger_severity(4)
REQUIRED = {"kernel_shape": [3, 3], "in_channels": 4, "out_channels": 6,
            "patterns": [0b000011011, 0b110110000, 0b010111010]}
N, H, W = 2, 6, 5  # Y is [2, 6, 4, 3] with the defaults (no padding, stride 1)
Y_SHAPE = [N, 6, H - 2, W - 2]
ORT_ERRORS = runtime.onnxruntime_errors()
# ExactShape (exporters/psconv_onnx.py) failing, as onnxruntime words it: a dimension that differs
# is -2 in its Reshape's target, a rank that differs breaks its Equal's broadcast; at load when
# shapes are declared (shape inference), else at run time.
EXACT_SHAPE = (r"ExactShape.*(A dimension cannot be less than -1|Invalid dimension value: -2"
               r"|Attempting to broadcast|Can broadcast|Incompatible dimensions)")
CONV_BIAS = re.escape("Conv : bias must be a 1D tensor of size output_channels (6)")  # onnxruntime's Conv


def kept() -> int:
    return fuzz_cases.packed_length([3, 3], REQUIRED["patterns"], 0, 6, 4)


def model(attrs: dict, residual: bool = True, bias: bool = True, constant_w: bool = False,
          shapes: dict | None = None, w: np.ndarray | None = None,
          constant_b: np.ndarray | None = None) -> onnx.ModelProto:
    """The node with the portable functions; W and B initializers or inputs (of `shapes`)."""
    constants = {"W": np.linspace(-1, 1, kept(), dtype=np.float32) if w is None else w} if constant_w else {}
    if constant_b is not None:
        constants["B"] = constant_b
    return psconv_models.psconv_model(attrs, residual=residual, bias=bias, constants=constants, shapes=shapes,
                                      portable=True)


def feeds(rng: np.random.Generator, **override) -> dict[str, np.ndarray]:
    base = {"X": rng.standard_normal((N, 4, H, W)).astype(np.float32),
            "W": rng.standard_normal(kept()).astype(np.float32),
            "B": rng.standard_normal(6).astype(np.float32),
            "Z": rng.standard_normal(Y_SHAPE).astype(np.float32)}
    base.update(override)
    return base


def portable(m: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in inputs.items() if k in names})[0]


def native(m: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(m.SerializeToString(), runtime.session_options(threads=1, native=True),
                                   providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in inputs.items() if k in names})[0]


def test_functions_declare_the_contract_defaults():
    for function in psconv_onnx.fallback_functions():
        if function.domain != psconv_onnx.DOMAIN:
            continue
        defaults = {a.name: helper.get_attribute_value(a) for a in function.attribute_proto}
        assert defaults == fuzz_cases.OPTIONAL_DEFAULTS, function.name
        assert set(function.attribute) == set(REQUIRED), function.name


@pytest.mark.parametrize("residual", [False, True], ids=["PSConv", "PSConvAdd"])
def test_optional_attributes_left_out_take_the_defaults(residual):
    rng = np.random.default_rng(0)
    inputs = feeds(rng)
    spelled = model({**REQUIRED, **fuzz_cases.OPTIONAL_DEFAULTS}, residual)
    terse = model(REQUIRED, residual)
    want = portable(spelled, inputs)
    assert list(want.shape) == Y_SHAPE
    np.testing.assert_array_equal(portable(terse, inputs), want)
    # onnx.reference ignores FunctionProto.attribute_proto: the functions' own defaults are
    # written onto the node first, so it checks the same declared values.
    reference = ReferenceEvaluator(bind_function_defaults(terse)).run(None, {k: v for k, v in inputs.items()
                                                                             if residual or k != "Z"})[0]
    np.testing.assert_allclose(reference, want, rtol=1e-5, atol=1e-5)


def test_every_optional_attribute_can_be_left_out_alone():
    rng = np.random.default_rng(1)
    inputs = feeds(rng)
    full = {**REQUIRED, **fuzz_cases.OPTIONAL_DEFAULTS}
    want = portable(model(full), inputs)
    for name in fuzz_cases.OPTIONAL_DEFAULTS:
        np.testing.assert_array_equal(portable(model({k: v for k, v in full.items() if k != name}), inputs), want)


BAD_Z = [
    (N + 1, 6, 4, 3),   # another batch (Z [2, ...] for N = 1 used to give a batch of 2)
    (1, 6, 4, 3),       # broadcast over the batch
    (N, 6, 1, 1),       # broadcast over the pixels
    (N, 1, 4, 3),       # broadcast over the channels
    (N, 6, 4, 1),
    (6, 4, 3),          # rank 3, broadcastable
    (1, N, 6, 4, 3),    # rank 5
    (N, 6, 3, 4),       # the same number of elements, transposed
    (N * 6 * 4 * 3,),
    (),
]


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static_shapes"])
@pytest.mark.parametrize("z_shape", BAD_Z, ids=lambda s: "Z" + "x".join(map(str, s)))
def test_portable_rejects_a_z_of_another_shape(z_shape, static):
    rng = np.random.default_rng(2)
    shapes = {"X": [N, 4, H, W], "Z": list(z_shape)} if static else None
    with pytest.raises(ORT_ERRORS, match=EXACT_SHAPE):
        portable(model(REQUIRED, shapes=shapes), feeds(rng, Z=rng.standard_normal(z_shape).astype(np.float32)))


def test_portable_takes_z_of_exactly_y_shape_with_static_shapes():
    rng = np.random.default_rng(3)
    inputs = feeds(rng)
    got = portable(model(REQUIRED, shapes={"X": [N, 4, H, W], "Z": Y_SHAPE}), inputs)
    # Known shapes let onnxruntime pick another Conv (NCHWc): the same sums in another order.
    np.testing.assert_allclose(got, portable(model(REQUIRED), inputs), rtol=1e-5, atol=1e-5)


RESIDUAL_PROOFS = [
    ({"X": ["N", 4, H, W], "Z": ["N", 6, H - 2, W - 2]}, True),  # the same symbol and numbers
    ({"X": [N, 4, H, W], "Z": Y_SHAPE}, True),
    ({"X": ["N", 4, H, W], "Z": ["M", 6, H - 2, W - 2]}, False),  # another symbol may be another size
    ({"X": ["N", 4, H, W], "Z": [1, 6, H - 2, W - 2]}, False),    # broadcast over the batch
    ({"X": ["N", 4, H, W], "Z": ["N", 6, 1, 1]}, False),          # broadcast over the pixels
    ({"X": ["N", 4, H, W], "Z": ["N", 6, H - 2]}, False),         # rank 3
    ({"X": ["N", 4, "H", "W"], "Z": ["N", 6, "OH", "OW"]}, False),  # OH, OW not numbers: nothing to compare
    ({"X": ["N", 4, H, W]}, False),                                # Z of unknown shape
    (None, False),
]


@pytest.mark.parametrize("shapes, proven", RESIDUAL_PROOFS, ids=lambda v: str(v))
def test_residual_shapes_are_proven_only_when_z_is_exactly_the_convs_output(shapes, proven):
    full = {**REQUIRED, **fuzz_cases.OPTIONAL_DEFAULTS}  # as exported: onnx's inliner ignores function defaults
    assert psconv_onnx.residual_shapes_proven(model(full, shapes=shapes)) is proven


def test_a_node_without_every_attribute_is_not_proven():
    """Inlining leaves its attribute references empty, so inference fails: the file keeps the check."""
    assert not psconv_onnx.residual_shapes_proven(model(REQUIRED, shapes={"X": ["N", 4, H, W], "Z": ["N", 6, 4, 3]}))


def test_a_file_without_psconv_add_needs_no_proof():
    assert psconv_onnx.residual_shapes_proven(model(REQUIRED, residual=False))


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("clip", [(-math.inf, math.inf), (0.0, math.inf), (-0.0, math.inf), (0.0, 6.0),
                                  (-1.5, 0.25), (-math.inf, 0.0), (2.0, 2.0)], ids=str)
def test_clamp_is_clip_nan_and_infinities_included(clip, residual):
    """Clamp (Identity, Relu or Clip, chosen by the attributes) against numpy's clip on ONNX Clip's
    semantics; onnx's reference evaluator runs the same functions."""
    rng = np.random.default_rng(7)
    inputs = feeds(rng, X=rng.standard_normal((N, 4, H, W)).astype(np.float32) * 4)
    inputs["X"][0, 1, 2, 2], inputs["X"][1, 3, 0, 0] = np.nan, np.inf  # NaN in Y
    inputs["B"][:2] = np.inf, -np.inf  # infinities in Y
    unclamped = portable(model({**REQUIRED, "clip_min": -math.inf, "clip_max": math.inf}, residual=residual), inputs)
    attrs = {**REQUIRED, **fuzz_cases.OPTIONAL_DEFAULTS, "clip_min": clip[0], "clip_max": clip[1]}
    expected = np.where(np.isnan(unclamped), np.nan, np.clip(unclamped, np.float32(clip[0]), np.float32(clip[1])))
    assert np.isnan(unclamped).any() and np.isposinf(unclamped).any() and np.isneginf(unclamped).any()
    np.testing.assert_array_equal(portable(model(attrs, residual=residual), inputs), expected)
    reference = ReferenceEvaluator(model(attrs, residual=residual))
    names = set(reference.input_names)
    with np.errstate(invalid="ignore"):  # numpy's Conv meets the NaN and infinities
        got = reference.run(None, {k: v for k, v in inputs.items() if k in names})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)  # its Conv sums in another order


@pytest.mark.parametrize("clip, kept_op", [((-math.inf, math.inf), None), ((0.0, math.inf), "Relu"),
                                           ((0.0, 6.0), "Clip")], ids=str)
def test_clamp_folds_to_one_operator_at_load(tmp_path, clip, kept_op):
    """Clamp's Ifs depend on attributes alone: onnxruntime folds them when the model loads."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    attrs = {**REQUIRED, "clip_min": clip[0], "clip_max": clip[1]}
    ort.InferenceSession(model(attrs, residual=False, constant_w=True).SerializeToString(), options,
                         providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert "If" not in ops and "Equal" not in ops, ops
    assert {op for op in ops if op in ("Relu", "Clip")} == ({kept_op} if kept_op else set()), ops


EMPTY_BIAS = pytest.mark.parametrize("n, residual, constant", [
    (1, False, False), (1, True, False), (1, False, True), (1, True, True), (0, True, False), (0, False, True)],
    ids=lambda v: str(v))


def empty_bias_case(n: int, residual: bool, constant: bool, seed: int):
    rng = np.random.default_rng(seed)
    inputs = feeds(rng, X=rng.standard_normal((n, 4, H, W)).astype(np.float32), B=np.zeros(0, np.float32),
                   Z=rng.standard_normal([n, *Y_SHAPE[1:]]).astype(np.float32))
    return model(REQUIRED, residual, constant_b=np.zeros(0, np.float32) if constant else None), inputs


@EMPTY_BIAS
def test_portable_rejects_an_empty_bias(n, residual, constant):
    m, inputs = empty_bias_case(n, residual, constant, 4)
    with pytest.raises(ORT_ERRORS, match=CONV_BIAS):
        portable(m, inputs)


@pytest.mark.skipif(not runtime.native_available(), reason="native library not built")
@EMPTY_BIAS
def test_native_rejects_an_empty_bias(n, residual, constant):
    m, inputs = empty_bias_case(n, residual, constant, 5)
    op = "PSConvAdd" if residual else "PSConv"
    with pytest.raises(ORT_ERRORS, match=re.escape(f"{op}: B: expected shape [out_channels]")):  # runtime/src/psconv.cc
        native(m, inputs)


@pytest.mark.parametrize("constant", [False, True], ids=["input", "constant"])
@pytest.mark.parametrize("change", ["longer", "shorter", "2-D"])
def test_portable_rejects_w_of_the_wrong_length(change, constant):
    rng = np.random.default_rng(6)
    w = rng.standard_normal(kept()).astype(np.float32)
    w = {"longer": np.append(w, 1.0).astype(np.float32), "shorter": w[:-1], "2-D": w.reshape(1, -1)}[change]
    with pytest.raises(ORT_ERRORS, match=EXACT_SHAPE):
        portable(model(REQUIRED, constant_w=constant, w=w), feeds(rng, W=w))


def test_dense_kernel_still_folds_at_load(tmp_path):
    """With a constant W onnxruntime folds the kernel rebuild (and W's check) into the Conv's
    weights; what is left per node is the Conv, Z's shape check (int64 arithmetic on its 4
    dimensions, then a Reshape that aliases Z), Add and Clip."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(model(REQUIRED, constant_w=True, shapes={"X": ["N", 4, H, W], "Z": ["N", 6, 4, 3]})
                         .SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(options.optimized_model_filepath)
    ops = sorted(n.op_type for n in optimized.graph.node)
    initializers = {i.name for i in optimized.graph.initializer}
    (conv,) = [n for n in optimized.graph.node if n.op_type in ("Conv", "FusedConv")]
    assert conv.input[1] in initializers
    assert set(ops) <= {"Conv", "FusedConv", "Shape", "Equal", "Cast", "Mul", "Sub", "Reshape", "Add", "Clip"}, ops
    assert not {"Gather", "CumSum", "BitShift", "Range", "Where"} & set(ops), ops


def test_defaults_match_the_contract_text():
    """docs/operator.md's attribute table is the source the defaults were copied from."""
    text = (ROOT / "docs" / "operator.md").read_text()
    for name, value in fuzz_cases.OPTIONAL_DEFAULTS.items():
        written = {-math.inf: "-inf", math.inf: "+inf"}.get(value, str(value).replace(" ", "")) \
            if not isinstance(value, list) else "[" + ", ".join(map(str, value)) + "]"
        assert f"| {name} |" in text and f"| {written} |" in text.split(f"| {name} |")[1].split("\n")[0], name
