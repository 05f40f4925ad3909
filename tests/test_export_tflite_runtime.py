"""The exported .tflite files run in tflite-runtime (numpy<2, its own venv) as well as in ai-edge-litert."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pscompress.exporters.tflite import export_tflite

from test_export_tflite import psconv_resnet20, relative_error, torch_logits

ROOT = Path(__file__).resolve().parents[1]
# Runs in the tflite-runtime venv: only numpy, tflite-runtime and the torch-free predictor exist there.
RUNNER = """
import sys, numpy as np
from pscompress.board.tflite_predictor import TFLitePredictor, interpreter_module
assert interpreter_module().__name__ == "tflite_runtime.interpreter"
x = np.load(sys.argv[1])
for xnnpack, out in ((True, sys.argv[3]), (False, sys.argv[4])):
    predictor = TFLitePredictor(sys.argv[2], xnnpack=xnnpack)
    assert predictor.input_shape == x.shape[1:], predictor.input_shape
    np.save(out, predictor.predict(x))
"""


@pytest.fixture(scope="module")
def runtime_python() -> str:
    if sys.version_info >= (3, 12):
        pytest.skip("tflite-runtime has no wheel for Python 3.12 or newer")
    done = subprocess.run(["bash", str(ROOT / "scripts/tflite-runtime-venv.sh")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_export_runs_in_tflite_runtime(runtime_python, tmp_path, fp16):
    model = psconv_resnet20()
    path = tmp_path / "model.tflite"
    export_tflite(model, path, fp16=fp16)
    x = np.random.default_rng(3).random((6, 1, 28, 28), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    outputs = [tmp_path / "xnnpack.npy", tmp_path / "builtin.npy"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the package from source: no install into that venv
    done = subprocess.run([runtime_python, "-c", RUNNER, str(tmp_path / "x.npy"), str(path), *map(str, outputs)],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    expected = torch_logits(model.module, x)
    for out in outputs:
        assert relative_error(np.load(out), expected) < (1e-2 if fp16 else 1e-4)
