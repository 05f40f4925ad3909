"""Whole-model speed over the benchmark model set: dense ONNX vs pSConv (untuned, tuned) in one run.

For each model of benchmarks/model_set.py and each pattern: build it, convert it with sparsify
(every 3x3 conv but the first the model runs, depthwise and grouped ones included), export it
twice (``dense=True`` and pSConv) into a temporary folder, and per thread count and batch
optionally tune the pSConv export (``tune_model``). Then the dense, untuned and tuned sessions
are timed round by round, interleaved (order alternating), and their medians compared: wall time,
and on one thread the calling thread's CPU time (onnxruntime computes in the calling thread,
so other processes taking the core do not count). With more threads, pool spinning is off on
every side (session.intra_op.allow_spinning=0). Ratios are dense / pSConv (> 1: pSConv faster).

    .venv/bin/python benchmarks/model_set_speed.py --models sample_resnet20 --threads 1 --no-tune
    .venv/bin/python benchmarks/model_set_speed.py --patterns 4of9 2of9 --threads 1 2 --json out.json

Every record (the printed header and each JSON record) names the CPU model, the kernel path,
the onnxruntime version, threads and batch. Progress goes to stderr.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernel_speed import time_per_run  # noqa: E402
from model_set import MODELS, conv_kinds  # noqa: E402

from pscompress import runtime  # noqa: E402
from pscompress.board.tune import cpu_model  # noqa: E402


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def session(model: str | bytes, threads: int, native: bool) -> ort.InferenceSession:
    so = runtime.session_options(threads=threads, native=native)
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads > 1:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def interleaved(sessions: dict[str, ort.InferenceSession], x: np.ndarray, repeats: int, budget_s: float,
                checks: dict[str, tuple[str, float]] | None = None) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds per run of each session; rounds alternate the order. Before timing,
    each session's output is compared with a reference session's: ``checks`` maps a session to
    (reference, relative tolerance), by default every one to ("dense", 1e-3)."""
    feeds = {name: {s.get_inputs()[0].name: x} for name, s in sessions.items()}
    outputs = {name: s.run(None, feeds[name])[0] for name, s in sessions.items()}  # warm-up, packs weights
    for name, out in outputs.items():
        against, tolerance = (checks or {}).get(name, ("dense", 1e-3))
        reference = outputs[against]
        diff = float(np.abs(out - reference).max()) / max(float(np.abs(reference).max()), 1e-12)
        if not diff <= tolerance:
            raise SystemExit(f"{name} disagrees with {against} (relative difference {diff:.2e}): not timing a wrong model")
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in sessions}
    names = list(sessions)
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            samples[name].append(time_per_run(sessions[name], feeds[name], budget_s))
    return {name: (statistics.median(t[0] for t in s), statistics.median(t[1] for t in s)) for name, s in samples.items()}


def convert_and_export(name: str, pattern: str, workdir: Path) -> tuple[Path, Path, dict]:
    from pscompress.exporters.onnx_export import export_onnx
    from pscompress.workstation.checkpoint import LoadedModel
    from pscompress.workstation.sparsify import sparsify

    builder, shape, _ = MODELS[name]
    module = builder()
    sparsify(module, pattern, input_shape=shape, align=False)
    kinds = conv_kinds(module)
    loaded = LoadedModel(module, None, meta={"input_shape": list(shape)})
    stem = workdir / f"{name}.{pattern}"
    start = time.perf_counter()
    dense = export_onnx(loaded, stem.with_suffix(".dense.onnx"), dense=True)
    packed = export_onnx(loaded, stem.with_suffix(".psconv.onnx"))
    log(f"  exported {name} {pattern} in {time.perf_counter() - start:.0f} s: {packed.psconv_layers} PSConv nodes, "
        f"3x3 convs converted {kinds['psconv']}, left dense {kinds['dense']}")
    info = {"psconv_nodes": packed.psconv_layers, "converted_3x3": kinds["psconv"], "dense_3x3": kinds["dense"],
            "size_ratio": packed.bytes / dense.bytes}
    return Path(dense.path), Path(packed.path), info


def bench(name: str, pattern: str, batches: list[int], threads_list: list[int], tune: bool, repeats: int,
          budget_s: float, workdir: Path, environment: dict) -> list[dict]:
    from pscompress.board.tune import tune_model

    _, shape, _ = MODELS[name]
    dense_path, packed_path, info = convert_and_export(name, pattern, workdir)
    rows = []
    for threads in threads_list:
        for batch in batches:
            sessions = {"dense": session(str(dense_path), threads, native=False),
                        "psconv": session(str(packed_path), threads, native=True)}
            plan = None
            if tune:
                start = time.perf_counter()
                tuned, plan = tune_model(packed_path, batch=batch, threads=threads, progress=False)
                sessions["tuned"] = session(tuned, threads, native=True)
                log(f"  tuned {name} {pattern} batch {batch} threads {threads} in {time.perf_counter() - start:.0f} s: "
                    f"plan {plan['plan']}, {sum(n['choice'] == 'dense' for n in plan['nodes'])}/{len(plan['nodes'])} "
                    "nodes dense")
            x = np.random.default_rng(0).random((batch, *shape), dtype=np.float32)
            med = interleaved(sessions, x, repeats, budget_s)
            row = {**environment, "model": name, "input_shape": list(shape), "pattern": pattern, "batch": batch,
                   "threads": threads, "repeats": repeats, **info,
                   "dense_ms": med["dense"][0] * 1e3, "psconv_ms": med["psconv"][0] * 1e3,
                   "speedup": med["dense"][0] / med["psconv"][0]}
            if threads == 1:
                row["cpu_speedup"] = med["dense"][1] / med["psconv"][1]
            if tune:
                row.update(tuned_ms=med["tuned"][0] * 1e3, tuned_speedup=med["dense"][0] / med["tuned"][0],
                           tune_plan=plan["plan"],
                           tune_dense_nodes=sum(n["choice"] == "dense" for n in plan["nodes"]))
                if threads == 1:
                    row["tuned_cpu_speedup"] = med["dense"][1] / med["tuned"][1]
            rows.append(row)
            print(line(row), flush=True)
    return rows


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def line(r: dict) -> str:
    tuned = (f"{r['tuned_ms']:.2f} | {_x(r['tuned_speedup'])} | {_x(r.get('tuned_cpu_speedup'))} | "
             f"{r['tune_plan']} ({r['tune_dense_nodes']}/{r['psconv_nodes']} dense)") if "tuned_ms" in r else "- | - | - | -"
    return (f"| {r['model']} | {r['pattern']} | {r['batch']} | {r['threads']} | {r['dense_ms']:.2f} | "
            f"{r['psconv_ms']:.2f} | **{_x(r['speedup'])}** | {_x(r.get('cpu_speedup'))} | {tuned} |")


HEADER = ("| model | pattern | batch | threads | dense ms | pSConv ms | speedup | CPU-time speedup | "
          "tuned ms | tuned speedup | tuned CPU-time speedup | tune plan |\n" + "|---" * 12 + "|")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS), metavar="NAME",
                        help=f"models of the set (default all: {', '.join(MODELS)})")
    parser.add_argument("--patterns", nargs="+", default=["4of9"], help="pattern families (default 4of9)")
    parser.add_argument("--batches", nargs="+", type=int, help="batch sizes (default: each model's own)")
    parser.add_argument("--threads", nargs="+", type=int, default=[1], help="intra-op thread counts (default 1)")
    parser.add_argument("--tune", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the export tuned for each batch and thread count (default on)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds per configuration (default 7)")
    parser.add_argument("--budget", type=float, default=0.05,
                        help="seconds of back-to-back runs per sample; the per-run mean is one sample (default 0.05)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write every record as JSON")
    args = parser.parse_args(argv)
    if not runtime.native_available():
        print("the native kernel library is not built (docs/runtime.md)", file=sys.stderr)
        return 2
    import pscompress

    environment = {"cpu": cpu_model(), "isa": runtime.cpu_path(), "onnxruntime": ort.__version__,
                   "pscompress": pscompress.__version__,
                   "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    print(f"cpu: {environment['cpu']} | kernel path: {environment['isa']} | onnxruntime {environment['onnxruntime']} "
          f"| pscompress {environment['pscompress']} | {environment['date']} | {args.repeats} interleaved rounds, "
          f"medians; speedup = dense / pSConv; CPU time on 1 thread only")
    print(HEADER, flush=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for pattern in args.patterns:
                log(f"{name} {pattern}")
                try:
                    rows += bench(name, pattern, args.batches or list(MODELS[name][2]), args.threads, args.tune,
                                  args.repeats, args.budget, Path(tmp), environment)
                except Exception as exc:  # one model failing (export, tune) is reported, the others still run
                    error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                    rows.append({**environment, "model": name, "pattern": pattern, "error": error})
                    print(f"| {name} | {pattern} | FAILED: {error} |", flush=True)
    bad = [r for r in rows if "error" in r or not all(math.isfinite(r[k]) for k in r if k.endswith("speedup"))]
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
