"""The model zoo's table (docs/zoo.md): what converts, file sizes, parity and tuned speed, per zoo model.

For each model of ``pscompress.workstation.zoo.ZOO`` (full size, except where ``BENCH`` says otherwise):
build it (seeded random weights), convert it with ``sparsify`` and the entry's patterns (every conv of a
kernel size a pattern is for, but the first one the model runs), export it as dense ONNX (``dense=True``),
pSConv ONNX and TFLite, and compare every output of each with PyTorch on one random image (max abs
difference, native and portable for ONNX). Then the pSConv export is tuned for batch 1 and 1 thread
(``tune_model``, what ``pscompress tune`` runs) and timed against the dense export with
benchmarks/model_set_speed.py's ``interleaved`` (rounds alternating the order, medians; on one thread
the calling thread's CPU time, which is where onnxruntime computes, so other jobs taking the core do
not count). Ratios are dense / tuned pSConv (> 1: pSConv faster).

    .venv/bin/python benchmarks/zoo_table.py --json zoo.json
    .venv/bin/python benchmarks/zoo_table.py --models face_pnet senet --size small --repeats 3

The header names the CPU model, the kernel path, the onnxruntime version, the date and the load
average at the start and the end. Progress goes to stderr.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_set_speed import interleaved, log, session  # noqa: E402

from pscompress import runtime  # noqa: E402
from pscompress.board.tune import cpu_model  # noqa: E402

# Models benchmarked at another size than their full one, and why (2 CPU cores).
BENCH = {
    "unet": ({"base": 32, "depth": 4, "num_classes": 2}, (3, 128, 128),
             "base 32 at 3x128x128 (the full base-64 U-Net at 256x256 is about 50 GMAC per image)"),
}


def load_average() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def _outputs(module: torch.nn.Module, x: np.ndarray) -> list[np.ndarray]:
    from pscompress.workstation.model_io import named_outputs

    with torch.no_grad():
        return [v.numpy() for v in named_outputs(module(torch.from_numpy(x))).values()]


def _max_abs(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    assert len(got) == len(want)
    return max(float(np.abs(np.asarray(g).reshape(w.shape) - w).max()) for g, w in zip(got, want))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def bench(name: str, size: str, repeats: int, budget_s: float, speed: bool, workdir: Path) -> dict:
    from pscompress.board.tune import tune_model
    from pscompress.exporters.onnx_export import export_onnx
    from pscompress.exporters.tflite import export_tflite
    from pscompress.workstation.checkpoint import LoadedModel
    from pscompress.workstation.layers import PSConv2d
    from pscompress.workstation.sparsify import sparsify
    from pscompress.workstation.zoo import ZOO, build

    entry = ZOO[name]
    overrides, shape, why = ({}, entry.input_shape(size), None)
    if size == "full" and name in BENCH:
        overrides, shape, why = BENCH[name]
    module = build(name, size, **overrides)
    params = sum(p.numel() for p in module.parameters())
    report = sparsify(module, list(entry.patterns), input_shape=shape, align=False)
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    row: dict = {"model": name, "size": size if why is None else why, "input_shape": list(shape), "params": params,
                 "patterns": list(entry.patterns), "psconv": sum(isinstance(m, PSConv2d) for m in convs),
                 "convs": len(convs), "macs_ratio": report.macs_dense / report.macs}
    loaded = LoadedModel(module, None, meta={"input_shape": list(shape)})
    stem = workdir / name
    x = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    want = _outputs(module.eval(), x)

    start = time.perf_counter()
    dense = export_onnx(loaded, stem.with_suffix(".dense.onnx"), dense=True)
    packed = export_onnx(loaded, stem.with_suffix(".psconv.onnx"))
    row.update(dense_onnx_bytes=dense.bytes, psconv_onnx_bytes=packed.bytes, psconv_nodes=packed.psconv_layers)
    for key, path, native in (("dense_onnx", dense.path, False), ("onnx_portable", packed.path, False),
                              ("onnx_native", packed.path, True)):
        if native and not runtime.native_available():
            continue
        got = runtime.create_session(str(path), threads=1, native=native).run(None, {"input": x})
        row[f"diff_{key}"] = _max_abs(got, want)
    try:
        from pscompress.board.tflite_predictor import TFLitePredictor

        tflite = export_tflite(loaded, stem.with_suffix(".tflite"))
        row["tflite_bytes"] = tflite.bytes
        predictor = TFLitePredictor(tflite.path)
        got = list(predictor.predict_all(x).values()) if hasattr(predictor, "predict_all") else [predictor.predict(x)]
        row["diff_tflite"] = _max_abs(got, want)
    except Exception as exc:  # reported in the table; the other columns still count
        row["tflite_error"] = _first_line(exc)
    log(f"  {name}: exported in {time.perf_counter() - start:.0f} s, {row['psconv']}/{row['convs']} convs pSConv")

    if speed and runtime.native_available():
        start = time.perf_counter()
        tuned, plan = tune_model(packed.path, batch=1, threads=1, progress=False)
        row.update(tune_plan=plan["plan"], tune_dense_nodes=sum(n["choice"] == "dense" for n in plan["nodes"]))
        log(f"  {name}: tuned in {time.perf_counter() - start:.0f} s, plan {plan['plan']}")
        sessions = {"dense": session(str(dense.path), 1, native=False), "tuned": session(tuned, 1, native=True)}
        med = interleaved(sessions, x, repeats, budget_s)
        row.update(dense_ms=med["dense"][0] * 1e3, tuned_ms=med["tuned"][0] * 1e3,
                   speedup=med["dense"][0] / med["tuned"][0], cpu_speedup=med["dense"][1] / med["tuned"][1])
    return row


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} KB"


def _diff(v: float | None) -> str:
    return "-" if v is None else f"{v:.1e}"


FOOTNOTES: dict[str, int] = {}  # each TFLite export error, numbered as first met


def line(r: dict) -> str:
    if "error" in r:
        return f"| {r['model']} | FAILED: {r['error']} |"
    shape = "x".join(map(str, r["input_shape"]))
    if "tflite_error" in r:
        tflite = f"not exported ({FOOTNOTES.setdefault(r['tflite_error'], len(FOOTNOTES) + 1)})"
    else:
        tflite = _size(r.get("tflite_bytes"))
    speed = (f"{r['dense_ms']:.2f} | {r['tuned_ms']:.2f} | {r['speedup']:.2f}x | **{r['cpu_speedup']:.2f}x** | "
             f"{r['tune_plan']} ({r['tune_dense_nodes']}/{r['psconv_nodes']} dense)") \
        if "tuned_ms" in r else "- | - | - | - | -"
    return (f"| {r['model']} | {shape} | {r['params'] / 1e6:.2f} M | {' '.join(r['patterns'])} | {r['psconv']} / {r['convs']} | "
            f"{r['macs_ratio']:.2f}x | {_size(r['dense_onnx_bytes'])} | {_size(r['psconv_onnx_bytes'])} | {tflite} | "
            f"{_diff(r.get('diff_onnx_portable'))} / {_diff(r.get('diff_onnx_native'))} | {_diff(r.get('diff_tflite'))} | {speed} |")


HEADER = ("| model | input | params | patterns | pSConv / convs | fewer MACs | dense ONNX | pSConv ONNX | TFLite | "
          "max abs diff ONNX portable / native | max abs diff TFLite | dense ms | tuned ms | speedup | CPU-time speedup | "
          "tune plan |\n" + "|---" * 16 + "|")


def main(argv: list[str] | None = None) -> int:
    from pscompress.workstation.zoo import SIZES, ZOO

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(ZOO), default=list(ZOO), metavar="NAME",
                        help=f"zoo models (default all: {', '.join(ZOO)})")
    parser.add_argument("--size", choices=SIZES, default="full", help="configuration (default full)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--budget", type=float, default=0.05, help="seconds of back-to-back runs per sample (default 0.05)")
    parser.add_argument("--speed", action=argparse.BooleanOptionalAction, default=True,
                        help="tune and time batch 1, 1 thread (default on; needs the native library)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write every record as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import pscompress

    environment = {"cpu": cpu_model(), "isa": runtime.cpu_path() if runtime.native_available() else "no native library",
                   "onnxruntime": ort.__version__, "pscompress": pscompress.__version__, "torch": torch.__version__,
                   "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   "load_average_start": load_average()}
    print(f"cpu: {environment['cpu']} | kernel path: {environment['isa']} | onnxruntime {environment['onnxruntime']} | "
          f"pscompress {environment['pscompress']} | {environment['date']} | load average {environment['load_average_start']} "
          f"(1/5/15 min) | batch 1, 1 thread, {args.repeats} interleaved rounds, medians; speedup = dense / tuned pSConv",
          flush=True)
    print(HEADER, flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            log(name)
            try:
                row = bench(name, args.size, args.repeats, args.budget, args.speed, Path(tmp))
            except Exception as exc:  # one model failing is reported, the others still run
                row = {"model": name, "error": f"{type(exc).__name__}: {_first_line(exc)}"}
            rows.append({**environment, **row})
            print(line(row), flush=True)
    for error, number in FOOTNOTES.items():
        print(f"({number}) TFLite: {', '.join(r['model'] for r in rows if r.get('tflite_error') == error)}: {error}")
    print(f"load average at the end: {load_average()}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
