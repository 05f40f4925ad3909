"""Parity of the four ways to run an exported pSConv model, and proof the native kernel ran.

PyTorch (the unfused, unfolded source model) vs onnxruntime with the native kernel library
vs onnxruntime with the portable functions vs onnx's ReferenceEvaluator.
"""
import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx.reference import ReferenceEvaluator

from pscompress import runtime
from pscompress.board.onnx_predictor import Predictor
from pscompress.exporters.onnx_export import export_onnx
from pscompress.exporters.pipeline import relative_difference

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def torch_logits(module, x: np.ndarray, batch: int = 1000) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([module.eval()(torch.from_numpy(x[i:i + batch])).numpy() for i in range(0, len(x), batch)])


def profiled_ops(path, native: bool, x: np.ndarray) -> Counter:
    """op_name of every node onnxruntime ran, from its own profile."""
    so = runtime.session_options(threads=1, native=native)
    so.enable_profiling = True
    so.profile_file_prefix = str(Path(path).with_suffix("")) + f"-native{native}"
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    session.run(None, {"input": x})
    events = json.loads(Path(session.end_profiling()).read_text())
    return Counter(e["args"]["op_name"] for e in events if e.get("cat") == "Node")


def test_native_kernel_runs_the_psconv_nodes(exported):
    path, _, _ = exported("resnet20")
    x = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
    native = profiled_ops(path, True, x)
    assert native["PSConv"] == 9 and native["PSConvAdd"] == 9
    portable = profiled_ops(path, False, x)
    assert portable["PSConv"] == 0 and portable["PSConvAdd"] == 0 and portable["Conv"] >= 21
    # The functions' kernel rebuild was folded to constants at load: none of its ops ran.
    assert not {"Range", "CumSum", "Gather", "Where", "BitShift"} & set(portable), portable


def test_four_way_parity_on_random_input(exported):
    path, _, loaded = exported("resnet20")
    x = np.random.default_rng(1).random((2, 1, 28, 28), dtype=np.float32)
    expected = torch_logits(loaded.module, x)
    native = Predictor(path, native=True)
    assert native.native
    results = {
        "native": native.predict(x),
        "portable": Predictor(path, native=False).predict(x),
        "reference": ReferenceEvaluator(str(path)).run(None, {"input": x})[0],
    }
    for name, got in results.items():
        assert relative_difference(got, expected) <= 1e-4, name


def test_native_and_portable_match_pytorch_on_fashion_mnist(exported):
    from pscompress.board.data import load_dataset

    path, _, loaded = exported("resnet20")
    x = np.ascontiguousarray(load_dataset("fashion-mnist", "test").x[:512], dtype=np.float32)
    expected = torch_logits(loaded.module, x)
    for native in (True, False):
        got = Predictor(path, threads=2, native=native).predict(x)
        assert relative_difference(got, expected) <= 1e-4, native
        np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))


def _sample_model():
    """(model, fine-tuned?): the fine-tuned 4of9 sample, else the dense sample converted to 4of9."""
    from pscompress.workstation.checkpoint import load_model
    from pscompress.workstation.sparsify import sparsify

    if (SAMPLES / "fashion_resnet20_4of9.pt").is_file():
        return load_model(SAMPLES / "fashion_resnet20_4of9.pt"), True
    if (SAMPLES / "fashion_resnet20.pt").is_file():
        loaded = load_model(SAMPLES / "fashion_resnet20.pt")
        sparsify(loaded.module, "4of9", input_shape=(1, 28, 28))
        return loaded, False
    pytest.skip("no sample model in samples/")


@pytest.mark.slow
def test_sample_model_native_predicts_the_same_classes_as_pytorch_on_all_10000(tmp_path):
    from pscompress.board.data import load_dataset

    loaded, finetuned = _sample_model()
    path = tmp_path / "sample.onnx"
    export_onnx(loaded, path, input_shape=(1, 28, 28))
    test = load_dataset("fashion-mnist", "test")
    x = np.ascontiguousarray(test.x, dtype=np.float32)
    expected = torch_logits(loaded.module, x)
    predictor = Predictor(path, threads=2, native=True)
    got = np.concatenate([predictor.predict(x[i:i + 1000]) for i in range(0, len(x), 1000)])
    assert len(got) == 10000
    assert relative_difference(got, expected) <= 1e-4
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))
    if finetuned and loaded.meta.get("accuracy") is not None:
        # The exported file keeps the accuracy fine-tuning measured in PyTorch.
        assert abs((got.argmax(1) == np.asarray(test.y)).mean() - loaded.meta["accuracy"]) < 0.002
