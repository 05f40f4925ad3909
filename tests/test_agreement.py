"""`convert --data`: agreement with the dense model on real images, and batch-norm recalibration."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pscompress.board.data import ArrayDataset, ArrayImages, load_dataset
from pscompress.workstation.agreement import AGREEMENT_IMAGES, top1_agreement
from pscompress.workstation.checkpoint import load_model

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "fashion_resnet20.pt"


@pytest.fixture(scope="module")
def test_images():
    return load_dataset("fashion-mnist", "test").subset(AGREEMENT_IMAGES)


def _predictions(net: nn.Module, data: ArrayDataset) -> np.ndarray:
    with torch.no_grad():
        return net.eval()(torch.from_numpy(data.images[np.arange(len(data))])).argmax(1).numpy()


def test_agreement_counts_equal_predictions_per_image_and_per_pixel():
    torch.manual_seed(0)
    images = np.random.default_rng(0).random((37, 3, 8, 8), dtype=np.float32)
    data = ArrayDataset(ArrayImages(images), np.zeros(37, np.int64), ["a"], "random")
    a, b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)  # per-pixel class maps
    with torch.no_grad():
        x = torch.from_numpy(images)
        expected = float((a(x).argmax(1) == b(x).argmax(1)).double().mean())
    assert top1_agreement(a, b, data, batch_size=10) == pytest.approx(expected)
    assert 0 < expected < 1  # two random nets agree on some pixels, not all
    assert top1_agreement(a, a, data) == 1.0
    heads = nn.Sequential(nn.Flatten(), nn.Linear(192, 5))

    class TwoHeads(nn.Module):  # agreement is on the first output, as eval's default
        def forward(self, x):
            return {"scores": heads(x), "boxes": -heads(x)}
    assert top1_agreement(heads, TwoHeads(), data) == 1.0


def test_convert_data_recalibrates_and_reports_agreement(run_cli, tmp_path, test_images):
    out = tmp_path / "r20.pt"
    status, stdout, stderr = run_cli("convert", SAMPLE, "--pattern", "4of9", "--data", "fashion-mnist", "-o", out)
    assert status == 0, stderr
    record = load_model(out).meta["conversion"]["agreement"]
    assert record["images"] == AGREEMENT_IMAGES and record["recalibrated"] == 2048
    # Measured on this sample: about 11% as converted (one class), about 80% recalibrated.
    assert record["before"] < 0.3 and record["after"] > 0.7
    assert f"{record['before']:.1%}" in stdout and f"{record['after']:.1%}" in stdout
    assert f"next: fine-tune it (pscompress finetune {out} --data fashion-mnist" in stdout
    # The checkpoint holds the recalibrated statistics: recomputed here, independently, on the same images.
    dense, converted = load_model(SAMPLE).module, load_model(out).module
    assert np.mean(_predictions(dense, test_images) == _predictions(converted, test_images)) == pytest.approx(record["after"])
    accuracy = np.mean(_predictions(converted, test_images) == test_images.y)
    assert accuracy > 0.7


def test_bn_recalibrate_zero_measures_and_keeps_statistics(run_cli, tmp_path, test_images):
    out = tmp_path / "r20.pt"
    status, stdout, stderr = run_cli("convert", SAMPLE, "--data", "fashion-mnist", "--bn-recalibrate", "0", "-o", out)
    assert status == 0, stderr
    record = load_model(out).meta["conversion"]["agreement"]
    assert record["after"] is None and record["recalibrated"] == 0 and "after batch-norm" not in stdout
    dense, converted = load_model(SAMPLE).module.state_dict(), load_model(out).module.state_dict()
    assert torch.equal(dense["bn1.running_mean"], converted["bn1.running_mean"])


def test_without_data_says_what_to_do_next(run_cli, tmp_path):
    status, stdout, _ = run_cli("convert", SAMPLE, "-o", tmp_path / "r20.pt")
    assert status == 0
    assert "agreement" not in stdout.split("next:")[0]
    assert "(convert --data SPEC measures how far)" in stdout


@pytest.mark.parametrize("args, message", [
    (["--data", "no-such-set"], "unknown data set"),
    (["--data", "fashion-mnist", "--input-shape", "1,32,32"], "28x28 images, the model expects 32x32"),
    (["--data", "fashion-mnist", "--bn-recalibrate", "-1"], "--bn-recalibrate"),
])
def test_bad_data_is_one_line_exit_2_and_writes_nothing(run_cli, tmp_path, args, message):
    out = tmp_path / "r20.pt"
    status, stdout, stderr = run_cli("convert", SAMPLE, *args, "-o", out)
    assert status == 2 and message in stderr and "Traceback" not in stderr
    assert not out.exists()
