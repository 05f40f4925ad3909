"""ONNX export: graph structure, packed weights, metadata, and parity of the portable path.

Oracles: PyTorch's own forward of the unfused model, onnxruntime without the native
library (the model-local functions), and onnx's ReferenceEvaluator.
"""
import math
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx.reference import ReferenceEvaluator
from torch import nn

from pscompress.board.onnx_predictor import Predictor
from pscompress.core.errors import UserError
from pscompress.core.patterns import PatternSet, parse_pattern
from pscompress.exporters.onnx_export import export_onnx
from pscompress.exporters.pipeline import relative_difference
from pscompress.workstation.checkpoint import LoadedModel
from pscompress.workstation.layers import PSConv2d
from pscompress.workstation.sparsify import sparsify


def portable_session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def torch_forward(module: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module.eval()(torch.from_numpy(x)).numpy()


def kept_positions(node: onnx.NodeProto) -> int:
    """len(W) the operator contract demands for a node's attributes."""
    a = {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}
    pattern = PatternSet.from_bitmasks(a["kernel_shape"], a["patterns"])
    return int(pattern.mask(a["out_channels"], a["in_channels"] // a["group"], a["shift"]).sum())


def test_resnet_graph_folds_and_fuses(exported):
    path, summary, _ = exported("resnet20")
    model = onnx.load(path)
    ops = [n.op_type for n in model.graph.node]
    assert "BatchNormalization" not in ops
    # 18 converted 3x3 convs; every block's second conv carries its residual add and ReLU.
    assert ops.count("PSConv") == 9 and ops.count("PSConvAdd") == 9 and summary.psconv_layers == 18
    # Dense leftovers: the stem conv and the two 1x1 projections; only the stem needs a separate Relu.
    assert ops.count("Conv") == 3 and ops.count("Relu") == 1 and "Add" not in ops
    for node in model.graph.node:
        if node.domain == "ai.pscompress":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert set(attrs) == {"kernel_shape", "strides", "pads", "dilations", "group", "in_channels",
                                  "out_channels", "patterns", "shift", "clip_min", "clip_max"}
            assert attrs["clip_min"] == 0.0 and math.isinf(attrs["clip_max"])


def test_initializers_hold_only_the_kept_weights(exported):
    path, summary, loaded = exported("resnet20")
    model = onnx.load(path)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    layers = [m for m in loaded.module.modules() if isinstance(m, PSConv2d)]
    packed = [n for n in model.graph.node if n.domain == "ai.pscompress"]
    for node in packed:
        w = inits[node.input[1]]
        assert w.ndim == 1 and w.size == kept_positions(node)
    assert sum(inits[n.input[1]].size for n in packed) == sum(int(m.mask.sum()) for m in layers)
    assert not any(i.dims == [m.out_channels, m.in_channels, 3, 3] and i.data_type == onnx.TensorProto.BOOL
                   for i in model.graph.initializer for m in layers)


def test_ir_version_opsets_functions_and_metadata(exported):
    path, _, _ = exported("resnet20")
    model = onnx.load(path)
    onnx.checker.check_model(model)
    assert model.ir_version <= 13  # onnxruntime 1.31 refuses 14
    opsets = {o.domain: o.version for o in model.opset_import}
    assert opsets[""] == 18 and opsets["ai.pscompress"] == 1
    assert {(f.domain, f.name) for f in model.functions} >= {("ai.pscompress", "PSConv"), ("ai.pscompress", "PSConvAdd")}
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["pscompress.pattern"] == "4of9"
    assert meta["pscompress.input_shape"] == "[1, 28, 28]"
    assert meta["pscompress.accuracy"] == "0.5"
    assert '"Ankle boot"' in meta["pscompress.classes"]
    assert meta["pscompress.version"]


def optimized_kernels(path, tmp_path) -> list[str]:
    """The operators onnxruntime (ORT_ENABLE_ALL, no native library) runs for a file, each Conv with its fused activation."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / f"optimized-{path.name}")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    nodes = onnx.load(options.optimized_model_filepath).graph.node
    return sorted(n.op_type + "".join(f" {a.s.decode()}" for a in n.attribute if a.name == "activation") for n in nodes)


def test_portable_path_runs_the_dense_exports_kernels(exported, tmp_path):
    """Every Z proven to have Y's shape at export, and the clamp written as Relu: without the
    library onnxruntime fuses the rebuilt Conv, the residual Add and the ReLU exactly as it does
    for `export --dense`, so the portable file is no slower than the dense one."""
    path, _, _ = exported("resnet20")
    functions = {f.name: [n.op_type for n in f.node] for f in onnx.load(path).functions}
    assert "ExactShape" not in functions["PSConvAdd"], functions["PSConvAdd"]
    dense_path, _, _ = exported("resnet20", dense=True)
    kernels = optimized_kernels(path, tmp_path)
    assert kernels == optimized_kernels(dense_path, tmp_path)
    assert kernels.count("Conv Relu") == 19, kernels  # every block's convs with their ReLU (and Add) fused


@pytest.mark.parametrize("batch", [1, 3])
def test_portable_onnxruntime_and_reference_match_pytorch(exported, batch):
    path, _, loaded = exported("resnet20")
    x = np.random.default_rng(batch).random((batch, 1, 28, 28), dtype=np.float32)
    expected = torch_forward(loaded.module, x)
    got = portable_session(path).run(None, {"input": x})[0]
    assert relative_difference(got, expected) <= 1e-4
    if batch == 1:  # the reference evaluator is pure numpy: one image is enough
        ref = ReferenceEvaluator(str(path)).run(None, {"input": x})[0]
        assert relative_difference(ref, expected) <= 1e-4


def test_portable_path_on_fashion_mnist_images(exported):
    from pscompress.board.data import load_dataset

    path, _, loaded = exported("resnet20")
    x = np.ascontiguousarray(load_dataset("fashion-mnist", "test").x[:64], dtype=np.float32)
    expected = torch_forward(loaded.module, x)
    got = portable_session(path).run(None, {"input": x})[0]
    assert relative_difference(got, expected) <= 1e-4
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))


class _Block(nn.Module):
    """One PSConv2d, optionally with a residual add and an activation: every operator variant."""

    def __init__(self, conv: nn.Conv2d, residual: bool, act: nn.Module | None):
        super().__init__()
        self.conv, self.residual, self.act = conv, residual, act

    def forward(self, x):
        y = self.conv(x)
        if self.residual:
            y = y + x
        return self.act(y) if self.act is not None else y


# Each case also picks an operator variant: residual add (PSConvAdd) and/or fused activation.
_LAYERS = {
    "stride2-pad1": dict(cin=6, cout=8, k=3, stride=2, padding=1, groups=1, dilation=1, bias=False, pattern="4of9",
                         residual=False, act=nn.ReLU()),
    "groups-2of9-bias": dict(cin=8, cout=8, k=3, stride=1, padding=1, groups=2, dilation=1, bias=True, pattern="2of9",
                             residual=True, act=nn.ReLU()),
    "depthwise": dict(cin=8, cout=8, k=3, stride=1, padding=1, groups=8, dilation=1, bias=True, pattern="4of9",
                      residual=True, act=None),
    "same": dict(cin=8, cout=8, k=3, stride=1, padding="same", groups=1, dilation=1, bias=False,
                 pattern="3of9", residual=False, act=nn.ReLU6()),
    "no-pad-5x5": dict(cin=5, cout=7, k=5, stride=1, padding=0, groups=1, dilation=1, bias=True, pattern=None,
                       residual=False, act=None),
}


def _layer(spec: dict, seed: int) -> PSConv2d:
    torch.manual_seed(seed)
    conv = nn.Conv2d(spec["cin"], spec["cout"], spec["k"], spec["stride"], spec["padding"], spec["dilation"],
                     spec["groups"], spec["bias"])
    if spec["pattern"]:
        pattern = parse_pattern(spec["pattern"])
    else:  # a 5x5 period-3 set of crosses and diagonals, each with the centre
        pattern = PatternSet((5, 5), (frozenset({2, 7, 12, 17, 22}), frozenset({10, 11, 12, 13, 14}),
                                      frozenset({0, 6, 12, 18, 24, 4, 8, 16, 20})))
    return PSConv2d.from_conv(conv, pattern, shift=seed % pattern.period)


@pytest.mark.parametrize("name", sorted(_LAYERS))
def test_single_layer_variants(tmp_path, name):
    spec = _LAYERS[name]
    conv = _layer(spec, seed=len(name))
    hw = 11
    residual = spec["residual"]
    module = _Block(conv, residual, spec["act"]).eval()
    loaded = LoadedModel(module, meta={"input_shape": [spec["cin"], hw, hw]})
    summary = export_onnx(loaded, tmp_path / "m.onnx")
    model = onnx.load(tmp_path / "m.onnx")
    assert [n.op_type for n in model.graph.node] == ["PSConvAdd" if residual else "PSConv"]
    x = np.random.default_rng(0).random((2, spec["cin"], hw, hw), dtype=np.float32)
    expected = torch_forward(module, x)
    assert relative_difference(portable_session(tmp_path / "m.onnx").run(None, {"input": x})[0], expected) <= 1e-4
    ref = ReferenceEvaluator(model).run(None, {"input": x})[0]
    assert relative_difference(ref, expected) <= 1e-4
    native = Predictor(tmp_path / "m.onnx", native=True).predict(x)  # the kernel accepts every attribute written
    assert relative_difference(native, expected) <= 1e-4
    assert summary.psconv_layers == 1


def test_packed_file_is_at_most_half_the_dense_one_for_resnet18(exported):
    packed, s_packed, _ = exported("resnet18")
    dense, s_dense, _ = exported("resnet18", dense=True)
    ratio = packed.stat().st_size / dense.stat().st_size
    assert ratio <= 0.5, ratio
    assert "ai.pscompress" not in {n.domain for n in onnx.load(dense).graph.node}
    assert s_packed.dense_bytes == s_dense.bytes  # the summary's dense size is the real dense export's


def test_dense_size_of_a_small_model_is_its_dense_export(tmp_path):
    # A face-detector-sized net: the operator's functions and fused nodes are a tenth of its file.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 10, 3), nn.PReLU(10), nn.MaxPool2d(2), nn.Conv2d(10, 16, 3), nn.PReLU(16),
                        nn.Conv2d(16, 32, 3), nn.PReLU(32), nn.Conv2d(32, 2, 1))
    sparsify(net, "4of9", input_shape=(3, 12, 12))
    loaded = LoadedModel(net.eval(), meta={"input_shape": [3, 12, 12]})
    packed = export_onnx(loaded, tmp_path / "p.onnx")
    dense = export_onnx(loaded, tmp_path / "d.onnx", dense=True)
    assert packed.psconv_layers == 2 and packed.dense_bytes == dense.bytes == (tmp_path / "d.onnx").stat().st_size


def test_model_without_psconv_exports_dense_with_a_warning(tmp_path):
    loaded = LoadedModel(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval(),
                         meta={"input_shape": [1, 8, 8]})
    with pytest.warns(UserWarning, match="no pSConv layer"):
        summary = export_onnx(loaded, tmp_path / "dense.onnx")
    model = onnx.load(tmp_path / "dense.onnx")
    assert summary.psconv_layers == 0 and not model.functions
    assert "ai.pscompress" not in {o.domain for o in model.opset_import}


def test_dilated_layer_is_exported_as_a_dense_conv_with_a_warning(tmp_path):
    conv = PSConv2d(4, 4, 3, padding=2, dilation=2, pattern=parse_pattern("4of9"))
    module = nn.Sequential(conv, nn.ReLU()).eval()
    with pytest.warns(UserWarning, match=r"layer 0: dilation \(2, 2\) is exported as a dense Conv"):
        export_onnx(LoadedModel(module, meta={"input_shape": [4, 9, 9]}), tmp_path / "m.onnx")
    model = onnx.load(tmp_path / "m.onnx")
    assert [n.op_type for n in model.graph.node] == ["Conv", "Relu"]
    x = np.random.default_rng(0).random((1, 4, 9, 9), dtype=np.float32)
    assert relative_difference(portable_session(tmp_path / "m.onnx").run(None, {"input": x})[0],
                               torch_forward(module, x)) <= 1e-4


def test_unsupported_layer_is_named(tmp_path):
    conv = PSConv2d(4, 4, 3, padding=1, padding_mode="reflect", pattern=parse_pattern("4of9"))
    loaded = LoadedModel(nn.Sequential(nn.Conv2d(1, 4, 1), conv).eval(), meta={"input_shape": [1, 8, 8]})
    with pytest.raises(UserError, match=r"layer 1: padding_mode='reflect'"):
        export_onnx(loaded, tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


def test_unwritable_output_is_a_clear_error(tmp_path):
    loaded = LoadedModel(nn.Sequential(nn.Conv2d(1, 2, 3)).eval(), meta={"input_shape": [1, 8, 8]})
    with pytest.raises(UserError, match="does not exist"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(loaded, tmp_path / "missing" / "m.onnx")


def test_missing_input_shape_is_a_clear_error(tmp_path):
    loaded = LoadedModel(nn.Sequential(nn.Conv2d(1, 2, 3)).eval())
    with pytest.raises(UserError) as error:
        export_onnx(loaded, tmp_path / "m.onnx")
    assert "--input-shape" in error.value.for_cli()  # the library names its parameter, the CLI its flag


def test_operation_without_onnx_translation_is_named(tmp_path):
    class Inverse(nn.Module):
        def forward(self, x):
            return torch.linalg.inv(x)

    loaded = LoadedModel(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), Inverse()).eval(), meta={"input_shape": [1, 4, 4]})
    with pytest.raises(UserError, match=r"cannot export the model to ONNX: operation linalg_inv"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(loaded, tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())
