"""What the tests of the native PSConv kernels share: layer cases with their dense masked weights
and models (tests/test_runtime_correctness.py, tests/test_runtime_regressions.py), the CPU path
this machine must get (docs/runtime.md), and what a run under the sanitizers needs (the build:
tests/asan_build.py)."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "runtime" / "tests"))  # the model builder, shared with the fuzzers

import psconv_models  # noqa: E402

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

    def attributes(self) -> dict:
        """Every attribute of the node, defaults included."""
        return dict(kernel_shape=list(self.kernel), strides=list(self.strides), pads=list(self.pads),
                    dilations=[1, 1], group=self.group, in_channels=self.c, out_channels=self.m,
                    patterns=list(self.patterns), shift=self.shift,
                    clip_min=float(self.clip[0]), clip_max=float(self.clip[1]))


def dense_weight(case: Case, rng: np.random.Generator) -> np.ndarray:
    """Wd per the contract: kernel (o, i) keeps patterns[(o + i + shift) % P]."""
    cg, k2 = case.c // case.group, case.kernel[0] * case.kernel[1]
    o, i = np.meshgrid(np.arange(case.m), np.arange(cg), indexing="ij")
    masks = np.array(case.patterns, dtype=np.int64)[(o + i + case.shift) % len(case.patterns)]
    keep = (masks[..., None] >> np.arange(k2)) & 1
    # Magnitudes bounded away from 0, so the kept weights are exactly the non-zeros.
    w = rng.uniform(0.1, 1.0, (case.m, cg, k2)) * rng.choice([-1.0, 1.0], (case.m, cg, k2)) * keep
    return w.astype(np.float32).reshape(case.m, cg, *case.kernel)


def packed(w_dense: np.ndarray) -> np.ndarray:
    """The packed W: Wd's kept weights (its non-zeros) in (o, i, p) order."""
    return w_dense[w_dense != 0]


def case_model(case: Case, w_packed: np.ndarray, b: np.ndarray | None, portable: bool,
               omit: tuple[str, ...] = ()) -> bytes:
    """The case's node as a model: W an initializer when case.constant_w (else an input), B an
    initializer (None: absent), X and Z inputs; `portable` attaches the portable functions,
    `omit` leaves attributes out (they take the contract's defaults)."""
    constants = {"W": w_packed} if case.constant_w else {}
    if b is not None:
        constants["B"] = b
    attrs = {k: v for k, v in case.attributes().items() if k not in omit}
    return psconv_models.psconv_model(attrs, residual=case.residual, bias=b is not None, constants=constants,
                                      portable=portable).SerializeToString()


def dense_model(case: Case, w_dense: np.ndarray, b: np.ndarray | None) -> bytes:
    """The same layer with onnxruntime's Conv (+ Add) + Clip on the dense weights."""
    return psconv_models.dense_conv_model(case.attributes(), w_dense, b, case.residual).SerializeToString()


def machine_paths() -> list[str]:
    """The microkernel paths of the library on this machine, best first (runtime/src/dispatch.cc):
    avx512-vnni on x86-64 with AVX-512F, BW and VNNI, avx512f with AVX-512F (and AVX2, FMA),
    avx-vnni with AVX-VNNI (and AVX2, FMA), avx2-fma with AVX2 and FMA, neon-dot on aarch64 with the
    dot product, neon on aarch64, scalar everywhere."""
    if platform.machine() in ("aarch64", "arm64"):
        features = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("Features")), [])
        return (["neon-dot"] if "asimddp" in features else []) + ["neon", "scalar"]
    if platform.machine() in ("x86_64", "AMD64"):
        flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), [])
        if "avx2" in flags and "fma" in flags:
            vnni = {"avx512f", "avx512bw", "avx512_vnni"} <= set(flags)
            return ((["avx512-vnni"] if vnni else []) + (["avx512f"] if "avx512f" in flags else [])
                    + (["avx-vnni"] if "avx_vnni" in flags else []) + ["avx2-fma", "scalar"])
    return ["scalar"]


def expected_cpu_path() -> str:
    """What runtime.cpu_path() must report in this process: the best path, or the one
    PSCOMPRESS_KERNEL forces ("unsupported:<name>" when this machine has no such path)."""
    forced = os.environ.get("PSCOMPRESS_KERNEL")
    if not forced:
        return machine_paths()[0]
    return forced if forced in machine_paths() else f"unsupported:{forced}"


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


def assert_clean(done: subprocess.CompletedProcess) -> None:
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    for marker in MARKERS:
        assert marker not in output, output[-4000:]
