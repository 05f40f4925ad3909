"""Lean convolutions (--method lean): the layer against a dense conv oracle, the conversion report,
checkpoints, the CLI, fine-tuning and ONNX export (portable and native)."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pscompress.board.onnx_predictor import Predictor
from pscompress.board.tflite_predictor import TFLitePredictor
from pscompress.core.errors import UserError
from pscompress.exporters.pipeline import relative_difference
from pscompress.exporters.tflite import interpreter_installed
from pscompress.workstation.archs import build
from pscompress.workstation.checkpoint import LoadedModel, load_model, save_checkpoint
from pscompress.workstation.lean import LeanConv2d, leanify

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "fashion_resnet20.pt"
STENCILS = {"5point": [1, 3, 4, 5, 7], "4point": [1, 3, 5, 7]}


def _equivalent_dense(layer: LeanConv2d) -> torch.Tensor:
    """The 3x3 weight one conv would need: diagonal kernels = stencil taps + centre, off-diagonal = centre only."""
    channels = layer.pointwise.in_channels
    weight = torch.zeros(channels, channels, 3, 3)
    weight[:, :, 1, 1] = layer.pointwise.weight.detach()[:, :, 0, 0]
    weight[range(channels), range(channels)] += layer.depthwise.masked_weight().detach()[:, 0]
    return weight


def _random_conv(channels: int, stride: int, bias: bool, seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=bias)


@pytest.mark.parametrize("stencil", sorted(STENCILS))
@pytest.mark.parametrize("stride, bias", [(1, True), (2, False), (2, True)])
def test_layer_matches_the_equivalent_dense_conv(stencil, stride, bias):
    conv = _random_conv(6, stride, bias)
    layer = LeanConv2d.from_conv(conv, stencil)
    with torch.no_grad():  # trained-like weights in every kept tap, the depth-wise centre included
        layer.depthwise.weight.normal_()
        layer.depthwise.weight.mul_(layer.depthwise.mask)
    x = torch.randn(2, 6, 9, 9)
    expected = F.conv2d(x, _equivalent_dense(layer), conv.bias, stride=stride, padding=1)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    kept = layer.depthwise.mask[0, 0].flatten().nonzero().flatten().tolist()
    assert kept == STENCILS[stencil] and bool(layer.depthwise.mask.all(dim=0).eq(layer.depthwise.mask[0]).all())


def test_initialisation_copies_the_dense_entries_it_can_hold():
    conv = _random_conv(5, 1, True)
    layer = LeanConv2d.from_conv(conv, "5point")
    weight = conv.weight.detach()
    lean = _equivalent_dense(layer)
    keep = torch.zeros_like(weight, dtype=torch.bool)
    keep[:, :, 1, 1] = True
    for c in range(5):
        keep[c, c].view(-1)[STENCILS["5point"]] = True
    torch.testing.assert_close(lean[keep], weight[keep])  # least squares: every representable entry is exact
    assert torch.count_nonzero(lean[~keep]) == 0
    assert torch.count_nonzero(layer.depthwise.weight[:, 0, 1, 1]) == 0  # the centre went to the 1x1 conv
    torch.testing.assert_close(layer.pointwise.bias, conv.bias)


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),      # 0: first conv
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),      # 2: lean
                         nn.Conv2d(8, 8, 3, stride=2, padding=1),       # 4: lean, stride 2
                         nn.Conv2d(8, 12, 3, padding=1),                # 5: in != out
                         nn.Conv2d(12, 12, 3, padding=1, groups=3),     # 6: grouped
                         nn.Conv2d(12, 12, 1),                          # 7: 1x1
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 10))


@pytest.mark.parametrize("stencil", sorted(STENCILS))
def test_report_counts_and_reasons(stencil):
    model = _net()
    report = leanify(model, stencil, input_shape=(1, 12, 12))
    assert [type(model[i]).__name__ for i in (2, 4)] == ["LeanConv2d", "LeanConv2d"]
    rows = {layer.name: layer for layer in report.layers}
    taps = len(STENCILS[stencil])
    for name, side in (("2", 12), ("4", 6)):
        row = rows[name]
        assert (row.kind, row.method, row.pattern) == ("lean 3x3", "lean", stencil)
        assert row.params == 8 * 9 + 8 * 8 + 8  # depth-wise weight (all 9 stored) + 1x1 + bias
        assert row.nonzero == 8 * (taps - 1 if stencil == "5point" else taps) + 8 * 8 + 8  # the centre starts 0
        assert row.macs_dense == 8 * 8 * 9 * side * side
        assert row.macs == (8 * taps + 8 * 8) * side * side
    assert [layer.name for layer in report.converted] == ["2", "4"]
    assert report.notes == ["0 stays as it is: the first conv of the net",
                            "5 stays as it is: 8 in != 12 out channels",
                            "6 stays as it is: groups=3",
                            "7 stays as it is: 1x1 kernel, not 3x3"]
    assert report.params == sum(p.numel() for p in model.parameters())


def test_include_exclude_and_nothing_eligible():
    model = _net()
    report = leanify(model, include=["0"], exclude=["4"], input_shape=(1, 12, 12))
    assert [layer.name for layer in report.converted] == ["2"]  # "0" has 1 in != 8 out channels
    assert "4 stays as it is: matches --exclude" in report.notes
    with pytest.raises(UserError, match="no convolution to make lean"):
        leanify(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 8, 3, padding=1)), input_shape=(1, 8, 8))
    with pytest.raises(UserError, match="unknown stencil"):
        leanify(_net(), "9point", input_shape=(1, 12, 12))


@pytest.fixture(scope="module")
def sample() -> LoadedModel:
    return load_model(SAMPLE)


@pytest.fixture(scope="module")
def lean_checkpoint(sample, tmp_path_factory) -> Path:
    lean = copy.deepcopy(sample)
    leanify(lean.module, "4point")
    path = tmp_path_factory.mktemp("lean") / "lean.pt"
    save_checkpoint(lean, path)
    return path


def test_checkpoint_round_trip_gives_identical_outputs(sample, lean_checkpoint):
    lean = copy.deepcopy(sample)
    leanify(lean.module, "4point")
    with torch.no_grad():  # a fine-tuned depth-wise centre must survive too
        lean.module.layers[0].conv1.depthwise.weight.add_(0.5).mul_(lean.module.layers[0].conv1.depthwise.mask)
    path = lean_checkpoint.with_name("tuned.pt")
    save_checkpoint(lean, path)
    loaded = load_model(path)
    assert isinstance(loaded.module.layers[0].conv1, LeanConv2d) and loaded.module.layers[0].conv1.stencil == "4point"
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module.eval()(x), lean.module.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize("value, message", [({"method": "lean", "stencil": "3point"}, "exactly a method"),
                                            ({"method": "lean", "stencil": ["5point"]}, "exactly a method"),
                                            ({"method": "lean", "stencil": "5point", "x": 1}, "exactly a method")])
def test_hostile_lean_state_is_refused(lean_checkpoint, tmp_path, value, message):
    checkpoint = torch.load(lean_checkpoint, weights_only=True)
    checkpoint["state_dict"]["layers.0.conv1._extra_state"] = value
    torch.save(checkpoint, tmp_path / "bad.pt")
    with pytest.raises(UserError, match=message):
        load_model(tmp_path / "bad.pt")


def test_depthwise_pattern_other_than_the_stencil_is_refused(lean_checkpoint, tmp_path):
    checkpoint = torch.load(lean_checkpoint, weights_only=True)
    checkpoint["state_dict"]["layers.0.conv1.depthwise._extra_state"]["patterns"] = [511]
    torch.save(checkpoint, tmp_path / "bad.pt")
    with pytest.raises(UserError, match="is not its 4point stencil"):
        load_model(tmp_path / "bad.pt")


def test_lean_state_on_an_ineligible_conv_is_refused(lean_checkpoint, tmp_path):
    checkpoint = torch.load(lean_checkpoint, weights_only=True)
    checkpoint["state_dict"]["layers.3.conv1._extra_state"] = {"method": "lean", "stencil": "5point"}
    torch.save(checkpoint, tmp_path / "bad.pt")
    with pytest.raises(UserError, match="cannot be a lean layer .16 in != 32 out"):
        load_model(tmp_path / "bad.pt")


def test_cli_converts_and_refuses_bad_combinations(tmp_path, run_cli):
    code, out, err = run_cli("convert", SAMPLE, "--method", "lean", "--stencil", "4point", "-o", tmp_path / "l.pt")
    assert code == 0, err
    assert "16 layer(s) converted" in out and "conv1 stays as it is: the first conv of the net" in out
    assert load_model(tmp_path / "l.pt").meta["pattern"] == "lean 4point"
    for args in (["--stencil", "5point"], ["--method", "lean", "--pattern", "2of9"],
                 ["--method", "lean", "--no-align"]):
        code, out, err = run_cli("convert", SAMPLE, *args, "-o", tmp_path / "x.pt")
        assert code == 2 and len(err.strip().splitlines()) == 1, (args, err)
    assert run_cli("convert", SAMPLE, "--method", "dense", "-o", tmp_path / "x.pt").code == 2  # click's usage error
    assert not (tmp_path / "x.pt").exists()


def test_finetune_keeps_the_stencil(lean_checkpoint, tmp_path, run_cli):
    code, out, err = run_cli("finetune", lean_checkpoint, "--data", "fashion-mnist", "-o", tmp_path / "tuned.pt",
                             "--epochs", "1", "--batch-size", "32", "--limit", "64")
    assert code == 0, err
    tuned = load_model(tmp_path / "tuned.pt").module
    layers = [m for m in tuned.modules() if isinstance(m, LeanConv2d)]
    assert len(layers) == 16
    for layer in layers:
        assert torch.count_nonzero(layer.depthwise.weight[~layer.depthwise.mask]) == 0


def test_onnx_export_parity_portable_and_native(lean_checkpoint, tmp_path, run_cli):
    code, out, err = run_cli("export", lean_checkpoint, "-o", tmp_path / "lean.onnx")
    assert code == 0, err
    graph = onnx.load(tmp_path / "lean.onnx").graph
    assert sum(node.op_type.startswith("PSConv") for node in graph.node) == 16  # each depth-wise part
    x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    with torch.no_grad():
        expected = load_model(lean_checkpoint).module.eval()(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(tmp_path / "lean.onnx"), providers=["CPUExecutionProvider"])
    portable = session.run(None, {"input": x})[0]
    native = Predictor(tmp_path / "lean.onnx", native=True).predict(x)
    assert relative_difference(portable, expected) <= 1e-4
    assert relative_difference(native, expected) <= 1e-4
    assert relative_difference(native, portable) <= 1e-4


def test_batch_norm_after_the_sum_folds_into_both_branches(lean_checkpoint):
    """BN(dw(x) + pw(x)) = dw'(x) + pw'(x): no BatchNormalization left, outputs unchanged."""
    from pscompress.exporters.fold import fold_batchnorm

    model = load_model(lean_checkpoint).module.eval()
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.from_numpy(np.random.default_rng(1).random((3, 1, 28, 28), dtype=np.float32))
    with torch.no_grad():
        assert relative_difference(folded(x).numpy(), model(x).numpy()) <= 1e-5


@pytest.mark.skipif(not interpreter_installed(), reason="no TFLite interpreter")
def test_tflite_export_parity(lean_checkpoint, tmp_path, run_cli):
    code, out, err = run_cli("export", lean_checkpoint, "-o", tmp_path / "lean.tflite")
    assert code == 0, err
    x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    with torch.no_grad():
        expected = load_model(lean_checkpoint).module.eval()(torch.from_numpy(x)).numpy()
    got = TFLitePredictor(tmp_path / "lean.tflite").predict_normalized(x)
    assert relative_difference(got, expected) <= 1e-4
