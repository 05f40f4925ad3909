"""Measuring a model on a data set: accuracy, per-class accuracy, latency, and the JSON record.

The JSON written by ``pscompress eval --json`` is the baseline format ``pscompress check``
reads back, so it carries the predictions and a fingerprint of the data: a later run can then
tell whether two models disagree on the same images, and refuse to compare different data.
Accuracies are fractions in [0, 1]; times are milliseconds. numpy only (no torch).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

import numpy as np

from pscompress.board.predictor import Predictor, describe, num_classes, open_predictor
from pscompress.core.errors import UserError

SCHEMA = "pscompress-eval/1"
AGREEMENT_SCHEMA = "pscompress-agreement/1"
TOP5_MIN_CLASSES = 6  # top-5 says something only when there are more than five classes


@dataclass
class Latency:
    """Wall-clock time of ``predict`` per batch and per image, in milliseconds."""

    batch_size: int
    batches: int
    batch_p50: float
    batch_p90: float
    image_p50: float
    image_p90: float
    image_mean: float


@dataclass
class EvalResult:
    model: dict[str, Any]  # path, format, size_bytes, native
    data: dict[str, Any]  # spec, split, name, images, sha256
    classes: list[str]
    top1: float
    top5: float | None
    per_class: dict[str, float | None]  # None for a class with no image in the data
    latency: Latency
    predictions: np.ndarray = field(repr=False)  # top-1 class index of every image, in data order

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["predictions"] = self.predictions.astype(int).tolist()
        return {"schema": SCHEMA, **record}

    def dumps(self) -> str:
        """Indented JSON, with the (long) predictions list on one line so the file stays readable in a diff."""
        record = self.to_json()
        predictions = json.dumps(record.pop("predictions"), separators=(",", ":"))
        text = json.dumps({**record, "predictions": None}, indent=1)
        return text[: text.rindex("null")] + predictions + text[text.rindex("null") + 4:] + "\n"

    @classmethod
    def from_json(cls, record: Any, source: str = "baseline") -> "EvalResult":
        if not isinstance(record, dict) or record.get("schema") != SCHEMA:
            raise UserError(f"{source} is not a pscompress eval record (expected schema {SCHEMA!r}; write one with `pscompress eval --json`)")
        try:
            return cls(
                model=dict(record["model"]), data=dict(record["data"]), classes=list(record["classes"]),
                top1=float(record["top1"]), top5=None if record["top5"] is None else float(record["top5"]),
                per_class=dict(record["per_class"]), latency=Latency(**record["latency"]),
                predictions=np.asarray(record["predictions"], dtype=np.int64),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{source} is a damaged pscompress eval record ({exc.__class__.__name__}: {exc})") from exc


@dataclass
class AgreementResult:
    """A per-pixel model (a segmenter) measured against a reference on the same images: data sets label whole
    images, so what can be measured is how often its top-1 class agrees with the reference's, pixel by pixel."""

    model: dict[str, Any]      # path, format, size_bytes, native
    reference: dict[str, Any]  # the same for the reference model
    data: dict[str, Any]       # spec, split, name, images
    output_shape: list[int]    # one image's scores: [classes, H, W]
    pixels: int                # pixels compared
    agreement: float           # fraction of them on which the two top-1 classes agree
    latency: Latency           # the model's

    def dumps(self) -> str:
        return json.dumps({"schema": AGREEMENT_SCHEMA, **asdict(self)}, indent=1) + "\n"


def load_result(path: str | os.PathLike) -> EvalResult:
    """Read an eval record written by ``pscompress eval --json``."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not JSON: {exc}") from exc
    return EvalResult.from_json(record, str(path))


class Fingerprint:
    """sha256 over the images (fed batch by batch) and labels exactly as the model sees them."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._shape: tuple[int, ...] | None = None
        self._count = 0

    def add_images(self, x: np.ndarray) -> None:
        self._shape = tuple(x.shape[1:])
        self._count += len(x)
        self._digest.update(np.ascontiguousarray(x, dtype=np.float32).tobytes())

    def finish(self, labels: np.ndarray) -> str:
        self._digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
        self._digest.update(str((self._count, self._shape)).encode())
        return self._digest.hexdigest()


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the k highest logits."""
    topk = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return float(np.mean(np.any(topk == labels[:, None], axis=1)))


def per_class_accuracy(predictions: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict[str, float | None]:
    result: dict[str, float | None] = {}
    for index, name in enumerate(classes):
        members = labels == index
        result[name] = float(np.mean(predictions[members] == index)) if members.any() else None
    return result


def disagreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of images on which two models' top-1 predictions differ."""
    if a.shape != b.shape:
        raise UserError(f"cannot compare predictions on {a.shape[0]} and {b.shape[0]} images")
    return float(np.mean(a != b)) if a.size else 0.0


def summarise_latency(batch_ms: Sequence[float], batch_sizes: Sequence[int], batch_size: int) -> Latency:
    """Percentiles over batches; a short last batch counts per image but not per batch."""
    times = np.asarray(batch_ms, dtype=np.float64)
    sizes = np.asarray(batch_sizes, dtype=np.float64)
    full = times[sizes == batch_size] if np.any(sizes == batch_size) else times
    per_image = times / sizes
    return Latency(
        batch_size=batch_size, batches=len(times),
        batch_p50=float(np.percentile(full, 50)), batch_p90=float(np.percentile(full, 90)),
        image_p50=float(np.percentile(per_image, 50)), image_p90=float(np.percentile(per_image, 90)),
        image_mean=float(times.sum() / sizes.sum()),
    )


class LabelledData(Protocol):
    """What pscompress.board.data.ArrayDataset offers: labels, class names and images batch by batch."""

    y: np.ndarray
    classes: list[str]
    name: str
    shape: tuple[int, int, int]

    def __len__(self) -> int: ...

    def batches(self, batch_size: int) -> Iterable[tuple[np.ndarray, np.ndarray]]: ...

    def in_channel_order(self, order: str | None) -> "LabelledData": ...


def run_batches(predictor: Predictor, data: LabelledData, batch_size: int, progress: bool | None = None,
                desc: str = "eval") -> tuple[np.ndarray, list[float], list[int], str]:
    """Logits for every image, the time each batch took and the data's fingerprint.

    One untimed warm-up call on the first batch runs first: it pays for lazy initialisation.
    """
    from tqdm import tqdm

    _check_images(data)
    outputs, times, sizes, fingerprint = [], [], [], Fingerprint()
    with tqdm(total=len(data), desc=desc, unit="img", disable=None if progress is None else not progress,
              leave=False) as bar:
        for batch, _ in data.batches(batch_size):
            if not times:
                predictor.predict(batch)
            fingerprint.add_images(batch)
            began = time.perf_counter()
            logits = predictor.predict(batch)
            times.append((time.perf_counter() - began) * 1000.0)
            sizes.append(len(batch))
            outputs.append(np.asarray(logits, dtype=np.float32).reshape(len(batch), -1))
            bar.update(len(batch))
    return np.concatenate(outputs), times, sizes, fingerprint.finish(data.y)


def evaluate(predictor: Predictor, data: LabelledData, *, batch_size: int = 100,
             model: dict[str, Any] | None = None, spec: str | None = None, split: str | None = None,
             progress: bool | None = None, desc: str = "eval") -> EvalResult:
    """Run ``predictor`` over ``data`` and measure it."""
    if batch_size < 1:
        raise UserError("`batch_size` must be at least 1", "batch_size")
    logits, times, sizes, sha256 = run_batches(predictor, data, batch_size, progress, desc)
    if logits.shape[1] != len(data.classes):
        raise UserError(f"the model predicts {logits.shape[1]} classes but data set {data.name} has {len(data.classes)}")
    labels = np.asarray(data.y, dtype=np.int64)
    predictions = np.argmax(logits, axis=1)
    return EvalResult(
        model=dict(model or {}),
        data={"spec": spec, "split": split, "name": data.name, "images": int(len(labels)), "sha256": sha256},
        classes=list(data.classes),
        top1=float(np.mean(predictions == labels)),
        top5=topk_accuracy(logits, labels, 5) if len(data.classes) >= TOP5_MIN_CLASSES else None,
        per_class=per_class_accuracy(predictions, labels, data.classes),
        latency=summarise_latency(times, sizes, min(batch_size, len(labels))),
        predictions=predictions,
    )


def evaluate_file(path: str | os.PathLike, data: LabelledData, *, spec: str | None = None, split: str | None = None,
                  batch_size: int = 100, native: bool | None = None, threads: int | None = None,
                  trust_pickle: bool = False, progress: bool | None = None, output: str | None = None) -> EvalResult:
    """Open a model file, check that ``data`` fits it, and measure it.

    ``output``: which output is the classifier, for a model with several (see ``open_predictor``).
    """
    predictor, data = _open_for(path, data, native, threads, trust_pickle, output)
    shape = per_pixel_shape(predictor, data)
    if shape is not None:
        raise UserError(f"{Path(path).name} scores every pixel ([N, {', '.join(map(str, shape))}]) and data set "
                        f"{data.name} labels whole images: measure it against its dense original with `reference`",
                        "reference")
    classes = num_classes(predictor)
    _check_fits(predictor, data, len(data.classes) if classes is None else classes)
    return evaluate(predictor, data, batch_size=batch_size, model=describe(path, predictor), spec=spec, split=split,
                    progress=progress, desc=Path(path).name)


def per_pixel_shape(predictor: Predictor, data: LabelledData) -> list[int] | None:
    """[classes, H, W] when the model's scores are per pixel (H * W > 1) on the data's first image, else None."""
    _check_images(data)
    _check_fits(predictor, data, None)
    first, _ = next(iter(data.batches(1)))
    scores = np.asarray(predictor.predict(first))
    return list(scores.shape[1:]) if scores.ndim == 4 and scores.shape[2] * scores.shape[3] > 1 else None


def pixel_agreement(path: str | os.PathLike, reference: str | os.PathLike, data: LabelledData, *,
                    spec: str | None = None, split: str | None = None, batch_size: int = 100,
                    native: bool | None = None, threads: int | None = None, trust_pickle: bool = False,
                    progress: bool | None = None, output: str | None = None) -> AgreementResult:
    """Run a per-pixel model and its reference over ``data`` batch by batch (memory: one batch of scores each)
    and count the pixels on which their top-1 classes agree; the model's batches are timed."""
    from tqdm import tqdm

    if batch_size < 1:
        raise UserError("`batch_size` must be at least 1", "batch_size")
    predictor, model_data = _open_for(path, data, native, threads, trust_pickle, output)
    shape = per_pixel_shape(predictor, model_data)
    if shape is None:
        raise UserError(f"{Path(path).name} scores whole images: `reference` compares a per-pixel model", "reference")
    judge, judge_data = _open_for(reference, data, native, threads, trust_pickle, output)
    if per_pixel_shape(judge, judge_data) != shape:
        raise UserError(f"reference {Path(reference).name} does not score [N, {', '.join(map(str, shape))}] as "
                        f"{Path(path).name} does: they must match")
    agreed = compared = 0
    times, sizes = [], []
    with tqdm(total=len(data), desc=Path(path).name, unit="img", disable=None if progress is None else not progress,
              leave=False) as bar:
        for (batch, _), (judge_batch, _) in zip(model_data.batches(batch_size), judge_data.batches(batch_size)):
            if not times:
                predictor.predict(batch)  # warm-up, untimed
            began = time.perf_counter()
            scores = np.asarray(predictor.predict(batch))
            times.append((time.perf_counter() - began) * 1000.0)
            sizes.append(len(batch))
            wanted = np.asarray(judge.predict(judge_batch)).argmax(1)
            agreed += int(np.count_nonzero(scores.argmax(1) == wanted))
            compared += wanted.size
            bar.update(len(batch))
    return AgreementResult(model=describe(path, predictor), reference=describe(reference, judge),
                           data={"spec": spec, "split": split, "name": data.name, "images": len(data)},
                           output_shape=shape, pixels=compared, agreement=agreed / compared,
                           latency=summarise_latency(times, sizes, min(batch_size, len(data))))


def _open_for(path, data: LabelledData, native, threads, trust_pickle, output) -> tuple[Predictor, LabelledData]:
    """The model's predictor and the data as it takes it (channel order; mean/std is the predictor's own job)."""
    predictor = open_predictor(path, native=native, threads=threads, trust_pickle=trust_pickle, output=output)
    return predictor, data.in_channel_order(predictor.preprocess.get("channel_order"))


def _check_fits(predictor: Predictor, data: LabelledData, classes: int | None) -> None:
    """UserError unless the data's images (and, unless None, its classes) fit the model."""
    from pscompress.board.data import check_compatible

    channels, *hw = predictor.input_shape
    known_hw = tuple(hw) if len(hw) == 2 and all(isinstance(d, int) and d > 0 for d in hw) else None
    check_compatible(data, int(channels) if isinstance(channels, int) else data.shape[0], classes, known_hw)


def _check_images(data: LabelledData) -> None:
    if len(data) == 0:
        raise UserError(f"data set {data.name} has no images")


def format_report(result: EvalResult) -> str:
    """The human-readable summary ``pscompress eval`` prints."""
    lat = result.latency
    lines = [
        f"model   {result.model.get('path', '?')} ({result.model.get('format', '?')}"
        + (f", native kernel {'on' if result.model['native'] else 'off'}" if result.model.get("native") is not None else "")
        + f", {result.model.get('size_bytes', 0):,} bytes)",
        f"data    {result.data.get('name') or result.data.get('spec')}, {result.data['images']:,} images",
        f"top-1   {result.top1:.2%}",
    ]
    if result.top5 is not None:
        lines.append(f"top-5   {result.top5:.2%}")
    lines.append("per class:")
    width = max((len(name) for name in result.per_class), default=0)
    for name, acc in result.per_class.items():
        lines.append(f"  {name:<{width}}  {'no images' if acc is None else f'{acc:.2%}'}")
    lines.append(f"latency ({lat.batches} batches of {lat.batch_size}): "
                 f"per batch p50 {lat.batch_p50:.2f} ms, p90 {lat.batch_p90:.2f} ms; "
                 f"per image p50 {lat.image_p50:.3f} ms, p90 {lat.image_p90:.3f} ms")
    return "\n".join(lines)


def format_agreement(result: AgreementResult) -> str:
    """The summary ``pscompress eval --reference`` prints for a per-pixel model."""
    lat = result.latency
    return "\n".join([
        f"model     {result.model.get('path', '?')} ({result.model.get('format', '?')}, "
        f"{result.model.get('size_bytes', 0):,} bytes), scores [N, {', '.join(map(str, result.output_shape))}]",
        f"data      {result.data.get('name') or result.data.get('spec')}, {result.data['images']:,} images",
        f"agreement {result.agreement:.2%} of {result.pixels:,} pixels with the top-1 class of {result.reference.get('path')}",
        f"latency ({lat.batches} batches of {lat.batch_size}): per batch p50 {lat.batch_p50:.2f} ms, "
        f"p90 {lat.batch_p90:.2f} ms; per image p50 {lat.image_p50:.3f} ms, p90 {lat.image_p90:.3f} ms"])
