"""Replay a stream of deadline-carrying requests against a model ladder, as the paper evaluates it (issue 15).

Each request carries one real test image (``--data``, in a seeded random order) and a deadline
drawn uniformly from MEAN * (1 +- ``--spread``). Requests are served one after another (closed
loop) by three policies on the same stream: always-dense (the most accurate kept rung), always-
fastest (the fastest kept rung) and the ladder (``LadderPredictor.predict`` with the deadline).
Request i is served by all three, in an order rotated by i, so a machine that slows down meanwhile
slows every policy alike; each policy is issued the request afresh, so its deadline counts from
the start of its own call. Latency is the wall time (``time.perf_counter``) of that call: for the
ladder, choosing and recording the latency are included.

MEAN defaults to the dense rung's median latency in a short idle calibration replay (printed), so
that always-dense misses about half the time when idle. Conditions: idle, then ``--load N``
background processes spinning (started and stopped here), and with ``--bursty`` the same
processes switching on and off together for random intervals, which the ladder's online latency
estimate has to follow. The ladder's estimate carries over from one condition to the next.

The selection overhead (``choose`` + ``observe``) is timed separately in a tight loop over the
ladder's own requests and reported against the fastest rung's idle median latency.

    .venv/bin/python benchmarks/ladder_replay.py LADDER/ --threads 1 --bursty --json replay.json

The header and the JSON name the CPU model, the kernel path, the onnxruntime version, threads and
the ladder's rungs.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import multiprocessing
import os
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnxruntime as ort

from pscompress import runtime
from pscompress.board.data import load_dataset
from pscompress.board.ladder import DEFAULT_PERCENTILE, LadderPredictor
from pscompress.board.tune import cpu_model
from pscompress.core.errors import UserError

WARMUP = 5  # calls per rung before anything is timed: the native kernel packs its weights on the first runs
BURST_S = (0.2, 2.0)  # on and off intervals of bursty load: a few ladder windows (64 runs) each
READY_TIMEOUT_S = 60.0  # spawning a load process imports Python afresh
OVERHEAD_PASSES = 5
# issue 15's targets
DENSE_MISS_MIN = 30.0  # %: the deadlines must make always-dense miss a good part of the time
MISS_SLACK = 1.0  # points: the ladder misses about as often as always-fastest
ACCURACY_SLACK = 0.5  # points: ... and is about as accurate as always-dense
OVERHEAD_MAX = 1.0  # % of the fastest rung's median latency

# (image [1, C, H, W], deadline ms) -> (logits, name of the rung that ran)
Policy = Callable[[np.ndarray, float], tuple[np.ndarray, str]]
Clock = Callable[[], float]


@dataclass(frozen=True)
class Request:
    image: np.ndarray  # float32 [1, C, H, W] in [0, 1]
    label: int
    deadline_ms: float


@dataclass(frozen=True)
class Served:
    """One policy's answer to one request."""
    policy: str
    request: int
    rung: str
    latency_ms: float
    deadline_ms: float
    correct: bool

    @property
    def met(self) -> bool:
        return self.latency_ms <= self.deadline_ms


# --- the replay -----------------------------------------------------------------------------

def replay(requests: list[Request], policies: dict[str, Policy], clock: Clock = time.perf_counter) -> list[Served]:
    """Serve every request with every policy, one call at a time, the policy order rotated per request."""
    names = list(policies)
    served = []
    for i, request in enumerate(requests):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            start = clock()
            logits, rung = policies[name](request.image, request.deadline_ms)
            latency_ms = (clock() - start) * 1e3
            served.append(Served(name, i, rung, latency_ms, request.deadline_ms,
                                 int(np.argmax(logits[0])) == request.label))
    return served


def summarize(served: list[Served], policy: str) -> dict:
    """Miss rate, accuracy and latency of one policy's answers; how often each rung ran."""
    mine = [s for s in served if s.policy == policy]
    latency = np.array([s.latency_ms for s in mine])
    runs = Counter(s.rung for s in mine)
    return {"requests": len(mine),
            "miss_pct": 100.0 * sum(not s.met for s in mine) / len(mine),
            "accuracy_pct": 100.0 * sum(s.correct for s in mine) / len(mine),
            "on_time_correct_pct": 100.0 * sum(s.met and s.correct for s in mine) / len(mine),
            "mean_ms": float(latency.mean()), "p50_ms": float(np.percentile(latency, 50)),
            "p99_ms": float(np.percentile(latency, 99)),
            "rungs_pct": {rung: 100.0 * count / len(mine) for rung, count in runs.most_common()}}


def requests_of(images: np.ndarray, labels: np.ndarray, deadlines_ms: np.ndarray) -> list[Request]:
    """One request per image, in the given order."""
    return [Request(images[i:i + 1], int(labels[i]), float(d)) for i, d in enumerate(deadlines_ms)]


def draw_deadlines(count: int, mean_ms: float, spread: float, seed: int) -> np.ndarray:
    """``count`` deadlines uniform in mean_ms * (1 +- spread)."""
    return np.random.default_rng(seed).uniform(mean_ms * (1 - spread), mean_ms * (1 + spread), count)


def fixed_policy(predict: Callable[[np.ndarray], np.ndarray], rung: str) -> Policy:
    return lambda x, deadline_ms: (predict(x), rung)


def ladder_policy(ladder: LadderPredictor) -> Policy:
    def serve(x: np.ndarray, deadline_ms: float) -> tuple[np.ndarray, str]:
        result = ladder.predict(x, deadline_ms)
        return result.logits, result.rung
    return serve


def policies_of(ladder: LadderPredictor) -> dict[str, Policy]:
    """always-dense (the most accurate kept rung), always-fastest (the least accurate) and the ladder."""
    return {"always-dense": fixed_policy(ladder.predictors[-1].predict, ladder.names[-1]),
            "always-fastest": fixed_policy(ladder.predictors[0].predict, ladder.names[0]),
            "ladder": ladder_policy(ladder)}


def selection_overhead_us(ladder: LadderPredictor, served: list[Served]) -> dict[str, float]:
    """Microseconds per request of ``choose`` and of ``observe``, replaying the ladder's own (deadline, rung, latency)."""
    index = {name: i for i, name in enumerate(ladder.names)}
    calls = [(s.deadline_ms, index[s.rung], s.latency_ms) for s in served if s.policy == "ladder"]
    choose_us, observe_us = [], []
    for _ in range(OVERHEAD_PASSES):  # the best pass: the least disturbed by the rest of the machine
        start = time.perf_counter()
        for deadline_ms, _, _ in calls:
            ladder.choose(deadline_ms)
        middle = time.perf_counter()
        for _, rung, latency_ms in calls:
            ladder.observe(rung, latency_ms)
        end = time.perf_counter()
        choose_us.append((middle - start) * 1e6 / len(calls))
        observe_us.append((end - middle) * 1e6 / len(calls))
    return {"choose_us": min(choose_us), "observe_us": min(observe_us), "total_us": min(choose_us) + min(observe_us)}


# --- background load ------------------------------------------------------------------------

def burst_schedule(start: float, seed: int) -> Iterator[tuple[float, float]]:
    """Endless (on until, off until) times from ``start``: every load process derives the same bursts."""
    rng, t = random.Random(seed), start
    while True:
        on_until = t + rng.uniform(*BURST_S)
        t = on_until + rng.uniform(*BURST_S)
        yield on_until, t


def _spin(ready, start: float, seed: int | None) -> None:
    ready.release()
    if seed is None:
        while True:
            pass
    for on_until, off_until in burst_schedule(start, seed):  # time.monotonic is one clock for all processes
        while time.monotonic() < on_until:
            pass
        time.sleep(max(0.0, off_until - time.monotonic()))


@contextlib.contextmanager
def background_load(processes: int, bursty_seed: int | None = None) -> Iterator[list]:
    """``processes`` busy-looping processes (bursting together when ``bursty_seed`` is given), running
    before the body starts and gone when it ends, however it ends."""
    context = multiprocessing.get_context("spawn")  # a fork would copy onnxruntime's threads and locks
    ready, start = context.Semaphore(0), time.monotonic()
    procs = [context.Process(target=_spin, args=(ready, start, bursty_seed), daemon=True)
             for _ in range(processes)]
    try:
        for proc in procs:
            proc.start()
        for _ in procs:
            if not ready.acquire(timeout=READY_TIMEOUT_S):
                raise RuntimeError(f"a background load process did not start within {READY_TIMEOUT_S:.0f} s")
        yield procs
    finally:
        started = [p for p in procs if p.pid is not None]
        for proc in started:
            proc.terminate()
        for proc in started:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()


def run_condition(requests: list[Request], policies: dict[str, Policy], load: int, bursty_seed: int | None,
                  clock: Clock = time.perf_counter) -> list[Served]:
    """The replay with ``load`` background processes (none: idle)."""
    with background_load(load, bursty_seed):
        return replay(requests, policies, clock)


# --- the report -----------------------------------------------------------------------------

def check_targets(results: dict[str, dict]) -> dict[str, bool]:
    """Issue 15's targets on one condition's summaries."""
    dense, fastest, ladder = results["always-dense"], results["always-fastest"], results["ladder"]
    return {"dense_misses": dense["miss_pct"] >= DENSE_MISS_MIN,
            "ladder_miss_near_fastest": ladder["miss_pct"] <= fastest["miss_pct"] + MISS_SLACK,
            "ladder_accuracy_near_dense": ladder["accuracy_pct"] >= dense["accuracy_pct"] - ACCURACY_SLACK}


def target_line(name: str, results: dict[str, dict], checks: dict[str, bool]) -> str:
    dense, fastest, ladder = results["always-dense"], results["always-fastest"], results["ladder"]
    mark = {True: "yes", False: "NO"}
    return (f"  {name}: always-dense misses {dense['miss_pct']:.1f}% >= {DENSE_MISS_MIN:.0f}%: "
            f"{mark[checks['dense_misses']]} | ladder misses {ladder['miss_pct']:.1f}% vs always-fastest "
            f"{fastest['miss_pct']:.1f}% (within {MISS_SLACK:g} point): {mark[checks['ladder_miss_near_fastest']]} | "
            f"ladder accuracy {ladder['accuracy_pct']:.2f}% vs always-dense {dense['accuracy_pct']:.2f}% "
            f"(within {ACCURACY_SLACK:g} point): {mark[checks['ladder_accuracy_near_dense']]}")


def table(results: dict[str, dict[str, dict]]) -> list[str]:
    """One row per condition and policy."""
    header = ("condition", "policy", "miss %", "accuracy %", "on time & correct %", "mean ms", "p50 ms", "p99 ms",
              "rungs run")
    rows = [(condition, policy, f"{r['miss_pct']:.1f}", f"{r['accuracy_pct']:.2f}", f"{r['on_time_correct_pct']:.2f}",
             f"{r['mean_ms']:.3f}", f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}",
             ", ".join(f"{rung} {pct:.0f}%" for rung, pct in r["rungs_pct"].items()))
            for condition, by_policy in results.items() for policy, r in by_policy.items()]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the command ----------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ladder", type=Path, help="a ladder folder (ladder.json and its rungs)")
    parser.add_argument("--data", default="fashion-mnist", help="data set SPEC; its test split is used")
    parser.add_argument("--requests", type=int, help="requests per condition (default and at most: the whole test split)")
    parser.add_argument("--deadline-ms", type=float, help="mean deadline (default: always-dense's calibrated p50)")
    parser.add_argument("--spread", type=float, default=0.25, help="deadlines uniform in MEAN * (1 +- SPREAD)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--percentile", type=float, default=DEFAULT_PERCENTILE, help="the ladder's latency estimate (LadderPredictor)")
    parser.add_argument("--window", type=int, default=64, help="slowdowns the ladder's estimate remembers (shared by its rungs)")
    parser.add_argument("--load", type=int, default=os.cpu_count() or 1, help="background load processes")
    parser.add_argument("--bursty", action="store_true", help="also replay under load bursting on and off")
    parser.add_argument("--calibration", type=int, default=200, help="requests of the calibration replay")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, metavar="FILE")
    args = parser.parse_args(argv)
    if (args.requests is not None and args.requests < 1) or args.calibration < 1 or args.load < 0 or not 0 <= args.spread < 1:
        parser.error("--requests and --calibration must be >= 1, --load >= 0 and --spread in [0, 1)")
    if args.deadline_ms is not None and not args.deadline_ms > 0:
        parser.error("--deadline-ms must be > 0")
    return args


def stream(data_spec: str, ladder: LadderPredictor, count: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` test images and labels in a seeded random order, checked against the ladder's input."""
    data = load_dataset(data_spec, "test")
    first = ladder.predictors[0]
    data = data.in_channel_order(first.preprocess.get("channel_order"))
    if not first.takes(data.shape):
        raise UserError(f"{data.name} has images of shape {list(data.shape)}; the ladder takes {list(first.input_shape)}")
    order = np.random.default_rng(seed).permutation(len(data))[:count]
    return data.images[order], data.y[order]


def conditions_of(args: argparse.Namespace) -> list[tuple[str, int, int | None]]:
    """(name, load processes, bursty seed) of each condition to replay."""
    conditions: list[tuple[str, int, int | None]] = [("idle", 0, None)]
    if args.load:
        conditions.append((f"load x{args.load}", args.load, None))
        if args.bursty:
            conditions.append((f"bursty x{args.load}", args.load, args.seed))
    return conditions


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        ladder = LadderPredictor(args.ladder, threads=args.threads, percentile=args.percentile, window=args.window)
        images, labels = stream(args.data, ladder, args.requests, args.seed)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    environment = {"cpu": cpu_model(), "isa": runtime.cpu_path(), "native": ladder.predictors[0].native,
                   "onnxruntime": ort.__version__, "threads": args.threads,
                   "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    print(f"cpu: {environment['cpu']} | kernel path: {environment['isa']} (native kernels "
          f"{'on' if environment['native'] else 'off'}) | onnxruntime {environment['onnxruntime']} | "
          f"threads {args.threads} | ladder estimate: p{args.percentile * 100:g} of the last {args.window} runs | "
          f"{environment['date']}", flush=True)
    rungs = [{"name": r.name, "file": r.file, "accuracy": r.accuracy, "bytes": r.bytes, "latency_ms": r.latency_ms}
             for r in ladder.rungs]
    print(f"ladder {args.ladder} (manifest measured on {ladder.manifest.cpu or '?'}, threads "
          f"{ladder.manifest.threads}), kept rungs fastest first: " +
          "; ".join(f"{r['name']} {r['accuracy']:.2%} p50 {r['latency_ms']['p50']:.3f} ms" for r in rungs), flush=True)
    policies = policies_of(ladder)
    for predictor in ladder.predictors:
        for _ in range(WARMUP):
            predictor.predict(images[:1])

    # calibration: the fixed policies interleaved as in the replay, deadlines out of the way
    fixed = {name: policies[name] for name in ("always-dense", "always-fastest")}
    count = min(args.calibration, len(labels))
    calibration = replay(requests_of(images[:count], labels[:count], np.full(count, np.inf)), fixed)
    dense_p50 = summarize(calibration, "always-dense")["p50_ms"]
    fastest_p50 = summarize(calibration, "always-fastest")["p50_ms"]
    mean_ms = args.deadline_ms or dense_p50
    print(f"calibration ({count} idle requests): always-dense p50 {dense_p50:.3f} ms, always-fastest "
          f"p50 {fastest_p50:.3f} ms -> deadlines uniform in {mean_ms * (1 - args.spread):.3f}..."
          f"{mean_ms * (1 + args.spread):.3f} ms" + (" (--deadline-ms)" if args.deadline_ms else ""), flush=True)
    requests = requests_of(images, labels, draw_deadlines(len(labels), mean_ms, args.spread, args.seed))

    results: dict[str, dict[str, dict]] = {}
    predicted: dict[str, list[float]] = {}
    ladder_served: list[Served] = []
    for name, load, bursty_seed in conditions_of(args):
        log(f"replaying {len(requests)} requests x {len(policies)} policies: {name}")
        served = run_condition(requests, policies, load, bursty_seed)
        results[name] = {policy: summarize(served, policy) for policy in policies}
        predicted[name] = ladder.predicted_ms
        ladder_served += [s for s in served if s.policy == "ladder"]
    for row in table(results):
        print(row)
    print("ladder's predicted latency after each condition (ms, fastest rung first): " +
          "; ".join(f"{name} " + " / ".join(f"{ms:.3f}" for ms in values) for name, values in predicted.items()))

    overhead = selection_overhead_us(ladder, ladder_served)
    overhead["pct_of_fastest_p50"] = 100.0 * overhead["total_us"] / (results["idle"]["always-fastest"]["p50_ms"] * 1e3)
    print(f"selection overhead: choose {overhead['choose_us']:.2f} us + observe {overhead['observe_us']:.2f} us = "
          f"{overhead['total_us']:.2f} us per request, {overhead['pct_of_fastest_p50']:.2f}% of the fastest rung's "
          f"idle p50")
    targets = {name: check_targets(by_policy) for name, by_policy in results.items()}
    targets["overhead"] = {"under_1pct": overhead["pct_of_fastest_p50"] < OVERHEAD_MAX}
    print("issue 15 targets on this run:")
    for name, by_policy in results.items():
        print(target_line(name, by_policy, targets[name]))
    print(f"  selection overhead {overhead['pct_of_fastest_p50']:.2f}% < {OVERHEAD_MAX:g}%: "
          f"{'yes' if targets['overhead']['under_1pct'] else 'NO'}")
    if args.json:
        document = {"environment": environment, "ladder": {"folder": str(args.ladder), "cpu": ladder.manifest.cpu,
                                                           "threads": ladder.manifest.threads, "rungs": rungs},
                    "args": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
                    "calibration": {"requests": count, "always_dense_p50_ms": dense_p50,
                                    "always_fastest_p50_ms": fastest_p50},
                    "deadlines_ms": {"mean": mean_ms, "low": mean_ms * (1 - args.spread),
                                     "high": mean_ms * (1 + args.spread)},
                    "results": results, "ladder_predicted_ms": predicted, "overhead": overhead, "targets": targets}
        args.json.write_text(json.dumps(document, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
