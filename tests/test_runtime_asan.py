"""The native library under AddressSanitizer + UndefinedBehaviorSanitizer: the microkernel
tester (every SIMD path vs the portable reference), >= 1,000 randomised malformed models and
inputs (runtime/tests/fuzz_psconv.py), and the differential fuzzer (runtime/tests/
fuzz_differential.py, docs/fuzzing.md): >= 3,000 valid cases on every CPU path of this machine
against the portable functions, onnx.reference and a numpy oracle, plus contract violations
and mutated models. Zero crashes, zero sanitizer reports and zero mismatches allowed.

PSCOMPRESS_ASAN_BUILD names the build folder (default build/runtime-asan)."""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("PSCOMPRESS_ASAN_BUILD", ROOT / "build" / "runtime-asan"))
MARKERS = ("AddressSanitizer", "runtime error:", "LeakSanitizer")


def sanitizer_preload() -> str:
    def gcc_file(name: str) -> str:
        return subprocess.run(["g++", f"-print-file-name={name}"], capture_output=True, text=True,
                              check=True).stdout.strip()

    # Python itself is not instrumented: preload the ASan runtime, and libstdc++ with it so
    # that ASan's __cxa_throw interceptor finds the real one.
    return f"{gcc_file('libasan.so')} {gcc_file('libstdc++.so')}"


def sanitizer_options() -> dict[str, str]:
    return {"ASAN_OPTIONS": "detect_leaks=0:allocator_may_return_null=1:abort_on_error=1",
            "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}


def sanitizer_env() -> dict[str, str]:
    return {**os.environ, "LD_PRELOAD": sanitizer_preload(), **sanitizer_options()}


@pytest.fixture(scope="module")
def asan_build() -> Path:
    if not shutil.which("cmake") or not shutil.which("g++"):
        pytest.fail("cmake and g++ are needed (scripts/bootstrap.sh installs them)")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(["cmake", "-S", str(ROOT / "runtime"), "-B", str(BUILD), *generator,
                    "-DPSCOMPRESS_ASAN=ON", "-DCMAKE_BUILD_TYPE=RelWithDebInfo"],
                   check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(BUILD), "--parallel", "2"], check=True, capture_output=True)
    return BUILD


def assert_clean(done: subprocess.CompletedProcess) -> None:
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    for marker in MARKERS:
        assert marker not in output, output[-4000:]


def test_simd_microkernels_match_reference(asan_build: Path) -> None:
    done = subprocess.run([str(asan_build / "ukernel_tester")], capture_output=True, text=True,
                          env=sanitizer_env(), timeout=120)
    assert_clean(done)
    assert "scalar: ok" in done.stdout


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


def machine_paths() -> set[str]:
    """The CPU paths the library has for this machine: the portable one and its SIMD one."""
    paths = {"scalar"}
    if platform.machine() in ("x86_64", "AMD64"):
        flags = Path("/proc/cpuinfo").read_text().split()
        if "avx2" in flags and "fma" in flags:
            paths.add("avx2-fma")
    elif platform.machine() in ("aarch64", "arm64"):
        paths.add("neon")
    return paths


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
    assert set(summary["paths"]) >= machine_paths(), summary["paths"]
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
