"""Every subcommand against a corpus of hostile inputs (tests/hostile_inputs.py).

The rule: a bad input gives exactly one line on stderr, "Error: ...", exit status 2, no
traceback, no output (nor temporary) file left behind, and memory bounded by the work.

Cases run in two child processes under an address-space limit (RLIMIT_AS), one for the
commands that import PyTorch and one for those that do not, each running its cases one
after the other in-process with file descriptors 1 and 2 captured per case (so native
libraries' own printing counts too). A process per case would import PyTorch some hundred
times; two processes keep the file to about half a minute on two cores, and a bomb that
inflates in any case still hits the limit. 2 GiB is enough for PyTorch's import and every
well-behaved case here (measured: importing torch needs about 0.75 GiB of address space,
`pscompress convert` of the sample model 1 GiB; the largest case peaks at 350 MB resident),
and too little for any of the bombs (3 GiB and more).
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hostile_inputs as corpus
from pscompress.board.onnx_reader import Node, psconv_attributes
from pscompress.core.errors import UserError
from pscompress.core.inputs import NpzReader, load_npy, opened_image
from pscompress.core.limits import check_input_shape, parse_size
from pscompress.core.metadata import check_metadata

ADDRESS_SPACE = 2 << 30  # bytes, both groups

# (id, hostile file, what the message must mention) per kind of input
MODEL_FILES = [(name, f"{name}.pt", words) for name, words in {
    "ckpt-unknown-kwarg": "depth", "ckpt-negative-channels": "in_channels", "ckpt-huge-classes": "num_classes",
    "ckpt-float-classes": "num_classes", "ckpt-kwargs-list": "arch_kwargs", "ckpt-meta-string": "meta",
    "ckpt-state-list": "state_dict", "ckpt-no-state-dict": "state_dict", "ckpt-arch-list": "arch",
    "ckpt-input-shape-abc": "input_shape", "ckpt-input-shape-huge": "input_shape",
    "ckpt-input-shape-negative": "input_shape", "ckpt-classes-int": "classes", "ckpt-shift-x": "shift",
    "ckpt-shift-99": "shift", "ckpt-kernel-size-text": "kernel_size", "ckpt-kernel-size-1x1": "kernels",
    "ckpt-kernel-size-huge": "kernel size", "ckpt-patterns-zero": "pattern",
    "ckpt-patterns-text": "patterns", "ckpt-extra-no-shift": "shift", "ckpt-nan": "NaN",
    "pt-bomb": "PSCOMPRESS_MAX_INPUT_BYTES", "pt-bomb-ratio": "compressed",
}.items()]
ONNX_FILES = [(name, f"{name}.onnx", words) for name, words in {
    "onnx-group-0": "group", "onnx-out-channels-0": "out_channels", "onnx-no-kernel-shape": "kernel_shape",
    "onnx-no-patterns": "patterns", "onnx-float-kernel-shape": "kernel_shape", "onnx-kernel-shape-3": "kernel_shape",
    "onnx-meta-input-huge": "input_shape", "onnx-meta-input-abc": "input_shape",
    "onnx-meta-input-negative": "input_shape", "onnx-meta-classes-5": "classes",
    "onnx-graph-input-huge": "input", "onnx-run-rejected": "onnxruntime",
}.items()]
# Statically valid for `info`: the graph's input size and run-time rejection are run matters.
NOT_FOR_INFO = {"onnx-graph-input-huge", "onnx-run-rejected"}
# Refused by onnxruntime (native kernels or portable functions): what the message names depends on the path.
ONNXRUNTIME_REFUSES = {"onnx-group-0", "onnx-out-channels-0", "onnx-no-kernel-shape", "onnx-no-patterns",
                       "onnx-float-kernel-shape", "onnx-kernel-shape-3", "onnx-run-rejected"}
DATA_SETS = [("data-object", "data-object.npz", "object"), ("data-bomb", "data-bomb.npz", "PSCOMPRESS_MAX_INPUT_BYTES"),
             ("data-header-lie", "data-header-lie.npz", "x.npy"),
             ("data-png-bomb", "data-png-bomb", "PSCOMPRESS_MAX_IMAGE_PIXELS")]
RUN_INPUTS = [("npz-as-npy", "npz-as.npy", ".npz"), ("object-npy", "object.npy", "object"),
              ("header-lie-npy", "header-lie.npy", "header-lie.npy"),
              ("png-header-20000", "png-header-20000.png", "PSCOMPRESS_MAX_IMAGE_PIXELS"),
              ("png-13000", "png-13000.png", "PSCOMPRESS_MAX_IMAGE_PIXELS")]

GOOD_PT, GOOD_ONNX, GOOD_DATA = "{c}/good.pt", "{c}/good.onnx", "{c}/good.npz"


def _model_commands(model: str) -> dict[str, list[str]]:
    """The commands that take a model file, by name."""
    commands = {
        "eval": ["eval", model, "--data", GOOD_DATA, "--json", "{out}/result.json"],
        "check": ["check", model, "--data", GOOD_DATA, "--min-accuracy", "0", "--junit", "{out}/gate.xml",
                  "--json", "{out}/result.json"],
    }
    if model.endswith(".pt"):
        commands.update({
            "convert": ["convert", model, "-o", "{out}/converted.pt", "--report-json", "{out}/report.json"],
            "finetune": ["finetune", model, "--data", GOOD_DATA, "-o", "{out}/tuned.pt", "--epochs", "1"],
            "export": ["export", model, "-o", "{out}/model.onnx"],
            "export-tflite": ["export", model, "-o", "{out}/model.tflite"],
        })
    else:
        commands["run"] = ["run", model, "-i", "{c}/good.npy"]
        commands["info"] = ["info", model]
        commands["tune"] = ["tune", model, "-o", "{out}/tuned.onnx"]
    return commands


def _cases() -> list[dict]:
    cases = []

    def add(case_id: str, args: list[str], words: str) -> None:
        cases.append({"id": case_id, "args": args, "words": words})

    for name, file, words in MODEL_FILES + ONNX_FILES:
        for command, args in _model_commands("{c}/" + file).items():
            if command == "info" and name in NOT_FOR_INFO:
                continue
            validates = command in ("info", "tune")  # they check the attributes themselves, before onnxruntime
            add(f"{command}-{name}", args, "onnxruntime" if not validates and name in ONNXRUNTIME_REFUSES else words)
        if name in ONNXRUNTIME_REFUSES:  # the portable path too, where the native library is the default
            add(f"run-portable-{name}", [*_model_commands("{c}/" + file)["run"], "--no-native"], "onnxruntime")
    for name, file, words in DATA_SETS:
        add(f"finetune-{name}", ["finetune", GOOD_PT, "--data", "{c}/" + file, "-o", "{out}/tuned.pt"], words)
        add(f"eval-{name}", ["eval", GOOD_ONNX, "--data", "{c}/" + file, "--json", "{out}/result.json"], words)
        add(f"check-{name}", ["check", GOOD_ONNX, "--data", "{c}/" + file, "--min-accuracy", "0",
                              "--junit", "{out}/gate.xml"], words)
    for name, file, words in RUN_INPUTS:
        add(f"run-{name}", ["run", GOOD_ONNX, "-i", "{c}/" + file], words)
    for command in ("convert", "finetune", "export"):
        arch = ["--arch", "resnet20"]
        extra = ["--data", GOOD_DATA, "-o", "{out}/tuned.pt"] if command == "finetune" else \
            ["-o", "{out}/out." + ("pt" if command == "convert" else "onnx")]
        add(f"{command}-nan-state", [command, "{c}/nan-state.pt", *arch, *extra], "NaN")
    for command, out in (("convert", "converted.pt"), ("export", "model.onnx")):
        add(f"{command}-input-shape-huge", [command, GOOD_PT, "--input-shape", "1,100000,100000", "-o", "{out}/" + out],
            "input shape")
    add("export-proc", ["export", GOOD_PT, "-o", "/proc/x.onnx"], "/proc/x.onnx")
    add("check-reference-bomb", ["check", GOOD_ONNX, "--reference", "{c}/pt-bomb.pt", "--data", GOOD_DATA,
                                 "--max-disagreement", "1"], "PSCOMPRESS_MAX_INPUT_BYTES")
    return cases


CASES = _cases()


def _needs_torch(case: dict) -> bool:
    return case["args"][0] in ("convert", "finetune", "export") or any(a.endswith(".pt") for a in case["args"])


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, dict]:
    folder = corpus.build_corpus(tmp_path_factory.mktemp("corpus"))
    before = sorted(p.name for p in folder.iterdir())
    work = tmp_path_factory.mktemp("runs")
    # Few threads and malloc arenas: each arena reserves 64 MiB of address space per thread.
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    env.pop("PSCOMPRESS_MAX_INPUT_BYTES", None), env.pop("PSCOMPRESS_MAX_IMAGE_PIXELS", None)
    children = []
    for group in (True, False):
        cases = [{"id": c["id"], "args": [a.replace("{c}", str(folder)) for a in c["args"]]}
                 for c in CASES if _needs_torch(c) == group]
        spec, out = work / f"cases-{group}.json", work / f"results-{group}.json"
        spec.write_text(json.dumps(cases))
        command = [sys.executable, corpus.__file__, str(spec), str(out), str(work / f"out-{group}")]
        children.append((subprocess.Popen(command, env=env, preexec_fn=_limit_address_space,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE), out))
    by_id = {}
    for child, out in children:
        stdout, stderr = child.communicate(timeout=600)
        assert child.returncode == 0, f"the case runner died: {stderr.decode()[-3000:]}"
        by_id.update({r["id"]: r for r in json.loads(out.read_text())})
    assert sorted(p.name for p in folder.iterdir()) == before, "a case wrote beside its input"
    return by_id


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_hostile_input_is_one_line_and_exit_2(results, case):
    result = results[case["id"]]
    stderr = result["stderr"]
    assert "Traceback" not in stderr + result["stdout"], stderr
    assert result["status"] == 2, stderr
    assert stderr.startswith("Error: ") and stderr.count("\n") == 1 and stderr.endswith("\n"), stderr
    assert case["words"] in stderr, stderr
    assert result["left"] == [], f"left behind: {result['left']}"


# --- the checks themselves, in this process -----------------------------------------------

def test_byte_limit_is_read_from_the_environment(tmp_path, monkeypatch):
    np.savez(tmp_path / "a.npz", x=np.zeros(4096, np.uint8))
    np.save(tmp_path / "a.npy", np.zeros(4096, np.uint8))
    monkeypatch.setenv("PSCOMPRESS_MAX_INPUT_BYTES", "1K")
    for read in (lambda: NpzReader(tmp_path / "a.npz")["x"], lambda: load_npy(tmp_path / "a.npy")):
        with pytest.raises(UserError, match=r"more than the 1\.0 KiB allowed: .*raise PSCOMPRESS_MAX_INPUT_BYTES"):
            read()
    monkeypatch.setenv("PSCOMPRESS_MAX_INPUT_BYTES", "8K")
    assert NpzReader(tmp_path / "a.npz")["x"].shape == (4096,) and load_npy(tmp_path / "a.npy").shape == (4096,)
    monkeypatch.setenv("PSCOMPRESS_MAX_INPUT_BYTES", "lots")
    with pytest.raises(UserError, match="PSCOMPRESS_MAX_INPUT_BYTES='lots' is not a positive number"):
        load_npy(tmp_path / "a.npy")


def test_pixel_limit_is_read_from_the_environment(tmp_path, monkeypatch):
    from PIL import Image

    Image.new("L", (16, 16)).save(tmp_path / "a.png")
    monkeypatch.setenv("PSCOMPRESS_MAX_IMAGE_PIXELS", "100")
    with pytest.raises(UserError, match=r"is 16x16 pixels, more than the 100 pixels allowed: .*PSCOMPRESS_MAX_IMAGE_PIXELS"):
        with opened_image(tmp_path / "a.png"):
            pass
    monkeypatch.setenv("PSCOMPRESS_MAX_IMAGE_PIXELS", "256")
    with opened_image(tmp_path / "a.png") as image:
        assert image.convert("L").size == (16, 16)


def test_compression_ratio_is_checked_above_a_floor(tmp_path):
    np.savez_compressed(tmp_path / "small.npz", x=np.zeros(512 << 10, np.uint8))  # 1000:1, but half a MiB
    np.savez_compressed(tmp_path / "large.npz", x=np.zeros(2 << 20, np.uint8))
    assert NpzReader(tmp_path / "small.npz")["x"].size == 512 << 10
    with pytest.raises(UserError, match="likely zip bomb"):
        NpzReader(tmp_path / "large.npz")


def test_sizes_parse_in_binary_and_decimal_units():
    assert [parse_size(t) for t in ("300000", "300K", "1.5MiB", "2MB", "4G", "x")] == \
        [300000, 300 << 10, 3 << 19, 2_000_000, 4 << 30, None]


@pytest.mark.parametrize("shape", [[1, 2048, 2048], (3, 32, 32)])
def test_input_shapes_within_the_element_budget_pass(shape):
    assert check_input_shape(shape) == tuple(shape)


@pytest.mark.parametrize("shape, message", [
    ([1, 2049, 2048], "more than the 4,194,304"), ([70000, 1, 1], "65,536 channels"), ([1, 0, 8], "positive"),
    ([1.0, 8, 8], "three integers"), ([True, 8, 8], "three integers"), ("1,8,8", "three integers"),
])
def test_input_shapes_outside_the_budget_are_refused(shape, message):
    with pytest.raises(UserError, match=message):
        check_input_shape(shape)


@pytest.mark.parametrize("meta, message", [
    ({"classes": {"a": 1}}, "classes must be a list"), ({"classes": ["a", None]}, "classes must be a list"),
    ({"accuracy": 1.5}, r"fraction in \[0, 1\]"), ({"accuracy": "high"}, "fraction"), ({"finetune": []}, "mapping"),
    ({"input_shape": [1, 8]}, "not \\[C, H, W\\]"), (["input_shape"], "not a mapping"),
])
def test_metadata_fields_are_validated(meta, message):
    with pytest.raises(UserError, match=message):
        check_metadata(meta, "model.onnx")


def test_metadata_is_normalised():
    assert check_metadata({"input_shape": (1, 8, 8), "classes": [0, "b"], "pattern": "4of9"}, "m") == \
        {"input_shape": [1, 8, 8], "classes": ["0", "b"], "pattern": "4of9"}


def _psconv(**change) -> Node:
    return Node("conv", "PSConv", "ai.pscompress", ["x", "w"], corpus._attributes(**change))


def test_psconv_attributes_fill_in_the_defaults():
    node = _psconv(strides=None, pads=None, dilations=None, group=None, shift=None, clip_min=None, clip_max=None)
    a = psconv_attributes(node)
    assert (a["strides"], a["pads"], a["dilations"], a["group"], a["shift"]) == ([1, 1], [0, 0, 0, 0], [1, 1], 1, 0)
    assert a["clip_min"] == -float("inf") and a["clip_max"] == float("inf")


@pytest.mark.parametrize("change, message", [
    (dict(kernel_shape=[0, 3]), "kernel_shape"), (dict(kernel_shape=[8, 8]), "64 positions"),
    (dict(strides=[0, 1]), "strides"), (dict(strides=[65, 1]), "strides"), (dict(strides=[1]), "strides"),
    (dict(pads=[1025, 0, 0, 0]), "pads"), (dict(pads=[-1, 0, 0, 0]), "pads"), (dict(dilations=[0, 1]), "dilations"),
    (dict(group=3), "group 3 must divide"), (dict(group=[1]), "group must be one integer"),
    (dict(in_channels=0), "in_channels"), (dict(in_channels=None), "in_channels is missing"),
    (dict(patterns=[0]), "patterns"), (dict(patterns=[512]), "patterns"), (dict(patterns=[1] * 257), "257 entries"),
    (dict(shift=4), "shift 4 must be below"), (dict(shift=-1), "shift"),
    (dict(clip_min=1.0, clip_max=0.0), "clip_min"), (dict(clip_min=0), "clip_min must be one float"),
])
def test_psconv_attributes_outside_the_operator_table_are_refused(change, message):
    with pytest.raises(UserError, match=message):
        psconv_attributes(_psconv(**change))


def test_sparsify_refuses_non_finite_weights_before_changing_the_model():
    import torch

    from pscompress import sparsify
    from pscompress.workstation.archs import build

    model = build("resnet20", in_channels=1, num_classes=3)
    with torch.no_grad():
        model.get_submodule("layers.8.conv2").weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(UserError, match="layer layers.8.conv2 has NaN or infinite weights"):
        sparsify(model, "4of9", input_shape=(1, 8, 8))
    assert not any(type(m).__name__ == "PSConv2d" for m in model.modules())
