"""``pscompress info``: what an exported ONNX model holds. Needs neither PyTorch nor onnx."""
from __future__ import annotations

from pathlib import Path

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(path_type=Path))
def info(model: Path) -> None:
    """Describe MODEL (.onnx): its layers with their pattern and density, file size,
    IR version and operator sets, and the metadata pscompress wrote (classes, accuracy...)."""
    from pscompress.errors import UserError
    from pscompress.onnx_reader import read_onnx

    if model.suffix.lower() != ".onnx":
        raise UserError(f"{model.name}: info describes .onnx models")
    summary = read_onnx(model)
    for line in describe(summary, model.stat().st_size):
        click.echo(line)


def describe(summary, file_bytes: int) -> list[str]:
    """The lines `info` prints for a parsed model."""
    from pscompress.onnx_reader import pattern_name

    meta = {k.removeprefix("pscompress."): v for k, v in summary.metadata.items()}
    lines = [f"file size:   {file_bytes:,} bytes ({sum(b for _, b in summary.initializers.values()):,} in weights)",
             f"IR version:  {summary.ir_version} (producer {summary.producer or 'unknown'})",
             "opsets:      " + ", ".join(f"{d or 'ai.onnx'} v{v}" for d, v in sorted(summary.opsets.items()))]
    if summary.functions:
        lines.append("functions:   " + ", ".join(summary.functions) + " (portable fallback)")
    for key in ("version", "arch", "pattern", "input_shape", "accuracy", "classes"):
        if key in meta:
            lines.append(f"{key + ':':<13}{meta[key]}")

    rows, kept_total, dense_total = [], 0, 0
    for node in summary.nodes:
        if node.op_type not in ("Conv", "PSConv", "PSConvAdd", "Gemm", "MatMul"):
            continue
        weights = summary.initializers.get(node.inputs[1]) if len(node.inputs) > 1 else None
        if weights is None:
            continue
        a = node.attributes
        if node.domain == "ai.pscompress":
            kh, kw = a["kernel_shape"]
            full = a["out_channels"] * (a["in_channels"] // a["group"]) * kh * kw
            kept = weights[0][0]
            pattern = pattern_name(a["kernel_shape"], a["patterns"])
            fused = "+add" if node.op_type == "PSConvAdd" else ""
            fused += "+relu" if a.get("clip_min") == 0.0 else ""
            shape = f"{a['out_channels']}x{a['in_channels'] // a['group']}x{kh}x{kw}"
        else:
            dims = weights[0]
            full = kept = _product(dims)
            pattern, fused, shape = "dense", "", "x".join(map(str, dims))
        kept_total += kept
        dense_total += full
        rows.append((node.name, f"{node.domain + '.' if node.domain else ''}{node.op_type}{fused}", shape, pattern,
                     f"{kept / full:.3f}", f"{kept:,}"))
    if rows:
        header = ("layer", "operator", "weights", "pattern", "density", "kept")
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        lines.append("")
        lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
        lines.append(f"total: {kept_total:,} of {dense_total:,} weights kept (density {kept_total / dense_total:.3f})")
    return lines


def _product(dims) -> int:
    out = 1
    for d in dims:
        out *= d
    return out
