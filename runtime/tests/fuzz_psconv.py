"""Throws randomised malformed PSConv/PSConvAdd models and inputs at the native kernels.

Run under an AddressSanitizer build (see tests/test_runtime_asan.py). Every case must end in
either a result of the right shape or a clean onnxruntime error; a crash or a sanitizer
report fails the caller. Prints one JSON summary line.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

SQUARES = [27, 54, 216, 432]


def valid_attributes(rng: np.random.Generator) -> dict:
    group = int(rng.choice([1, 1, 2, 4]))
    kernel = [int(rng.integers(1, 4)), int(rng.integers(1, 4))]
    k2 = kernel[0] * kernel[1]
    period = int(rng.integers(1, 6))
    return {
        "kernel_shape": kernel, "strides": [int(rng.integers(1, 3)), int(rng.integers(1, 3))],
        "pads": [int(v) for v in rng.integers(0, 3, 4)], "dilations": [1, 1], "group": group,
        "in_channels": group * int(rng.integers(1, 5)), "out_channels": group * int(rng.integers(1, 5)),
        "patterns": [int(v) for v in rng.integers(1, 1 << k2, period)], "shift": int(rng.integers(0, period)),
        "clip_min": float(rng.choice([-np.inf, 0.0, -1.0])), "clip_max": float(rng.choice([np.inf, 6.0])),
    }


BAD_INTS = [0, -1, -(2**63), 2**62, 2**31, 65, 1025, 7]


def mutate_attributes(attrs: dict, rng: np.random.Generator) -> dict:
    attrs = dict(attrs)
    for _ in range(int(rng.integers(1, 4))):
        name = str(rng.choice(list(attrs)))
        kind = int(rng.integers(0, 6))
        value = attrs[name]
        if kind == 0:
            del attrs[name]
        elif kind == 1 and isinstance(value, list):  # wrong length
            attrs[name] = value + [1] if rng.random() < 0.5 else value[:-1]
        elif kind == 2 and isinstance(value, list) and value:  # a bad element
            value = list(value)
            value[int(rng.integers(0, len(value)))] = int(rng.choice(BAD_INTS))
            attrs[name] = value
        elif kind == 3 and isinstance(value, int):
            attrs[name] = int(rng.choice(BAD_INTS))
        elif kind == 4 and isinstance(value, float):
            attrs[name] = float(rng.choice([np.nan, -np.inf, np.inf, 1e30, -1e30]))
        else:  # the wrong attribute type
            attrs[name] = str(rng.choice(["x", "1.5f"])) if rng.random() < 0.3 else (
                1.5 if not isinstance(value, float) else [1, 2])
    return attrs


def packed_length(attrs: dict) -> int:
    """len(W) per the contract, or a guess when the attributes are broken."""
    try:
        k2 = attrs["kernel_shape"][0] * attrs["kernel_shape"][1]
        m, cg = attrs["out_channels"], attrs["in_channels"] // attrs["group"]
        pats, shift = attrs["patterns"], attrs.get("shift", 0)
        if not (0 < k2 <= 63 and 0 < m <= 64 and 0 < cg <= 64 and pats):
            return 7
        return sum(bin(pats[(o + i + shift) % len(pats)] & ((1 << k2) - 1)).count("1")
                   for o in range(m) for i in range(cg))
    except (KeyError, TypeError, IndexError, ZeroDivisionError):
        return 7


def build_model(attrs: dict, residual: bool, w: np.ndarray | None, with_bias: bool) -> bytes:
    inputs = ["X", "W", "B" if with_bias else ""] + (["Z"] if residual else [])
    if not residual and not with_bias:
        inputs = inputs[:2]
    node = helper.make_node("PSConvAdd" if residual else "PSConv", inputs, ["Y"], domain="ai.pscompress",
                            **attrs)
    graph_inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                    for n in inputs if n and not (n == "W" and w is not None)]
    inits = [numpy_helper.from_array(w, "W")] if w is not None else []
    graph = helper.make_graph([node], "fuzz", graph_inputs,
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("ai.pscompress", 1)])
    model.ir_version = 10
    return model.SerializeToString()


def random_shape(good: list[int], rng: np.random.Generator) -> list[int]:
    shape = list(good)
    roll = rng.random()
    if roll < 0.05:
        shape = shape[:-1] if rng.random() < 0.5 else shape + [1]  # wrong rank
    elif roll < 0.2 and shape:
        d = int(rng.integers(0, len(shape)))
        shape[d] = max(0, shape[d] + int(rng.choice([-2, -1, 1, 3])))
    return shape


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("library")
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    ort.set_default_logger_severity(4)  # the expected rejections would flood stderr
    options = ort.SessionOptions()
    options.register_custom_ops_library(args.library)
    options.intra_op_num_threads = 2
    counts = {"cases": 0, "ran": 0, "rejected_at_load": 0, "rejected_at_run": 0}
    while counts["cases"] < args.cases:
        attrs = valid_attributes(rng)
        if rng.random() < 0.7:
            attrs = mutate_attributes(attrs, rng)
        residual = bool(rng.random() < 0.4)
        length = packed_length(attrs)
        if rng.random() < 0.3:
            length = max(0, length + int(rng.choice([-1, 1, 5])))
        constant = rng.random() < 0.5
        w = rng.standard_normal(length).astype(np.float32)
        with_bias = bool(rng.random() < 0.7)
        counts["cases"] += 1
        try:
            session = ort.InferenceSession(build_model(attrs, residual, w if constant else None, with_bias),
                                           options, providers=["CPUExecutionProvider"])
        except Exception:
            counts["rejected_at_load"] += 1
            continue
        c = attrs.get("in_channels", 1) if isinstance(attrs.get("in_channels"), int) else 1
        m = attrs.get("out_channels", 1) if isinstance(attrs.get("out_channels"), int) else 1
        c, m = min(max(c, 1), 64), min(max(m, 1), 64)
        for _ in range(3):  # several input shapes per loaded model
            counts["cases"] += 1
            n, h, wd = int(rng.integers(1, 3)), int(rng.integers(1, 9)), int(rng.integers(1, 9))
            feeds = {"X": rng.random(random_shape([n, c, h, wd], rng), dtype=np.float32)}
            if not constant:
                feeds["W"] = rng.standard_normal(random_shape([length], rng)).astype(np.float32)
            if with_bias:
                feeds["B"] = rng.standard_normal(random_shape([m], rng)).astype(np.float32)
            if residual:
                feeds["Z"] = rng.standard_normal(random_shape([n, m, h, wd], rng)).astype(np.float32)
            try:
                (y,) = session.run(None, feeds)
            except Exception:
                counts["rejected_at_run"] += 1
                continue
            counts["ran"] += 1
            if y.ndim != 4 or y.shape[:2] != (feeds["X"].shape[0], m):
                print(f"wrong output shape {y.shape} for {attrs}", file=sys.stderr)
                return 1
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
