"""Throws randomised malformed PSConv/PSConvAdd models and inputs at the native kernels.

Each model starts from a valid case of runtime/tests/fuzz_cases.py (the whole contract), then
has 1 to 3 attributes mutated (deleted, wrong length, a bad element or value, the wrong type)
in 70% of the models, a W of the wrong length in 30%, and 3 input shapes each (some of the
wrong rank or size). Run under an AddressSanitizer build (see tests/test_runtime_asan.py).
Every case must end in either a result of the right shape or a clean onnxruntime error; a
crash or a sanitizer report fails the caller. Prints one JSON summary line.

runtime/tests/fuzz_differential.py --mutate runs the same models in forked workers, once per
CPU path, so that a crash is pinned to its model instead of ending the run.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fuzz_cases as fc  # noqa: E402
import psconv_models  # noqa: E402

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
        kernel, pats = attrs["kernel_shape"], attrs["patterns"]
        m, cg = attrs["out_channels"], attrs["in_channels"] // attrs.get("group", 1)
        k2 = kernel[0] * kernel[1]
        if not (0 < k2 <= 63 and 0 < m <= 1024 and 0 < cg <= 1024 and pats):
            return 7
        mask = (1 << k2) - 1
        return fc.packed_length(kernel, [p & mask for p in pats], attrs.get("shift", 0), m, cg)
    except (KeyError, TypeError, IndexError, ZeroDivisionError, ValueError, OverflowError):
        return 7


def random_shape(good: list[int], rng: np.random.Generator) -> list[int]:
    shape = list(good)
    roll = rng.random()
    if roll < 0.05:
        shape = shape[:-1] if rng.random() < 0.5 else shape + [1]  # wrong rank
    elif roll < 0.2 and shape:
        d = int(rng.integers(0, len(shape)))
        shape[d] = max(0, shape[d] + int(rng.choice([-2, -1, 1, 3])))
    return shape


def mutated_job(seed: int, index: int) -> tuple[dict, int, fc.Case]:
    """(job for fuzz_cases.run_job, the out_channels outputs must have, the valid case it came from)."""
    case = fc.generate(seed, index)
    rng = np.random.default_rng([seed, index, 2])
    attrs = mutate_attributes(case.attrs, rng) if rng.random() < 0.7 else dict(case.attrs)
    residual = bool(rng.random() < 0.4)
    length = packed_length(attrs)
    if rng.random() < 0.3:
        length = max(0, length + int(rng.choice([-1, 1, 5])))
    length = min(length, 1 << 22)
    constant = rng.random() < 0.5
    w = rng.standard_normal(length).astype(np.float32)
    with_bias = bool(rng.random() < 0.7)
    c = attrs.get("in_channels", 1) if isinstance(attrs.get("in_channels"), int) else 1
    m = attrs.get("out_channels", 1) if isinstance(attrs.get("out_channels"), int) else 1
    c, m = min(max(c, 1), 1024), min(max(m, 1), 1024)
    feeds_list = []
    for _ in range(3):  # several input shapes per loaded model
        n, h, wd = int(rng.integers(1, 3)), case.h, case.w
        oh, ow = case.output_shape[2:]
        feeds = {"X": rng.random(random_shape([n, c, h, wd], rng), dtype=np.float32)}
        if not constant:
            feeds["W"] = rng.standard_normal(random_shape([length], rng)).astype(np.float32)
        if with_bias:
            feeds["B"] = rng.standard_normal(random_shape([m], rng)).astype(np.float32)
        if residual:
            feeds["Z"] = rng.standard_normal(random_shape([n, m, oh, ow], rng)).astype(np.float32)
        feeds_list.append(feeds)
    model = psconv_models.psconv_model(attrs, residual=residual, bias=with_bias,
                                       constants={"W": w} if constant else {}).SerializeToString()
    return {"model": model, "feeds": feeds_list, "outputs": None}, m, case


def tally(result: dict, job: dict, m: int, counts: collections.Counter) -> str | None:
    """Counts a job's outcomes; returns what is wrong with a result that ran, if anything."""
    counts["cases"] += 1
    if "load_error" in result:
        counts["rejected_at_load"] += 1
        return None
    for feeds, run in zip(job["feeds"], result["runs"]):
        counts["cases"] += 1
        if "error" in run:
            counts["rejected_at_run"] += 1
            continue
        counts["ran"] += 1
        (y,) = run["outputs"]
        if y.ndim != 4 or y.shape[:2] != (feeds["X"].shape[0], m):
            return f"wrong output shape {list(y.shape)} for X {list(feeds['X'].shape)}, M={m}"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("library")
    parser.add_argument("--cases", type=int, default=1000, help="models and runs together (each model: 1 + 3)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    counts: collections.Counter = collections.Counter({"cases": 0, "ran": 0, "rejected_at_load": 0,
                                                       "rejected_at_run": 0})
    index = 0
    while counts["cases"] < args.cases:
        job, m, case = mutated_job(args.seed, index)
        problem = tally(fc.run_job(job, args.library, threads=2), job, m, counts)
        if problem:
            print(f"{problem}: case {args.seed}:{index} {case.describe()}", file=sys.stderr)
            return 1
        index += 1
    print(json.dumps(dict(counts)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
