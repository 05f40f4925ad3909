"""TFLite export checked against PyTorch (the oracle) in ai-edge-litert, with XNNPACK on and off."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pscompress.board.data import FASHION_MNIST_CLASSES, load_dataset
from pscompress.board.tflite_predictor import TFLitePredictor, interpreter_module
from pscompress.core.errors import UserError
from pscompress.core.patterns import parse_pattern
from pscompress.exporters.summary import ExportSummary
from pscompress.exporters.tflite import build_tflite, export_tflite
from pscompress.exporters.tflite_writer import schema
from pscompress.workstation import archs
from pscompress.workstation.checkpoint import LoadedModel, load_model, save_checkpoint
from pscompress.workstation.layers import PSConv2d

CLASSES = list(FASHION_MNIST_CLASSES)
SAMPLES = Path(__file__).resolve().parents[1] / "samples"
# The fine-tuned pSConv sample if it exists, else the dense one it is fine-tuned from.
TRAINED = next((p for p in (SAMPLES / "fashion_resnet20_4of9.pt", SAMPLES / "fashion_resnet20.pt") if p.is_file()), None)


def psconv_resnet20(pattern: str = "4of9", seed: int = 0) -> LoadedModel:
    """A random-init resnet20 whose 3x3 convs (except the stem) are pSConv, with non-trivial batch norm."""
    torch.manual_seed(seed)
    module = archs.build("resnet20", in_channels=1, num_classes=10)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):  # so that folding has real statistics to fold
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    patterns = parse_pattern(pattern)
    for name, conv in list(module.named_modules()):
        if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.in_channels > 1:
            parent, _, child = name.rpartition(".")
            setattr(module.get_submodule(parent), child, PSConv2d.from_conv(conv, patterns, shift=len(name) % patterns.period))
    return LoadedModel(module.eval(), "resnet20", {"in_channels": 1, "num_classes": 10},
                       {"input_shape": [1, 28, 28], "classes": CLASSES})


def torch_logits(module: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return module(torch.from_numpy(x)).numpy()


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def operator_names(path: Path) -> list[str]:
    model = schema("Model").Model.GetRootAs(path.read_bytes(), 0)
    builtin = {v: k for k, v in vars(schema("BuiltinOperator").BuiltinOperator).items() if not k.startswith("_")}
    codes = [builtin[model.OperatorCodes(i).BuiltinCode()] for i in range(model.OperatorCodesLength())]
    graph = model.Subgraphs(0)
    return [codes[graph.Operators(i).OpcodeIndex()] for i in range(graph.OperatorsLength())]


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return psconv_resnet20()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> dict[bool, tuple[Path, ExportSummary]]:
    """fp16 flag -> (path, size report)."""
    out = {}
    for fp16 in (False, True):
        path = tmp_path_factory.mktemp("tflite") / ("model_fp16.tflite" if fp16 else "model.tflite")
        out[fp16] = (path, export_tflite(model, path, fp16=fp16))
    return out


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Random images and real Fashion-MNIST test images."""
    random = np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32)
    return np.concatenate([random, load_dataset("fashion-mnist", "test").x[:248]])


@pytest.mark.parametrize("xnnpack", [True, False], ids=["xnnpack", "builtin-kernels"])
def test_fp32_export_matches_pytorch(model, exported, images, xnnpack):
    path, _ = exported[False]
    predictor = TFLitePredictor(path, xnnpack=xnnpack)
    assert relative_error(predictor.predict(images), torch_logits(model.module, images)) < 1e-4


def test_psconv_filters_are_stored_sparse_and_densified(model, exported):
    path, report = exported[False]
    ops = operator_names(path)
    psconv = [m for m in model.module.modules() if isinstance(m, PSConv2d)]
    assert ops.count("DENSIFY") == len(psconv) == report.psconv_layers == 18
    assert "BATCH_NORM" not in " ".join(ops) and ops.count("CONV_2D") == 21  # 19 3x3 + 2 projection shortcuts
    tflite_model = schema("Model").Model.GetRootAs(path.read_bytes(), 0)
    graph = tflite_model.Subgraphs(0)
    sparse = [graph.Tensors(i) for i in range(graph.TensorsLength()) if graph.Tensors(i).Sparsity() is not None]
    assert len(sparse) == len(psconv)
    assert path.stat().st_size == report.bytes < 0.65 * report.dense_bytes
    # The dense baseline really is the same model with dense filters.
    dense_path = path.with_name("dense.tflite")
    dense_path.write_bytes(build_tflite(model, (1, 28, 28), sparse=False))
    assert "DENSIFY" not in operator_names(dense_path)
    assert dense_path.stat().st_size == report.dense_bytes


def test_relu_is_fused_into_conv_and_add(exported):
    ops = operator_names(exported[False][0])
    assert "RELU" not in ops and ops.count("ADD") == 9
    assert ops[-2:] == ["RESHAPE", "FULLY_CONNECTED"] and "MEAN" in ops


@pytest.mark.parametrize("xnnpack", [True, False], ids=["xnnpack", "builtin-kernels"])
def test_fp16_export_dequantizes_and_is_smaller(model, exported, images, xnnpack):
    (path32, report32), (path16, report16) = exported[False], exported[True]
    ops = operator_names(path16)
    assert ops.count("DEQUANTIZE") == 22  # 21 conv filters and the classifier
    assert ops.count("DENSIFY") == 18
    assert report16.bytes < 0.7 * report32.bytes and report16.bytes < report16.dense_bytes
    logits = TFLitePredictor(path16, xnnpack=xnnpack).predict(images)
    expected = torch_logits(model.module, images)
    assert relative_error(logits, expected) < 1e-2
    assert (logits.argmax(1) == expected.argmax(1)).mean() >= 0.99


def test_predictor_reads_metadata_and_batches(model, exported, images):
    path, _ = exported[False]
    predictor = TFLitePredictor(path)
    assert predictor.input_shape == (1, 28, 28) and predictor.classes == CLASSES
    assert predictor.meta["input_layout"] == "NHWC" and predictor.meta["arch"] == "resnet20"
    layers = predictor.meta["psconv_layers"]
    for name, layer in model.module.named_modules():
        if isinstance(layer, PSConv2d):
            assert layers[name]["patterns"] == layer.pattern.bitmasks and layers[name]["shift"] == layer.shift
    x = images[:70]  # more than one internal batch, then a different size
    whole = predictor.predict(x)
    parts = np.concatenate([predictor.predict(x[:3]), predictor.predict(x[3:])])
    np.testing.assert_allclose(whole, parts, rtol=1e-5, atol=1e-5)
    with pytest.raises(UserError, match="expected images of shape"):
        predictor.predict(images[:, :, :27])


class _Coverage(nn.Module):
    """Operators the bundled architectures do not all need: explicit pads, depthwise, pools, softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)   # 14x14 -> 7x7: PyTorch pads where SAME would not
        self.depthwise = nn.Conv2d(8, 16, 3, padding=1, groups=8)
        self.relu6 = nn.ReLU6()
        self.maxpool = nn.MaxPool2d(2, 2, ceil_mode=True)    # 7x7 -> 4x4: a SAME pool
        self.sparse = PSConv2d(16, 16, 3, padding=1, dilation=1, pattern=parse_pattern("2of9"), shift=1)
        self.avgpool = nn.AvgPool2d(2)
        self.drop = nn.Dropout(0.5)
        self.fc1 = nn.Linear(16 * 2 * 2, 12)
        self.fc2 = nn.Linear(12, 5)

    def forward(self, x):
        x = self.maxpool(self.relu6(self.depthwise(torch.relu(self.stem(x)))))
        x = self.avgpool(self.sparse(x) + x)
        x = torch.flatten(self.drop(x), 1)  # 2x2 spatial: needs NCHW order before flattening
        return torch.softmax(self.fc2(torch.relu(self.fc1(x))), dim=1)


@pytest.mark.parametrize("xnnpack", [True, False], ids=["xnnpack", "builtin-kernels"])
def test_operator_coverage_matches_pytorch(tmp_path, xnnpack):
    torch.manual_seed(1)
    module = _Coverage().eval()
    loaded = LoadedModel(module, None, {}, {"input_shape": [3, 14, 14]})
    path = tmp_path / "coverage.tflite"
    export_tflite(loaded, path)
    ops = operator_names(path)
    assert {"PAD", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D", "TRANSPOSE", "SOFTMAX", "DENSIFY"} <= set(ops)
    x = np.random.default_rng(2).random((4, 3, 14, 14), dtype=np.float32)
    assert relative_error(TFLitePredictor(path, xnnpack=xnnpack).predict(x), torch_logits(module, x)) < 1e-4


@pytest.mark.parametrize("layer, message", [
    (nn.GroupNorm(2, 8), "layer bad .GroupNorm. cannot be exported to TFLite"),
    (nn.BatchNorm2d(8), "layer bad: a batch norm that does not directly follow a convolution"),
])
def test_unsupported_layer_is_named_and_nothing_is_written(tmp_path, layer, message):
    module = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Sequential()).eval()
    module.add_module("bad", layer)
    module.add_module("pool", nn.AdaptiveAvgPool2d(1))
    path = tmp_path / "bad.tflite"
    with pytest.raises(UserError, match=message):
        export_tflite(LoadedModel(module, None, {}, {"input_shape": [1, 12, 12]}), path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.skipif(TRAINED is None, reason="no trained sample model in samples/ (samples/train_sample.py makes one)")
def test_fp16_predicts_the_same_classes_as_pytorch_on_fashion_mnist(tmp_path):
    loaded = load_model(TRAINED)
    path = tmp_path / "trained_fp16.tflite"
    export_tflite(loaded, path, fp16=True)
    test = load_dataset("fashion-mnist", "test")
    predictor = TFLitePredictor(path)
    agree = sum(int((predictor.predict(x).argmax(1) == torch_logits(loaded.module, x).argmax(1)).sum())
                for x, _ in test.batches(500))
    assert agree / len(test) >= 0.999, f"{len(test) - agree} of {len(test)} predictions differ"


def test_cli_exports_and_prints_sizes(model, tmp_path):
    checkpoint, out = tmp_path / "model.pt", tmp_path / "model.tflite"
    save_checkpoint(model, checkpoint)
    done = subprocess.run([sys.executable, "-m", "pscompress.cli", "export", str(checkpoint), "-o", str(out), "--fp16"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "the dense export" in done.stdout and "verified against PyTorch" in done.stdout
    assert TFLitePredictor(out).meta["fp16"] is True
    bad = subprocess.run([sys.executable, "-m", "pscompress.cli", "export", str(checkpoint), "-o", str(tmp_path / "x.tflite"),
                          "--input-shape", "1,28"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("Error: ") and "Traceback" not in bad.stderr


def _stored_values(detail: dict) -> int:
    """Values a constant holds in the file, from the interpreter's own view of it: the leaves of its sparse
    tree (a DENSE level multiplies them by its size, a SPARSE_CSR level holds as many as its indices), or every
    element of a dense one."""
    levels = (detail.get("sparsity_parameters") or {}).get("dim_metadata")
    if not levels:
        return int(np.prod(detail["shape"]))
    count = 1
    for level in levels:
        count = count * level["dense_size"] if level["format"] == 0 else len(level["array_indices"])
    return count


@pytest.mark.parametrize("fp16", [False, True], ids=["float32", "float16"])
def test_info_tables_every_weighted_layer_as_the_interpreter_sees_it(model, exported, fp16, run_cli):
    path, _ = exported[fp16]
    interpreter = interpreter_module().Interpreter(model_path=str(path))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    produced_by = {out: op for op in ops for out in op["outputs"]}
    expected = []
    for op in ops:
        if op["op_name"] not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        index, sparse = op["inputs"][1], False
        while index in produced_by and produced_by[index]["op_name"] in ("DENSIFY", "DEQUANTIZE"):
            sparse |= produced_by[index]["op_name"] == "DENSIFY"
            index = produced_by[index]["inputs"][0]
        stored = tensors[index]
        expected.append((op["op_name"], "x".join(map(str, tensors[op["inputs"][1]]["shape"])),
                         f"{'sparse' if sparse else 'dense'} {np.dtype(stored['dtype']).name}", _stored_values(stored)))

    code, out, err = run_cli("info", path)
    assert code == 0, err
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("layer "))
    rows = [line.split() for line in lines[start + 1:] if not line.startswith("total:")]
    got = [(r[1], r[2], f"{r[3]} {r[4]}", int(r[7].replace(",", ""))) for r in rows]
    assert got == expected
    psconv = {name for name, m in model.module.named_modules() if isinstance(m, PSConv2d)}
    assert {r[0] for r in rows if r[5] == "4of9" and r[6] == "0.444"} == psconv and len(psconv) == 18
    assert f"total: {sum(e[3] for e in expected):,} values stored" in out
