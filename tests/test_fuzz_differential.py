"""The differential fuzzer itself (runtime/tests/fuzz_differential.py, docs/fuzzing.md): its
cases cover the whole operator contract and stay valid, its numpy oracle agrees with
onnxruntime's own Conv on the dense weights, its comparison catches what it must, and a short
run without sanitizers passes on the portable functions and on the native library's paths.
The sanitizer run (3,000 cases, every CPU path) is in tests/test_runtime_asan.py."""
from __future__ import annotations

import collections
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from native_cases import machine_paths
import fuzz_cases as fc
import fuzz_differential as fd
import psconv_models
import qlinear_models
from pscompress import runtime

ROOT = Path(__file__).resolve().parents[1]

FUZZER = ROOT / "runtime" / "tests" / "fuzz_differential.py"


@pytest.fixture(scope="module")
def cases() -> list[fc.Case]:
    return [fc.generate(1, i) for i in range(3000)]


def test_cases_are_valid_per_the_contract(cases):
    for case in cases:
        a = case.attrs
        (kh, kw), k2 = a["kernel_shape"], a["kernel_shape"][0] * a["kernel_shape"][1]
        assert kh >= 1 and kw >= 1 and k2 <= 63
        assert all(1 <= s <= 64 for s in a["strides"]) and len(a["strides"]) == 2
        assert all(0 <= p <= 1024 for p in a["pads"]) and len(a["pads"]) == 4
        assert a["dilations"] == [1, 1]
        g, c, m = a["group"], a["in_channels"], a["out_channels"]
        assert g >= 1 and c % g == 0 and m % g == 0
        assert 1 <= len(a["patterns"]) <= 256 and all(1 <= p < 1 << k2 for p in a["patterns"])
        assert 0 <= a["shift"] < len(a["patterns"]) and a["clip_min"] <= a["clip_max"]
        n, mm, oh, ow = case.output_shape
        assert oh >= 1 and ow >= 1 and mm == m and n == case.n
        assert case.inputs["X"].shape == (case.n, c, case.h, case.w)
        assert case.inputs["W"].shape == (fc.packed_length(a["kernel_shape"], a["patterns"], a["shift"], m, c // g),)
        assert ("B" in case.inputs) == case.bias and ("Z" in case.inputs) == case.residual
        assert all(fc.OPTIONAL_DEFAULTS[k] == a[k] for k in case.omitted)


def test_cases_cover_the_contract(cases):
    seen = collections.defaultdict(set)
    for case in cases:
        a = case.attrs
        kh, kw = a["kernel_shape"]
        n, m, oh, ow = case.output_shape
        seen["oh"].add(oh)
        seen["ow"].add(ow)
        seen["kernel"].add("1xK" if kh == 1 and kw > 1 else "Kx1" if kw == 1 and kh > 1 else
                           "KxK" if kh == kw else "KHxKW")
        seen["k2"].add(kh * kw)
        seen["strides"].update(a["strides"])
        seen["asymmetric strides"].add(a["strides"][0] != a["strides"][1])
        seen["asymmetric pads"].add(len(set(a["pads"])) > 1)
        seen["large pads"].add(max(a["pads"]) >= 513)
        seen["large strides"].add(max(a["strides"]) >= 16)
        seen["P"].add(len(a["patterns"]))
        pops = [bin(p).count("1") for p in a["patterns"]]
        seen["popcount"].update({"one" if p == 1 else "full" if p == kh * kw else "some" for p in pops})
        g, c = a["group"], a["in_channels"]
        seen["groups"].add("depthwise" if g == c == m and g > 1 else "depthwise x2" if g == c and m == 2 * c and g > 1
                           else "grouped" if g > 1 else "dense")
        if g == c:  # the native depthwise path (Cg == 1): its shapes, one by one
            seen["depthwise strides"].update(a["strides"])
            seen["depthwise kernels"].add(kh * kw if kh == kw else 0)
            seen["depthwise odd pads"].add(any(p % 2 for p in a["pads"]))
            seen["depthwise ow"].add("tiny" if ow <= 2 else "wide" if ow > 32 else "mid")
            seen["depthwise op"].add((case.op, a["clip_min"] > -math.inf or a["clip_max"] < math.inf))
            seen["depthwise nonfinite"].update(case.nonfinite)
        seen["N"].add(n)
        seen["op"].add((case.op, case.bias))
        lo, hi = a["clip_min"], a["clip_max"]
        seen["activation"].add("none" if (lo, hi) == (-math.inf, math.inf) else "relu" if (lo, hi) == (0.0, math.inf)
                               else "constant" if lo == hi else "upper" if lo == -math.inf else
                               "lower" if hi == math.inf else "clip")
        seen["shift"].add("0" if a["shift"] == 0 else "P-1" if a["shift"] == len(a["patterns"]) - 1 else "mid")
        seen["nonfinite"].update(case.nonfinite)
        seen["omitted"].update(case.omitted)
        seen["w"].add(case.w_constant)
    assert set(range(1, 21)) <= seen["oh"] and set(range(1, 21)) <= seen["ow"]
    assert seen["kernel"] == {"1xK", "Kx1", "KxK", "KHxKW"} and {1, 9, 49, 63} <= seen["k2"]
    assert {1, 2, 3, 4} <= seen["strides"] and True in seen["asymmetric strides"] and True in seen["asymmetric pads"]
    assert True in seen["large pads"] and True in seen["large strides"]
    assert {1, 2, 3, 4} <= seen["P"] and max(seen["P"]) > 200
    assert seen["popcount"] == {"one", "full", "some"}
    assert seen["groups"] == {"depthwise", "depthwise x2", "grouped", "dense"}
    assert {1, 2, 3} <= seen["depthwise strides"] and {1, 4, 9, 16, 25} <= seen["depthwise kernels"]
    assert seen["depthwise odd pads"] == {True, False} and seen["depthwise ow"] == {"tiny", "mid", "wide"}
    assert {("PSConvAdd", True), ("PSConv", True), ("PSConv", False)} <= seen["depthwise op"]
    assert "X" in seen["depthwise nonfinite"]
    assert seen["N"] == {0, 1, 2, 3}
    assert seen["op"] == {("PSConv", True), ("PSConv", False), ("PSConvAdd", True), ("PSConvAdd", False)}
    assert seen["activation"] == {"none", "relu", "constant", "upper", "lower", "clip"}
    assert seen["shift"] == {"0", "P-1", "mid"}
    assert seen["nonfinite"] == {"X", "W", "B", "Z"}
    assert set(fc.OPTIONAL_DEFAULTS) == seen["omitted"]
    assert seen["w"] == {True, False}


def dense_conv_model(case: fc.Case) -> bytes:
    """The case as onnxruntime's standard Conv (+ Add) + Clip on the oracle's dense weights."""
    wd = fc.dense_weights(case, case.inputs["W"]).astype(np.float32)
    return psconv_models.dense_conv_model(case.attrs, wd, case.inputs.get("B"), case.residual).SerializeToString()


def test_oracle_agrees_with_onnxruntime_conv_on_the_dense_weights(cases):
    """An independent check of the oracle (and of its tolerance: never too tight for a
    correct float32 Conv), on finite inputs so that the two may sum in any order."""
    checked = 0
    for case in cases[:400]:
        if case.nonfinite or case.n == 0:
            continue
        session = ort.InferenceSession(dense_conv_model(case), providers=["CPUExecutionProvider"])
        got = session.run(None, {k: v for k, v in case.inputs.items() if k in ("X", "Z")})[0]
        assert fc.compare(got, *fc.oracle(case)) is None, case.describe()
        checked += 1
    assert checked > 250


def test_int8_cases_are_depthwise_and_their_oracle_is_qlinear_conv():
    """Every 8th valid case is an int8 depthwise QLinearPSConv (the native int8 depthwise
    kernel); its exact oracle equals onnxruntime's QLinearConv on the dense masked weights, and
    the comparison is exact natively, within 1 elsewhere."""
    int8 = [fc.generate_valid(1, i) for i in range(7, 800, 8)]
    assert all(c.op == "QLinearPSConv" for c in int8) and fc.generate_valid(1, 8).op != "QLinearPSConv"
    assert {c.attrs["out_channels"] // c.attrs["group"] for c in int8} == {1, 2}
    assert all(c.attrs["group"] == c.attrs["in_channels"] for c in int8)
    assert {int(c.quant["x_zero_point"]) for c in int8} >= {0, 128, 255}
    assert any(c.attrs["strides"] != [1, 1] for c in int8) and any(any(c.attrs["pads"]) for c in int8)
    for case in int8[:40]:
        want, scale, terms = fc.oracle(case)
        wd = fc.dense_weights(case, case.inputs["W"]).astype(np.int8)
        model = qlinear_models.qlinear_conv_model(case.attrs, wd, case.quant, case.inputs.get("B"))
        got = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"X": case.inputs["X"]})[0]
        assert fc.compare(got, want, scale, terms, exact=False) is None, case.describe()
        off = want.astype(np.uint8)
        off.reshape(-1)[0] = off.reshape(-1)[0] + 2 if off.reshape(-1)[0] < 254 else 0  # two steps away
        assert fc.compare(off, want, scale, terms, exact=False) is not None
        assert fc.compare(np.where(got < 255, got + 1, got - 1).astype(np.uint8), want, scale, terms) is not None


def test_compare_is_nan_and_inf_exact_and_rounding_tolerant():
    want = np.array([1.0, np.nan, np.inf, -np.inf, 0.0, 3.0])
    scale = np.array([10.0, 0, 0, 0, 0.0, 3.0])
    terms = 9
    ok = want.astype(np.float32)
    ok[0] += 2 * terms * 2 ** -24 * 10.0  # within the rounding bound
    assert fc.compare(ok, want, scale, terms) is None
    for index, value, kind in [(1, 0.0, "nan"), (0, np.nan, "nan"), (2, -np.inf, "inf"), (3, 1e30, "inf"),
                               (4, 1e-20, "value"), (5, 3.001, "value")]:
        bad = want.astype(np.float32)
        bad[index] = value
        assert fc.compare(bad, want, scale, terms)[0] == kind, (index, value)
    assert fc.compare(np.zeros(5, np.float32), want, scale, terms)[0] == "shape"


def test_oracle_keeps_ieee_semantics_at_masked_taps():
    """0 * Inf is NaN: an Inf that only a masked (zero) weight of Wd meets makes the output NaN,
    as Conv on Wd computes it; a clip never hides a NaN."""
    case = next(c for c in (fc.generate(3, i) for i in range(500))
                if c.attrs["kernel_shape"] == [3, 3] and c.n >= 1 and not c.nonfinite and 0 < min(
                    bin(p).count("1") for p in c.attrs["patterns"]) < 9 and c.attrs["group"] == 1)
    x = case.inputs["X"]
    x[0, 0, case.h // 2, case.w // 2] = np.inf
    y, _, _ = fc.oracle(case)
    assert np.isnan(y).any()


def test_a_wrong_output_is_reported_with_its_reproducer():
    fuzzer = fd.Fuzzer("lib.so", seed=4, workers=[], quiet=True)
    case = fc.generate(4, 17)
    want = fc.oracle(case)
    wrong = want[0].astype(np.float32)
    wrong.reshape(-1)[:1] += 1.0 if wrong.size else 0
    fuzzer.judge("native:test", case, {"output": wrong}, want)
    fuzzer.judge("portable", case, {"error": "boom"}, want)
    fuzzer.judge("reference", case, {"output": want[0].astype(np.float32)}, want)
    kinds = [m["kind"] for m in fuzzer.mismatches]
    assert kinds == (["native:test/value"] if wrong.size else []) + ["portable/error"]
    assert all(m["repro"].endswith("--seed 4 --case 17") for m in fuzzer.mismatches)
    assert all(case.describe() in m["case_line"] for m in fuzzer.mismatches)


def run_fuzzer(*args: str, timeout: int = 300) -> tuple[dict, str]:
    done = subprocess.run([sys.executable, str(FUZZER), *args], capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), output


@pytest.mark.slow  # a fuzz campaign in a subprocess
def test_portable_functions_and_reference_match_the_oracle():
    """The portable functions in onnxruntime and onnx.reference: valid cases agree with the
    oracle (defaults of left-out attributes included), violations of the input shapes are
    errors. No native library needed."""
    summary, output = run_fuzzer("none", "--kernels", "none", "--cases", "400", "--invalid", "150", "--seed", "11")
    assert summary["mismatches"] == 0, output[-4000:]
    assert summary["cases"] == 400 and summary["invalid_cases"] == 150


def test_reproducer_reruns_one_case():
    summary, output = run_fuzzer("none", "--kernels", "none", "--seed", "1", "--case", "7")
    assert summary["cases"] == 1 and fc.generate_valid(1, 7).describe() in output


@pytest.mark.slow  # a fuzz campaign in a subprocess
@pytest.mark.skipif(not runtime.native_available(), reason="native library not built")
def test_native_paths_match_the_oracle_without_sanitizers():
    """A short run on the installed library, every CPU path (the long one is under ASan)."""
    summary, output = run_fuzzer(str(runtime.library_path()), "--cases", "480", "--invalid", "100", "--seed", "2")
    assert set(summary["paths"]) == set(machine_paths()), summary["paths"]
    assert summary["mismatches"] == 0, f"{summary['by_kind']}\n{output[-6000:]}"
