"""Regressions for the outside security test of the native PSConv kernels: heap over-reads of
the tile layouts, NaN and Inf inputs, memory amplification by pads, strides and patterns, an
empty B, and the forced microkernel path.

Each builds one-node models (runtime/tests/psconv_models.py) and compares the native session
against the same model without the library (its portable ONNX function), onnxruntime's Conv
and torch's conv2d on the dense masked weights. Runs that may crash or take much memory when
the kernel is wrong go to a child process (runtime.create_session with native=True, nothing
else imported), so that a segfault, a sanitizer report or an allocation of gigabytes fails the
test instead of the test run or the machine.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from native_cases import (SQUARES, TWO_OF_NINE, Case, assert_clean, case_model, dense_model, dense_weight, packed,
                          sanitizer_env)
from pscompress import UserError, runtime

pytest_plugins = ["asan_build"]  # the asan_build fixture, one build per session
pytestmark = pytest.mark.skipif(not runtime.native_available(), reason="native library not built")

ROOT = Path(__file__).resolve().parents[1]

# Runs one model natively (feeds from an .npz) and prints the outcome and the growth of peak RSS
# (VmHWM: ru_maxrss would start at the forking parent's peak).
CHILD = r"""
import json, sys
import numpy as np
import onnxruntime
from pscompress import runtime
def peak_kb():
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
model, feeds, out = sys.argv[1:4]
feeds = dict(np.load(feeds))
before = peak_kb()
try:
    np.save(out, runtime.create_session(model, threads=1, native=True).run(None, feeds)[0])
    error = None
except Exception as exc:
    error = str(exc)
growth = peak_kb() - before
print(json.dumps({"error": error, "rss_growth_mb": growth / 1024, "cpu_path": runtime.cpu_path()}))
"""


def psconv_model(case: Case, w_packed: np.ndarray, b: np.ndarray | None, omit: tuple[str, ...] = ()) -> bytes:
    """The case's model with the portable functions, so that the same bytes run on both paths."""
    return case_model(case, w_packed, b, portable=True, omit=omit)


def layer(case: Case, seed: int = 0, non_finite: bool = False):
    """Dense masked weights, the packed W, B (None without bias) and feeds; non_finite seeds X
    with NaN, +Inf and -Inf, many of them at masked taps."""
    rng = np.random.default_rng(seed)
    w_dense = dense_weight(case, rng)
    w_packed = packed(w_dense)
    b = rng.standard_normal(case.m).astype(np.float32) if case.bias else None
    x = rng.random((case.n, case.c, case.h, case.w), dtype=np.float32)
    if non_finite:
        spots = rng.random(x.shape) < 0.03
        x[spots] = rng.choice(np.array([np.nan, np.inf, -np.inf], np.float32), int(spots.sum()))
    feeds = {"X": x}
    if case.residual:
        feeds["Z"] = rng.standard_normal((case.n, case.m, *output_hw(case))).astype(np.float32)
    return w_dense, w_packed, b, feeds


def output_hw(case: Case) -> tuple[int, int]:
    (kh, kw), (sh, sw), p = case.kernel, case.strides, case.pads
    return (case.h + p[0] + p[2] - kh) // sh + 1, (case.w + p[1] + p[3] - kw) // sw + 1


def torch_conv(case: Case, w_dense: np.ndarray, b: np.ndarray | None, feeds: dict) -> np.ndarray:
    with torch.no_grad():
        # torch pads symmetrically only: pad explicitly for ONNX's 4 independent pads.
        xp = F.pad(torch.from_numpy(feeds["X"]), (case.pads[1], case.pads[3], case.pads[0], case.pads[2]))
        t = F.conv2d(xp, torch.from_numpy(w_dense), None if b is None else torch.from_numpy(b),
                     stride=case.strides, groups=case.group)
        if case.residual:
            t = t + torch.from_numpy(feeds["Z"])
        return t.clamp(float(case.clip[0]), float(case.clip[1])).numpy()


def unpadded_conv(case: Case, w_dense: np.ndarray, b: np.ndarray | None, feeds: dict) -> np.ndarray:
    """Conv tap by tap over the outputs whose input lands in the image, in float64: no padded
    copy, so layers with huge pads and many channels stay cheap (the other oracles pad first)."""
    g = case.group
    x = feeds["X"].astype(np.float64).reshape(case.n, g, case.c // g, case.h, case.w)
    w = w_dense.astype(np.float64).reshape(g, case.m // g, case.c // g, *case.kernel)
    oh, ow = output_hw(case)
    y = np.zeros((case.n, g, case.m // g, oh, ow))
    for kh in range(case.kernel[0]):
        for kw in range(case.kernel[1]):
            rows = np.arange(oh) * case.strides[0] + kh - case.pads[0]
            cols = np.arange(ow) * case.strides[1] + kw - case.pads[1]
            r, c = np.flatnonzero((rows >= 0) & (rows < case.h)), np.flatnonzero((cols >= 0) & (cols < case.w))
            patch = x[:, :, :, rows[r]][:, :, :, :, cols[c]]
            with np.errstate(invalid="ignore"):  # Inf - Inf and 0 * Inf: NaN, as in Conv
                y[:, :, :, r[:, None], c] += np.einsum("gmi,ngihw->ngmhw", w[..., kh, kw], patch)
    y = y.reshape(case.n, case.m, oh, ow) + (0.0 if b is None else b.astype(np.float64)[:, None, None])
    if case.residual:
        y = y + feeds["Z"]
    return np.clip(y, case.clip[0], case.clip[1]).astype(np.float32)


def oracles(case: Case, w_dense: np.ndarray, w_packed: np.ndarray, b: np.ndarray | None, feeds: dict) -> dict:
    """The portable function, onnxruntime's Conv, torch's conv2d and unpadded_conv on the same layer."""
    portable = runtime.create_session(psconv_model(case, w_packed, b), native=False).run(None, feeds)[0]
    conv = ort.InferenceSession(dense_model(case, w_dense, b), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    return {"portable": portable, "ort Conv": conv, "torch": torch_conv(case, w_dense, b, feeds),
            "unpadded": unpadded_conv(case, w_dense, b, feeds)}


def assert_same(got: np.ndarray, expected: np.ndarray, what: str) -> None:
    """NaN exactly where expected, the same infinities, finite values to float tolerance."""
    assert got.shape == expected.shape, what
    for name, test in (("NaN", np.isnan), ("+Inf", np.isposinf), ("-Inf", np.isneginf)):
        mismatched = test(got) != test(expected)
        assert not mismatched.any(), f"{what}: {name} differs at {np.argwhere(mismatched)[:5].tolist()}"
    finite = np.isfinite(expected)
    scale = max(1.0, float(np.abs(expected[finite]).max(initial=0.0)))
    np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-4, atol=1e-4 * scale, err_msg=what)


def run_child(model: bytes, feeds: dict, tmp_path: Path, env: dict | None = None,
              memory_limit: int | None = None) -> tuple[dict, np.ndarray | None]:
    """CHILD on the model; returns its report and Y (None on an error). A crash fails here."""
    (tmp_path / "model.onnx").write_bytes(model)
    np.savez(tmp_path / "feeds.npz", **feeds)
    out = tmp_path / "y.npy"
    out.unlink(missing_ok=True)

    def limit_memory() -> None:  # a kernel that still over-allocates fails cleanly, not the machine
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))

    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "model.onnx"), str(tmp_path / "feeds.npz"),
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})}, preexec_fn=limit_memory if memory_limit else None)
    if env and "LD_PRELOAD" in env:
        assert_clean(done)
    assert done.returncode == 0, f"child died with {done.returncode}:\n{done.stderr[-3000:]}"
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return report, (np.load(out) if report["error"] is None else None)


# ---------------------------------------------------------------------------------------------
# 1. B reads stay inside the phase planes, every layout.

LAYOUTS = {
    # The finding: two-row tiles (OW = 8), OH = 7 odd, stride 2 rows; the last tile's upper
    # half read a row past the planes.
    "two-row-odd-oh-stride2": Case(n=1, c=1, m=1, h=13, w=8, strides=(2, 1), patterns=(0b111000000,), bias=False),
    # Its production segfault: OH = 1 (the upper half read 64 rows on), 1x63 kernel, 16,000 channels.
    "huge-row-stride": Case(n=3, c=16000, m=2, h=1, w=70, kernel=(1, 63), strides=(64, 1), pads=(0, 0, 0, 0),
                            patterns=(1 << 62,)),
    "two-row-odd-oh-groups": Case(n=2, c=6, m=6, h=15, w=8, group=2, residual=True, clip=(-0.25, 0.5)),
    "two-row-even-oh": Case(n=1, c=4, m=5, h=12, w=12, strides=(2, 2), patterns=tuple(TWO_OF_NINE), shift=3,
                            clip=(0.0, np.inf)),
    "row-tails": Case(n=2, c=5, m=9, h=4, w=20, patterns=tuple(SQUARES) + (511,), shift=2),
    "row-13": Case(n=1, c=3, m=4, h=5, w=13, clip=(-0.5, 0.75)),
    "gathered": Case(n=2, c=4, m=8, h=5, w=3, group=2, residual=True),
    "pads-1024-strides-64": Case(n=1, c=2, m=3, h=8, w=8, strides=(64, 64), pads=(1024,) * 4),
    "strides-past-kernel": Case(n=1, c=2, m=3, h=10, w=11, kernel=(3, 2), strides=(4, 5), pads=(2, 3, 1, 4),
                                patterns=(5, 10, 63)),
    "kernel-wider-than-image": Case(n=1, c=2, m=2, h=1, w=3, kernel=(7, 9), pads=(3, 4, 3, 4),
                                    patterns=(2**63 - 1, 0x5555555555555555)),
    "more-patterns-than-outputs": Case(n=1, c=4, m=3, h=6, w=7, patterns=(1, 2, 4, 8, 16, 32, 64, 128, 256, 3, 5),
                                       shift=9),
}


@pytest.mark.slow  # builds the sanitizer tree
def test_operator_tester_under_asan(asan_build: Path) -> None:
    """PSConv::run without onnxruntime on every path, all layouts and tails, vs a dense reference."""
    done = subprocess.run([str(asan_build / "psconv_tester")], capture_output=True, text=True,
                          env=sanitizer_env(), timeout=300)
    assert_clean(done)
    assert "outputs: ok" in done.stdout and "memory bounds: ok" in done.stdout, done.stdout


@pytest.mark.slow  # builds the sanitizer tree
@pytest.mark.parametrize("name", LAYOUTS)
def test_layouts_read_inside_planes_under_asan(name: str, asan_build: Path, tmp_path: Path) -> None:
    case = LAYOUTS[name]
    w_dense, w_packed, b, feeds = layer(case)
    env = {**sanitizer_env(), "PSCOMPRESS_LIBRARY": str(asan_build / "libpscompress_ort.so")}
    report, got = run_child(psconv_model(case, w_packed, b), feeds, tmp_path, env=env)
    assert report["error"] is None, report["error"]
    assert_same(got, oracles(case, w_dense, w_packed, b, feeds)["ort Conv"], name)


@pytest.mark.parametrize("kernel", ["default", "scalar"])
def test_huge_row_stride_does_not_crash(kernel: str, tmp_path: Path) -> None:
    """The finding's production segfault, with the production library on both x86 paths (where
    the over-read lands in mapped memory it passes even before the fix: the ASan test is exact)."""
    case = LAYOUTS["huge-row-stride"]
    w_dense, w_packed, b, feeds = layer(case)
    env = {} if kernel == "default" else {"PSCOMPRESS_KERNEL": kernel}
    report, got = run_child(psconv_model(case, w_packed, b), feeds, tmp_path, env=env)
    assert report["error"] is None, report["error"]
    for name, expected in oracles(case, w_dense, w_packed, b, feeds).items():
        assert_same(got, expected, name)


# ---------------------------------------------------------------------------------------------
# 2. NaN and +-Inf inputs give what dense Conv gives.

@pytest.mark.parametrize("non_finite", [False, True], ids=["finite", "nan-inf"])
@pytest.mark.parametrize("name", LAYOUTS)
def test_matches_dense_conv_with_nan_and_inf(name: str, non_finite: bool) -> None:
    check_layer(LAYOUTS[name], non_finite)


def check_layer(case: Case, non_finite: bool) -> None:
    w_dense, w_packed, b, feeds = layer(case, non_finite=non_finite)
    got = runtime.create_session(psconv_model(case, w_packed, b), threads=2, native=True).run(None, feeds)[0]
    for name, expected in oracles(case, w_dense, w_packed, b, feeds).items():
        assert_same(got, expected, f"native ({runtime.cpu_path()}) vs {name}")


@pytest.mark.parametrize("kernel", ["scalar", "avx2-fma", "avx512f", "neon"])
def test_every_forced_path_matches_with_nan_and_inf(kernel: str) -> None:
    probe = subprocess.run([sys.executable, "-c", "from pscompress import runtime; print(runtime.cpu_path())"],
                           cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PSCOMPRESS_KERNEL": kernel})
    if probe.stdout.strip() != kernel:
        pytest.skip(f"this CPU or build has no {kernel} path ({probe.stdout.strip()})")
    script = (
        "import sys; sys.path.insert(0, 'tests'); import test_runtime_regressions as t\n"
        f"from pscompress import runtime; assert runtime.cpu_path() == {kernel!r}, runtime.cpu_path()\n"
        "for case in t.LAYOUTS.values():\n"
        "    t.check_layer(case, non_finite=True)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PSCOMPRESS_KERNEL": kernel}, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr[-3000:]


# ---------------------------------------------------------------------------------------------
# 3. Memory: scratch and prepacked weights bounded by input + output + weights.

# Peak RSS growth of a child that creates the session and runs it once; the kernels before the
# fix needed the amounts in the comments (the portable path: see docs/operator.md, Memory).
MEMORY = {
    # pads 1024 with strides 64, a 4 kB model, a 256-byte input: was 1.2 GB.
    "pads-1024-strides-64": Case(n=1, c=64, m=16, h=1, w=1, kernel=(1, 1), strides=(64, 64), pads=(1024,) * 4,
                                 patterns=(1,), bias=False),
    # the same with 1024 input channels: asked for 17 GB.
    "pads-1024-strides-64-c1024": Case(n=1, c=1024, m=16, h=1, w=1, kernel=(1, 1), strides=(64, 64),
                                       pads=(1024,) * 4, patterns=(1,), bias=False),
    # 256 patterns and one output channel, a 650 kB model: 1.4 GB of panel padding and offsets.
    "256-patterns-one-output": Case(n=1, c=5120, m=1, h=7, w=9, kernel=(7, 9), pads=(0, 0, 0, 0),
                                    patterns=tuple(int(v) for v in
                                                   np.random.default_rng(3).integers(1, 2**63 - 1, 256)),
                                    bias=False),
}


@pytest.mark.parametrize("name", MEMORY)
def test_memory_stays_near_input_output_and_weights(name: str, tmp_path: Path) -> None:
    case = MEMORY[name]
    w_dense, w_packed, b, feeds = layer(case)
    report, got = run_child(psconv_model(case, w_packed, b), feeds, tmp_path, memory_limit=4 << 30)
    assert report["error"] is None, report["error"]
    sizes_mb = (w_packed.nbytes + sum(v.nbytes for v in feeds.values()) + got.nbytes) / 2**20
    print(f"{name}: peak RSS grew {report['rss_growth_mb']:.1f} MB (input + output + weights {sizes_mb:.1f} MB)")
    assert report["rss_growth_mb"] < 80 + 10 * sizes_mb, report
    assert_same(got, unpadded_conv(case, w_dense, b, feeds), name)


def test_scratch_over_the_bound_is_rejected_naming_pads_and_strides(tmp_path: Path) -> None:
    """Mostly padding and 4,096 input channels for one output: 160 MB of planes for a 64 kB input."""
    case = Case(n=1, c=4096, m=1, h=2, w=2, strides=(64, 64), pads=(1024,) * 4, patterns=(511,), bias=False)
    _, w_packed, b, feeds = layer(case)
    report, _ = run_child(psconv_model(case, w_packed, b), feeds, tmp_path, memory_limit=4 << 30)
    assert report["error"] and "pads/strides" in report["error"], report


# ---------------------------------------------------------------------------------------------
# 4. One contract on both paths.

def run_both(model: bytes, feeds: dict) -> dict[str, object]:
    """Each path's output, or the error it raised (create_session's UserError at load, else onnxruntime's)."""
    outcomes: dict[str, object] = {}
    for path, native in (("native", True), ("portable", False)):
        try:
            outcomes[path] = runtime.create_session(model, native=native).run(None, feeds)[0]
        except (UserError, *runtime.onnxruntime_errors()) as exc:  # the outcome under test
            outcomes[path] = exc
    return outcomes


def test_empty_bias_is_rejected_on_both_paths() -> None:
    case = Case(n=1, c=4, m=8, h=5, w=5)
    _, w_packed, _, feeds = layer(case)
    outcomes = run_both(psconv_model(case, w_packed, np.zeros(0, np.float32)), feeds)
    assert "Conv : bias must be a 1D tensor of size output_channels (8)" in str(outcomes["portable"]), outcomes
    assert "PSConv: B: expected shape [out_channels]" in str(outcomes["native"]), outcomes


def test_absent_bias_means_no_bias_on_both_paths() -> None:
    case = Case(n=1, c=4, m=8, h=5, w=5, bias=False)
    check_layer(case, non_finite=False)


def test_wrongly_shaped_residual_is_rejected() -> None:
    case = Case(n=1, c=4, m=8, h=5, w=5, residual=True)
    _, w_packed, b, feeds = layer(case)
    feeds["Z"] = np.zeros((1, 8, 5, 4), np.float32)  # Y is [1, 8, 5, 5]
    outcomes = run_both(psconv_model(case, w_packed, b), feeds)
    assert "ExactShape" in str(outcomes["portable"]), outcomes  # the portable functions' shape check
    assert "PSConvAdd: Z: expected the output's shape [N, out_channels, OH, OW]" in str(outcomes["native"]), outcomes


OPTIONAL = ("strides", "pads", "dilations", "group", "shift", "clip_min", "clip_max")


@pytest.mark.parametrize("native", [True, False], ids=["native", "portable"])
def test_attributes_with_defaults_are_optional(native: bool) -> None:
    case = Case(n=2, c=4, m=6, h=7, w=9, pads=(0, 0, 0, 0))  # every optional attribute at its default
    w_dense, w_packed, b, feeds = layer(case)
    full = oracles(case, w_dense, w_packed, b, feeds)
    got = runtime.create_session(psconv_model(case, w_packed, b, omit=OPTIONAL), native=native).run(None, feeds)[0]
    for name, expected in full.items():
        assert_same(got, expected, f"{'native' if native else 'portable'} without {', '.join(OPTIONAL)} vs {name}")


# ---------------------------------------------------------------------------------------------
# Forced microkernel paths: a name this build or CPU cannot run is refused, never replaced.

def forced(kernel: str) -> subprocess.CompletedProcess:
    script = (
        "import sys; sys.path.insert(0, 'tests'); import test_runtime_regressions as t\n"
        "from pscompress import runtime\n"
        "print(runtime.cpu_path())\n"
        "case = t.Case(n=1, c=4, m=8, h=5, w=5)\n"
        "_, w_packed, b, feeds = t.layer(case)\n"
        "runtime.create_session(t.psconv_model(case, w_packed, b), native=True).run(None, feeds)\n"
    )
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PSCOMPRESS_KERNEL": kernel}, timeout=120)


@pytest.mark.parametrize("kernel", ["bogus", "AVX2", "neon" if runtime.cpu_path() != "neon" else "avx2-fma"])
def test_unsupported_forced_kernel_is_refused(kernel: str) -> None:
    done = forced(kernel)
    assert done.stdout.splitlines()[0] == f"unsupported:{kernel}", done.stdout
    assert done.returncode != 0 and f"PSCOMPRESS_KERNEL={kernel} is not a microkernel" in done.stderr, done.stderr


def test_supported_forced_kernel_is_used() -> None:
    best = runtime.cpu_path()
    for kernel in {best, "scalar"}:
        done = forced(kernel)
        assert done.returncode == 0 and done.stdout.splitlines()[0] == kernel, done.stdout + done.stderr[-2000:]
