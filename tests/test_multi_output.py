"""Models with several outputs (a tuple or a dict): export (ONNX and TFLite fp32 and int8), verification, info, run,
eval and the predictors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from export_models import TwoHeads, two_heads_model
from pscompress.board.onnx_predictor import Predictor
from pscompress.core.errors import UserError
from pscompress.exporters.onnx_export import export_onnx
from pscompress.exporters.pipeline import prepare, relative_difference, verify
from pscompress.workstation.checkpoint import LoadedModel, save_checkpoint
from pscompress.workstation.model_io import named_outputs

HW = 16


@pytest.fixture(scope="module", params=[False, True], ids=["tuple", "dict"])
def exported_heads(request, tmp_path_factory):
    """(path, source model, output names) of a two-head model's ONNX export."""
    loaded = two_heads_model(as_dict=request.param, hw=HW)
    path = tmp_path_factory.mktemp("heads") / "heads.onnx"
    export_onnx(loaded, path)
    return path, loaded, ["boxes", "scores"] if request.param else ["output0", "output1"]


@pytest.fixture(scope="module")
def pickled_heads(tmp_path_factory):
    """A pickled (converted) two-head module, as a user brings it to the CLI."""
    path = tmp_path_factory.mktemp("pickled") / "heads.pt"
    save_checkpoint(two_heads_model(hw=HW), path)  # no built-in architecture: saved as the module itself
    return path


def _images(n: int = 3, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, HW, HW), dtype=np.float32)


def test_every_output_matches_pytorch(exported_heads):
    path, loaded, names = exported_heads
    x = _images()
    with torch.no_grad():
        expected = loaded.module(torch.from_numpy(x))
    expected = list(expected.values()) if isinstance(expected, dict) else list(expected)
    for native in (False, None):
        got = Predictor(path, native=native).predict_all(x)
        assert list(got) == names
        for name, want in zip(names, expected):
            assert got[name].shape == tuple(want.shape)
            assert relative_difference(got[name], want.numpy()) <= 1e-4, (name, native)


def test_outputs_are_recorded_and_predict_needs_a_choice(exported_heads):
    path, _, names = exported_heads
    p = Predictor(path, native=False)
    assert p.output_names == names
    assert p.meta["outputs"] == [{"name": names[0], "shape": [4, HW // 2, HW // 2]}, {"name": names[1], "shape": [10]}]
    with pytest.raises(UserError, match=f"2 outputs \\({names[0]}, {names[1]}\\)"):
        p.predict(_images())
    chosen = Predictor(path, native=False, output=names[1])
    assert chosen.num_outputs == 10
    np.testing.assert_array_equal(chosen.predict(_images()), chosen.predict_all(_images())[names[1]])
    assert chosen.topk(_images(), k=3).indices.shape == (3, 3)
    with pytest.raises(UserError, match="no output 'nope'"):
        Predictor(path, native=False, output="nope")


def test_single_output_is_still_logits(exported):
    path, _, _ = exported()
    p = Predictor(path, native=False)
    assert p.output_names == ["logits"] and p.output == "logits"
    assert p.meta["outputs"] == [{"name": "logits", "shape": [10]}]


def test_verify_checks_every_output():
    job = prepare(two_heads_model(hw=HW))
    good = [job.expected[name] for name in job.output_names]
    assert verify(b"", job, lambda data, x: good, 1e-4) == 0.0
    broken = [good[0], good[1] + 0.5]  # only the second output is wrong
    with pytest.raises(UserError, match="output output1 disagrees with PyTorch"):
        verify(b"", job, lambda data, x: broken, 1e-4)
    with pytest.raises(UserError, match="1 output"):
        verify(b"", job, lambda data, x: good[:1], 1e-4)


def test_output_names():
    t = torch.zeros(1)
    assert list(named_outputs(t)) == ["logits"]
    assert list(named_outputs((t,))) == ["logits"]
    assert list(named_outputs([t, t, t])) == ["output0", "output1", "output2"]
    assert list(named_outputs({"b": t, "a": t})) == ["b", "a"]
    with pytest.raises(UserError, match="nested"):
        named_outputs((t, (t, t)))
    with pytest.raises(UserError, match="string keys"):
        named_outputs({1: t})


def test_cli_export_info_run_eval(run_cli, pickled_heads, tmp_path):
    onnx_path = tmp_path / "heads.onnx"
    code, out, err = run_cli("export", pickled_heads, "--trust-pickle", "--input-shape", f"1,{HW},{HW}", "-o", onnx_path)
    assert code == 0, err
    assert "verified against PyTorch" in out

    code, out, err = run_cli("info", onnx_path)
    assert code == 0, err
    assert f"outputs:     output0 [N, 4, {HW // 2}, {HW // 2}]; output1 [N, 10]" in out

    x = _images(2)
    np.save(tmp_path / "x.npy", x)
    code, out, err = run_cli("run", onnx_path, "--input", tmp_path / "x.npy", "-k", "3", "--no-native")
    assert code == 0, err
    assert f"output output0 [2, 4, {HW // 2}, {HW // 2}]: min " in out and "output output1 [2, 10]" in out
    assert out.count("1. ") == 2 and out.count("3. ") == 2 and "Traceback" not in out + err
    # The printed classes are PyTorch's top classes of the classifier head.
    with torch.no_grad():
        best = TwoHeads.forward(two_heads_model(hw=HW).module, torch.from_numpy(x))[1].argmax(1)
    image_lines = [line for line in out.splitlines() if line.strip().startswith("1. ")]
    assert [int(line.split()[1]) for line in image_lines] == best.tolist()

    rng = np.random.default_rng(2)
    np.savez(tmp_path / "data.npz", x=rng.random((20, 1, HW, HW), dtype=np.float32), y=rng.integers(0, 10, 20))
    code, out, err = run_cli("eval", onnx_path, "--data", tmp_path / "data.npz")
    assert code == 2 and "2 outputs (output0, output1)" in err and "--output" in err
    assert len(err.strip().splitlines()) == 1
    code, out, err = run_cli("eval", onnx_path, "--data", tmp_path / "data.npz", "--output", "output1")
    assert code == 0, err
    assert "top-1" in out
    code, out, err = run_cli("eval", onnx_path, "--data", tmp_path / "data.npz", "--output", "boxes")
    assert code == 2 and "no output 'boxes'; its outputs: output0, output1" in err
    code, out, err = run_cli("eval", pickled_heads, "--trust-pickle", "--data", tmp_path / "data.npz",
                             "--output", "output1")
    assert code == 0, err
    code, out, err = run_cli("eval", pickled_heads, "--trust-pickle", "--data", tmp_path / "data.npz")
    assert code == 2 and "heads.pt has 2 outputs (output0, output1)" in err and "Traceback" not in err
    # check takes the same --output, for the model and its --reference: the export agrees with PyTorch.
    code, out, err = run_cli("check", onnx_path, "--reference", pickled_heads, "--trust-pickle", "--data",
                             tmp_path / "data.npz", "--output", "output1", "--max-disagreement", "0")
    assert code == 0, out + err
    code, out, err = run_cli("check", onnx_path, "--data", tmp_path / "data.npz", "--min-accuracy", "0")
    assert code == 2 and "--output" in err and len(err.strip().splitlines()) == 1


def _torch_outputs(loaded: LoadedModel, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        result = loaded.module(torch.from_numpy(x))
    return [v.numpy() for v in (result.values() if isinstance(result, dict) else result)]


@pytest.mark.parametrize("as_dict", [False, True], ids=["tuple", "dict"])
def test_tflite_every_output_matches_pytorch(as_dict, tmp_path):
    """fp32: every output a graph output in the model's order, with its name and PyTorch's shape, within 1e-4;
    int8: within a few quantization steps of each output; both record the outputs as ONNX files do."""
    pytest.importorskip("ai_edge_litert")
    from pscompress.board.tflite_predictor import TFLitePredictor
    from pscompress.exporters.tflite import export_tflite
    from pscompress.exporters.tflite_int8 import build_tflite_int8

    loaded = two_heads_model(as_dict=as_dict, hw=HW)
    names = ["boxes", "scores"] if as_dict else ["output0", "output1"]
    records = [{"name": names[0], "shape": [4, HW // 2, HW // 2]}, {"name": names[1], "shape": [10]}]
    export_tflite(loaded, tmp_path / "heads.tflite")
    x = _images(8)
    expected = _torch_outputs(loaded, x)
    for xnnpack in (True, False):
        p = TFLitePredictor(tmp_path / "heads.tflite", xnnpack=xnnpack)
        assert p.output_names == names and p.meta["outputs"] == records and p.output is None
        got = p.predict_all(x)
        assert list(got) == names
        for name, want in zip(names, expected):
            assert got[name].shape == want.shape
            np.testing.assert_allclose(got[name], want, rtol=0, atol=1e-4, err_msg=name)
    assert [d["name"] for d in p._interpreter.get_output_details()] == names  # graph outputs, in order, named

    calibration = np.random.default_rng(3).random((64, 1, HW, HW), dtype=np.float32)
    int8 = TFLitePredictor.from_bytes(build_tflite_int8(loaded, (1, HW, HW), [calibration]))
    assert int8.output_names == names and int8.meta["outputs"] == records
    # The quantization step of each output: the scale of the int8 tensor its DEQUANTIZE reads.
    scales = {t["index"]: t["quantization"][0] for t in int8._interpreter.get_tensor_details()}
    dequantized = {op["outputs"][0]: op["inputs"][0] for op in int8._interpreter._get_ops_details()
                   if op["op_name"] == "DEQUANTIZE"}
    got = int8.predict_all(x)
    for detail, want in zip(int8._interpreter.get_output_details(), expected):
        step = scales[dequantized[detail["index"]]]
        assert np.abs(got[detail["name"]] - want).max() <= 4 * step, detail["name"]
    assert np.mean(got[names[1]].argmax(1) == expected[1].argmax(1)) >= 0.9
    chosen = TFLitePredictor.from_bytes(build_tflite_int8(loaded, (1, HW, HW), [calibration]), output=names[1])
    assert chosen.num_outputs == 10 and chosen.topk(x, k=3).indices.shape == (8, 3)
    with pytest.raises(UserError, match=f"2 outputs \\({names[0]}, {names[1]}\\)"):
        int8.predict(x)


def test_cli_tflite_export_info_run_eval(run_cli, pickled_heads, tmp_path):
    """The same commands as for ONNX on fp32 and int8 TFLite exports of a two-head model."""
    pytest.importorskip("ai_edge_litert")
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "data.npz", x=rng.random((20, 1, HW, HW), dtype=np.float32), y=rng.integers(0, 10, 20))
    x = _images(2)
    np.save(tmp_path / "x.npy", x)
    with torch.no_grad():
        best = TwoHeads.forward(two_heads_model(hw=HW).module, torch.from_numpy(x))[1].argmax(1)
    for extra in ([], ["--int8", "--data", tmp_path / "data.npz", "--calibration", "20"]):
        path = tmp_path / f"heads{len(extra)}.tflite"
        code, out, err = run_cli("export", pickled_heads, "--trust-pickle", "--input-shape", f"1,{HW},{HW}", "-o", path,
                                 *extra)
        assert code == 0, err
        assert f"wrote {path} (tflite)" in out and "verified against PyTorch" in out

        code, out, err = run_cli("info", path)
        assert code == 0, err
        assert f"outputs:     output0 [N, 4, {HW // 2}, {HW // 2}]; output1 [N, 10]" in out
        assert ("int8:" in out) == bool(extra)

        code, out, err = run_cli("run", path, "--input", tmp_path / "x.npy", "-k", "3")
        assert code == 0, err
        assert f"output output0 [2, 4, {HW // 2}, {HW // 2}]: min " in out and "output output1 [2, 10]" in out
        assert out.count("1. ") == 2 and out.count("3. ") == 2 and "Traceback" not in out + err
        image_lines = [line for line in out.splitlines() if line.strip().startswith("1. ")]
        if not extra:  # int8 may swap near-equal logits
            assert [int(line.split()[1]) for line in image_lines] == best.tolist()

        code, out, err = run_cli("eval", path, "--data", tmp_path / "data.npz")
        assert code == 2 and "2 outputs (output0, output1)" in err and "--output" in err
        assert len(err.strip().splitlines()) == 1
        code, out, err = run_cli("eval", path, "--data", tmp_path / "data.npz", "--output", "output1")
        assert code == 0, err
        assert "top-1" in out
        code, out, err = run_cli("eval", path, "--data", tmp_path / "data.npz", "--output", "boxes")
        assert code == 2 and "no output 'boxes'; its outputs: output0, output1" in err


def test_run_summarises_a_single_output_that_is_not_logits(run_cli, tmp_path):
    """A fully convolutional model's one output [N, C, H, W]: shape and value range, no top classes."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1)).eval()
    with pytest.warns(UserWarning, match="no pSConv layer"):
        export_onnx(LoadedModel(module, meta={"input_shape": [1, HW, HW]}), tmp_path / "fcn.onnx")
    x = _images(1)
    np.save(tmp_path / "x.npy", x)
    code, out, err = run_cli("run", tmp_path / "fcn.onnx", "--input", tmp_path / "x.npy", "--no-native")
    assert code == 0, err
    with torch.no_grad():
        expected = module(torch.from_numpy(x))
    assert f"output logits [1, 4, {HW}, {HW}]: min {float(expected.min()):.4g}, " in out and "1. " not in out


def test_malformed_outputs_metadata_is_refused():
    from pscompress.core.metadata import check_metadata

    assert check_metadata({"outputs": [{"name": "a", "shape": [4, 2]}]}, "m")["outputs"] == [{"name": "a", "shape": [4, 2]}]
    for bad in ([], [{"name": 3, "shape": []}], [{"name": "a", "shape": [-1]}], [{"name": "a"}], "logits",
                [{"name": "a", "shape": [1] * 9}]):
        with pytest.raises(UserError, match="output"):
            check_metadata({"outputs": bad}, "m")
