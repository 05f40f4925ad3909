"""torch.export programs (.pt2) through convert, finetune and export, with no model class; hostile archives."""
from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from pscompress import runtime
from pscompress.exporters.pipeline import relative_difference
from pscompress.workstation.archs import build
from pscompress.workstation.checkpoint import LoadedModel, load_model, save_checkpoint
from pscompress.workstation.layers import PSConv2d
from pscompress.workstation.surgery import psconv_layers

SHAPE = (3, 16, 16)


class SmallCNN(nn.Module):
    """A stem, a residual block with batch norm, a grouped 3x3 conv, a 1x1 projection and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2)
        self.project = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem_bn(self.stem(x)))
        x = torch.relu(self.bn1(self.conv1(x)) + x)
        x = self.project(torch.relu(self.grouped(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _trained_like(model: nn.Module) -> nn.Module:
    """Batch-norm statistics and affine parameters that are not the identity, so the rewrite is really checked."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model.eval()


def save_program(model: nn.Module, path, shape=SHAPE, inputs=None) -> None:
    """What the user does: torch.export.export on one example, then torch.export.save."""
    torch.export.save(torch.export.export(model.eval(), inputs or (torch.rand(1, *shape),)), str(path))


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    folder = tmp_path_factory.mktemp("program")
    torch.manual_seed(0)
    model = _trained_like(SmallCNN())
    save_program(model, folder / "m.pt2")
    rng = np.random.default_rng(0)
    np.savez(folder / "data.npz", x=rng.integers(0, 256, (48, *SHAPE), dtype=np.uint8), y=rng.integers(0, 5, 48))
    return folder, model


def _outputs_match(module: nn.Module, reference: nn.Module, shape=SHAPE) -> float:
    x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return relative_difference(module(x).numpy(), reference(x).numpy())


def test_a_program_loads_as_layers_equal_to_the_model(program):
    folder, model = program
    loaded = load_model(folder / "m.pt2")
    modules = dict(loaded.module.named_modules())
    assert all(isinstance(modules[name], nn.Conv2d) for name in ("stem", "conv1", "grouped", "project"))
    assert isinstance(modules["bn1"], nn.BatchNorm2d) and isinstance(modules["fc"], nn.Linear)
    assert modules["grouped"].groups == 2
    assert modules["grouped"].stride == (2, 2) and modules["project"].kernel_size == (1, 1)
    assert loaded.meta["input_shape"] == list(SHAPE) and loaded.notes == []
    assert _outputs_match(loaded.module, model) < 1e-6  # on a batch of 4: the program was exported for 1


def test_convert_finetune_export_a_program_end_to_end(program, tmp_path, run_cli):
    folder, model = program
    converted, tuned, onnx_file = tmp_path / "c.pt", tmp_path / "f.pt", tmp_path / "m.onnx"
    status, stdout, stderr = run_cli("convert", folder / "m.pt2", "--pattern", "4of9", "-o", converted)
    assert status == 0, stderr
    loaded = load_model(converted)  # no class, no program file, no --trust-pickle
    assert set(psconv_layers(loaded.module)) == {"conv1", "grouped"}
    assert loaded.meta["input_shape"] == list(SHAPE) and loaded.meta["pattern"] == "4of9"

    status, stdout, stderr = run_cli("finetune", converted, "--data", folder / "data.npz", "--epochs", "1",
                                     "--batch-size", "16", "--bn-recalibrate", "0", "-o", tuned)
    assert status == 0, stderr
    tuned_model = load_model(tuned).module
    for layer in psconv_layers(tuned_model).values():
        assert bool((layer.weight[~layer.mask] == 0).all())  # the masks held through training

    status, stdout, stderr = run_cli("export", tuned, "-o", onnx_file)  # no --input-shape: it was recorded
    assert status == 0, stderr
    assert "2 pSConv layer(s)" in stdout
    x = np.random.default_rng(2).random((3, *SHAPE), dtype=np.float32)
    with torch.no_grad():
        expected = tuned_model(torch.from_numpy(x)).numpy()
    for native in (False, True) if runtime.native_available() else (False,):
        got = runtime.create_session(str(onnx_file), native=native).run(None, {"input": x})[0]
        assert relative_difference(got, expected) < 1e-4, native


def test_the_report_notes_what_stays_dense(tmp_path, run_cli):
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.conv = nn.Conv2d(8, 8, 3, padding=1)
            self.scaled = nn.Parameter(torch.randn(8, 8, 3, 3))
            self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)

        def forward(self, x):
            x = torch.relu(self.conv(torch.relu(self.stem(x))))
            x = nn.functional.conv2d(x, self.scaled * 0.5, padding=1)  # a weight computed in the graph
            return self.up(x)

    save_program(Odd(), tmp_path / "odd.pt2")
    status, stdout, stderr = run_cli("convert", tmp_path / "odd.pt2", "-o", tmp_path / "c.pt",
                                     "--report-json", tmp_path / "r.json")
    assert status == 0, stderr
    notes = json.loads((tmp_path / "r.json").read_text())["notes"]
    assert any("stays dense: its weight or bias is computed in the graph" in n for n in notes), notes
    assert any("transposed convolution" in n for n in notes), notes
    assert all(n in stdout for n in notes)
    assert set(psconv_layers(load_model(tmp_path / "c.pt").module)) == {"conv"}


def _member_names(path) -> list[str]:
    with zipfile.ZipFile(path) as archive:
        return archive.namelist()


def _rewrite(source, target, change) -> None:
    """Copy the archive ``source`` to ``target``, ``change(name, data)`` giving each member's new bytes (None: drop)."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            data = change(info.filename, old.read(info.filename))
            if data is not None:
                new.writestr(info, data)


def _pickled(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


class Payload:
    """Any Python object: what a malicious archive would unpickle."""


def _hostile(folder, name: str):
    source, target = folder / "m.pt2", folder / f"{name}.pt2"
    if name == "text":
        target.write_text("not a program")
    elif name == "truncated":
        data = source.read_bytes()
        target.write_bytes(data[: len(data) // 2])
    elif name == "bomb":
        prefix = _member_names(source)[0].split("/")[0]
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(f"{prefix}/archive_format", "pt2")
            archive.writestr(f"{prefix}/models/model.json", "{}")
            archive.writestr(f"{prefix}/data/weights/weight_0", bytes(64 << 20))
    elif name == "pickled-weight":
        def change(member, data):
            if member.endswith("model_weights_config.json"):
                config = json.loads(data)
                next(iter(config["config"].values()))["use_pickle"] = True
                return json.dumps(config).encode()
            return data
        _rewrite(source, target, change)
    elif name == "pickled-inputs":
        _rewrite(source, target, lambda member, data: _pickled(Payload()) if "sample_inputs" in member else data)
    elif name == "extra-member":
        _rewrite(source, target, lambda member, data: data)
        with zipfile.ZipFile(target, "a") as archive:
            archive.writestr(_member_names(source)[0].split("/")[0] + "/data/aotinductor/model/run.so", b"\x7fELF")
    elif name == "expression":
        def change(member, data):
            if "/models/" in member:
                model = json.loads(data)
                model["planted"] = {"expr_str": "__import__('os').system('true')"}
                return json.dumps(model).encode()
            return data
        _rewrite(source, target, change)
    return target


@pytest.mark.parametrize("name, message", [
    ("text", "not a PyTorch model file"),
    ("truncated", "not a PyTorch model file"),
    ("bomb", "compressed"),
    ("pickled-weight", "stored as a pickled Python object"),
    ("pickled-inputs", "holds more than tensors"),
    ("extra-member", "which a torch.export program does not"),
    ("expression", "not arithmetic"),
])
@pytest.mark.parametrize("command", ["convert", "export"])
def test_a_hostile_program_is_refused_in_one_line(program, tmp_path, run_cli, name, message, command):
    folder, _ = program
    hostile = _hostile(_copy(folder, tmp_path), name)
    out = tmp_path / ("out.pt" if command == "convert" else "out.onnx")
    status, stdout, stderr = run_cli(command, hostile, "-o", out)
    assert status == 2, stderr
    assert stderr.startswith("Error: ") and stderr.count("\n") == 1, stderr
    assert message in stderr and "Traceback" not in stderr + stdout
    assert not out.exists()


def _copy(folder, tmp_path):
    (tmp_path / "m.pt2").write_bytes((folder / "m.pt2").read_bytes())
    return tmp_path


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x, y):
        return self.conv(x) + self.conv(y)


class FixedBatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 16 * 16, 2)

    def forward(self, x):
        return self.fc(self.conv(x).view(1, -1))  # the batch of the example, baked into the graph


@pytest.mark.parametrize("case, message", [
    ("two inputs", "takes 2 input(s) ([1, 3, 16, 16], [1, 3, 16, 16]); pscompress converts models of one image input"),
    ("training mode", "normalises with batch statistics: the program was exported in training mode"),
    ("fixed batch", "does not run on a batch of 2 images"),
])
def test_a_program_pscompress_cannot_use_is_refused_in_one_line(tmp_path, run_cli, case, message):
    if case == "two inputs":
        save_program(TwoInputs(), tmp_path / "p.pt2", inputs=(torch.rand(1, *SHAPE), torch.rand(1, *SHAPE)))
    elif case == "training mode":
        torch.export.save(torch.export.export(SmallCNN().train(), (torch.rand(2, *SHAPE),)), str(tmp_path / "p.pt2"))
    else:
        save_program(FixedBatch(), tmp_path / "p.pt2")
    status, stdout, stderr = run_cli("convert", tmp_path / "p.pt2", "-o", tmp_path / "c.pt")
    assert status == 2 and stderr.startswith("Error: ") and stderr.count("\n") == 1, stderr
    assert message in stderr and not (tmp_path / "c.pt").exists()


def test_a_built_in_model_as_a_program_converts_as_its_checkpoint_does(tmp_path, run_cli):
    """The rewrite names each layer after the model's own (layers.0.conv1, ...): same report, same layers."""
    torch.manual_seed(0)
    model = build("resnet20", in_channels=1).eval()
    save_program(model, tmp_path / "r20.pt2", shape=(1, 28, 28))
    save_checkpoint(LoadedModel(model, "resnet20", {"in_channels": 1, "num_classes": 10}), tmp_path / "r20.pt")
    reports = {}
    for name in ("r20.pt2", "r20.pt"):
        status, _, stderr = run_cli("convert", tmp_path / name, "-o", tmp_path / f"{name}-c.pt",
                                    "--report-json", tmp_path / f"{name}.json")
        assert status == 0, stderr
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert reports["r20.pt2"]["layers"] == reports["r20.pt"]["layers"]
    assert reports["r20.pt2"]["total"] == reports["r20.pt"]["total"]


def test_a_program_of_a_psconv_model_converts_unchanged(tmp_path, run_cli):
    """A pSConv model trained elsewhere (PSConv2d: weight times mask in forward) exported as a program: each conv's
    product of two constants is folded, its periodic zeros are recognised, and the model computes what it did."""
    from pscompress.workstation.sparsify import sparsify

    torch.manual_seed(0)
    model = _trained_like(build("resnet20", in_channels=1))
    sparsify(model, "4of9", input_shape=(1, 28, 28))
    save_program(model, tmp_path / "ps.pt2", shape=(1, 28, 28))
    converted, onnx_file = tmp_path / "c.pt", tmp_path / "c.onnx"
    status, stdout, stderr = run_cli("convert", tmp_path / "ps.pt2", "--pattern", "4of9", "-o", converted,
                                     "--report-json", tmp_path / "r.json")
    assert status == 0, stderr
    layers = [layer for layer in json.loads((tmp_path / "r.json").read_text())["layers"] if layer["method"]]
    assert len(layers) == 18 and {layer["method"] for layer in layers} == {"recognised"}
    assert "no fine-tuning needed" in stdout and "next: fine-tune" not in stdout, stdout
    loaded = load_model(converted)  # rebuilt from the program's bytes: the fold again, then the state dict
    assert set(psconv_layers(loaded.module)) == set(psconv_layers(model))
    assert _outputs_match(loaded.module, model, shape=(1, 28, 28)) < 1e-6
    status, stdout, stderr = run_cli("export", converted, "-o", onnx_file)
    assert status == 0 and "18 pSConv layer(s)" in stdout and "verified" in stdout, stderr


def test_a_converted_program_records_layers_the_rewrite_rebuilds(program, tmp_path, run_cli):
    """The checkpoint holds the program's bytes and the state dict: loading rebuilds the same PSConv2d layers."""
    folder, _ = program
    out = tmp_path / "c.pt"
    assert run_cli("convert", folder / "m.pt2", "-o", out).code == 0
    raw = torch.load(out, weights_only=True)
    assert raw["program"].dtype == torch.uint8 and "module" not in raw and "conv1._extra_state" in raw["state_dict"]
    first, second = load_model(out), load_model(out)
    assert isinstance(first.module.get_submodule("conv1"), PSConv2d)
    assert _outputs_match(first.module, second.module) == 0.0
