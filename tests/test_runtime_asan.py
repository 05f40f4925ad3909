"""The native library under AddressSanitizer + UndefinedBehaviorSanitizer: the microkernel
testers, fp32 and int8, GEMM and depthwise (every SIMD path vs the portable reference),
>= 1,000 randomised malformed models and inputs (runtime/tests/fuzz_psconv.py), and the differential fuzzer (runtime/tests/
fuzz_differential.py, docs/fuzzing.md): >= 3,000 valid cases on every CPU path of this machine
against the portable functions, onnx.reference and a numpy oracle, plus contract violations
and mutated models. Zero crashes, zero sanitizer reports and zero mismatches allowed.

PSCOMPRESS_ASAN_BUILD names the build folder (default build/runtime-asan)."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from native_cases import MARKERS, assert_clean, machine_paths, sanitizer_env, sanitizer_options, sanitizer_preload

pytest_plugins = ["asan_build"]  # the asan_build fixture, one build per session
pytestmark = pytest.mark.slow  # every test here needs the sanitizer tree, the fuzzers take minutes

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("tester", ["ukernel_tester", "dwconv_tester", "qgemm_tester", "qdwconv_tester"])
def test_simd_microkernels_match_reference(asan_build: Path, tester: str) -> None:
    done = subprocess.run([str(asan_build / tester)], capture_output=True, text=True,
                          env=sanitizer_env(), timeout=120)
    assert_clean(done)
    assert "scalar: ok" in done.stdout
    for path in machine_paths():
        assert f"{path}: ok" in done.stdout, done.stdout
    if tester in ("ukernel_tester", "dwconv_tester") and platform.machine() in ("x86_64", "AMD64") \
            and "avx512f" not in machine_paths():
        # The AVX-512 GEMM and depthwise kernels are built everywhere on x86-64; a CPU without
        # AVX-512 says it did not run them.
        assert "avx512f: built, not run: this CPU has no AVX-512F" in done.stdout, done.stdout


@pytest.mark.skipif("avx2-fma" not in machine_paths(), reason="the emulation runs on AVX2 (x86-64 only)")
@pytest.mark.parametrize("tester", ["ukernel_tester_avx512_emulated", "dwconv_tester_avx512_emulated"])
def test_avx512_kernel_code_matches_reference_emulated_on_avx2(asan_build: Path, tester: str) -> None:
    """ukernel_6x16_avx512f.cc and dwconv_6x16_avx512f.cc with their AVX-512 intrinsics written in AVX2
    (runtime/tests/avx512_on_avx2.h; masked loads and stores touch only their lanes, so ASan sees what the real
    ones read and write): their code is checked on every x86-64 machine, AVX-512 or not."""
    done = subprocess.run([str(asan_build / tester)], capture_output=True, text=True,
                          env=sanitizer_env(), timeout=120)
    assert_clean(done)
    assert "avx512f-emulated: ok" in done.stdout, done.stdout


def test_fuzz_malformed_models_never_crash(asan_build: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "runtime" / "tests" / "fuzz_psconv.py"),
         str(asan_build / "libpscompress_ort.so"), "--cases", "1200", "--seed", "1"],
        capture_output=True, text=True, env=sanitizer_env(), timeout=300)
    assert_clean(done)
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert counts["cases"] >= 1000
    # Both outcomes must be exercised: clean rejections and real computations.
    assert counts["ran"] >= 100 and counts["rejected_at_load"] >= 100 and counts["rejected_at_run"] >= 100


def test_differential_fuzz_finds_nothing(asan_build: Path, tmp_path: Path) -> None:
    """3,000 valid cases, 300 contract violations and 300 mutated models on every CPU path.
    The driver runs without the ASan runtime (its onnxruntime sessions would be four times
    slower); only the native workers get it. About 3 minutes on 2 cores."""
    summary_file = tmp_path / "summary.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "runtime" / "tests" / "fuzz_differential.py"),
         str(asan_build / "libpscompress_ort.so"), "--cases", "3000", "--invalid", "300", "--mutate", "300",
         "--seed", "1", "--worker-preload", sanitizer_preload(), "--report", "40", "--json", str(summary_file)],
        capture_output=True, text=True, env={**os.environ, **sanitizer_options()}, timeout=600)
    output = done.stdout + done.stderr
    assert summary_file.exists(), output[-4000:]
    summary = json.loads(summary_file.read_text())
    assert set(summary["paths"]) == set(machine_paths()), summary["paths"]
    assert summary["mismatches"] == 0, f"{summary['by_kind']}\n{output[-6000:]}"
    assert done.returncode == 0, output[-4000:]
    for marker in MARKERS:
        assert marker not in output, output[-4000:]
    counts = summary["counts"]
    assert summary["cases"] >= 3000 and summary["invalid_cases"] >= 300
    for impl in summary["implementations"]:
        assert counts[f"compared:{impl}"] == summary["cases"], impl
    classes = {"z_batch", "z_dim_one", "z_rank", "z_size", "b_empty", "b_one", "b_wrong", "w_long", "w_short",
               "w_rank", "x_channels", "x_rank", "missing_required", "bad_attribute"}
    assert classes <= {k.split(":", 1)[1] for k in counts if k.startswith("invalid:")}
    assert counts["mutate:ran"] >= 50 and counts["mutate:rejected_at_load"] >= 50
    assert counts["mutate:rejected_at_run"] >= 50
