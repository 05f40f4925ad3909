"""``pscompress ladder build``: every rung made, measured against independent evaluations, resumable."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pscompress.board.data import load_dataset
from pscompress.board.evaluate import evaluate_file
from pscompress.board.ladder import LadderPredictor, load_manifest
from pscompress.board.onnx_reader import read_onnx
from pscompress.core.errors import UserError
from pscompress.workstation import ladder_build
from pscompress.workstation.ladder_build import LadderBuildConfig, RungSpec, build_ladder, parse_rungs

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "fashion_resnet20.pt"


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """A slice of Fashion-MNIST as an .npz: 512 training and 400 test images (real data: accuracy matters)."""
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    path = tmp_path_factory.mktemp("data") / "fashion-small.npz"
    x_train, y_train = next(train.batches(512, np.arange(512)))
    x_test, y_test = next(test.batches(400, np.arange(400)))
    to_u8 = lambda x: np.round(np.asarray(x) * 255).astype(np.uint8)  # noqa: E731
    np.savez(path, x_train=to_u8(x_train), y_train=y_train, x_test=to_u8(x_test), y_test=y_test,
             classes=np.array(train.classes))
    return path


def config(rungs: str, **changes) -> LadderBuildConfig:
    return LadderBuildConfig(rungs=parse_rungs(rungs), **{"epochs": 1, "limit": 256, "runs": 10, "threads": 1,
                                                          **changes})


def test_parse_rungs():
    assert parse_rungs("dense, 4of9,2of9-int8,lean,dense-int8") == (
        RungSpec("dense"), RungSpec("4of9"), RungSpec("2of9", True), RungSpec("lean"), RungSpec("dense", True))
    assert parse_rungs("4of9+vip,4of9+vip-int8,dense+vip") == (
        RungSpec("4of9", vip=True), RungSpec("4of9", True, True), RungSpec("dense", vip=True))
    assert parse_rungs("4of9+vip-int8")[0].model == "4of9+vip"
    for bad in ("4of10", "0of9", "10of9", "dense,dense", "4of9-int8,4of9-int8", "", "int8", "4of9-fp16", "5x5:13of25",
                "lean+vip", "4of9-int8+vip", "+vip", "4of9+vip+vip"):
        with pytest.raises(UserError):
            parse_rungs(bad)


@pytest.fixture(scope="module")
def built(tmp_path_factory, small_data) -> tuple[Path, list[str]]:
    folder = tmp_path_factory.mktemp("ladder")
    lines: list[str] = []
    build_ladder(SAMPLE, str(small_data), folder, config("dense,4of9,2of9,4of9-int8"), log=lines.append,
                 progress=False)
    return folder, lines


def test_every_rung_is_built_and_measured(built, small_data):
    folder, _ = built
    manifest = load_manifest(folder)
    assert [r.name for r in manifest.rungs] == ["dense", "4of9", "2of9", "4of9-int8"]
    assert manifest.threads == 1 and manifest.cpu
    test = load_dataset(str(small_data), "test")
    for rung in manifest.rungs:
        # the recorded accuracy is what an independent evaluation of the written file gives
        assert rung.accuracy == pytest.approx(evaluate_file(folder / rung.file, test).top1)
        assert rung.latency_ms["p50"] > 0
    ops = {r.name: {n.op_type for n in read_onnx(folder / r.file).nodes} for r in manifest.rungs}
    assert not any("PSConv" in op for op in ops["dense"])
    assert "QLinearPSConv" in ops["4of9-int8"] or "QLinearConv" in ops["4of9-int8"]
    recipes = {r.name: r.recipe for r in manifest.rungs}
    assert recipes["2of9"]["pattern"] == "2of9" and recipes["2of9"]["finetune"]["epochs"] == 1
    assert recipes["dense"]["finetune"] is None and recipes["4of9-int8"]["int8"] == {"calibration": 100}
    assert recipes["4of9"]["tune"]["layers"] > 0
    assert manifest.rungs[0].accuracy > 0.8  # the dense sample is a 90% model


def test_kept_rungs_follow_the_monotone_rule(built):
    manifest = load_manifest(built[0])
    by_speed = sorted(manifest.rungs, key=lambda r: (r.latency_ms["p50"], -r.accuracy))
    best = -1.0
    for rung in by_speed:  # the rule restated: kept iff more accurate than every faster rung
        assert rung.kept == (rung.accuracy > best)
        best = max(best, rung.accuracy)
    ladder = LadderPredictor(built[0], threads=1)
    assert ladder.names == [r.name for r in sorted(by_speed, key=lambda r: r.accuracy) if r.kept]


def test_a_second_run_rebuilds_nothing(built, small_data, monkeypatch):
    folder, _ = built
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.onnx")}
    monkeypatch.setattr(ladder_build, "export_onnx", lambda *a, **k: pytest.fail("a finished rung was rebuilt"))
    lines: list[str] = []
    build_ladder(SAMPLE, str(small_data), folder, config("dense,4of9,2of9,4of9-int8"), log=lines.append,
                 progress=False)
    assert sum("already built" in line for line in lines) == 4
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.onnx")} == before


def test_an_interrupted_build_resumes_with_what_is_left(tmp_path, small_data, monkeypatch):
    calls = {"n": 0}
    real = ladder_build.evaluate_file

    def failing_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ladder_build, "evaluate_file", failing_second)
    with pytest.raises(KeyboardInterrupt):
        build_ladder(SAMPLE, str(small_data), tmp_path, config("dense,2of9"), log=lambda _: None, progress=False)
    assert not (tmp_path / "ladder.json").exists()  # no manifest until every rung is measured
    assert (tmp_path / "build" / "dense.json").is_file() and not (tmp_path / "build" / "2of9.json").exists()
    assert (tmp_path / "build" / "2of9.pt").is_file()  # the fine-tuned checkpoint survives
    monkeypatch.setattr(ladder_build, "evaluate_file", real)
    monkeypatch.setattr(ladder_build, "finetune", lambda *a, **k: pytest.fail("fine-tuning ran again"))
    lines: list[str] = []
    build_ladder(SAMPLE, str(small_data), tmp_path, config("dense,2of9"), log=lines.append, progress=False)
    assert any(line.startswith("[1/2] dense: already built") for line in lines)
    assert [r.name for r in load_manifest(tmp_path).rungs] == ["dense", "2of9"]


def test_another_recipe_rebuilds_the_rung(built, small_data, tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    (folder / "build").mkdir()
    for path in built[0].glob("dense*"):
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "build" / "dense.json").write_bytes((built[0] / "build" / "dense.json").read_bytes())
    lines: list[str] = []
    build_ladder(SAMPLE, str(small_data), folder, config("dense", threads=2), log=lines.append, progress=False)
    assert not any("already built" in line for line in lines)  # built for 1 thread: not this recipe
    assert json.loads((folder / "build" / "dense.json").read_text())["recipe"]["threads"] == 2


def test_cli_bad_input_is_one_line(run_cli, tmp_path, small_data):
    result = run_cli("ladder", "build", str(SAMPLE), "--data", str(small_data), "--patterns", "dense,4of10",
                     "-o", str(tmp_path / "l"))
    assert result.code == 2 and result.err.count("\n") == 1 and "4of10" in result.err
    (tmp_path / "file").write_text("x")
    result = run_cli("ladder", "build", str(SAMPLE), "--data", str(small_data), "-o", str(tmp_path / "file"))
    assert result.code == 2 and "is a file" in result.err and "Traceback" not in result.err  # click's usage error


def test_without_torch_build_names_the_extra():
    code = ("import sys; sys.modules['torch'] = None; from pscompress.cli import main; "
            "sys.argv = ['pscompress', 'ladder', 'build', 'm.pt', '--data', 'x', '-o', 'l']; main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "pscompress ladder build" in done.stderr and "pip install 'pscompress[workstation]'" in done.stderr
    assert done.stderr.count("\n") == 1
    listing = subprocess.run([sys.executable, "-c", code.replace("'build', 'm.pt', '--data', 'x', '-o', 'l'", "'--help'")],
                             capture_output=True, text=True)
    assert listing.returncode == 0 and "build" in listing.stdout and "[workstation]" in listing.stdout


def test_virtual_pool_rungs_by_glob_and_auto(tmp_path, small_data):
    from pscompress.workstation.checkpoint import load_model
    from pscompress.workstation.virtual_pool import VirtualPoolConv2d

    def pooled(path):
        return sorted(n for n, m in load_model(path).module.named_modules() if isinstance(m, VirtualPoolConv2d))
    lines: list[str] = []
    build_ladder(SAMPLE, str(small_data), tmp_path, config("dense,4of9+vip,4of9+vip-int8", virtual_pool=("layers.8.*",)),
                 log=lines.append, progress=False)
    manifest = load_manifest(tmp_path)
    test = load_dataset(str(small_data), "test")
    for rung in manifest.rungs:
        assert rung.accuracy == pytest.approx(evaluate_file(tmp_path / rung.file, test).top1)
    assert pooled(tmp_path / "build" / "4of9+vip.pt") == ["layers.8.conv1", "layers.8.conv2"]
    ops = {r.name: [n.op_type for n in read_onnx(tmp_path / r.file).nodes] for r in manifest.rungs}
    assert ops["4of9+vip"].count("Resize") == 2 and ops["4of9+vip-int8"].count("Resize") == 2
    assert "Resize" not in ops["dense"]
    assert manifest.rungs[1].recipe["virtual_pool"] == ["layers.8.*"]
    assert sum("epoch 1/1" in line for line in lines) == 1  # the int8 rung quantizes the fp32 rung's model

    auto = tmp_path / "auto"
    build_ladder(SAMPLE, str(small_data), auto, config("dense+vip", virtual_pool=("auto:0.05",)), log=lambda _: None,
                 progress=False)
    saved = load_model(auto / "build" / "dense+vip.pt")
    assert pooled(auto / "build" / "dense+vip.pt") == sorted(saved.meta["virtual_pool_layers"])


def test_a_virtual_pool_glob_that_matches_nothing_fails_before_building(tmp_path, small_data):
    with pytest.raises(UserError, match="matches no convolution"):
        build_ladder(SAMPLE, str(small_data), tmp_path, config("dense,4of9+vip", virtual_pool=("nothing.*",)),
                     log=lambda _: None, progress=False)
    assert not list((tmp_path / "build").glob("*.json"))
