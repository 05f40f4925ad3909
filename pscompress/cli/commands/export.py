"""``pscompress export``: write a model as ONNX (packed PSConv operators) or TFLite."""
from __future__ import annotations

import warnings
from pathlib import Path

import click

_SUFFIXES = {".onnx": "onnx", ".tflite": "tflite"}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="File to write (.onnx or .tflite). Written atomically: never half a file.")
@click.option("--format", "fmt", type=click.Choice(["onnx", "tflite"]),
              help="Output format.  [default: from the output's suffix]")
@click.option("--fp16", is_flag=True, help="TFLite only: store weights as float16 (half the size).")
@click.option("--dense", is_flag=True,
              help="ONNX only: write every convolution as a standard dense Conv (a baseline to compare with).")
@click.option("--input-shape", metavar="C,H,W",
              help="Input size of the model.  [default: the one its checkpoint records]")
@click.option("--arch", metavar="NAME", help="Architecture of a bare state dict: resnet18, resnet20 or vgg16.")
@click.option("--trust-pickle", is_flag=True,
              help="Allow a .pt file that holds pickled Python objects (can run code: trusted files only).")
def export(model: Path, output: Path, fmt: str | None, fp16: bool, dense: bool, input_shape: str | None,
           arch: str | None, trust_pickle: bool) -> None:
    """Export MODEL (a pscompress checkpoint) for deployment and print a size summary.

    ONNX: batch norm is folded into the convolutions; each pSConv layer, with the residual
    add and ReLU that follow it, becomes one ai.pscompress PSConv/PSConvAdd node holding only
    the kept weights. The file runs in plain onnxruntime (portable functions) and fast with
    the pscompress kernel library. See docs/export.md.
    """
    from pscompress.workstation.checkpoint import load_model
    from pscompress.core.errors import UserError
    from pscompress.workstation.measure import parse_input_shape

    fmt = fmt or _SUFFIXES.get(output.suffix.lower())
    if fmt is None:
        raise UserError(f"cannot tell the format from {output.name!r}: use a .onnx or .tflite suffix, or --format")
    if fp16 and fmt != "tflite":
        raise UserError("--fp16 applies to TFLite export only")
    if dense and fmt != "onnx":
        raise UserError("--dense applies to ONNX export only")
    loaded = load_model(model, arch=arch, trust_pickle=trust_pickle)
    shape = parse_input_shape(input_shape) if input_shape else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        if fmt == "onnx":
            from pscompress.exporters.onnx_export import export_onnx

            summary = export_onnx(loaded, output, dense=dense, input_shape=shape)
        else:
            summary = _export_tflite()(loaded, output, fp16=fp16, input_shape=shape)
    for w in caught:
        if issubclass(w.category, UserWarning):
            click.echo(f"Warning: {w.message}", err=True)
    click.echo(_size_line(summary, fmt))


def _export_tflite():
    from pscompress.core.errors import UserError

    try:
        from pscompress.exporters.tflite import export_tflite
    except ImportError as exc:
        raise UserError(f"TFLite export is not available in this install ({exc})") from exc
    return export_tflite


def _size_line(summary: dict, fmt: str) -> str:
    size, dense = summary["bytes"], summary.get("dense_bytes")
    line = f"wrote {summary['path']} ({fmt}): {_human(size)}"
    if dense:
        line += f", {size / dense:.2f}x the dense export ({_human(dense)})"
    layers = summary.get("psconv_layers", summary.get("sparse_layers"))
    if layers is not None:
        line += f"; {layers} pSConv layer(s)"
    if summary.get("kept_conv_weights") is not None:
        line += f", {summary['kept_conv_weights']:,} of {summary['conv_weights']:,} conv weights kept"
    if summary.get("max_rel_diff") is not None:
        line += f"; verified against PyTorch (max relative difference {summary['max_rel_diff']:.1e})"
    return line


def _human(size: float) -> str:
    return f"{size / 1024:.1f} KB" if size < 1024 * 1024 else f"{size / 1024 / 1024:.2f} MB"
