"""``pscompress tune``: run each PSConv node natively or densely, whichever is faster here.

Each PSConv/PSConvAdd node is cut out of the graph into a one-node model and timed twice in
onnxruntime, at the batch size and thread count asked for: as it is (the native kernel) and
moved to the dense domain, where onnxruntime inlines its portable function and folds it into a
plain Conv. The file is rewritten with the nodes the dense Conv wins in the dense domain (their
packed weights stay), then the whole model is timed three ways (every node native, every node
dense, the per-node plan): when the per-node plan is not the fastest within NOISE, the fastest
whole-model variant is written instead. A variant other than every node dense (the dense
export's kernels) is then timed against it once more, and written only when it is not slower
there too. So a tuned file is never measurably slower than either.
How and why: docs/tune.md. Needs numpy and onnxruntime only.
"""
from __future__ import annotations

import datetime
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from pscompress import runtime
from pscompress.board.onnx_reader import Node, OnnxSummary, is_psconv, psconv_attributes, read_onnx
from pscompress.board.onnx_writer import node_model, set_plan, with_outputs
from pscompress.core.errors import UserError
from pscompress.core.limits import check_input_shape, human_bytes, max_input_bytes, shape_bytes
from pscompress.core.metadata import decode_onnx_metadata, encode_onnx_metadata

# Whole-model medians within 2% of each other count as equal: closer than that, two timings of
# one model disagree as much on a busy machine (docs/tune.md, "Caveats").
NOISE = 0.02
# The tuned file must compute what the original computes (float32 rounding apart).
TOLERANCE = 1e-4
# An int8 file's native and dense kernels may round an output differently by one step (docs/operator.md,
# QLinearPSConv), and such steps add up through the layers: a few percent of the largest output.
INT8_TOLERANCE = 0.05

#: measure(label, runs) -> seconds per call of each run: label is a node's name or "model", runs
#: maps "native", "dense" (and "per-node") to zero-argument calls. Injectable for tests.
Measure = Callable[[str, Mapping[str, Callable[[], object]]], Mapping[str, float]]
_CLOCKS = {time.thread_time: "thread CPU time", time.perf_counter: "wall clock"}


@dataclass
class Timer:
    """The median time of each call, the calls interleaved round by round (the order alternating)
    so that a machine that slows down or speeds up meanwhile affects every variant alike."""

    clock: Callable[[], float] = time.perf_counter
    min_rounds: int = 25
    min_seconds: float = 0.5  # per label, over all variants
    max_rounds: int = 1000
    warmup: int = 3

    def __call__(self, label: str, runs: Mapping[str, Callable[[], object]]) -> dict[str, float]:
        for run in runs.values():
            for _ in range(self.warmup):  # the native kernel packs its weights on the first run
                run()
        samples: dict[str, list[float]] = {name: [] for name in runs}
        names, start, rounds = list(runs), time.perf_counter(), 0
        while rounds < self.min_rounds or (rounds < self.max_rounds and time.perf_counter() - start < self.min_seconds):
            for name in names if rounds % 2 == 0 else reversed(names):
                begin = self.clock()
                runs[name]()
                samples[name].append(self.clock() - begin)
            rounds += 1
        return {name: self.statistic(times) for name, times in samples.items()}

    def statistic(self, times: list[float]) -> float:
        """The median of CPU times; the lower quartile of wall times, since other jobs on the
        machine only ever add wall time (a median moved by a third under load, docs/tune.md)."""
        if self.clock is time.thread_time:
            return statistics.median(times)
        return statistics.quantiles(times, n=4, method="inclusive")[0] if len(times) > 1 else times[0]


def default_timer(threads: int | None) -> Timer:
    """On one thread onnxruntime computes in the calling thread, so its CPU time leaves out the
    time other jobs take the core; with more threads only wall time sees the pool's work."""
    return Timer(clock=time.thread_time if threads == 1 else time.perf_counter)


def tune_model(path: str | Path, batch: int = 1, threads: int | None = None, measure: Measure | None = None,
               progress: bool | None = None) -> tuple[bytes, dict[str, Any]]:
    """The model at ``path`` rewritten to its fastest plan for ``batch`` and ``threads``, and the plan
    (what the ``tune`` metadata field holds, also written into the returned model)."""
    path = Path(path)
    summary = read_onnx(path)
    nodes = [(index, node) for index, node in enumerate(summary.nodes) if is_psconv(node)]
    if not nodes:
        raise UserError(f"{path.name} has no PSConv node, so there is nothing to tune (export a pSConv model)")
    for _, node in nodes:
        psconv_attributes(node)  # a malformed node is one clear error, before any session
    _require_native()
    measure = measure or default_timer(threads)
    data = path.read_bytes()
    session = _Sessions(threads)
    native = set_plan(data, ())  # a tuned file's dense nodes back in the native domain
    base = session(native)
    feed = {base.get_inputs()[0].name: _example_input(base, decode_onnx_metadata(summary.metadata, str(path)), batch)}

    times = _node_times(native, summary, nodes, feed, session, measure, progress)
    every = {index for index, _ in nodes}
    chosen = {index for index in every if times[index]["dense"] < times[index]["native"]}
    candidate = "native" if not chosen else "dense" if chosen == every else "per-node"
    plans = {"native": set(), "dense": every, "per-node": chosen}
    variants = {name: base if name == "native" else session(set_plan(data, plans[name]))
                for name in dict.fromkeys(("native", "dense", candidate))}
    model_times = dict(measure("model", {name: _call(s, feed) for name, s in variants.items()}))
    fastest = min(model_times, key=model_times.__getitem__)
    written = candidate if model_times[candidate] <= (1 + NOISE) * model_times[fastest] else fastest
    confirmed = None
    if written != "dense":
        # Every node dense is the dense export's graph, the safe default; leave it only when fresh
        # rounds agree that the choice is not slower (one burst of load can fake a win).
        confirmed = dict(measure("model", {written: _call(variants[written], feed), "dense": _call(variants["dense"], feed)}))
        if confirmed[written] > (1 + NOISE) * confirmed["dense"]:
            written = "dense"
    int8 = any(node.op_type == "QLinearPSConv" for _, node in nodes)
    _check_same(_run(base, feed)[0], _run(variants[written], feed)[0], INT8_TOLERANCE if int8 else TOLERANCE)

    plan = {
        "plan": written, "fallback": written != candidate, "batch": batch, "threads": threads,
        "cpu": cpu_model(), "isa": runtime.cpu_path(), "onnxruntime": _ort_version(), "pscompress": _version(),
        "clock": _CLOCKS.get(getattr(measure, "clock", None), "injected"),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model_ms": {name: _ms(t) for name, t in model_times.items()},
        "confirm_ms": {name: _ms(t) for name, t in confirmed.items()} if confirmed else None,
        "nodes": [{"name": node.name, "op": node.op_type, "native_ms": _ms(times[index]["native"]),
                   "dense_ms": _ms(times[index]["dense"]), "choice": "dense" if index in plans[written] else "native"}
                  for index, node in nodes],
    }
    return set_plan(data, plans[written], encode_onnx_metadata({"tune": plan})), plan


def _node_times(model: bytes, summary: OnnxSummary, nodes: list[tuple[int, Node]], feed: dict[str, np.ndarray],
                session: "_Sessions", measure: Measure, progress: bool | None) -> dict[int, Mapping[str, float]]:
    """Native and dense seconds of each PSConv node, each alone in a one-node model."""
    from tqdm import tqdm

    values = _node_inputs(model, summary, nodes, feed, session)
    batch = len(next(iter(feed.values())))  # the model's one input
    rng = np.random.default_rng(0)
    times = {}
    for index, node in tqdm(nodes, desc="timing PSConv nodes", unit="node", leave=False,
                            disable=None if progress is None else not progress):
        inputs = {}
        for position, name in enumerate(node.inputs):
            if name and name not in summary.initializers:
                value = values[name]
                # X and PSConvAdd's Z scale with the batch; random values time as the real ones do
                scales = position == 0 or (position == 3 and node.op_type == "PSConvAdd")
                inputs[name] = _random_like(rng, (batch, *value.shape[1:]), value.dtype) if scales else value
        one = node_model(model, index, {name: (value.shape, value.dtype.name) for name, value in inputs.items()})
        runs = {"native": _call(session(one), inputs), "dense": _call(session(set_plan(one, {0})), inputs)}
        times[index] = measure(node.name, runs)
    return times


def _random_like(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Random values of ``dtype``: floats in [0, 1), uint8 activations over their whole range."""
    if dtype == np.uint8:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.random(shape, dtype=np.float32)


def _node_inputs(model: bytes, summary: OnnxSummary, nodes: list[tuple[int, Node]], feed: dict[str, np.ndarray],
                 session: "_Sessions") -> dict[str, np.ndarray]:
    """The value of every non-initializer input of the PSConv nodes, from one run of the model on
    one image (all the shapes need; weights that are not initializers come out whole)."""
    names = list(dict.fromkeys(name for _, node in nodes for name in node.inputs
                               if name and name not in summary.initializers and name not in feed))
    if not names:
        return dict(feed)
    probe = session(with_outputs(model, names))
    fixed_batch = isinstance(probe.get_inputs()[0].shape[0], int)
    outputs = _run(probe, feed if fixed_batch else {name: x[:1] for name, x in feed.items()}, names)
    return {**feed, **dict(zip(names, outputs))}


def _example_input(session, meta: Mapping[str, Any], batch: int) -> np.ndarray:
    """Random images of the model's input shape: a batch of ``batch``."""
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(float)":
        raise UserError("tune takes models with one float32 input, as pscompress exports them")
    dims = inputs[0].shape
    shape = meta.get("input_shape") or check_input_shape(dims[1:], "the graph's input")
    if isinstance(dims[0], int) and dims[0] != batch:
        raise UserError(f"the model's input has a fixed batch of {dims[0]}: `batch` must be {dims[0]}", "batch")
    size = shape_bytes((batch, *shape), 4)
    if size > max_input_bytes():
        raise UserError(f"`batch` {batch} makes one input {human_bytes(size)}, more than the "
                        f"{human_bytes(max_input_bytes())} PSCOMPRESS_MAX_INPUT_BYTES allows", "batch")
    return np.random.default_rng(0).random((batch, *shape), dtype=np.float32)


class _Sessions:
    """Native-library sessions with the thread count asked for."""

    def __init__(self, threads: int | None) -> None:
        self.threads = threads

    def __call__(self, model: bytes):
        import onnxruntime

        options = runtime.session_options(self.threads, native=True)
        if self.threads != 1:
            # Pool threads spin after a run, taking the core from the next variant timed.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            return onnxruntime.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
        except runtime.onnxruntime_errors() as exc:
            raise UserError(f"onnxruntime cannot load the model: {runtime.first_line(exc)}") from exc


def _require_native() -> None:
    try:
        runtime.native_library(True)
    except UserError as exc:
        raise UserError(f"tune compares the native PSConv kernels with the dense Conv, but {exc}") from exc


def _call(session, feed: Mapping[str, np.ndarray]) -> Callable[[], object]:
    return lambda: _run(session, feed)


def _run(session, feed: Mapping[str, np.ndarray], names: list[str] | None = None) -> list[np.ndarray]:
    try:
        return session.run(names, feed)
    except runtime.onnxruntime_errors() as exc:  # e.g. a node whose input shape its kernel rejects
        raise UserError(f"onnxruntime cannot run the model: {runtime.first_line(exc)}") from exc


def _check_same(expected: np.ndarray, got: np.ndarray, tolerance: float) -> None:
    difference = float(np.max(np.abs(got - expected)) / max(float(np.max(np.abs(expected))), 1e-12))
    if not difference <= tolerance:
        raise RuntimeError(f"the tuned model disagrees with the original (relative difference {difference:.2e}): "
                           "please report this")


def cpu_model() -> str:
    """The CPU's name as the kernel reports it (x86 "model name", a Raspberry Pi's "Model")."""
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    fields = {}
    for line in lines:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields.get("model name") or fields.get("Model") or platform.processor() or platform.machine()


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 4)


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _version() -> str:
    from pscompress import __version__

    return __version__
