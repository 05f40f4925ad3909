"""The native library under AddressSanitizer + UndefinedBehaviorSanitizer: the microkernel
tester (every SIMD path vs the portable reference) and >= 1,000 randomised malformed models
and inputs (runtime/tests/fuzz_psconv.py). Zero crashes and zero sanitizer reports allowed."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "runtime-asan"


def sanitizer_env() -> dict[str, str]:
    def gcc_file(name: str) -> str:
        return subprocess.run(["g++", f"-print-file-name={name}"], capture_output=True, text=True,
                              check=True).stdout.strip()

    # Python itself is not instrumented: preload the ASan runtime, and libstdc++ with it so
    # that ASan's __cxa_throw interceptor finds the real one.
    return {**os.environ, "LD_PRELOAD": f"{gcc_file('libasan.so')} {gcc_file('libstdc++.so')}",
            "ASAN_OPTIONS": "detect_leaks=0:allocator_may_return_null=1:abort_on_error=1",
            "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}


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
    for marker in ("AddressSanitizer", "runtime error:", "LeakSanitizer"):
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
