"""Emulated Raspberry Pi 4 (Cortex-A72) and Pi 5 (Cortex-A76): aarch64 onnxruntime under
qemu-user in a Debian arm64 bookworm sysroot (scripts/setup-pi-emulator.sh), compared with
the workstation's x86-64 outputs. Emulation is ~300x slower than a Pi: models stay tiny and
no time is read off it."""
from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import pi_emulator
import pi_models

pytestmark = pytest.mark.slow

RTOL = 1e-4


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


def host_outputs(model_path: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(model_path, providers=["CPUExecutionProvider"]).run(None, feeds)


def assert_close(emulated: np.ndarray, host: np.ndarray) -> None:
    assert emulated.shape == host.shape and emulated.dtype == host.dtype
    scale = float(np.abs(host).max())
    assert scale > 0, "a comparison of all-zero outputs proves nothing"
    np.testing.assert_allclose(emulated, host, rtol=RTOL, atol=RTOL * scale)


@pytest.fixture(scope="module")
def emulator():
    pi_emulator.set_up()


@pytest.fixture(scope="module")
def stock_site(emulator, tmp_path_factory):
    """Only what stock onnxruntime needs on a Pi: no pscompress."""
    site = tmp_path_factory.mktemp("pi-stock-site")
    pi_emulator.install_site(site, "onnxruntime", "numpy")
    return site


@pytest.mark.parametrize("board", pi_emulator.BOARDS)
def test_stock_onnxruntime_conv_matches_host(board, stock_site, tmp_path):
    rng = np.random.default_rng(7)
    model = _save(conv_relu_model(rng), tmp_path / "conv.onnx")
    x = rng.random((2, 3, 17, 16), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    job = {"out": str(tmp_path), "cases": [{"name": "conv", "model": model, "inputs": {"x": str(tmp_path / "x.npy")},
                                             "native": None}]}
    result = pi_emulator.run_job(board, stock_site, job, tmp_path)
    assert result["machine"] == "aarch64"
    assert result["onnxruntime"] == ort.__version__
    (emulated,) = [np.load(p) for p in result["cases"]["conv"]["outputs"]]
    (host,) = host_outputs(model, {"x": x})
    assert (host > 0).any() and (host == 0).any(), "Relu should clip part of the output"
    assert_close(emulated, host)
    assert "Conv" in " ".join(result["cases"]["conv"]["op_names"])


# --- the aarch64 wheel on the emulated boards ---

@pytest.fixture(scope="module")
def pi_wheel(emulator, tmp_path_factory) -> Path:
    return pi_emulator.build_pi_wheel(tmp_path_factory.mktemp("pi-wheel"))


@pytest.fixture(scope="module")
def pi_site(pi_wheel, tmp_path_factory) -> Path:
    """What `pip install pscompress-...aarch64.whl` puts on a Pi (the light install)."""
    site = tmp_path_factory.mktemp("pi-site")
    pi_emulator.install_site(site, str(pi_wheel))
    return site


def test_pi_wheel_is_an_aarch64_light_install(pi_wheel, pi_site):
    name, version, python_tag, abi, platform = pi_wheel.stem.split("-")
    assert (name, python_tag, abi) == ("pscompress", "py3", "none")
    glibc = re.fullmatch(r"manylinux_2_(\d+)_aarch64", platform)
    assert glibc and int(glibc.group(1)) <= 36, f"{platform}: must install on Raspberry Pi OS bookworm (glibc 2.36)"
    with zipfile.ZipFile(pi_wheel) as zf:
        (library,) = [n for n in zf.namelist() if n.endswith(".so")]
        header = zf.read(library)[:20]
    assert library == "pscompress/runtime/libpscompress_ort.so"
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
    installed = {p.name.split("-")[0].lower() for p in pi_site.glob("*.dist-info")}
    assert {"pscompress", "numpy", "onnxruntime", "click", "tqdm", "pillow"} <= installed
    assert not installed & {"torch", "onnx", "onnxscript", "scipy"}, f"the light install pulled {installed}"


@pytest.fixture(scope="module")
def coverage(tmp_path_factory):
    """The PSConv coverage model, its feeds, and the x86-64 oracle's outputs (dense Conv)."""
    folder = tmp_path_factory.mktemp("pi-coverage")
    psconv, oracle, feeds = pi_models.build(np.random.default_rng(2024))
    model = _save(psconv, folder / "psconv.onnx")
    oracle_path = _save(oracle, folder / "oracle.onnx")
    inputs = {}
    for name, value in feeds.items():
        inputs[name] = str(folder / f"{name}.npy")
        np.save(inputs[name], value)
    session = ort.InferenceSession(oracle_path, providers=["CPUExecutionProvider"])
    expected = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})
    names = [o.name for o in session.get_outputs()]
    return model, inputs, dict(zip(names, expected))


@pytest.mark.parametrize("board", pi_emulator.BOARDS)
def test_native_neon_kernel_matches_x86_oracle_on_every_path(board, pi_site, coverage, tmp_path):
    model, inputs, expected = coverage
    # Two threads: tiles are shared out through onnxruntime's pool, as on a real Pi.
    job = {"out": str(tmp_path), "cases": [
        {"name": "coverage", "model": model, "inputs": inputs, "native": True, "threads": 2}]}
    result = pi_emulator.run_job(board, pi_site, job, tmp_path)
    assert result["machine"] == "aarch64"
    assert result["native_available"] and result["cpu_path"] == "neon"
    assert result["library_path"].startswith(str(pi_site))
    case = result["cases"]["coverage"]
    # The native kernels ran: the profile names the custom operators, and nothing else ran.
    assert set(case["op_names"]) == {"PSConv", "PSConvAdd"}
    outputs = [np.load(p) for p in case["outputs"]]
    assert len(outputs) == len(expected)
    for (name, want), got in zip(expected.items(), outputs):
        assert np.unique(want).size > 1, f"{name}: a constant output proves nothing"
        assert_close(got, want)


@pytest.mark.parametrize("tile_pixels", [8, 16])
@pytest.mark.parametrize("tile_rows", [4, 6, 8])
def test_coverage_cases_reach_every_tail(tile_pixels, tile_rows):
    """The claim of tests/pi_models.py, checked for any plausible NEON tile size: full tiles and
    every tail, in both direct (output row >= a tile) and gathered layouts, for pixels and rows."""
    direct, gathered, row_tails, full_row_tiles = set(), set(), set(), False
    for case in pi_models.CASES:
        oh, ow = case.output_hw
        if ow >= tile_pixels:
            direct.add(ow % tile_pixels)  # 0: full tiles only; else the tail's width
        else:
            gathered.add(oh * ow % tile_pixels)
        p, mg = len(case.patterns), case.out_channels // case.group
        for g in range(case.group):
            for r in range(p):
                count = sum((o + case.shift) % p == r for o in range(g * mg, (g + 1) * mg))
                full_row_tiles |= count >= tile_rows
                row_tails.add(count % tile_rows)
    assert 0 in direct and direct - {0}, direct
    assert 0 in gathered and gathered - {0}, gathered
    assert full_row_tiles and set(range(1, tile_rows)) <= row_tails, row_tails
