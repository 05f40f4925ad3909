"""``pscompress quantize``: post-training static int8 quantization of an exported ONNX model.

The packed pSConv file is rewritten as its dense masked equivalent (every PSConv node a plain
Conv with Add and Relu/Clip), which onnxruntime's own ``quantize_static`` quantizes in QDQ form:
per-output-channel symmetric s8 weights, u8 activations, int32 bias, calibrated on real images.
That dense QDQ model is exactly what a user gets from onnxruntime alone. Each Conv that came from
a PSConv node (DequantizeLinear -> Conv -> QuantizeLinear) is then replaced by one QLinearPSConv
node with the same quantization parameters and the kept weights packed; symmetric quantization
maps the masked zeros to exactly zero, so nothing is lost. The rest of the graph stays QDQ, which
onnxruntime fuses into its own QLinear kernels. How and why: docs/quantize.md.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx
from onnx import helper, numpy_helper

from pscompress.core.errors import UserError
from pscompress.core.metadata import decode_onnx_metadata, encode_onnx_metadata
from pscompress.core.patterns import PatternSet
from pscompress.exporters import psconv_onnx, qlinear_psconv_onnx

# The attributes QLinearPSConv shares with PSConv (it has no clamp: the output range is the activation).
_SHARED_ATTRIBUTES = ("kernel_shape", "strides", "pads", "dilations", "group", "in_channels", "out_channels",
                      "patterns", "shift")
_PSCONV_DOMAINS = (psconv_onnx.DOMAIN, "ai.pscompress.dense")
# quantize_static leaves only these between a Conv and the QuantizeLinear of its output.
_QDQ_FORMAT = {"format": "QDQ", "activations": "uint8, per tensor", "weights": "int8, per output channel, symmetric",
               "bias": "int32", "calibration_method": "MinMax"}


@dataclass
class QuantizeSummary:
    path: str
    bytes: int
    fp32_bytes: int
    int8_layers: int  # QLinearPSConv nodes
    dense_layers: list[str] = field(default_factory=list)  # PSConv nodes left as dense QDQ, with why
    calibration_images: int = 0


def quantize_model(model: onnx.ModelProto, calibration: Iterator[np.ndarray],
                   progress: Callable[[int], None] | None = None) -> tuple[onnx.ModelProto, onnx.ModelProto, list[str]]:
    """``model`` (an exported fp32 ONNX file, pSConv or dense) quantized on the ``calibration`` batches
    (float32 [N, C, H, W], preprocessed as the graph takes them).

    Returns (the int8 pSConv model, the int8 dense QDQ model onnxruntime alone would give, the
    PSConv nodes left dense with the reason for each).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    psconv_nodes = {n.name: n for n in model.graph.node if n.domain in _PSCONV_DOMAINS}
    dense = _dense_equivalent(model)
    input_name = dense.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.seen = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(calibration, None)
            if batch is None:
                return None
            self.seen += len(batch)
            if progress:
                progress(len(batch))
            return {input_name: batch}

    reader = Reader()
    with tempfile.TemporaryDirectory(prefix="pscompress-quantize-") as tmp:
        source, target = Path(tmp, "dense.onnx"), Path(tmp, "dense-int8.onnx")
        onnx.save(dense, source)
        logging.getLogger().setLevel(logging.ERROR)  # quantize_static's advice to pre-process: done here
        quantize_static(str(source), str(target), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
        qdq = onnx.load(target)
    if reader.seen == 0:
        raise UserError("no calibration images: the data set is empty")
    packed = onnx.ModelProto()
    packed.CopyFrom(qdq)
    left_dense = _pack(packed, psconv_nodes)
    _keep_max_pools_float(packed)
    _strip_annotations(packed)
    return packed, qdq, left_dense


def _strip_annotations(model: onnx.ModelProto) -> None:
    """Drop what onnxruntime does not read: the exporter's per-node provenance and the inferred
    shapes quantize_static left (onnxruntime infers them again). A tenth of a small int8 file."""
    del model.graph.value_info[:]
    for node in model.graph.node:
        del node.metadata_props[:]


def quantize_metadata(source_metadata: dict[str, str], spec: str, images: int, source: str) -> dict[str, str]:
    """The input file's metadata, with a ``quantization`` record of how the int8 file was made."""
    meta = decode_onnx_metadata(source_metadata, source)
    for stale in ("tune", "accuracy", "agreement"):  # measured on the fp32 file: they do not hold for int8
        meta.pop(stale, None)
    meta["quantization"] = {**_QDQ_FORMAT, "calibration_data": spec, "calibration_images": images}
    return encode_onnx_metadata(meta)


# --- the dense equivalent --------------------------------------------------------------

def _dense_equivalent(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every PSConv/PSConvAdd node a Conv on its dense masked kernel (named after the
    node), then Add and Relu/Clip as the node's attributes say; the pSConv functions and opsets gone."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    initializers = {t.name: t for t in out.graph.initializer}
    nodes: list[onnx.NodeProto] = []
    for node in out.graph.node:
        if node.domain not in _PSCONV_DOMAINS:
            nodes.append(node)
            continue
        if node.op_type not in psconv_onnx.OPERATORS:
            raise UserError(f"node {node.name}: {node.op_type} is already quantized (quantize takes fp32 models)")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weights = initializers.get(node.input[1])
        if weights is None:
            raise UserError(f"node {node.name}: its packed weights are not constant, so they cannot be quantized")
        dense_name = f"{node.name}.dense_weight"
        out.graph.initializer.append(numpy_helper.from_array(dense_kernel(numpy_helper.to_array(weights), attrs),
                                                             dense_name))
        conv_out = f"{node.name}.conv" if node.op_type == "PSConvAdd" or _clamp(attrs) else node.output[0]
        bias = [node.input[2]] if len(node.input) > 2 and node.input[2] else []
        nodes.append(helper.make_node("Conv", [node.input[0], dense_name, *bias], [conv_out], name=node.name,
                                      **{k: attrs[k] for k in ("kernel_shape", "strides", "pads", "dilations", "group")
                                         if k in attrs}))
        last = conv_out
        clamp = _clamp(attrs)
        if node.op_type == "PSConvAdd":
            last = node.output[0] if not clamp else f"{node.name}.add"
            nodes.append(helper.make_node("Add", [conv_out, node.input[3]], [last], name=f"{node.name}.add"))
        if clamp:
            nodes.append(_clamp_node(clamp, last, node.output[0], node.name, out.graph))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    used = {name for n in out.graph.node for name in n.input}
    kept = [t for t in out.graph.initializer if t.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    del out.functions[:]
    opsets = [o for o in out.opset_import if o.domain in ("", "ai.onnx")]
    del out.opset_import[:]
    out.opset_import.extend(opsets)
    return out


def kept_mask(attrs: dict) -> np.ndarray:
    """Which weights of Wd[M, Cg, KH, KW] a PSConv node with attributes ``attrs`` keeps."""
    pattern = PatternSet.from_bitmasks(attrs["kernel_shape"], attrs["patterns"])
    return pattern.mask(attrs["out_channels"], attrs["in_channels"] // attrs.get("group", 1), attrs.get("shift", 0))


def dense_kernel(packed: np.ndarray, attrs: dict) -> np.ndarray:
    """Wd: zeros, with ``packed`` at the kept positions in (o, i, p) order."""
    keep = kept_mask(attrs)
    if int(keep.sum()) != packed.size:
        raise UserError(f"packed weights of {packed.size} values, the patterns keep {int(keep.sum())}")
    dense = np.zeros(keep.shape, dtype=packed.dtype)
    dense[keep] = packed.reshape(-1)
    return dense


def _clamp(attrs: dict) -> tuple[float, float] | None:
    lo, hi = attrs.get("clip_min", -np.inf), attrs.get("clip_max", np.inf)
    return None if (lo, hi) == (-np.inf, np.inf) else (lo, hi)


def _clamp_node(clamp: tuple[float, float], source: str, target: str, name: str, graph: onnx.GraphProto) -> onnx.NodeProto:
    lo, hi = clamp
    if (lo, hi) == (0.0, np.inf):
        return helper.make_node("Relu", [source], [target], name=f"{name}.relu")
    bounds = []
    for which, value in (("min", lo), ("max", hi)):
        graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), f"{name}.clip_{which}"))
        bounds.append(f"{name}.clip_{which}")
    return helper.make_node("Clip", [source, *bounds], [target], name=f"{name}.clip")


# --- packing the quantized convs -------------------------------------------------------

def _graph_index(graph: onnx.GraphProto) -> tuple[dict[str, onnx.NodeProto], dict[str, list[onnx.NodeProto]],
                                                   dict[str, onnx.TensorProto]]:
    """(producer of each value, consumers of each value, initializers by name) of ``graph``."""
    producers = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    return producers, consumers, {t.name: t for t in graph.initializer}


def _pack(model: onnx.ModelProto, psconv_nodes: dict[str, onnx.NodeProto]) -> list[str]:
    """Replace, in the QDQ ``model``, each DequantizeLinear -> Conv -> QuantizeLinear of a former PSConv
    node by one QLinearPSConv node. Returns the nodes left dense, each with the reason."""
    graph = model.graph
    producers, consumers, initializers = _graph_index(graph)
    removed: set[int] = set()
    replacements: dict[int, onnx.NodeProto] = {}
    left_dense = []
    for node in graph.node:
        if node.op_type != "Conv" or node.name not in psconv_nodes:
            continue
        found = _qdq_conv(node, producers, consumers, initializers)
        if isinstance(found, str):
            left_dense.append(f"{node.name}: {found}")
            continue
        x_dq, w_dq, b_dq, y_q = found
        attrs = {a.name: helper.get_attribute_value(a) for a in psconv_nodes[node.name].attribute}
        w_q = numpy_helper.to_array(initializers[w_dq.input[0]])
        packed = _packed(w_q, attrs)
        if packed is None:
            left_dense.append(f"{node.name}: a masked weight did not quantize to zero")
            continue
        packed_name = f"{node.name}.packed_int8"
        graph.initializer.append(numpy_helper.from_array(packed, packed_name))
        inputs = [x_dq.input[0], x_dq.input[1], _zero_point(x_dq), packed_name, w_dq.input[1], y_q.input[1],
                  _zero_point(y_q)]
        if b_dq is not None:
            inputs.append(b_dq.input[0])
        replacements[id(node)] = helper.make_node(
            qlinear_psconv_onnx.OPERATOR, inputs, [y_q.output[0]], name=node.name, domain=psconv_onnx.DOMAIN,
            **{k: attrs[k] for k in _SHARED_ATTRIBUTES if k in attrs})
        removed |= {id(y_q), id(w_dq)} | ({id(b_dq)} if b_dq is not None else set())
        if all(c is node for c in consumers[x_dq.output[0]]):
            removed.add(id(x_dq))
    nodes = [replacements.get(id(n), n) for n in graph.node if id(n) not in removed]
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for n in graph.node for name in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if replacements:
        # QLinearPSConv's body calls DenseKernel, which calls ExactShape; the fp32 operators are gone
        model.functions.extend([f for f in psconv_onnx.fallback_functions() if f.name in ("ExactShape", "DenseKernel")]
                               + [qlinear_psconv_onnx.function()])
        present = {o.domain for o in model.opset_import}
        model.opset_import.extend(helper.make_opsetid(d, v) for d, v in psconv_onnx.opset_imports().items()
                                  if d and d not in present)
    return left_dense


def _qdq_conv(conv, producers, consumers, initializers):
    """(x DequantizeLinear, w DequantizeLinear, b DequantizeLinear or None, y QuantizeLinear) around ``conv``,
    or why it is not that pattern."""
    x_dq, w_dq = producers.get(conv.input[0]), producers.get(conv.input[1])
    b_dq = producers.get(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
    users = consumers.get(conv.output[0], [])
    if not (x_dq and x_dq.op_type == "DequantizeLinear" and w_dq and w_dq.op_type == "DequantizeLinear"):
        return "its input or weights are not quantized"
    if w_dq.input[0] not in initializers or (b_dq is not None and (b_dq.op_type != "DequantizeLinear"
                                                                   or b_dq.input[0] not in initializers)):
        return "its quantized weights or bias are not constant"
    if len(users) != 1 or users[0].op_type != "QuantizeLinear":
        return "its output is not quantized directly (an activation onnxruntime kept between them)"
    if any(len(consumers.get(n.output[0], [])) != 1 for n in (w_dq,) + ((b_dq,) if b_dq is not None else ())):
        return "its weights are shared with another node"
    for q in (x_dq, users[0]):
        zero = initializers.get(_zero_point(q))
        if zero is None or zero.data_type != onnx.TensorProto.UINT8 or int(np.prod(zero.dims)) != 1:
            return "its activations are not per-tensor uint8"
    return x_dq, w_dq, b_dq, users[0]


def _keep_max_pools_float(model: onnx.ModelProto) -> None:
    """Keep each DequantizeLinear -> MaxPool -> QuantizeLinear of ``model`` in float.

    onnxruntime drops the pair around a MaxPool when their scales are equal; its uint8 MaxPool is
    then fast only in NHWC, next to its own QLinearConv, and a scalar loop in NCHW beside
    QLinearPSConv, 8x slower than the float pool (64x32x32 on one thread: 0.24 against 0.03 ms with
    the pair). The DequantizeLinear gets the next float above its scale, which keeps the pair and is
    exact: (q - zp) * s' / s lies within 255 * 2^-23 of q - zp, so the QuantizeLinear rounds back to q.
    """
    graph = model.graph
    producers, consumers, initializers = _graph_index(graph)
    for pool in graph.node:
        dq, users = producers.get(pool.input[0]), consumers.get(pool.output[0], [])
        if pool.op_type != "MaxPool" or not dq or dq.op_type != "DequantizeLinear" or len(users) != 1:
            continue
        q = users[0]
        params = [[initializers.get(name) for name in (node.input[1], _zero_point(node))] for node in (dq, q)]
        if (q.op_type != "QuantizeLinear" or len(consumers[dq.output[0]]) != 1
                or any(t is None or int(np.prod(t.dims)) != 1 for t in params[0] + params[1])
                or any(not np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
                       for a, b in zip(*params))):
            continue  # not a pair onnxruntime would drop
        s = numpy_helper.to_array(params[0][0]).astype(np.float32)
        name = f"{pool.name or pool.output[0]}.float_scale"
        graph.initializer.append(numpy_helper.from_array(np.nextafter(s, np.float32(np.inf)), name))
        dq.input[1] = name


def _zero_point(qdq: onnx.NodeProto) -> str:
    return qdq.input[2] if len(qdq.input) > 2 else ""


def _packed(w_q: np.ndarray, attrs: dict) -> np.ndarray | None:
    """The kept int8 weights in (o, i, p) order, or None when a masked one is not zero."""
    keep = kept_mask(attrs)
    if w_q.shape != keep.shape or np.any(w_q[~keep]):
        return None
    return np.ascontiguousarray(w_q[keep]).astype(np.int8)


# --- the file-level job ------------------------------------------------------------------

# The int8 pSConv file must compute what onnxruntime's int8 dense model computes: without the
# native library they run the same QLinearConv kernels.
PORTABLE_TOLERANCE = 1e-5
CALIBRATION_BATCH = 25


def quantize_file(path: str | Path, spec: str, output: str | Path, calibration: int = 100, split: str = "train",
                  progress: bool | None = None) -> QuantizeSummary:
    """Quantize the exported ONNX model at ``path`` on ``calibration`` images of data set ``spec``
    (a seeded random sample of its ``split``) and write the int8 model to ``output`` atomically."""
    from tqdm import tqdm

    from pscompress.board.data import check_compatible, load_dataset
    from pscompress.core.files import atomic_output
    from pscompress.core.inputs import normalize
    from pscompress.core.limits import check_bytes

    path = Path(path)
    if not path.is_file():
        raise UserError(f"cannot read {path}: no such file")
    check_bytes(str(path), path.stat().st_size)
    try:
        model = onnx.load(path)
    except Exception as exc:  # onnx raises DecodeError and others for files that are not ONNX
        raise UserError(f"{path} is not an ONNX model ({exc.__class__.__name__})") from exc
    meta = decode_onnx_metadata({p.key: p.value for p in model.metadata_props}, str(path))
    shape = meta.get("input_shape")
    if not shape or len(model.graph.input) != 1:
        raise UserError(f"{path.name}: quantize takes a model exported by pscompress (one input, its shape recorded)")
    preprocess = meta.get("preprocess") or {}
    data = load_dataset(spec, split).in_channel_order(preprocess.get("channel_order"))
    check_compatible(data, shape[0], len(meta["classes"]) if meta.get("classes") else len(data.classes), shape[1:])
    count = min(calibration, len(data))
    indices = calibration_indices(len(data), count)
    batches = (normalize(x, preprocess).astype(np.float32) for x, _ in data.batches(CALIBRATION_BATCH, indices))
    with atomic_output(output) as tmp:
        with tqdm(total=count, desc="calibrating", unit="img", leave=False,
                  disable=None if progress is None else not progress) as bar:
            packed, qdq, left_dense = quantize_model(model, batches, bar.update)
        source_props = {p.key: p.value for p in model.metadata_props}
        del packed.metadata_props[:]
        for key, value in quantize_metadata(source_props, spec, count, str(path)).items():
            packed.metadata_props.add(key=key, value=value)
        data_bytes = packed.SerializeToString()
        probe = next(normalize(x, preprocess).astype(np.float32) for x, _ in data.batches(8, indices[:8]))
        _verify(data_bytes, qdq.SerializeToString(), {model.graph.input[0].name: probe})
        tmp.write_bytes(data_bytes)
    int8_layers = sum(n.op_type == qlinear_psconv_onnx.OPERATOR for n in packed.graph.node)
    return QuantizeSummary(path=str(output), bytes=len(data_bytes),
                           fp32_bytes=_dense_equivalent(model).ByteSize(), int8_layers=int8_layers,
                           dense_layers=left_dense, calibration_images=count)


def calibration_indices(length: int, count: int) -> np.ndarray:
    """The seeded sample of ``count`` of ``length`` images that every int8 export calibrates on, in order."""
    return np.sort(np.random.default_rng(0).choice(length, size=count, replace=False))


def _verify(model: bytes, reference: bytes, feed: dict[str, np.ndarray]) -> None:
    """The int8 pSConv file, run without the native library, against onnxruntime's int8 dense model."""
    from pscompress.exporters.pipeline import relative_difference
    from pscompress.runtime import create_session

    runs = [create_session(m, native=False).run(None, feed) for m in (model, reference)]
    for got, expected in zip(*runs):
        diff = relative_difference(got, expected)
        if not diff <= PORTABLE_TOLERANCE:
            raise UserError(f"the int8 pSConv model disagrees with onnxruntime's int8 dense model (relative "
                            f"difference {diff:.2e}): please report this")
