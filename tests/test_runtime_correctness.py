"""The native PSConv kernels against two independent oracles: torch's conv2d and onnxruntime's
own Conv, both on the dense masked weights rebuilt here from the operator contract."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

from pscompress import runtime

pytestmark = pytest.mark.skipif(not runtime.native_available(), reason="native library not built")

SQUARES = [0b000011011, 0b000110110, 0b011011000, 0b110110000]  # the 4of9 squares
TWO_OF_NINE = [0b000010010, 0b000011000, 0b000110000, 0b010010000, 0b000010100]


@dataclass
class Case:
    n: int
    c: int
    m: int
    h: int
    w: int
    group: int = 1
    kernel: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (1, 1, 1, 1)
    patterns: tuple[int, ...] = tuple(SQUARES)
    shift: int = 0
    clip: tuple[float, float] = (-np.inf, np.inf)
    bias: bool = True
    residual: bool = False
    constant_w: bool = True


def dense_weight(case: Case, rng: np.random.Generator) -> np.ndarray:
    """Wd per the contract: kernel (o, i) keeps patterns[(o + i + shift) % P]."""
    cg, k2 = case.c // case.group, case.kernel[0] * case.kernel[1]
    o, i = np.meshgrid(np.arange(case.m), np.arange(cg), indexing="ij")
    masks = np.array(case.patterns, dtype=np.int64)[(o + i + case.shift) % len(case.patterns)]
    keep = (masks[..., None] >> np.arange(k2)) & 1
    # Magnitudes bounded away from 0, so the kept weights are exactly the non-zeros.
    w = rng.uniform(0.1, 1.0, (case.m, cg, k2)) * rng.choice([-1.0, 1.0], (case.m, cg, k2)) * keep
    return w.astype(np.float32).reshape(case.m, cg, *case.kernel)


def psconv_model(case: Case, w_packed: np.ndarray, b: np.ndarray) -> bytes:
    op = "PSConvAdd" if case.residual else "PSConv"
    inputs = ["X", "W", "B" if case.bias else ""] + (["Z"] if case.residual else [])
    node = helper.make_node(
        op, [x for x in inputs if x or case.residual], ["Y"], domain="ai.pscompress",
        kernel_shape=list(case.kernel), strides=list(case.strides), pads=list(case.pads),
        dilations=[1, 1], group=case.group, in_channels=case.c, out_channels=case.m,
        patterns=list(case.patterns), shift=case.shift,
        clip_min=float(case.clip[0]), clip_max=float(case.clip[1]),
    )
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)]
    initializers = []
    if case.constant_w:
        initializers.append(onnx.numpy_helper.from_array(w_packed, "W"))
    else:
        graph_inputs.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, None))
    if case.bias:
        initializers.append(onnx.numpy_helper.from_array(b, "B"))
    if case.residual:
        graph_inputs.append(helper.make_tensor_value_info("Z", TensorProto.FLOAT, None))
    graph = helper.make_graph([node], "psconv", graph_inputs,
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("ai.pscompress", 1)])
    model.ir_version = 10
    return model.SerializeToString()


def ort_conv_model(case: Case, w_dense: np.ndarray, b: np.ndarray) -> bytes:
    """The same layer with onnxruntime's standard Conv (+ Add) + Clip."""
    nodes = [helper.make_node("Conv", ["X", "Wd", "B"], ["T"], kernel_shape=list(case.kernel),
                              strides=list(case.strides), pads=list(case.pads), group=case.group)]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)]
    last = "T"
    if case.residual:
        nodes.append(helper.make_node("Add", ["T", "Z"], ["S"]))
        inputs.append(helper.make_tensor_value_info("Z", TensorProto.FLOAT, None))
        last = "S"
    lo, hi = (np.array(v, dtype=np.float32) for v in case.clip)
    nodes.append(helper.make_node("Clip", [last, "lo", "hi"], ["Y"]))
    inits = [onnx.numpy_helper.from_array(w_dense, "Wd"),
             onnx.numpy_helper.from_array(b if case.bias else np.zeros(case.m, np.float32), "B"),
             onnx.numpy_helper.from_array(lo, "lo"), onnx.numpy_helper.from_array(hi, "hi")]
    graph = helper.make_graph(nodes, "dense", inputs,
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model.SerializeToString()


def random_cases(count: int, seed: int) -> list[Case]:
    rng = np.random.default_rng(seed)
    cases = []
    for index in range(count):
        group = [1, 1, 2, 3][index % 4]
        cg, mg = int(rng.integers(1, 12)), int(rng.integers(1, 15))
        patterns = [SQUARES, TWO_OF_NINE, SQUARES + [511]][index % 3]
        kernel = (3, 3)
        if index % 7 == 6:  # a non-square kernel with its own patterns
            kernel, patterns = (1, 3), [0b011, 0b110, 0b101]
        case = Case(
            n=int(rng.integers(1, 4)), c=cg * group, m=mg * group, group=group,
            h=int(rng.integers(1, 24)) | 1, w=int(rng.integers(1, 40)), kernel=kernel,
            strides=(int(rng.integers(1, 3)), int(rng.integers(1, 3))),
            pads=tuple(int(v) for v in rng.integers(0, 3, size=4)),
            patterns=tuple(patterns), shift=int(rng.integers(0, len(patterns))),
            clip=[(-np.inf, np.inf), (0.0, np.inf), (-0.5, 0.75)][index % 3],
            bias=bool(index % 5), residual=bool(index % 2), constant_w=index % 6 != 5,
        )
        # Grow the image until the padded kernel fits (otherwise the layer has no output).
        case.h = max(case.h, case.kernel[0] - case.pads[0] - case.pads[2])
        case.w = max(case.w, case.kernel[1] - case.pads[1] - case.pads[3])
        cases.append(case)
    return cases


FIXED = [
    Case(n=2, c=64, m=64, h=32, w=32),                              # a ResNet layer, direct tiles
    Case(n=1, c=128, m=256, h=16, w=16, strides=(2, 2), residual=True, clip=(0.0, np.inf)),
    Case(n=3, c=13, m=11, h=1, w=1, pads=(1, 1, 1, 1)),             # 1x1 spatial
    Case(n=2, c=16, m=16, h=9, w=17, group=16),                      # depthwise
    Case(n=1, c=12, m=24, h=7, w=5, group=4, patterns=tuple(TWO_OF_NINE), shift=3),
    Case(n=2, c=8, m=8, h=5, w=5, kernel=(1, 1), pads=(0, 0, 0, 0), patterns=(1,)),
    Case(n=2, c=20, m=14, h=15, w=8, residual=True, clip=(-0.25, 0.5)),  # two-row tiles, odd OH
    # Narrow layers as in the sample ResNet-20: 14-pixel rows, and two 7-wide (odd OH) or
    # 6-wide (even OH) rows per tile, with 4 outputs per residue class.
    Case(n=2, c=16, m=16, h=28, w=28, strides=(2, 2), clip=(0.0, np.inf)),
    Case(n=2, c=32, m=32, h=14, w=14, strides=(2, 2), residual=True),
    Case(n=1, c=8, m=16, h=6, w=6, residual=True, clip=(0.0, np.inf)),
    Case(n=1, c=9, m=7, h=21, w=19, strides=(2, 1), patterns=tuple(TWO_OF_NINE), shift=4),
]


def run_case(case: Case, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w_dense = dense_weight(case, rng)
    cg, k2 = case.c // case.group, case.kernel[0] * case.kernel[1]
    w_packed = np.ascontiguousarray(w_dense.reshape(case.m, cg, k2)[w_dense.reshape(case.m, cg, k2) != 0])
    b = rng.standard_normal(case.m).astype(np.float32)
    x = rng.random((case.n, case.c, case.h, case.w), dtype=np.float32)
    feeds = {"X": x}
    with torch.no_grad():
        # torch pads symmetrically only: pad explicitly for ONNX's 4 independent pads.
        xp = F.pad(torch.from_numpy(x), (case.pads[1], case.pads[3], case.pads[0], case.pads[2]))
        t = F.conv2d(xp, torch.from_numpy(w_dense), torch.from_numpy(b) if case.bias else None,
                     stride=case.strides, groups=case.group)
    if case.residual:
        z = rng.standard_normal(tuple(t.shape)).astype(np.float32)
        feeds["Z"] = z
        t = t + torch.from_numpy(z)
    expected_torch = t.clamp(float(case.clip[0]), float(case.clip[1])).numpy()
    expected_ort = ort.InferenceSession(ort_conv_model(case, w_dense, b),
                                        providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    native_feeds = dict(feeds) if case.constant_w else {**feeds, "W": w_packed}
    session = runtime.create_session(psconv_model(case, w_packed, b), threads=2, native=True)
    got = session.run(None, native_feeds)[0]
    return got, expected_torch, expected_ort


def assert_close(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("case", FIXED + random_cases(36, seed=7), ids=lambda c: (
    f"n{c.n}c{c.c}m{c.m}g{c.group}h{c.h}w{c.w}k{c.kernel[0]}{c.kernel[1]}s{c.strides[0]}{c.strides[1]}"
    f"p{''.join(map(str, c.pads))}P{len(c.patterns)}{'r' if c.residual else ''}{'' if c.constant_w else 'v'}"))
def test_matches_torch_and_ort_conv(case: Case) -> None:
    got, expected_torch, expected_ort = run_case(case)
    assert_close(got, expected_torch)
    assert_close(got, expected_ort)


def test_native_kernel_is_the_one_that_runs(tmp_path) -> None:
    case = FIXED[0]
    rng = np.random.default_rng(0)
    w_dense = dense_weight(case, rng)
    w_packed = w_dense[w_dense != 0]
    options = runtime.session_options(threads=1, native=True)
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "profile")
    session = ort.InferenceSession(psconv_model(case, w_packed, np.zeros(case.m, np.float32)), options,
                                   providers=["CPUExecutionProvider"])
    session.run(None, {"X": rng.random((1, case.c, case.h, case.w), dtype=np.float32)})
    events = json.loads(open(session.end_profiling()).read())
    ops = {e["args"].get("op_name") for e in events if e.get("cat") == "Node"}
    assert "PSConv" in ops
    assert runtime.cpu_path() in {"avx2-fma", "neon", "scalar"}


def test_portable_scalar_path_matches_oracles() -> None:
    """The dispatch fallback (forced via PSCOMPRESS_KERNEL) gives the same results."""
    script = (
        "import sys; sys.path.insert(0, 'tests'); import test_runtime_correctness as t\n"
        "from pscompress import runtime\n"
        "assert runtime.cpu_path() == 'scalar', runtime.cpu_path()\n"
        "for case in t.FIXED[1:] + t.random_cases(6, seed=11):\n"
        "    got, a, b = t.run_case(case); t.assert_close(got, a); t.assert_close(got, b)\n"
        "print('ok')\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "PSCOMPRESS_KERNEL": "scalar"}, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr


@pytest.mark.parametrize("attrs, message", [
    ({"patterns": [0]}, "patterns"),
    ({"patterns": [512]}, "patterns"),
    ({"shift": 4}, "shift"),
    ({"strides": [0, 1]}, "strides"),
    ({"pads": [1, 1, 1]}, "pads"),
    ({"dilations": [2, 2]}, "dilations"),
    ({"group": 3}, "group"),
    ({"kernel_shape": [8, 8]}, "kernel_shape"),
    ({"clip_min": 1.0, "clip_max": 0.0}, "clip_min"),
    ({"in_channels": 5}, "X"),
    ({"out_channels": 9}, "W"),
])
def test_malformed_models_get_clear_errors(attrs: dict, message: str) -> None:
    case = Case(n=1, c=4, m=8, h=5, w=5)
    w_dense = dense_weight(case, np.random.default_rng(0))
    w_packed = w_dense[w_dense != 0]
    model = onnx.load_from_string(psconv_model(case, w_packed, np.zeros(8, np.float32)))
    node = model.graph.node[0]
    for name, value in attrs.items():
        for attr in node.attribute:
            if attr.name == name:
                node.attribute.remove(attr)
                break
        node.attribute.append(helper.make_attribute(name, value))
    with pytest.raises(Exception, match=message):
        session = ort.InferenceSession(model.SerializeToString(), runtime.session_options(native=True),
                                       providers=["CPUExecutionProvider"])
        session.run(None, {"X": np.zeros((1, 4, 5, 5), np.float32)})
