"""`pscompress ladder plot` and `pscompress eval --plot` (pscompress.board.tradeoff): the picture, the page, the refusals."""
from __future__ import annotations

import base64
import html
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from pscompress.board.evaluate import EvalResult, format_report, load_result
from pscompress.board.ladder import Manifest, Rung, write_manifest
from pscompress.board.tradeoff import DPI, FIGURE_INCHES, NO_MATPLOTLIB, plot_evaluations
from pscompress.core.errors import UserError

HOSTILE = '<script>alert("$x$")</script>'
PIXELS = (int(FIGURE_INCHES[0] * DPI), int(FIGURE_INCHES[1] * DPI))


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()  # decodes every pixel, not only the header
        return image.size


@pytest.fixture
def ladder(tmp_path) -> Path:
    """Four rungs, files of the recorded sizes: three kept, one (slower, less accurate) dropped."""
    folder = tmp_path / "ladder"
    folder.mkdir()
    specs = [("tiny", 0.70, (1.0, 1.5, 2.5), 1000, True), (HOSTILE, 0.80, (2.0, 3.0, 4.0), 3000, True),
             ("slow-worse", 0.75, (3.0, 4.0, 6.0), 2500, False), ("big", 0.85, (5.0, 6.0, 9.0), 9000, True)]
    rungs = []
    for i, (name, accuracy, latency, size, kept) in enumerate(specs):
        (folder / f"r{i}.onnx").write_bytes(b"\0" * size)
        rungs.append(Rung(name, f"r{i}.onnx", accuracy, size, dict(zip(("p50", "p90", "p99"), latency)), kept=kept,
                          recipe={"pattern": "4of9", "note": "<b>&"}))
    write_manifest(folder, Manifest(cpu="Cortex-A76", threads=2, rungs=rungs))
    return folder


def rows(page: str) -> dict[str, tuple[str, str]]:
    """rung name (unescaped) -> (row class, kept cell) of the page's table."""
    found = re.findall(r'<tr class="(\w+)"><td>(.*?)</td>.*?<td>(yes|no)</td><td><code>', page)
    return {html.unescape(name): (cls, kept) for cls, name, kept in found}


def test_plot_writes_a_picture_and_a_self_contained_page(run_cli, ladder, tmp_path):
    png, page = tmp_path / "tradeoff.png", tmp_path / "tradeoff.html"
    code, out, err = run_cli("ladder", "plot", ladder, "-o", png, "--html", page)
    assert code == 0, err
    assert out == f"wrote {png} and {page}\n"
    assert png_size(png.read_bytes()) == PIXELS
    text = page.read_text(encoding="utf-8")
    embedded = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text).group(1)
    assert base64.b64decode(embedded) == png.read_bytes()  # the very picture, nothing to fetch
    assert "<h1>Cortex-A76, 2 thread(s), batch 1</h1>" in text
    assert rows(text) == {"tiny": ("kept", "yes"), HOSTILE: ("kept", "yes"), "slow-worse": ("dropped", "no"),
                          "big": ("kept", "yes")}
    assert list(rows(text)) == ["tiny", HOSTILE, "slow-worse", "big"]  # fastest (p50) first
    assert "<script>" not in text and "&lt;script&gt;alert(&quot;$x$&quot;)&lt;/script&gt;" in text
    assert html.escape(json.dumps({"pattern": "4of9", "note": "<b>&"}, separators=(",", ":"))) in text
    assert '<td class="number">80.00%</td><td class="number">2.9</td><td class="number">2.000</td>' in text


def test_plot_without_html_writes_only_the_picture(run_cli, ladder, tmp_path):
    code, out, err = run_cli("ladder", "plot", ladder, "-o", tmp_path / "t.png")
    assert code == 0, err
    assert out == f"wrote {tmp_path / 't.png'}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ladder", "t.png"]


def broken(folder: Path) -> Path:
    data = json.loads((folder / "ladder.json").read_text())
    data["rungs"][0]["accuracy"] = 2
    (folder / "ladder.json").write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize("args, message", [
    (lambda d, t: [t / "missing", "-o", t / "t.png"], "is not a ladder: it has no ladder.json"),
    (lambda d, t: [broken(d), "-o", t / "t.png"], "rungs[0].accuracy must be a fraction 0..1"),
    (lambda d, t: [d, "-o", t / "t.jpg"], "t.jpg: the file to write must end in .png"),
    (lambda d, t: [d, "-o", t / "t.png", "--html", t / "t.htm"], "t.htm: the file to write must end in .html"),
    (lambda d, t: [d, "-o", t / "no-such-folder" / "t.png"], "directory"),
])
def test_plot_refusals_are_one_line_and_write_nothing(run_cli, ladder, tmp_path, args, message):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, out, err = run_cli("ladder", "plot", *args(ladder, out_dir))
    assert code == 2 and out == ""
    assert err.startswith("Error: ") and err.count("\n") == 1 and message in err, err
    assert list(out_dir.iterdir()) == []


def test_a_failed_plot_leaves_an_existing_picture_untouched(run_cli, ladder, tmp_path):
    png = tmp_path / "t.png"
    png.write_bytes(b"old")
    code, _, _ = run_cli("ladder", "plot", ladder, "-o", png, "--html", tmp_path / "t.txt")
    assert code == 2 and png.read_bytes() == b"old"


def without_matplotlib(monkeypatch) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: the import raises ImportError


def test_plot_without_matplotlib_names_the_workstation_extra(run_cli, ladder, tmp_path, monkeypatch):
    without_matplotlib(monkeypatch)
    code, _, err = run_cli("ladder", "plot", ladder, "-o", tmp_path / "t.png")
    assert code == 2 and err == f"Error: {NO_MATPLOTLIB}\n"
    assert not (tmp_path / "t.png").exists()


def test_plot_help(run_cli):
    code, out, _ = run_cli("ladder", "plot", "--help")
    assert code == 0 and "-o, --output FILE.png" in out and "--html FILE.html" in out


# --- eval --plot ------------------------------------------------------------------------------

def linear_model(path: Path, seed: int, hidden: int) -> Path:
    """[N, 1, 28, 28] -> [N, 10]; ``hidden`` sets the file size, so the models differ on both axes."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((784, hidden)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal((hidden, 10)).astype(np.float32), "V")]
    nodes = [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("MatMul", ["flat", "W"], ["h"]),
             helper.make_node("MatMul", ["h", "V"], ["logits"])]
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], initializer=inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


@pytest.fixture
def models(tmp_path) -> tuple[Path, Path, Path]:
    """Two small ONNX models and a 40-image .npz data set of 10 classes."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, x=rng.integers(0, 256, (40, 28, 28), dtype=np.uint8), y=np.arange(40) % 10)
    return linear_model(tmp_path / "small.onnx", 1, 4), linear_model(tmp_path / "large.onnx", 2, 64), data


def test_eval_of_one_model_prints_the_report_as_before(run_cli, models, tmp_path):
    small, _, data = models
    code, out, err = run_cli("eval", small, "--data", data, "--threads", 1, "--json", tmp_path / "r.json")
    assert code == 0, err
    assert out == format_report(load_result(tmp_path / "r.json")) + "\n"  # no header, nothing added


def test_eval_of_two_models_prints_each_report_under_its_name_and_plots_them(run_cli, models, tmp_path):
    small, large, data = models
    png = tmp_path / "models.png"
    code, out, err = run_cli("eval", small, large, "--data", data, "--threads", 1, "--plot", png)
    assert code == 0, err
    first, second = out.split("\n\n")
    assert first.startswith(f"== {small} ==\nmodel   {small} (onnx")
    assert second.startswith(f"== {large} ==\nmodel   {large} (onnx")
    assert second.endswith(f"\nwrote {png}\n")
    assert out.count("top-1") == 2
    assert png_size(png.read_bytes()) == PIXELS


def test_eval_json_takes_one_model(run_cli, models, tmp_path):
    small, large, data = models
    code, out, err = run_cli("eval", small, large, "--data", data, "--json", tmp_path / "r.json")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("Error: --json takes one model, got 2")
    assert not (tmp_path / "r.json").exists()


def test_eval_plot_is_refused_before_anything_is_evaluated(run_cli, models, tmp_path, monkeypatch):
    small, _, data = models
    code, out, err = run_cli("eval", small, "--data", data, "--plot", tmp_path / "models.svg")
    assert code == 2 and out == "" and err == f"Error: {tmp_path / 'models.svg'}: the file to write must end in .png\n"
    without_matplotlib(monkeypatch)
    code, out, err = run_cli("eval", small, "--data", data, "--plot", tmp_path / "models.png")
    assert code == 2 and out == "" and err == f"Error: {NO_MATPLOTLIB}\n"


def test_eval_needs_a_model(run_cli, models):
    code, _, err = run_cli("eval", "--data", models[2])
    assert code == 2 and "Missing argument 'MODEL...'" in err


def test_plot_evaluations_needs_a_name_per_result(tmp_path):
    with pytest.raises(UserError, match="a name for each"):
        plot_evaluations([], [], tmp_path / "t.png")
    record = {"schema": "pscompress-eval/1", "model": {}, "data": {"images": 1}, "classes": ["a"], "top1": 1.0,
              "top5": None, "per_class": {"a": 1.0}, "predictions": [0],
              "latency": dict(batch_size=1, batches=1, batch_p50=1.0, batch_p90=1.0, image_p50=1.0, image_p90=1.0,
                              image_mean=1.0)}
    with pytest.raises(UserError, match="got 2 name"):
        plot_evaluations([EvalResult.from_json(record)], ["a", "b"], tmp_path / "t.png")
