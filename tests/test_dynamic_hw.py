"""`pscompress export --dynamic-hw`: one ONNX file for every image size of a fully convolutional model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import pscompress
from pscompress import runtime
from pscompress.board.onnx_predictor import OnnxPredictor
from pscompress.exporters.onnx_export import export_onnx
from pscompress.exporters.pipeline import relative_difference
from pscompress.workstation.checkpoint import load_model, save_checkpoint

SHAPE = (3, 20, 24)
SIZES = [(20, 24), (28, 40), (33, 17)]  # the recorded size, the one export verifies too, and an odd one
NATIVE = [False, True] if runtime.native_available() else [False]


class TwoHeads(nn.Module):
    """Fully convolutional: a residual block, a stride-2 conv, and two dense-prediction heads."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Conv2d(8, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.boxes = nn.Conv2d(16, 4, 1)
        self.scores = nn.Conv2d(16, 6, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.block(x) + x)
        x = torch.relu(self.down(x))
        return self.boxes(x), self.scores(x)


class LinearHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * SHAPE[1] * SHAPE[2], 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.relu(self.conv(torch.relu(self.stem(x)))), 1))


def _converted(model: nn.Module, folder, run_cli):
    """The model as a pSConv checkpoint, through a .pt2 program (so no class is pickled)."""
    torch.manual_seed(0)
    program = folder / f"{type(model).__name__}.pt2"
    torch.export.save(torch.export.export(model.eval(), (torch.rand(1, *SHAPE),)), str(program))
    out = folder / f"{type(model).__name__}.pt"
    status, _, stderr = run_cli("convert", program, "-o", out)
    assert status == 0, stderr
    return out


@pytest.fixture(scope="module")
def dynamic(tmp_path_factory):
    """(pSConv checkpoint, its --dynamic-hw ONNX export, the export summary), made once with the library calls."""
    folder = tmp_path_factory.mktemp("dynamic")
    torch.manual_seed(0)
    program = folder / "two_heads.pt2"
    torch.export.save(torch.export.export(TwoHeads().eval(), (torch.rand(1, *SHAPE),)), str(program))
    loaded = load_model(program)
    pscompress.sparsify(loaded.module, "4of9", input_shape=SHAPE)
    save_checkpoint(loaded, folder / "two_heads.pt")
    summary = export_onnx(load_model(folder / "two_heads.pt"), folder / "two_heads.onnx", dynamic_hw=True)
    return folder / "two_heads.pt", folder / "two_heads.onnx", summary


@pytest.mark.parametrize("native", NATIVE)
@pytest.mark.parametrize("size", SIZES)
def test_one_file_runs_every_size_as_pytorch_does(dynamic, size, native):
    checkpoint, onnx_file, _ = dynamic
    model = load_model(checkpoint).module
    x = np.random.default_rng(sum(size)).random((2, SHAPE[0], *size), dtype=np.float32)
    with torch.no_grad():
        expected = [value.numpy() for value in model(torch.from_numpy(x))]
    got = runtime.create_session(str(onnx_file), native=native).run(None, {"input": x})
    assert len(got) == 2
    for value, want in zip(got, expected):
        assert value.shape == want.shape and value.shape[2:] == ((size[0] + 1) // 2, (size[1] + 1) // 2)
        assert relative_difference(value, want) < 1e-4


def test_the_file_records_dynamic_hw_and_the_predictor_takes_other_sizes(dynamic, run_cli):
    _, onnx_file, summary = dynamic
    assert summary.psconv_layers == 3 and summary.max_rel_diff < 1e-4
    predictor = OnnxPredictor(onnx_file, native=False)
    assert predictor.meta["dynamic_hw"] is True and predictor.dynamic_hw and predictor.input_shape == SHAPE
    outputs = predictor.predict_all(np.zeros((1, 3, 28, 40), np.float32))
    assert outputs["output0"].shape == (1, 4, 14, 20)
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        predictor.predict_all(np.zeros((1, 1, 28, 40), np.float32))
    status, stdout, stderr = run_cli("info", onnx_file)
    assert status == 0 and "input_shape: [3, 20, 24]\ndynamic_hw:  any input height and width\n" in stdout, stderr


def test_run_takes_the_size_from_input_shape(dynamic, tmp_path, run_cli):
    _, onnx_file, _ = dynamic
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 60, 3), dtype=np.uint8)).save(image)
    status, stdout, stderr = run_cli("run", onnx_file, "--input", image, "--input-shape", "3,28,40")
    assert status == 0, stderr
    assert "output output0 [1, 4, 14, 20]" in stdout
    status, stdout, stderr = run_cli("run", onnx_file, "--input", image)  # default: the recorded size
    assert status == 0 and "output output0 [1, 4, 10, 12]" in stdout, stderr


def test_a_fixed_size_file_refuses_another_run_size(tmp_path, run_cli):
    checkpoint = _converted(TwoHeads(), tmp_path, run_cli)
    assert run_cli("export", checkpoint, "-o", tmp_path / "fixed.onnx").code == 0
    assert "dynamic_hw" not in run_cli("info", tmp_path / "fixed.onnx").out
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 28, 40), np.float32))
    status, stdout, stderr = run_cli("run", tmp_path / "fixed.onnx", "--input", tmp_path / "x.npy",
                                     "--input-shape", "3,28,40")
    assert status == 2 and stderr.count("\n") == 1, stderr
    assert "takes 3x20x24 images only (export it with --dynamic-hw for other sizes)" in stderr


def test_a_linear_head_is_refused_in_one_line(tmp_path, run_cli):
    checkpoint = _converted(LinearHead(), tmp_path, run_cli)
    out = tmp_path / "m.onnx"
    status, stdout, stderr = run_cli("export", checkpoint, "--dynamic-hw", "-o", out)
    assert status == 2 and stderr.count("\n") == 1, stderr
    assert stderr.startswith("Error: --dynamic-hw needs a fully convolutional model") and "takes 20x24 only" in stderr
    assert "Traceback" not in stderr and not out.exists()


def test_dynamic_hw_is_for_onnx_only(tmp_path, run_cli):
    checkpoint = _converted(TwoHeads(), tmp_path, run_cli)
    status, stdout, stderr = run_cli("export", checkpoint, "--dynamic-hw", "-o", tmp_path / "m.tflite")
    assert status == 2 and stderr == "Error: --dynamic-hw applies to ONNX export only\n"
