"""The runtime cross-compiles for aarch64 (Raspberry Pi) and its NEON microkernels (fp32 and int8,
GEMM and depthwise) match the portable reference, run under qemu-user as a Cortex-A72 (the Pi 4's ARMv8.0 core)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_neon_microkernel_cross_compiles_and_matches_reference() -> None:
    build = ROOT / "build" / "runtime-aarch64"
    subprocess.run(["bash", str(ROOT / "runtime" / "scripts" / "cross_build_aarch64.sh"), str(build)],
                   check=True, capture_output=True, timeout=600)
    library = build / "libpscompress_ort.so"
    header = library.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
    for tester in ("ukernel_tester", "dwconv_tester", "qgemm_tester", "qdwconv_tester"):
        done = subprocess.run(["qemu-aarch64-static", "-L", "/usr/aarch64-linux-gnu", str(build / tester)],
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "QEMU_CPU": "cortex-a72"})
        assert done.returncode == 0, tester + ": " + done.stdout + done.stderr
        assert "neon: ok" in done.stdout and "dispatch picks: neon" in done.stdout, tester + ": " + done.stdout
