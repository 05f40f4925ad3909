"""`pscompress eval` and pscompress.board.evaluate, checked against torch's own predictions on Fashion-MNIST."""
from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
from PIL import Image

from gate_fixtures import fit_linear, linear_module, psconv_module, save_module, torch_predictions
from pscompress.board.data import load_dataset
from pscompress.board.evaluate import EvalResult, load_result, per_class_accuracy, summarise_latency, topk_accuracy
from pscompress.core.errors import UserError

LIMIT = 500


@pytest.fixture(scope="module")
def linear():
    return linear_module(*fit_linear())


@pytest.fixture(scope="module")
def model_pt(linear, tmp_path_factory):
    return save_module(linear, tmp_path_factory.mktemp("eval") / "linear.pt")


@pytest.fixture(scope="module")
def test_set():
    return load_dataset("fashion-mnist", "test").subset(LIMIT)


def test_topk_and_per_class_match_a_direct_count():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(300, 12)).astype(np.float32)
    labels = rng.integers(0, 12, 300)
    for k in (1, 3, 5):
        expected = np.mean([labels[i] in sorted(range(12), key=lambda j: -logits[i, j])[:k] for i in range(300)])
        assert topk_accuracy(logits, labels, k) == pytest.approx(expected)
    predictions = logits.argmax(1)
    classes = [f"c{i}" for i in range(12)] + ["empty"]
    per_class = per_class_accuracy(predictions, labels, classes)
    for index, name in enumerate(classes[:12]):
        rows = [i for i in range(300) if labels[i] == index]
        assert per_class[name] == pytest.approx(sum(predictions[i] == index for i in rows) / len(rows))
    assert per_class["empty"] is None


def test_latency_summary_keeps_short_last_batch_out_of_batch_percentiles():
    times, sizes = [10.0, 30.0, 20.0, 4.0], [10, 10, 10, 2]
    latency = summarise_latency(times, sizes, 10)
    assert latency.batch_p50 == pytest.approx(statistics.median([10.0, 30.0, 20.0]))
    assert latency.image_p50 == pytest.approx(statistics.median([t / s for t, s in zip(times, sizes)]))
    assert latency.image_mean == pytest.approx(sum(times) / sum(sizes))
    assert latency.batches == 4


def test_eval_pt_matches_torch_on_fashion_mnist(model_pt, linear, test_set, tmp_path, run_cli):
    out = tmp_path / "result.json"
    code, stdout, _ = run_cli("eval", model_pt, "--trust-pickle", "--data", "fashion-mnist", "--limit", LIMIT,
                               "--batch-size", 64, "--threads", 1, "--json", out)
    assert code == 0
    result = load_result(out)
    expected = torch_predictions(linear, test_set.x)
    np.testing.assert_array_equal(result.predictions, expected)
    assert result.top1 == pytest.approx(np.mean(expected == test_set.y))
    assert result.top1 > 0.7  # a real classifier, so the comparison above means something
    for index, name in enumerate(test_set.classes):
        members = test_set.y == index
        assert result.per_class[name] == pytest.approx(np.mean(expected[members] == index))
    assert result.top5 is not None and result.top5 >= result.top1
    assert result.latency.batches == -(-LIMIT // 64) and result.latency.batch_size == 64
    assert result.data["images"] == LIMIT and result.data["spec"] == "fashion-mnist"
    assert result.model["format"] == "pytorch" and result.model["size_bytes"] == model_pt.stat().st_size
    assert f"{result.top1:.2%}" in stdout and "Ankle boot" in stdout and "p90" in stdout


def test_eval_json_to_stdout_keeps_the_report_on_stderr(model_pt, run_cli):
    code, stdout, stderr = run_cli("eval", model_pt, "--trust-pickle", "--data", "fashion-mnist", "--limit", 50,
                                    "--json", "-")
    assert code == 0
    record = EvalResult.from_json(json.loads(stdout))
    assert len(record.predictions) == 50
    assert "top-1" in stderr


def test_eval_image_folder_matches_torch(linear, test_set, tmp_path, run_cli):
    # Folder names sort in label order, so folder labels equal the model's class indices.
    for i, (image, label) in enumerate(zip(test_set.x[:40], test_set.y[:40])):
        folder = tmp_path / "images" / f"{label}_{test_set.classes[label].split('/')[0]}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(image[0] * 255).astype(np.uint8)).save(folder / f"{i}.png")
    model = save_module(linear, tmp_path / "linear.pt")
    code, stdout, _ = run_cli("eval", model, "--trust-pickle", "--data", tmp_path / "images", "--json", "-")
    assert code == 0
    record = json.loads(stdout[stdout.index("{"):])
    folder = load_dataset(str(tmp_path / "images"), "test")
    assert record["top1"] == pytest.approx(np.mean(torch_predictions(linear, folder.x) == folder.y))
    assert record["data"]["images"] == 40


def test_eval_tflite_agrees_with_torch(linear, test_set, tmp_path, run_cli):
    from pscompress.workstation.checkpoint import LoadedModel
    from pscompress.exporters.tflite import export_tflite

    export_tflite(LoadedModel(linear), tmp_path / "linear.tflite", input_shape=(1, 28, 28))
    code, stdout, _ = run_cli("eval", tmp_path / "linear.tflite", "--data", "fashion-mnist", "--limit", LIMIT,
                               "--json", "-")
    assert code == 0
    record = EvalResult.from_json(json.loads(stdout))
    assert record.model["format"] == "tflite"
    # Different float summation orders may flip an exact tie, nothing more.
    assert np.mean(record.predictions != torch_predictions(linear, test_set.x)) <= 1 / LIMIT


@pytest.mark.parametrize("arrays, message", [
    (dict(x=np.zeros((8, 3, 28, 28), np.uint8), y=np.zeros(8, np.int64)), "3-channel images, the model expects 1"),
    (dict(x=np.zeros((8, 28, 28), np.uint8), y=np.arange(8) % 5, classes=np.array(list("abcde"))), "5 classes"),
    (dict(x=np.zeros((8, 32, 32), np.uint8), y=np.arange(8), classes=np.arange(10).astype(str)), "cannot run on images of shape [1, 32, 32]"),
])
def test_data_that_does_not_fit_the_model_is_a_usage_error(model_pt, tmp_path, arrays, message, run_cli):
    np.savez(tmp_path / "bad.npz", **arrays)
    code, stdout, stderr = run_cli("eval", model_pt, "--trust-pickle", "--data", tmp_path / "bad.npz")
    assert code == 2
    assert message in stderr and stderr.startswith("Error: ")
    assert "Traceback" not in stderr + stdout


@pytest.mark.parametrize("args, message", [
    (["--native"], "applies to .onnx models only"),
    (["--data", "no-such-set"], "unknown data set"),
])
def test_usage_errors(model_pt, args, message, run_cli):
    argv = ["eval", model_pt, "--trust-pickle", *args]
    if "--data" not in args:
        argv += ["--data", "fashion-mnist"]
    code, _, stderr = run_cli(*argv)
    assert code == 2 and message in stderr


def test_unknown_model_format_and_pickle_refusal(model_pt, tmp_path, run_cli):
    (tmp_path / "model.bin").write_bytes(b"\0" * 16)
    code, _, stderr = run_cli("eval", tmp_path / "model.bin", "--data", "fashion-mnist")
    assert code == 2 and "unknown model format" in stderr
    code, _, stderr = run_cli("eval", model_pt, "--data", "fashion-mnist")
    assert code == 2 and "--trust-pickle" in stderr


def test_damaged_record_is_a_usage_error(tmp_path):
    (tmp_path / "bad.json").write_text('{"schema": "pscompress-eval/1", "top1": 0.5}')
    with pytest.raises(UserError, match="damaged"):
        load_result(tmp_path / "bad.json")


def test_eval_onnx_with_and_without_the_native_kernel_agrees_with_torch(test_set, tmp_path, run_cli):
    from pscompress.workstation.checkpoint import LoadedModel
    from pscompress.exporters.onnx_export import export_onnx

    module = psconv_module(*fit_linear())
    export_onnx(LoadedModel(module, meta={"input_shape": [1, 28, 28]}), tmp_path / "psconv.onnx")
    expected = torch_predictions(module, test_set.x)
    assert np.mean(expected == test_set.y) > 0.7
    for flag, native in (("--native", True), ("--no-native", False)):
        code, stdout, _ = run_cli("eval", tmp_path / "psconv.onnx", flag, "--data", "fashion-mnist",
                                   "--limit", LIMIT, "--json", "-")
        assert code == 0
        record = EvalResult.from_json(json.loads(stdout))
        assert record.model["format"] == "onnx" and record.model["native"] is native
        assert np.mean(record.predictions != expected) <= 1 / LIMIT


def test_reference_agreement_of_a_classifier_counts_images(linear, model_pt, tmp_path, run_cli):
    """--reference adds the share of images on which the two top-1 classes agree, as the two records' own
    predictions count it."""
    from pscompress.workstation.checkpoint import LoadedModel
    from pscompress.exporters.tflite import export_tflite

    export_tflite(LoadedModel(linear), tmp_path / "linear.tflite", input_shape=(1, 28, 28), fp16=True)
    records = {}
    for name, path in (("pt", model_pt), ("tflite", tmp_path / "linear.tflite")):
        code, stdout, _ = run_cli("eval", path, "--trust-pickle", "--data", "fashion-mnist", "--limit", LIMIT, "--json", "-")
        assert code == 0
        records[name] = EvalResult.from_json(json.loads(stdout))
    code, stdout, stderr = run_cli("eval", tmp_path / "linear.tflite", "--trust-pickle", "--data", "fashion-mnist",
                                   "--limit", LIMIT, "--reference", model_pt)
    assert code == 0, stderr
    expected = np.mean(records["pt"].predictions == records["tflite"].predictions)
    assert f"agreement {expected:.2%} of {LIMIT:,} images with the top-1 class of {model_pt}" in stdout, stdout
    assert f"top-1   {records['tflite'].top1:.2%}" in stdout
