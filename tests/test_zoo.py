"""The model zoo (pscompress.workstation.zoo) through the user's path, every model by the same code:
a torch.export program (.pt2) -> convert -> finetune (the segmenter by distillation from the dense program)
-> export ONNX (-> run, eval, info) and TFLite
float32 and int8 (-> run, eval), and a pickled module (--trust-pickle) -> convert -> export TFLite (the
module graph's forms of the same operators); every output checked against PyTorch within 1e-4 by the
exporters and again here, independently (onnxruntime and the TFLite interpreter on the same input as
the PyTorch model)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pscompress import runtime
from pscompress.exporters.pipeline import relative_difference
from pscompress.workstation.checkpoint import load_model
from pscompress.workstation.layers import PSConv2d
from pscompress.workstation.model_io import named_outputs
from pscompress.workstation.surgery import psconv_layers
from pscompress.workstation.zoo import SIZES, ZOO, build

NAMES = list(ZOO)
TOLERANCE = 1e-4
PATTERN_KERNELS = {"4of9": (3, 3), "13of25": (5, 5), "2of4": (2, 2)}
# pSConv layers after `convert` with the entry's patterns (every conv of a kernel size a pattern is
# for, except the first conv the model runs), counted by hand from the small configurations.
EXPECTED_PSCONV = {
    "resnet18_imagenet": 16,    # 8 BasicBlocks x 2; the 7x7 stem has no pattern
    "mobilenetv2": 6,           # one depthwise 3x3 per inverted residual; the 3x3 stem stays dense
    "efficientnet_lite": 5,     # 3 depthwise 3x3 + 2 depthwise 5x5; the 3x3 stem stays dense
    "face_pnet": 2,             # the two 3x3 convs after the first
    "face_rnet": 2,             # a 3x3 and the 2x2
    "face_onet": 3,             # two 3x3 and the 2x2
    "regnetx": 5,               # one grouped 3x3 per X block; the stem stays dense
    "unet": 9,                  # 5 double convs x 2 = 10 3x3 convs, less the first
    "senet": 6,                 # 3 SE blocks x 2; the 3x3 stem stays dense
}



def _patterns(name: str) -> list[str]:
    return [arg for spec in ZOO[name].patterns for arg in ("--pattern", spec)]


def _images(name: str, n: int = 3, seed: int = 1, shape=None) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *(shape or ZOO[name].input_shape())), dtype=np.float32)


def _torch_outputs(module: nn.Module, x: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        return {k: v.numpy() for k, v in named_outputs(module.eval()(torch.from_numpy(x))).items()}


def _assert_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray], what: str) -> None:
    assert list(got) == list(want), what
    for key, value in want.items():
        assert got[key].shape == value.shape, (what, key)
        assert relative_difference(got[key], value) <= TOLERANCE, (what, key, relative_difference(got[key], value))


_MADE: dict[str, dict[str, Path]] = {}


def _made(name: str, tmp_path_factory, run_cli) -> dict[str, Path]:
    """The files of one zoo model, made once per session: the .pt2 and pickled inputs, a data set, the
    converted (and, where finetune takes the model, fine-tuned) checkpoints."""
    if name in _MADE:
        return _MADE[name]
    entry = ZOO[name]
    folder = tmp_path_factory.mktemp(name)
    shape = entry.input_shape()
    model = build(name)
    files = {"pt2": folder / "m.pt2", "pickle": folder / "m.pt", "data": folder / "data.npz"}
    torch.export.save(torch.export.export(model, (torch.rand(1, *shape),)), str(files["pt2"]))
    torch.save(model, files["pickle"])
    rng = np.random.default_rng(0)
    np.savez(files["data"], x=rng.integers(0, 256, (32, *shape), dtype=np.uint8), y=rng.integers(0, entry.classes, 32))

    files["converted"] = folder / "m-c.pt"
    code, out, err = run_cli("convert", files["pt2"], *_patterns(name), "-o", files["converted"])
    assert code == 0, err
    assert f"{EXPECTED_PSCONV[name]} layer(s) converted" in out, out
    files["tuned"] = folder / "m-f.pt"
    extra = ["--train-output", entry.classifier_output] if entry.classifier_output else []
    if entry.task == "segmenter":  # data sets label whole images: distillation alone, from the dense program
        extra = ["--distill-from", files["pt2"]]
    code, out, err = run_cli("finetune", files["converted"], "--data", files["data"], "--epochs", "1",
                             "--batch-size", "16", "--bn-recalibrate", "16", *extra, "-o", files["tuned"])
    assert code == 0, err
    assert ("pixel agreement with the teacher" in out) == (entry.task == "segmenter"), out
    files["pickle_converted"] = folder / "m-pickle-c.pt"
    code, out, err = run_cli("convert", files["pickle"], "--trust-pickle", *_patterns(name),  # a pickle records no input size
                             "--input-shape", ",".join(map(str, shape)), "-o", files["pickle_converted"])
    assert code == 0, err
    assert f"{EXPECTED_PSCONV[name]} layer(s) converted" in out, out
    _MADE[name] = files
    return files


@pytest.mark.parametrize("name", NAMES)
def test_every_entry_builds_at_both_sizes_and_gives_its_task_outputs(name):
    entry = ZOO[name]
    for size in SIZES:
        model = build(name, size)
        assert not model.training and sum(p.numel() for p in model.parameters()) > 0
    c, h, w = entry.input_shape()
    outputs = _torch_outputs(build(name), _images(name, n=2))
    if entry.task == "classifier":
        assert [v.shape for v in outputs.values()] == [(2, entry.classes)]
    elif entry.task == "segmenter":
        assert [v.shape for v in outputs.values()] == [(2, entry.classes, h, w)]
    else:
        assert entry.task == "detector" and len(outputs) >= 2
        assert outputs[entry.classifier_output].shape[:2] == (2, entry.classes)
    assert all(np.isfinite(v).all() for v in outputs.values())
    assert name in (Path(__file__).parents[1] / "docs" / "zoo.md").read_text()


def test_full_sizes_are_the_published_architectures():
    """Parameter counts of the full configurations: the architectures they are modelled on."""
    counts = {name: sum(p.numel() for p in build(name, "full").parameters())
              for name in ("resnet18_imagenet", "mobilenetv2", "efficientnet_lite")}
    assert counts == {"resnet18_imagenet": 11_689_512, "mobilenetv2": 3_504_872, "efficientnet_lite": 4_652_008}


@pytest.mark.parametrize("name", NAMES)
def test_convert_and_finetune_keep_the_masks(name, tmp_path_factory, run_cli):
    files = _made(name, tmp_path_factory, run_cli)
    loaded = load_model(files["tuned"])
    layers = psconv_layers(loaded.module)
    assert len(layers) == EXPECTED_PSCONV[name]
    kernels = {tuple(layer.kernel_size) for layer in layers.values()}
    assert kernels == {PATTERN_KERNELS[spec] for spec in ZOO[name].patterns}  # every pattern found its layers
    for layer in layers.values():
        assert bool((layer.weight[~layer.mask] == 0).all())
    assert 0 <= loaded.meta["agreement" if ZOO[name].task == "segmenter" else "accuracy"] <= 1


@pytest.mark.parametrize("name", NAMES)
def test_onnx_export_matches_pytorch_on_every_output_and_runs(name, tmp_path_factory, run_cli):
    entry = ZOO[name]
    files = _made(name, tmp_path_factory, run_cli)
    onnx_file = files["tuned"].with_suffix(".onnx")
    dynamic = ["--dynamic-hw"] if entry.dynamic_hw else []
    code, out, err = run_cli("export", files["tuned"], "-o", onnx_file, *dynamic)
    assert code == 0, err
    assert f"{EXPECTED_PSCONV[name]} pSConv layer(s)" in out and "verified against PyTorch" in out, out

    module = load_model(files["tuned"]).module
    c, h, w = entry.input_shape()
    shapes = [(c, h, w)] + ([(c, h + 8, w + 16)] if entry.dynamic_hw else [])
    for shape in shapes:
        x = _images(name, shape=shape)
        want = _torch_outputs(module, x)
        for native in (False, True) if runtime.native_available() else (False,):
            session = runtime.create_session(str(onnx_file), threads=1, native=native)
            got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": x})))
            _assert_close(got, want, f"onnx native={native} {shape}")

    np.save(files["data"].with_name("x.npy"), _images(name, n=1))
    code, out, err = run_cli("run", onnx_file, "--input", files["data"].with_name("x.npy"))
    assert code == 0, err
    if entry.dynamic_hw:  # one file, any size: run it on an image pyramid's next level
        np.save(files["data"].with_name("big.npy"), _images(name, n=1, shape=(c, h + 8, w + 16)))
        code, out, err = run_cli("run", onnx_file, "--input", files["data"].with_name("big.npy"),
                                 "--input-shape", f"{c},{h + 8},{w + 16}")
        assert code == 0, err
    code, out, err = run_cli("info", onnx_file)
    assert code == 0 and "PSConv" in out, err
    assert ("agreement:" in out) == (entry.task == "segmenter") != ("accuracy:" in out), out  # what finetune measured
    if entry.task != "segmenter":
        extra = ["--output", entry.classifier_output] if entry.classifier_output else []
        code, out, err = run_cli("eval", onnx_file, "--data", files["data"], *extra, "--json", "-")
        assert code == 0, err
        assert 0 <= json.loads(out)["top1"] <= 1
    else:
        _segmenter_eval(onnx_file, files, run_cli)


def _segmenter_eval(onnx_file: Path, files: dict[str, Path], run_cli) -> None:
    """Data sets label whole images: eval refuses a segmenter alone, and with --reference (its dense export) counts
    the pixels whose top-1 class agrees, as onnxruntime's own outputs count them, close to what finetune measured
    between the PyTorch models."""
    code, out, err = run_cli("eval", onnx_file, "--data", files["data"])
    assert code == 2 and err.count("\n") == 1 and "--reference" in err, err
    dense = onnx_file.with_name("dense.onnx")
    assert run_cli("export", files["pt2"], "-o", dense).code == 0
    code, out, err = run_cli("eval", onnx_file, "--data", files["data"], "--reference", dense, "--json", "-")
    assert code == 0, err
    record = json.loads(out)
    with np.load(files["data"]) as arrays:
        x = arrays["x"].astype(np.float32) / 255
    top1 = [runtime.create_session(str(f), threads=1).run(None, {"input": x})[0].argmax(1) for f in (onnx_file, dense)]
    assert record["pixels"] == top1[0].size and record["agreement"] == pytest.approx(np.mean(top1[0] == top1[1]))
    assert record["agreement"] == pytest.approx(load_model(files["tuned"]).meta["agreement"], abs=0.01)


@pytest.mark.parametrize("source", ["program", "pickle"])
@pytest.mark.parametrize("name", NAMES)
def test_tflite_export_matches_pytorch_and_runs(name, source, tmp_path_factory, run_cli):
    """The .pt2's converted (and fine-tuned) checkpoint, whose graph calls aten operators, and the pickled module's,
    whose graph calls modules and functions: both export, float32 at PyTorch's parity on every output; the program
    in int8 too."""
    pytest.importorskip("ai_edge_litert")
    from pscompress.board.tflite_predictor import TFLitePredictor

    entry = ZOO[name]
    files = _made(name, tmp_path_factory, run_cli)
    checkpoint, trust = (files["tuned"], []) if source == "program" else (files["pickle_converted"], ["--trust-pickle"])
    tflite_file = checkpoint.with_suffix(".tflite")
    code, out, err = run_cli("export", checkpoint, *trust, "-o", tflite_file)
    assert code == 0, err
    assert "verified" in out or "difference" in out, out
    if source == "program":  # int8 (of the converted model: one epoch on random labels leaves near-tied classes, which
        # int8 rounding reorders): the exporter checks its classes and values against PyTorch on calibration images
        code, out, err = run_cli("export", files["converted"], "--int8", "--data", files["data"], "--calibration", "16",
                                 "-o", files["converted"].with_name("m-int8.tflite"))
        assert code == 0, err

    module = load_model(checkpoint, trust_pickle=bool(trust)).module
    x = _images(name)
    want = _torch_outputs(module, x)
    predictor = TFLitePredictor(tflite_file)
    _assert_close({k: np.asarray(v) for k, v in predictor.predict_all(x).items()}, want, "tflite")
    np.save(files["data"].with_name("x.npy"), _images(name, n=1))
    code, out, err = run_cli("run", tflite_file, "--input", files["data"].with_name("x.npy"))
    assert code == 0 and (len(want) == 1 or all(output in out for output in want)), err  # several: each named

    if entry.task != "segmenter":
        extra = ["--output", entry.classifier_output] if entry.classifier_output else []
        code, out, err = run_cli("eval", tflite_file, "--data", files["data"], *extra, "--json", "-")
        assert code == 0, err
        assert 0 <= json.loads(out)["top1"] <= 1


@pytest.mark.parametrize("name", [n for n in NAMES if ZOO[n].task == "segmenter"])
def test_finetune_refuses_a_segmenter_without_a_teacher_in_one_line(name, tmp_path_factory, run_cli):
    """Data sets label whole images: without a teacher the refusal says how a per-pixel model trains; a
    teacher that scores whole images is refused too."""
    files = _made(name, tmp_path_factory, run_cli)
    never = files["converted"].with_name("never.pt")
    code, out, err = run_cli("finetune", files["converted"], "--data", files["data"], "--epochs", "1", "-o", never)
    assert code == 2 and err.count("\n") == 1 and "distillation alone" in err and "--teacher" in err, err
    classifier = _made("senet", tmp_path_factory, run_cli)["converted"]
    code, out, err = run_cli("finetune", files["converted"], "--data", files["data"], "--epochs", "1",
                             "--teacher", classifier, "-o", never)
    assert code == 2 and err.count("\n") == 1 and "teacher" in err, err
    assert not never.exists()


def test_psconv_layers_of_the_zoo_are_psconv2d():
    """sparsify on the zoo's small models directly (the Python API) converts what the CLI does."""
    from pscompress.workstation.sparsify import sparsify

    for name in NAMES:
        model = build(name)
        sparsify(model, list(ZOO[name].patterns), input_shape=ZOO[name].input_shape(), align=False)
        assert sum(isinstance(m, PSConv2d) for m in model.modules()) == EXPECTED_PSCONV[name], name


def test_finetune_asks_which_output_of_a_detector_to_train(tmp_path_factory, run_cli):
    files = _made("face_onet", tmp_path_factory, run_cli)
    never = files["converted"].with_name("never.pt")
    code, out, err = run_cli("finetune", files["converted"], "--data", files["data"], "-o", never)
    assert code == 2 and err.count("\n") == 1, err
    assert "3 outputs (face, box, landmarks)" in err and "--train-output" in err
    code, out, err = run_cli("finetune", files["converted"], "--data", files["data"], "--train-output", "eyes", "-o", never)
    assert code == 2 and "no output 'eyes'" in err, err
    assert not never.exists()


def test_the_table_benchmark_runs_on_a_small_model(capsys):
    """benchmarks/zoo_table.py (docs/zoo.md's table), smoke run: one small model, one short round."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import zoo_table

    args = ["--models", "face_pnet", "--size", "small", "--repeats", "1", "--budget", "0.005"]
    assert zoo_table.main(args + ([] if runtime.native_available() else ["--no-speed"])) == 0
    printed = capsys.readouterr().out
    assert "kernel path" in printed and "load average" in printed
    row = next(line for line in printed.splitlines() if line.startswith("| face_pnet |"))
    assert "| 2 / 5 |" in row and "FAILED" not in row
