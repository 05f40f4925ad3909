"""The native int8 operator QLinearPSConv (runtime/src/qlinear_psconv.h) against onnxruntime's own
QLinearConv on the dense masked int8 weights (w_zero_point 0), and against an exact numpy
reference (int64 sums, then MLAS's float32 requantization), on every CPU path of this machine.

onnxruntime's QLinearConv is exact only while its u8 x s8 pair sums fit int16: its AVX2 path
without VNNI multiplies with vpmaddubsw, which saturates. So the comparison with it keeps the
weights in [-64, 63] (then 2 x 255 x 64 < 2^15); full-range weights are compared with numpy,
and with onnxruntime where the CPU has VNNI (no saturation there)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import qlinear_models as qm
from native_cases import SQUARES, TWO_OF_NINE, machine_paths
from pscompress import runtime

pytestmark = pytest.mark.skipif(not runtime.native_available(), reason="native library not built")

ROOT = Path(__file__).resolve().parents[1]
FLAGS = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
              if line.startswith("flags")), []) if Path("/proc/cpuinfo").exists() else []
ORT_EXACT_FULL_RANGE = "avx512_vnni" in FLAGS or "avx_vnni" in FLAGS


@dataclass
class QCase:
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
    bias: bool = True
    per_channel: bool = True
    x_zero_point: int = 128
    y_zero_point: int = 128
    inputs: tuple[str, ...] = field(default_factory=tuple)  # graph inputs instead of initializers

    def attributes(self) -> dict:
        return dict(kernel_shape=list(self.kernel), strides=list(self.strides), pads=list(self.pads),
                    dilations=[1, 1], group=self.group, in_channels=self.c, out_channels=self.m,
                    patterns=list(self.patterns), shift=self.shift)

    def name(self) -> str:
        return (f"n{self.n}c{self.c}m{self.m}g{self.group}h{self.h}w{self.w}k{self.kernel[0]}{self.kernel[1]}"
                f"s{self.strides[0]}{self.strides[1]}p{''.join(map(str, self.pads))}"
                f"{'b' if self.bias else ''}{'pc' if self.per_channel else 'pt'}x{self.x_zero_point}y{self.y_zero_point}"
                f"{'v' if self.inputs else ''}")


KERNEL_PATTERNS = [((3, 3), SQUARES), ((3, 3), TWO_OF_NINE), ((3, 3), SQUARES + [511]), ((1, 1), [1]),
                   ((1, 3), [0b011, 0b110, 0b101]), ((5, 5), [0x1FFFFFF, 0b1000110001000110001])]


def random_cases(count: int, seed: int) -> list[QCase]:
    rng = np.random.default_rng(seed)
    cases = []
    for index in range(count):
        kernel, patterns = KERNEL_PATTERNS[index % len(KERNEL_PATTERNS)]
        group = [1, 1, 2, 3][index % 4]
        cg, mg = int(rng.integers(1, 14)), int(rng.integers(1, 20))
        if index % 9 == 8:  # depthwise, channel multiplier 1 or 2
            cg, mg, group = 1, int(rng.integers(1, 3)), int(rng.integers(2, 9))
        case = QCase(
            n=[1, 1, 3, 0][index % 4] if index % 11 else 0, c=cg * group, m=mg * group, group=group,
            h=int(rng.integers(1, 20)), w=int(rng.integers(1, 41)), kernel=kernel,
            strides=(int(rng.integers(1, 4)), int(rng.integers(1, 4))),
            pads=tuple(int(v) for v in rng.integers(0, 3, size=4)), patterns=tuple(patterns),
            shift=int(rng.integers(0, len(patterns))), bias=bool(index % 3),
            per_channel=bool(index % 4 != 1), x_zero_point=[0, 128, 255, int(rng.integers(0, 256))][index % 4],
            y_zero_point=[128, 0, int(rng.integers(0, 256)), 255][index % 4],
            inputs=("W", "x_scale", "y_zero_point") if index % 10 == 9 else (),
        )
        if case.n == 0 and index % 4 != 3:
            case.n = 1
        case.h = max(case.h, case.kernel[0] - case.pads[0] - case.pads[2])
        case.w = max(case.w, case.kernel[1] - case.pads[1] - case.pads[3])
        cases.append(case)
    return cases


def ow_cases() -> list[QCase]:
    """Every output width 1 to 40 (every tile layout and tail: rows, two rows, gathered)."""
    return [QCase(n=1, c=7, m=13, h=5 + ow % 3, w=ow, pads=(1, 1, 1, 1), shift=ow % 4, bias=ow % 2 == 0,
                  x_zero_point=[0, 128, 255][ow % 3]) for ow in range(1, 41)]


def kept_taps(k: int) -> tuple[int, ...]:
    """Two 3x3 supports of k kept taps each (1 to 9): the first k positions and the last k."""
    return ((1 << k) - 1, ((1 << k) - 1) << (9 - k))


def depthwise_cases() -> list[QCase]:
    """Depthwise layers (the int8 depthwise kernel, qdwconv.h): every map from 1x1 to 7x7 and
    wider odd ones, strides 1 and 2, pads, 1 to 9 kept taps (and a 5x5 kernel), channel counts
    off the vector widths, multipliers 1 and 2, batches of 1 to 3, zero points 0, 128 and 255,
    bias or not."""
    maps = [(s, s) for s in range(1, 8)] + [(7, 13), (5, 9), (9, 17), (3, 31), (14, 14), (28, 28), (11, 23)]
    pads = [(1, 1, 1, 1), (0, 0, 0, 0), (2, 1, 0, 2), (0, 1, 1, 0)]
    cases = []
    for index, (h, w) in enumerate(maps * 2):
        c, mg = [1, 3, 17, 24, 33][index % 5], 1 + index % 3 // 2
        pad = pads[index % 4]
        cases.append(QCase(n=1 + index % 3, c=c, m=c * mg, group=c, h=max(h, 3 - pad[0] - pad[2]),
                           w=max(w, 3 - pad[1] - pad[3]), strides=(1 + index // len(maps),) * 2, pads=pad,
                           patterns=kept_taps(1 + index % 9), shift=index % 2, bias=index % 4 != 1,
                           per_channel=index % 5 != 2, x_zero_point=[0, 128, 255][index % 3],
                           y_zero_point=[128, 0, 255][index // 3 % 3]))
    for stride in (1, 2):  # 5x5: 13 and 25 kept taps, MobileNet's stride-2 layers
        cases.append(QCase(n=2, c=19, m=19, group=19, h=15, w=13, kernel=(5, 5), strides=(stride, stride),
                           pads=(2, 2, 2, 2), patterns=(0x1FFFFFF, 0b1010101010101010101010101), shift=1))
    return cases


FIXED = [
    QCase(n=2, c=64, m=64, h=16, w=16),                                  # a ResNet layer
    QCase(n=1, c=32, m=48, h=14, w=14, strides=(2, 2), x_zero_point=0, y_zero_point=0),  # ReLU range
    QCase(n=3, c=13, m=11, h=1, w=1),                                    # 1x1 spatial
    QCase(n=2, c=16, m=16, h=9, w=17, group=16),                         # depthwise
    QCase(n=1, c=8, m=16, h=10, w=13, group=8, patterns=tuple(TWO_OF_NINE), shift=2),  # depthwise x2
    QCase(n=1, c=12, m=24, h=7, w=5, group=4, patterns=tuple(TWO_OF_NINE), shift=3, per_channel=False),
    QCase(n=2, c=8, m=8, h=5, w=5, kernel=(1, 1), pads=(0, 0, 0, 0), patterns=(1,)),
    QCase(n=1, c=9, m=7, h=21, w=19, strides=(3, 1), pads=(0, 2, 1, 0), patterns=tuple(TWO_OF_NINE), shift=4),
    QCase(n=2, c=5, m=10, h=11, w=7, group=5, kernel=(5, 5), pads=(2, 2, 2, 2),
          patterns=(0x1FFFFFF, 0b1000110001000110001)),
    QCase(n=0, c=4, m=6, h=5, w=5),                                      # empty batch
    QCase(n=1, c=20, m=14, h=15, w=8, x_zero_point=255, y_zero_point=255, inputs=("W", "w_scale", "B")),
    # 19 channels a group: a dot kernel's four-channel elements, then three with one channel each
    QCase(n=2, c=38, m=20, h=9, w=11, group=2, shift=1, x_zero_point=3),
    QCase(n=130, c=16, m=24, h=4, w=4, group=2),  # a task per image group (gemm_tiles.h)
]
CASES = FIXED + ow_cases() + depthwise_cases() + random_cases(60, seed=5)


def case_data(case: QCase, seed: int, full_range: bool) -> dict:
    rng = np.random.default_rng(seed)
    mask = qm.kept_mask(case.m, case.c // case.group, case.kernel, case.patterns, case.shift)
    lo, hi = (-128, 128) if full_range else (-64, 64)
    w_dense = (rng.integers(lo, hi, mask.shape) * mask).astype(np.int8)
    flat, keep = w_dense.reshape(-1), mask.reshape(-1)
    flat[::7] = np.where(keep[::7], lo, 0)  # the extremes among the kept weights
    flat[3::7] = np.where(keep[3::7], hi - 1, 0)
    x = rng.integers(0, 256, (case.n, case.c, case.h, case.w)).astype(np.uint8)
    x.reshape(-1)[::5] = 255 if case.x_zero_point < 128 else 0  # x - zp at its extremes
    b = rng.integers(-20000, 20000, case.m).astype(np.int32) if case.bias else None
    w_scale = rng.uniform(0.002, 0.02, case.m if case.per_channel else 1).astype(np.float32)
    quant = {"x_scale": np.array(rng.uniform(0.005, 0.05), np.float32),
             "x_zero_point": np.array(case.x_zero_point, np.uint8),
             "w_scale": w_scale if case.per_channel else w_scale.reshape(()) if seed % 2 else w_scale,
             "y_scale": np.array(1.0, np.float32), "y_zero_point": np.array(case.y_zero_point, np.uint8)}
    acc = qm.accumulate(x, w_dense, case.x_zero_point, case.attributes())
    # A y_scale that spreads the outputs over the range, a few clamped.
    v = acc + (b[None, :, None, None] if b is not None else 0)
    spread = float(np.percentile(np.abs(v), 95)) if v.size else 1.0
    quant["y_scale"] = np.array(float(quant["x_scale"]) * float(w_scale.mean()) * max(spread, 1.0) / 200, np.float32)
    return dict(mask=mask, w_dense=w_dense, x=x, b=b, quant=quant, expected=qm.requantize(acc, b, quant))


def native_session(model: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(model, runtime.session_options(threads=2, native=True), providers=["CPUExecutionProvider"])


def run_native(case: QCase, data: dict) -> np.ndarray:
    w_packed = qm.packed(data["w_dense"], data["mask"])
    model = qm.qlinear_psconv_model(case.attributes(), w_packed, data["quant"], data["b"], case.inputs)
    values = {"W": w_packed, "B": data["b"], **data["quant"]}
    return native_session(model).run(None, {"X": data["x"], **{k: values[k] for k in case.inputs}})[0]


def run_qlinear_conv(case: QCase, data: dict) -> np.ndarray:
    model = qm.qlinear_conv_model(case.attributes(), data["w_dense"], data["quant"], data["b"])
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"X": data["x"]})[0]


def compare(case: QCase, seed: int) -> dict:
    """Native against numpy (exact, both weight ranges) and onnxruntime's QLinearConv (within 1)."""
    counts = {"ort_max": 0, "ort_differ": 0, "numpy_differ": 0, "outputs": 0}
    for full_range in (False, True):
        data = case_data(case, seed, full_range)
        got = run_native(case, data)
        assert got.shape == data["expected"].shape and got.dtype == np.uint8
        counts["numpy_differ"] += int(np.count_nonzero(got != data["expected"]))
        counts["outputs"] += got.size
        if case.n == 0 or (full_range and not ORT_EXACT_FULL_RANGE):
            continue  # onnxruntime's QLinearConv rejects an empty batch
        oracle = run_qlinear_conv(case, data)
        diff = np.abs(got.astype(np.int32) - oracle.astype(np.int32))
        counts["ort_max"] = max(counts["ort_max"], int(diff.max(initial=0)))
        counts["ort_differ"] += int(np.count_nonzero(diff))
    return counts


@pytest.mark.parametrize("case", CASES, ids=QCase.name)
def test_matches_qlinear_conv_and_exact_reference(case: QCase) -> None:
    counts = compare(case, seed=CASES.index(case))
    assert counts["numpy_differ"] == 0, counts
    assert counts["ort_max"] <= 1, counts
    assert counts["ort_differ"] == 0, counts  # the contract allows 1 LSB; this kernel meets it exactly


SUBPROCESS = """
import json, sys
sys.path.insert(0, 'tests'); sys.path.insert(0, 'runtime/tests')
import test_runtime_int8 as t
from pscompress import runtime
totals = {"path": runtime.cpu_path(), "cases": 0, "ort_max": 0, "ort_differ": 0, "numpy_differ": 0, "outputs": 0}
for seed, case in enumerate(t.CASES):
    counts = t.compare(case, seed)
    totals["cases"] += 1
    totals["ort_max"] = max(totals["ort_max"], counts.pop("ort_max"))
    for key, value in counts.items():
        totals[key] += value
print(json.dumps(totals))
"""


@pytest.mark.parametrize("path", machine_paths())
def test_every_cpu_path_matches(path: str) -> None:
    """Every case on each microkernel path this machine runs, forced with PSCOMPRESS_KERNEL."""
    done = subprocess.run([sys.executable, "-c", SUBPROCESS], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PSCOMPRESS_KERNEL": path}, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    totals = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{path}: {totals}")
    assert totals["path"] == path and totals["cases"] == len(CASES)
    assert totals["numpy_differ"] == 0 and totals["ort_max"] <= 1 and totals["ort_differ"] == 0, totals


def test_native_kernel_is_the_one_that_runs(tmp_path) -> None:
    case = FIXED[0]
    data = case_data(case, 0, full_range=False)
    model = qm.qlinear_psconv_model(case.attributes(), qm.packed(data["w_dense"], data["mask"]), data["quant"], data["b"])
    options = runtime.session_options(threads=1, native=True)
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "profile")
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    session.run(None, {"X": data["x"]})
    events = json.loads(open(session.end_profiling()).read())
    assert "QLinearPSConv" in {e["args"].get("op_name") for e in events if e.get("cat") == "Node"}


BASE = QCase(n=1, c=4, m=8, h=5, w=5)


def rejected(case: QCase, message: str, quant: dict | None = None, b=..., w_packed=None, attrs: dict | None = None,
             feeds: dict | None = None) -> None:
    """The model (BASE's, with these changes) fails to load or run with onnxruntime's error
    matching `message` (a regular expression)."""
    data = case_data(case, 0, full_range=True)
    w = qm.packed(data["w_dense"], data["mask"]) if w_packed is None else w_packed
    model = qm.qlinear_psconv_model({**case.attributes(), **(attrs or {})}, w, {**data["quant"], **(quant or {})},
                                    data["b"] if b is ... else b, case.inputs)
    with pytest.raises(runtime.onnxruntime_errors(), match=message):
        native_session(model).run(None, {"X": data["x"], **(feeds or {})})


@pytest.mark.parametrize("quant, message", [
    ({"x_scale": np.array(0.0, np.float32)}, "x_scale: must be finite and > 0"),
    ({"x_scale": np.array(-1.0, np.float32)}, "x_scale: must be finite and > 0"),
    ({"y_scale": np.array(np.inf, np.float32)}, "y_scale: must be finite and > 0"),
    ({"y_scale": np.array([np.nan], np.float32)}, "y_scale: must be finite and > 0"),
    ({"w_scale": np.full(8, 0.01, np.float32) * np.array([1, 1, 1, 0, 1, 1, 1, 1], np.float32)},
     "w_scale: every scale must be finite and > 0"),
    ({"w_scale": np.full(9, 0.01, np.float32)}, re.escape("w_scale: expected shape [out_channels], [1] or []")),
    ({"x_zero_point": np.array([1, 2], np.uint8)}, re.escape("x_zero_point: expected a scalar (shape [] or [1])")),
    ({"y_zero_point": np.zeros((1, 1), np.uint8)}, re.escape("y_zero_point: expected a scalar (shape [] or [1])")),
    ({"x_scale": np.array([0.1, 0.1], np.float32)}, re.escape("x_scale: expected a scalar (shape [] or [1])")),
])
def test_bad_scales_and_zero_points_are_named(quant: dict, message: str) -> None:
    rejected(BASE, "QLinearPSConv: " + message, quant=quant)


def test_bad_scale_given_at_run_time_is_named() -> None:
    case = QCase(n=1, c=4, m=8, h=5, w=5, inputs=("x_scale",))
    rejected(case, "QLinearPSConv: x_scale: must be finite and > 0", feeds={"x_scale": np.array(0.0, np.float32)})


@pytest.mark.parametrize("b, message", [
    (np.zeros(7, np.int32), re.escape("QLinearPSConv: B: expected shape [out_channels]")),
    (np.zeros((8, 1), np.int32), re.escape("QLinearPSConv: B: expected shape [out_channels]")),
    (np.full(8, 2 ** 30 + 1, np.int32), re.escape("QLinearPSConv: B: |B[o]| exceeds 2^30")),
    (np.zeros(8, np.float32), r"\bB\b"),  # the wrong type: onnxruntime's own error names the input
])
def test_bad_bias_is_named(b: np.ndarray, message: str) -> None:
    rejected(BASE, message, b=b)


def test_wrong_w_length_is_named() -> None:
    w = qm.packed(case_data(BASE, 0, True)["w_dense"], case_data(BASE, 0, True)["mask"])
    rejected(BASE, re.escape(f"QLinearPSConv: W: length {w.size - 1} does not match the patterns and channels "
                             f"(expected {w.size})"), w_packed=w[:-1])


def test_wrong_w_length_at_run_time_is_named() -> None:
    case = QCase(n=1, c=4, m=8, h=5, w=5, inputs=("W",))
    w = qm.packed(case_data(case, 0, True)["w_dense"], case_data(case, 0, True)["mask"])
    rejected(case, "QLinearPSConv: W: length", feeds={"W": w[:-2]})


@pytest.mark.parametrize("attrs, message", [
    ({"shift": 4}, "shift: must be in [0, P)"),
    ({"group": 3}, "group: must be >= 1 and divide in_channels and out_channels"),
    ({"clip_min": 0.0}, "clip_min: not an attribute of QLinearPSConv"),
])
def test_bad_attributes_are_named(attrs: dict, message: str) -> None:
    rejected(BASE, re.escape("QLinearPSConv: " + message), attrs=attrs)


def test_accumulator_bound_is_enforced() -> None:
    """More than 32768 kept taps per output could overflow int32: rejected at load."""
    case = QCase(n=1, c=3641, m=1, h=3, w=3, patterns=(511,))  # 3641 x 9 = 32769 taps
    rejected(case, re.escape("QLinearPSConv: in_channels: an output keeps 32769 taps"))
