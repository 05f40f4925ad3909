"""The sparse encoder checked against TFLite's own DENSIFY: every traversal order and format mix."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from pscompress.board.tflite_predictor import interpreter_module
from pscompress.core.patterns import parse_pattern
from pscompress.exporters.tflite_sparse import DENSE, SPARSE_CSR, encode, smallest_encoding
from pscompress.exporters.tflite_writer import TFLiteGraph


def densified_by_tflite(values: np.ndarray, order, formats, xnnpack: bool) -> np.ndarray:
    """Run DENSIFY (then DEQUANTIZE for float16) on the encoding inside a one-op model, add to zeros."""
    graph = TFLiteGraph()
    x = graph.activation("x", values.shape, batch_dynamic=False)
    stored = graph.sparse_constant("w/sparse", encode(values, order, formats))
    dense = graph.activation("w", values.shape, dtype=values.dtype, batch_dynamic=False)
    graph.op("DENSIFY", [stored], [dense])
    if values.dtype == np.float16:
        half, dense = dense, graph.activation("w/float32", values.shape, batch_dynamic=False)
        graph.op("DEQUANTIZE", [half], [dense])
    y = graph.activation("y", values.shape, batch_dynamic=False)
    graph.op("ADD", [x, dense], [y], "AddOptions")
    graph.inputs, graph.outputs = [x], [y]
    module = interpreter_module()
    options = {} if xnnpack else {"experimental_op_resolver_type": module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    interpreter = module.Interpreter(model_content=graph.serialize("test", {}), **options)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.zeros(values.shape, np.float32))
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


@pytest.fixture(scope="module")
def tensor() -> np.ndarray:
    """[O, KH, KW, I] with random zeros, one all-zero filter and one all-zero input channel."""
    rng = np.random.default_rng(0)
    t = rng.standard_normal((4, 3, 3, 5)).astype(np.float32) * (rng.random((4, 3, 3, 5)) < 0.4)
    t[2] = 0
    t[..., 1] = 0
    return t


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))), ids=str)
def test_every_traversal_order_and_format_round_trips(tensor, order):
    for formats in itertools.product((DENSE, SPARSE_CSR), repeat=4):
        if SPARSE_CSR in formats:
            np.testing.assert_array_equal(densified_by_tflite(tensor, order, formats, xnnpack=False), tensor,
                                          err_msg=f"order {order}, formats {formats}")


@pytest.mark.parametrize("xnnpack", [True, False], ids=["xnnpack", "builtin-kernels"])
@pytest.mark.parametrize("spec", ["1of9", "4of9", "6of9"])
def test_smallest_encoding_of_psconv_filters(spec, xnnpack):
    pattern = parse_pattern(spec)
    mask = pattern.mask(24, 40, shift=1).transpose(0, 2, 3, 1)  # TFLite's [O, KH, KW, I]
    for dtype in (np.float32, np.float16):
        weights = (np.random.default_rng(1).standard_normal(mask.shape) * mask).astype(dtype)
        encoding = smallest_encoding(weights)
        assert encoding is not None and encoding.nbytes < weights.nbytes
        # At least as small as the obvious layout: one index per kept weight along the input channels.
        assert encoding.nbytes <= encode(weights, (0, 1, 2, 3), (DENSE, DENSE, DENSE, SPARSE_CSR)).nbytes
        levels = tuple(level.format for level in encoding.levels)
        restored = densified_by_tflite(weights, encoding.traversal_order, levels, xnnpack)
        np.testing.assert_array_equal(restored, weights.astype(np.float32))


def test_dense_weights_are_not_encoded():
    assert smallest_encoding(np.random.default_rng(2).standard_normal((8, 3, 3, 8)).astype(np.float32)) is None
