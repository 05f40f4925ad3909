"""Whole-model speed: the dense ONNX export against the pSConv export with the native kernels.

For each model, both exports run in onnxruntime (ORT_ENABLE_ALL, CPU) at every batch size and
thread count asked for. Repetitions alternate dense / pSConv so that load from other processes
hits both alike; the table reports medians and their ratio (dense / pSConv: > 1 is faster).

    .venv/bin/python benchmarks/model_speed.py                       # resnet18 (CIFAR, 4of9) and the sample
    .venv/bin/python benchmarks/model_speed.py --model resnet18 --reps 50 --json out.json

Models: ``resnet18`` (CIFAR-style, 3x32x32, random weights converted with sparsify 4of9 --
speed does not depend on the values), ``sample`` (samples/fashion_resnet20_4of9.pt, else the
dense sample converted to 4of9), or a path to a pscompress checkpoint.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from pscompress import runtime

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    """(label, LoadedModel) for a model name or checkpoint path."""
    import torch

    from pscompress.workstation import archs
    from pscompress.workstation.checkpoint import LoadedModel, load_model
    from pscompress.workstation.sparsify import sparsify

    if name == "resnet18":
        torch.manual_seed(0)
        module = archs.build("resnet18", in_channels=3, num_classes=10).eval()
        sparsify(module, "4of9", input_shape=(3, 32, 32), align=False)
        return "ResNet-18 CIFAR 3x32x32, 4of9 (random weights)", LoadedModel(module, "resnet18", meta={"input_shape": [3, 32, 32]})
    if name == "sample":
        tuned = ROOT / "samples" / "fashion_resnet20_4of9.pt"
        if tuned.is_file():
            return "sample ResNet-20 Fashion-MNIST 1x28x28, 4of9 fine-tuned", load_model(tuned)
        loaded = load_model(ROOT / "samples" / "fashion_resnet20.pt")
        sparsify(loaded.module, "4of9", input_shape=tuple(loaded.meta.get("input_shape") or (1, 28, 28)))
        return "sample ResNet-20 Fashion-MNIST 1x28x28, converted to 4of9", loaded
    return name, load_model(name)


def session(path: Path, threads: int, native: bool) -> ort.InferenceSession:
    so = runtime.session_options(threads=threads, native=native)
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def interleaved(sessions: dict[str, ort.InferenceSession], x: np.ndarray, reps: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds per run of each session, runs alternating between them."""
    feeds = {name: {s.get_inputs()[0].name: x} for name, s in sessions.items()}
    for _ in range(warmup):
        for name, s in sessions.items():
            s.run(None, feeds[name])
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(reps):
        for name, s in sessions.items():
            start = time.perf_counter()
            s.run(None, feeds[name])
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_model(name: str, batches: list[int], threads: list[int], reps: int, workdir: Path) -> list[dict]:
    from pscompress.exporters.onnx_export import export_onnx

    label, loaded = load(name)
    stem = workdir / Path(name).stem
    packed = export_onnx(loaded, stem.with_suffix(".psconv.onnx"))
    dense = export_onnx(loaded, stem.with_suffix(".dense.onnx"), dense=True)
    shape = packed.input_shape
    rows = []
    for t in threads:
        sessions = {"dense": session(Path(dense.path), t, native=False),
                    "psconv": session(Path(packed.path), t, native=True)}
        for b in batches:
            x = np.random.default_rng(0).random((b, *shape), dtype=np.float32)
            med = interleaved(sessions, x, reps)
            rows.append({"model": label, "batch": b, "threads": t, "dense_ms": med["dense"] * 1e3,
                         "psconv_ms": med["psconv"] * 1e3, "speedup": med["dense"] / med["psconv"],
                         "size_ratio": packed.bytes / dense.bytes})
            print(_row(rows[-1]), flush=True)
    return rows


def _row(r: dict) -> str:
    return (f"| {r['model']} | {r['batch']} | {r['threads']} | {r['dense_ms']:.2f} | {r['psconv_ms']:.2f} "
            f"| **{r['speedup']:.2f}x** | {r['size_ratio']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="resnet18, sample or a checkpoint path (repeatable)")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes  [1,8]")
    parser.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts  [1,2]")
    parser.add_argument("--reps", type=int, default=30, help="timed runs per configuration and export  [30]")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()
    if not runtime.native_available():
        raise SystemExit("the native kernel library is not built: `.venv/bin/pip install -e .` (docs/runtime.md)")
    batches = [int(b) for b in args.batches.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    print(f"onnxruntime {ort.__version__}, kernel path {runtime.cpu_path()}, {args.reps} interleaved reps, medians")
    print("| model | batch | threads | dense ms | pSConv ms | speedup | file size ratio |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.model or ["resnet18", "sample"]:
            rows += bench_model(name, batches, threads, args.reps, Path(tmp))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
