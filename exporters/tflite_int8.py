"""Full-integer int8 TFLite export: the float export's lowering with int8 numerics, calibrated on real images.

Quantized as ``pscompress quantize`` quantizes the ONNX export (onnxruntime's quantize_static,
MinMax calibration), so the two files agree: every activation int8 per tensor, asymmetric, from
the calibration images' min and max of each traced tensor (its range widened to hold 0);
weights int8 per output channel, symmetric; biases int32 at input scale x weight scale. The
parameters are onnxruntime's own formulas (uint8 zero points shifted by -128), so the int8
weights are identical. A ReLU fused into its producer is folded into that tensor's range.
The file takes float32 NHWC images (a QUANTIZE first) and returns float32 outputs (a DEQUANTIZE
before each), so predictors and ``eval`` use it as they use the float export. How and why: docs/tflite.md.
"""
from __future__ import annotations

import os
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import fx

from pscompress.core.errors import UserError
from pscompress.core.files import atomic_output
from pscompress.exporters.pipeline import Prepared, prepare, relative_difference
from pscompress.exporters.summary import ExportSummary
from pscompress.exporters.tflite import Numerics, interpreter_installed, serialize, stored_constant
from pscompress.exporters.tflite_writer import Quantization, TFLiteGraph
from pscompress.workstation.checkpoint import LoadedModel
from pscompress.workstation.surgery import psconv_layers

ACTIVATION_LEVELS = 255  # int8 activations: [-128, 127]
WEIGHT_MAX = 127  # symmetric int8 weights: [-127, 127], as onnxruntime's symmetric range
# Export fails unless the file predicts PyTorch's class for this share of the calibration images and
# every logit is within VERIFY_STEPS output quantization steps plus VERIFY_RELATIVE of PyTorch's largest.
VERIFY_AGREEMENT = 0.95
VERIFY_STEPS = 4
VERIFY_RELATIVE = 0.05
CALIBRATION_BATCH = 25
DEFAULT_CALIBRATION = 100  # images, as ``pscompress quantize``
_TINY = np.finfo(np.float32).tiny  # onnxruntime's smallest usable scale: below it the scale is 1
LOGISTIC_OUTPUT = Quantization.per_tensor(1 / 256, -128)  # the only output parameters TFLite's int8 LOGISTIC takes


def export_tflite_int8(loaded: LoadedModel, path: str | os.PathLike, data: str, calibration: int = DEFAULT_CALIBRATION,
                       input_shape: Sequence[int] | None = None, split: str = "train") -> ExportSummary:
    """Write ``loaded`` as a full-integer int8 .tflite file at ``path`` (atomically), calibrated on
    ``calibration`` images of data set ``data`` (a seeded random sample of its ``split``, the same
    images ``pscompress quantize`` picks), and return a size report.

    Needs a TFLite interpreter: the file is checked against PyTorch on the calibration images and
    not written when it disagrees (see VERIFY_AGREEMENT).
    """
    if not interpreter_installed():
        raise UserError("int8 TFLite export checks the file in a TFLite interpreter: pip install ai-edge-litert")
    job = prepare(loaded, input_shape)
    images = calibration_images(loaded, job.input_shape, data, calibration, split)
    with atomic_output(path) as tmp:
        ranges = calibrated_ranges(job.graph, _batches(images))
        numerics = Int8(ranges)
        record = _record(len(images), data, split)
        content = serialize(job, numerics, sparse=True, int8=record)
        dense = serialize(job, numerics, sparse=False, int8=record)
        diff = verify_int8(content, job, images, numerics.output_scales)
        tmp.write_bytes(content)
    return ExportSummary(path=str(path), bytes=len(content), input_shape=job.input_shape,
                         psconv_layers=len(psconv_layers(loaded.module)), max_rel_diff=diff, dense_bytes=len(dense))


def build_tflite_int8(loaded: LoadedModel, input_shape: Sequence[int], calibration_batches: Iterable[np.ndarray],
                      sparse: bool = True) -> bytes:
    """The bytes of the int8 .tflite model calibrated on ``calibration_batches`` (float32 NCHW, as the
    graph takes them); ``sparse=False`` stores pSConv filters dense (for size comparisons)."""
    job = prepare(loaded, input_shape)
    batches = [np.asarray(batch, dtype=np.float32) for batch in calibration_batches]
    return serialize(job, Int8(calibrated_ranges(job.graph, iter(batches))), sparse=sparse,
                     int8=_record(sum(len(batch) for batch in batches)))


def calibration_images(loaded: LoadedModel, input_shape: tuple[int, int, int], spec: str, count: int,
                       split: str = "train") -> np.ndarray:
    """``count`` images of data set ``spec`` preprocessed as the model takes them: the seeded sample
    ``pscompress quantize`` draws (pscompress.workstation.quantize.quantize_file)."""
    from pscompress.board.data import check_compatible, load_dataset
    from pscompress.core.inputs import normalize

    if count < 1:
        raise UserError(f"the calibration needs at least one image, got {count}")
    preprocess = loaded.meta.get("preprocess") or {}
    dataset = load_dataset(spec, split).in_channel_order(preprocess.get("channel_order"))
    classes = loaded.meta.get("classes")
    check_compatible(dataset, input_shape[0], len(classes) if classes else len(dataset.classes), input_shape[1:])
    count = min(count, len(dataset))
    if count == 0:
        raise UserError("no calibration images: the data set is empty")
    from pscompress.workstation.quantize import calibration_indices

    indices = calibration_indices(len(dataset), count)
    return np.concatenate([normalize(x, preprocess).astype(np.float32)
                           for x, _ in dataset.batches(CALIBRATION_BATCH, indices)])


def calibrated_ranges(graph: fx.GraphModule, batches: Iterator[np.ndarray]) -> dict[str, tuple[float, float]]:
    """Min and max over every batch of each fx node's tensor output, by node name (MinMax calibration)."""
    ranges: dict[str, tuple[float, float]] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, node: fx.Node):
            out = super().run_node(node)
            if isinstance(out, torch.Tensor) and out.is_floating_point() and out.numel():
                lo, hi = float(out.min()), float(out.max())
                seen = ranges.get(node.name, (lo, hi))
                ranges[node.name] = (min(seen[0], lo), max(seen[1], hi))
            return out

    recorder = Recorder(graph)
    with torch.no_grad():
        for batch in batches:
            recorder.run(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
    if not ranges:
        raise UserError("no calibration images: the data set is empty")
    return ranges


def activation_quantization(lo: float, hi: float) -> Quantization:
    """onnxruntime's uint8 scale and zero point for the range [lo, hi], the zero point shifted to int8."""
    rmin, rmax = min(np.float32(lo), np.float32(0)), max(np.float32(hi), np.float32(0))
    scale = (np.float64(rmax) - np.float64(rmin)) / ACTIVATION_LEVELS
    if scale < _TINY:
        return Quantization.per_tensor(1.0, -128)
    return Quantization.per_tensor(np.float32(scale), int(np.round(-rmin / scale)) - 128)


def weight_quantization(array: np.ndarray, axis: int) -> tuple[np.ndarray, Quantization]:
    """``array`` as int8, symmetric per index of ``axis``: onnxruntime's per-channel weight formulas
    (scale = 2 max|w| / 254 in float64, stored float32; q = round(w / scale)), so zeros stay exactly 0."""
    others = tuple(d for d in range(array.ndim) if d != axis)
    absmax = np.abs(array.astype(np.float32)).max(axis=others)
    scale64 = 2 * absmax.astype(np.float64) / (2 * WEIGHT_MAX)
    scale = np.where(scale64 < _TINY, 1.0, scale64).astype(np.float32)
    shape = [-1 if d == axis else 1 for d in range(array.ndim)]
    q = np.clip(np.round(array.astype(np.float32) / scale.reshape(shape)), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int8)
    return q, Quantization(scale, np.zeros(scale.size, np.int64), axis)


def bias_quantization(bias: np.ndarray, input_scale: np.float32, weight_scale: np.ndarray) -> tuple[np.ndarray, Quantization]:
    """``bias`` as int32 at scale input scale x weight scale (per channel), onnxruntime's rounding."""
    scale = np.float32(input_scale) * weight_scale.astype(np.float32)
    info = np.iinfo(np.int32)
    q = np.clip(np.round(bias.astype(np.float64) / scale.astype(np.float64)), info.min, info.max).astype(np.int32)
    return q, Quantization(scale, np.zeros(scale.size, np.int64), 0)


class Int8(Numerics):
    """Full-integer numerics: int8 activations with the calibrated ranges, int8 weights, int32 biases."""

    def __init__(self, ranges: dict[str, tuple[float, float]]) -> None:
        self.ranges = ranges
        self.output_scales: dict[str, float] = {}  # each output's quantization step, by name, known once lowered

    def graph_input(self, graph: TFLiteGraph, tensor: int, name: str) -> int:
        quantized = self.activation(graph, name, graph.shape_of(tensor))
        graph.op("QUANTIZE", [tensor], [quantized])
        return quantized

    def graph_output(self, graph: TFLiteGraph, tensor: int, name: str) -> int:
        out = graph.activation(name, graph.shape_of(tensor))
        graph.op("DEQUANTIZE", [tensor], [out])
        self.output_scales[name] = float(graph.quantization_of(tensor).scale[0])
        return out

    def scaled(self, graph: TFLiteGraph, name: str, shape: tuple[int, ...], of: str, factor: float) -> int:
        self._calibrated(of)  # a UserError when the calibration saw no tensor for it
        lo, hi = self.ranges[of]
        return graph.activation(name, shape, dtype=np.int8, quantization=activation_quantization(factor * lo, factor * hi))

    def activation(self, graph: TFLiteGraph, name: str, shape: tuple[int, ...], like: int | None = None) -> int:
        quantization = graph.quantization_of(like) if like is not None else self._calibrated(name)
        return graph.activation(name, shape, dtype=np.int8, quantization=quantization)

    def weight(self, graph: TFLiteGraph, name: str, array: np.ndarray, sparse: bool, channel_axis: int) -> int:
        q, quantization = weight_quantization(array, channel_axis)
        return stored_constant(graph, name, q, sparse, quantization)

    def bias(self, graph: TFLiteGraph, name: str, bias: np.ndarray, x: int, weight: int) -> int:
        q, quantization = bias_quantization(bias, graph.quantization_of(x).scale[0], graph.quantization_of(weight).scale)
        return graph.constant(name, q, quantization)

    def operand(self, graph: TFLiteGraph, name: str, array: np.ndarray) -> int:
        q, quantization = weight_quantization(array.reshape(1, -1), 0)  # symmetric, one scale: per tensor
        return graph.constant(name, q.reshape(array.shape), quantization)

    def logistic(self, graph: TFLiteGraph, name: str, shape: tuple[int, ...]) -> int:
        return graph.activation(name, shape, dtype=np.int8, quantization=LOGISTIC_OUTPUT)

    def lowest(self, graph: TFLiteGraph, name: str, like: int) -> int:
        # PADV2 takes an int8 fill only in its output's quantization, which is ``like``'s.
        return graph.constant(name, np.array(np.iinfo(np.int8).min, np.int8), graph.quantization_of(like))

    def requantize(self, graph: TFLiteGraph, tensor: int, like: int, name: str) -> int:
        have, want = graph.quantization_of(tensor), graph.quantization_of(like)
        if np.array_equal(have.scale, want.scale) and np.array_equal(have.zero_point, want.zero_point):
            return tensor
        out = graph.activation(name, graph.shape_of(tensor), dtype=np.int8, quantization=want)
        graph.op("QUANTIZE", [tensor], [out])  # int8 to int8: a rescale
        return out

    def check_softmax(self, node: fx.Node) -> None:
        raise UserError(f"operation {node.name}: softmax cannot be exported to int8 TFLite (its output has a fixed "
                        "scale): export a model that ends in logits")

    def _calibrated(self, name: str) -> Quantization:
        if name not in self.ranges:
            raise UserError(f"operation {name}: the calibration saw no tensor for it: please report this")
        return activation_quantization(*self.ranges[name])


def verify_int8(content: bytes, job: Prepared, images: np.ndarray, output_scales: dict[str, float]) -> float:
    """Largest relative difference, over every output, between the file's and PyTorch's outputs on ``images``;
    UserError, naming the output when there are several, when one is further than VERIFY_STEPS of its
    quantization steps plus VERIFY_RELATIVE of PyTorch's largest value, or a 2-D [N, classes] one predicts
    PyTorch's class on fewer than VERIFY_AGREEMENT of the images."""
    from pscompress.board.tflite_predictor import TFLitePredictor
    from pscompress.workstation.model_io import named_outputs

    got = TFLitePredictor.from_bytes(content).run_normalized(images)
    with torch.no_grad():
        expected = {name: value.numpy() for name, value in named_outputs(job.loaded.module(torch.from_numpy(images))).items()}
    worst_relative = 0.0
    for name, want in expected.items():
        have = got[name]
        if have.shape != want.shape:
            raise UserError(f"the int8 TFLite model's output {name} has shape {list(have.shape)}, PyTorch's "
                            f"{list(want.shape)}: please report this")
        agreement = float(np.mean(have.argmax(1) == want.argmax(1))) if want.ndim == 2 and want.shape[1] > 1 else 1.0
        worst = float(np.max(np.abs(have - want))) if want.size else 0.0
        bound = VERIFY_STEPS * output_scales[name] + VERIFY_RELATIVE * (float(np.max(np.abs(want))) if want.size else 0.0)
        if agreement < VERIFY_AGREEMENT or worst > bound:
            label = f"'s output {name}" if len(expected) > 1 else ""
            raise UserError(f"the int8 TFLite model{label} disagrees with PyTorch on the calibration images "
                            f"({agreement:.1%} same class, values up to {worst:.3g} apart, allowed {bound:.3g}): "
                            "export float32 instead")
        worst_relative = max(worst_relative, relative_difference(have, want))
    return worst_relative


def _batches(images: np.ndarray) -> Iterator[np.ndarray]:
    return (images[i:i + CALIBRATION_BATCH] for i in range(0, len(images), CALIBRATION_BATCH))


def _record(images: int, spec: str | None = None, split: str | None = None) -> dict:
    """The metadata entry saying how the file was quantized (``spec`` None: images given as arrays)."""
    return {"activations": "int8, per tensor, asymmetric", "weights": "int8, per output channel, symmetric",
            "bias": "int32", "calibration_method": "MinMax", "calibration_data": spec, "calibration_split": split,
            "calibration_images": images}
