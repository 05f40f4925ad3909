"""The benchmark model set (benchmarks/model_set.py) and its speed command (benchmarks/model_set_speed.py)."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import model_set  # noqa: E402
from model_set import MODELS, conv_kinds  # noqa: E402

from pscompress.workstation.layers import PSConv2d  # noqa: E402
from pscompress.workstation.sparsify import sparsify  # noqa: E402


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_builds_and_runs_at_its_input_shape(name):
    builder, shape, batches = MODELS[name]
    assert len(shape) == 3 and batches and all(b >= 1 for b in batches)
    module = builder()
    assert not module.training
    with torch.no_grad():
        out = module(torch.rand(1, *shape))
    assert out.ndim == 2 and out.shape[0] == 1 and torch.isfinite(out).all()


def test_mobilenetv2_depthwise_convs_become_psconv_with_groups_equal_to_channels():
    builder, shape, _ = MODELS["mobilenetv2"]
    module = builder()
    depthwise = [n for n, m in module.named_modules()
                 if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) and m.groups == m.in_channels > 1]
    assert len(depthwise) == 17
    sparsify(module, "4of9", input_shape=shape, align=False)
    for name in depthwise:
        conv = module.get_submodule(name)
        assert isinstance(conv, PSConv2d) and conv.groups == conv.in_channels == conv.out_channels
    kinds = conv_kinds(module)
    assert kinds["psconv"] == {"regular": 0, "grouped": 0, "depthwise": 17}
    assert kinds["dense"] == {"regular": 1, "grouped": 0, "depthwise": 0}  # the stem, the first conv run


def test_regnetx_grouped_convs_become_psconv_with_group_width_16():
    builder, shape, _ = MODELS["regnetx"]
    module = builder()
    sparsify(module, "2of9", input_shape=shape, align=False)
    grouped = [m for m in module.modules() if isinstance(m, PSConv2d)]
    assert grouped and all(1 < m.groups < m.in_channels and m.in_channels // m.groups == 16 for m in grouped)
    assert conv_kinds(module)["psconv"]["grouped"] == len(grouped) == 8


def test_imagenet_resnet18_converts_every_3x3_and_keeps_the_7x7_stem_dense():
    builder, shape, _ = MODELS["resnet18_imagenet"]
    module = builder()
    sparsify(module, "4of9", input_shape=shape, align=False)
    assert type(module.stem[0]) is torch.nn.Conv2d and module.stem[0].kernel_size == (7, 7)
    assert conv_kinds(module) == {"psconv": {"regular": 16, "grouped": 0, "depthwise": 0},
                                  "dense": {"regular": 0, "grouped": 0, "depthwise": 0}}


def test_speed_smoke_run_on_the_sample_names_cpu_path_and_onnxruntime(tmp_path, capsys):
    import onnxruntime

    import model_set_speed
    from pscompress import runtime
    from pscompress.board.tune import cpu_model

    if not runtime.native_available():
        pytest.skip("the native kernel library is not built")
    out = tmp_path / "records.json"
    code = model_set_speed.main(["--models", "sample_resnet20", "--batches", "1", "--threads", "1",
                                 "--repeats", "2", "--budget", "0.005", "--no-tune", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    header = printed.splitlines()[0]
    for text in (cpu_model(), runtime.cpu_path(), f"onnxruntime {onnxruntime.__version__}"):
        assert text in header
    records = json.loads(out.read_text())
    assert len(records) == 1
    record = records[0]
    assert record["cpu"] == cpu_model() and record["isa"] == runtime.cpu_path()
    assert record["onnxruntime"] == onnxruntime.__version__
    assert (record["model"], record["batch"], record["threads"], record["pattern"]) == ("sample_resnet20", 1, 1, "4of9")
    assert record["psconv_nodes"] == 18
    for key in ("speedup", "cpu_speedup"):
        assert math.isfinite(record[key]) and record[key] > 0
    assert "| sample_resnet20 | 4of9 | 1 | 1 |" in printed


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenetv2", "regnetx"])
def test_depthwise_and_grouped_exports_run_natively(name, tmp_path):
    """The depthwise / grouped PSConv nodes export, verify against PyTorch and load in the native library."""
    import numpy as np

    from pscompress import runtime
    from pscompress.exporters.onnx_export import export_onnx
    from pscompress.workstation.checkpoint import LoadedModel

    if not runtime.native_available():
        pytest.skip("the native kernel library is not built")
    builder, shape, _ = MODELS[name]
    module = builder()
    sparsify(module, "4of9", input_shape=shape, align=False)
    summary = export_onnx(LoadedModel(module, None, meta={"input_shape": list(shape)}), tmp_path / "m.onnx")
    assert summary.psconv_layers == sum(conv_kinds(module)["psconv"].values())
    x = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    native = runtime.create_session(summary.path, threads=1, native=True).run(None, {"input": x})[0]
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    assert np.abs(native - expected).max() <= 1e-3 * np.abs(expected).max()


def test_model_set_doc_lists_every_model():
    for name in MODELS:
        assert name in (model_set.__doc__ or "")
