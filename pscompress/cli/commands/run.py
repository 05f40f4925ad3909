"""``pscompress run``: classify an image or a .npy batch with an exported ONNX model (no PyTorch)."""
from __future__ import annotations

from pathlib import Path

import click

from pscompress.cli.options import native_option, threads_option


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-i", "--input", "input_path", required=True, type=click.Path(path_type=Path), metavar="FILE",
              help="An image (PNG, JPEG...: converted to the model's channels and resized to its input size) "
                   "or a .npy array [N,C,H,W] / [C,H,W] / [H,W] (uint8 0..255 or float 0..1).")
@click.option("-k", "--top-k", default=5, show_default=True, type=click.IntRange(min=1),
              help="How many classes to print per image.")
@threads_option()
@native_option()
def run(model: Path, input_path: Path, top_k: int, threads: int | None, native: bool | None) -> None:
    """Run MODEL (.onnx) on an input FILE and print the top classes of each image with their probabilities."""
    from pscompress.board.onnx_predictor import OnnxPredictor, load_input
    from pscompress.core.errors import UserError

    if model.suffix.lower() != ".onnx":
        raise UserError(f"{model.name}: run takes an exported .onnx model (see `pscompress export`)")
    predictor = OnnxPredictor(model, threads=threads, native=native)
    images = load_input(input_path, predictor.input_shape)
    top = predictor.topk(images, top_k)
    kernel = "native PSConv kernels" if predictor.native else "portable ONNX functions"
    click.echo(f"{model.name} on {input_path.name}: {len(images)} image(s), {kernel}")
    for n in range(len(images)):
        if len(images) > 1:
            click.echo(f"image {n}:")
        for rank, (p, c) in enumerate(zip(top.values[n], top.indices[n]), start=1):
            click.echo(f"  {rank}. {predictor.class_name(int(c)):<20} {p:7.2%}")
