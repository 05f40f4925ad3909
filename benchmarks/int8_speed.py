"""Whole-model int8 speed over the benchmark model set: what a user would pick instead, side by side.

For each model of benchmarks/model_set.py and each pattern: convert and export it as
model_set_speed.py does, quantize the pSConv export (pscompress.workstation.quantize, calibrated
on random images: speed does not depend on the ranges), which also gives onnxruntime's own
quantize_static of the dense equivalent (QDQ, per-channel s8 weights, u8 activations). Then five
sessions are timed in interleaved rounds: onnxruntime fp32 dense, onnxruntime int8 dense,
pSConv fp32 (native), pSConv int8 (native, untuned) and pSConv int8 tuned (``--tune``).
Ratios are against onnxruntime int8 dense (> 1: faster than it); 1-thread CPU-time ratios use
the calling thread's CPU time. File sizes are against the fp32 dense export.

    .venv/bin/python benchmarks/int8_speed.py --models resnet18_cifar vgg16_cifar --patterns 4of9 2of9

The header and every JSON record name the CPU model, the kernel path, the onnxruntime version,
threads and batch.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_set import MODELS  # noqa: E402
from model_set_speed import convert_and_export, interleaved, log, session  # noqa: E402

from pscompress import runtime  # noqa: E402
from pscompress.board.tune import cpu_model, tune_model  # noqa: E402
from pscompress.workstation.quantize import quantize_model  # noqa: E402

# int8 files against the int8 dense model: the native kernels may round an output one step apart
INT8_TOLERANCE = 0.05
CALIBRATION = 8


def quantized(packed_path: Path, shape: tuple[int, ...], workdir: Path) -> tuple[Path, Path]:
    """(pSConv int8 file, onnxruntime int8 dense file) of the pSConv export at ``packed_path``."""
    rng = np.random.default_rng(0)
    batches = iter([rng.random((CALIBRATION // 2, *shape), dtype=np.float32) for _ in range(2)])
    start = time.perf_counter()
    packed, qdq, left_dense = quantize_model(onnx.load(packed_path), batches)
    paths = packed_path.with_suffix(".int8.onnx"), packed_path.with_suffix(".dense-int8.onnx")
    for model, path in zip((packed, qdq), paths):
        onnx.save(model, path)
    log(f"  quantized in {time.perf_counter() - start:.0f} s" + (f"; left dense: {left_dense}" if left_dense else ""))
    return paths


def bench(name: str, pattern: str, batches: list[int], threads: int, tune: bool, repeats: int, budget_s: float,
          workdir: Path, environment: dict) -> list[dict]:
    _, shape, _ = MODELS[name]
    dense_path, packed_path, info = convert_and_export(name, pattern, workdir)
    int8_path, int8_dense_path = quantized(packed_path, shape, workdir)
    sizes = {key: path.stat().st_size / dense_path.stat().st_size
             for key, path in (("int8_dense", int8_dense_path), ("psconv", packed_path), ("psconv_int8", int8_path))}
    rows = []
    for batch in batches:
        sessions = {"dense": session(str(dense_path), threads, native=False),
                    "int8_dense": session(str(int8_dense_path), threads, native=False),
                    "psconv": session(str(packed_path), threads, native=True),
                    "psconv_int8": session(str(int8_path), threads, native=True)}
        checks = {"int8_dense": ("int8_dense", 0.0), "psconv_int8": ("int8_dense", INT8_TOLERANCE)}
        plan = None
        if tune:
            tuned, plan = tune_model(int8_path, batch=batch, threads=threads, progress=False)
            sessions["tuned_int8"] = session(tuned, threads, native=True)
            checks["tuned_int8"] = ("int8_dense", INT8_TOLERANCE)
        x = np.random.default_rng(1).random((batch, *shape), dtype=np.float32)
        med = interleaved(sessions, x, repeats, budget_s, checks)
        clock = 1 if threads == 1 else 0  # CPU time on one thread, wall time otherwise
        base = med["int8_dense"][clock]
        row = {**environment, "model": name, "pattern": pattern, "batch": batch, "threads": threads,
               "clock": "thread CPU time" if clock else "wall", "repeats": repeats, **info,
               "size_vs_fp32_dense": sizes,
               "ms": {key: value[0] * 1e3 for key, value in med.items()},
               "vs_int8_dense": {key: base / value[clock] for key, value in med.items()}}
        if plan:
            row["tune_plan"] = f"{plan['plan']} ({sum(n['choice'] == 'dense' for n in plan['nodes'])}/{len(plan['nodes'])} dense)"
        rows.append(row)
        print(line(row), flush=True)
    return rows


COLUMNS = ("dense", "int8_dense", "psconv", "psconv_int8", "tuned_int8")
HEADER = ("| model | pattern | batch | fp32 dense ms | int8 dense ms | pSConv fp32 ms | pSConv int8 ms | "
          "pSConv int8 tuned ms | vs int8 dense: fp32 dense / pSConv fp32 / **pSConv int8** / tuned | "
          "size vs fp32 dense: int8 dense / pSConv fp32 / pSConv int8 | tune plan |\n" + "|---" * 11 + "|")


def line(r: dict) -> str:
    ms = " | ".join(f"{r['ms'][k]:.2f}" if k in r["ms"] else "-" for k in COLUMNS)
    v = r["vs_int8_dense"]
    ratios = " / ".join((f"**{v[k]:.2f}x**" if k == "psconv_int8" else f"{v[k]:.2f}x") if k in v else "-"
                        for k in ("dense", "psconv", "psconv_int8", "tuned_int8"))
    sizes = " / ".join(f"{r['size_vs_fp32_dense'][k]:.2f}x" for k in ("int8_dense", "psconv", "psconv_int8"))
    return f"| {r['model']} | {r['pattern']} | {r['batch']} | {ms} | {ratios} | {sizes} | {r.get('tune_plan', '-')} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=["resnet18_cifar", "vgg16_cifar",
                                                                             "sample_resnet20"], metavar="NAME")
    parser.add_argument("--patterns", nargs="+", default=["4of9"])
    parser.add_argument("--batches", nargs="+", type=int, help="batch sizes (default: each model's own)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tune", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--budget", type=float, default=0.05)
    parser.add_argument("--json", type=Path, metavar="OUT")
    args = parser.parse_args(argv)
    if not runtime.native_available():
        print("the native kernel library is not built (docs/runtime.md)", file=sys.stderr)
        return 2
    environment = {"cpu": cpu_model(), "isa": runtime.cpu_path(), "onnxruntime": ort.__version__,
                   "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    print(f"cpu: {environment['cpu']} | kernel path: {environment['isa']} | onnxruntime {environment['onnxruntime']} "
          f"| {environment['date']} | threads {args.threads} | {args.repeats} interleaved rounds, medians; ratios "
          f"= onnxruntime int8 dense / the variant ({'thread CPU time' if args.threads == 1 else 'wall time'})")
    print(HEADER, flush=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for pattern in args.patterns:
                log(f"{name} {pattern}")
                rows += bench(name, pattern, args.batches or list(MODELS[name][2]), args.threads, args.tune,
                              args.repeats, args.budget, Path(tmp), environment)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
