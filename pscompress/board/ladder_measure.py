"""Re-timing a ladder where it will run: ``pscompress ladder measure`` (board side, no PyTorch).

Latency is what a deadline sees, so it is wall time of one batch-1 call. The rungs are timed
round-robin, the order alternating, so a machine that slows down meanwhile slows every rung
alike and the monotone subset is chosen on comparable figures.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

from pscompress.board.ladder import MIN_GAIN, PERCENTILES, SPEED_PERCENTILE, Manifest, load_manifest, monotone_subset, write_manifest
from pscompress.board.onnx_predictor import OnnxPredictor
from pscompress.board.tune import cpu_model

WARMUP = 5  # the native kernel packs its weights on the first runs


def measure_ladder(folder: str | os.PathLike, threads: int | None = None, runs: int = 200,
                   native: bool | None = None, progress: bool | None = None, min_gain: float = MIN_GAIN,
                   clock: Callable[[], float] = time.perf_counter) -> Manifest:
    """Time every rung of the ladder in ``folder`` (``runs`` batch-1 calls each), re-select its
    monotone subset for this machine (``monotone_subset(..., min_gain)``) and rewrite its manifest;
    the new manifest is returned."""
    folder = Path(folder)
    manifest = load_manifest(folder)
    latencies = time_rungs([folder / r.file for r in manifest.rungs], threads, runs, native, progress, clock)
    for rung, latency in zip(manifest.rungs, latencies):
        rung.latency_ms = latency
    monotone_subset(manifest.rungs, min_gain=min_gain)
    manifest.cpu, manifest.threads = cpu_model(), threads
    write_manifest(folder, manifest)
    return manifest


def time_rungs(files: list[Path], threads: int | None = None, runs: int = 200, native: bool | None = None,
               progress: bool | None = None, clock: Callable[[], float] = time.perf_counter) -> list[dict[str, float]]:
    """p50/p90/p99 (ms) of ``runs`` batch-1 calls of each model file, timed round-robin, order alternating."""
    from tqdm import tqdm

    predictors = [OnnxPredictor(path, threads=threads, native=native) for path in files]
    rng = np.random.default_rng(0)
    image = rng.random((1, *predictors[0].input_shape), dtype=np.float32)
    for predictor in predictors:
        for _ in range(WARMUP):
            predictor.predict(image)
    samples: list[list[float]] = [[] for _ in predictors]
    order = list(range(len(predictors)))
    for round_ in tqdm(range(runs), desc="timing rungs", unit="round", leave=False,
                       disable=None if progress is None else not progress):
        for i in order if round_ % 2 == 0 else reversed(order):
            start = clock()
            predictors[i].predict(image)
            samples[i].append((clock() - start) * 1e3)
    return [{key: round(float(np.quantile(times, q)), 4) for key, q in PERCENTILES.items()} for times in samples]


def format_rungs(manifest: Manifest) -> list[str]:
    """One line per rung, fastest first: accuracy, size, latency percentiles, kept or not."""
    header = ("rung", "accuracy", "size KB", "p50 ms", "p90 ms", "p99 ms", "kept")
    rows = [(r.name, f"{r.accuracy:.2%}", f"{r.bytes / 1024:.1f}", *(f"{r.latency_ms[k]:.3f}" for k in PERCENTILES),
             "yes" if r.kept else "no") for r in sorted(manifest.rungs, key=lambda r: r.latency_ms[SPEED_PERCENTILE])]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
