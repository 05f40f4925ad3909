"""The native library built with AddressSanitizer + UndefinedBehaviorSanitizer, as a pytest
plugin: a test module that declares `pytest_plugins = ["asan_build"]` gets the session-scoped
`asan_build` fixture, so the tree is built once per test run however many modules use it.
PSCOMPRESS_ASAN_BUILD names the build folder (default build/runtime-asan)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("PSCOMPRESS_ASAN_BUILD", ROOT / "build" / "runtime-asan"))


@pytest.fixture(scope="session")
def asan_build() -> Path:
    """The build folder (libpscompress_ort.so, ukernel_tester, psconv_tester), configured and
    built (incrementally) once per session."""
    if not shutil.which("cmake") or not shutil.which("g++"):
        pytest.fail("cmake and g++ are needed (scripts/bootstrap.sh installs them)")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    for command in (["cmake", "-S", str(ROOT / "runtime"), "-B", str(BUILD), *generator, "-DPSCOMPRESS_ASAN=ON",
                     "-DCMAKE_BUILD_TYPE=RelWithDebInfo"],
                    ["cmake", "--build", str(BUILD), "--parallel", "2"]):
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(command[:2])} failed:\n{(done.stdout + done.stderr)[-4000:]}")
    return BUILD
