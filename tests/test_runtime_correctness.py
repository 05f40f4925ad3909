"""The native PSConv kernels against two independent oracles: torch's conv2d and onnxruntime's
own Conv, both on the dense masked weights rebuilt here from the operator contract."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
import os
import re
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import helper

from native_cases import SQUARES, TWO_OF_NINE, Case, case_model, dense_model, dense_weight, expected_cpu_path, packed
from pscompress import runtime

pytestmark = pytest.mark.skipif(not runtime.native_available(), reason="native library not built")


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
    # Depthwise (Cg == 1, the direct kernel): MobileNetV2-like rows, stride 2, multiplier 2,
    # odd pads, a 5x5 kernel, a single channel with many outputs, tiny images.
    Case(n=1, c=32, m=32, h=56, w=56, group=32, clip=(0.0, 6.0)),
    Case(n=2, c=24, m=24, h=29, w=29, group=24, strides=(2, 2), residual=True),
    Case(n=1, c=8, m=16, h=14, w=13, group=8, patterns=tuple(TWO_OF_NINE), shift=2, residual=True),
    Case(n=1, c=6, m=12, h=9, w=40, group=6, strides=(2, 1), pads=(0, 1, 2, 1), constant_w=False),
    Case(n=2, c=5, m=5, h=11, w=7, group=5, kernel=(5, 5), pads=(2, 2, 2, 2),
         patterns=(0x1FFFFFF, 0b1000110001000110001)),
    Case(n=1, c=1, m=16, h=10, w=10, clip=(-0.5, 0.75)),
    Case(n=3, c=4, m=4, h=1, w=2, group=4, strides=(3, 3), pads=(1, 0, 1, 2)),
    # Batches of 16 image groups and more run a task per group (gemm_tiles.h, kGroupTasksFrom):
    # 20 sample-like images, and 130 4x4 images in groups of 8 with a partial last group.
    Case(n=20, c=16, m=16, h=14, w=14, residual=True, clip=(0.0, np.inf)),
    Case(n=130, c=16, m=24, h=4, w=4, group=2, residual=True),
]


def run_case(case: Case, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w_dense = dense_weight(case, rng)
    w_packed = packed(w_dense)
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
    bias = b if case.bias else None
    expected_ort = ort.InferenceSession(dense_model(case, w_dense, bias),
                                        providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    native_feeds = dict(feeds) if case.constant_w else {**feeds, "W": w_packed}
    session = runtime.create_session(case_model(case, w_packed, bias, portable=False), threads=2, native=True)
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
    w_packed = packed(dense_weight(case, rng))
    options = runtime.session_options(threads=1, native=True)
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "profile")
    session = ort.InferenceSession(case_model(case, w_packed, np.zeros(case.m, np.float32), portable=False), options,
                                   providers=["CPUExecutionProvider"])
    session.run(None, {"X": rng.random((1, case.c, case.h, case.w), dtype=np.float32)})
    events = json.loads(open(session.end_profiling()).read())
    ops = {e["args"].get("op_name") for e in events if e.get("cat") == "Node"}
    assert "PSConv" in ops
    assert runtime.cpu_path() == expected_cpu_path()


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


# The kernel's own message for each (runtime/src/psconv.cc), after the operator's name.
@pytest.mark.parametrize("attrs, constant_w, message", [
    ({"patterns": [0]}, True, "patterns: bitmask 0 outside [1, 2^(KH*KW))"),
    ({"patterns": [512]}, True, "patterns: bitmask 512 outside [1, 2^(KH*KW))"),
    ({"shift": 4}, True, "shift: must be in [0, P)"),
    ({"strides": [0, 1]}, True, "strides: value 0 outside [1, 64]"),
    ({"pads": [1, 1, 1]}, True, "pads: expected 4 values, got 3"),
    ({"dilations": [2, 2]}, True, "dilations (the native kernel supports 1 only): value 2 outside [1, 1]"),
    ({"group": 3}, True, "group: must be >= 1 and divide in_channels and out_channels"),
    ({"kernel_shape": [8, 8]}, True, "kernel_shape: KH * KW = 64 exceeds 63"),
    ({"clip_min": 1.0, "clip_max": 0.0}, True, "clip_min/clip_max: need clip_min <= clip_max"),
    # A constant W is checked against the channels when the model loads; an input W at run
    # time, after X, which then fails first.
    ({"in_channels": 5}, True, "W: length 128 does not match the patterns and channels (expected 160)"),
    ({"in_channels": 5}, False, "X: channel dimension does not equal in_channels"),
    ({"out_channels": 9}, True, "W: length 128 does not match the patterns and channels (expected 144)"),
])
def test_malformed_models_get_clear_errors(attrs: dict, constant_w: bool, message: str) -> None:
    case = Case(n=1, c=4, m=8, h=5, w=5, constant_w=constant_w)
    w_packed = packed(dense_weight(case, np.random.default_rng(0)))
    model = onnx.load_from_string(case_model(case, w_packed, np.zeros(8, np.float32), portable=False))
    node = model.graph.node[0]
    for name, value in attrs.items():
        for attr in node.attribute:
            if attr.name == name:
                node.attribute.remove(attr)
                break
        node.attribute.append(helper.make_attribute(name, value))
    feeds = {"X": np.zeros((1, 4, 5, 5), np.float32)} | ({} if constant_w else {"W": w_packed})
    with pytest.raises(runtime.onnxruntime_errors(), match=re.escape(f"PSConv: {message}")):
        session = ort.InferenceSession(model.SerializeToString(), runtime.session_options(native=True),
                                       providers=["CPUExecutionProvider"])
        session.run(None, feeds)


@pytest.mark.parametrize("group", [1, 24])
def test_overlapping_runs_of_other_shapes_each_get_their_own_plan(group: int) -> None:
    # The plan is cached per shape (SparseLayer::cached_plan) while runs of one session may overlap.
    case = Case(n=1, c=24, m=24, h=9, w=9, group=group, strides=(2, 2) if group == 1 else (1, 1))
    rng = np.random.default_rng(3)
    w_dense = dense_weight(case, rng)
    b = rng.standard_normal(case.m).astype(np.float32)
    native = ort.InferenceSession(case_model(case, packed(w_dense), b, portable=False),
                                  runtime.session_options(threads=1, native=True), providers=["CPUExecutionProvider"])
    conv = ort.InferenceSession(dense_model(case, w_dense, b), providers=["CPUExecutionProvider"])
    inputs = [rng.random((n, case.c, h, w), dtype=np.float32) for n, h, w in [(1, 9, 9), (2, 7, 11), (1, 16, 5), (3, 4, 4)]]
    expected = [conv.run(None, {"X": x})[0] for x in inputs]
    with ThreadPoolExecutor(4) as pool:  # onnxruntime releases the GIL while it runs
        results = list(pool.map(lambda i: (i % 4, native.run(None, {"X": inputs[i % 4]})[0]), range(200)))
    for i, got in results:
        assert_close(got, expected[i])
