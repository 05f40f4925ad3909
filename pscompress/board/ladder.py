"""A deadline-aware model ladder: several exported variants of one model, run the best that fits.

A ladder is a folder holding ONNX files and ``ladder.json`` (the manifest, docs/ladder.md). Its
*kept* rungs form a monotone ladder: each one slower and strictly more accurate than the one
before. ``LadderPredictor`` loads them once and, per call, runs the most accurate rung whose
predicted latency fits the time left::

    from pscompress.board.ladder import LadderPredictor
    ladder = LadderPredictor("LADDER", threads=2)
    result = ladder.predict(images, deadline_ms=8.0)   # images as OnnxPredictor.predict takes them
    result.logits, result.rung, result.latency_ms, result.met, result.predicted_miss

Board side: numpy and onnxruntime only, never torch.
"""
from __future__ import annotations

import bisect
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from pscompress.board.onnx_predictor import OnnxPredictor
from pscompress.core.errors import UserError, short_repr
from pscompress.core.files import atomic_output
from pscompress.core.limits import is_int

FORMAT = "pscompress-ladder"
VERSION = 1
MANIFEST_NAME = "ladder.json"
MAX_MANIFEST_BYTES = 1 << 20  # a 64-rung manifest is a few tens of KiB; more is not a manifest
MAX_RUNGS = 64
MAX_TEXT = 256  # characters of a name, file or cpu string
MAX_THREADS = 1024
MAX_WINDOW = 4096
# The latency a rung is predicted to take: a high quantile, so that a rung it picks rarely misses
# (on the sample, p90 let the ladder miss 3 points more often than the fastest rung; p99 under 1)
DEFAULT_PERCENTILE = 0.99
WARMUP_RUNS = 3
# Rungs are ranked by speed on their median: the steadiest figure (the tails are mostly the machine's,
# and LadderPredictor scales every rung's median by one shared slowdown)
SPEED_PERCENTILE = "p50"
MIN_GAIN = 0.05  # what ladder build and measure ask of a faster rung: more than timing noise
MIN_NOMINAL_MS = 1e-3  # a rung measured at 0 ms still scales with the load
PERCENTILES = {"p50": 0.50, "p90": 0.90, "p99": 0.99}
_MANIFEST_KEYS = {"format", "version", "cpu", "threads", "batch", "rungs"}
_RUNG_KEYS = {"name", "file", "accuracy", "bytes", "latency_ms", "kept", "recipe"}


@dataclass
class Rung:
    """One variant of the model: its file (relative to the ladder folder) and what it was measured to do."""
    name: str
    file: str
    accuracy: float  # fraction, 0..1
    bytes: int
    latency_ms: dict[str, float]  # p50, p90, p99 of one batch
    kept: bool = False
    recipe: dict[str, Any] = field(default_factory=dict)


@dataclass
class Manifest:
    """The contents of ``ladder.json``: the machine the rungs were measured on and the rungs."""
    cpu: str
    threads: int | None
    rungs: list[Rung]
    batch: int = 1
    format: str = FORMAT
    version: int = VERSION


@dataclass
class LadderResult:
    """One ``LadderPredictor.predict`` call: the chosen rung's logits and how the deadline went."""
    logits: np.ndarray
    rung: str
    latency_ms: float
    met: bool  # the run took no longer than the deadline
    predicted_miss: bool  # no rung was predicted to fit: the fastest ran anyway


# --- the manifest ---------------------------------------------------------------------------

def load_manifest(folder: str | os.PathLike) -> Manifest:
    """Read and validate ``folder/ladder.json``; UserError (one line naming the field) when it is wrong."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise UserError(f"{folder} is not a ladder: it has no {MANIFEST_NAME}")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise UserError(f"{path}: {path.stat().st_size:,} bytes, more than the {MAX_MANIFEST_BYTES:,} a manifest may have")
    try:
        data = json.loads(path.read_bytes(), parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON: {str(exc).splitlines()[0]}") from exc
    return _check_manifest(data, folder, str(path))


def write_manifest(folder: str | os.PathLike, manifest: Manifest) -> None:
    """Validate ``manifest`` against ``folder`` and write it as ``folder/ladder.json``, atomically."""
    folder = Path(folder)
    data = _manifest_dict(manifest)
    _check_manifest(data, folder, str(folder / MANIFEST_NAME))  # never write a manifest load_manifest refuses
    with atomic_output(folder / MANIFEST_NAME) as tmp:
        tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")


def monotone_subset(rungs: list[Rung], percentile: str = SPEED_PERCENTILE, min_gain: float = 0.0) -> list[Rung]:
    """The rungs worth keeping, fastest first: each strictly more accurate than every faster kept one
    and, with ``min_gain``, each faster than the next kept one by more than that fraction.

    Sorted by the ``percentile`` latency (ties: the more accurate first, then input order); sets
    each rung's ``kept`` in place. A rung at most ``min_gain`` faster than a more accurate one
    saves only timing noise and costs accuracy, so the more accurate one takes its place.
    """
    if percentile not in PERCENTILES:
        raise UserError(f"percentile must be one of {', '.join(PERCENTILES)}, got {short_repr(percentile)}")
    if not (_is_number(min_gain) and 0 <= min_gain < 1):
        raise UserError(f"min_gain must be a fraction in [0, 1), got {short_repr(min_gain)}")
    order = sorted(rungs, key=lambda r: (r.latency_ms[percentile], -r.accuracy))
    monotone: list[Rung] = []
    for rung in order:
        if not monotone or rung.accuracy > monotone[-1].accuracy:
            monotone.append(rung)
    # From the most accurate down, so each cluster of rungs within min_gain keeps its most accurate
    kept = monotone[-1:]
    for rung in reversed(monotone[:-1]):
        if rung.latency_ms[percentile] * (1 + min_gain) < kept[-1].latency_ms[percentile]:
            kept.append(rung)
    kept.reverse()
    for rung in rungs:
        rung.kept = any(rung is k for k in kept)
    return kept


def _manifest_dict(manifest: Manifest) -> dict[str, Any]:
    return {"format": manifest.format, "version": manifest.version, "cpu": manifest.cpu,
            "threads": manifest.threads, "batch": manifest.batch,
            "rungs": [{"name": r.name, "file": r.file, "accuracy": r.accuracy, "bytes": r.bytes,
                       "latency_ms": dict(r.latency_ms), "kept": r.kept, "recipe": r.recipe} for r in manifest.rungs]}


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _check_manifest(data: Any, folder: Path, source: str) -> Manifest:
    if not isinstance(data, dict):
        raise UserError(f"{source}: the manifest must be a JSON object, got {short_repr(data)}")
    _check_keys(data, _MANIFEST_KEYS, source, "the manifest")
    if data["format"] != FORMAT:
        raise UserError(f"{source}: format must be {FORMAT!r}, got {short_repr(data['format'])}")
    if not is_int(data["version"]) or data["version"] != VERSION:
        raise UserError(f"{source}: version {short_repr(data['version'])} is not one this pscompress reads ({VERSION})")
    cpu = _text(data["cpu"], source, "cpu", allow_empty=True)
    threads = data["threads"]
    if threads is not None and not (is_int(threads) and 1 <= threads <= MAX_THREADS):
        raise UserError(f"{source}: threads must be null or an integer 1..{MAX_THREADS}, got {short_repr(threads)}")
    if not is_int(data["batch"]) or data["batch"] != 1:
        raise UserError(f"{source}: batch must be 1 (the only batch size ladders measure), got {short_repr(data['batch'])}")
    rungs = data["rungs"]
    if not isinstance(rungs, list) or not 1 <= len(rungs) <= MAX_RUNGS:
        count = f"{len(rungs)} rungs" if isinstance(rungs, list) else short_repr(rungs)
        raise UserError(f"{source}: rungs must be a list of 1..{MAX_RUNGS} rungs, got {count}")
    checked = [_check_rung(r, folder, f"{source}: rungs[{i}]") for i, r in enumerate(rungs)]
    seen: set[str] = set()
    for i, rung in enumerate(checked):
        if rung.name in seen:
            raise UserError(f"{source}: rungs[{i}].name {rung.name!r} is used by an earlier rung; names must be unique")
        seen.add(rung.name)
    return Manifest(cpu=cpu, threads=threads, rungs=checked)


def _check_rung(data: Any, folder: Path, where: str) -> Rung:
    if not isinstance(data, dict):
        raise UserError(f"{where} must be an object, got {short_repr(data)}")
    _check_keys(data, _RUNG_KEYS, where, "a rung")
    name = _text(data["name"], where, "name")
    file = _rung_file(data["file"], folder, where)
    accuracy = data["accuracy"]
    if not (_is_number(accuracy) and 0 <= accuracy <= 1):
        raise UserError(f"{where}.accuracy must be a fraction 0..1, got {short_repr(accuracy)}")
    size = (folder / file).stat().st_size
    if not (is_int(data["bytes"]) and data["bytes"] >= 0):
        raise UserError(f"{where}.bytes must be an integer >= 0, got {short_repr(data['bytes'])}")
    if data["bytes"] != size:  # a stale manifest: the file was replaced after it was measured
        raise UserError(f"{where}.bytes is {data['bytes']:,} but {file} has {size:,} bytes")
    latency = _latency(data["latency_ms"], f"{where}.latency_ms")
    if not isinstance(data["kept"], bool):
        raise UserError(f"{where}.kept must be true or false, got {short_repr(data['kept'])}")
    if not isinstance(data["recipe"], dict):
        raise UserError(f"{where}.recipe must be an object, got {short_repr(data['recipe'])}")
    return Rung(name=name, file=file, accuracy=float(accuracy), bytes=size, latency_ms=latency,
                kept=data["kept"], recipe=data["recipe"])


def _rung_file(file: Any, folder: Path, where: str) -> str:
    """The rung's file, relative to the ladder folder and inside it (no absolute path, no '..', no link out)."""
    file = _text(file, where, "file")
    pure = PurePosixPath(file)
    if pure.is_absolute() or PureWindowsPath(file).is_absolute() or "\\" in file or ".." in pure.parts:
        raise UserError(f"{where}.file must be a path inside the ladder folder, got {file!r}")
    resolved = (folder / file).resolve()
    if not resolved.is_relative_to(folder.resolve()):  # a symbolic link pointing out of the folder
        raise UserError(f"{where}.file {file!r} leads out of the ladder folder")
    if not resolved.is_file():
        raise UserError(f"{where}.file {file!r} does not exist in {folder}")
    return file


def _latency(value: Any, where: str) -> dict[str, float]:
    if not isinstance(value, dict):
        raise UserError(f"{where} must be an object with {', '.join(PERCENTILES)}, got {short_repr(value)}")
    _check_keys(value, set(PERCENTILES), where, "latency_ms")
    for key in PERCENTILES:
        if not (_is_number(value[key]) and value[key] >= 0):
            raise UserError(f"{where}.{key} must be a finite number >= 0, got {short_repr(value[key])}")
    if not value["p50"] <= value["p90"] <= value["p99"]:
        raise UserError(f"{where} must have p50 <= p90 <= p99, got {value['p50']}, {value['p90']}, {value['p99']}")
    return {key: float(value[key]) for key in PERCENTILES}


def _check_keys(data: dict, keys: set[str], where: str, what: str) -> None:
    missing, unknown = sorted(keys - data.keys()), sorted(data.keys() - keys)
    if missing:
        raise UserError(f"{where}: {what} has no {', '.join(missing)}")
    if unknown:  # refused rather than skipped, as pscompress metadata does
        raise UserError(f"{where}: {what} has unknown field(s) {short_repr(', '.join(map(str, unknown)))}")


def _text(value: Any, where: str, key: str, allow_empty: bool = False) -> str:
    if (not isinstance(value, str) or len(value) > MAX_TEXT or not (value or allow_empty)
            or not value.isprintable()):
        raise UserError(f"{where}.{key} must be a printable text of {'0' if allow_empty else '1'}..{MAX_TEXT} "
                        f"characters, got {short_repr(value)}")
    return value


def _is_number(value: Any) -> bool:
    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)


# --- running it -----------------------------------------------------------------------------

class LadderPredictor:
    """The kept rungs of a ladder, loaded once, least accurate (fastest) first.

    A rung's predicted latency is its manifest p50 times the ``percentile`` of the last ``window``
    slowdowns observed on any rung (seeded from the manifest's p90 and p99); ``predict`` runs the
    most accurate rung predicted to fit the deadline and feeds the time it took back in.
    """

    def __init__(self, folder: str | os.PathLike, threads: int | None = None, native: bool | None = None,
                 percentile: float = DEFAULT_PERCENTILE, window: int = 64) -> None:
        if not (_is_number(percentile) and 0 < percentile <= 1):
            raise UserError(f"`percentile` must be a fraction in (0, 1], got {short_repr(percentile)}", "percentile")
        if not (is_int(window) and 1 <= window <= MAX_WINDOW):
            raise UserError(f"`window` must be an integer 1..{MAX_WINDOW}, got {short_repr(window)}", "window")
        self.folder = Path(folder)
        self.manifest = load_manifest(self.folder)
        #: the kept rungs, accuracy strictly increasing (so, by the monotone rule, slower too)
        self.rungs = sorted((r for r in self.manifest.rungs if r.kept), key=lambda r: r.accuracy)
        _check_kept(self.rungs, str(self.folder / MANIFEST_NAME))
        self.predictors = [OnnxPredictor(self.folder / r.file, threads=threads, native=native) for r in self.rungs]
        _check_same_input(self.predictors, self.rungs)
        _warm_up(self.predictors)
        self.percentile = float(percentile)
        # Background load, heat and throttling slow every rung alike, so the rungs share one window
        # of slowdowns (a run's time over its rung's median in the manifest): the fastest rung's
        # runs under load move the slow rungs' predictions too, and a rung not run for a while is
        # never stuck at a stale estimate.
        self._nominal = [max(r.latency_ms["p50"], MIN_NOMINAL_MS) for r in self.rungs]
        self._slowdowns = _LatencyWindow(_seed_slowdowns(self.rungs, window), self.percentile)
        # choose() only reads these: kept up to date by observe() so selection does no arithmetic
        self._predicted = self._scaled(self._slowdowns.estimate())
        self._fastest = _argmin(self._nominal)

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.rungs]

    @property
    def predicted_ms(self) -> list[float]:
        """Each rung's current latency prediction, in rung order."""
        return list(self._predicted)

    @property
    def memory_bytes(self) -> int:
        """The kept rungs' file sizes: their weights; each onnxruntime session adds its arena on top."""
        return sum(r.bytes for r in self.rungs)

    def choose(self, remaining_ms: float) -> int:
        """The most accurate rung predicted to finish within ``remaining_ms``, else the fastest one."""
        predicted = self._predicted
        for i in range(len(predicted) - 1, -1, -1):
            if predicted[i] <= remaining_ms:
                return i
        return self._fastest

    def observe(self, rung: int, latency_ms: float) -> None:
        """Record one run of rung ``rung`` that took ``latency_ms`` and update every rung's prediction."""
        if not (_is_number(latency_ms) and latency_ms >= 0):
            raise UserError(f"latency_ms must be a finite number >= 0, got {short_repr(latency_ms)}")
        self._predicted = self._scaled(self._slowdowns.record(latency_ms / self._nominal[rung]))

    def _scaled(self, slowdown: float) -> list[float]:
        return [nominal * slowdown for nominal in self._nominal]

    def predict(self, x: np.ndarray, deadline_ms: float) -> LadderResult:
        """Run the rung ``choose(deadline_ms)`` picks on ``x`` (as OnnxPredictor.predict takes it), timed."""
        if not isinstance(deadline_ms, (int, float)) or math.isnan(deadline_ms):
            raise UserError(f"`deadline_ms` must be a number of milliseconds, got {short_repr(deadline_ms)}", "deadline_ms")
        i = self.choose(deadline_ms)
        predicted_miss = self._predicted[i] > deadline_ms
        start = time.perf_counter()
        logits = self.predictors[i].predict(x)
        latency_ms = (time.perf_counter() - start) * 1e3
        self.observe(i, latency_ms)
        return LadderResult(logits=logits, rung=self.rungs[i].name, latency_ms=latency_ms,
                            met=latency_ms <= deadline_ms, predicted_miss=predicted_miss)


def _check_kept(rungs: list[Rung], source: str) -> None:
    if not rungs:
        raise UserError(f"{source}: no rung is kept; mark the monotone subset kept (monotone_subset)")
    for slower, faster in zip(rungs[1:], rungs):
        if slower.accuracy == faster.accuracy:
            raise UserError(f"{source}: kept rungs {faster.name!r} and {slower.name!r} have the same accuracy; "
                            "kept rungs must be strictly more accurate one after another")


def _check_same_input(predictors: list[OnnxPredictor], rungs: list[Rung]) -> None:
    """Every rung must take the images the first one takes: the caller prepares one batch for all."""
    for predictor, rung in zip(predictors[1:], rungs[1:]):
        if tuple(predictor.input_shape) != tuple(predictors[0].input_shape):
            raise UserError(f"rung {rung.name!r} takes input {list(predictor.input_shape)}, "
                            f"rung {rungs[0].name!r} takes {list(predictors[0].input_shape)}")


class _LatencyWindow:
    """The last N latencies of one rung and their quantile (numpy's default, linear interpolation).

    A ring buffer says which value is oldest; a sorted copy gives the quantile by indexing, so
    recording one latency costs a bisect and a memmove (well under a microsecond) where
    np.quantile would sort 64 values again (tens of microseconds, a tenth of a fast rung's run).
    """

    def __init__(self, seed: np.ndarray, percentile: float) -> None:
        self._ring = [float(v) for v in seed]
        self._sorted = sorted(self._ring)
        self._next = 0
        position = (len(self._ring) - 1) * percentile
        self._low = min(int(position), len(self._ring) - 1)
        self._frac = position - self._low

    def record(self, value: float) -> float:
        """Replace the oldest latency by ``value``; the new estimate."""
        oldest = self._ring[self._next]
        self._ring[self._next] = value
        self._next = (self._next + 1) % len(self._ring)
        del self._sorted[bisect.bisect_left(self._sorted, oldest)]
        bisect.insort(self._sorted, value)
        return self.estimate()

    def estimate(self) -> float:
        low = self._sorted[self._low]
        return low + (self._sorted[self._low + 1] - low) * self._frac if self._frac else low


def _warm_up(predictors: list[OnnxPredictor]) -> None:
    """A few untimed runs per rung: a session's first runs allocate and pack weights, many times
    slower than the rest, and must not be a request's (nor teach the estimate a false slowdown)."""
    shape = predictors[0].input_shape
    if not all(is_int(d) and d > 0 for d in shape):  # sizes chosen at run time: nothing to warm up with
        return
    zeros = np.zeros((1, *shape), np.float32)
    for predictor in predictors:
        for _ in range(WARMUP_RUNS):
            predictor.predict(zeros)


def _seed_slowdowns(rungs: list[Rung], size: int) -> np.ndarray:
    """``size`` slowdowns whose quantiles follow the manifest's p50/p90/p99 over p50 (the rungs'
    median ratios; below the median all 1, a cautious start)."""
    p90, p99 = (float(np.median([r.latency_ms[key] / max(r.latency_ms["p50"], MIN_NOMINAL_MS) for r in rungs]))
                for key in ("p90", "p99"))
    q = (np.arange(size) + 0.5) / size
    return np.interp(q, [0.0, 0.5, 0.9, 0.99, 1.0], [1.0, 1.0, max(p90, 1.0), max(p99, p90, 1.0), max(p99, p90, 1.0)])


def _argmin(values: list[float]) -> int:
    return min(range(len(values)), key=values.__getitem__)
