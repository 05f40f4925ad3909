"""Full-integer int8 TFLite export on the trained sample and real Fashion-MNIST images.

Oracles: the ONNX int8 file ``pscompress quantize`` makes from the same checkpoint on the same
100 calibration images (onnxruntime's quantize_static), the fp32 TFLite export's accuracy, and
PyTorch.
"""
from __future__ import annotations

import os
import subprocess

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from pscompress.board.data import load_dataset
from pscompress.board.evaluate import evaluate_file
from pscompress.board.tflite_predictor import TFLitePredictor, interpreter_module
from pscompress.core.errors import UserError
from pscompress.core.patterns import parse_pattern
from pscompress.exporters.tflite import export_tflite
from pscompress.exporters.tflite_int8 import build_tflite_int8
from pscompress.workstation.checkpoint import LoadedModel, load_model
from pscompress.workstation.layers import PSConv2d

from test_export_tflite import TRAINED, operator_names, torch_logits
from test_export_tflite_runtime import ROOT, RUNNER, runtime_python  # noqa: F401 (a fixture)

SAMPLE = ROOT / "samples" / "fashion_resnet20_4of9.pt"
pytestmark = pytest.mark.skipif(not SAMPLE.is_file(), reason="no trained 4of9 sample (samples/train_sample.py)")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The sample as fp32 TFLite, int8 TFLite (100 calibration images) and ONNX int8 (the same 100)."""
    from pscompress.exporters.onnx_export import export_onnx
    from pscompress.workstation.quantize import quantize_file

    root = tmp_path_factory.mktemp("tflite-int8")
    paths = {name: root / name for name in ("fp32.tflite", "int8.tflite", "fp32.onnx", "int8.onnx")}
    loaded = load_model(SAMPLE)
    export_tflite(loaded, paths["fp32.tflite"])
    summary = export_tflite(loaded, paths["int8.tflite"], int8=True, data="fashion-mnist", calibration=100)
    export_onnx(loaded, paths["fp32.onnx"])
    quantize_file(paths["fp32.onnx"], "fashion-mnist", paths["int8.onnx"], calibration=100, progress=False)
    return paths, summary


@pytest.fixture(scope="module")
def test_images() -> np.ndarray:
    return load_dataset("fashion-mnist", "test").x[:2000]


def onnx_logits(path, x: np.ndarray) -> np.ndarray:
    from pscompress.runtime import create_session

    session = create_session(path, native=False)
    return np.concatenate([session.run(None, {"input": x[i:i + 250]})[0] for i in range(0, len(x), 250)])


def onnx_output_step(path) -> float:
    """The quantization step of the ONNX int8 file's logits (their last DequantizeLinear)."""
    model = onnx.load(path)
    last = [n for n in model.graph.node if n.op_type == "DequantizeLinear"][-1]
    return float(next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == last.input[1]))


def inner_dtypes(predictor: TFLitePredictor) -> set[np.dtype]:
    """The dtypes of every activation and weight between the float input and the float logits."""
    return {np.dtype(t["dtype"]) for t in predictor._interpreter.get_tensor_details()
            if t["name"] not in ("input", "logits") and not t["name"].endswith(("/bias", "/shape", "/axes", "/pads"))}


@pytest.mark.parametrize("xnnpack", [True, False], ids=["xnnpack", "builtin-kernels"])
def test_int8_file_agrees_with_the_onnx_int8_file(files, test_images, xnnpack):
    paths, _ = files
    got = TFLitePredictor(paths["int8.tflite"], xnnpack=xnnpack).predict(test_images)
    want = onnx_logits(paths["int8.onnx"], test_images)
    step = onnx_output_step(paths["int8.onnx"])
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.99
    assert np.mean(np.abs(got - want) <= 2 * step * (1 + 1e-5)) >= 0.99


def test_int8_weights_are_the_onnx_int8_weights(files):
    """Same per-channel formula as onnxruntime: the stored int8 filters are identical (pSConv ones
    compared at their kept positions, which is all QLinearPSConv stores)."""
    from pscompress.workstation.quantize import kept_mask

    paths, _ = files
    model = onnx.load(paths["int8.onnx"])
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    module = interpreter_module()
    interpreter = module.Interpreter(model_path=str(paths["int8.tflite"]), experimental_preserve_all_tensors=True,
                                     experimental_op_resolver_type=module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    interpreter.invoke()  # DENSIFY has run: the dense int8 filters are readable
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    # Each conv and fully connected operator reads (x, weight, "<fx node>/bias").
    weights = {names[op["inputs"][2]].removesuffix("/bias"): interpreter.get_tensor(op["inputs"][1])
               for op in interpreter._get_ops_details() if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED")}

    def tflite_weight(node_name: str) -> np.ndarray:
        return weights[node_name.replace(".", "_")]

    compared = 0
    for node in model.graph.node:
        if node.op_type == "QLinearPSConv":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            dense = tflite_weight(node.name).transpose(0, 3, 1, 2)  # [O, KH, KW, I] -> [O, I, KH, KW]
            np.testing.assert_array_equal(dense[kept_mask(attrs)], init[node.input[3]].reshape(-1))
            assert not dense[~kept_mask(attrs)].any()
        elif node.op_type in ("Conv", "Gemm"):
            expected = init[node.input[1].replace("_DequantizeLinear_Output", "_quantized")]
            got = tflite_weight(node.name)
            np.testing.assert_array_equal(got.transpose(0, 3, 1, 2) if got.ndim == 4 else got, expected)
        else:
            continue
        compared += 1
    assert compared == 22  # 18 pSConv, the stem, 2 shortcuts and the classifier


def test_int8_top1_within_half_a_point_of_fp32(files):
    paths, _ = files
    data = load_dataset("fashion-mnist", "test")
    fp32 = evaluate_file(paths["fp32.tflite"], data, progress=False).top1
    int8 = evaluate_file(paths["int8.tflite"], data, progress=False).top1
    assert abs(int8 - fp32) <= 0.005, (fp32, int8)


def test_int8_file_sizes(files):
    """Measured: 298,688 bytes; 0.47x the fp32 TFLite file, 0.96x the same int8 file with dense
    filters (TFLite's sparse format stores a 1-byte index per kept weight), 1.85x the ONNX int8 file."""
    paths, summary = files
    size = paths["int8.tflite"].stat().st_size
    assert summary.bytes == size and size < summary.dense_bytes
    assert size <= 0.48 * paths["fp32.tflite"].stat().st_size
    assert size <= 1.9 * paths["int8.onnx"].stat().st_size


def test_graph_is_full_integer_between_a_quantize_and_a_dequantize(files):
    paths, summary = files
    ops = operator_names(paths["int8.tflite"])
    assert ops[0] == "QUANTIZE" and ops[-1] == "DEQUANTIZE" and ops.count("QUANTIZE") == ops.count("DEQUANTIZE") == 1
    assert ops.count("DENSIFY") == summary.psconv_layers == 18 and "RELU" not in ops
    predictor = TFLitePredictor(paths["int8.tflite"])
    assert predictor._input["dtype"] == np.float32 and predictor._outputs[0]["dtype"] == np.float32
    assert inner_dtypes(predictor) == {np.dtype(np.int8)}
    assert predictor.meta["int8"]["calibration_images"] == 100 and predictor.meta["fp16"] is False


def test_int8_file_runs_in_tflite_runtime(files, test_images, runtime_python, tmp_path):  # noqa: F811
    """tflite-runtime 2.14 (numpy<2), XNNPACK on and off, computes what ai-edge-litert computes."""
    paths, _ = files
    x = test_images[:200]
    np.save(tmp_path / "x.npy", x)
    outputs = [tmp_path / "xnnpack.npy", tmp_path / "builtin.npy"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([runtime_python, "-c", RUNNER, str(tmp_path / "x.npy"), str(paths["int8.tflite"]),
                           *map(str, outputs)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    step = onnx_output_step(paths["int8.onnx"])
    for out, xnnpack in zip(outputs, (True, False)):
        want = TFLitePredictor(paths["int8.tflite"], xnnpack=xnnpack).predict(x)
        got = np.load(out)
        assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.99
        assert np.max(np.abs(got - want)) <= 2 * step * (1 + 1e-5)


class _Coverage(nn.Module):
    """The other int8 operators: explicit pads, depthwise, max and average pools, a flatten of 2x2."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.depthwise = nn.Conv2d(8, 16, 3, padding=1, groups=8)
        self.maxpool = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.sparse = PSConv2d(16, 16, 3, padding=1, dilation=1, pattern=parse_pattern("2of9"), shift=1)
        self.avgpool = nn.AvgPool2d(2)
        self.fc = nn.Linear(16 * 2 * 2, 5)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.depthwise(torch.relu(self.stem(x)))))
        return self.fc(torch.flatten(self.avgpool(self.sparse(x) + x), 1))


@pytest.mark.parametrize("xnnpack", [True, False], ids=["xnnpack", "builtin-kernels"])
def test_operator_coverage_in_int8(tmp_path, xnnpack):
    torch.manual_seed(1)
    module = _Coverage().eval()
    x = np.random.default_rng(2).random((64, 3, 14, 14), dtype=np.float32)
    path = tmp_path / "coverage.tflite"
    path.write_bytes(build_tflite_int8(LoadedModel(module, None, {}, {"input_shape": [3, 14, 14]}), (3, 14, 14), [x]))
    ops = operator_names(path)
    assert {"PAD", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D", "TRANSPOSE", "DENSIFY"} <= set(ops)
    got, want = TFLitePredictor(path, xnnpack=xnnpack).predict(x), torch_logits(module, x)
    assert np.max(np.abs(got - want)) <= 0.05 * np.abs(want).max()


@pytest.mark.parametrize("tail, message", [
    (nn.Softmax(dim=1), r"^operation bad: softmax cannot be exported to int8 TFLite"),
    (nn.GroupNorm(2, 8), r"^layer bad \(GroupNorm\) cannot be exported to TFLite$"),
])
def test_unsupported_operation_is_one_line_and_nothing_is_written(tmp_path, tail, message):
    layers = [nn.Conv2d(1, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    module = nn.Sequential(*layers).eval() if isinstance(tail, nn.Softmax) else nn.Sequential(*layers[:2]).eval()
    module.add_module("bad", tail)
    path = tmp_path / "bad.tflite"
    loaded = LoadedModel(module, None, {}, {"input_shape": [1, 28, 28]})
    with pytest.raises(UserError, match=message) as caught:
        export_tflite(loaded, path, int8=True, data="fashion-mnist", calibration=10)
    assert len(str(caught.value).splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_int8_needs_calibration_data_and_excludes_fp16(tmp_path):
    loaded = load_model(TRAINED)
    with pytest.raises(UserError, match="needs calibration images"):
        export_tflite(loaded, tmp_path / "m.tflite", int8=True)
    with pytest.raises(UserError, match="one of --fp16 and --int8"):
        export_tflite(loaded, tmp_path / "m.tflite", int8=True, fp16=True, data="fashion-mnist")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, option", [(["--data", "fashion-mnist"], "--data"), (["--calibration", "8"], "--calibration")])
def test_cli_calibration_without_int8_is_refused(run_cli, tmp_path, args, option):
    out = tmp_path / "m.tflite"
    code, _, stderr = run_cli("export", SAMPLE, "-o", out, *args)
    assert code == 2 and f"{option} calibrates an int8 TFLite file: add --int8" in stderr
    assert len(stderr.strip().splitlines()) == 1 and not out.exists()


def test_cli_int8_export_writes_a_full_integer_file(run_cli, tmp_path):
    out = tmp_path / "m.tflite"
    code, stdout, stderr = run_cli("export", SAMPLE, "--format", "tflite", "--int8", "--data", "fashion-mnist",
                                   "--calibration", "8", "-o", out)
    assert code == 0, stderr
    assert f"wrote {out} (tflite)" in stdout and "18 pSConv layer(s)" in stdout
    ops = operator_names(out)
    assert ops[0] == "QUANTIZE" and ops[-1] == "DEQUANTIZE" and ops.count("DENSIFY") == 18
    predictor = TFLitePredictor(out)
    assert inner_dtypes(predictor) == {np.dtype(np.int8)} and predictor.meta["int8"]["calibration_images"] == 8


@pytest.mark.parametrize("args, option", [
    (["--int8", "--data", "fashion-mnist"], "--int8"),
    (["--data", "fashion-mnist"], "--data"),
    (["--calibration", "8"], "--calibration"),
])
def test_cli_int8_options_are_refused_for_onnx(run_cli, tmp_path, args, option):
    code, _, stderr = run_cli("export", SAMPLE, *args, "-o", tmp_path / "m.onnx")
    assert code == 2 and stderr == f"Error: {option} applies to TFLite export only\n"
    assert list(tmp_path.iterdir()) == []


def test_cli_int8_without_data_is_one_line(run_cli, tmp_path):
    code, stdout, stderr = run_cli("export", SAMPLE, "--int8", "-o", tmp_path / "m.tflite")
    assert code == 2 and stderr.count("\n") == 1 and "Traceback" not in stdout + stderr
    assert stderr.startswith("Error: int8 TFLite export needs calibration images") and "--data" in stderr
    assert list(tmp_path.iterdir()) == []
