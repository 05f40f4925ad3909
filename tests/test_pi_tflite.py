"""The exported .tflite files under tflite-runtime on an emulated Raspberry Pi 4 (Cortex-A72):
the fine-tuned ResNet-20 (4of9) sample, fp32 and fp16, runs with XNNPACK on and off through
pscompress's TFLitePredictor in an aarch64 site of tflite-runtime and numpy<2
(scripts/setup-pi-tflite.sh), and every output is compared with the workstation's x86-64
PyTorch and TFLite (ai-edge-litert) outputs. Emulation is ~300x slower than a Pi: four images,
one emulated process, and no time is read off it."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

import pi_emulator
import pi_models
from pscompress.board.tflite_predictor import TFLitePredictor
from pscompress.exporters.tflite import export_tflite
from pscompress.workstation.checkpoint import load_model

from test_export_tflite import relative_error, torch_logits

pytestmark = pytest.mark.slow

SAMPLE = pi_emulator.ROOT / "samples" / "fashion_resnet20_4of9.pt"
BOARD = "pi4"
RTOL = 1e-4

# Runs on the emulated Pi: only the site's tflite-runtime and numpy, plus pscompress's
# torch-free predictor from the checkout. argv: checkout, images .npy, output folder, then
# name=model.tflite pairs. The ops list shows whether the XNNPACK delegate took the graph.
RUNNER = """
import json, platform, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from pscompress.board.tflite_predictor import TFLitePredictor, interpreter_module
images, out = np.load(sys.argv[2]), sys.argv[3]
result = {"machine": platform.machine(), "interpreter": interpreter_module().__name__,
          "numpy": np.__version__, "cases": {}}
for pair in sys.argv[4:]:
    name, model = pair.split("=", 1)
    for xnnpack in (True, False):
        predictor = TFLitePredictor(model, xnnpack=xnnpack)
        path = f"{out}/{name}-{'xnnpack' if xnnpack else 'builtin'}.npy"
        np.save(path, predictor.predict(images))
        ops = sorted({op["op_name"] for op in predictor._interpreter._get_ops_details()})
        result["cases"][f"{name}-{xnnpack}"] = {"output": path, "ops": ops}
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def tflite_site() -> Path:
    pi_emulator.set_up()
    done = subprocess.run(["bash", str(pi_emulator.SCRIPTS / "setup-pi-tflite.sh")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """The sample's fp32 and fp16 exports."""
    loaded = load_model(SAMPLE)
    folder = tmp_path_factory.mktemp("pi-tflite-models")
    paths = {"fp32": folder / "model.tflite", "fp16": folder / "model_fp16.tflite"}
    for name, path in paths.items():
        export_tflite(loaded, path, fp16=name == "fp16")
    return paths


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.concatenate([pi_models.fashion_mnist_image(k) for k in range(4)])


@pytest.fixture(scope="module")
def host(models, images) -> dict:
    """x86-64 logits: PyTorch, and the host's TFLite runtime per (model, xnnpack)."""
    out = {"torch": torch_logits(load_model(SAMPLE).module, images)}
    for name, path in models.items():
        for xnnpack in (True, False):
            out[f"{name}-{xnnpack}"] = TFLitePredictor(path, xnnpack=xnnpack).predict(images)
    return out


@pytest.fixture(scope="module")
def emulated(tflite_site, models, images, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("pi-tflite-run")
    np.save(folder / "images.npy", images)
    done = pi_emulator.run_python(BOARD, tflite_site, "-c", RUNNER, str(pi_emulator.ROOT),
                                  str(folder / "images.npy"), str(folder),
                                  *(f"{name}={path}" for name, path in models.items()))
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for case in result["cases"].values():
        case["output"] = np.load(case["output"])
    return result


def test_emulated_pi_runs_tflite_runtime_with_and_without_xnnpack(emulated):
    assert emulated["machine"] == "aarch64"
    assert emulated["interpreter"] == "tflite_runtime.interpreter"
    assert emulated["numpy"].startswith("1.")
    for name in ("fp32", "fp16"):
        with_xnnpack, builtin = emulated["cases"][f"{name}-True"]["ops"], emulated["cases"][f"{name}-False"]["ops"]
        assert "DELEGATE" in with_xnnpack, with_xnnpack
        # Without default delegates the runtime's own kernels run every node, the sparse filters'
        # DENSIFY included (fp16 also dequantizes them).
        assert "DELEGATE" not in builtin and {"CONV_2D", "DENSIFY"} <= set(builtin), builtin
    assert "DEQUANTIZE" in emulated["cases"]["fp16-False"]["ops"]


@pytest.mark.parametrize("xnnpack", [True, False], ids=["xnnpack", "builtin-kernels"])
def test_fp32_on_the_pi_matches_x86_pytorch_and_tflite(emulated, host, xnnpack):
    got = emulated["cases"][f"fp32-{xnnpack}"]["output"]
    want = host["torch"]
    assert np.abs(want - want[0]).max() > 0.01 * np.abs(want).max(), "the images should get different logits"
    assert relative_error(got, want) < RTOL
    assert relative_error(got, host[f"fp32-{xnnpack}"]) < RTOL
    assert (got.argmax(axis=1) == want.argmax(axis=1)).all()


@pytest.mark.parametrize("xnnpack", [True, False], ids=["xnnpack", "builtin-kernels"])
def test_fp16_on_the_pi_predicts_as_x86(emulated, host, xnnpack):
    got = emulated["cases"][f"fp16-{xnnpack}"]["output"]
    assert (got.argmax(axis=1) == host["torch"].argmax(axis=1)).all()
    # The fp16 weights are dequantized once at load and the arithmetic is fp32: the Pi and the
    # workstation compute the same function, so they agree as closely as in fp32.
    assert relative_error(got, host[f"fp16-{xnnpack}"]) < RTOL
