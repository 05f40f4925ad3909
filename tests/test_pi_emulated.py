"""Emulated Raspberry Pi 4 (Cortex-A72) and Pi 5 (Cortex-A76): the aarch64 wheel from
scripts/build-pi-wheel.sh, installed as a Pi installs it, runs under qemu-user in a Debian arm64
bookworm sysroot (scripts/setup-pi-emulator.sh); every output is compared with the
workstation's x86-64 result. Emulation is ~300x slower than a Pi: models stay small and no
time is read off it. Each board runs all its models in one emulated process (start-up alone
takes seconds there)."""
from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import fuzz_cases
import pi_emulator
import pi_models

pytestmark = pytest.mark.slow
pytest_plugins = ["asan_build"]  # the asan_build fixture: the build holds psconv_tester

RTOL = 1e-4
# The differential fuzzer's generator (runtime/tests/fuzz_cases.py) on the boards: small valid
# cases only (emulation), native NEON and the portable functions, each against the host's
# float64 oracle. About 30 s per board.
NEON_FUZZ_SEED, NEON_FUZZ_CASES, NEON_FUZZ_BATCH = 2025, 300, 60
NEON_FUZZ_MACS = 20_000


def _save(model: onnx.ModelProto, path) -> str:
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return str(path)


def conv_relu_model(rng: np.random.Generator) -> onnx.ModelProto:
    """A standard strided, padded Conv + Relu: what stock onnxruntime runs everywhere."""
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["t"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 1]),
         helper.make_node("Relu", ["t"], ["y"])],
        "conv_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 17, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8, 9, 16])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def assert_close(emulated: np.ndarray, host: np.ndarray) -> None:
    assert emulated.shape == host.shape and emulated.dtype == host.dtype
    scale = float(np.abs(host).max())
    assert scale > 0, "a comparison of all-zero outputs proves nothing"
    np.testing.assert_allclose(emulated, host, rtol=RTOL, atol=RTOL * scale)


def _host_run(model_path: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """x86-64 outputs from stock onnxruntime (standard operators only)."""
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})


def _save_feeds(folder: Path, feeds: dict[str, np.ndarray]) -> dict[str, str]:
    paths = {}
    for name, value in feeds.items():
        paths[name] = str(folder / f"{name}.npy")
        np.save(paths[name], value)
    return paths


@pytest.fixture(scope="module")
def emulator():
    pi_emulator.set_up()


@pytest.fixture(scope="module")
def pi_wheel(emulator, tmp_path_factory) -> Path:
    return pi_emulator.build_pi_wheel(tmp_path_factory.mktemp("pi-wheel"))


@pytest.fixture(scope="module")
def pi_site(pi_wheel, tmp_path_factory) -> Path:
    """What `pip install pscompress-...aarch64.whl` puts on a Pi (the light install)."""
    site = tmp_path_factory.mktemp("pi-site")
    pi_emulator.install_site(site, str(pi_wheel))
    return site


@pytest.fixture(scope="module")
def workloads(exported, tmp_path_factory):
    """The emulated boards' job cases and the x86-64 outputs each is compared with."""
    

    folder = tmp_path_factory.mktemp("pi-workloads")
    cases, expected = [], {}
    rng = np.random.default_rng(2024)

    # Stock onnxruntime on a standard Conv: the emulated platform itself is sound.
    conv = _save(conv_relu_model(rng), folder / "conv.onnx")
    feeds = {"x": rng.random((2, 3, 17, 16), dtype=np.float32)}
    cases.append({"name": "stock_conv", "model": conv, "inputs": _save_feeds(folder, feeds), "native": None})
    expected["stock_conv"] = _host_run(conv, feeds)

    # PSConv nodes reaching every path of the native kernel, against the dense-Conv oracle.
    # Two threads: tiles are shared out through onnxruntime's pool, as on a real Pi.
    psconv, oracle, feeds = pi_models.build(rng)
    psconv_path = _save(psconv, folder / "psconv.onnx")
    cases.append({"name": "coverage", "model": psconv_path, "inputs": _save_feeds(folder, feeds), "native": True,
                  "threads": 2})
    expected["coverage"] = _host_run(_save(oracle, folder / "oracle.onnx"), feeds)

    # A ResNet-20 (4of9) exported by pscompress, on Fashion-MNIST test images, with the native
    # kernels and through its portable functions; the x86-64 portable run is the reference.
    model, _, _ = exported("resnet20", "4of9")
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feeds = {session.get_inputs()[0].name: np.concatenate([pi_models.fashion_mnist_image(k) for k in range(4)])}
    paths = _save_feeds(folder, feeds)
    for name, native in (("exported_native", True), ("exported_portable", False)):
        cases.append({"name": name, "model": str(model), "inputs": paths, "native": native, "threads": 2})
    expected["exported"] = _host_run(str(model), feeds)

    # The trained 4of9 sample quantized by `pscompress quantize` (QLinearPSConv): natively on the board (the
    # Pi 4's pair kernel, the Pi 5's sdot kernel), against the x86-64 run of its portable functions (QLinearConv).
    from pscompress.exporters.onnx_export import export_onnx
    from pscompress.workstation.checkpoint import load_model
    from pscompress.workstation.quantize import quantize_file

    fp32, int8 = folder / "sample-fp32.onnx", folder / "sample-int8.onnx"
    export_onnx(load_model(pi_emulator.ROOT / "samples" / "fashion_resnet20_4of9.pt"), fp32)
    quantize_file(fp32, "fashion-mnist", int8, calibration=32, progress=False)
    feeds = {"input": np.concatenate([pi_models.fashion_mnist_image(k) for k in range(8)])}
    (folder / "int8").mkdir()  # its own input files: _save_feeds names them by input
    cases.append({"name": "int8_native", "model": str(int8), "inputs": _save_feeds(folder / "int8", feeds),
                  "native": True, "threads": 2})
    expected["int8"] = _host_run(str(int8), feeds)

    # Differential fuzz cases, NEON against the portable functions and the oracle.
    expected["neon_fuzz"] = []
    fuzz = neon_fuzz_cases()
    for start in range(0, len(fuzz), NEON_FUZZ_BATCH):
        batch, name = fuzz[start:start + NEON_FUZZ_BATCH], f"neon_fuzz{start // NEON_FUZZ_BATCH}"
        parts = [fuzz_cases.case_parts(c) for c in batch]
        path = str(folder / f"{name}.onnx")
        onnx.save(fuzz_cases.build_model(parts, portable=True), path)  # unknown shapes, as the fuzzer's
        batch_folder = folder / name
        batch_folder.mkdir()
        paths = _save_feeds(batch_folder, {k: v for part in parts for k, v in part[3].items()})
        for native in (True, False):
            cases.append({"name": f"{name}_{'native' if native else 'portable'}", "model": path, "inputs": paths,
                          "native": native, "threads": 1, "tolerate_errors": True})
        expected["neon_fuzz"].append((name, batch))

    # The user's path on a Pi: `pscompress run` on a PNG, in the light install (no PyTorch).
    png = folder / "boot.png"
    Image.fromarray((pi_models.fashion_mnist_image(0)[0, 0] * 255).round().astype(np.uint8)).save(png)
    cases.append({"name": "cli", "argv": ["run", str(model), "--input", str(png), "-k", "3", "--native"]})
    host_cli = subprocess.run([str(Path(sys.executable).with_name("pscompress")), "run", str(model), "--input",
                               str(png), "-k", "3", "--no-native"], capture_output=True, text=True, check=True)
    expected["cli"] = host_cli.stdout
    return cases, expected


@pytest.fixture(scope="module", params=pi_emulator.BOARDS)
def board_run(request, pi_site, workloads, tmp_path_factory):
    """(board, result of all workloads on it, expected outputs)."""
    cases, expected = workloads
    folder = tmp_path_factory.mktemp(f"pi-{request.param}")
    result = pi_emulator.run_job(request.param, pi_site, {"out": str(folder), "cases": cases}, folder)
    return request.param, result, expected


def _outputs(result: dict, name: str) -> list[np.ndarray]:
    return [np.load(p) for p in result["cases"][name]["outputs"]]


def test_pi_wheel_is_an_aarch64_light_install(pi_wheel, pi_site):
    name, version, python_tag, abi, platform = pi_wheel.stem.split("-")
    assert (name, python_tag, abi) == ("pscompress", "py3", "none")
    glibc = re.fullmatch(r"manylinux_2_(\d+)_aarch64", platform)
    assert glibc and int(glibc.group(1)) <= 36, f"{platform}: must install on Raspberry Pi OS bookworm (glibc 2.36)"
    with zipfile.ZipFile(pi_wheel) as zf:
        names = set(zf.namelist())
        (library,) = [n for n in names if n.endswith(".so")]
        header = zf.read(library)[:20]
    # Every module of the source tree ships (pyproject's package-dir maps the top-level folders).
    root = pi_emulator.ROOT
    sources = {f"pscompress/{p.relative_to(root / 'pscompress')}" for p in (root / "pscompress").rglob("*.py")}
    sources |= {f"pscompress/exporters/{p.name}" for p in (root / "exporters").glob("*.py")}
    sources |= {f"pscompress/runtime/{p.name}" for p in (root / "runtime" / "python").glob("*.py")}
    assert sources <= names, f"missing from the wheel: {sorted(sources - names)}"
    assert library == "pscompress/runtime/libpscompress_ort.so"
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
    installed = {p.name.split("-")[0].lower() for p in pi_site.glob("*.dist-info")}
    assert {"pscompress", "numpy", "onnxruntime", "click", "tqdm", "pillow"} <= installed
    assert not installed & {"torch", "onnx", "onnxscript", "scipy"}, f"the light install pulled {installed}"


def test_emulated_board_runs_the_installed_neon_library(board_run, pi_site):
    board, result, _ = board_run
    assert result["machine"] == "aarch64"
    assert result["onnxruntime"] == ort.__version__
    assert result["native_available"] and result["cpu_path"] == {"pi4": "neon", "pi5": "neon-dot"}[board]
    assert result["library_path"].startswith(str(pi_site))


def test_stock_onnxruntime_conv_matches_x86(board_run):
    _, result, expected = board_run
    (want,) = expected["stock_conv"]
    assert (want > 0).any() and (want == 0).any(), "Relu should clip part of the output"
    (got,) = _outputs(result, "stock_conv")
    assert_close(got, want)


def test_native_neon_kernel_matches_x86_oracle_on_every_path(board_run):
    _, result, expected = board_run
    # The native kernels ran: the profile names the custom operators, and nothing else ran.
    assert set(result["cases"]["coverage"]["op_names"]) == {"PSConv", "PSConvAdd"}
    got = _outputs(result, "coverage")
    assert len(got) == len(expected["coverage"]) == len(pi_models.CASES)
    for case, want, out in zip(pi_models.CASES, expected["coverage"], got):
        assert np.unique(want).size > 1, f"{case.name}: a constant output proves nothing"
        assert_close(out, want)


def test_int8_file_runs_natively_as_onnxruntime_runs_it_on_x86(board_run):
    """Each element within 1 LSB per layer (docs/quantize.md): through the 19 layers, the classes agree and the
    logits stay within a few output quantization steps."""
    board, result, expected = board_run
    assert "QLinearPSConv" in result["cases"]["int8_native"]["op_names"], board  # the native int8 kernels ran
    (got,), (want,) = _outputs(result, "int8_native"), expected["int8"]
    assert np.abs(want - want[0]).max() > 0.01 * np.abs(want).max(), "the images should get different logits"
    assert (got.argmax(axis=1) == want.argmax(axis=1)).all(), board
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max(), board


def test_exported_model_native_and_portable_match_x86(board_run):
    _, result, expected = board_run
    native, portable = result["cases"]["exported_native"], result["cases"]["exported_portable"]
    # Native: the custom operators ran. Portable: onnxruntime inlined their ONNX functions.
    assert {"PSConv", "PSConvAdd"} <= set(native["op_names"])
    assert not {"PSConv", "PSConvAdd"} & set(portable["op_names"])
    assert any("Conv" in op for op in portable["op_names"])  # Conv, or FusedConv after fusion
    (want,) = expected["exported"]
    assert np.abs(want - want[0]).max() > 0.01 * np.abs(want).max(), "the images should get different logits"
    for name in ("exported_native", "exported_portable"):
        (got,) = _outputs(result, name)
        assert_close(got, want)
        assert (got.argmax(axis=1) == want.argmax(axis=1)).all()


def neon_fuzz_cases() -> list[fuzz_cases.Case]:
    """The first NEON_FUZZ_CASES cases of the fuzzer's seed that are small enough to emulate."""
    chosen, index = [], 0
    while len(chosen) < NEON_FUZZ_CASES:
        case = fuzz_cases.generate(NEON_FUZZ_SEED, index)
        index += 1
        a, (n, m, oh, ow) = case.attrs, case.output_shape
        (kh, kw), (pt, pl, pb, pr) = a["kernel_shape"], a["pads"]
        if max(n, 1) * max(m * oh * ow * a["in_channels"] // a["group"] * kh * kw,
                           a["in_channels"] * (case.h + pt + pb) * (case.w + pl + pr)) <= NEON_FUZZ_MACS:
            chosen.append(case)
    return chosen


def test_neon_differential_fuzz_matches_the_oracle(board_run):
    """Every case on the board, native (NEON) and through the portable functions, against the
    host's float64 oracle (fuzz_cases.compare: NaN and Inf exact, finite values within float32
    rounding): so the NEON path also agrees with the portable functions, case by case."""
    board, result, expected = board_run
    problems = []
    for name, batch in expected["neon_fuzz"]:
        span = f"cases {NEON_FUZZ_SEED}:{batch[0].index}..{batch[-1].index}"
        for kind in ("native", "portable"):
            entry = result["cases"][f"{name}_{kind}"]
            if "error" in entry:
                problems.append(f"{board} {kind} {name} ({span}): {entry['error']}")
                continue
            ops = set(entry["op_names"])
            ran_native = {"PSConv", "PSConvAdd"} & ops
            if (kind == "native") != bool(ran_native) or (kind == "native" and ops - {"PSConv", "PSConvAdd"}):
                problems.append(f"{board} {kind} {name}: ran {sorted(ops)}")
            for case, path in zip(batch, entry["outputs"]):
                verdict = fuzz_cases.compare(np.load(path), *fuzz_cases.oracle(case))
                if verdict:
                    problems.append(f"{board} {'neon' if kind == 'native' else kind}/{verdict[0]} case="
                                    f"{case.seed}:{case.index} {case.describe()} :: {verdict[1]} :: on x86: python "
                                    f"runtime/tests/fuzz_differential.py LIB --seed {case.seed} --case {case.index}")
    assert not problems, f"{len(problems)} mismatches:\n" + "\n".join(problems[:40])


def _outputs_per_class(case: pi_models.Case) -> set[int]:
    """How many outputs each (group, residue class) of a case has: the kernel's row panels."""
    p, mg = len(case.patterns), case.out_channels // case.group
    return {sum((o + case.shift) % p == r for o in range(g * mg, (g + 1) * mg))
            for g in range(case.group) for r in range(p)}


def _ranking(cli_output: str) -> list[tuple[str, float]]:
    """(class, probability %) per line of `pscompress run`'s top-k listing."""
    return [(m.group(1).strip(), float(m.group(2)))
            for m in re.finditer(r"^\s+\d+\. (.+?)\s+([\d.]+)%$", cli_output, re.MULTILINE)]


def test_pscompress_run_on_a_png_in_the_light_install(board_run):
    _, result, expected = board_run
    want = _ranking(expected["cli"])
    assert len(want) == 3
    case = result["cases"]["cli"]
    assert case["exit_code"] == 0, case["stderr"]
    assert "1 image(s), native PSConv kernels" in case["stdout"]
    got = _ranking(case["stdout"])
    assert [c for c, _ in got] == [c for c, _ in want]
    np.testing.assert_allclose([p for _, p in got], [p for _, p in want], atol=0.015)


def test_coverage_cases_reach_every_row_count():
    """Every row count the microkernel (kMR = 6 rows) can be given, however a class's outputs
    are cut into panels: classes of 1 to 6 outputs (one panel each), 7 and 8 (two panels),
    more than 12 (three), and empty classes."""
    counts = set().union(*map(_outputs_per_class, pi_models.CASES))
    assert set(range(9)) <= counts and max(counts) > 12, counts


def native_layouts(build: Path, widths) -> dict[int, str]:
    """The tile layout the native kernel picks for each output width ('rows', 'two_rows' or
    'gathered'), as psconv_tester reports it: no copy of the rule here to drift from it."""
    done = subprocess.run([str(build / "psconv_tester"), "--layout", *map(str, widths)],
                          capture_output=True, text=True, check=True, timeout=60)
    return {int(width): layout for width, layout in map(str.split, done.stdout.splitlines())}


def test_coverage_cases_reach_every_tile_layout(asan_build: Path):
    """Each way the kernel tiles an output in every variant: rows with full 16-pixel tiles, a
    tail, and rows shorter than a tile; two-row tiles 8 wide and narrower, each with an even
    and an odd row count; gathered tiles full and with a tail."""
    layouts = native_layouts(asan_build, sorted({case.output_hw[1] for case in pi_models.CASES}))
    rows, two_rows, gathered = set(), set(), set()
    for case in pi_models.CASES:
        oh, ow = case.output_hw
        layout = layouts[ow]
        if layout == "rows":
            rows.add("short" if ow < 16 else "tail" if ow % 16 else "full")
        elif layout == "two_rows":
            two_rows.add((ow == 8, oh % 2))
        else:
            assert layout == "gathered", layout
            gathered.add("tail" if oh * ow % 16 else "full")
    assert rows == {"full", "tail", "short"}, rows
    assert two_rows == {(True, 0), (True, 1), (False, 0), (False, 1)}, two_rows
    assert gathered == {"full", "tail"}, gathered
