"""benchmarks/neon_mca.py finds the NEON kernels' multiply-accumulate loops and llvm-mca times them."""
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
QGEMM = ROOT / "runtime" / "src" / "qgemm_6x16_neon.cc"
QDOT = ROOT / "runtime" / "src" / "qdot_6x16_neondot.cc"

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

# An smlal loop, then a cold block below the return that branches back up (as GCC lays out the
# int8 kernel's odd-k tap): that branch is no loop, though it holds multiply-accumulates.
COLD_TAIL = """\
g:
.L1:
\tsmlal\tv0.4s, v1.4h, v2.h[0]
\tsmlal2\tv3.4s, v1.8h, v2.h[0]
\tsubs\tx1, x1, 1
\tbne\t.L1
\tcbnz\tx2, .L9
.L2:
\tret
.L9:
\tsdot\tv4.4s, v5.16b, v6.4b[0]
\tb\t.L2
"""


def test_the_innermost_fmla_loop_is_cut_out_of_assembly() -> None:
    [loop] = neon_mca.kernel_loops(NESTED)
    assert loop.label == ".L2" and loop.mac_class == "fmla" and loop.mac_count == 1 and loop.loads == 1
    assert loop.body[-1] == "bne\t.L2"


def test_a_branch_back_from_a_cold_block_is_no_loop() -> None:
    [loop] = neon_mca.kernel_loops(COLD_TAIL)
    assert loop.label == ".L1" and loop.mac_class == "smlal" and loop.mac_count == 2
    assert loop.macs == 2 * 4


@pytest.mark.parametrize("instruction, macs", [
    ("fmla\tv0.4s, v1.4s, v2.s[0]", 4), ("fmla\ts0, s1, v2.s[1]", 1),
    ("smlal2\tv3.4s, v1.8h, v2.h[7]", 4), ("smlal\tv3.2d, v1.2s, v2.s[1]", 2),
    ("udot\tv4.4s, v5.16b, v6.16b", 16), ("sdot\tv4.2s, v5.8b, v6.4b[3]", 8)])
def test_macs_count_lane_multiply_adds(instruction: str, macs: int) -> None:
    assert neon_mca.macs(instruction) == macs


@pytest.fixture(scope="module")
def database(tmp_path_factory) -> tuple[Path, list[dict]]:
    """A work folder and CMake's compile database for the aarch64 build."""
    subprocess.run(["bash", str(ROOT / "runtime" / "scripts" / "install_cross_tools.sh")], check=True, timeout=600)
    missing = [tool for tool in (neon_mca.CXX, neon_mca.DEFAULT_MCA, "cmake") if not shutil.which(tool)]
    if missing:  # a system where the script cannot install them
        pytest.skip(f"needs {', '.join(missing)} (Debian: g++-aarch64-linux-gnu, llvm, cmake)")
    work = tmp_path_factory.mktemp("neon-mca")
    return work, neon_mca.compile_database(work)


def full_tile_loop(source: Path, database: tuple[Path, list[dict]]) -> neon_mca.Loop:
    """The source's loop with the most multiply-accumulates: the 6-row tile's."""
    work, entries = database
    [(entry, _)] = neon_mca.compile_commands([source], entries).values()
    options = neon_mca.to_assembly(entry, source, work / f"{source.stem}.s")
    assert "-O3" in options and "-march=armv8-a" in options
    loops = neon_mca.kernel_loops((work / f"{source.stem}.s").read_text())
    assert loops, f"no multiply-accumulate loop with a backward branch in {source.name}'s assembly"
    return max(loops, key=lambda loop: loop.mac_count)


@pytest.fixture(scope="module")
def gemm_loop(database: tuple[Path, list[dict]]) -> neon_mca.Loop:
    return full_tile_loop(GEMM, database)


@pytest.fixture(scope="module")
def qgemm_loop(database: tuple[Path, list[dict]]) -> neon_mca.Loop:
    return full_tile_loop(QGEMM, database)


def test_the_full_tile_loop_does_24_fmla_per_iteration(gemm_loop: neon_mca.Loop) -> None:
    assert gemm_loop.mac_class == "fmla" and gemm_loop.mac_count == 6 * 16 // 4  # one per accumulator
    assert neon_mca.BRANCH.match(gemm_loop.mnemonics()[-1]) and gemm_loop.branches == 1
    assert gemm_loop.stack_accesses == 0, "accumulators spilled to the stack"


@pytest.mark.parametrize("cpu", [cpu.name for cpu in neon_mca.CPUS])
def test_llvm_mca_gives_the_loop_a_throughput(gemm_loop: neon_mca.Loop, cpu: str) -> None:
    result = neon_mca.run_mca(gemm_loop, cpu)
    assert result.block_rthroughput > 0 and result.simulated_cycles > 0 and result.busiest
    # No model lets 24 fmla go faster than the fastest core here can issue them (2 a cycle).
    assert result.block_rthroughput >= gemm_loop.mac_count / 2


def test_the_int8_full_tile_loop_is_an_smlal_loop(qgemm_loop: neon_mca.Loop) -> None:
    # Two taps per iteration, each an smlal or smlal2 per 4-pixel accumulator of 6 rows x 16 pixels.
    assert qgemm_loop.mac_class == "smlal" and qgemm_loop.mac_count == 2 * 6 * 16 // 4
    assert qgemm_loop.macs == 2 * 6 * 16 and qgemm_loop.branches == 1
    assert qgemm_loop.stack_accesses == 0, "accumulators spilled to the stack"


@pytest.mark.parametrize("cpu", neon_mca.CPUS, ids=lambda cpu: cpu.name)
def test_the_int8_loop_stays_within_the_smlal_limit(qgemm_loop: neon_mca.Loop, cpu: neon_mca.Cpu) -> None:
    row = neon_mca.analyse_loop(QGEMM.name, "tile<6>", qgemm_loop, cpu, True, neon_mca.DEFAULT_MCA)
    assert row["mac_class"] == "smlal"
    limit = cpu.mac_issue["smlal"] * qgemm_loop.macs / qgemm_loop.mac_count  # MACs per cycle
    assert 0 < row["macs_per_cycle"] <= limit
    assert 0 < row["pipe_utilisation"] <= 1


def test_the_sdot_kernel_loop_is_24_sdot_unspilled_and_timed_for_the_pi5_only(database) -> None:
    """qdot_6x16_neondot.cc, built for ARMv8.2 with the dot product: its 6-row tile does one sdot per row and 4
    pixels (16 MACs each), its accumulators stay in registers, and the Pi 4's core, which has no sdot, is left out."""
    loop = full_tile_loop(QDOT, database)
    assert loop.mac_class == "sdot" and loop.mac_count == 6 * 16 // 4 and loop.macs == 6 * 16 * 4
    assert loop.stack_accesses == 0, "accumulators spilled to the stack"
    assert not neon_mca.runs_on(QDOT, next(cpu for cpu in neon_mca.CPUS if cpu.name == "cortex-a72"))
    assert all(neon_mca.runs_on(QDOT, cpu) for cpu in neon_mca.CPUS if cpu.name != "cortex-a72")
