"""The operators real CNNs need beyond ResNet-20's, lowered to TFLite and checked against PyTorch (the oracle):
depthwise and grouped convolution (pSConv ones too), PReLU, Hardswish, Sigmoid, SiLU, ReLU6, padded max and
average pools, concatenation, broadcast multiply/add (squeeze-and-excitation), nearest upsampling, Hardsigmoid,
the functional pools, arithmetic with Python numbers, view/reshape/permute/transpose and zero padding (F.pad).
float32 in ai-edge-litert (XNNPACK on and off) and tflite-runtime, int8 in ai-edge-litert; refusals in one line.
The same models as torch.export programs (pscompress.workstation.program), whose graphs call aten operators
instead, lower to the same operators with the same parity."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pscompress.board.tflite_predictor import TFLitePredictor, interpreter_module
from pscompress.core.errors import UserError
from pscompress.exporters.tflite import build_tflite, export_tflite, interpreter_installed
from pscompress.exporters.tflite_int8 import build_tflite_int8
from pscompress.exporters.tflite_writer import Quantization, TFLiteGraph, schema
from pscompress.workstation.checkpoint import LoadedModel
from pscompress.workstation.layers import PSConv2d
from pscompress.workstation.program import program_module
from pscompress.workstation.sparsify import sparsify

from test_export_tflite import operator_names, torch_logits
from test_export_tflite_runtime import ROOT, RUNNER, runtime_python  # noqa: F401 (a fixture)

pytestmark = pytest.mark.skipif(not interpreter_installed(), reason="no TFLite interpreter (pip install ai-edge-litert)")

SHAPE = (3, 16, 16)
FP32_ATOL = 1e-4  # absolute, on the logits
INT8_AGREEMENT = 0.9  # share of images on which the int8 file predicts PyTorch's class
INT8_STEPS = 4  # and every logit within this many output quantization steps of PyTorch's (measured: 2.4 at most)


class _Convs(nn.Module):
    """Depthwise (multiplier 1 and 2) and grouped convolutions, one after an explicit pad, one batch-normed."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.multiplier = nn.Conv2d(16, 32, 3, stride=2, padding=1, groups=16)  # 16x16 -> 8x8: PAD, not SAME
        self.grouped = nn.Conv2d(32, 24, 3, padding=1, groups=4, bias=False)
        self.bn = nn.BatchNorm2d(24)
        self.pointwise = nn.Conv2d(24, 24, 1, groups=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, 7)
        nn.init.uniform_(self.bn.running_mean, -0.2, 0.2)  # so that folding has statistics to fold
        nn.init.uniform_(self.bn.running_var, 0.5, 1.5)

    def forward(self, x):
        x = F.relu6(self.depthwise(torch.relu(self.stem(x))))
        x = torch.relu(self.bn(self.grouped(self.multiplier(x))))  # the ReLU is fused into every group's CONV_2D
        x = self.pointwise(x) + x
        return self.fc(torch.flatten(self.pool(x), 1))


def _psconv_convs() -> nn.Module:
    """_Convs with its 3x3 depthwise and grouped convolutions turned into pSConv layers by ``sparsify``."""
    module = _Convs()
    sparsify(module, "4of9", input_shape=SHAPE, filter_fn=lambda name, conv: conv.groups > 1)
    return module


class _Activations(nn.Module):
    """PReLU, Hardswish, Sigmoid, SiLU and ReLU6 as modules and as functions, on images and on features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.prelu = nn.PReLU(8, init=0.1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.hardswish = nn.Hardswish()
        self.alpha = nn.Parameter(torch.tensor([0.3]))  # F.prelu, one parameter for every channel
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.silu = nn.SiLU()
        self.sigmoid = nn.Sigmoid()
        self.relu6 = nn.ReLU6()
        self.pool = nn.AvgPool2d(4)
        self.fc1 = nn.Linear(8 * 4 * 4, 16)
        self.prelu_features = nn.PReLU(16, init=0.2)
        self.fc2 = nn.Linear(16, 6)

    def forward(self, x):
        x = F.prelu(self.hardswish(self.conv2(self.prelu(self.conv1(x)))), self.alpha)
        y = self.silu(self.conv3(x))
        x = F.hardswish(y) + torch.sigmoid(x) + x.sigmoid() * F.silu(x) + self.sigmoid(y)
        x = self.relu6(x) + F.relu6(y)  # the first fused into the ADD before it, the second a RELU6
        return self.fc2(self.prelu_features(self.fc1(torch.flatten(self.pool(x), 1))))


class _Pools(nn.Module):
    """ResNet's stem (7x7/2 conv, 3x3/2 max pool with padding 1, here without the ReLU so that a pad of zeros
    would show) and average pools that pad."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 7, stride=2, padding=3)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)                               # 8x8 -> 4x4: PADV2 + VALID
        self.ceil_max = nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)              # 4x4 -> 3x3: reaches past the pad
        self.avg_include = nn.AvgPool2d(3, 1, padding=1)                           # zeros counted: PAD + VALID
        self.avg_exclude = nn.AvgPool2d(3, 1, padding=1, count_include_pad=False)  # SAME, which counts no pad
        self.fc = nn.Linear(2 * 8 * 3 * 3, 5)

    def forward(self, x):
        x = self.ceil_max(self.maxpool(self.stem(x)))
        x = torch.cat([self.avg_include(x), self.avg_exclude(x)], 1)
        return self.fc(torch.flatten(x, 1))


class _Blocks(nn.Module):
    """Concatenation (channels, features), squeeze-and-excitation (broadcast MUL, ADD; the squeeze a pool and a
    mean), nearest upsampling."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.branch1 = nn.Conv2d(8, 4, 1)
        self.branch3 = nn.Conv2d(8, 6, 3, padding=1)
        self.squeeze = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(10, 4, 1)
        self.expand = nn.Conv2d(4, 10, 1)
        self.up = nn.Upsample(scale_factor=2)
        self.down = nn.Conv2d(10, 8, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(8 * 2 * 2 + 10, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.cat([torch.relu(self.branch1(x)), torch.relu(self.branch3(x))], dim=1)  # 10 channels, 8x8
        s = self.squeeze(x)
        x = x * torch.sigmoid(self.expand(torch.relu(self.reduce(x.mean((2, 3), keepdim=True))))) + s
        x = self.down(F.interpolate(self.up(x), size=(32, 32)))  # 8x8 -> 16x16 -> 32x32 -> 16x16
        return self.fc(torch.cat([torch.flatten(self.pool(x), 1), torch.mean(s, dim=(-1, -2))], dim=1))


class _Functional(nn.Module):
    """Hardsigmoid (module and function), a hand-written hard-swish (x * relu6(x + 3) / 6), every form of arithmetic
    with a Python number, and the functional pools (padded max, average, adaptive to 1 and to a divisor)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.hardsigmoid = nn.Hardsigmoid()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4 + 8, 5)

    def forward(self, x):
        x = self.stem(x)
        x = x * F.relu6(x + 3) / 6
        x = F.max_pool2d(x, 3, 2, padding=1)                       # 16x16 -> 8x8: PADV2 + VALID
        x = self.hardsigmoid(x) + F.hardsigmoid(self.conv(x)) * x
        x = 1 + 0.5 * x - 0.25                                      # c + x, c * x, x - c
        x = 2 - x * 1.5                                             # c - x, x * c
        x = F.avg_pool2d(x / 3, kernel_size=2) + F.adaptive_avg_pool2d(x, (4, 4))
        return self.fc(torch.cat([torch.flatten(x, 1), torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)], 1))


class _Reshapes(nn.Module):
    """view/reshape keeping the batch (x.size(0), x.shape[0], -1), squeeze-and-excitation through view(b, c, 1, 1),
    ShuffleNet's channel shuffle (5-D view, transpose, view back), permute to NHWC and back."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.reduce = nn.Linear(8, 4)
        self.expand = nn.Linear(4, 8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8 * 8 * 8, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        b, c, h, w = x.size()
        s = x.mean((2, 3)).view(b, c)
        x = x * torch.sigmoid(self.expand(torch.relu(self.reduce(s)))).view(b, c, 1, 1)
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)
        x = self.grouped(x)
        nhwc = x.permute(0, 2, 3, 1)                                 # [N, H, W, C]
        x = x + nhwc.permute(0, 3, 1, 2)
        return self.fc(x.reshape(x.shape[0], -1)) + 0.5 * self.fc(nhwc.reshape(-1, h * w * c))


MODELS: dict[str, Callable[[], nn.Module]] = {"convs": _Convs, "psconv_convs": _psconv_convs, "activations": _Activations,
                                              "pools": _Pools, "blocks": _Blocks, "functional": _Functional,
                                              "reshapes": _Reshapes}
OPERATORS = {  # what each file must hold
    "convs": {"DEPTHWISE_CONV_2D", "PAD", "SPLIT", "CONV_2D", "CONCATENATION"},
    "psconv_convs": {"DENSIFY", "DEPTHWISE_CONV_2D", "SPLIT", "CONCATENATION"},
    "activations": {"PRELU", "HARD_SWISH", "LOGISTIC", "MUL", "RELU6"},
    "pools": {"PADV2", "MAX_POOL_2D", "PAD", "AVERAGE_POOL_2D", "CONCATENATION"},
    "blocks": {"CONCATENATION", "MEAN", "LOGISTIC", "MUL", "ADD", "RESIZE_NEAREST_NEIGHBOR"},
    "functional": {"PADV2", "MAX_POOL_2D", "AVERAGE_POOL_2D", "MEAN", "ADD", "SUB", "MUL"},
    "reshapes": {"MEAN", "RESHAPE", "TRANSPOSE", "SPLIT"},
}


def _loaded(module: nn.Module) -> LoadedModel:
    return LoadedModel(module.eval(), None, {}, {"input_shape": list(SHAPE)})


def _versions(data: bytes) -> dict[str, int]:
    """Operator name -> the version the file records for it."""
    model = schema("Model").Model.GetRootAs(data, 0)
    builtin = {v: k for k, v in vars(schema("BuiltinOperator").BuiltinOperator).items() if not k.startswith("_")}
    return {builtin[model.OperatorCodes(i).BuiltinCode()]: model.OperatorCodes(i).Version()
            for i in range(model.OperatorCodesLength())}


@pytest.fixture(scope="module")
def modules() -> dict[str, nn.Module]:
    made = {}
    for name, make in MODELS.items():
        torch.manual_seed(0)
        made[name] = make().eval()
    return made


@pytest.fixture(scope="module")
def fp32_files(modules, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ops")
    for name, module in modules.items():
        export_tflite(_loaded(module), root / f"{name}.tflite")  # checks the file against PyTorch before writing
    return {name: root / f"{name}.tflite" for name in modules}


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).random((32, *SHAPE), dtype=np.float32)


@pytest.mark.parametrize("xnnpack", [True, False], ids=["xnnpack", "builtin-kernels"])
@pytest.mark.parametrize("name", list(MODELS))
def test_fp32_matches_pytorch(modules, fp32_files, images, name, xnnpack):
    assert OPERATORS[name] <= set(operator_names(fp32_files[name]))
    got = TFLitePredictor(fp32_files[name], xnnpack=xnnpack).predict(images)
    np.testing.assert_allclose(got, torch_logits(modules[name], images), rtol=0, atol=FP32_ATOL)


# A program of a pSConv model multiplies its weights by the mask in the graph: pscompress converts a program's dense
# convolutions itself (tests/test_zoo.py), so that model is left out here.
PROGRAMS = [name for name in MODELS if name != "psconv_convs"]


def _program(module: nn.Module) -> nn.Module:
    """``module`` exported with torch.export (any batch size) and rebuilt as pscompress reads a .pt2."""
    program = torch.export.export(module, (torch.rand(2, *SHAPE),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    return program_module(program, "test program").module


@pytest.fixture(scope="module")
def programs(modules) -> dict[str, nn.Module]:
    return {name: _program(modules[name]) for name in PROGRAMS}


@pytest.mark.parametrize("name", PROGRAMS)
def test_a_program_lowers_its_aten_operators_as_the_module_forms(modules, programs, fp32_files, images, tmp_path, name):
    """Pooling, mean, activations, concat, upsample, arithmetic and reshapes as aten calls: the module's file's
    operators, in float32 with its parity, in int8 with its agreement."""
    graph = programs[name].graph
    assert any(str(n.target).startswith("aten.") for n in graph.nodes if n.op == "call_function")
    path = tmp_path / f"{name}.tflite"
    export_tflite(_loaded(programs[name]), path)  # checks the file against PyTorch before writing
    assert sorted(operator_names(path)) == sorted(operator_names(fp32_files[name]))
    want = torch_logits(modules[name], images)
    np.testing.assert_allclose(TFLitePredictor(path).predict(images), want, rtol=0, atol=FP32_ATOL)
    calibration = np.random.default_rng(1).random((64, *SHAPE), dtype=np.float32)
    (tmp_path / "int8.tflite").write_bytes(build_tflite_int8(_loaded(programs[name]), SHAPE, [calibration]))
    predictor = TFLitePredictor(tmp_path / "int8.tflite")
    got = predictor.predict(images)
    assert np.mean(got.argmax(1) == want.argmax(1)) >= INT8_AGREEMENT
    assert np.abs(got - want).max() <= INT8_STEPS * _output_step(predictor._interpreter)


def test_depthwise_and_grouped_psconv_filters_are_stored_sparse(modules, fp32_files):
    module = modules["psconv_convs"]
    psconv = [m for m in module.modules() if isinstance(m, PSConv2d)]
    assert sorted(m.groups for m in psconv) == [4, 16, 16]  # depthwise, depthwise x2, grouped
    filters = 1 + 1 + 4  # one per depthwise layer, one per group of the grouped one
    assert operator_names(fp32_files["psconv_convs"]).count("DENSIFY") == filters
    assert fp32_files["psconv_convs"].stat().st_size < len(build_tflite(_loaded(module), SHAPE, sparse=False))


def test_fp16_exports_verify(modules, tmp_path):
    for name, module in modules.items():  # export_tflite fails beyond 1e-2 (relative) of PyTorch
        assert export_tflite(_loaded(module), tmp_path / f"{name}.tflite", fp16=True).max_rel_diff <= 1e-2


@pytest.mark.parametrize("xnnpack", [True, False], ids=["xnnpack", "builtin-kernels"])
def test_fp32_runs_in_tflite_runtime(modules, fp32_files, images, runtime_python, tmp_path, xnnpack):  # noqa: F811
    """tflite-runtime 2.14 runs every operator (RUNNER: XNNPACK on, then off; ``xnnpack`` picks which to check)."""
    np.save(tmp_path / "x.npy", images)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name, path in fp32_files.items():
        outputs = [tmp_path / f"{name}_xnnpack.npy", tmp_path / f"{name}_builtin.npy"]
        done = subprocess.run([runtime_python, "-c", RUNNER, str(tmp_path / "x.npy"), str(path), *map(str, outputs)],
                              capture_output=True, text=True, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        got = np.load(outputs[0 if xnnpack else 1])
        np.testing.assert_allclose(got, torch_logits(modules[name], images), rtol=0, atol=FP32_ATOL, err_msg=name)


@pytest.fixture(scope="module")
def int8_files(modules, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ops-int8")
    calibration = np.random.default_rng(1).random((64, *SHAPE), dtype=np.float32)
    for name, module in modules.items():
        (root / f"{name}.tflite").write_bytes(build_tflite_int8(_loaded(module), SHAPE, [calibration]))
    return {name: root / f"{name}.tflite" for name in modules}


def _output_step(interpreter) -> float:
    """The quantization step of the logits: the scale of the last DEQUANTIZE's input."""
    last = [op for op in interpreter._get_ops_details() if op["op_name"] == "DEQUANTIZE"][-1]
    return {t["index"]: t["quantization"][0] for t in interpreter.get_tensor_details()}[last["inputs"][0]]


@pytest.mark.parametrize("xnnpack", [True, False], ids=["xnnpack", "builtin-kernels"])
@pytest.mark.parametrize("name", list(MODELS))
def test_int8_matches_pytorch(modules, int8_files, images, name, xnnpack):
    ops = operator_names(int8_files[name])
    # Small int8 filters stay dense: TFLite's sparse format stores a 1-byte index per kept 1-byte weight.
    assert OPERATORS[name] - {"DENSIFY"} <= set(ops) and ops[0] == "QUANTIZE" and ops[-1] == "DEQUANTIZE"
    predictor = TFLitePredictor(int8_files[name], xnnpack=xnnpack)
    got, want = predictor.predict(images), torch_logits(modules[name], images)
    assert np.mean(got.argmax(1) == want.argmax(1)) >= INT8_AGREEMENT
    assert np.abs(got - want).max() <= INT8_STEPS * _output_step(predictor._interpreter)


def test_int8_concatenation_and_logistic_quantization(int8_files):
    """TFLite's int8 CONCATENATION takes inputs in its output's quantization (a QUANTIZE rescales the others)
    and its int8 LOGISTIC only the output scale 1/256 and zero point -128."""
    module = interpreter_module()
    for name in ("pools", "blocks", "activations"):
        interpreter = module.Interpreter(model_path=str(int8_files[name]))
        quantization = {t["index"]: t["quantization"] for t in interpreter.get_tensor_details()}
        for op in interpreter._get_ops_details():
            if op["op_name"] == "CONCATENATION":
                assert {quantization[t] for t in op["inputs"]} == {quantization[op["outputs"][0]]}, name
            if op["op_name"] == "LOGISTIC":
                assert quantization[op["outputs"][0]] == (1 / 256, -128), name
    assert operator_names(int8_files["blocks"]).count("QUANTIZE") > 1  # the input's, and concatenation inputs'


def test_int8_operator_versions_follow_op_version_cc(int8_files):
    """SPLIT is typed by its data input (its first is the axis); an int8 MUL whose input scales multiply to at
    least its output scale is version 3 (TFLite's op_version.cc)."""
    versions = _versions(int8_files["convs"].read_bytes())
    assert versions["SPLIT"] == versions["CONCATENATION"] == 2 and versions["CONV_2D"] == 3
    assert _versions(int8_files["blocks"].read_bytes())["MUL"] == 2
    for scales, version in (((1.0, 1.0, 0.5), 3), ((0.1, 0.1, 1.0), 2)):
        graph = TFLiteGraph()
        a, b, out = (graph.activation(n, (1, 4), np.int8, quantization=Quantization.per_tensor(s, 0))
                     for n, s in zip("abo", scales))
        graph.op("MUL", [a, b], [out], "MulOptions")
        graph.inputs, graph.outputs = [a, b], [out]
        data = graph.serialize("test", {})
        assert _versions(data)["MUL"] == version
        interpreter_module().Interpreter(model_content=data).allocate_tensors()  # the runtime takes that version


class _Function(nn.Module):
    def __init__(self, function: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.function = function

    def forward(self, x):
        return self.function(x)


@pytest.mark.parametrize("layer, message", [
    (nn.AvgPool2d(3, 2, padding=1, count_include_pad=False),
     r"^layer bad: average pooling with this padding \(count_include_pad=False, ceil_mode=False\) has no TFLite equivalent$"),
    (nn.Upsample(scale_factor=2, mode="bilinear"), r"^layer bad: only nearest-neighbour upsampling by an integer factor"),
    (nn.Upsample(scale_factor=1.5), r"^layer bad: only nearest-neighbour upsampling by an integer factor"),
    (_Function(lambda x: F.interpolate(x, scale_factor=3, mode="bicubic")),
     r"^operation interpolate: only nearest-neighbour upsampling by an integer factor"),
    (_Function(lambda x: torch.cat([x, x], 0)), r"^operation cat: TFLite export concatenates a list of tensors along"),
    (_Function(lambda x: 2 / x), r"^operation truediv: TFLite export divides a tensor by a nonzero number only$"),
    (_Function(lambda x: x / x), r"^operation truediv: TFLite export divides a tensor by a number only$"),
    (_Function(lambda x: F.adaptive_avg_pool2d(x, 3)),
     r"^operation adaptive_avg_pool2d: adaptive average pooling from 16x16 to 3x3 has no TFLite equivalent$"),
    (nn.AdaptiveAvgPool2d(5), r"^layer bad: adaptive average pooling from 16x16 to 5x5 has no TFLite equivalent$"),
    (_Function(lambda x: x.reshape(1, -1).reshape(-1, 8, 16, 16)),
     r"^operation reshape: TFLite export reshapes each image on its own: give the batch dimension first"),
    (_Function(lambda x: x.reshape(2, 8, 16, 16)),
     r"^operation reshape: PyTorch's model does not run on one image \(shape '\[2, 8, 16, 16\]' is invalid"),
    (_Function(lambda x: x.transpose(0, 1).transpose(0, 1)),
     r"^operation transpose: TFLite export permutes each image's dimensions, not the batch's$"),
    (_Function(lambda x: F.max_pool2d(x, 3, 1, 1, dilation=2)),
     r"^operation max_pool2d: this pooling window, stride and padding have no TFLite equivalent$"),
    (_Function(lambda x: x - x.mean(1, keepdim=True)), r"^operation mean: TFLite export takes the mean of an image over its"),
    (nn.GroupNorm(2, 8), r"^layer bad \(GroupNorm\) cannot be exported to TFLite$"),
])
def test_unsupported_operation_is_one_line_naming_it_and_nothing_is_written(tmp_path, layer, message):
    module = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1))
    module.add_module("bad", layer)
    for tail in (nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)):
        module.append(tail)
    with pytest.raises(UserError, match=message) as caught:
        export_tflite(_loaded(module), tmp_path / "bad.tflite")
    assert len(str(caught.value).splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("function, message", [
    (lambda x: F.hardtanh(x), r"^operation hardtanh_default \(hardtanh.default\) cannot be exported to TFLite$"),
    (lambda x: x.clamp(0, 2), r"^operation clamp_default \(clamp.default\) cannot be exported to TFLite$"),
    (lambda x: F.pad(x, (1, 1, 1, 1), mode="reflect"),
     r"^operation \w+: TFLite export pads an image's height and width with zeros only$"),
    (lambda x: F.interpolate(x, scale_factor=2, mode="bilinear"),
     r"^operation upsample_bilinear2d_vec: only nearest-neighbour upsampling by an integer factor"),
    (lambda x: torch.cat([x, x], 0), r"^operation cat_default: TFLite export concatenates a list of tensors along"),
    (lambda x: F.elu(x), r"^operation elu_default \(elu.default\) cannot be exported to TFLite$"),
])
def test_an_unsupported_aten_operation_of_a_program_is_one_line_naming_it(tmp_path, function, message):
    module = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), _Function(function), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                           nn.Linear(8, 4)).eval()
    with pytest.raises(UserError, match=message) as caught:
        export_tflite(_loaded(_program(module)), tmp_path / "bad.tflite")
    assert len(str(caught.value).splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


class _Pads(nn.Module):
    """F.pad with zeros: TF-style 'same' before a stride-2 conv (its SAME), uneven before a conv (one PAD of both
    paddings), before a pool (a PAD of its own)."""

    def __init__(self) -> None:
        super().__init__()
        self.same = nn.Conv2d(3, 8, 3, stride=2)
        self.uneven = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 5 * 6, 5)

    def forward(self, x):
        x = self.same(F.pad(x, (0, 1, 0, 1)))                        # 16x16 -> 17x17 -> 8x8
        x = torch.relu(self.uneven(F.pad(x, (1, 2, 0, 1))))          # -> 9x11 -> 9x11
        return self.fc(torch.flatten(F.max_pool2d(F.pad(x, (0, 1, 1, 0)), 2), 1))  # -> 10x12 -> 5x6


@pytest.mark.parametrize("form", ["module", "program"])
def test_zero_padding_becomes_the_convolution_s_padding(tmp_path, images, form):
    torch.manual_seed(0)
    module = _Pads().eval()
    path = tmp_path / "pads.tflite"
    export_tflite(_loaded(module if form == "module" else _program(module)), path)  # verified against PyTorch
    assert operator_names(path).count("PAD") == 2  # the uneven conv's and the pool's; the 'same' one is SAME
    np.testing.assert_allclose(TFLitePredictor(path).predict(images), torch_logits(module, images), rtol=0, atol=FP32_ATOL)
