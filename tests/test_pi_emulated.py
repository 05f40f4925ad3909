"""Emulated Raspberry Pi 4 (Cortex-A72) and Pi 5 (Cortex-A76): aarch64 onnxruntime under
qemu-user in a Debian arm64 bookworm sysroot (scripts/setup-pi-emulator.sh), compared with
the workstation's x86-64 outputs. Emulation is ~300x slower than a Pi: models stay tiny and
no time is read off it."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import pi_emulator

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
