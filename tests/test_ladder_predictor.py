"""The board-side model ladder: its manifest, the monotone rule and deadline-aware selection."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pscompress.board.ladder import (LadderPredictor, Manifest, Rung, load_manifest, monotone_subset,
                                     write_manifest)
from pscompress.board.onnx_predictor import OnnxPredictor
from pscompress.core.errors import UserError


def linear_model(path: Path, seed: int) -> None:
    """A [N, 1, 28, 28] -> [N, 10] classifier (Flatten, MatMul, Add), different weights per seed."""
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.standard_normal((784, 10)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("MatMul", ["flat", "W"], ["mm"]),
         helper.make_node("Add", ["mm", "B"], ["logits"])],
        "linear", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], initializer=[weight, bias])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


def rung(name: str, accuracy: float, p90: float, p50: float | None = None, kept: bool = True) -> Rung:
    p50 = p90 if p50 is None else p50
    return Rung(name=name, file=f"{name}.onnx", accuracy=accuracy, bytes=0,
                latency_ms={"p50": p50, "p90": p90, "p99": max(p90, p50)}, kept=kept, recipe={"pattern": name})


def make_ladder(folder: Path, rungs: list[Rung]) -> Path:
    for i, r in enumerate(rungs):
        linear_model(folder / r.file, seed=i)
        r.bytes = (folder / r.file).stat().st_size
    write_manifest(folder, Manifest(cpu="test cpu", threads=1, rungs=rungs))
    return folder


@pytest.fixture
def ladder(tmp_path) -> Path:
    """Three kept rungs predicted at 1, 2 and 4 ms (p90), accuracy increasing."""
    return make_ladder(tmp_path, [rung("fast", 0.80, 1.0), rung("mid", 0.85, 2.0), rung("slow", 0.90, 4.0)])


def edit_manifest(folder: Path, change) -> None:
    path = folder / "ladder.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_manifest_round_trip(ladder):
    manifest = load_manifest(ladder)
    assert (manifest.format, manifest.version, manifest.cpu, manifest.threads, manifest.batch) == \
        ("pscompress-ladder", 1, "test cpu", 1, 1)
    assert [r.name for r in manifest.rungs] == ["fast", "mid", "slow"]
    assert manifest.rungs[1].latency_ms == {"p50": 2.0, "p90": 2.0, "p99": 2.0}
    assert manifest.rungs[1].recipe == {"pattern": "mid"} and manifest.rungs[1].kept
    write_manifest(ladder, manifest)
    assert load_manifest(ladder) == manifest
    assert not list(ladder.glob(".ladder.json.*"))  # the atomic write left no temporary behind


@pytest.mark.parametrize("change, field", [
    (lambda d: d["rungs"][0].update(file="../fast.onnx"), "rungs[0].file"),
    (lambda d: d["rungs"][0].update(file="/etc/passwd"), "rungs[0].file"),
    (lambda d: d["rungs"][1]["latency_ms"].update(p90=-1.0), "rungs[1].latency_ms.p90"),
    (lambda d: d["rungs"][2].update(name="fast"), "rungs[2].name"),
    (lambda d: d["rungs"][0].update(file="missing.onnx"), "rungs[0].file"),
    (lambda d: d.update(version=2), "version"),
    (lambda d: d.update(format="something-else"), "format"),
    (lambda d: d["rungs"][0].update(accuracy=1.5), "rungs[0].accuracy"),
    (lambda d: d["rungs"][0].update(bytes=1), "rungs[0].bytes"),
    (lambda d: d.update(rungs=[]), "rungs"),
    (lambda d: d.update(batch=4), "batch"),
    (lambda d: d["rungs"][0].update(extra=1), "unknown field"),
])
def test_manifest_validation(ladder, change, field):
    edit_manifest(ladder, change)
    with pytest.raises(UserError) as caught:
        load_manifest(ladder)
    message = str(caught.value)
    assert field in message and "\n" not in message, message


def test_manifest_refuses_non_finite_and_oversize(ladder):
    text = (ladder / "ladder.json").read_text()
    (ladder / "ladder.json").write_text(text.replace('"p90": 1.0', '"p90": NaN', 1))
    with pytest.raises(UserError, match="not valid JSON"):
        load_manifest(ladder)
    (ladder / "ladder.json").write_text(" " * (1 << 20) + text)
    with pytest.raises(UserError, match="more than"):
        load_manifest(ladder)


def test_monotone_subset():
    a, b, c, d, e = rung("a", 0.5, 1), rung("b", 0.7, 2), rung("c", 0.6, 3), rung("d", 0.9, 4), rung("e", 0.95, 4)
    # c is slower and less accurate than b; d ties e in latency and is less accurate
    assert [r.name for r in monotone_subset([e, d, c, b, a])] == ["a", "b", "e"]
    assert [r.kept for r in (a, b, c, d, e)] == [True, True, False, False, True]
    x, y = rung("x", 0.5, 1), rung("y", 0.5, 1)  # a full tie keeps the first
    assert [r.name for r in monotone_subset([x, y])] == ["x"]
    # the percentile decides the order: f is faster at p50, g at p90
    f, g = rung("f", 0.8, p90=5, p50=1), rung("g", 0.7, p90=3, p50=2)
    assert [r.name for r in monotone_subset([f, g], "p90")] == ["g", "f"]
    assert [r.name for r in monotone_subset([f, g], "p50")] == ["f"]
    with pytest.raises(UserError):
        monotone_subset([f], "p75")


def test_monotone_subset_with_a_minimum_gain():
    # b is 4% faster than c and less accurate: timing noise, so c takes its place; a is 2x faster than c
    a, b, c, d = rung("a", 0.80, 1.0), rung("b", 0.85, 2.0), rung("c", 0.90, 2.08), rung("d", 0.91, 4.0)
    assert [r.name for r in monotone_subset([a, b, c, d], min_gain=0.05)] == ["a", "c", "d"]
    assert not b.kept and all(r.kept for r in (a, c, d))
    assert [r.name for r in monotone_subset([a, b, c, d])] == ["a", "b", "c", "d"]  # the plain rule keeps b
    # a chain of 3% steps keeps every other rung, from the most accurate down: 6% apart
    chain = [rung(f"r{i}", 0.80 + i / 100, 1.0 + i * 0.03) for i in range(5)]
    assert [r.name for r in monotone_subset(chain, min_gain=0.05)] == ["r0", "r2", "r4"]
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(UserError):
            monotone_subset([a], min_gain=bad)


def test_only_kept_rungs_load(tmp_path):
    folder = make_ladder(tmp_path, [rung("fast", 0.8, 1.0), rung("worse", 0.7, 3.0, kept=False),
                                    rung("slow", 0.9, 4.0)])
    ladder = LadderPredictor(folder, threads=1)
    assert ladder.names == ["fast", "slow"]
    assert ladder.memory_bytes == sum((folder / f"{n}.onnx").stat().st_size for n in ("fast", "slow"))


def test_choose_around_thresholds(ladder):
    predictor = LadderPredictor(ladder, threads=1)
    assert predictor.predicted_ms == pytest.approx([1.0, 2.0, 4.0])
    expected = {100.0: 2, 4.0: 2, 3.999: 1, 2.0: 1, 1.999: 0, 1.0: 0}
    assert {ms: predictor.choose(ms) for ms in expected} == expected
    assert predictor.choose(0.5) == 0 and predictor.choose(-1.0) == 0  # nothing fits: the fastest


def test_predicted_miss(ladder):
    predictor = LadderPredictor(ladder, threads=1)
    result = predictor.predict(np.zeros((1, 1, 28, 28), np.float32), deadline_ms=0.0)
    assert result.rung == "fast" and result.predicted_miss and not result.met


def test_estimate_follows_observations(ladder):
    predictor = LadderPredictor(ladder, threads=1, percentile=0.9, window=8)
    for _ in range(8):  # the slow rung turns out 8x faster than measured: a full window of 0.5 ms runs
        predictor.observe(2, 0.5)
    assert predictor.predicted_ms == pytest.approx([0.125, 0.25, 0.5])  # every rung: the same slowdown
    assert predictor.choose(0.6) == 2
    predictor.observe(2, 10.0)  # one slow run in eight moves the 90th percentile up
    assert predictor.predicted_ms[2] > 0.5
    assert predictor.choose(0.6) == 0 and predictor.choose(3.0) == 1
    for _ in range(8):  # load: the fastest rung runs 9x slower, and the slow rungs, not run, follow it
        predictor.observe(0, 9.0)
    assert predictor.predicted_ms == pytest.approx([9.0, 18.0, 36.0])
    assert predictor.choose(10.0) == 0 and predictor.choose(20.0) == 1 and predictor.choose(1.0) == 0
    for _ in range(8):  # the load goes: the slow rungs come back without having run meanwhile
        predictor.observe(0, 1.0)
    assert predictor.predicted_ms == pytest.approx([1.0, 2.0, 4.0]) and predictor.choose(4.0) == 2
    with pytest.raises(UserError):
        predictor.observe(0, float("nan"))


@pytest.mark.parametrize("window,percentile", [(1, 0.9), (7, 0.5), (64, 0.9), (64, 0.99), (10, 1.0)])
def test_estimate_is_numpys_quantile_of_the_last_window(ladder, window, percentile):
    """The incremental estimate against np.quantile of the last ``window`` slowdowns (the oracle):
    each run's time over its rung's manifest median (1, 2 and 4 ms here), whichever rung ran."""
    predictor = LadderPredictor(ladder, threads=1, percentile=percentile, window=window)
    nominal = [1.0, 2.0, 4.0]
    rng = np.random.default_rng(window)
    slowdowns = []
    for k, value in enumerate(rng.choice([0.25, 0.5, 1.0, 3.0], size=3 * window) * rng.random(3 * window)):
        rung = k % 3  # ties included
        predictor.observe(rung, float(value))
        slowdowns.append(float(value) / nominal[rung])
        if len(slowdowns) >= window:
            expected = np.quantile(slowdowns[-window:], percentile)
            assert predictor.predicted_ms == pytest.approx([n * expected for n in nominal], abs=1e-12)


def test_the_seed_follows_the_manifests_tail(tmp_path):
    """Before any run, a rung's prediction is its p50 times the rungs' median p90/p50 (at percentile 0.9)."""
    folder = make_ladder(tmp_path, [rung("fast", 0.8, p90=1.5, p50=1.0), rung("slow", 0.9, p90=6.0, p50=4.0)])
    predictor = LadderPredictor(folder, threads=1, percentile=0.9, window=64)
    assert predictor.predicted_ms == pytest.approx([1.5, 6.0], rel=0.02)
    assert LadderPredictor(folder, threads=1, percentile=0.5).predicted_ms == pytest.approx([1.0, 4.0], rel=0.02)


def test_every_rung_is_warmed_up_before_the_first_request(ladder, monkeypatch):
    from pscompress.board import ladder as ladder_module

    calls = []
    real = OnnxPredictor.predict
    monkeypatch.setattr(OnnxPredictor, "predict", lambda self, x: calls.append(self.path.name) or real(self, x))
    predictor = LadderPredictor(ladder, threads=1)
    assert sorted(set(calls)) == ["fast.onnx", "mid.onnx", "slow.onnx"]
    assert len(calls) == 3 * ladder_module.WARMUP_RUNS
    assert predictor.predicted_ms == pytest.approx([1.0, 2.0, 4.0])  # warm-up runs teach the estimate nothing


def test_observe_is_fast(ladder):
    """Recording a latency runs on every request: it must stay far below a fast rung's run (~0.1 ms)."""
    predictor = LadderPredictor(ladder, threads=1, window=64)
    calls = 10_000
    start = time.perf_counter()
    for i in range(calls):
        predictor.observe(i % 3, 1.0 + (i % 7) * 0.1)
    per_call_us = (time.perf_counter() - start) / calls * 1e6
    assert per_call_us < 20, f"observe() took {per_call_us:.1f} us"


def test_predict_matches_the_rung(ladder):
    x = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
    for deadline, name in ((100.0, "slow"), (2.5, "mid")):
        predictor = LadderPredictor(ladder, threads=1)  # fresh estimates: the seeded ones decide
        result = predictor.predict(x, deadline_ms=deadline)
        assert result.rung == name and not result.predicted_miss
        direct = OnnxPredictor(ladder / f"{name}.onnx", threads=1).predict(x)
        np.testing.assert_array_equal(result.logits, direct)
        assert result.latency_ms > 0 and result.met == (result.latency_ms <= deadline)


def test_choose_is_fast_over_64_rungs(ladder, monkeypatch):
    predictor = LadderPredictor(ladder, threads=1)
    # 64 rungs' predictions without 64 sessions: choose() reads only these
    monkeypatch.setattr(predictor, "_predicted", [float(i) for i in range(64)])
    calls = 10_000
    start = time.perf_counter()
    for _ in range(calls):
        predictor.choose(0.5)  # the worst case: a scan of all 64 rungs
    per_call_us = (time.perf_counter() - start) / calls * 1e6
    assert per_call_us < 20, f"choose() took {per_call_us:.1f} us"


def test_manifest_refuses_a_link_out_of_the_folder(tmp_path):
    outside = tmp_path / "outside.onnx"
    linear_model(outside, seed=0)
    folder = tmp_path / "ladder"
    folder.mkdir()
    make_ladder(folder, [rung("fast", 0.8, 1.0)])
    (folder / "link.onnx").symlink_to(outside)
    edit_manifest(folder, lambda d: d["rungs"][0].update(file="link.onnx", bytes=outside.stat().st_size))
    with pytest.raises(UserError, match=r"rungs\[0\]\.file 'link.onnx' leads out"):
        load_manifest(folder)
