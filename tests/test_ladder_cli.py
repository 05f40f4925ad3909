"""`pscompress ladder measure` (rungs re-timed here, the monotone subset re-selected) and `run --ladder`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pscompress.board.ladder import Manifest, Rung, load_manifest, write_manifest
from pscompress.board.ladder_measure import measure_ladder
from pscompress.board.onnx_predictor import OnnxPredictor
from pscompress.board.tune import cpu_model


def chain_model(path: Path, depth: int) -> None:
    """[N, 1, 28, 28] -> [N, 10] through ``depth`` 784x784 MatMuls: latency grows with depth."""
    rng = np.random.default_rng(depth)
    inits = [numpy_helper.from_array((rng.standard_normal((784, 784)) / 28).astype(np.float32), f"W{i}")
             for i in range(depth)]
    inits.append(numpy_helper.from_array(rng.standard_normal((784, 10)).astype(np.float32), "Head"))
    nodes, x = [helper.make_node("Flatten", ["input"], ["h0"])], "h0"
    for i in range(depth):
        nodes.append(helper.make_node("MatMul", [x, f"W{i}"], [f"h{i + 1}"]))
        x = f"h{i + 1}"
    nodes.append(helper.make_node("MatMul", [x, "Head"], ["logits"]))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], initializer=inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


@pytest.fixture
def ladder(tmp_path) -> Path:
    """Recorded latencies that claim the opposite of the truth: "deep" (40 MatMuls) fastest."""
    specs = [("shallow", 1, 0.80, 9.0), ("deep", 40, 0.85, 0.1), ("deeper-worse", 80, 0.82, 0.2)]
    rungs = []
    for name, depth, accuracy, p90 in specs:
        chain_model(tmp_path / f"{name}.onnx", depth)
        rungs.append(Rung(name, f"{name}.onnx", accuracy, (tmp_path / f"{name}.onnx").stat().st_size,
                          {"p50": p90, "p90": p90, "p99": p90}, kept=True, recipe={"depth": depth}))
    write_manifest(tmp_path, Manifest(cpu="elsewhere", threads=2, rungs=rungs))
    return tmp_path


def test_measure_retimes_rungs_and_reselects_the_monotone_subset(ladder):
    manifest = measure_ladder(ladder, threads=1, runs=20, progress=False)
    by_name = {r.name: r for r in manifest.rungs}
    shallow, deep, worse = by_name["shallow"], by_name["deep"], by_name["deeper-worse"]
    # 40x the MatMuls is far slower whatever the noise: the recorded (wrong) order is replaced
    assert shallow.latency_ms["p50"] * 5 < deep.latency_ms["p50"] < worse.latency_ms["p50"]
    assert all(r.latency_ms["p50"] <= r.latency_ms["p90"] <= r.latency_ms["p99"] for r in manifest.rungs)
    # slower and less accurate than "deep": dropped; the other two rise together
    assert (shallow.kept, deep.kept, worse.kept) == (True, True, False)
    reread = load_manifest(ladder)
    assert reread.cpu == cpu_model() and reread.threads == 1
    assert [r.latency_ms for r in reread.rungs] == [r.latency_ms for r in manifest.rungs]
    assert [r.recipe for r in reread.rungs] == [{"depth": 1}, {"depth": 40}, {"depth": 80}]


def test_cli_measure_prints_each_rung_and_the_machine(run_cli, ladder):
    code, out, err = run_cli("ladder", "measure", ladder, "--threads", "1", "--runs", "10")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["rung", "accuracy", "size", "KB", "p50", "ms", "p90", "ms", "p99", "ms", "kept"]
    assert [line.split()[0] for line in lines[1:4]] == ["shallow", "deep", "deeper-worse"]
    assert [line.split()[-1] for line in lines[1:4]] == ["yes", "yes", "no"]
    assert lines[-1] == f"wrote {ladder / 'ladder.json'}: 2 of 3 rung(s) kept on {cpu_model()}, 1 thread(s)"


def test_cli_measure_of_a_folder_that_is_no_ladder_is_one_line(run_cli, tmp_path):
    code, out, err = run_cli("ladder", "measure", tmp_path)
    assert code == 2 and err.strip() == f"Error: {tmp_path} is not a ladder: it has no ladder.json"


def test_cli_measure_leaves_a_broken_manifest_untouched(run_cli, ladder):
    path = ladder / "ladder.json"
    data = json.loads(path.read_text())
    data["rungs"][0]["accuracy"] = 2
    path.write_text(json.dumps(data))
    before = path.read_bytes()
    code, _, err = run_cli("ladder", "measure", ladder)
    assert code == 2 and "rungs[0].accuracy must be a fraction 0..1" in err and len(err.strip().splitlines()) == 1
    assert path.read_bytes() == before


@pytest.fixture
def images(tmp_path) -> Path:
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_run_ladder_with_time_to_spare_runs_the_most_accurate_rung(run_cli, ladder, images):
    from pscompress.core.inputs import load_input

    measure_ladder(ladder, threads=1, runs=10, progress=False)  # kept: shallow (fastest), deep (most accurate)
    code, out, err = run_cli("run", "--ladder", ladder, "--deadline-ms", "1e6", "--input", images, "--threads", "1")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"ladder {ladder}: rungs shallow, deep (fastest first)")
    deep = OnnxPredictor(ladder / "deep.onnx", threads=1)
    for i, line in enumerate(lines[1:5]):
        expected = int(deep.predict(load_input(images / f"img{i}.png", (1, 28, 28)))[0].argmax())
        assert line.startswith(f"img{i}.png: {expected} via deep in ") and line.endswith(") met")
    assert lines[5].startswith("4 image(s): 4 met the 1e+06 ms deadline, 0 missed (0.0%); rungs used: shallow 0, deep 4")


def test_run_ladder_when_nothing_fits_runs_the_fastest_and_reports_misses(run_cli, ladder, images):
    measure_ladder(ladder, threads=1, runs=10, progress=False)
    code, out, err = run_cli("run", "--ladder", ladder, "--deadline-ms", "0.0001", "--input", images)
    assert code == 0, err
    assert all(" via shallow in " in line and line.endswith(") MISSED") for line in out.splitlines()[1:5])
    assert out.splitlines()[5].startswith("4 image(s): 0 met the 0.0001 ms deadline, 4 missed (100.0%)")


@pytest.mark.parametrize("args, message", [
    (["m.onnx", "--ladder", "L", "--deadline-ms", "5"], "give either MODEL or --ladder DIR"),
    (["--ladder", "L"], "--deadline-ms and --ladder go together"),
    (["m.onnx", "--deadline-ms", "5"], "--deadline-ms and --ladder go together"),
])
def test_run_ladder_option_mistakes_are_one_line(run_cli, tmp_path, args, message):
    code, _, err = run_cli("run", *args, "--input", tmp_path)
    assert code == 2 and err.strip() == f"Error: {message}"


def test_run_ladder_needs_a_folder_of_images(run_cli, ladder, images):
    code, _, err = run_cli("run", "--ladder", ladder, "--deadline-ms", "5", "--input", images / "img0.png")
    assert code == 2 and "with --ladder, give a folder of images" in err
    empty = images.parent / "empty"
    empty.mkdir()
    code, _, err = run_cli("run", "--ladder", ladder, "--deadline-ms", "5", "--input", empty)
    assert code == 2 and "holds no images" in err
