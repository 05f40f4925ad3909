"""``pscompress export``: write a model as ONNX (packed PSConv operators) or TFLite."""
from __future__ import annotations

import warnings
from pathlib import Path

import click

from pscompress.cli.options import arch_option, calibration_options, input_shape_option, trust_pickle_option

from pscompress.exporters.formats import FORMATS, format_of, format_taking
from pscompress.exporters.summary import ExportSummary

_SUFFIXES = " or ".join(f.suffix for f in FORMATS.values())


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help=f"File to write ({_SUFFIXES}). Written atomically: never half a file.")
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)),
              help="Output format.  [default: from the output's suffix]")
@click.option("--fp16", is_flag=True, help="TFLite only: store weights as float16 (half the size).")
@click.option("--int8", is_flag=True,
              help="TFLite only: a full-integer int8 file (int8 weights and activations) calibrated on --data images, "
                   "checked in a TFLite interpreter before it is written.")
@calibration_options("TFLite only, with --int8. ", required=False, default=None)
@click.option("--dense", is_flag=True,
              help="ONNX only: write every convolution as a standard dense Conv (a baseline to compare with).")
@click.option("--dynamic-hw", is_flag=True,
              help="ONNX only: make the input's height and width symbolic, like the batch, so one file runs any "
                   "image size (a fully convolutional model; verified at the input size and at another); "
                   "pscompress run --input-shape then picks the size.")
@input_shape_option("Input size of the model.  [default: the one its checkpoint records]")
@arch_option()
@trust_pickle_option()
def export(model: Path, output: Path, fmt: str | None, fp16: bool, int8: bool, spec: str | None,
           calibration: int | None, dense: bool, dynamic_hw: bool, input_shape: str | None, arch: str | None,
           trust_pickle: bool) -> None:
    """Export MODEL (a pscompress checkpoint) for deployment and print a size summary.

    ONNX: batch norm is folded into the convolutions; each pSConv layer, with the residual
    add and ReLU that follow it, becomes one ai.pscompress PSConv/PSConvAdd node holding only
    the kept weights. The file runs in plain onnxruntime (portable functions) and fast with
    the pscompress kernel library. MODEL may also be a torch.export program (.pt2). See docs/export.md.
    """
    from pscompress.core.errors import UserError
    from pscompress.core.inputs import parse_input_shape
    from pscompress.workstation.checkpoint import load_model

    chosen = FORMATS[fmt] if fmt else format_of(output)
    if chosen is None:
        raise UserError(f"cannot tell the format from {output.name!r}: use a {_SUFFIXES} suffix, or --format")
    # Each format's own options (the table's), in the order they are checked; None: the exporter's default.
    flags = {"fp16": fp16, "int8": int8, "data": spec, "calibration": calibration, "dense": dense,
             "dynamic_hw": dynamic_hw}
    for name, given in flags.items():
        if given and name not in chosen.options:
            raise UserError(f"--{name.replace('_', '-')} applies to {format_taking(name).label} export only")
    options = {name: flags[name] for name in chosen.options}
    loaded = load_model(model, arch=arch, trust_pickle=trust_pickle)
    shape = parse_input_shape(input_shape) if input_shape else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        exporter = chosen.load()
        summary = exporter(loaded, output, input_shape=shape, **options)
    for w in caught:
        if issubclass(w.category, UserWarning):
            click.echo(f"Warning: {w.message}", err=True)
    click.echo(_size_line(summary, chosen.name))


def _size_line(summary: ExportSummary, fmt: str) -> str:
    size, dense = summary.bytes, summary.dense_bytes
    line = f"wrote {summary.path} ({fmt}): {_human(size)}"
    if dense:
        line += f", {size / dense:.2f}x the dense export ({_human(dense)})"
    line += f"; {summary.psconv_layers} pSConv layer(s)"
    if summary.kept_conv_weights is not None:
        line += f", {summary.kept_conv_weights:,} of {summary.conv_weights:,} conv weights kept"
    if summary.max_rel_diff is not None:
        line += f"; verified against PyTorch (max relative difference {summary.max_rel_diff:.1e})"
    return line


def _human(size: float) -> str:
    return f"{size / 1024:.1f} KB" if size < 1024 * 1024 else f"{size / 1024 / 1024:.2f} MB"
