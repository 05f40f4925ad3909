"""Builds the native PSConv kernel library (runtime/, CMake) into the pscompress.runtime package.

Everything else about the package lives in pyproject.toml. Environment:
  PSCOMPRESS_CMAKE_ARGS       extra CMake arguments, e.g. a cross toolchain:
                              -DCMAKE_TOOLCHAIN_FILE=runtime/cmake/aarch64-linux-gnu.cmake
  PSCOMPRESS_ORT_INCLUDE_DIR  onnxruntime C/C++ headers to use instead of fetching them
  PSCOMPRESS_SKIP_NATIVE=1    do not build the library (the portable ONNX path still works)
  PSCOMPRESS_REQUIRE_NATIVE=1 fail the install when the library does not build
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70
    from wheel.bdist_wheel import bdist_wheel

ROOT = Path(__file__).resolve().parent
LIBRARY = "libpscompress_ort.so"


def build_native(build_temp: Path) -> Path:
    """Configures and builds runtime/ with CMake; returns the built library."""
    args = shlex.split(os.environ.get("PSCOMPRESS_CMAKE_ARGS", ""))
    # Relative paths in the arguments (toolchain files) are relative to the project root.
    args = [a.replace("=runtime/", f"={ROOT}/runtime/") for a in args]
    build_temp.mkdir(parents=True, exist_ok=True)
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(
        ["cmake", "-S", str(ROOT / "runtime"), "-B", str(build_temp), "-DCMAKE_BUILD_TYPE=Release",
         "-DPSCOMPRESS_TESTS=OFF", *generator, *args],
        check=True,
    )
    subprocess.run(["cmake", "--build", str(build_temp), "--target", "pscompress_ort", "--parallel", "2"],
                   check=True)
    return build_temp / LIBRARY


class BuildWithNative(build_py):
    def run(self) -> None:
        super().run()
        if os.environ.get("PSCOMPRESS_SKIP_NATIVE") == "1":
            return
        editable = getattr(self, "editable_mode", False)
        target = ROOT / "runtime" / "python" if editable else Path(self.build_lib) / "pscompress" / "runtime"
        tag = "cross" if os.environ.get("PSCOMPRESS_CMAKE_ARGS") else "native"
        try:
            built = build_native(ROOT / "build" / f"runtime-{tag}")
        except (OSError, subprocess.CalledProcessError) as exc:
            if os.environ.get("PSCOMPRESS_REQUIRE_NATIVE") == "1":
                raise
            print(f"WARNING: the native PSConv kernel library did not build ({exc}); "
                  "models will run through the portable ONNX path", file=sys.stderr)
            return
        target.mkdir(parents=True, exist_ok=True)
        # Replace by rename: processes that have the old library mapped keep their copy intact.
        staged = target / f".{LIBRARY}.tmp"
        shutil.copy2(built, staged)
        os.replace(staged, target / LIBRARY)


class PlatformWheel(bdist_wheel):
    """The library uses no Python ABI: tag wheels py3-none-<platform>."""

    def finalize_options(self) -> None:
        super().finalize_options()
        self.root_is_pure = False

    def get_tag(self) -> tuple[str, str, str]:
        _, _, platform = super().get_tag()
        return "py3", "none", platform


class BinaryDistribution(Distribution):
    def has_ext_modules(self) -> bool:
        return True


setup(cmdclass={"build_py": BuildWithNative, "bdist_wheel": PlatformWheel}, distclass=BinaryDistribution)
