"""The export, info and run commands end to end, through the real entry point."""
import subprocess
import sys

import numpy as np
import onnx
import pytest

from export_models import psconv_model
from pscompress.workstation.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(psconv_model(), path)
    return path


def test_export_info_run(run_cli, checkpoint, tmp_path):
    out_path = tmp_path / "model.onnx"
    code, out, err = run_cli("export", checkpoint, "-o", out_path)
    assert code == 0, err
    assert "x the dense export" in out and "18 pSConv layer(s)" in out and "verified against PyTorch" in out
    assert {n.op_type for n in onnx.load(out_path).graph.node} >= {"PSConv", "PSConvAdd"}

    code, out, err = run_cli("info", out_path)
    assert code == 0, err
    assert "ai.pscompress v1" in out and "pattern:     4of9" in out and "IR version:  8" in out
    assert "layers.0.conv2" in out and "PSConvAdd+add+relu" in out and "0.444" in out

    x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    code, out, err = run_cli("run", out_path, "--input", tmp_path / "x.npy", "-k", "2", "--no-native")
    assert code == 0, err
    assert "portable ONNX functions" in out and out.count("1. ") == 2 and out.count("2. ") == 2


@pytest.mark.parametrize("args,message", [
    (["-o", "{tmp}/missing/m.onnx"], "does not exist"),
    (["-o", "{tmp}/m.bin"], "cannot tell the format"),
    (["-o", "{tmp}/m.onnx", "--fp16"], "--fp16 applies to TFLite"),
    (["-o", "{tmp}/m.onnx", "--input-shape", "1,2"], "bad input shape"),
])
def test_export_user_errors_exit_2(run_cli, checkpoint, tmp_path, args, message):
    code, _, err = run_cli("export", checkpoint, *[a.format(tmp=tmp_path) for a in args])
    assert code == 2 and err.startswith("Error: ") and message in err and "Traceback" not in err
    assert not any(p.suffix == ".onnx" for p in tmp_path.rglob("*"))


def test_export_missing_model_exits_2(run_cli, tmp_path):
    code, _, err = run_cli("export", tmp_path / "nope.pt", "-o", tmp_path / "m.onnx")
    assert code == 2 and "no such file" in err


def test_run_and_info_user_errors_exit_2(exported, run_cli, tmp_path):
    path, _, _ = exported("resnet20")
    np.save(tmp_path / "rgb.npy", np.zeros((1, 3, 32, 32), np.float32))
    code, _, err = run_cli("run", path, "--input", tmp_path / "rgb.npy")
    assert code == 2 and "the model takes [N, 1, 28, 28]" in err
    code, _, err = run_cli("info", tmp_path / "rgb.npy")
    assert code == 2 and "describes .onnx models" in err


def test_console_script_runs_info_without_torch(exported):
    path, _, _ = exported("resnet20")
    code = ("import sys; from pscompress.cli import main; sys.argv = ['pscompress', 'info', sys.argv[1]]; "
            "main()")
    probe = subprocess.run([sys.executable, "-c", code + "; assert 'torch' not in sys.modules", str(path)],
                           capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    assert "ai.pscompress.PSConv" in probe.stdout


def test_info_keeps_long_patterns_short(run_cli, tmp_path):
    """A long explicit period is shown by its period and density, in the metadata and in info's table."""
    import torch

    from export_models import TwoHeads
    from pscompress.core.metadata import MAX_PATTERN_TEXT
    from pscompress.exporters.onnx_export import export_onnx
    from pscompress.workstation.checkpoint import LoadedModel
    from pscompress.workstation.sparsify import sparsify

    torch.manual_seed(0)
    module = TwoHeads()
    sparsify(module, "0,1,3,4/1,2,4,5/3,4,6,7/4,5,7,8/0,4,8", period=33, input_shape=(1, 16, 16))
    export_onnx(LoadedModel(module.eval(), meta={"input_shape": [1, 16, 16]}), tmp_path / "m.onnx")
    code, out, err = run_cli("info", tmp_path / "m.onnx")
    assert code == 0, err
    pattern_line = next(line for line in out.splitlines() if line.startswith("pattern:"))
    assert "period 33, density" in pattern_line and len(pattern_line) <= 13 + MAX_PATTERN_TEXT
    rows = [line for line in out.splitlines() if line.startswith("body.")]
    assert len(rows) == 2 and all("period 33, density" in row and len(row) < 150 for row in rows)
