"""``sparsify``: turn a model's eligible convolutions into pSConv layers, in place.

Modelled on ``torchao.sparsity.sparsify_``: the model object you pass is modified (its
convs are replaced by :class:`~pscompress.workstation.layers.PSConv2d` modules) and a report comes back::

    import pscompress
    from pscompress.workstation.archs import build

    model = build("resnet20", in_channels=1)
    report = pscompress.sparsify(model, "4of9")     # model now holds PSConv2d layers
    print(report)                                   # per-layer params, MACs, placement
"""
from __future__ import annotations

from fnmatch import fnmatch
from typing import Sequence

import numpy as np
from torch import nn
from tqdm import tqdm

from pscompress.core.errors import UserError
from pscompress.core.patterns import PatternSet, parse_pattern
from pscompress.workstation import align as alignment
from pscompress.workstation.layers import PSConv2d
from pscompress.workstation.measure import ALIGNED, DEFAULT, RECOGNISED, ConversionReport, default_input_shape, measure
from pscompress.workstation.surgery import replace_module


def sparsify(
    model: nn.Module,
    pattern: str | PatternSet = "4of9",
    *,
    period: int | None = None,
    dense_kernel: bool = False,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    align: bool = True,
    input_shape: Sequence[int] | None = None,
) -> ConversionReport:
    """Replace the model's eligible convolutions by pSConv layers, IN PLACE, and report.

    Eligible by default: every nn.Conv2d whose kernel size matches the pattern's (3x3 for
    the built-in families), except the first convolution the model runs. Module names that
    match an ``include`` glob (fnmatch) are converted even if they are the first conv or
    match ``exclude``; names that match an ``exclude`` glob are left dense.

    For each converted layer: if its weights are already periodic sparse, that pattern is
    kept exactly ("recognised"); otherwise the pattern's order and shift are chosen to keep
    the most weight energy ("aligned"), or taken as given with shift 0 when ``align=False``.

    ``pattern`` is a spec such as ``"4of9"`` or ``"0,1,3,4/4,5,7,8"`` (with ``period`` and
    ``dense_kernel`` as in :func:`~pscompress.core.patterns.parse_pattern`) or a PatternSet.
    ``input_shape`` (C, H, W) sizes the one dummy forward that counts MACs; by default
    1x28x28 for a 1-channel model, Cx32x32 otherwise. Raises UserError when no layer is eligible.
    """
    pattern_set = _resolve_pattern(pattern, period, dense_kernel)
    shape = tuple(int(d) for d in input_shape) if input_shape is not None else default_input_shape(model)
    before = measure(model, shape)  # also proves the input shape works before anything changes
    targets = _select(model, [layer.name for layer in before.layers], pattern_set, include, exclude)
    _check_finite(model, targets)  # before any layer is replaced

    placements: dict[str, tuple[alignment.Placement, str]] = {}
    kept_energy = total_energy = 0.0
    for name in tqdm(targets, desc="converting", unit="layer", disable=None, leave=False):
        conv = model.get_submodule(name)
        weight = conv.weight.detach().cpu().numpy()
        placement, method = _place(weight, pattern_set, align)
        replace_module(model, name, PSConv2d.from_conv(conv, placement.pattern, placement.shift))
        placements[name] = (placement, method)
        energy = float(np.square(weight, dtype=np.float64).sum())
        total_energy += energy
        kept_energy += placement.retained_energy * energy

    report = measure(model, shape)
    for layer in report.layers:
        if layer.name in placements:
            placement, layer.method = placements[layer.name]
            layer.retained_energy = placement.retained_energy
    report.retained_energy = kept_energy / total_energy if total_energy > 0 else 1.0
    return report


def _check_finite(model: nn.Module, names: Sequence[str]) -> None:
    """Alignment solves an assignment problem on weight energies: NaN or infinity has no answer."""
    for name in names:
        if not bool(model.get_submodule(name).weight.isfinite().all()):
            raise UserError(f"layer {name} has NaN or infinite weights: fix or retrain the model before converting it")


def _resolve_pattern(pattern: str | PatternSet, period: int | None, dense_kernel: bool) -> PatternSet:
    if isinstance(pattern, PatternSet):
        if period is not None or dense_kernel:
            raise UserError("period and dense_kernel apply to a pattern spec string, not to a PatternSet")
        return pattern
    return parse_pattern(pattern, period, dense_kernel)


def _place(weight: np.ndarray, pattern: PatternSet, align: bool) -> tuple[alignment.Placement, str]:
    recognised = alignment.recognise(weight)
    if recognised is not None:
        return recognised, RECOGNISED
    if align:
        return alignment.align(weight, pattern), ALIGNED
    return alignment.default_placement(weight, pattern), DEFAULT


def _select(model: nn.Module, run_order: list[str], pattern: PatternSet,
            include: Sequence[str], exclude: Sequence[str]) -> list[str]:
    """Names of the convs to convert, in the order the model runs them."""
    convs = [name for name in dict.fromkeys(run_order) if isinstance(model.get_submodule(name), nn.Conv2d)]
    for option, globs in (("include", include), ("exclude", exclude)):
        for glob in globs:
            if not any(fnmatch(name, glob) for name in convs):
                raise UserError(f"--{option} {glob!r} matches no convolution; convolutions: {_names(convs)}")
    first = convs[0] if convs else None
    fits = [name for name in convs if not isinstance(model.get_submodule(name), PSConv2d)
            and tuple(model.get_submodule(name).kernel_size) == tuple(pattern.kernel_size)]
    kh, kw = pattern.kernel_size
    for glob in include:
        if not any(fnmatch(name, glob) for name in fits):
            raise UserError(f"--include {glob!r} matches no dense {kh}x{kw} convolution that the pattern can apply to")
    chosen = []
    for name in fits:
        if any(fnmatch(name, glob) for glob in include):
            chosen.append(name)
        elif name != first and not any(fnmatch(name, glob) for glob in exclude):
            chosen.append(name)
    if not chosen:
        count = sum(isinstance(model.get_submodule(name), PSConv2d) for name in convs)
        already = f"{count} are already pSConv; " if count else ""
        raise UserError(f"no convolution to convert: the model has no eligible {kh}x{kw} convolution "
                        f"({already}the first conv stays dense unless named with --include)")
    return chosen


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "") if names else "none"
