"""benchmarks/neon_mca.py finds the NEON GEMM kernel's multiply-add loop and llvm-mca times it."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import neon_mca  # noqa: E402

GEMM = ROOT / "runtime" / "src" / "ukernel_6x16_neon.cc"

# Two loops, the outer holding the inner and an fmla of its own; and a loop with no fmla.
NESTED = """\
f:
.L1:
\tfmla\tv0.4s, v1.4s, v2.s[0]
.L2:
\tldr\tq1, [x0], 16
\tfmla\tv3.4s, v1.4s, v2.s[1]
\tsubs\tx1, x1, 1
\tbne\t.L2
\tcbnz\tx2, .L1
.L3:
\tadd\tx3, x3, 1
\tb.ne\t.L3
\tret
"""


def test_the_innermost_fmla_loop_is_cut_out_of_assembly() -> None:
    [loop] = neon_mca.kernel_loops(NESTED)
    assert loop.label == ".L2" and loop.fmla == 1 and loop.loads == 1
    assert loop.body[-1] == "bne\t.L2"


@pytest.fixture(scope="module")
def gemm_loop(tmp_path_factory) -> neon_mca.Loop:
    subprocess.run(["bash", str(ROOT / "runtime" / "scripts" / "install_cross_tools.sh")], check=True, timeout=600)
    missing = [tool for tool in (neon_mca.CXX, neon_mca.DEFAULT_MCA, "cmake") if not shutil.which(tool)]
    if missing:  # a system where the script cannot install them
        pytest.skip(f"needs {', '.join(missing)} (Debian: g++-aarch64-linux-gnu, llvm, cmake)")
    work = tmp_path_factory.mktemp("neon-mca")
    [(entry, _)] = neon_mca.compile_commands([GEMM], neon_mca.compile_database(work)).values()
    options = neon_mca.to_assembly(entry, GEMM, work / "gemm.s")
    assert "-O3" in options and "-march=armv8-a" in options
    loops = neon_mca.kernel_loops((work / "gemm.s").read_text())
    assert loops, "no loop with fmla and a backward branch in the GEMM kernel's assembly"
    return max(loops, key=lambda loop: loop.fmla)


def test_the_full_tile_loop_does_24_fmla_per_iteration(gemm_loop: neon_mca.Loop) -> None:
    assert gemm_loop.fmla == 6 * 16 // 4  # one 4-lane fmla per accumulator
    assert neon_mca.BRANCH.match(gemm_loop.mnemonics()[-1]) and gemm_loop.branches == 1
    assert gemm_loop.stack_accesses == 0, "accumulators spilled to the stack"


@pytest.mark.parametrize("cpu", [cpu.name for cpu in neon_mca.CPUS])
def test_llvm_mca_gives_the_loop_a_throughput(gemm_loop: neon_mca.Loop, cpu: str) -> None:
    result = neon_mca.run_mca(gemm_loop, cpu)
    assert result.block_rthroughput > 0 and result.simulated_cycles > 0 and result.busiest
    # No model lets 24 fmla go faster than the fastest core here can issue them (2 a cycle).
    assert result.block_rthroughput >= gemm_loop.fmla / 2
