"""The project's own accuracy gate: export the sample pSConv model and check it against the committed baseline.

The baseline (samples/baseline-fashion_resnet20_4of9.json) is `pscompress eval --json` of the sample's ONNX
export on the full Fashion-MNIST test set. A change in conversion, export or the native kernel
that costs accuracy, flips predictions or grows the file fails here.
"""
from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # the sample on the full test set, exported and gated as in CI

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
SAMPLE = SAMPLES / "fashion_resnet20_4of9.pt"  # the fine-tuned 4-of-9 pSConv sample
BASELINE = SAMPLES / "baseline-fashion_resnet20_4of9.json"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """The sample exported exactly as a user would: `pscompress export`."""
    out = tmp_path_factory.mktemp("gate") / f"{SAMPLE.stem}.onnx"
    subprocess.run([sys.executable, "-m", "pscompress.cli", "export", str(SAMPLE), "-o", str(out)], check=True)
    return out


@pytest.mark.parametrize("native", ["--native", "--no-native"])
def test_sample_export_holds_the_committed_baseline(exported, native, tmp_path, run_cli):
    record = json.loads(BASELINE.read_text())
    assert record["data"]["spec"] == "fashion-mnist" and record["data"]["images"] == 10000
    assert record["top1"] > 0.88  # the baseline itself is a good model, not a record of a broken one
    junit, summary = tmp_path / "gate.xml", tmp_path / "gate.md"
    code, stdout, stderr = run_cli(
        "check", exported, native, "--baseline", BASELINE, "--min-accuracy", 88, "--max-drop", 0.1,
        "--max-disagreement", 0.1, "--max-size-ratio", 1.02, "--junit", junit, "--summary", summary)
    assert code == 0, stdout + stderr
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("tests") == "4" and suite.get("failures") == "0"
    assert "passed" in summary.read_text()


def test_sample_export_agrees_with_its_pytorch_model(exported, run_cli):
    code, stdout, stderr = run_cli("check", exported, "--reference", SAMPLE, "--data", "fashion-mnist", "--limit", 500,
                                    "--threads", 1, "--max-disagreement", 0.2, "--max-drop", 0.2)
    assert code == 0, stdout + stderr


def test_gate_catches_a_damaged_model(tmp_path, run_cli):
    """A regression the gate exists for: one convolution's weights damaged before export."""
    from pscompress.workstation.checkpoint import load_model
    from pscompress.exporters.onnx_export import export_onnx

    loaded = load_model(SAMPLE)
    with torch.no_grad():
        conv = loaded.module.layers[4].conv1
        conv.weight.mul_(-1.0)
    export_onnx(loaded, tmp_path / "damaged.onnx")
    junit = tmp_path / "gate.xml"
    code, stdout, _ = run_cli("check", tmp_path / "damaged.onnx", "--baseline", BASELINE, "--max-drop", 0.1,
                               "--max-disagreement", 0.1, "--junit", junit)
    assert code == 1, stdout
    assert len(ET.parse(junit).getroot().findall("testsuite/testcase/failure")) == 2
