"""Native PSConv kernel vs onnxruntime's dense Conv on the 3x3 layer shapes of a CNN.

For every layer, batch size and thread count, both sessions hold the same masked weights
(the dense one as a standard Conv node with the same group count, ORT_ENABLE_ALL); their runs
are interleaved and the medians compared, so machine noise hits both alike. Prints a table and
a JSON document with dense_time / psconv_time per case and the geometric mean per pattern.
Not a unit test.

    .venv/bin/python benchmarks/kernel_speed.py            # full run (a few minutes)
    .venv/bin/python benchmarks/kernel_speed.py --quick    # smoke run
    .venv/bin/python benchmarks/kernel_speed.py --layers resnet20   # the sample's narrow layers
    .venv/bin/python benchmarks/kernel_speed.py --layers mobilenetv2 --threads 1   # depthwise
    PSCOMPRESS_KERNEL=avx2-fma .venv/bin/python benchmarks/kernel_speed.py ...      # another CPU path
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from pscompress import runtime
from pscompress.core.patterns import parse_pattern

# (in_channels, out_channels, input size, stride, group): the 3x3 convolutions of ResNet-18 and
# VGG-16 (each distinct shape once) for CIFAR, the narrow ones of ResNet-20 on 28x28 images (the
# Fashion-MNIST sample), and the depthwise ones (group = channels) of MobileNetV2 at 224x224.
LAYERS = {
    "resnet18": [(64, 64, 32, 1, 1), (128, 128, 16, 1, 1), (256, 256, 8, 1, 1), (512, 512, 4, 1, 1),
                 (64, 128, 32, 2, 1), (128, 256, 16, 2, 1), (256, 512, 8, 2, 1)],
    "vgg16": [(64, 64, 32, 1, 1), (64, 128, 16, 1, 1), (128, 128, 16, 1, 1), (128, 256, 8, 1, 1), (256, 256, 8, 1, 1),
              (256, 512, 4, 1, 1), (512, 512, 4, 1, 1), (512, 512, 2, 1, 1)],
    "resnet20": [(16, 16, 28, 1, 1), (32, 32, 14, 1, 1), (64, 64, 7, 1, 1), (16, 32, 28, 2, 1), (32, 64, 14, 2, 1)],
    "mobilenetv2": [(c, c, h, s, c) for c, h, s in [(32, 112, 1), (96, 112, 2), (144, 56, 1), (144, 56, 2),
                                                     (192, 28, 1), (192, 28, 2), (384, 14, 1), (576, 14, 1),
                                                     (576, 14, 2), (960, 7, 1)]],
}
PATTERNS = ["4of9", "2of9"]


def masked_weight(cg: int, m: int, masks: list[int], rng: np.random.Generator) -> np.ndarray:
    """Conv's [M, Cg, 3, 3] weights: kernel (o, i) keeps masks[(o + i) % P] (shift 0)."""
    o, i = np.meshgrid(np.arange(m), np.arange(cg), indexing="ij")
    keep = (np.array(masks)[(o + i) % len(masks)][..., None] >> np.arange(9)) & 1
    return (rng.standard_normal((m, cg, 9)) * keep).astype(np.float32).reshape(m, cg, 3, 3)


def model(node: onnx.NodeProto, inits: list[onnx.TensorProto], domains: list) -> bytes:
    graph = helper.make_graph([node], "bench", [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), *domains])
    m.ir_version = 10
    return m.SerializeToString()


def sessions(c: int, m: int, stride: int, group: int, masks: list[int], threads: int, rng: np.random.Generator):
    wd = masked_weight(c // group, m, masks, rng)
    bias = rng.standard_normal(m).astype(np.float32)
    common = dict(kernel_shape=[3, 3], strides=[stride, stride], pads=[1, 1, 1, 1], group=group)
    dense = model(helper.make_node("Conv", ["X", "W", "B"], ["Y"], **common),
                  [numpy_helper.from_array(wd, "W"), numpy_helper.from_array(bias, "B")], [])
    sparse = model(
        helper.make_node("PSConv", ["X", "W", "B"], ["Y"], domain="ai.pscompress", dilations=[1, 1],
                         in_channels=c, out_channels=m, patterns=masks, shift=0, **common),
        [numpy_helper.from_array(wd[wd != 0], "W"), numpy_helper.from_array(bias, "B")],
        [helper.make_opsetid("ai.pscompress", 1)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    dense_sess = ort.InferenceSession(dense, opts, providers=["CPUExecutionProvider"])
    sparse_sess = runtime.create_session(sparse, threads=threads, native=True)
    return dense_sess, sparse_sess


def time_per_run(sess: ort.InferenceSession, feeds: dict, budget_s: float) -> tuple[float, float]:
    """One sample: (wall, calling-thread CPU) seconds per run over runs lasting about budget_s.

    With one intra-op thread onnxruntime computes on the calling thread, so its CPU time is
    the kernel's own cost, unaffected by other processes taking the core away (shared CI).
    """
    start, cpu_start, runs = time.perf_counter(), time.thread_time(), 0
    while True:
        sess.run(None, feeds)
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= budget_s:
            return elapsed / runs, (time.thread_time() - cpu_start) / runs


def measure(dense, sparse, x: np.ndarray, rounds: int, budget_s: float) -> tuple[float, float, float, float]:
    """Median wall times of both, their ratio, and the ratio of median CPU times."""
    feeds = {"X": x}
    a, b = dense.run(None, feeds)[0], sparse.run(None, feeds)[0]
    scale = max(1.0, float(np.abs(a).max()))
    if not np.allclose(a, b, rtol=1e-4, atol=1e-4 * scale):
        raise SystemExit("PSConv disagrees with dense Conv: not benchmarking a wrong kernel")
    dense_t, sparse_t = [], []
    for r in range(rounds):  # interleaved, alternating who goes first
        pair = [(dense, dense_t), (sparse, sparse_t)]
        for sess, out in (pair if r % 2 == 0 else pair[::-1]):
            out.append(time_per_run(sess, feeds, budget_s))
    d, s = statistics.median(t[0] for t in dense_t), statistics.median(t[0] for t in sparse_t)
    cpu = statistics.median(t[1] for t in dense_t) / statistics.median(t[1] for t in sparse_t)
    return d, s, d / s, cpu


def geomean(values: list[float]) -> float:
    return float(np.exp(np.mean(np.log(values)))) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer cases and repetitions")
    parser.add_argument("--json", metavar="PATH", help="also write the JSON document to PATH")
    parser.add_argument("--layers", choices=sorted(LAYERS), default="resnet18",
                        help="which network's layer shapes (default resnet18)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved repetitions per case (default 7)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op thread counts (default 1 2)")
    parser.add_argument("--patterns", nargs="+", choices=PATTERNS, default=PATTERNS,
                        help=f"pattern families (default {' '.join(PATTERNS)})")
    args = parser.parse_args()
    if not runtime.native_available():
        print("the native library is not built (see docs/runtime.md)", file=sys.stderr)
        return 2
    rounds = args.rounds or (3 if args.quick else 7)
    budget = 0.02 if args.quick else 0.05
    layers = LAYERS[args.layers][::3] if args.quick else LAYERS[args.layers]
    batches, thread_counts = ([1], args.threads) if args.quick else ([1, 8], args.threads)
    rng = np.random.default_rng(0)
    results = []
    header = f"{'pattern':7} {'C':>4} {'M':>4} {'g':>4} {'H':>3} {'s':>2} {'N':>2} {'thr':>3} {'dense ms':>9} {'psconv ms':>9} {'speedup':>8} {'cpu-time':>8}"
    print(f"cpu path: {runtime.cpu_path()}   onnxruntime {ort.__version__}")
    print(header)
    for name in args.patterns:
        masks = list(parse_pattern(name).bitmasks)
        for c, m, h, stride, group in layers:
            for threads in thread_counts:
                dense, sparse = sessions(c, m, stride, group, masks, threads, rng)
                for n in batches:
                    x = rng.random((n, c, h, h), dtype=np.float32)
                    d, s, ratio, cpu = measure(dense, sparse, x, rounds, budget)
                    results.append(dict(pattern=name, c=c, m=m, group=group, h=h, stride=stride, batch=n, threads=threads,
                                        dense_ms=d * 1e3, psconv_ms=s * 1e3, speedup=ratio,
                                        cpu_speedup=cpu if threads == 1 else None))
                    cpu_text = f"{cpu:7.2f}x" if threads == 1 else f"{'-':>8}"
                    print(f"{name:7} {c:4} {m:4} {group:4} {h:3} {stride:2} {n:2} {threads:3} {d*1e3:9.3f} {s*1e3:9.3f} "
                          f"{ratio:7.2f}x {cpu_text}", flush=True)
    summary = {}
    for name in args.patterns:
        ratios = [r["speedup"] for r in results if r["pattern"] == name]
        worst = min((r for r in results if r["pattern"] == name), key=lambda r: r["speedup"])
        cpu_ratios = [r["cpu_speedup"] for r in results if r["pattern"] == name and r["cpu_speedup"]]
        summary[name] = dict(geomean_speedup=geomean(ratios), worst_speedup=worst["speedup"],
                             worst_case={k: worst[k] for k in ("c", "m", "group", "h", "stride", "batch", "threads")},
                             geomean_cpu_speedup_1_thread=geomean(cpu_ratios),
                             worst_cpu_speedup_1_thread=min(cpu_ratios, default=float("nan")))
        print(f"{name}: geometric-mean speedup {summary[name]['geomean_speedup']:.2f}x, "
              f"worst {worst['speedup']:.2f}x (C={worst['c']} M={worst['m']} g={worst['group']} H={worst['h']} "
              f"s={worst['stride']} N={worst['batch']} threads={worst['threads']}); "
              f"1-thread CPU time: geomean {summary[name]['geomean_cpu_speedup_1_thread']:.2f}x, "
              f"worst {summary[name]['worst_cpu_speedup_1_thread']:.2f}x")
    document = dict(cpu_path=runtime.cpu_path(), onnxruntime=ort.__version__, layers=args.layers, rounds=rounds,
                    results=results, summary=summary)
    text = json.dumps(document, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
