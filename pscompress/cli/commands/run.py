"""``pscompress run``: classify an image or a .npy batch with an exported ONNX or TFLite model (no PyTorch)."""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from pscompress.cli.options import input_shape_option, native_option, threads_option


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(path_type=Path), required=False)
@click.option("-i", "--input", "input_path", required=True, type=click.Path(path_type=Path), metavar="FILE",
              help="An image (PNG, JPEG...: converted to the model's channels, resized and normalised as its "
                   "metadata records) or a .npy array [N,C,H,W] / [C,H,W] / [H,W] (uint8 0..255 or float 0..1, "
                   "in the model's channel order; the recorded mean/std are applied to it too). "
                   "With --ladder: a folder of images, streamed one by one in name order.")
@click.option("--ladder", "ladder_dir", type=click.Path(path_type=Path), metavar="DIR",
              help="Instead of MODEL, a model ladder (docs/ladder.md): each image runs on the most accurate kept "
                   "rung predicted to finish before --deadline-ms.")
@click.option("--deadline-ms", type=click.FloatRange(min=0, min_open=True), metavar="MS",
              help="With --ladder: each image's deadline, counted from when its file starts being read.")
@click.option("-k", "--top-k", default=5, show_default=True, type=click.IntRange(min=1),
              help="How many classes to print per image.")
@input_shape_option("The size to resize an image to, or that a .npy array has: a model exported with "
                    "--dynamic-hw runs any H and W (C must be the model's); another model takes only its own.  "
                    "[default: the input shape the model records]")
@threads_option()
@native_option()
def run(model: Path | None, input_path: Path, ladder_dir: Path | None, deadline_ms: float | None, top_k: int,
        input_shape: str | None, threads: int | None, native: bool | None) -> None:
    """Run MODEL (.onnx or .tflite) on an input FILE and print the top classes of each image with their probabilities.

    A model with several outputs prints each one: the top classes of a 2-D output [N, classes],
    the shape and value range of any other. With --ladder DIR --deadline-ms D in place of MODEL,
    streams a folder of images and prints per image the rung used, its latency and whether it met
    the deadline, then a summary.
    """
    from pscompress.board.predictor import open_predictor
    from pscompress.core.errors import UserError
    from pscompress.core.inputs import load_input, parse_input_shape

    if (model is None) == (ladder_dir is None):
        raise UserError("give either MODEL or --ladder DIR")
    if (ladder_dir is None) != (deadline_ms is None):
        raise UserError("--deadline-ms and --ladder go together")
    if ladder_dir is not None:
        if input_shape is not None:
            raise UserError("--input-shape does not apply to --ladder: the rungs take the size they were exported for")
        _stream_ladder(ladder_dir, input_path, deadline_ms, threads, native)
        return
    if model.suffix.lower() not in (".onnx", ".tflite"):
        raise UserError(f"{model.name}: run takes an exported .onnx or .tflite model (see `pscompress export`)")
    predictor = open_predictor(model, threads=threads, native=native)
    shape = parse_input_shape(input_shape) if input_shape else predictor.input_shape
    if not predictor.takes(shape):
        size = "x".join(map(str, predictor.input_shape))
        kind = f"{predictor.input_shape[0]}-channel images of any size" if predictor.dynamic_hw else \
            f"{size} images only (export it with --dynamic-hw for other sizes)"
        raise UserError(f"--input-shape {input_shape}: {model.name} takes {kind}")
    images = load_input(input_path, shape, predictor.preprocess)  # predict applies mean/std
    outputs = predictor.predict_all(images)
    kernel = "TFLite interpreter" if predictor.native is None else \
        "native PSConv kernels" if predictor.native else "portable ONNX functions"
    click.echo(f"{model.name} on {input_path.name}: {len(images)} image(s), {kernel}")
    for name, value in outputs.items():
        if len(outputs) > 1 or value.ndim != 2:
            click.echo(f"output {name} {list(value.shape)}" + ("" if value.ndim == 2 else f": {_summary(value)}"))
        if value.ndim == 2 and value.shape[1] > 0:
            _print_topk(predictor, value, top_k)


def _stream_ladder(ladder_dir: Path, folder: Path, deadline_ms: float, threads: int | None,
                   native: bool | None) -> None:
    import time

    from pscompress.board.data import IMAGE_SUFFIXES
    from pscompress.board.ladder import LadderPredictor
    from pscompress.core.errors import UserError
    from pscompress.core.inputs import load_input

    if not folder.is_dir():
        raise UserError(f"--input {folder}: with --ladder, give a folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UserError(f"--input {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    ladder = LadderPredictor(ladder_dir, threads=threads, native=native)
    first = ladder.predictors[0]
    click.echo(f"ladder {ladder_dir}: rungs {', '.join(ladder.names)} (fastest first), "
               f"{ladder.memory_bytes / 1024:.1f} KB of weights; deadline {deadline_ms:g} ms per image")
    used: dict[str, int] = dict.fromkeys(ladder.names, 0)
    totals, met = [], 0
    load_input(files[0], first.input_shape, first.preprocess)  # the decoder's first-use imports, not a frame's
    for path in files:
        start = time.perf_counter()
        image = load_input(path, first.input_shape, first.preprocess)
        read_ms = (time.perf_counter() - start) * 1e3
        result = ladder.predict(image, deadline_ms - read_ms)
        total = (time.perf_counter() - start) * 1e3
        top = int(result.logits[0].argmax())
        label = first.class_name(top) if first.classes else str(top)
        used[result.rung] += 1
        totals.append(total)
        met += total <= deadline_ms
        click.echo(f"{path.name}: {label} via {result.rung} in {total:.2f} ms (read {read_ms:.2f} + run "
                   f"{result.latency_ms:.2f}) {'met' if total <= deadline_ms else 'MISSED'}")
    shares = ", ".join(f"{name} {count}" for name, count in used.items())
    click.echo(f"{len(files)} image(s): {met} met the {deadline_ms:g} ms deadline, {len(files) - met} missed "
               f"({(len(files) - met) / len(files):.1%}); rungs used: {shares}; "
               f"latency p50 {np.percentile(totals, 50):.2f} ms, p99 {np.percentile(totals, 99):.2f} ms")


def _print_topk(predictor, logits: np.ndarray, top_k: int) -> None:
    from pscompress.board.predictor import topk_of

    top = topk_of(logits, top_k)
    # Class names belong to the output that has one score per class.
    named = predictor.classes is not None and logits.shape[1] == len(predictor.classes)
    for n in range(len(logits)):
        if len(logits) > 1:
            click.echo(f"image {n}:")
        for rank, (p, c) in enumerate(zip(top.values[n], top.indices[n]), start=1):
            label = predictor.class_name(int(c)) if named else str(int(c))
            click.echo(f"  {rank}. {label:<20} {p:7.2%}")


def _summary(value: np.ndarray) -> str:
    if value.size == 0:
        return "empty"
    if not np.issubdtype(value.dtype, np.number):
        return f"{value.dtype} values"
    return f"min {float(value.min()):.4g}, mean {float(value.mean()):.4g}, max {float(value.max()):.4g}"
