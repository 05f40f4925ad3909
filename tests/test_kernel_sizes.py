"""Any kernel size (issue 14): 5x5 depthwise, 2x2, 1x3, 3x1 and 3x3 convs through convert, the ONNX
export (native kernel and portable functions) and TFLite; and Conv2d subclasses that pad TF-style
'same' in their forward.

Oracles: PyTorch's forward of the converted model (and F.conv2d on explicitly padded inputs),
onnxruntime with and without the native library, and the TFLite interpreter.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pscompress.board.onnx_predictor import Predictor
from pscompress.board.tflite_predictor import TFLitePredictor
from pscompress.core.errors import UserError
from pscompress.core.patterns import PatternSet, parse_pattern, pattern_name
from pscompress.exporters.onnx_export import export_onnx
from pscompress.exporters.pipeline import relative_difference
from pscompress.exporters.tflite import export_tflite
from pscompress.workstation.checkpoint import LoadedModel, load_model
from pscompress.workstation.layers import PSConv2d
from pscompress.workstation.sparsify import sparsify, tf_same_pads
from pscompress.workstation.surgery import psconv_layers

SHAPE = (3, 16, 16)
PATTERNS = ["4of9", "13of25", "2of4", "2of3"]


class MixedKernels(nn.Module):
    """A 3x3 stem, a 5x5 depthwise conv, a 2x2 conv, 1x3 and 3x1 convs (with a residual), a 3x3 and a 1x1."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw5 = nn.Conv2d(8, 8, 5, padding=2, groups=8)
        self.c2 = nn.Conv2d(8, 16, 2)
        self.row = nn.Conv2d(16, 16, (1, 3), padding=(0, 1))
        self.col = nn.Conv2d(16, 16, (3, 1), padding=(1, 0))
        self.c3 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.pw = nn.Conv2d(16, 16, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.dw5(torch.relu(self.stem(x))))
        x = torch.relu(self.row(torch.relu(self.c2(x))))
        x = torch.relu(self.col(x) + x)
        x = torch.relu(self.pw(torch.relu(self.c3(x))))
        return self.head(torch.flatten(self.pool(x), 1))


def _torch(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A folder holding the mixed model, pickled (as a model of no built-in architecture is given)."""
    folder = tmp_path_factory.mktemp("kernels")
    torch.manual_seed(0)
    torch.save(MixedKernels().eval(), folder / "mixed.pt")
    return folder


def test_convert_gives_each_kernel_size_its_family_and_says_what_stays_dense(converted, run_cli):
    out = converted / "mixed-psconv.pt"
    args = [arg for spec in PATTERNS for arg in ("--pattern", spec)]
    status, stdout, stderr = run_cli("convert", converted / "mixed.pt", "--trust-pickle", "--input-shape", "3,16,16",
                                     *args, "-o", out)
    assert status == 0, stderr
    layers = psconv_layers(load_model(out, trust_pickle=True).module)
    assert set(layers) == {"dw5", "c2", "row", "col", "c3"}  # the stem and the 1x1 stay dense
    for name, layer in layers.items():
        family = {(5, 5): "13of25", (2, 2): "2of4", (1, 3): "2of3", (3, 1): "2of3", (3, 3): "4of9"}[layer.kernel_size]
        assert pattern_name(layer.kernel_size, layer.pattern.bitmasks) == family, name
    assert "1 1x1 conv(s) stay dense: a 1x1 kernel has one position, no sparsity to gain" in stdout
    assert load_model(out, trust_pickle=True).meta["pattern"] == "4of9; 13of25; 2of4; 2of3"


def test_a_kernel_size_without_a_pattern_stays_dense_and_the_report_says_so():
    model = MixedKernels()
    report = sparsify(model, "4of9", input_shape=SHAPE)
    assert set(psconv_layers(model)) == {"c3"}
    assert "1 5x5 conv(s) stay dense: no --pattern is for 5x5 kernels (e.g. --pattern 5x5:13of25)" in report.notes
    assert report.to_dict()["notes"] == report.notes and report.notes[-1] in report.format_table()


def test_pattern_mistakes_name_the_layer_and_its_kernel_size():
    model = MixedKernels()
    with pytest.raises(UserError, match=r"layer row \(1x3 kernel\): period 1 uses only 1 of the 2 supports"):
        sparsify(model, ["4of9", "2of3"], period=1, input_shape=SHAPE, include=["row"], exclude=["*"])
    with pytest.raises(UserError, match=r"`include` 'dw5' matches no dense convolution that a pattern is for \(dw5: 5x5"):
        sparsify(model, "4of9", input_shape=SHAPE, include=["dw5"])
    assert not psconv_layers(model)


def test_onnx_export_native_and_portable_match_pytorch_for_every_kernel_size(tmp_path):
    torch.manual_seed(1)
    model = MixedKernels().eval()
    sparsify(model, PATTERNS, input_shape=SHAPE)
    path = tmp_path / "mixed.onnx"
    summary = export_onnx(LoadedModel(model, meta={"input_shape": list(SHAPE)}), path)
    assert summary.psconv_layers == 5
    nodes = {n.name: n for n in onnx.load(path).graph.node if n.domain == "ai.pscompress"}
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in nodes.values()]
    layers = psconv_layers(model)
    expected = sorted((tuple(m.kernel_size), tuple(m.pattern.bitmasks), m.shift) for m in layers.values())
    assert sorted((tuple(a["kernel_shape"]), tuple(a["patterns"]), a["shift"]) for a in attrs) == expected
    x = np.random.default_rng(0).random((3, *SHAPE), dtype=np.float32)
    reference = _torch(model, x)
    for native in (True, False):
        predictor = Predictor(path, native=native)
        assert predictor.native == native
        assert relative_difference(predictor.predict(x), reference) <= 1e-4, native


def test_tflite_export_matches_pytorch_for_every_kernel_size(tmp_path):
    torch.manual_seed(2)
    model = MixedKernels().eval()
    sparsify(model, PATTERNS, input_shape=SHAPE)
    path = tmp_path / "mixed.tflite"
    export_tflite(LoadedModel(model, meta={"input_shape": list(SHAPE)}), path)
    x = np.random.default_rng(1).random((2, *SHAPE), dtype=np.float32)
    assert relative_difference(TFLitePredictor(path).predict(x), _torch(model, x)) <= 1e-4


# -- Conv2d subclasses that pad in their forward (EfficientNet's TF-style 'same')


class DynamicSame(nn.Conv2d):
    """TF 'same' padding computed from the input in forward, as EfficientNet ports do."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for n, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
            pads.append((total // 2, total - total // 2))
        x = F.pad(x, [*pads[1], *pads[0]])
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class StaticSame(nn.Conv2d):
    """TF 'same' padding fixed at construction for a known image size, in a ZeroPad2d."""

    def __init__(self, *args, image_size: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        top, left, bottom, right = tf_same_pads((image_size, image_size), self.kernel_size, self.stride, self.dilation)
        self.static_padding = nn.ZeroPad2d((left, right, top, bottom))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.static_padding(x), self.weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


class Scaled(nn.Conv2d):
    """A forward that is no padded convolution: it must be refused."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * super().forward(x)


def _efficientnet_like() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        DynamicSame(8, 8, 5, stride=2, groups=8), nn.ReLU(),  # 16 -> 8: pads (1, 1, 2, 2), uneven
        StaticSame(8, 16, 3, stride=2, image_size=8), nn.ReLU(),  # 8 -> 4: pads (0, 0, 1, 1)
        DynamicSame(16, 16, 3), nn.ReLU(),  # stride 1: even pads, an ordinary padding=1
        nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    ).eval()


def test_tf_same_pads_match_tensorflow_arithmetic():
    assert tf_same_pads((16, 16), (5, 5), (2, 2), (1, 1)) == (1, 1, 2, 2)
    assert tf_same_pads((15, 16), (3, 3), (2, 2), (1, 1)) == (1, 0, 1, 1)
    assert tf_same_pads((7, 7), (1, 3), (1, 1), (1, 1)) == (0, 1, 0, 1)
    assert tf_same_pads((9, 9), (3, 3), (1, 1), (2, 2)) == (2, 2, 2, 2)


def test_same_padding_subclasses_convert_exactly_and_export_with_parity(tmp_path):
    torch.manual_seed(3)
    model = _efficientnet_like()
    x = np.random.default_rng(2).random((2, *SHAPE), dtype=np.float32)
    dense_reference = _torch(model, x)
    weights = {name: m.weight.detach().clone() for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    sparsify(model, ["4of9", "5x5:25of25"], input_shape=SHAPE)  # 25of25: dense 5x5, so outputs can be compared
    layers = psconv_layers(model)
    assert set(layers) == {"2", "4", "6"}
    assert layers["2"].pads == (1, 1, 2, 2) and layers["4"].pads == (0, 0, 1, 1)
    assert layers["6"].pads is None and layers["6"].padding == (1, 1)
    # The dense-kernel layer computes exactly what the subclass did (F.conv2d on padded input as the oracle).
    inner = torch.from_numpy(x)
    with torch.no_grad():
        stem = torch.relu(model[0](inner))
        oracle = F.conv2d(F.pad(stem, (1, 2, 1, 2)), weights["2"], model[2].bias, 2, 0, 1, 8)
        assert torch.allclose(model[2](stem), oracle, atol=1e-6)
    assert not np.allclose(_torch(model, x), dense_reference)  # 4of9 did change the 3x3 layers
    reference = _torch(model, x)
    loaded = LoadedModel(model, meta={"input_shape": list(SHAPE)})
    onnx_path = tmp_path / "same.onnx"
    export_onnx(loaded, onnx_path)
    pads = sorted(tuple(onnx.helper.get_attribute_value(a)) for n in onnx.load(onnx_path).graph.node
                  if n.domain == "ai.pscompress" for a in n.attribute if a.name == "pads")
    assert pads == [(0, 0, 1, 1), (1, 1, 1, 1), (1, 1, 2, 2)]
    for native in (True, False):
        assert relative_difference(Predictor(onnx_path, native=native).predict(x), reference) <= 1e-4, native
    dense_path = tmp_path / "same-dense.onnx"
    export_onnx(loaded, dense_path, dense=True)
    assert relative_difference(Predictor(dense_path, native=False).predict(x), reference) <= 1e-4
    tflite_path = tmp_path / "same.tflite"
    export_tflite(loaded, tflite_path)
    assert relative_difference(TFLitePredictor(tflite_path).predict(x), reference) <= 1e-4


def test_uneven_pads_survive_the_state_dict():
    layer = PSConv2d(4, 4, 3, stride=2, pattern=parse_pattern("4of9"), pads=(0, 0, 1, 1))
    fresh = PSConv2d(4, 4, 3, stride=2, pattern=parse_pattern("9of9"))
    fresh.load_state_dict(layer.state_dict())
    assert fresh.pads == (0, 0, 1, 1) and fresh.padding == (0, 0)
    x = torch.rand(1, 4, 8, 8)
    with torch.no_grad():
        assert torch.equal(fresh(x), layer(x))
        assert torch.allclose(layer(x), F.conv2d(F.pad(x, (0, 1, 0, 1)), layer.masked_weight(), layer.bias, 2))
    with pytest.raises(UserError, match="four integers"):
        PSConv2d(4, 4, 3, pattern=parse_pattern("4of9"), pads=(1, 1, -1, 1))


def test_a_subclass_with_another_forward_is_refused_up_front_naming_it():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), Scaled(8, 8, 3, padding=1)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError, match=r"layer 1 \(Scaled\) is a Conv2d subclass whose forward computes neither "
                                        r"a plain convolution nor one after TF-style 'same' padding \(input 8x16x16\)"):
        sparsify(model, "4of9", input_shape=SHAPE)
    assert type(model[1]) is Scaled and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    sparsify(model, "4of9", input_shape=SHAPE, exclude=["1"], include=["0"])  # the way out it names
    assert isinstance(model[0], PSConv2d) and type(model[1]) is Scaled


def test_a_subclass_that_only_wraps_the_plain_forward_converts_as_a_conv():
    class Logged(nn.Conv2d):
        calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            Logged.calls += 1
            return super().forward(x)

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), Logged(8, 8, 3, padding=1)).eval()
    sparsify(model, "4of9", input_shape=SHAPE)
    assert isinstance(model[1], PSConv2d) and model[1].pads is None and model[1].padding == (1, 1)
    assert isinstance(model[1].pattern, PatternSet)


@pytest.mark.parametrize("args, message", [
    (["--pattern", "0,1/2,3"], "(a list without a KHxKW: prefix is for a 3x3 kernel, e.g. write 2x2:0,1/2,3)"),
    (["--pattern", "4of9", "--pattern", "7x7:25of49"], "the pattern for 7x7 fits no convolution of the model "
                                                       "(its kernels: 3x3, 5x5, 2x2, 1x3, 3x1, 1x1)"),
    (["--pattern", "4of9", "--pattern", "2of9"], "two patterns for kernels of 9 positions"),
    (["--pattern", "2of3", "--period", "1", "--include", "row"], "layer row (1x3 kernel): period 1"),
])
def test_cli_pattern_mistakes_are_one_line(converted, tmp_path, run_cli, args, message):
    status, _, stderr = run_cli("convert", converted / "mixed.pt", "--trust-pickle", "--input-shape", "3,16,16",
                                *args, "-o", tmp_path / "out.pt")
    assert status == 2 and stderr.count("\n") == 1 and message in stderr, stderr
    assert not (tmp_path / "out.pt").exists()


def test_cli_refuses_an_unknown_subclass_in_one_line_naming_it(tmp_path, run_cli):
    torch.save(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), Scaled(8, 8, 3, padding=1)), tmp_path / "scaled.pt")
    status, _, stderr = run_cli("convert", tmp_path / "scaled.pt", "--trust-pickle", "--input-shape", "3,16,16",
                                "--include", "0", "-o", tmp_path / "out.pt")
    assert status == 2 and stderr.count("\n") == 1, stderr
    assert "layer 1 (Scaled) is a Conv2d subclass" in stderr and "--exclude" in stderr
