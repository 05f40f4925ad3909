"""Small PSConv models (docs/operator.md, built node by node) that reach every path of the
native kernel, each paired with an oracle model made of standard ONNX Conv on the dense
masked weights. The dense weights are rebuilt here from the contract alone, not with
pscompress's own code.

Paths covered (tests/test_pi_emulated.py checks the claims on the shapes, with the tile layout
the native kernel reports for each): 16-pixel tiles read straight from output rows (full, with
a tail, and rows of 12 to 15 pixels), two-row tiles of outputs 6 to 8 wide (8 and narrower,
even and odd row counts), tiles gathered across rows (full and with a tail); every row count
the 6-row (kMR) microkernel can get (classes of 1 to 6 outputs, one panel each; 7 and 8, two
panels; over 12, three; and classes with none); strides 1 and 2 (column phases); long
reductions as in the benchmark's layers;
asymmetric pads; a 5x5 kernel; groups; bias or none; no activation, Relu, Clip and the
residual of PSConvAdd; periods 3, 4 and 8 with a dense support; weights that are a graph input
(packed on every run) or a constant (prepacked once).
"""
from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import psconv_models  # runtime/tests/, on sys.path (tests/test_pi_emulated.py puts it there)

SQUARES_4OF9 = [0b000011011, 0b000110110, 0b011011000, 0b110110000]  # the four 2x2 squares with the centre
PAIRS_2OF9 = [(1 << 4) | (1 << p) for p in (0, 1, 2, 3, 5, 6, 7, 8)]  # centre plus one neighbour
SQUARES_WITH_DENSE = SQUARES_4OF9 * 2
SQUARES_WITH_DENSE[7] = (1 << 9) - 1  # one kernel in eight stays dense
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


@dataclass(frozen=True)
class Case:
    name: str
    batch: int
    in_channels: int
    height: int
    width: int
    out_channels: int
    patterns: tuple[int, ...]
    shift: int = 0
    kernel: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (1, 1, 1, 1)
    group: int = 1
    bias: bool = True
    clip: tuple[float, float] = (-math.inf, math.inf)
    residual: bool = False
    weights_as_input: bool = False
    fashion_mnist: bool = False  # a real image instead of noise

    @property
    def output_hw(self) -> tuple[int, int]:
        (kh, kw), (sh, sw), (pt, pl, pb, pr) = self.kernel, self.strides, self.pads
        return (self.height + pt + pb - kh) // sh + 1, (self.width + pl + pr - kw) // sw + 1


RELU = (0.0, math.inf)
CASES = (
    # 52 outputs / period 4 = 13 per class; output width 37 = 2 tiles + 5.
    Case("direct_row_and_pixel_tails", 2, 8, 5, 37, 52, tuple(SQUARES_4OF9), shift=1, clip=RELU),
    Case("direct_full_tiles_no_bias", 1, 4, 4, 32, 8, tuple(SQUARES_4OF9), bias=False),
    # 7x7 output = 49 pixels spanning rows: gathered panels with a tail; 13 outputs over 4 classes.
    Case("gathered_clip", 1, 6, 7, 7, 13, tuple(SQUARES_4OF9), shift=3, clip=(0.0, 1.5)),
    # 40 outputs / period 8 = 5 per class.
    Case("direct_stride2", 1, 8, 9, 34, 40, tuple(PAIRS_2OF9), shift=5, strides=(2, 2), clip=RELU),
    Case("gathered_stride2_dense_support", 1, 4, 8, 8, 16, tuple(SQUARES_WITH_DENSE), strides=(2, 2), clip=RELU),
    Case("residual_relu", 1, 8, 6, 16, 24, tuple(SQUARES_4OF9), shift=2, residual=True, clip=RELU),
    Case("residual_gathered_no_bias", 1, 3, 5, 5, 7, tuple(SQUARES_4OF9), bias=False, residual=True),
    Case("grouped", 1, 8, 6, 20, 56, tuple(SQUARES_4OF9), shift=1, group=2, clip=RELU),
    Case("kernel5x5_asymmetric_pads", 1, 5, 9, 19, 9, (0x1F0F0F1, 0x0E8A8E, 0x1555555), shift=2, kernel=(5, 5),
         pads=(2, 1, 0, 2)),
    Case("weights_as_input", 1, 4, 6, 17, 6, tuple(SQUARES_4OF9), weights_as_input=True, clip=RELU),
    # ResNet-18-CIFAR-like layers as benchmarks/kernel_speed.py runs them, with fewer channels:
    # long reductions (k = 256 and 64), rows per class 16 = 6 + 6 + 4 and 8 = 6 + 2.
    Case("resnet_like_4of9", 2, 64, 8, 8, 64, tuple(SQUARES_4OF9), clip=RELU),
    Case("eight_wide_odd_rows", 1, 8, 7, 8, 20, tuple(SQUARES_4OF9), shift=3, clip=RELU),
    Case("resnet_like_downsample_2of9", 1, 32, 16, 16, 64, tuple(PAIRS_2OF9), strides=(2, 2), clip=RELU),
    # Narrow layers as in the sample ResNet-20 (4 outputs per class): 14-pixel rows, and two
    # 6-wide rows per tile with an even row count.
    Case("narrow_rows_stride2", 1, 16, 28, 28, 16, tuple(SQUARES_4OF9), shift=1, strides=(2, 2), clip=RELU),
    Case("narrow_two_rows_even", 1, 8, 6, 6, 16, tuple(SQUARES_4OF9), residual=True, clip=RELU),
    # A first layer on a real 28x28 image: one output, so three of the four classes are empty.
    Case("first_layer_fashion_mnist", 1, 1, 28, 28, 1, tuple(SQUARES_4OF9), shift=1, fashion_mnist=True),
)


def dense_weights(case: Case, packed: np.ndarray) -> np.ndarray:
    """Wd[M, Cg, KH, KW] per docs/operator.md: kept positions take W in (o, i, p) order."""
    kh, kw = case.kernel
    cg = case.in_channels // case.group
    dense = np.zeros((case.out_channels, cg, kh * kw), np.float32)
    k = 0
    for o in range(case.out_channels):
        for i in range(cg):
            mask = case.patterns[(o + i + case.shift) % len(case.patterns)]
            for p in range(kh * kw):
                if mask >> p & 1:
                    dense[o, i, p] = packed[k]
                    k += 1
    assert k == len(packed)
    return dense.reshape(case.out_channels, cg, kh, kw)


def packed_length(case: Case) -> int:
    cg = case.in_channels // case.group
    return sum(bin(case.patterns[(o + i + case.shift) % len(case.patterns)]).count("1")
               for o in range(case.out_channels) for i in range(cg))


def fashion_mnist_image(index: int = 0) -> np.ndarray:
    """Test image ``index`` as float32 [1, 1, 28, 28] in [0, 1]."""
    with gzip.open(FASHION_MNIST) as f:
        data = f.read(16 + 28 * 28 * (index + 1))
    pixels = np.frombuffer(data[16 + 28 * 28 * index:], np.uint8)
    return (pixels.astype(np.float32) / 255.0).reshape(1, 1, 28, 28)


def _parts(case: Case, rng: np.random.Generator):
    """Inputs, constants and (for both models) the value infos of one case."""
    x = fashion_mnist_image() if case.fashion_mnist else \
        rng.random((case.batch, case.in_channels, case.height, case.width), dtype=np.float32)
    w = (rng.standard_normal(packed_length(case)) * 0.5).astype(np.float32)
    b = rng.standard_normal(case.out_channels).astype(np.float32)
    oh, ow = case.output_hw
    y_shape = [case.batch, case.out_channels, oh, ow]
    feeds = {f"{case.name}_X": x}
    if case.residual:
        feeds[f"{case.name}_Z"] = rng.standard_normal(y_shape).astype(np.float32)
    if case.weights_as_input:
        feeds[f"{case.name}_W"] = w
    return feeds, w, b, y_shape


def _info(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def build(rng: np.random.Generator) -> tuple[onnx.ModelProto, onnx.ModelProto, dict[str, np.ndarray]]:
    """(PSConv model, dense oracle model, feeds): one independent node per case."""
    parts, ref_nodes, ref_inputs, outputs, ref_init, all_feeds = [], [], [], [], [], {}
    for case in CASES:
        n = case.name
        feeds, w, b, y_shape = _parts(case, rng)
        all_feeds.update(feeds)
        geometry = dict(kernel_shape=list(case.kernel), strides=list(case.strides), pads=list(case.pads),
                        dilations=[1, 1], group=case.group)
        constants = ({} if case.weights_as_input else {"W": w}) | ({"B": b} if case.bias else {})
        parts.append(psconv_models.psconv_parts(
            dict(geometry, in_channels=case.in_channels, out_channels=case.out_channels, patterns=list(case.patterns),
                 shift=case.shift, clip_min=case.clip[0], clip_max=case.clip[1]),
            residual=case.residual, bias=case.bias, constants=constants, prefix=f"{n}_",
            shapes={k[len(n) + 1:]: v.shape for k, v in feeds.items()}))

        # Oracle: Conv on the dense weights, then Add and Clip, all standard operators.
        ref_inputs += [_info(name, value.shape) for name, value in feeds.items() if not name.endswith("_W")]
        outputs.append(_info(f"{n}_Y", y_shape))
        ref_init.append(numpy_helper.from_array(dense_weights(case, w), f"{n}_wd"))
        ref_init += [numpy_helper.from_array(np.array(v, np.float32), f"{n}_{k}")
                     for k, v in (("lo", case.clip[0]), ("hi", case.clip[1]))]
        conv_inputs = [f"{n}_X", f"{n}_wd"]
        if case.bias:
            ref_init.append(numpy_helper.from_array(b, f"{n}_b"))
            conv_inputs.append(f"{n}_b")
        ref_nodes.append(helper.make_node("Conv", conv_inputs, [f"{n}_t"], **geometry))
        pre_clip = f"{n}_t"
        if case.residual:
            ref_nodes.append(helper.make_node("Add", [f"{n}_t", f"{n}_Z"], [f"{n}_s"]))
            pre_clip = f"{n}_s"
        ref_nodes.append(helper.make_node("Clip", [pre_clip, f"{n}_lo", f"{n}_hi"], [f"{n}_Y"]))

    oracle = helper.make_model(helper.make_graph(ref_nodes, "pi_coverage", ref_inputs, outputs, ref_init),
                               opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(oracle)
    psconv = psconv_models.graph_model(parts)
    del psconv.graph.output[:]
    psconv.graph.output.extend(outputs)  # declared shapes, as the checker wants and the oracle has
    return psconv, oracle, all_feeds
