"""Static throughput of the NEON microkernels' inner loops, from llvm-mca: no board needed.

Every runtime/src/*_neon.cc and *_neondot.cc is compiled to assembly with aarch64-linux-gnu-g++ and the flags
the real aarch64 build gives it (read from CMake's compile database for
runtime/cmake/aarch64-linux-gnu.cmake), each innermost loop that holds multiply-accumulates is
cut out of the assembly, and llvm-mca estimates its cycles per iteration as a Cortex-A72 (Pi 4)
and a Cortex-A76 (Pi 5). A loop's class is its multiply-accumulate instruction: fmla (fp32),
smlal/smlal2 (the int8 kernel's int16 x int16 widening form) or sdot/udot (ARMv8.2 int8 dot
product). Pipe utilisation = that class's instructions per iteration / (cycles x the core's
issue limit for the class); MACs per cycle = lane multiply-adds per iteration / cycles, which
compares fp32 and int8 loops. Prints a table and a JSON document. Not a unit test;
docs/benchmarks/neon-mca.md has results.

    .venv/bin/python benchmarks/neon_mca.py [--json PATH] [--llvm-mca llvm-mca-19]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ROOT / "runtime"
TOOLCHAIN = RUNTIME / "cmake" / "aarch64-linux-gnu.cmake"
CXX = "aarch64-linux-gnu-g++"
CXXFILT = "aarch64-linux-gnu-c++filt"
DEFAULT_MCA = "llvm-mca"


@dataclass(frozen=True)
class Cpu:
    """A target core and the per-cycle limits Arm's software optimisation guide gives it."""
    name: str                  # llvm-mca's -mcpu
    board: str
    mac_issue: dict[str, int]  # per MacClass name, 128-bit instructions issued per cycle; a class
                               # left out has no figure from the guide (or no such instruction)
    load_pipes: int            # loads per cycle
    decode_width: int          # instructions decoded per cycle
    source: str


CPUS = (
    # Cortex-A72 Software Optimization Guide (Arm UAN 0016A). fmla: F0 and F1 are 64 bits wide
    # and both execute FMLA; a Q-form FMLA takes both, so one per cycle. smlal: §2.1 routes ASIMD
    # integer multiply µops to F0 alone and §3.14 (ASIMD integer instructions, multiply
    # accumulate long) gives SMLAL(2)/UMLAL(2) throughput 1 on F0. sdot: none, the A72 is
    # ARMv8.0 and the dot product is an ARMv8.2 extension.
    Cpu("cortex-a72", "Raspberry Pi 4", mac_issue={"fmla": 1, "smlal": 1}, load_pipes=1, decode_width=3,
        source="Cortex-A72 Software Optimization Guide (Arm UAN 0016A): FMLA on F0+F1 together, 1/cycle "
               "(8 SP flop/cycle, as measured by vfpbench on a 2.0 GHz A72); SMLAL(2) on F0 only, 1/cycle "
               "(§2.1, §3.14); no SDOT (ARMv8.0); one load pipe L; 3-wide decode"),
    # Cortex-A76 Software Optimization Guide (PJDOC-466751330-7215). fmla: §3.16 (ASIMD
    # floating-point instructions), FMLA on V0/V1, throughput 2. smlal: §3.15 (ASIMD integer
    # instructions, multiply accumulate long), SMLAL(2)/UMLAL(2) on V0 only, throughput 1.
    # sdot: the guide's dot-product row was not read here, so no limit is entered.
    Cpu("cortex-a76", "Raspberry Pi 5", mac_issue={"fmla": 2, "smlal": 1}, load_pipes=2, decode_width=4,
        source="Arm Cortex-A76 Software Optimization Guide (PJDOC-466751330-7215): FMLA on V0/V1, "
               "2/cycle (§3.16); SMLAL(2) on V0 only, 1/cycle (§3.15); two load/store pipes L0/L1; "
               "4-wide decode"),
    # No LLVM release up to 19 gives cortex-a76 a model of its own; newer ones (not 14) have one
    # for the Neoverse N1, which Arm derived from the Cortex-A76 core (the same FMLA and SMLAL rows).
    Cpu("neoverse-n1", "Pi 5 (A76 proxy)", mac_issue={"fmla": 2, "smlal": 1}, load_pipes=2, decode_width=4,
        source="Arm Neoverse N1 Software Optimization Guide: FMLA on V0/V1, throughput 2; SMLAL(2) on V0, "
               "throughput 1; two load/store pipes; 4-wide decode (the Cortex-A76's figures)"),
)


@dataclass(frozen=True)
class MacClass:
    """Multiply-accumulate instructions that share a row of the optimisation guides."""
    name: str
    mnemonics: frozenset[str]
    products_per_lane: int  # multiply-adds summed into each destination lane: four for a dot product


MAC_CLASSES = (
    MacClass("fmla", frozenset({"fmla"}), 1),                                 # fp32 kernels
    MacClass("smlal", frozenset({"smlal", "smlal2", "umlal", "umlal2"}), 1),  # int16 x int16 -> int32
    MacClass("sdot", frozenset({"sdot", "udot"}), 4),                         # int8 x4 -> int32, ARMv8.2
)
VECTOR_DESTINATION = re.compile(r"v\d+\.(\d+)[bhsd]$")  # v17.4s: 4 lanes; a scalar s0 is one

# llvm-mca names no model; its resource names tell which one it used.
MODEL_BY_RESOURCE_PREFIX = {"A57Unit": "CortexA57Model", "A53Unit": "CortexA53Model",
                            "CortexA55Unit": "CortexA55Model", "N1Unit": "NeoverseN1Model"}

CONDITIONS = "eq|ne|cs|hs|cc|lo|mi|pl|vs|vc|hi|ls|ge|lt|gt|le|al"
BRANCH = re.compile(rf"^(b|b\.?({CONDITIONS})|cbn?z|tbn?z)$")  # GCC writes bne, LLVM b.ne
LABEL = re.compile(r"^([\w.$]+):")
INSTRUCTION = re.compile(r"^\s+([a-z][\w.]*)\s*(.*?)\s*(?://.*)?$")


# --- compiling as the aarch64 build does ------------------------------------------------------

def neon_sources() -> list[Path]:
    """The NEON microkernel sources present now (more may be added: found by name)."""
    return sorted((RUNTIME / "src").glob("*_neon*.cc"))  # _neon.cc (ARMv8.0) and _neondot.cc (ARMv8.2 sdot)


def compile_database(build_dir: Path) -> list[dict]:
    """CMake's compile commands for the aarch64 cross build, configured in build_dir.

    The onnxruntime headers only reach custom_op.cc, so an empty stand-in lets CMake configure
    without fetching them."""
    stub = build_dir / "ort-stub"
    stub.mkdir(parents=True, exist_ok=True)
    (stub / "onnxruntime_cxx_api.h").touch()
    done = subprocess.run(
        ["cmake", "-S", str(RUNTIME), "-B", str(build_dir / "cmake"), "-DCMAKE_BUILD_TYPE=Release",
         f"-DCMAKE_TOOLCHAIN_FILE={TOOLCHAIN}", "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON",
         "-DPSCOMPRESS_TESTS=OFF", f"-DPSCOMPRESS_ORT_INCLUDE_DIR={stub}"],
        capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"cmake could not configure the aarch64 build:\n{done.stdout}\n{done.stderr}")
    return json.loads((build_dir / "cmake" / "compile_commands.json").read_text())


def compile_commands(sources: list[Path], database: list[dict]) -> dict[Path, tuple[dict, Path]]:
    """For each source, (its database entry, the file whose flags it uses).

    A NEON source that the CMake lists do not name yet gets the flags of one that they do."""
    entries = {Path(entry["file"]).resolve(): entry for entry in database}
    listed = [path for path in entries if path.name.endswith("_neon.cc")]
    if not listed:
        raise RuntimeError("the aarch64 build compiles no *_neon.cc file: nothing to take flags from")
    chosen = {}
    for source in sources:
        flags_from = source.resolve() if source.resolve() in entries else listed[0]
        chosen[source] = (entries[flags_from], flags_from)
    return chosen


def build_command(entry: dict) -> list[str]:
    """The entry's compiler and options: its command without the source, object and dependency files."""
    argv = entry["arguments"] if "arguments" in entry else shlex.split(entry["command"])
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("-o", "-MF", "-MT", "-MQ"):
            skip = True
        elif arg not in ("-c", "-MD", "-MMD", entry["file"]):
            kept.append(arg)
    return kept


def to_assembly(entry: dict, source: Path, out: Path) -> list[str]:
    """Compiles source to assembly in out as the entry compiles its file; returns the options used."""
    command = build_command(entry)
    subprocess.run([*command, "-S", "-o", str(out), str(source)], cwd=entry["directory"],
                   check=True, capture_output=True, text=True)
    return command[1:]


# --- finding the loops in the assembly --------------------------------------------------------

def class_of(mnemonic: str) -> MacClass | None:
    """The multiply-accumulate class of a mnemonic; None for any other instruction."""
    return next((kind for kind in MAC_CLASSES if mnemonic in kind.mnemonics), None)


def macs(instruction: str) -> int:
    """Lane multiply-adds one multiply-accumulate does: smlal v0.4s = 4, sdot v0.4s = 16."""
    mnemonic, operands = instruction.split(None, 1)
    lanes = VECTOR_DESTINATION.match(operands.split(",")[0].strip())
    return (int(lanes.group(1)) if lanes else 1) * class_of(mnemonic).products_per_lane


@dataclass
class Loop:
    function: str
    label: str
    body: list[str]  # the instructions from the loop's label down to its backward branch

    def mnemonics(self) -> list[str]:
        return [line.split()[0] for line in self.body]

    @property
    def mac_class(self) -> str | None:
        """The class of most of the loop's multiply-accumulates (None without any)."""
        names = [kind.name for kind in map(class_of, self.mnemonics()) if kind]
        return max(set(names), key=names.count) if names else None

    def mac_instructions(self) -> list[str]:
        """The loop's multiply-accumulates of its class."""
        name = self.mac_class
        return [line for line, mnemonic in zip(self.body, self.mnemonics())
                if (kind := class_of(mnemonic)) and kind.name == name]

    @property
    def mac_count(self) -> int:
        return len(self.mac_instructions())

    @property
    def macs(self) -> int:
        """Lane multiply-adds per iteration."""
        return sum(map(macs, self.mac_instructions()))

    @property
    def loads(self) -> int:
        return sum(m.startswith("ld") for m in self.mnemonics())

    @property
    def stack_accesses(self) -> int:
        """Loads and stores to the stack inside the loop: register spills."""
        return sum("[sp" in line for line in self.body)

    @property
    def branches(self) -> int:
        return sum(bool(BRANCH.match(m)) for m in self.mnemonics())


def functions(assembly: str) -> dict[str, list[str]]:
    """Each function's lines, keyed by its symbol (GCC: a label without the .L prefix)."""
    found: dict[str, list[str]] = {}
    current = None
    for line in assembly.splitlines():
        label = LABEL.match(line)
        if label and not label.group(1).startswith("."):
            current = label.group(1)
            found[current] = []
        elif current is not None:
            found[current].append(line)
    return found


def backward_branches(lines: list[str]) -> list[tuple[int, int, str]]:
    """(label line, branch line, label) for every branch to a label above it that the label reaches.

    GCC moves cold blocks (the int8 kernel's odd-k tap) below the function's return and ends them
    with a `b` back up: such a branch is no loop, as control from the label never gets to it."""
    seen: dict[str, int] = {}
    loops = []
    for index, line in enumerate(lines):
        label = LABEL.match(line)
        if label:
            seen[label.group(1)] = index
            continue
        instruction = INSTRUCTION.match(line)
        if instruction and BRANCH.match(instruction.group(1)):
            target = branch_target(instruction.group(2))
            if target in seen and reaches(lines, seen[target], index):
                loops.append((seen[target], index, target))
    return loops


def branch_target(operands: str) -> str:
    return operands.split(",")[-1].strip()


def reaches(lines: list[str], start: int, end: int) -> bool:
    """Whether control entering lines[start] can get to lines[end] without leaving that span."""
    labels = {label.group(1): index for index in range(start, end + 1) if (label := LABEL.match(lines[index]))}
    todo, visited = [start], set()
    while todo:
        index = todo.pop()
        if index == end:
            return True
        if index not in visited and index < end:
            visited.add(index)
            todo += successors(lines[index], index, labels)
    return False


def successors(line: str, index: int, labels: dict[str, int]) -> list[int]:
    """The lines control goes to after this one, among labels (a branch elsewhere leaves the span)."""
    instruction = INSTRUCTION.match(line)
    if not instruction:
        return [index + 1]
    mnemonic, operands = instruction.groups()
    if mnemonic in ("ret", "br"):
        return []
    if not BRANCH.match(mnemonic):
        return [index + 1]
    taken = [labels[target]] if (target := branch_target(operands)) in labels else []
    return taken if mnemonic == "b" else [index + 1, *taken]


def instructions(lines: list[str]) -> list[str]:
    """The instructions among assembly lines (no labels, directives or comments), tab-free."""
    found = []
    for line in lines:
        instruction = INSTRUCTION.match(line)
        if instruction and not instruction.group(1).startswith("."):
            found.append(f"{instruction.group(1)}\t{instruction.group(2)}".rstrip())
    return found


def innermost_mac_loops(function: str, lines: list[str]) -> list[Loop]:
    """The loops of a function that multiply-accumulate and hold no other loop that does.

    A loop nesting one without multiply-accumulates (a copy, say) still counts: its body then
    spans several basic blocks, which Loop.branches shows."""
    loops = {(start, end): Loop(function, label, instructions(lines[start + 1:end + 1]))
             for start, end, label in backward_branches(lines)}
    mac_spans = [span for span, loop in loops.items() if loop.mac_class]
    return [loops[(start, end)] for start, end in mac_spans
            if not any(start <= s and e <= end and (s, e) != (start, end) for s, e in mac_spans)]


def kernel_loops(assembly: str) -> list[Loop]:
    return [loop for name, lines in functions(assembly).items() for loop in innermost_mac_loops(name, lines)]


def demangle(symbols: list[str]) -> dict[str, str]:
    """Short readable names: tile<6ul> for pscompress::(anonymous namespace)::tile<6ul>(...)."""
    done = subprocess.run([CXXFILT], input="\n".join(symbols), capture_output=True, text=True, check=True)
    return dict(zip(symbols, map(unqualified, done.stdout.splitlines())))


def unqualified(name: str) -> str:
    """The last component of a demangled name, without return type, arguments or namespaces."""
    name = re.sub(r"\([^()]*\)$", "", name.replace("(anonymous namespace)", "anonymous"))
    name = re.sub(r"(?:\w+::)+", "", name)
    depth, start = 0, 0
    for index, char in enumerate(name):
        depth += {"<": 1, ">": -1}.get(char, 0)
        if depth == 0 and char == " ":
            start = index + 1
    return name[start:]


# --- llvm-mca ---------------------------------------------------------------------------------

@dataclass
class McaResult:
    model: str
    block_rthroughput: float     # cycles per iteration, llvm-mca's static bound
    simulated_cycles: float      # cycles per iteration in its simulation of many iterations
    pressure: dict[str, float]   # cycles per iteration on each resource
    busiest: list[str]           # the resources with the most pressure: the bottleneck
    backend_pressure: str        # llvm-mca's -bottleneck-analysis summary


def known_cpus(mca: str) -> set[str]:
    done = subprocess.run([mca, "-mtriple=aarch64", "-mcpu=help"], capture_output=True, text=True)
    return {m.group(1) for m in re.finditer(r"^\s+([\w.-]+)\s+- Select the \S+ processor", done.stdout + done.stderr, re.M)}


def run_mca(loop: Loop, cpu: str, mca: str = DEFAULT_MCA) -> McaResult:
    with tempfile.NamedTemporaryFile("w", suffix=".s") as source:
        source.write(f"{loop.label}:\n" + "".join(f"\t{line}\n" for line in loop.body))
        source.flush()
        done = subprocess.run([mca, "-mtriple=aarch64", f"-mcpu={cpu}", "-iterations=200",
                               "-bottleneck-analysis", source.name],
                              capture_output=True, text=True, check=True)
    return parse_mca(done.stdout)


def number_after(pattern: str, report: str) -> float:
    return float(re.search(pattern, report).group(1))


def parse_mca(report: str) -> McaResult:
    resources = re.findall(r"^\[([\d.]+)\]\s+- (\S+)$", report, re.M)
    pressure_rows = report.split("Resource pressure per iteration:\n", 1)[1].splitlines()
    values = [0.0 if v == "-" else float(v) for v in pressure_rows[1].split()]
    pressure = {f"{name}[{slot}]" if "." in slot else name: value
                for (slot, name), value in zip(resources, values)}
    peak = max(pressure.values())
    names = [name for _, name in resources]
    prefix = os.path.commonprefix(names)
    bottleneck = re.search(r"Resource Pressure\s+\[\s*([\d.]+)%\s*\].*?Data Dependencies:\s+\[\s*([\d.]+)%", report, re.S)
    return McaResult(
        model=MODEL_BY_RESOURCE_PREFIX.get(prefix, f"a model with units {prefix}*"),
        block_rthroughput=number_after(r"Block RThroughput:\s+([\d.]+)", report),
        simulated_cycles=(number_after(r"Total Cycles:\s+(\d+)", report)
                          / number_after(r"Iterations:\s+(\d+)", report)),
        pressure=pressure, busiest=[name for name, value in pressure.items() if value == peak],
        backend_pressure=(f"resources {bottleneck.group(1)}%, data dependencies {bottleneck.group(2)}% of cycles"
                          if bottleneck else "no bottleneck found"))


# --- the analysis -----------------------------------------------------------------------------

def guide_bound(loop: Loop, cpu: Cpu) -> float | None:
    """Cycles per iteration that the guide's pipe counts allow: the busiest of the loop's
    multiply-accumulate pipe, loads and decode. None where the guide gives no figure for its class."""
    issue = cpu.mac_issue.get(loop.mac_class)
    if issue is None:
        return None
    return max(loop.mac_count / issue, loop.loads / cpu.load_pipes, len(loop.body) / cpu.decode_width)


def utilisation(loop: Loop, cycles: float | None, cpu: Cpu) -> float | None:
    """The share of the class's issue slots the loop fills at that many cycles per iteration."""
    issue = cpu.mac_issue.get(loop.mac_class)
    return None if issue is None or cycles is None else loop.mac_count / (cycles * issue)


def analyse_loop(kernel: str, name: str, loop: Loop, cpu: Cpu, known: bool, mca_tool: str) -> dict:
    mca = run_mca(loop, cpu.name, mca_tool)
    bound = guide_bound(loop, cpu)
    return dict(
        kernel=kernel, loop=name, label=loop.label, cpu=cpu.name, board=cpu.board, cpu_known_to_llvm_mca=known,
        model=mca.model, instructions=len(loop.body), mac_class=loop.mac_class, mac_instructions=loop.mac_count,
        macs=loop.macs, mac_issue_per_cycle=cpu.mac_issue.get(loop.mac_class), loads=loop.loads,
        stack_accesses=loop.stack_accesses, branches=loop.branches,
        cycles=mca.block_rthroughput, simulated_cycles=round(mca.simulated_cycles, 2),
        pipe_utilisation=utilisation(loop, mca.block_rthroughput, cpu),
        macs_per_cycle=loop.macs / mca.block_rthroughput,
        guide_cycles=bound, guide_pipe_utilisation=utilisation(loop, bound, cpu),
        guide_macs_per_cycle=None if bound is None else loop.macs / bound,
        bottleneck=mca.busiest, bottleneck_cycles=mca.pressure[mca.busiest[0]],
        backend_pressure=mca.backend_pressure, body=loop.body)


def analyse(work: Path, mca: str = DEFAULT_MCA) -> dict:
    sources = neon_sources()
    commands = compile_commands(sources, compile_database(work))
    known = known_cpus(mca)
    rows, flags = [], {}
    for source, (entry, flags_from) in commands.items():
        options = to_assembly(entry, source, work / f"{source.stem}.s")
        loops = kernel_loops((work / f"{source.stem}.s").read_text())
        names = demangle(sorted({loop.function for loop in loops}))
        flags[source.name] = dict(flags=options, flags_from=flags_from.name, mac_loops=len(loops))
        for loop in sorted(loops, key=lambda loop: names[loop.function]):
            rows += [analyse_loop(source.name, names[loop.function], loop, cpu, cpu.name in known, mca)
                     for cpu in CPUS if runs_on(source, cpu)]
    return dict(
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        compiler=first_line([CXX, "--version"]), llvm_mca=first_line([mca, "--version"], "LLVM version"),
        sources=flags, cpus=[asdict(cpu) for cpu in CPUS], loops=rows)


def runs_on(source: Path, cpu: Cpu) -> bool:
    """A _neondot.cc kernel needs ARMv8.2's dot product: the Pi 4's A72 (ARMv8.0) never runs it."""
    return not source.stem.endswith("_neondot") or cpu.name != "cortex-a72"


def first_line(argv: list[str], containing: str = "") -> str:
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return next(line.strip() for line in out.splitlines() if containing in line)


def print_table(document: dict) -> None:
    print(f"{document['compiler']}; {document['llvm_mca']}; {document['date']}")
    for name, record in document["sources"].items():
        print(f"{name}: {' '.join(record['flags'])} (flags of {record['flags_from']}), "
              f"{record['mac_loops'] or 'NO'} innermost multiply-accumulate loops")
    for cpu in CPUS:
        rows = [row for row in document["loops"] if row["cpu"] == cpu.name]
        known = "known to llvm-mca" if all(row["cpu_known_to_llvm_mca"] for row in rows) else "NOT known to llvm-mca"
        models = ", ".join(sorted({row["model"] for row in rows}))
        print(f"{cpu.name} ({cpu.board}): {known}, scheduled with {models}; per cycle {cpu.mac_issue}: {cpu.source}")
    print(f"{'kernel':24} {'loop':18} {'cpu':11} {'model':15} {'insns':>5} {'class':5} {'mac':>3} {'MACs':>4} "
          f"{'lds':>3} {'spill':>5} {'mca c/it':>8} {'pipe %':>6} {'MAC/c':>5} {'guide c/it':>10} {'pipe %':>6} "
          f"{'MAC/c':>5}  bottleneck (llvm-mca)")
    for row in document["loops"]:
        print(f"{row['kernel']:24} {row['loop']:18} {row['cpu']:11} {row['model']:15} {row['instructions']:5} "
              f"{row['mac_class']:5} {row['mac_instructions']:3} {row['macs']:4} {row['loads']:3} "
              f"{row['stack_accesses']:5} {row['cycles']:8.2f} {percent(row['pipe_utilisation']):>6} "
              f"{row['macs_per_cycle']:5.2f} {figure(row['guide_cycles']):>10} "
              f"{percent(row['guide_pipe_utilisation']):>6} {figure(row['guide_macs_per_cycle']):>5}  "
              f"{'+'.join(row['bottleneck'])} {row['bottleneck_cycles']:.1f} c/it; {row['backend_pressure']}")


def percent(share: float | None) -> str:
    return "n/a" if share is None else f"{100 * share:.0f}%"


def figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="PATH", help="also write the JSON document to PATH")
    parser.add_argument("--llvm-mca", default=DEFAULT_MCA, metavar="PROGRAM",
                        help=f"the llvm-mca to run (default {DEFAULT_MCA}; e.g. llvm-mca-19)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="neon-mca-") as work:
        document = analyse(Path(work), args.llvm_mca)
    print_table(document)
    if args.json:
        Path(args.json).write_text(json.dumps(document, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
