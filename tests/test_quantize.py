"""``pscompress quantize``: int8 pSConv files on the trained sample and real Fashion-MNIST images.

Oracles: onnxruntime's own quantize_static applied to the PyTorch dense export of the same
checkpoint (what a user would do instead), the fp32 pSConv export's accuracy and weights, and
onnxruntime's portable run of the int8 file.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from pscompress.board.data import load_dataset
from pscompress.board.evaluate import evaluate_file
from pscompress.runtime import create_session, native_available
from pscompress.workstation.checkpoint import load_model
from pscompress.workstation.quantize import CALIBRATION_BATCH, quantize_file

SAMPLE = "samples/fashion_resnet20_4of9.pt"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """fp32 pSConv export, fp32 dense export and the int8 pSConv file of the trained sample."""
    from pscompress.exporters.onnx_export import export_onnx

    root = tmp_path_factory.mktemp("quantize")
    paths = {name: root / f"{name}.onnx" for name in ("fp32", "dense", "int8")}
    export_onnx(load_model(SAMPLE), paths["fp32"])
    export_onnx(load_model(SAMPLE), paths["dense"], dense=True)
    summary = quantize_file(paths["fp32"], "fashion-mnist", paths["int8"], calibration=100, progress=False)
    return paths, summary


@pytest.fixture(scope="module")
def test_images():
    return load_dataset("fashion-mnist", "test").subset(1000)


def nodes(path, op_type):
    return [n for n in onnx.load(path).graph.node if n.op_type == op_type]


def test_every_psconv_layer_becomes_one_qlinear_psconv_node(files):
    paths, summary = files
    fp32, int8 = nodes(paths["fp32"], "PSConv") + nodes(paths["fp32"], "PSConvAdd"), nodes(paths["int8"], "QLinearPSConv")
    assert summary.int8_layers == len(int8) == len(fp32) == 18 and summary.dense_layers == []
    assert {n.name for n in int8} == {n.name for n in fp32}
    assert not nodes(paths["int8"], "PSConv") and not nodes(paths["int8"], "PSConvAdd")
    assert len(nodes(paths["int8"], "Conv")) == 3  # the stem and two 1x1 shortcuts stay dense QDQ


def test_packed_int8_weights_are_the_fp32_kept_weights_rounded(files):
    """Same length as the fp32 packing (masked weights exactly zero, so dropped), and each weight
    within half a quantization step of its fp32 value."""
    paths, _ = files
    fp32 = onnx.load(paths["fp32"])
    int8 = onnx.load(paths["int8"])
    w32 = {t.name: numpy_helper.to_array(t) for t in fp32.graph.initializer}
    w8 = {t.name: numpy_helper.to_array(t) for t in int8.graph.initializer}
    by_name = {n.name: n for n in fp32.graph.node}
    for node in nodes(paths["int8"], "QLinearPSConv"):
        source = by_name[node.name]
        assert {a.name: a for a in node.attribute}["patterns"] == {a.name: a for a in source.attribute}["patterns"]
        q, scale, w = w8[node.input[3]], w8[node.input[4]], w32[source.input[1]]
        assert q.dtype == np.int8 and q.shape == w.shape
        m = scale.size
        per_output = np.repeat(scale, w.size // m)  # the same number of kept weights per output here
        assert np.all(np.abs(q * per_output - w) <= per_output / 2 * (1 + 1e-5))


def test_int8_file_agrees_with_onnxruntime_quantizing_the_dense_export(files, test_images, tmp_path):
    """What a user would get from onnxruntime alone, on the same calibration images: the same
    predictions, logits within a few steps of the output's quantization."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    paths, _ = files
    train = load_dataset("fashion-mnist", "train")
    indices = np.sort(np.random.default_rng(0).choice(len(train), size=100, replace=False))
    batches = iter([{"input": x} for x, _ in train.batches(CALIBRATION_BATCH, indices)])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(batches, None)

    oracle = tmp_path / "dense-int8.onnx"
    quantize_static(str(paths["dense"]), str(oracle), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    ours, theirs = create_session(paths["int8"], native=False), create_session(oracle, native=False)
    step = numpy_helper.to_array(next(t for t in onnx.load(oracle).graph.initializer
                                      if t.name == nodes(oracle, "DequantizeLinear")[-1].input[1]))
    got = np.concatenate([ours.run(None, {"input": x})[0] for x, _ in test_images.batches(250)])
    want = np.concatenate([theirs.run(None, {"input": x})[0] for x, _ in test_images.batches(250)])
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.99
    assert np.median(np.abs(got - want)) <= float(step)
    assert np.max(np.abs(got - want)) <= 8 * float(step) + 0.05 * np.abs(want).max()


def test_int8_accuracy_within_half_a_point_of_fp32_on_the_test_set(files):
    paths, _ = files
    data = load_dataset("fashion-mnist", "test")
    fp32 = evaluate_file(paths["fp32"], data, progress=False).top1
    int8 = evaluate_file(paths["int8"], data, progress=False).top1
    assert abs(int8 - fp32) <= 0.005, (fp32, int8)


def test_int8_file_is_at_most_015x_the_fp32_dense_export(files):
    paths, summary = files
    assert summary.bytes == paths["int8"].stat().st_size
    assert summary.bytes <= 0.15 * paths["dense"].stat().st_size


@pytest.mark.skipif(not native_available(), reason="the native kernel library is not built")
def test_native_library_session_runs_the_int8_file_as_the_portable_one(files, test_images):
    paths, _ = files
    native, portable = create_session(paths["int8"], native=True), create_session(paths["int8"], native=False)
    x = test_images.x[:200]
    got, want = native.run(None, {"input": x})[0], portable.run(None, {"input": x})[0]
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.99
    assert np.max(np.abs(got - want)) <= 0.05 * np.abs(want).max()


def test_metadata_and_info(files, run_cli):
    paths, _ = files
    result = run_cli("info", paths["int8"])
    assert result.code == 0
    assert "quantized:   int8 QDQ" in result.out and "100 images of fashion-mnist" in result.out
    assert "ai.pscompress.QLinearPSConv" in result.out and "accuracy:" not in result.out  # fp32's does not carry over


def test_cli_writes_the_file_and_says_what_it_did(files, run_cli, tmp_path):
    paths, _ = files
    out = tmp_path / "m-int8.onnx"
    result = run_cli("quantize", paths["fp32"], "--data", "fashion-mnist", "--calibration", "50", "-o", out)
    assert result.code == 0, result.err
    assert "18 pSConv layer(s) as QLinearPSConv" in result.out and "calibrated on 50 train images" in result.out
    assert out.is_file()


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"),
    ("suffix", "takes an exported .onnx model"),
    ("int8", "already quantized"),
    ("data", "unknown data set"),
    ("output", "must end in .onnx"),
])
def test_cli_user_mistakes_are_one_line_and_leave_no_file(files, run_cli, tmp_path, case, message):
    paths, _ = files
    model = {"missing": tmp_path / "none.onnx", "suffix": SAMPLE, "int8": paths["int8"]}.get(case, paths["fp32"])
    out = tmp_path / ("m.pt" if case == "output" else "m-int8.onnx")
    result = run_cli("quantize", model, "--data", "nowhere" if case == "data" else "fashion-mnist", "-o", out)
    assert result.code == 2, result
    assert message in result.err and len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


def test_tune_moves_int8_nodes_to_the_dense_domain_and_computes_the_same(files, test_images, tmp_path):
    """An int8 file tunes like an fp32 one: the nodes the dense kernel wins move to
    ai.pscompress.dense (QLinearConv through the copied function), the packed weights stay."""
    from pscompress.board.onnx_reader import DENSE_DOMAIN, is_psconv, read_onnx
    from pscompress.board.tune import tune_model

    paths, _ = files
    dense_wins = {"layers.0.conv1", "layers.6.conv1"}

    def measure(label, runs):
        for run in runs.values():
            run()
        if label == "model":
            return {name: 1.0 if name == "per-node" else 2.0 for name in runs}
        return {"native": 2.0, "dense": 1.0} if label in dense_wins else {"native": 1.0, "dense": 2.0}

    data, plan = tune_model(paths["int8"], measure=measure, progress=False)
    tuned = tmp_path / "tuned.onnx"
    tuned.write_bytes(data)
    moved = {n.name for n in read_onnx(tuned).nodes if is_psconv(n) and n.domain == DENSE_DOMAIN}
    assert moved == dense_wins and plan["plan"] == "per-node"
    assert {n["op"] for n in plan["nodes"]} == {"QLinearPSConv"}
    x = test_images.x[:50]
    for native in (True, False):
        got = create_session(tuned, native=native).run(None, {"input": x})[0]
        want = create_session(paths["int8"], native=native).run(None, {"input": x})[0]
        assert np.max(np.abs(got - want)) <= 0.05 * np.abs(want).max()


def _pooled_qdq(scale: float, zero: int) -> onnx.ModelProto:
    """X -> Q -> DQ -> MaxPool -> Q -> DQ -> Y: a pool as quantize_static leaves it between two convs."""
    from onnx import TensorProto, helper

    params = [numpy_helper.from_array(np.array(scale, np.float32), "s"),
              numpy_helper.from_array(np.array(zero, np.uint8), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["X", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xf"]),
             helper.make_node("MaxPool", ["xf"], ["pf"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                              name="pool"),
             helper.make_node("QuantizeLinear", ["pf", "s", "z"], ["pq"]),
             helper.make_node("DequantizeLinear", ["pq", "s", "z"], ["Y"])]
    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 8, 17, 17])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 8, 9, 9])], params)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("scale, zero", [(0.05, 3), (0.0173, 0), (1.0 / 255, 255), (3.0e-6, 128)])
def test_max_pools_stay_float_and_exact(scale, zero, tmp_path):
    """onnxruntime's uint8 NCHW MaxPool is a scalar loop; the rewrite keeps the float pool and
    must give the uint8 pool's result bit for bit."""
    import onnxruntime as ort

    from pscompress.workstation.quantize import _keep_max_pools_float

    model = _pooled_qdq(scale, zero)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    _keep_max_pools_float(rewritten)
    x = (np.random.default_rng(1).standard_normal((2, 8, 17, 17)) * 200 * scale).astype(np.float32)
    outputs, pool_inputs = [], []
    for index, m in enumerate((model, rewritten)):
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"{index}.onnx")
        session = ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {"X": x})[0])
        optimized = onnx.load(options.optimized_model_filepath)
        producers = {out: n.op_type for n in optimized.graph.node for out in n.output}
        pool_inputs.append([producers.get(n.input[0]) for n in optimized.graph.node if n.op_type == "MaxPool"])
    assert pool_inputs == [["QuantizeLinear"], ["DequantizeLinear"]]  # uint8 pool before, float pool after
    np.testing.assert_array_equal(outputs[1], outputs[0])
