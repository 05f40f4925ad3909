"""``pscompress info``: what an exported ONNX or TFLite model holds. Needs neither PyTorch, onnx nor TFLite."""
from __future__ import annotations

import json
from pathlib import Path

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(path_type=Path))
def info(model: Path) -> None:
    """Describe MODEL (.onnx or .tflite): its layers with their pattern and density, file size,
    IR version and operator sets, its outputs with their shapes, and the metadata pscompress
    wrote (classes, accuracy, the preprocessing run applies to an image, the plan `pscompress tune` chose...).
    A .tflite file: its size and the metadata pscompress wrote (its outputs and pSConv layers included)."""
    from pscompress.board.onnx_reader import read_onnx
    from pscompress.core.errors import UserError

    if model.suffix.lower() == ".tflite":
        for line in describe_tflite(model):
            click.echo(line)
        return
    if model.suffix.lower() != ".onnx":
        raise UserError(f"{model.name}: info describes .onnx models and .tflite models")
    summary = read_onnx(model)
    for line in describe(summary, model.stat().st_size, source=str(model)):
        click.echo(line)


def describe(summary, file_bytes: int, source: str = "the model") -> list[str]:
    """The lines `info` prints for a parsed model; UserError when its metadata or a PSConv node is malformed."""
    from pscompress.board.onnx_reader import DENSE_DOMAIN, PSCONV_DOMAIN, WEIGHT_INPUT, psconv_attributes
    from pscompress.core.errors import UserError
    from pscompress.core.metadata import decode_onnx_metadata, pattern_text
    from pscompress.core.patterns import pattern_name

    meta = decode_onnx_metadata(summary.metadata, source)
    lines = [f"file size:   {file_bytes:,} bytes ({sum(b for _, b in summary.initializers.values()):,} in weights)",
             f"IR version:  {summary.ir_version} (producer {summary.producer or 'unknown'})",
             "opsets:      " + ", ".join(f"{d or 'ai.onnx'} v{v}" for d, v in sorted(summary.opsets.items()))]
    if summary.functions:
        lines.append("functions:   " + ", ".join(summary.functions) + " (portable fallback)")
    lines += _metadata_lines(meta)

    rows, kept_total, dense_total = [], 0, 0
    # QDQ files (pscompress quantize): a Conv's weights are the output of a DequantizeLinear of the initializer
    dequantized = {n.outputs[0]: n.inputs[0] for n in summary.nodes if n.op_type == "DequantizeLinear" and n.outputs}
    for node in summary.nodes:
        # every PSConv node, weights or not, in either domain
        a = psconv_attributes(node) if node.domain in (PSCONV_DOMAIN, DENSE_DOMAIN) else None
        position = WEIGHT_INPUT.get(node.op_type, 3 if node.op_type == "QLinearConv" else 1)
        if node.op_type not in ("Conv", "QLinearConv", "Gemm", "MatMul", *WEIGHT_INPUT) or len(node.inputs) <= position:
            continue
        name = node.inputs[position]
        weights = summary.initializers.get(dequantized.get(name, name))
        if weights is None:
            continue
        if a is not None:
            if len(weights[0]) != 1:
                raise UserError(f"{source}: node {node.name}'s packed weights {name} are not 1-D ({weights[0]})")
            kh, kw = a["kernel_shape"]
            full = a["out_channels"] * (a["in_channels"] // a["group"]) * kh * kw
            kept = weights[0][0]
            pattern = pattern_text(pattern_name(a["kernel_shape"], a["patterns"]), len(a["patterns"]), kept / full)
            fused = "+add" if node.op_type == "PSConvAdd" else ""
            fused += "+relu" if a.get("clip_min") == 0.0 else ""
            shape = f"{a['out_channels']}x{a['in_channels'] // a['group']}x{kh}x{kw}"
        else:
            dims = weights[0]
            full = kept = _product(dims)
            pattern, shape = "dense", "x".join(map(str, dims))
            fused = " (int8)" if name in dequantized or node.op_type == "QLinearConv" else ""
        kept_total += kept
        dense_total += full
        rows.append((node.name, f"{node.domain + '.' if node.domain else ''}{node.op_type}{fused}", shape, pattern,
                     _density(kept, full), f"{kept:,}"))
    if rows:
        lines += _table(("layer", "operator", "weights", "pattern", "density", "kept"), rows)
        lines.append(f"total: {kept_total:,} of {dense_total:,} weights kept (density {_density(kept_total, dense_total)})")
    return lines


def _table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    """A blank line, then ``header`` and ``rows`` in left-aligned columns."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return [""] + ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]


def describe_tflite(path: Path) -> list[str]:
    """The lines `info` prints for a .tflite file: its size, how its numbers are stored, the metadata pscompress
    wrote (the fields ONNX files share) and a table of its layers with weights: how each stores them (sparse or
    dense, float32, float16 or int8), its pattern and how many values the file holds."""
    from pscompress.board.tflite_reader import file_metadata, read_tflite, weighted_layers

    content = read_tflite(path)
    meta = file_metadata(content, str(path))
    lines = [f"file size:   {path.stat().st_size:,} bytes", "format:      TFLite, input NHWC float32"]
    if isinstance(meta.get("int8"), dict):
        record = meta["int8"]
        lines.append(f"int8:        full integer, calibrated on {_show(record.get('calibration_images', '?'))} images "
                     f"of {_show(record.get('calibration_data') or 'arrays')}")
    elif meta.get("fp16") is True:
        lines.append("fp16:        float16 weights")
    lines += _metadata_lines(meta)
    recorded = meta.get("psconv_layers") if isinstance(meta.get("psconv_layers"), dict) else {}
    if recorded:
        lines.append(f"pSConv:      {len(recorded)} layer(s), filters stored sparse")
    patterns = {name.replace(".", "_"): (name, _recorded_pattern(entry)) for name, entry in recorded.items()}
    rows, stored_total, full_total = [], 0, 0
    for layer in weighted_layers(content, str(path)):
        name, (pattern, density) = patterns.get(layer.name, (layer.name, ("dense", 1.0)))
        full = _product(layer.shape)
        stored_total += layer.stored
        full_total += full
        rows.append((name, layer.operator, "x".join(map(str, layer.shape)),
                     f"{'sparse' if layer.sparse else 'dense'} {layer.dtype}", pattern,
                     "-" if density is None else f"{density:.3f}", f"{layer.stored:,}"))
    if rows:
        lines += _table(("layer", "operator", "weights (OHWI)", "stored", "pattern", "density", "values"), rows)
        lines.append(f"total: {stored_total:,} values stored for {full_total:,} weights "
                     f"({_density(stored_total, full_total)})")
    return lines


def _recorded_pattern(entry) -> tuple[str, float | None]:
    """A TFLite file's record of one pSConv layer as (pattern name, density); "?" where the record is malformed."""
    from pscompress.core.metadata import pattern_text
    from pscompress.core.patterns import pattern_name

    if not isinstance(entry, dict):
        return "?", None
    density = entry.get("density") if isinstance(entry.get("density"), (int, float)) else None
    try:
        name = pattern_name(entry["kernel_size"], entry["patterns"])
        return pattern_text(name, len(entry["patterns"]), density or 0.0), density
    except (KeyError, TypeError, ValueError):
        return "?", density


def _metadata_lines(meta: dict) -> list[str]:
    """The metadata lines of ONNX and TFLite files alike (one schema: pscompress.core.metadata)."""
    from pscompress.core.metadata import describe_preprocess, patterns_text

    lines: list[str] = []
    if isinstance(meta.get("pattern"), str):  # older files may hold any length
        meta["pattern"] = patterns_text(meta["pattern"].split("; "))
    if meta.get("dynamic_hw"):  # export --dynamic-hw: input_shape is only the default size
        meta["dynamic_hw"] = "any input height and width"
    for key in ("version", "arch", "pattern", "input_shape", "dynamic_hw", "accuracy", "agreement", "classes"):
        if key in meta:
            lines.append(f"{key + ':':<13}{_show(meta[key])}")
    if meta.get("preprocess"):
        lines.append(f"preprocess:  {describe_preprocess(meta['preprocess'])}")
    if "outputs" in meta:
        lines.append("outputs:     " + "; ".join(f"{o['name']} [{', '.join(['N', *map(str, o['shape'])])}]"
                                                 for o in meta["outputs"]))
    if "quantization" in meta:
        lines.append("quantized:   " + _quantization(meta["quantization"]))
    if "tune" in meta:
        lines += _plan(meta["tune"])
    return lines


def _plan(plan: dict) -> list[str]:
    """The tune record in three lines; a field that is missing or odd shows as "?" (info never fails on it)."""
    nodes = [n for n in plan["nodes"] if isinstance(n, dict)] if isinstance(plan.get("nodes"), list) else []
    dense = sum(n.get("choice") == "dense" for n in nodes)
    threads = plan.get("threads") or "onnxruntime's default"
    fallback = " (fallback: the per-node plan was slower)" if plan.get("fallback") is True else ""
    times = plan.get("model_ms") if isinstance(plan.get("model_ms"), dict) else {}
    field = {key: _show(plan.get(key, "?")) for key in ("plan", "batch", "cpu", "isa", "onnxruntime", "date")}
    return [f"tuned:       {field['plan']} plan{fallback}, {dense} of {len(nodes)} PSConv nodes dense",
            f"             for batch {field['batch']}, threads {_show(threads)}, on {field['cpu']} ({field['isa']}), "
            f"onnxruntime {field['onnxruntime']}, {field['date']}",
            "             whole model: " + (", ".join(f"{k} {_ms(v)} ms" for k, v in times.items()) or "?")]


def _quantization(record: dict) -> str:
    """How `pscompress quantize` made the file, in one line; odd fields show as "?"."""
    field = {key: _show(record.get(key, "?")) for key in ("format", "activations", "weights", "calibration_images",
                                                          "calibration_data")}
    return (f"int8 {field['format']}; activations {field['activations']}; weights {field['weights']}; "
            f"calibrated on {field['calibration_images']} images of {field['calibration_data']}")


def _ms(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else _show(value)


def _density(kept: int, full: int) -> str:
    return f"{kept / full:.3f}" if full > 0 else "-"  # an initializer with a zero dimension


def _show(value) -> str:
    """A metadata value as JSON wrote it (lists, numbers), strings as they are."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _product(dims) -> int:
    out = 1
    for d in dims:
        out *= d
    return out
