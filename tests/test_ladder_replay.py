"""benchmarks/ladder_replay.py: the request replay's accounting, its interleaving and its background load."""
from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import ladder_replay  # noqa: E402
from ladder_replay import (BURST_S, Request, burst_schedule, check_targets, replay, run_condition,  # noqa: E402
                           summarize)
from test_ladder_predictor import make_ladder, rung  # noqa: E402

from pscompress.board.data import load_dataset  # noqa: E402
from pscompress.board.onnx_predictor import OnnxPredictor  # noqa: E402


class FakeClock:
    """Seconds that only pass when a fake policy says its call took them."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_policy(clock: FakeClock, latencies_ms: list[float], answers: list[int], rung_name: str, calls: list):
    """A policy whose i-th call takes latencies_ms[i] and answers class answers[i]; it logs each call."""
    def serve(x: np.ndarray, deadline_ms: float):
        i = sum(1 for c in calls if c[0] == rung_name)
        calls.append((rung_name, int(x[0, 0, 0, 0]), deadline_ms))
        clock.now += latencies_ms[i] / 1e3
        logits = np.zeros((1, 10), np.float32)
        logits[0, answers[i]] = 1.0
        return logits, rung_name
    return serve


def requests(deadlines_ms: list[float], labels: list[int]) -> list[Request]:
    """Request i's image holds the value i, so a policy can tell which request it was given."""
    return [Request(np.full((1, 1, 2, 2), i, np.float32), label, d)
            for i, (d, label) in enumerate(zip(deadlines_ms, labels))]


def test_miss_accounting_counts_only_latencies_over_the_deadline():
    clock, calls = FakeClock(), []
    policies = {"a": fake_policy(clock, [1.0, 2.5, 0.5, 3.0], [0] * 4, "a", calls)}
    served = replay(requests([1.0, 2.0, 1.0, 4.0], [0] * 4), policies, clock)
    assert [s.latency_ms for s in served] == pytest.approx([1.0, 2.5, 0.5, 3.0])
    assert [s.met for s in served] == [True, False, True, True]  # a call that takes exactly the deadline meets it
    summary = summarize(served, "a")
    assert summary["miss_pct"] == pytest.approx(25.0)
    assert summary["mean_ms"] == pytest.approx(1.75)
    assert summary["p50_ms"] == pytest.approx(1.75)
    assert summary["rungs_pct"] == {"a": 100.0}


def test_accuracy_counts_every_answer_and_on_time_correct_only_the_met_ones():
    clock, calls = FakeClock(), []
    labels = [3, 1, 4, 1, 5]
    answers = [3, 1, 0, 1, 5]  # wrong on request 2
    latencies = [0.5, 5.0, 0.5, 0.5, 5.0]  # late on requests 1 and 4, both correct
    served = replay(requests([1.0] * 5, labels), {"a": fake_policy(clock, latencies, answers, "a", calls)}, clock)
    assert [s.correct for s in served] == [True, True, False, True, True]
    summary = summarize(served, "a")
    assert summary["accuracy_pct"] == pytest.approx(80.0)
    assert summary["miss_pct"] == pytest.approx(40.0)
    assert summary["on_time_correct_pct"] == pytest.approx(40.0)


def test_every_policy_serves_every_request_in_rotating_order_with_its_deadline():
    clock, calls = FakeClock(), []
    policies = {name: fake_policy(clock, [1.0] * 4, [0] * 4, name, calls) for name in ("a", "b", "c")}
    replay(requests([10.0, 20.0, 30.0, 40.0], [0] * 4), policies, clock)
    assert [c[0] for c in calls] == list("abc" "bca" "cab" "abc")
    assert [c[1] for c in calls] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]  # request by request
    assert [c[2] for c in calls] == [10.0] * 3 + [20.0] * 3 + [30.0] * 3 + [40.0] * 3


def test_a_policy_is_timed_alone_even_when_interleaved():
    clock, calls = FakeClock(), []
    policies = {"slow": fake_policy(clock, [9.0] * 3, [0] * 3, "slow", calls),
                "fast": fake_policy(clock, [1.0] * 3, [0] * 3, "fast", calls)}
    served = replay(requests([5.0] * 3, [0] * 3), policies, clock)
    assert summarize(served, "slow")["miss_pct"] == 100.0
    assert summarize(served, "fast")["miss_pct"] == 0.0
    assert summarize(served, "fast")["p99_ms"] == pytest.approx(1.0)


def test_the_rungs_a_policy_ran_are_counted():
    clock = FakeClock()
    names = iter(["x", "y", "y", "y"])
    policy = {"ladder": lambda x, d: (np.zeros((1, 10), np.float32), next(names))}
    served = replay(requests([1.0] * 4, [0] * 4), policy, clock)
    assert summarize(served, "ladder")["rungs_pct"] == {"y": 75.0, "x": 25.0}


def test_targets():
    def result(miss, accuracy):
        return {"miss_pct": miss, "accuracy_pct": accuracy}
    assert check_targets({"always-dense": result(30.0, 91.0), "always-fastest": result(2.0, 89.0),
                          "ladder": result(3.0, 90.5)}) == {"dense_misses": True, "ladder_miss_near_fastest": True,
                                                            "ladder_accuracy_near_dense": True}
    assert check_targets({"always-dense": result(29.9, 91.0), "always-fastest": result(2.0, 89.0),
                          "ladder": result(3.1, 90.4)}) == {"dense_misses": False, "ladder_miss_near_fastest": False,
                                                            "ladder_accuracy_near_dense": False}


def test_burst_schedule_is_shared_by_seed_and_alternates_within_bounds():
    first, second = burst_schedule(100.0, seed=7), burst_schedule(100.0, seed=7)
    bursts = [next(first) for _ in range(50)]
    assert bursts == [next(second) for _ in range(50)]  # every load process derives the same bursts
    edges = [100.0] + [t for burst in bursts for t in burst]
    lengths = np.diff(edges)
    assert (lengths >= BURST_S[0]).all() and (lengths <= BURST_S[1]).all()
    assert bursts != [next(burst_schedule(100.0, seed=8)) for _ in range(50)]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("bursty_seed", [None, 3])
def test_load_processes_spin_during_the_run_and_are_gone_after_it(bursty_seed):
    seen: list[int] = []

    def policy(x, deadline_ms):
        if not seen:
            seen.extend(p.pid for p in multiprocessing.active_children())
            time.sleep(0.5)
        return np.zeros((1, 10), np.float32), "r"

    served = run_condition(requests([1.0] * 3, [0] * 3), {"p": policy}, load=2, bursty_seed=bursty_seed)
    assert len(served) == 3
    assert len(seen) == 2
    assert all(gone(pid) for pid in seen)
    assert multiprocessing.active_children() == []


def test_load_processes_burn_cpu():
    with ladder_replay.background_load(1) as procs:
        time.sleep(0.5)
        assert cpu_seconds(procs[0].pid) > 0.05


def test_load_processes_are_gone_after_a_failed_run():
    seen: list[int] = []

    def failing(x, deadline_ms):
        seen.extend(p.pid for p in multiprocessing.active_children())
        raise RuntimeError("the model broke")

    with pytest.raises(RuntimeError, match="the model broke"):
        run_condition(requests([1.0], [0]), {"p": failing}, load=2, bursty_seed=None)
    assert len(seen) == 2
    assert all(gone(pid) for pid in seen)
    assert multiprocessing.active_children() == []


@pytest.fixture
def data(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "data.npz"
    np.savez(path, x_train=rng.integers(0, 256, (8, 28, 28), dtype=np.uint8), y_train=rng.integers(0, 10, 8),
             x_test=rng.integers(0, 256, (40, 28, 28), dtype=np.uint8), y_test=rng.integers(0, 10, 40))
    return path


def accuracy_pct(model: Path, data: Path, count: int) -> float:
    """The model's accuracy on the first ``count`` test images in the replay's seeded order (seed 0)."""
    dataset = load_dataset(str(data), "test")
    order = np.random.default_rng(0).permutation(len(dataset))[:count]
    predictions = OnnxPredictor(model).predict(dataset.images[order]).argmax(axis=1)
    return 100.0 * float((predictions == dataset.y[order]).mean())


def test_the_command_replays_a_real_ladder_and_writes_its_json(tmp_path, data, capsys):
    folder = tmp_path / "ladder"
    folder.mkdir()
    make_ladder(folder, [rung("fast", 0.80, 1.0), rung("mid", 0.85, 2.0), rung("slow", 0.90, 4.0)])
    out = tmp_path / "replay.json"
    assert ladder_replay.main([str(folder), "--data", str(data), "--requests", "30", "--calibration", "10",
                               "--load", "1", "--bursty", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "kernel path" in printed and "onnxruntime" in printed and "issue 15 targets" in printed
    document = json.loads(out.read_text())
    assert list(document["results"]) == ["idle", "load x1", "bursty x1"]
    for by_policy in document["results"].values():
        assert list(by_policy) == ["always-dense", "always-fastest", "ladder"]
        assert by_policy["always-dense"]["rungs_pct"] == {"slow": 100.0}
        assert by_policy["always-fastest"]["rungs_pct"] == {"fast": 100.0}
        assert all(r["requests"] == 30 for r in by_policy.values())
        for policy, model in (("always-dense", "slow"), ("always-fastest", "fast")):
            assert by_policy[policy]["accuracy_pct"] == pytest.approx(accuracy_pct(folder / f"{model}.onnx", data, 30))
    calibrated = document["calibration"]["always_dense_p50_ms"]
    assert document["deadlines_ms"] == pytest.approx({"mean": calibrated, "low": calibrated * 0.75,
                                                      "high": calibrated * 1.25})
    assert [r["name"] for r in document["ladder"]["rungs"]] == ["fast", "mid", "slow"]
    assert document["overhead"]["total_us"] > 0
    assert set(document["targets"]) == {"idle", "load x1", "bursty x1", "overhead"}
    assert multiprocessing.active_children() == []


def test_the_command_refuses_images_the_ladder_does_not_take(tmp_path, capsys):
    folder = tmp_path / "ladder"
    folder.mkdir()
    make_ladder(folder, [rung("only", 0.9, 1.0)])
    path = tmp_path / "wide.npz"
    np.savez(path, x=np.zeros((4, 32, 32), np.uint8), y=np.zeros(4, np.int64))
    assert ladder_replay.main([str(folder), "--data", str(path), "--load", "0"]) == 2
    assert "the ladder takes [1, 28, 28]" in capsys.readouterr().err
