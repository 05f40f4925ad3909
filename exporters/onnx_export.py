"""ONNX export: batch norm folded, PSConv2d layers as packed ``ai.pscompress`` operators.

Pipeline: prepare (exporters.pipeline: input shape, batch norm folded) -> fuse each PSConv2d
with its residual add and ReLU into one custom-op call (exporters.fuse) -> torch.onnx.export
(dynamo) with an onnxscript translation of the custom ops -> add the portable fallback
functions, pin the IR version and opsets onnxruntime loads, write metadata -> verify against
PyTorch -> write atomically.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import warnings
from dataclasses import replace
from typing import Sequence

import numpy as np
import onnx
import torch
from onnxscript import opset18 as op
from torch import nn

import pscompress
from pscompress.core.errors import UserError
from pscompress.core.files import atomic_output
from pscompress.core.metadata import encode_onnx_metadata, export_metadata, pattern_text, patterns_text
from pscompress.core.patterns import pattern_name
from pscompress.exporters import psconv_onnx
from pscompress.exporters.fold import fold_batchnorm
from pscompress.exporters.fuse import densify, fuse_psconv, packable, upsample_ops
from pscompress.exporters.pipeline import Prepared, at_other_size, not_fully_convolutional, output_records, prepare, verify
from pscompress.exporters.summary import ExportSummary
from pscompress.runtime import create_session, first_line, onnxruntime_errors
from pscompress.workstation.checkpoint import LoadedModel
from pscompress.workstation.layers import PSConv2d
from pscompress.workstation.surgery import psconv_layers
from pscompress.workstation.virtual_pool import VirtualPoolConv2d

# IR 8 is the oldest that carries opset 18 and model-local functions; onnx 1.23 would write 14,
# which onnxruntime 1.31 refuses.
IR_VERSION = 8
INPUT_NAME = "input"  # the outputs are named by pscompress.workstation.model_io.named_outputs ("logits" when one)
# Export fails when onnxruntime's output differs from PyTorch's by more than this (relative).
VERIFY_TOLERANCE = 1e-4


def export_onnx(loaded: LoadedModel, path: str | os.PathLike, *, dense: bool = False,
                input_shape: Sequence[int] | None = None, dynamic_hw: bool = False) -> ExportSummary:
    """Export ``loaded`` to ``path``; returns a summary (sizes, layer counts, verification).

    ``dense=True`` writes every convolution as a standard Conv (the baseline to compare with).
    ``dynamic_hw=True`` makes the input's height and width symbolic, like the batch (a fully
    convolutional model: one file for every image size); the file is verified at the input size
    and at another one, and records ``dynamic_hw`` in its metadata.
    """
    job = prepare(loaded, input_shape)
    other = at_other_size(job) if dynamic_hw else None  # before the slow export: a fixed-size head fails here
    layers = psconv_layers(loaded.module)
    compressed = any(isinstance(m, VirtualPoolConv2d) for m in loaded.module.modules())
    if not layers and not dense and not compressed:
        warnings.warn("the model has no pSConv layer: exporting it dense (run `pscompress convert` first)", stacklevel=2)
    with atomic_output(path) as tmp:
        data, fused = _build(job, dense, layers, dynamic_hw)
        diff = verify(data, job, _run_portable, VERIFY_TOLERANCE)
        if other is not None:
            diff = max(diff, _verify_other_size(data, other))
        tmp.write_bytes(data)
    kept, total = _weight_counts(loaded.module, packed=not dense)
    return ExportSummary(path=str(path), bytes=len(data), input_shape=job.input_shape, psconv_layers=fused,
                         max_rel_diff=diff, dense_bytes=_dense_bytes(job, layers, len(data), fused, dynamic_hw),
                         kept_conv_weights=kept, conv_weights=total)


def _dense_bytes(job: Prepared, layers: dict, size: int, fused: int, dynamic_hw: bool) -> int:
    """The size of the model's dense export (``export --dense``). With PSConv nodes it is built, not
    verified nor written: an estimate from the dropped weights alone misses the operator's functions
    and the nodes fusion removed, 10% of a small model's file. Without them the file is its own dense form."""
    if not fused:
        return size
    return len(_build(replace(job, graph=fold_batchnorm(job.loaded.module)), True, layers, dynamic_hw)[0])


def _verify_other_size(data: bytes, other: Prepared) -> float:
    """``verify`` at the other size; a file that does not run there or disagrees: not fully convolutional."""
    size = "x".join(map(str, other.input_shape[1:]))
    try:
        return verify(data, other, _run_portable, VERIFY_TOLERANCE)
    except UserError as exc:
        raise not_fully_convolutional(other.input_shape, f"at {size}, {exc}") from exc
    except onnxruntime_errors() as exc:
        raise not_fully_convolutional(other.input_shape, f"the export does not run at {size}: {first_line(exc)}") from exc


def _build(job: Prepared, dense: bool, layers: dict, dynamic_hw: bool) -> tuple[bytes, int]:
    """The serialized model and how many PSConv nodes it has."""
    graph = job.graph
    if dense:
        densify(graph)
    fused = 0 if dense else fuse_psconv(graph, job.example)
    upsample_ops(graph)  # after fusing, which reads the graph's shapes with the upsamples as they were
    model = _torch_export(graph, job.example, job.output_names, dynamic_hw)
    if fused:
        model.functions.extend(psconv_onnx.fallback_functions())
    _name_nodes_after_layers(model)
    if dynamic_hw:
        _name_input_dims(model, ("batch", None, "height", "width"))
    _set_opsets(model)
    if fused and psconv_onnx.residual_shapes_proven(model):
        # Proven here, so the file needs no run-time check of Z: its dense form fuses like Conv + Add.
        del model.functions[:]
        model.functions.extend(psconv_onnx.fallback_functions(residual_proven=True))
    _set_metadata(model, job, layers, dynamic_hw)
    onnx.checker.check_model(model)
    return model.SerializeToString(), fused


def _run_portable(data: bytes, x: np.ndarray) -> list[np.ndarray]:
    # native=False: the model's portable functions, which every onnxruntime runs.
    return create_session(data, native=False).run(None, {INPUT_NAME: x})


def _torch_export(graph: nn.Module, example: torch.Tensor, output_names: list[str],
                  dynamic_hw: bool) -> onnx.ModelProto:
    psconv_onnx.register_schemas()
    # The ops exporters.torch_ops registers, which fuse_psconv's FusedPSConv modules call.
    table = {torch.ops.pscompress.psconv.default: _translate_psconv,
             torch.ops.pscompress.psconv_add.default: _translate_psconv_add,
             torch.ops.pscompress.upsample_linear2x.default: _translate_upsample}
    dims = {0: torch.export.Dim("batch", min=1, max=65536)}
    if dynamic_hw:  # AUTO: torch.export finds the sizes the model allows (a stride-2 residual may need even ones)
        dims.update({2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO})
    quiet = io.StringIO()
    try:
        with warnings.catch_warnings(), _quiet_loggers(), contextlib.redirect_stdout(quiet):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                graph, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=output_names,
                opset_version=psconv_onnx.OPSET, dynamic_shapes=(dims,),
                custom_translation_table=table, verbose=False, external_data=False,
            )
    except Exception as exc:  # the exporter wraps every failure; name the layer when it says which
        raise UserError(f"cannot export the model to ONNX: {_exporter_reason(exc)}") from exc
    return program.model_proto


def _translate_psconv(x, w, b, kernel_shape, strides, pads, dilations, group, in_channels, out_channels,
                      patterns, shift, clip_min, clip_max):
    return psconv_onnx.psconv_opset.PSConv(
        x, w, b, kernel_shape=kernel_shape, strides=strides, pads=pads, dilations=dilations, group=group,
        in_channels=in_channels, out_channels=out_channels, patterns=patterns, shift=shift,
        clip_min=clip_min, clip_max=clip_max)


def _translate_psconv_add(x, w, b, z, kernel_shape, strides, pads, dilations, group, in_channels, out_channels,
                          patterns, shift, clip_min, clip_max):
    return psconv_onnx.psconv_opset.PSConvAdd(
        x, w, b, z, kernel_shape=kernel_shape, strides=strides, pads=pads, dilations=dilations, group=group,
        in_channels=in_channels, out_channels=out_channels, patterns=patterns, shift=shift,
        clip_min=clip_min, clip_max=clip_max)


def _translate_upsample(y, like):
    """Resize by 2 (linear, asymmetric: out[2i] = y[i], odd positions the mean of their neighbours, the edge
    replicated), then Slice to ``like``'s H x W (an odd size drops the last row or column)."""
    resized = op.Resize(y, None, op.Constant(value_floats=[1.0, 1.0, 2.0, 2.0]), mode="linear",
                        coordinate_transformation_mode="asymmetric")
    return op.Slice(resized, op.Constant(value_ints=[0, 0]), op.Shape(like, start=2, end=4),
                    op.Constant(value_ints=[2, 3]))


@contextlib.contextmanager
def _quiet_loggers():
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _exporter_reason(exc: BaseException) -> str:
    """The most specific line of the exporter's chained errors, with the operation it failed on."""
    text = "\n".join(str(e) for e in _chain(exc))
    node = re.search(r"Error when translating node %(\S+)", text)
    unsupported = re.search(r"(No decompositions registered[^\n]*|Unsupported[^\n]*|not supported[^\n]*)", text)
    reason = unsupported.group(1) if unsupported else str(_chain(exc)[-1]).strip().splitlines()[0]
    return f"operation {node.group(1)}: {reason}" if node else reason


def _chain(exc: BaseException | None) -> list[BaseException]:
    chain = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def _name_nodes_after_layers(model: onnx.ModelProto) -> None:
    """Name each node that has weights after its PyTorch layer ("layers.0.conv1") for `info` and profiles."""
    inits = {i.name for i in model.graph.initializer}
    used = {n.name for n in model.graph.node}
    for node in model.graph.node:
        weights = [i for i in node.input[1:2] if i in inits and i.rsplit(".", 1)[-1] in ("packed", "weight")]
        if weights:
            layer = weights[0].rsplit(".", 1)[0]
            if layer not in used:
                used.add(layer)
                node.name = layer


def _name_input_dims(model: onnx.ModelProto, names: tuple[str | None, ...]) -> None:
    """Give the input's symbolic dims readable names (torch.export calls them s0, s53, ...), wherever they appear."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    renamed = {dim.dim_param: name for dim, name in zip(dims, names) if name and dim.dim_param}
    if not renamed:
        return
    symbol = re.compile(r"\b(" + "|".join(map(re.escape, renamed)) + r")\b")
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:  # outputs' sizes are expressions of the input's ("((height - 1)//2) + 1")
                dim.dim_param = symbol.sub(lambda match: renamed[match.group(1)], dim.dim_param)


def _set_opsets(model: onnx.ModelProto) -> None:
    used = {d.domain or "" for d in model.opset_import}
    wanted = dict(psconv_onnx.opset_imports()) if model.functions else {"": psconv_onnx.OPSET}
    wanted.update({d: 1 for d in used if d not in wanted})
    del model.opset_import[:]
    model.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in sorted(wanted.items()))
    model.ir_version = IR_VERSION


def _set_metadata(model: onnx.ModelProto, job: Prepared, layers: dict, dynamic_hw: bool) -> None:
    meta = export_metadata(job.loaded.meta, job.loaded.arch, job.input_shape, pattern=pattern_summary(layers.values()),
                           operator=f"{psconv_onnx.DOMAIN} v{psconv_onnx.VERSION}",
                           outputs=output_records(job),
                           dynamic_hw=dynamic_hw or None)  # None: not written
    del model.metadata_props[:]
    for key, value in encode_onnx_metadata(meta).items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name, model.producer_version = "pscompress", pscompress.__version__


def pattern_summary(layers) -> str:
    """The family names ("4of9") of the layers' patterns, or their supports when not a family (bounded length)."""
    names = []
    for layer in layers:
        name = pattern_text(pattern_name(layer.pattern.kernel_size, layer.pattern.bitmasks),
                            layer.pattern.period, layer.pattern.density())
        if name not in names:
            names.append(name)
    return patterns_text(names) if names else "dense"


def _weight_counts(module: nn.Module, packed: bool) -> tuple[int, int]:
    kept = total = 0
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            total += m.weight.numel()
            kept += int(m.mask.sum()) if packed and isinstance(m, PSConv2d) and packable(m) else m.weight.numel()
    return kept, total
