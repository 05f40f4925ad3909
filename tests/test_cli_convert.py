"""`pscompress convert` through the real entry point: outputs on success, one-line errors otherwise."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
import zipfile

import pytest
import torch

from pscompress.workstation.archs import build
from pscompress.workstation.checkpoint import LoadedModel, load_model, save_checkpoint
from pscompress.workstation.surgery import psconv_layers


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    model = build("resnet20", in_channels=1)
    save_checkpoint(LoadedModel(model, "resnet20", {"in_channels": 1, "num_classes": 10}, {"classes": list("0123456789"), "accuracy": 0.9}),
                    folder / "r20.pt")
    torch.save(model.state_dict(), folder / "state.pt")
    torch.save(model, folder / "pickled.pt")
    (folder / "notes.pt").write_text("not a model")
    with zipfile.ZipFile(folder / "archive.pt", "w") as archive:
        archive.writestr("hello.txt", "a zip, but not a torch file")
    torch.save({"weights": [1, 2, 3]}, folder / "list.pt")
    only_1x1 = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 4, 1), torch.nn.Flatten())
    torch.save(only_1x1, folder / "only_1x1.pt")
    return folder


def test_convert_writes_checkpoint_report_and_table(models, tmp_path, run_cli):
    out, report = tmp_path / "converted.pt", tmp_path / "report.json"
    status, stdout, stderr = run_cli("convert", str(models / "r20.pt"), "--pattern", "2of9", "--dense-kernel",
                                  "-o", str(out), "--report-json", str(report))
    assert status == 0, stderr
    loaded = load_model(out)
    layers = psconv_layers(loaded.module)
    assert len(layers) == 18 and all(layer.pattern.period == 9 for layer in layers.values())
    assert loaded.meta["classes"] == list("0123456789")  # what was there is kept
    assert "accuracy" not in loaded.meta and loaded.meta["dense_accuracy"] == 0.9  # not claimed for the sparse weights
    assert loaded.meta["pattern"] == "2of9" and loaded.meta["input_shape"] == [1, 28, 28]
    data = json.loads(report.read_text())
    assert data["total"] == {k: v for k, v in loaded.meta["conversion"].items() if k in data["total"]}
    assert len(data["layers"]) == 22 and data["total"]["converted_layers"] == 18
    assert "layers.0.conv1" in stdout and "total" in stdout and f"wrote {out}" in stdout


def test_default_output_and_state_dict_with_arch(models, tmp_path, run_cli):
    source = tmp_path / "plain.pt"
    source.write_bytes((models / "state.pt").read_bytes())
    status, stdout, stderr = run_cli("convert", str(source), "--arch", "resnet20", "--no-align",
                             "--exclude", "layers.8.*")
    assert status == 0, stderr
    loaded = load_model(tmp_path / "plain-psconv.pt")
    assert loaded.arch == "resnet20" and len(psconv_layers(loaded.module)) == 16
    assert all(layer.shift == 0 for layer in psconv_layers(loaded.module).values())


def test_trusted_pickle_converts(models, tmp_path, run_cli):
    out = tmp_path / "from_pickle.pt"
    status, stdout, stderr = run_cli("convert", str(models / "pickled.pt"), "--trust-pickle", "-o", str(out))
    assert status == 0, stderr
    assert len(psconv_layers(load_model(out, trust_pickle=True).module)) == 18


def test_a_converted_pickle_records_its_input_so_later_commands_need_no_input_shape(models, tmp_path, run_cli):
    from pscompress.board.predictor import open_predictor

    out = tmp_path / "from_pickle.pt"
    status, stdout, stderr = run_cli("convert", str(models / "pickled.pt"), "--trust-pickle", "--input-shape", "1,28,20",
                                     "--mean", "0.25", "--std", "0.5", "-o", str(out))
    assert status == 0, stderr
    loaded = load_model(out, trust_pickle=True)
    assert loaded.arch is None and len(psconv_layers(loaded.module)) == 18
    assert loaded.meta["input_shape"] == [1, 28, 20] and loaded.meta["preprocess"] == {"mean": [0.25], "std": [0.5]}
    assert open_predictor(out, trust_pickle=True).input_shape == (1, 28, 20)
    status, stdout, stderr = run_cli("export", str(out), "--trust-pickle", "-o", str(tmp_path / "m.onnx"))
    assert status == 0, stderr
    assert open_predictor(tmp_path / "m.onnx").input_shape == (1, 28, 20)


@pytest.mark.parametrize(
    "args, message",
    [
        (["{m}/missing.pt"], "no such file"),
        (["{m}"], "is a directory"),
        (["{m}/notes.pt"], "not a PyTorch model file"),
        (["{m}/archive.pt"], "not a PyTorch model file"),
        (["{m}/list.pt"], "holds no model"),
        (["{m}/pickled.pt"], "--trust-pickle"),
        (["{m}/r20.pt", "--pattern", "4of10"], "3x3"),
        (["{m}/r20.pt", "--pattern", "0of9"], "not a pattern family"),
        (["{m}/r20.pt", "--pattern", "10of9"], "not a pattern family"),
        (["{m}/r20.pt", "--pattern", ""], "bad pattern"),
        (["{m}/r20.pt", "--pattern", "0,1,3,4/4,5,7,9"], "outside a 3x3 kernel"),
        (["{m}/r20.pt", "--pattern", "0,1,3,4//4,5,7,8"], "empty support"),
        (["{m}/r20.pt", "--period", "2"], "period 2"),
        (["{m}/r20.pt", "--input-shape", "3,32"], "bad input shape"),
        (["{m}/r20.pt", "--input-shape", "3,32,32"], "does not run on a 3x32x32 input"),
        (["{m}/r20.pt", "--include", "nothing.*"], "matches no convolution"),
        (["{m}/only_1x1.pt", "--trust-pickle"], "no convolution to convert"),
        (["{m}/state.pt"], "--arch"),
        (["{m}/state.pt", "--arch", "resnet99"], "unknown architecture"),
        (["{m}/state.pt", "--arch", "resnet18"], "does not match the architecture"),
        (["{m}/r20.pt", "--report-json", "{m}/no/such/dir/r.json"], "does not exist"),
        (["{m}/r20.pt", "--mean", "0.5,0.5,0.5"], "--mean has 3 value(s), the model takes 1 channel(s)"),
        (["{m}/r20.pt", "--std", "0"], "--std must be positive finite numbers"),
        (["{m}/r20.pt", "--classes", "a,b,c"], "--classes has 3 names"),
    ],
)
def test_mistakes_exit_2_with_one_line_and_no_output(models, tmp_path, run_cli, args, message):
    out = tmp_path / "out.pt"
    args = [a.format(m=models) for a in args]
    status, stdout, stderr = run_cli("convert", *args, "-o", str(out))
    assert status == 2
    assert stderr.startswith("Error: ") and stderr.count("\n") == 1, stderr
    assert message in stderr
    assert "Traceback" not in stderr + stdout
    assert list(tmp_path.iterdir()) == []  # no output, no temporary file left behind


def test_console_script_end_to_end(models, tmp_path):
    """The installed entry point, in a fresh process."""
    out = tmp_path / "c.pt"
    result = subprocess.run([sys.executable, "-c", "from pscompress.cli import main; main()", "convert",
                             str(models / "r20.pt"), "--pattern", "0,1,3,4/1,2,4,5/3,4,6,7/4,5,7,8", "-o", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert len(psconv_layers(load_model(out).module)) == 18


def test_the_whole_conversion_config_is_recorded(models, tmp_path, run_cli):
    out = tmp_path / "periodic.pt"
    status, stdout, stderr = run_cli("convert", str(models / "r20.pt"), "--pattern", "2of9", "--period", "4",
                             "--dense-kernel", "--exclude", "layers.8.*", "--no-align", "-o", str(out))
    assert status == 0, stderr
    assert load_model(out).meta["sparsify"] == {"pattern": "2of9", "period": 4, "dense_kernel": True, "include": [],
                                                "exclude": ["layers.8.*"], "align": False, "filter_fn": None}


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """A TorchScript archive and the state dict of an architecture pscompress does not know."""
    folder = tmp_path_factory.mktemp("foreign")
    net = torch.nn.Sequential(*[torch.nn.Conv2d(1 if i == 0 else 8, 8, 3, padding=1) for i in range(40)],
                              torch.nn.Flatten(), torch.nn.Linear(8 * 28 * 28, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script is deprecated, and users still have archives
        torch.jit.script(net).save(str(folder / "scripted.pt"))
    torch.save({f"backbone.stage{i}.block.weight": torch.zeros(8, 8, 3, 3) for i in range(200)}
               | {"head.fc.weight": torch.zeros(10, 8)}, folder / "foreign-state.pt")
    return folder


@pytest.mark.parametrize("command", ["convert", "export"])
@pytest.mark.parametrize("trusted", [False, True])
def test_a_torchscript_archive_is_refused_in_one_line(foreign, tmp_path, run_cli, command, trusted):
    out = tmp_path / ("out.pt" if command == "convert" else "out.onnx")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status, stdout, stderr = run_cli(command, foreign / "scripted.pt", *(["--trust-pickle"] if trusted else []),
                                         "-o", out)
    assert status == 2 and not out.exists()
    assert stderr == (f"Error: {foreign / 'scripted.pt'} is a TorchScript archive (torch.jit.save), which pscompress "
                      "does not read: pass the model saved with torch.save(model, ...) and --trust-pickle, or its "
                      "state_dict() with --arch for a built-in architecture\n")
    assert not [w for w in caught if issubclass(w.category, UserWarning)]


def test_a_state_dict_of_another_architecture_names_the_first_mismatches(foreign, tmp_path, run_cli):
    status, stdout, stderr = run_cli("convert", foreign / "foreign-state.pt", "--arch", "resnet20", "-o",
                                     tmp_path / "out.pt")
    assert status == 2 and stderr.count("\n") == 1 and len(stderr) < 600, stderr
    assert "does not match the architecture: missing" in stderr and "conv1.weight" in stderr
    assert "unexpected 201 key(s): backbone.stage0.block.weight, backbone.stage1.block.weight, " \
           "backbone.stage2.block.weight, ..." in stderr
    assert "backbone.stage3." not in stderr
