"""``pscompress quantize``: an exported fp32 ONNX model to int8, calibrated on real images."""
from __future__ import annotations

from pathlib import Path

import click

from pscompress.cli.options import calibration_options


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(path_type=Path))
@calibration_options()
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True,
              help="Which split of the data set to calibrate on.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Where to write the int8 model. Written atomically: never half a file.  "
                   "[default: MODEL-int8.onnx beside MODEL]")
def quantize(model: Path, spec: str, calibration: int, split: str, output: Path | None) -> None:
    """Quantize MODEL (an .onnx file from `pscompress export`) to int8: u8 activations, per-channel
    symmetric s8 weights, int32 bias, post-training, calibrated on real images.

    Every pSConv layer becomes one ai.pscompress QLinearPSConv node that keeps only the kept
    weights, one byte each; the other layers are onnxruntime's own QDQ int8. The file runs in
    stock onnxruntime (its int8 kernels, through the portable function) and with the pscompress
    kernel library. Without the library it computes exactly what onnxruntime's quantize_static
    makes of the dense export; the command checks that before it writes. See docs/quantize.md.

    \b
    Example:
      pscompress quantize model.onnx --data fashion-mnist -o model-int8.onnx
    """
    from pscompress.core.errors import UserError
    from pscompress.workstation.quantize import quantize_file

    if model.suffix.lower() != ".onnx":
        raise UserError(f"{model.name}: quantize takes an exported .onnx model (see `pscompress export`)")
    output = output or model.with_name(model.stem + "-int8.onnx")
    if output.suffix.lower() != ".onnx":
        raise UserError(f"`output` {output.name} must end in .onnx", "output")
    summary = quantize_file(model, spec, output, calibration=calibration, split=split)
    click.echo(f"wrote {summary.path} (int8 onnx): {summary.bytes / 1024:.1f} KB, "
               f"{summary.bytes / summary.fp32_bytes:.2f}x the fp32 dense model; {summary.int8_layers} pSConv layer(s) "
               f"as QLinearPSConv; calibrated on {summary.calibration_images} {split} images; "
               "verified against onnxruntime's int8 dense model")
    for line in summary.dense_layers:
        click.echo(f"Warning: left as a dense int8 layer: {line}", err=True)
