"""``pscompress tune`` against independent oracles: PyTorch, the original file on both paths,
the onnx package's view of the rewritten file and onnxruntime's profile of what ran."""
from __future__ import annotations

import json
import shutil
import time

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import hostile_inputs
from pscompress import runtime
from pscompress.board import tune as tune_module
from pscompress.board.onnx_predictor import OnnxPredictor
from pscompress.board.onnx_reader import DENSE_DOMAIN, PSCONV_DOMAIN, is_psconv, read_onnx
from pscompress.board.tune import Timer, tune_model
from pscompress.core.errors import UserError
from pscompress.core.metadata import decode_onnx_metadata
from pscompress.exporters.pipeline import relative_difference

# A PSConv, a PSConvAdd beside a 1x1 shortcut, a stride-2 PSConv.
FORCED = {"layers.0.conv1", "layers.3.conv2", "layers.6.conv1"}
QUICK = Timer(min_rounds=2, min_seconds=0, warmup=1)


def forced(dense_nodes: set[str], model: dict[str, float] | None = None):
    """A measure in which the dense Conv wins exactly at ``dense_nodes``, and the whole model takes
    ``model`` (default: the per-node plan fastest). Every variant still runs once."""
    def measure(label, runs):
        for run in runs.values():
            run()
        if label == "model":
            return {name: (model or {"per-node": 1.0}).get(name, 2.0) for name in runs}
        return {"native": 2.0, "dense": 1.0} if label in dense_nodes else {"native": 1.0, "dense": 2.0}
    return measure


@pytest.fixture
def model(tmp_path, exported):
    """A private copy of the exported ResNet-20 (4-of-9): tune may rewrite it."""
    path = tmp_path / "model.onnx"
    shutil.copy(exported("resnet20")[0], path)
    return path


def write_tuned(path, measure, **kwargs):
    data, plan = tune_model(path, measure=measure, progress=False, **kwargs)
    out = path.with_name("tuned.onnx")
    out.write_bytes(data)
    return out, plan


def domains(path) -> dict[str, str]:
    return {node.name: node.domain for node in read_onnx(path).nodes if is_psconv(node)}


def images(n: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 28, 28), dtype=np.float32)


def test_forced_plan_moves_exactly_those_nodes_and_keeps_the_weights(model):
    tuned, plan = write_tuned(model, forced(FORCED))
    moved = domains(tuned)
    assert {name for name, domain in moved.items() if domain == DENSE_DOMAIN} == FORCED
    assert {domain for name, domain in moved.items() if name not in FORCED} == {PSCONV_DOMAIN}
    assert plan["plan"] == "per-node" and plan["fallback"] is False
    assert {n["name"] for n in plan["nodes"] if n["choice"] == "dense"} == FORCED

    before, after = onnx.load(model), onnx.load(tuned)
    onnx.checker.check_model(after)
    assert [t.SerializeToString() for t in after.graph.initializer] == [t.SerializeToString() for t in before.graph.initializer]
    assert {o.domain: o.version for o in after.opset_import}[DENSE_DOMAIN] == 1
    functions = {(f.domain, f.name): f for f in after.functions}
    for op in ("PSConv", "PSConvAdd"):  # the same bodies, only the domain differs
        copy = onnx.FunctionProto()
        copy.CopyFrom(functions[DENSE_DOMAIN, op])
        copy.domain = PSCONV_DOMAIN
        assert copy == functions[PSCONV_DOMAIN, op]


def test_tuned_outputs_equal_the_original_on_both_paths(model, exported):
    tuned, _ = write_tuned(model, forced(FORCED))
    x = images()
    with torch.no_grad():
        expected = exported("resnet20")[2].module(torch.from_numpy(x)).numpy()
    for native in (True, False):  # False: a session without the library, the portable functions only
        got = OnnxPredictor(tuned, threads=1, native=native).predict(x)
        original = OnnxPredictor(model, threads=1, native=native).predict(x)
        assert relative_difference(got, expected) <= 1e-4
        assert relative_difference(got, original) <= 1e-5


def test_a_native_session_runs_the_dense_nodes_as_conv(model, tmp_path):
    tuned, _ = write_tuned(model, forced(FORCED))
    options = runtime.session_options(threads=1, native=True)
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "profile")
    session = onnxruntime.InferenceSession(str(tuned), options, providers=["CPUExecutionProvider"])
    session.run(None, {"input": images(1)})
    events = json.loads(open(session.end_profiling()).read())
    ran_native = {e["name"].removesuffix("_kernel_time") for e in events
                  if e.get("cat") == "Node" and e["args"].get("op_name") in ("PSConv", "PSConvAdd")}
    assert ran_native == set(domains(model)) - FORCED


def test_real_timings_give_a_plan_that_computes_the_same(model):
    data, plan = tune_model(model, batch=2, threads=1, measure=QUICK, progress=False)
    x = images(3, seed=1)
    for native in (True, False):
        want = runtime.create_session(model, threads=1, native=native).run(None, {"input": x})[0]
        got = runtime.create_session(data, threads=1, native=native).run(None, {"input": x})[0]
        assert relative_difference(got, want) <= 1e-5
    assert plan["batch"] == 2 and plan["threads"] == 1 and plan["clock"] == "wall clock"
    assert plan["isa"] == runtime.cpu_path() and plan["onnxruntime"] and plan["cpu"] and plan["date"]
    assert len(plan["nodes"]) == 18 and all(n["native_ms"] > 0 and n["dense_ms"] > 0 for n in plan["nodes"])
    assert {"native", "dense"} <= set(plan["model_ms"])
    if plan["plan"] == "per-node":
        assert all((n["choice"] == "dense") == (n["dense_ms"] < n["native_ms"]) for n in plan["nodes"])


@pytest.mark.parametrize("model_ms, written, dense_nodes", [
    ({"native": 1.0, "dense": 0.5, "per-node": 0.9}, "dense", 18),    # per-node slower than dense: every node dense
    ({"native": 0.5, "dense": 1.0, "per-node": 0.9}, "native", 0),    # slower than native: every node native
    ({"native": 1.2, "dense": 1.0, "per-node": 1.01}, "per-node", 3),  # within noise of the fastest: kept
])
def test_the_whole_model_guard_writes_the_fastest_variant(model, model_ms, written, dense_nodes):
    tuned, plan = write_tuned(model, forced(FORCED, model_ms))
    assert plan["plan"] == written and plan["fallback"] is (written != "per-node")
    assert sum(domain == DENSE_DOMAIN for domain in domains(tuned).values()) == dense_nodes
    assert sum(n["choice"] == "dense" for n in plan["nodes"]) == dense_nodes
    assert plan["model_ms"] == pytest.approx({name: ms * 1e3 for name, ms in model_ms.items()})


def test_the_plan_is_in_the_metadata_and_info_shows_it(model, run_cli):
    tuned, plan = write_tuned(model, forced(FORCED))
    meta = decode_onnx_metadata(read_onnx(tuned).metadata, str(tuned))
    assert meta["tune"] == plan and meta["pattern"] == "4of9"  # the export's fields stay
    code, out, _ = run_cli("info", tuned)
    assert code == 0
    assert "tuned:       per-node plan, 3 of 18 PSConv nodes dense" in out
    assert f"on {plan['cpu']} ({plan['isa']}), onnxruntime {plan['onnxruntime']}" in out
    assert "whole model: native 2000.000 ms, dense 2000.000 ms, per-node 1000.000 ms" in out
    assert "layers.3.conv2       ai.pscompress.dense.PSConvAdd+add+relu" in out


def test_tuning_a_tuned_file_replaces_its_plan(model):
    tuned, _ = write_tuned(model, forced(FORCED))
    again, _ = write_tuned(tuned, forced({"layers.1.conv1"}))
    assert {name for name, domain in domains(again).items() if domain == DENSE_DOMAIN} == {"layers.1.conv1"}
    functions = [(f.domain, f.name) for f in onnx.load(again).functions]
    assert len(functions) == len(set(functions)) == len(onnx.load(model).functions) + 2  # the dense copies once
    assert sum(p.key == "pscompress.tune" for p in onnx.load(again).metadata_props) == 1


def test_a_psconv_on_the_graph_input_and_an_odd_plan_record(tmp_path, run_cli):
    path = small()(tmp_path / "small.onnx")
    tuned, plan = write_tuned(path, forced({"conv"}), batch=3)
    assert domains(tuned) == {"conv": DENSE_DOMAIN} and plan["plan"] == "dense"
    x = np.random.default_rng(2).random((3, 1, 8, 8), dtype=np.float32)
    for native in (True, False):
        want, got = (runtime.create_session(p, native=native).run(None, {"input": x})[0] for p in (path, tuned))
        assert relative_difference(got, want) <= 1e-5
    # info shows whatever a tune record holds without failing on it
    small(metadata={"input_shape": [1, 8, 8], "tune": {"plan": "dense", "nodes": 3, "model_ms": [1]}})(path)
    code, out, err = run_cli("info", path)
    assert code == 0, err
    assert "tuned:       dense plan, 0 of 0 PSConv nodes dense" in out and "whole model: ?" in out


def test_cli_writes_beside_the_model_and_run_follows_the_plan(model, tmp_path, run_cli, monkeypatch):
    monkeypatch.setattr(tune_module, "default_timer", lambda threads: QUICK)
    code, out, err = run_cli("tune", model, "--batch", "2", "--threads", "1")
    assert code == 0, err
    tuned = tmp_path / "model-tuned.onnx"
    assert f"wrote {tuned}" in out and "\nplan: " in out and "whole model: native " in out
    assert "pscompress.tune" not in read_onnx(model).metadata  # the input is never rewritten by default
    np.save(tmp_path / "x.npy", images(2))
    outputs = [run_cli("run", path, "-i", tmp_path / "x.npy") for path in (model, tuned)]
    assert [o[0] for o in outputs] == [0, 0]
    assert outputs[0][1].replace("model.onnx", "") == outputs[1][1].replace("model-tuned.onnx", "")

    rng = np.random.default_rng(3)
    np.savez(tmp_path / "data.npz", x=rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), y=np.arange(20) % 10)
    results = [run_cli("eval", path, "--data", tmp_path / "data.npz", "--json", "-") for path in (model, tuned)]
    assert [r.code for r in results] == [0, 0]
    original, followed = (json.loads(r.out) for r in results)
    assert followed["predictions"] == original["predictions"] and followed["top1"] == original["top1"]

    code, _, err = run_cli("tune", model, "-o", model, "--threads", "1")  # in place, asked for
    assert code == 0, err
    assert "pscompress.tune" in read_onnx(model).metadata


def no_psconv_model(path, exported):
    from onnx import helper

    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["y"])], "dense",
                              [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["n", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 1, 8, 8])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8), path)
    return path


def small(**kwargs):
    """A writer of tests/hostile_inputs.py's one-PSConv model (PSConv on the graph input), built with ``kwargs``."""
    def write(path, exported=None):
        onnx.save(hostile_inputs.onnx_model(**kwargs), path)
        return path
    return write


def hostile(name):
    return small(**hostile_inputs.ONNX_MODELS[name])


def without_functions(path, exported):
    model = hostile_inputs.onnx_model()
    del model.functions[:]
    onnx.save(model, path)


def resnet20(path, exported):
    shutil.copy(exported("resnet20")[0], path)


@pytest.mark.parametrize("write, args, words", [
    (None, ["tune", "{dir}/missing.onnx"], "no such file"),
    (None, ["tune", "{dir}/model.pt"], "tune takes an exported .onnx model"),
    (no_psconv_model, ["tune", "{model}"], "has no PSConv node"),
    (hostile("onnx-group-0"), ["tune", "{model}"], "group"),
    (hostile("onnx-meta-input-huge"), ["tune", "{model}"], "input_shape"),
    (hostile("onnx-graph-input-huge"), ["tune", "{model}"], "graph's input"),
    (hostile("onnx-run-rejected"), ["tune", "{model}"], "onnxruntime cannot"),
    (hostile("onnx-meta-classes-5"), ["tune", "{model}"], "classes"),
    (small(input_dims=(1, 1, 8, 8)), ["tune", "{model}", "--batch", "2"], "fixed batch of 1: --batch must be 1"),
    (without_functions, ["tune", "{model}"], "no portable PSConv function to run densely"),
    (resnet20, ["tune", "{model}", "--batch", "10000000"], "--batch 10000000 makes one input"),
    (resnet20, ["tune", "{model}", "-o", "{dir}/out.txt"], "--output out.txt must end in .onnx"),
    (resnet20, ["tune", "{model}", "-o", "{dir}/no/out.onnx"], "does not exist"),
])
def test_mistakes_are_one_line_and_exit_2(tmp_path, run_cli, exported, write, args, words):
    path = tmp_path / "m.onnx"
    if write:
        write(path, exported)
    argv = [a.format(dir=tmp_path, model=path) for a in args]
    code, out, err = run_cli(*argv)
    assert code == 2, err
    assert err.count("\n") == 1 and words in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == (["m.onnx"] if write else [])  # nothing left behind


def test_a_bad_batch_is_a_usage_error(model, run_cli):
    code, _, err = run_cli("tune", model, "--batch", "0")
    assert code == 2 and "Invalid value for '--batch'" in err


def test_without_the_native_library_tune_says_it_cannot_compare(model, tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("PSCOMPRESS_LIBRARY", str(tmp_path / "absent.so"))
    code, _, err = run_cli("tune", model)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("Error: tune compares the native PSConv kernels with the dense Conv, but the native")
    with pytest.raises(UserError, match="not built"):
        tune_model(model, measure=forced(set()))


@pytest.mark.parametrize("confirm, written", [
    ({"per-node": 1.5, "dense": 1.0}, "dense"),     # the win did not hold on fresh rounds: every node dense
    ({"per-node": 1.01, "dense": 1.0}, "per-node"),  # within noise of dense: the choice stands
])
def test_leaving_every_node_dense_needs_a_second_timing_that_agrees(model, confirm, written):
    calls = []

    def measure(label, runs):
        for run in runs.values():
            run()
        if label != "model":
            return {"native": 2.0, "dense": 1.0} if label in FORCED else {"native": 1.0, "dense": 2.0}
        calls.append(set(runs))
        return {"native": 2.0, "dense": 2.0, "per-node": 1.0} if len(calls) == 1 else confirm

    tuned, plan = write_tuned(model, measure)
    assert calls == [{"native", "dense", "per-node"}, {"per-node", "dense"}]
    assert plan["plan"] == written and plan["fallback"] is (written != "per-node")
    assert plan["confirm_ms"] == pytest.approx({name: ms * 1e3 for name, ms in confirm.items()})
    assert sum(domain == DENSE_DOMAIN for domain in domains(tuned).values()) == (18 if written == "dense" else 3)


def test_wall_clock_timings_take_the_lower_quartile_and_cpu_times_the_median():
    times = [1.0, 1.1, 1.2, 5.0, 9.0]
    assert Timer(clock=time.perf_counter).statistic(times) == pytest.approx(1.1)
    assert Timer(clock=time.thread_time).statistic(times) == pytest.approx(1.2)
