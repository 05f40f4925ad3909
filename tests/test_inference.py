"""The torch-free inference API and ONNX reader against PyTorch and the onnx package."""
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from export_models import FASHION_CLASSES
from pscompress.board.onnx_predictor import OnnxPredictor, load_input
from pscompress.board.onnx_reader import read_onnx
from pscompress.core.errors import UserError
from pscompress.exporters.pipeline import relative_difference


def test_predictor_matches_pytorch_on_both_paths(exported):
    path, _, loaded = exported("resnet20")
    x = np.random.default_rng(0).random((5, 1, 28, 28), dtype=np.float32)
    with torch.no_grad():
        expected = loaded.module(torch.from_numpy(x)).numpy()
    for native in (False, None):
        p = OnnxPredictor(path, threads=1, native=native)
        assert relative_difference(p.predict(x), expected) <= 1e-4
    assert OnnxPredictor(path, native=False).native is False
    assert p.input_shape == (1, 28, 28) and p.classes == FASHION_CLASSES and p.num_outputs == 10
    assert p.meta["pattern"] == "4of9" and p.meta["accuracy"] == 0.5


def test_predictor_reports_the_path_the_loader_chose(exported, monkeypatch):
    # The loader skips the library on onnxruntime < 1.21; the predictor must not claim it ran.
    import onnxruntime

    path, _, _ = exported("resnet20")
    assert OnnxPredictor(path, threads=1).native is True
    monkeypatch.setattr(onnxruntime, "__version__", "1.20.1")
    assert OnnxPredictor(path, threads=1).native is False


def test_topk_is_softmax_ordered(exported):
    path, _, _ = exported("resnet20")
    p = OnnxPredictor(path, native=False)
    x = np.random.default_rng(1).random((3, 1, 28, 28), dtype=np.float32)
    logits = p.predict(x)
    top = p.topk(x, k=3)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_array_equal(top.indices[:, 0], logits.argmax(1))
    np.testing.assert_allclose(top.values, np.take_along_axis(probs, top.indices, 1), rtol=1e-5)
    assert np.all(np.diff(top.values, axis=1) <= 0)


def test_wrong_input_shape_is_a_user_error(exported):
    path, _, _ = exported("resnet20")
    with pytest.raises(UserError, match=r"\[N, 1, 28, 28\]"):
        OnnxPredictor(path, native=False).predict(np.zeros((1, 3, 28, 28), np.float32))


def test_image_input_is_converted_and_resized(tmp_path):
    pixels = (np.arange(64 * 48 * 3) % 251).astype(np.uint8).reshape(48, 64, 3)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    x = load_input(tmp_path / "photo.png", (1, 28, 28))
    expected = np.asarray(Image.fromarray(pixels).convert("L").resize((28, 28), Image.BILINEAR), np.float32) / 255
    assert x.shape == (1, 1, 28, 28) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], expected)
    assert load_input(tmp_path / "photo.png", (3, 32, 32)).shape == (1, 3, 32, 32)


def test_resize_crops_the_centre_and_bgr_reverses_the_channels(tmp_path):
    # 60 x 20: a red, a green and a blue 20 x 20 square side by side. Shorter side to 10 makes it 30 x 10,
    # whose centre 10 x 10 is the green square; stretching would show all three.
    squares = np.zeros((20, 60, 3), np.uint8)
    for i in range(3):
        squares[:, 20 * i:20 * (i + 1), i] = 255
    Image.fromarray(squares).save(tmp_path / "squares.png")
    cropped = load_input(tmp_path / "squares.png", (3, 10, 10), {"resize": 10})[0]
    assert cropped.shape == (3, 10, 10)
    assert np.all(cropped[1, :, 2:8] == 1.0) and np.all(cropped[[0, 2], :, 2:8] == 0.0)
    bgr = load_input(tmp_path / "squares.png", (3, 10, 10), {"resize": 10, "channel_order": "bgr"})[0]
    np.testing.assert_array_equal(bgr, cropped[::-1])
    stretched = load_input(tmp_path / "squares.png", (3, 10, 10))[0]
    assert stretched[0, :, 0].min() == 1.0 and stretched[2, :, -1].min() == 1.0  # red at the left, blue at the right


def test_npy_input_forms_and_errors(tmp_path):
    np.save(tmp_path / "u8.npy", np.full((28, 28), 255, np.uint8))
    assert load_input(tmp_path / "u8.npy", (1, 28, 28)).max() == 1.0
    np.save(tmp_path / "batch.npy", np.zeros((4, 1, 28, 28), np.float32))
    assert load_input(tmp_path / "batch.npy", (1, 28, 28)).shape == (4, 1, 28, 28)
    np.save(tmp_path / "big.npy", np.full((1, 28, 28), 3.0, np.float32))
    with pytest.raises(UserError, match=r"outside \[0, 1\]"):
        load_input(tmp_path / "big.npy", (1, 28, 28))
    with pytest.raises(UserError, match="shape"):
        load_input(tmp_path / "batch.npy", (3, 32, 32))
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match="neither an image"):
        load_input(tmp_path / "junk.png", (1, 28, 28))


def test_reader_agrees_with_the_onnx_package(exported):
    path, _, _ = exported("resnet20")
    ours, theirs = read_onnx(path), onnx.load(path)
    assert ours.ir_version == theirs.ir_version
    assert ours.opsets == {o.domain: o.version for o in theirs.opset_import}
    assert ours.metadata == {p.key: p.value for p in theirs.metadata_props}
    assert ours.functions == [f"{f.domain}.{f.name}" for f in theirs.functions]
    assert [(n.name, n.op_type, n.domain, n.inputs) for n in ours.nodes] == \
        [(n.name, n.op_type, n.domain, list(n.input)) for n in theirs.graph.node]
    for mine, node in zip(ours.nodes, theirs.graph.node):
        assert mine.attributes == {a.name: onnx.helper.get_attribute_value(a) if a.type != onnx.AttributeProto.STRING
                                   else a.s.decode() for a in node.attribute}
    assert {k: v[0] for k, v in ours.initializers.items()} == {i.name: list(i.dims) for i in theirs.graph.initializer}


def test_reader_rejects_a_non_onnx_file(tmp_path):
    (tmp_path / "x.onnx").write_bytes(b"\xff\xff\xff garbage")
    with pytest.raises(UserError, match="not an ONNX model"):
        read_onnx(tmp_path / "x.onnx")


def test_board_side_modules_import_without_torch_or_onnx():
    code = ("import sys, pscompress.board.onnx_predictor, pscompress.board.onnx_reader, pscompress.cli.commands.run, "
            "pscompress.cli.commands.info; bad = {'torch', 'onnx'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
