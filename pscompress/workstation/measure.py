"""Size and compute of a model, per layer and in total: what ``convert`` and ``export`` report.

MACs are counted for one image of the given input shape, by running one forward pass with
hooks on every convolution and linear layer (so shapes come from the model itself, whatever
its strides, pools or input size). A pSConv layer's MACs count only its kept weights.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from pscompress.core.errors import UserError
from pscompress.core.metadata import pattern_text
from pscompress.workstation.layers import PSConv2d

# How a conversion placed a layer's pattern (LayerReport.method).
RECOGNISED = "recognised"  # the layer's zeros were already periodic: pattern kept exactly
ALIGNED = "aligned"  # order and shift chosen to keep the most weight energy
DEFAULT = "default"  # the pattern as given, shift 0 (alignment turned off)


@dataclass
class LayerReport:
    name: str
    kind: str  # "conv 3x3", "pSConv 3x3", "linear"
    params: int  # weight + bias
    nonzero: int
    macs_dense: int  # MACs of the same layer with a dense kernel
    macs: int  # MACs needed: pSConv layers skip their pattern's zeros
    pattern: str | None = None  # a pSConv layer's supports in the order used (metadata.pattern_text: bounded length)
    shift: int | None = None
    method: str | None = None  # set for the layers this conversion placed
    retained_energy: float | None = None  # fraction of sum(w^2) the placement kept


@dataclass
class ConversionReport:
    """Per-layer and total parameters and MACs; conversion details for the converted layers."""

    input_shape: tuple[int, ...]  # C, H, W of the one image the MACs are counted for
    layers: list[LayerReport]
    params: int  # every parameter of the model, normalisation layers included
    nonzero: int
    retained_energy: float | None = None  # over the converted layers, weighted by their energy
    config: Any = None  # the SparsifyConfig a conversion used (None for a plain measurement)
    notes: list[str] = field(default_factory=list)  # what a conversion left dense by kernel size, and why

    @property
    def macs_dense(self) -> int:
        return sum(layer.macs_dense for layer in self.layers)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def converted(self) -> list[LayerReport]:
        return [layer for layer in self.layers if layer.method is not None]

    def totals(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "nonzero": self.nonzero,
            "macs_dense": self.macs_dense,
            "macs": self.macs,
            "mac_reduction": self.macs_dense / self.macs if self.macs else 1.0,
            "psconv_layers": sum(layer.pattern is not None for layer in self.layers),
            "converted_layers": len(self.converted),
            "retained_energy": self.retained_energy,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"input_shape": list(self.input_shape), "total": self.totals(),
                "layers": [asdict(layer) for layer in self.layers], "notes": list(self.notes)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def summary(self) -> dict[str, Any]:
        """A compact form for checkpoint metadata: totals plus each converted layer's placement."""
        return {**self.totals(), "input_shape": list(self.input_shape),
                "layers": {layer.name: {"pattern": layer.pattern, "shift": layer.shift, "method": layer.method,
                                        "retained_energy": layer.retained_energy} for layer in self.converted}}

    def format_table(self) -> str:
        with_conversion = bool(self.converted)
        header = ["layer", "kind", "params", "non-zero", "MACs dense", "MACs", "x"]
        header += ["shift", "how", "energy", "pattern"] if with_conversion else ["shift", "pattern"]
        rows = [header]
        for layer in self.layers:
            row = [layer.name, layer.kind, f"{layer.params:,}", f"{layer.nonzero:,}", f"{layer.macs_dense:,}",
                   f"{layer.macs:,}", _ratio(layer.macs_dense, layer.macs), _blank(layer.shift)]
            if with_conversion:
                row += [_blank(layer.method), _percent(layer.retained_energy)]
            rows.append(row + [_blank(layer.pattern)])
        total = ["total", "", f"{self.params:,}", f"{self.nonzero:,}", f"{self.macs_dense:,}", f"{self.macs:,}",
                 _ratio(self.macs_dense, self.macs), ""]
        if with_conversion:
            total += ["", _percent(self.retained_energy)]
        rows.append(total + [""])
        widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
        numeric = {2, 3, 4, 5, 6}
        lines = ["  ".join(cell.rjust(w) if c in numeric else cell.ljust(w) for c, (cell, w) in enumerate(zip(row, widths))).rstrip()
                 for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.insert(len(lines) - 1, "-" * len(lines[0]))
        shape = "x".join(map(str, self.input_shape))
        return f"MACs for one {shape} input; x = fewer MACs than dense\n" + "\n".join(lines + self.notes)

    def __str__(self) -> str:
        return self.format_table()


def measure(model: nn.Module, input_shape: Sequence[int]) -> ConversionReport:
    """Parameters, non-zeros and MACs of any model, per conv/linear layer in the order they run."""
    calls: list[tuple[str, nn.Module, torch.Size]] = []
    names = {module: name for name, module in model.named_modules()}

    def hook(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        calls.append((names[module], module, output.shape))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        run_dummy(model, input_shape)
    finally:
        for handle in handles:
            handle.remove()
    layers = [_layer_report(name, module, shape) for name, module, shape in calls]
    params, nonzero = _count_parameters(model)
    return ConversionReport(tuple(int(d) for d in input_shape), layers, params, nonzero)


def layer_inputs(model: nn.Module, names: Sequence[str], input_shape: Sequence[int]) -> dict[str, torch.Size]:
    """The shape of the (first positional) input each named submodule gets in one dummy forward."""
    shapes: dict[str, torch.Size] = {}

    def hook(name: str):
        def record(_module: nn.Module, args: tuple) -> None:  # returns None: the input passes unchanged
            shapes.setdefault(name, args[0].shape)
        return record

    handles = [model.get_submodule(name).register_forward_pre_hook(hook(name)) for name in names]
    try:
        run_dummy(model, input_shape)
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def run_dummy(model: nn.Module, input_shape: Sequence[int]) -> None:
    """One forward pass on a zero image, in eval mode (batch-norm statistics stay untouched)."""
    reference = next(model.parameters(), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    shape = "x".join(map(str, input_shape))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device, dtype=dtype))
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise UserError(f"the model does not run on a {shape} input ({first}): give the right `input_shape`",
                        "input_shape") from exc
    finally:
        model.train(was_training)


def _layer_report(name: str, module: nn.Module, output_shape: torch.Size) -> LayerReport:
    weight = module.masked_weight() if isinstance(module, PSConv2d) else module.weight
    bias = module.bias
    params = weight.numel() + (bias.numel() if bias is not None else 0)
    nonzero = int(torch.count_nonzero(weight)) + (int(torch.count_nonzero(bias)) if bias is not None else 0)
    if isinstance(module, nn.Conv2d):
        positions = output_shape[-2] * output_shape[-1]
        kind = ("pSConv" if isinstance(module, PSConv2d) else "conv") + " {}x{}".format(*module.kernel_size)
        kept = int(module.mask.sum()) if isinstance(module, PSConv2d) else weight.numel()
        report = LayerReport(name, kind, params, nonzero, weight.numel() * positions, kept * positions)
        if isinstance(module, PSConv2d):
            pattern = module.pattern
            report.pattern = pattern_text(pattern.describe(), pattern.period, pattern.density())
            report.shift = module.shift
        return report
    macs = weight.numel() * (output_shape.numel() // output_shape[-1])  # one product per output row (batch is 1)
    return LayerReport(name, "linear", params, nonzero, macs, macs)


def _count_parameters(model: nn.Module) -> tuple[int, int]:
    params = nonzero = 0
    seen: set[int] = set()
    for module in model.modules():
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            value = module.masked_weight() if isinstance(module, PSConv2d) and pname == "weight" else param
            params += param.numel()
            nonzero += int(torch.count_nonzero(value))
    return params, nonzero


def _ratio(dense: int, actual: int) -> str:
    return f"{dense / actual:.2f}" if actual else "-"


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def _blank(value: Any) -> str:
    return "" if value is None else str(value)

