"""The runtime cross-compiles for aarch64 (Raspberry Pi) and its NEON microkernels (fp32 and int8,
GEMM and depthwise) match the portable reference, run under qemu-user as a Cortex-A72 (the Pi 4's ARMv8.0 core,
path neon) and as a Cortex-A76 (the Pi 5's ARMv8.2 core with the dot product, path neon-dot: its sdot kernel)."""
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
    for cpu, path in (("cortex-a72", "neon"), ("cortex-a76", "neon-dot")):
        printed = {}
        for tester in ("ukernel_tester", "dwconv_tester", "qgemm_tester", "qdwconv_tester"):
            done = subprocess.run(["qemu-aarch64-static", "-L", "/usr/aarch64-linux-gnu", str(build / tester)],
                                  capture_output=True, text=True, timeout=300, env={**os.environ, "QEMU_CPU": cpu})
            assert done.returncode == 0, f"{tester} on {cpu}: {done.stdout}{done.stderr}"
            printed[tester] = done.stdout.splitlines()
            assert f"dispatch picks: {path}" in printed[tester], f"{tester} on {cpu}: {done.stdout}"
        for tester in ("ukernel_tester", "dwconv_tester", "qdwconv_tester"):
            assert f"{path}: ok" in " ".join(printed[tester]), (tester, cpu, printed[tester])
        # The int8 dot kernel (sdot) runs where the CPU has the dot product, and only there.
        assert ("dots neon-dot: ok" in " ".join(printed["qgemm_tester"])) == (path == "neon-dot"), printed["qgemm_tester"]
        assert ("dots neon-dot: built, not run" in " ".join(printed["qgemm_tester"])) == (path == "neon"), \
            printed["qgemm_tester"]
        assert f"pairs {path}: ok" in " ".join(printed["qgemm_tester"]), printed["qgemm_tester"]
        assert "quad interleave: ok" in printed["qgemm_tester"], printed["qgemm_tester"]  # NEON's vst4q
