"""Virtual Pooling (--virtual-pool): the upsample against onnx's reference Resize, the layer against
F.conv2d at stride 2 plus that oracle, the report, checkpoints, the CLI and both exports."""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator
from torch import nn

from pscompress.core.errors import UserError
from pscompress.core.patterns import parse_pattern
from pscompress.exporters.fold import fold_batchnorm
from pscompress.exporters.pipeline import relative_difference
from pscompress.exporters.tflite import interpreter_installed
from pscompress.workstation.checkpoint import LoadedModel, load_model, save_checkpoint
from pscompress.workstation.layers import PSConv2d
from pscompress.workstation.sparsify import sparsify
from pscompress.workstation.virtual_pool import (VirtualPoolConv2d, upsample2x, upsample_macs, virtual_pool,
                                                 virtual_pool_reason)

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "fashion_resnet20.pt"
STAGE3 = "layers.[678].*"  # resnet20's third stage: 64 channels at 7x7 for a 28x28 image


def _resize_oracle(y: np.ndarray) -> np.ndarray:
    """ONNX Resize, mode linear, coordinate_transformation_mode asymmetric, scale 2, run by onnx.reference."""
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear",
                            coordinate_transformation_mode="asymmetric")
    graph = helper.make_graph([node], "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(y.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return ReferenceEvaluator(model).run(None, {"x": y})[0]


def _oracle(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The dense conv at stride 2 (F.conv2d, its masked weight), Resize-upsampled, cropped to x's size."""
    weight = conv.masked_weight() if isinstance(conv, PSConv2d) else conv.weight
    padding = conv.padding if not isinstance(conv.padding, str) else tuple(k // 2 for k in conv.kernel_size)
    y = F.conv2d(x, weight, conv.bias, 2, padding, conv.dilation, conv.groups)
    return torch.from_numpy(_resize_oracle(y.detach().numpy()))[..., :x.shape[2], :x.shape[3]]


@pytest.mark.parametrize("height, width", [(4, 4), (3, 5), (1, 1), (7, 6), (2, 9)])
def test_upsample_is_onnx_resize_linear_asymmetric(height, width):
    y = np.random.default_rng(height * 10 + width).standard_normal((2, 3, height, width), dtype=np.float32)
    expected = _resize_oracle(y)
    got = upsample2x(torch.from_numpy(y), 2 * height, 2 * width).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    cropped = upsample2x(torch.from_numpy(y), 2 * height - 1, 2 * width - 1).numpy()
    np.testing.assert_array_equal(cropped, got[..., :-1, :-1])


def _psconv() -> PSConv2d:
    torch.manual_seed(1)
    return PSConv2d.from_conv(nn.Conv2d(4, 6, 3, padding=1, bias=True), parse_pattern("4of9"), shift=1)


@pytest.mark.parametrize("conv", [
    nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=False),
    nn.Conv2d(4, 4, 5, padding=2, groups=4), nn.Conv2d(4, 6, 3, padding=2, dilation=2),
    nn.Conv2d(4, 6, 1), nn.Conv2d(4, 6, 3, padding="same"), _psconv()], ids=str)
@pytest.mark.parametrize("size", [(8, 8), (7, 9), (1, 2)])
def test_layer_is_the_conv_at_stride_2_then_the_resize(conv, size):
    torch.manual_seed(0)
    layer = VirtualPoolConv2d.from_conv(conv)
    x = torch.randn(2, 4, *size)
    with torch.no_grad():
        got = layer(x)
        torch.testing.assert_close(got, _oracle(conv, x), rtol=1e-5, atol=1e-5)
        assert got.shape == conv(x).shape
        torch.testing.assert_close(got[..., ::2, ::2], conv(x)[..., ::2, ::2], rtol=1e-5, atol=1e-5)
    assert tuple(conv.stride) == (1, 1)  # from_conv copies: the original conv is untouched


def test_eligibility_reasons():
    assert virtual_pool_reason("a", nn.Conv2d(3, 3, 3, stride=2, padding=1)) == "stride (2, 2), not 1"
    assert "not the size of its input" in virtual_pool_reason("a", nn.Conv2d(3, 3, 3))
    assert "not the size of its input" in virtual_pool_reason("a", nn.Conv2d(3, 3, 2, padding="same"))
    assert virtual_pool_reason("a", nn.Linear(3, 3)) == "not a convolution"

    class Padded(nn.Conv2d):
        def forward(self, x):
            return super().forward(F.pad(x, (1, 1, 1, 1)))

    assert "own forward" in virtual_pool_reason("a", Padded(3, 3, 3))
    with pytest.raises(UserError, match="stride"):
        VirtualPoolConv2d.from_conv(nn.Conv2d(3, 3, 3, stride=2, padding=1))


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),  # 0: the first conv
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),  # 3
                         nn.Conv2d(8, 16, 3, stride=2, padding=1),                     # 6: stride 2
                         nn.Conv2d(16, 16, 3, padding=1, groups=4),                    # 7: grouped, odd 5x5
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def test_report_counts_macs_and_says_why():
    model = _net()
    report = virtual_pool(model, ["*"], (1, 10, 10))
    assert [type(model[i]).__name__ for i in (0, 3, 6, 7)] == ["Conv2d", "VirtualPoolConv2d", "Conv2d",
                                                              "VirtualPoolConv2d"]
    rows = {row.name: row for row in report.layers}
    assert [row.name for row in report.converted] == ["3", "7"]
    assert (rows["3"].kind, rows["3"].method) == ("ViP conv 3x3", "virtual-pool")
    assert rows["3"].macs_dense == 8 * 8 * 9 * 10 * 10
    # 5x5 at stride 2 for the 10x10 output; the upsample: 8 channels, 5x5 even/even, 2 taps at 2 x 25, 4 at 25.
    assert rows["3"].macs == 8 * 8 * 9 * 25 + 8 * (2 * 25 + 2 * 25 + 4 * 25) == 14400 + upsample_macs(8, 10, 10)
    assert rows["7"].macs_dense == 16 * 4 * 9 * 25 and rows["7"].macs == 16 * 4 * 9 * 9 + upsample_macs(16, 5, 5)
    assert upsample_macs(16, 5, 5) == 16 * (2 * 3 * 2 + 2 * 2 * 3 + 4 * 2 * 2)
    assert report.notes == ["0 stays as it is: the first conv of the net (give its exact name to virtual-pool it)",
                            "6 stays as it is: stride (2, 2), not 1"]
    assert report.params == sum(p.numel() for p in model.parameters())


def test_globs_first_conv_and_errors():
    model = _net()
    report = virtual_pool(model, ["0", "[37]"], (1, 10, 10))
    assert [row.name for row in report.converted] == ["0", "3", "7"]  # the first conv named exactly
    with pytest.raises(UserError, match=r"'9\*' matches no convolution$"):
        virtual_pool(_net(), ["9*"], (1, 10, 10))
    with pytest.raises(UserError, match=r"'6' matches no convolution that can be virtual-pooled .*6: stride"):
        virtual_pool(_net(), ["3", "6"], (1, 10, 10))
    with pytest.raises(UserError, match="already virtual-pooled"):
        virtual_pool(model, ["3.*"], (1, 10, 10))


def test_batch_norm_folds_through_the_upsample():
    model = _net()
    virtual_pool(model, ["3"], (1, 10, 10))
    with torch.no_grad():  # batch-norm statistics that matter
        model[4].running_mean.uniform_(-1, 1), model[4].running_var.uniform_(0.5, 2), model[4].weight.uniform_(0.5, 2)
    folded = fold_batchnorm(model.eval())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(3, 1, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def vip_checkpoint(tmp_path_factory) -> tuple[Path, LoadedModel]:
    """The sample, 4of9 pSConv, then its third stage virtual-pooled, saved."""
    loaded = load_model(SAMPLE)
    virtual_pool(loaded.module, [STAGE3], prior=sparsify(loaded.module, "4of9", input_shape=(1, 28, 28)),
                 input_shape=(1, 28, 28))
    path = tmp_path_factory.mktemp("vip") / "vip.pt"
    save_checkpoint(loaded, path)
    return path, loaded


def test_checkpoint_round_trip_gives_identical_outputs(vip_checkpoint):
    path, converted = vip_checkpoint
    loaded = load_model(path)
    layer = loaded.module.layers[7].conv1
    assert isinstance(layer, VirtualPoolConv2d) and isinstance(layer.conv, PSConv2d) and layer.conv.stride == (2, 2)
    assert layer.conv.pattern == converted.module.layers[7].conv1.conv.pattern
    assert isinstance(loaded.module.layers[6].conv1, PSConv2d)  # stride 2: not virtual-pooled
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module.eval()(x), converted.module.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize("key, value, message", [
    ("layers.7.conv1._extra_state", {"method": "virtual-pool", "x": 1}, "records exactly its method"),
    ("layers.6.conv1._extra_state", {"method": "virtual-pool"}, r"layers.6.conv1 cannot be a virtual-pool layer \(stride"),
    ("fc._extra_state", {"method": "virtual-pool"}, "not a convolution of this architecture")])
def test_hostile_virtual_pool_state_is_refused(vip_checkpoint, tmp_path, key, value, message):
    checkpoint = torch.load(vip_checkpoint[0], weights_only=True)
    checkpoint["state_dict"][key] = value
    torch.save(checkpoint, tmp_path / "bad.pt")
    with pytest.raises(UserError, match=message):
        load_model(tmp_path / "bad.pt")


def test_cli_converts_alone_and_with_a_pattern(tmp_path, run_cli):
    code, out, err = run_cli("convert", SAMPLE, "--virtual-pool", STAGE3, "-o", tmp_path / "v.pt")
    assert code == 0, err
    assert "5 layer(s) converted" in out and "layers.6.conv1 stays as it is: stride (2, 2), not 1" in out
    loaded = load_model(tmp_path / "v.pt")
    assert loaded.meta["virtual_pool"] == [STAGE3] and "sparsify" not in loaded.meta
    assert not any(isinstance(m, PSConv2d) for m in loaded.module.modules())
    code, out, err = run_cli("convert", SAMPLE, "--pattern", "4of9", "--virtual-pool", "layers.8.*",
                             "--virtual-pool", "layers.7.conv2", "-o", tmp_path / "vp.pt")
    assert code == 0, err
    assert "18 layer(s) converted" in out and out.count("ViP pSConv 3x3") == 3
    assert isinstance(load_model(tmp_path / "vp.pt").module.layers[7].conv2.conv, PSConv2d)


@pytest.mark.parametrize("args, message", [
    (["--method", "lean", "--virtual-pool", STAGE3], "does not combine with --method lean"),
    (["--virtual-pool", "layer3.*"], "--virtual-pool 'layer3.*' matches no convolution"),
    (["--virtual-pool", "layers.6.conv1"], "matches no convolution that can be virtual-pooled"),
    (["--virtual-pool", "*"], None),  # only the first conv's note: every other stride-1 conv converts
    (["--virtual-pool", STAGE3, "--period", "2"], "--period is for pSConv layers"),
    (["--virtual-pool", STAGE3, "--exclude", "conv1"], "--include/--exclude is for pSConv layers")])
def test_cli_errors_are_one_line(tmp_path, run_cli, args, message):
    code, out, err = run_cli("convert", SAMPLE, *args, "-o", tmp_path / "x.pt")
    if message is None:
        assert code == 0, err
        return
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "x.pt").exists()


def test_onnx_export_is_conv_or_psconv_then_resize(vip_checkpoint, tmp_path, run_cli):
    path, converted = vip_checkpoint
    code, out, err = run_cli("export", path, "-o", tmp_path / "vip.onnx")
    assert code == 0, err
    graph = onnx.load(tmp_path / "vip.onnx").graph
    resizes = [node for node in graph.node if node.op_type == "Resize"]
    assert len(resizes) == 5 and not any(node.op_type == "BatchNormalization" for node in graph.node)
    attributes = {a.name: a.s for a in resizes[0].attribute}
    assert (attributes["mode"], attributes["coordinate_transformation_mode"]) == (b"linear", b"asymmetric")
    strided = [node for node in graph.node if node.op_type.startswith("PSConv")
               and [a.ints for a in node.attribute if a.name == "strides"] == [[2, 2]]]
    assert len(strided) == 7  # the 5 virtual-pooled layers and layers.3/6.conv1, stride 2 of their own
    x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    with torch.no_grad():
        expected = converted.module.eval()(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(str(tmp_path / "vip.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert relative_difference(got, expected) <= 1e-4


@pytest.mark.skipif(not interpreter_installed(), reason="no TFLite interpreter")
def test_tflite_export_matches_pytorch(vip_checkpoint, tmp_path, run_cli):
    from pscompress.board.tflite_predictor import TFLitePredictor, interpreter_module

    path, converted = vip_checkpoint
    code, out, err = run_cli("export", path, "-o", tmp_path / "vip.tflite")
    assert code == 0, err
    data = (tmp_path / "vip.tflite").read_bytes()
    ops = [op["op_name"] for op in interpreter_module().Interpreter(model_content=data)._get_ops_details()]
    assert ops.count("RESIZE_BILINEAR") == 5 and ops.count("SLICE") == 5  # 7x7: 4x4 resized to 8x8, cropped
    x = np.random.default_rng(1).random((1, 1, 28, 28), dtype=np.float32)
    with torch.no_grad():
        expected = converted.module.eval()(torch.from_numpy(x)).numpy()
    got = TFLitePredictor.from_bytes(data).predict_normalized(x)
    assert relative_difference(got, expected) <= 1e-4


def test_dense_wrapped_model_exports_dense_convs(tmp_path, run_cli):
    model = _net()
    virtual_pool(model, ["3", "7"], (1, 10, 10))
    loaded = LoadedModel(copy.deepcopy(model).eval(), meta={"input_shape": [1, 10, 10]})
    from pscompress.exporters.onnx_export import export_onnx

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a virtual-pooled model is compressed: no "run convert first" warning
        summary = export_onnx(loaded, tmp_path / "net.onnx")
    assert summary.max_rel_diff <= 1e-4
    nodes = [node.op_type for node in onnx.load(tmp_path / "net.onnx").graph.node]
    assert nodes.count("Resize") == 2 and nodes.count("Conv") == 4 and "BatchNormalization" not in nodes


@pytest.mark.skipif(not interpreter_installed(), reason="no TFLite interpreter")
def test_int8_tflite_export_verifies(vip_checkpoint, tmp_path):
    from pscompress.exporters.tflite import export_tflite

    summary = export_tflite(load_model(vip_checkpoint[0]), tmp_path / "vip8.tflite", int8=True, data="fashion-mnist",
                            calibration=16)
    assert summary.max_rel_diff is not None  # within the int8 export's own verification bound
