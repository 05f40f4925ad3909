"""int8 QLinearPSConv vs onnxruntime's dense QLinearConv (the same masked int8 weights) vs the fp32
native PSConv, on 3x3 layers at the 4of9 squares patterns, 1 intra-op thread: dense ones (the int8
GEMM kernels) and depthwise ones (group = C: the int8 depthwise kernel, qdwconv.h).

Process CPU time (time.process_time) per run, the three sessions' runs interleaved so that machine
noise hits them alike; medians compared. Prints the CPU model, the kernel path, the onnxruntime
version and the ratios. Not a unit test.

    .venv/bin/python benchmarks/int8_layer_speed.py
    .venv/bin/python benchmarks/int8_layer_speed.py --runs 50 --layers depthwise
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "runtime" / "tests"))  # the model builders

import psconv_models  # noqa: E402
import qlinear_models as qm  # noqa: E402
from pscompress import runtime  # noqa: E402

SQUARES = [27, 54, 216, 432]  # 4of9
LAYERS = {  # (channels in = out, image size, group = 1 or C)
    "dense": [(64, 32, 1), (256, 8, 1)],
    "depthwise": [(c, size, c) for c in (96, 144) for size in (28, 14, 7)],
}


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")


def sessions(channels: int, group: int) -> dict:
    """name -> session, for one layer."""
    rng = np.random.default_rng(0)
    attrs = dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], group=group,
                 in_channels=channels, out_channels=channels, patterns=SQUARES, shift=0)
    mask = qm.kept_mask(channels, channels // group, (3, 3), SQUARES, 0)
    w_int8 = (rng.integers(-128, 128, mask.shape) * mask).astype(np.int8)
    quant = {"x_scale": np.array(0.02, np.float32), "x_zero_point": np.array(128, np.uint8),
             "w_scale": rng.uniform(0.002, 0.02, channels).astype(np.float32),
             "y_scale": np.array(0.5, np.float32), "y_zero_point": np.array(128, np.uint8)}
    b = rng.integers(-1000, 1000, channels).astype(np.int32)
    options = runtime.session_options(threads=1, native=True)
    w_float = (w_int8.astype(np.float32) * 0.01).astype(np.float32)
    fp32_attrs = {**attrs, "clip_min": float("-inf"), "clip_max": float("inf")}
    fp32_model = psconv_models.psconv_model(fp32_attrs, constants={"W": w_float[mask], "B": b.astype(np.float32)})
    models = {
        "int8 QLinearPSConv": qm.qlinear_psconv_model(attrs, qm.packed(w_int8, mask), quant, b),
        "ORT QLinearConv (dense)": qm.qlinear_conv_model(attrs, w_int8, quant, b),
        "fp32 PSConv": fp32_model.SerializeToString(),
    }
    return {name: ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
            for name, model in models.items()}


def median_cpu_times(runs: dict, feeds: dict, count: int) -> dict:
    times = {name: [] for name in runs}
    for name, session in runs.items():  # warm-up
        session.run(None, feeds[name])
    for _ in range(count):
        for name, session in runs.items():
            start = time.process_time()
            session.run(None, feeds[name])
            times[name].append(time.process_time() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--layers", choices=["all", *LAYERS], default="all")
    args = parser.parse_args()
    layers = [layer for kind, shapes in LAYERS.items() if args.layers in ("all", kind) for layer in shapes]
    print(f"CPU: {cpu_model()}; kernel path: {runtime.cpu_path()}; onnxruntime {ort.__version__}; 1 thread")
    rng = np.random.default_rng(1)
    for channels, size, group in layers:
        runs = sessions(channels, group)
        for batch in (1, 8):
            x_u8 = rng.integers(0, 256, (batch, channels, size, size)).astype(np.uint8)
            x_f32 = ((x_u8.astype(np.float32) - 128) * 0.02).astype(np.float32)
            feeds = {name: {"X": x_f32 if name.startswith("fp32") else x_u8} for name in runs}
            t = median_cpu_times(runs, feeds, args.runs)
            q, dense, fp32 = t["int8 QLinearPSConv"], t["ORT QLinearConv (dense)"], t["fp32 PSConv"]
            kind = "depthwise" if group > 1 else "dense"
            print(f"{kind} C=M={channels} {size}x{size} batch {batch}: " +
                  ", ".join(f"{name} {ms * 1e3:.3f} ms" for name, ms in t.items()) +
                  f" | dense QLinearConv / int8 pSConv = {dense / q:.2f}x, fp32 pSConv / int8 pSConv = {fp32 / q:.2f}x")


if __name__ == "__main__":
    main()
