"""``sparsify``: turn a model's eligible convolutions into pSConv layers, in place.

Modelled on ``torchao.sparsity.sparsify_``: the model object you pass is modified (its
convs are replaced by :class:`~pscompress.workstation.layers.PSConv2d` modules) and a report comes back::

    import pscompress
    from pscompress.workstation.archs import build

    model = build("resnet20", in_channels=1)
    report = pscompress.sparsify(model, "4of9")     # model now holds PSConv2d layers
    print(report)                                   # per-layer params, MACs, placement

    config = pscompress.SparsifyConfig("2of9", period=8, filter_fn=lambda name, conv: conv.out_channels >= 32)
    pscompress.sparsify(build("resnet20"), config)  # report.config.to_dict() is what checkpoints record
"""
from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Any, Callable, Sequence

import numpy as np
from torch import nn
from tqdm import tqdm

from pscompress.core.errors import UserError
from pscompress.core.patterns import PatternSet, parse_pattern
from pscompress.workstation import align as alignment
from pscompress.workstation.layers import PSConv2d
from pscompress.workstation.measure import ALIGNED, DEFAULT, RECOGNISED, ConversionReport, measure
from pscompress.workstation.model_io import default_input_shape
from pscompress.workstation.surgery import replace_module


@dataclass(frozen=True)
class SparsifyConfig:
    """What ``sparsify`` converts and how; checkpoints record it whole (``to_dict``).

    ``pattern`` is a spec such as ``"4of9"`` or ``"0,1,3,4/4,5,7,8"`` (with ``period`` and
    ``dense_kernel`` as in :func:`~pscompress.core.patterns.parse_pattern`) or a PatternSet.
    Eligible convolutions are the nn.Conv2d whose kernel size matches the pattern's; of those,
    ``filter_fn(name, conv)`` picks which to convert (default: all but the first the model
    runs). Names matching an ``include`` glob (fnmatch) are converted regardless; names
    matching an ``exclude`` glob stay dense. ``align=False`` takes the pattern's order as given
    with shift 0 instead of the order and shift that keep the most weight energy.
    """

    pattern: str | PatternSet = "4of9"
    period: int | None = None
    dense_kernel: bool = False
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    align: bool = True
    filter_fn: Callable[[str, nn.Conv2d], bool] | None = None

    def pattern_set(self) -> PatternSet:
        if isinstance(self.pattern, PatternSet):
            if self.period is not None or self.dense_kernel:
                raise UserError("`period` and `dense_kernel` apply to a pattern spec string, not to a PatternSet",
                                "period", "dense_kernel")
            return self.pattern
        return parse_pattern(self.pattern, self.period, self.dense_kernel)

    def to_dict(self) -> dict[str, Any]:
        """JSON values: a PatternSet as its kernel size and bitmasks, ``filter_fn`` by its qualified name."""
        pattern: Any = self.pattern
        if isinstance(pattern, PatternSet):
            pattern = {"kernel_size": list(pattern.kernel_size), "patterns": list(pattern.bitmasks)}
        filter_name = None if self.filter_fn is None else getattr(self.filter_fn, "__qualname__", repr(self.filter_fn))
        return {"pattern": pattern, "period": self.period, "dense_kernel": self.dense_kernel,
                "include": list(self.include), "exclude": list(self.exclude), "align": self.align,
                "filter_fn": filter_name}


def sparsify(model: nn.Module, config: SparsifyConfig | str | PatternSet | None = None, *,
             input_shape: Sequence[int] | None = None, **options: Any) -> ConversionReport:
    """Replace the model's eligible convolutions by pSConv layers, IN PLACE, and report.

    ``config`` is a :class:`SparsifyConfig`, or its pattern with the other fields as keyword
    ``options`` (``sparsify(model, "4of9", exclude=["layer1.*"])``; no config: the options alone,
    4of9 by default). For each converted layer:
    if its weights are already periodic sparse (a period of at most 16, at most 8 of 9 positions
    kept on average: ``align.MAX_RECOGNISED_PERIOD``, ``MAX_RECOGNISED_DENSITY``), that pattern is
    kept exactly ("recognised");
    otherwise the pattern's order and shift are chosen to keep the most weight energy
    ("aligned"), or taken as given with shift 0 when ``align=False``.

    ``input_shape`` (C, H, W) sizes the one dummy forward that counts MACs; by default
    1x28x28 for a 1-channel model, Cx32x32 otherwise. Raises UserError when no layer is eligible.
    The report's ``config`` is the configuration used.
    """
    if config is None:
        config = SparsifyConfig(**options)
    elif not isinstance(config, SparsifyConfig):
        config = SparsifyConfig(config, **options)
    elif options:
        raise UserError(f"give either a SparsifyConfig or keyword options, not both ({', '.join(options)})")
    pattern_set = config.pattern_set()
    shape = tuple(int(d) for d in input_shape) if input_shape is not None else default_input_shape(model)
    before = measure(model, shape)  # also proves the input shape works before anything changes
    targets = _select(model, [layer.name for layer in before.layers], pattern_set, config)
    _check_finite(model, targets)  # before any layer is replaced

    placements: dict[str, tuple[alignment.Placement, str]] = {}
    replacements: dict[str, PSConv2d] = {}
    kept_energy = total_energy = 0.0
    for name in tqdm(targets, desc="converting", unit="layer", disable=None, leave=False):
        conv = model.get_submodule(name)
        weight = conv.weight.detach().cpu().numpy()
        try:
            placement, method = _place(weight, pattern_set, config.align)
            replacements[name] = PSConv2d.from_conv(conv, placement.pattern, placement.shift)
        except (UserError, RuntimeError, ValueError, TypeError) as exc:
            raise UserError(f"cannot convert layer {name}: {_first_line(exc)} (the model is left as it was)") from exc
        placements[name] = (placement, method)
        energy = float(np.square(weight, dtype=np.float64).sum())
        total_energy += energy
        kept_energy += placement.retained_energy * energy

    report = _swap_in(model, replacements, shape)
    for layer in report.layers:
        if layer.name in placements:
            placement, layer.method = placements[layer.name]
            layer.retained_energy = placement.retained_energy
    report.retained_energy = kept_energy / total_energy if total_energy > 0 else 1.0
    report.config = config
    return report


def _swap_in(model: nn.Module, replacements: dict[str, PSConv2d], shape: tuple[int, ...]) -> ConversionReport:
    """Put every new layer in place and measure the result; on any failure put the originals back.

    All or nothing: the caller's model either holds every replacement and runs, or is exactly as it was.
    """
    originals = {name: model.get_submodule(name) for name in replacements}
    entered: list[str] = []  # the converted layers the failing forward ran, in order
    hooks = [layer.register_forward_pre_hook(lambda module, args, name=name: entered.append(name))
             for name, layer in replacements.items()]
    try:
        for name, layer in replacements.items():
            replace_module(model, name, layer)
        return measure(model, shape)
    except (UserError, RuntimeError, ValueError, TypeError) as exc:
        for name, conv in originals.items():
            replace_module(model, name, conv)
        reason = _first_line(exc.__cause__ or exc)
        where = f"after layer {entered[-1]} was converted" if entered else "once converted"
        raise UserError(f"the model no longer runs {where} ({reason}): a layer computes more than its "
                        "convolution (e.g. padding in a Conv2d subclass' forward); leave it dense with "
                        "`exclude` (the model is left as it was)", "exclude") from exc
    finally:
        for hook in hooks:
            hook.remove()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]


def _check_finite(model: nn.Module, names: Sequence[str]) -> None:
    """Alignment solves an assignment problem on weight energies: NaN or infinity has no answer."""
    for name in names:
        if not bool(model.get_submodule(name).weight.isfinite().all()):
            raise UserError(f"layer {name} has NaN or infinite weights: fix or retrain the model before converting it")


def _place(weight: np.ndarray, pattern: PatternSet, align: bool) -> tuple[alignment.Placement, str]:
    recognised = alignment.recognise(weight)
    # Only a genuinely sparse layout is kept as it is; a dense layer with a few zeros gets ``pattern``.
    if recognised is not None and recognised.pattern.density() <= alignment.MAX_RECOGNISED_DENSITY:
        return recognised, RECOGNISED
    if align:
        return alignment.align(weight, pattern), ALIGNED
    return alignment.default_placement(weight, pattern), DEFAULT


def _select(model: nn.Module, run_order: list[str], pattern: PatternSet, config: SparsifyConfig) -> list[str]:
    """Names of the convs to convert, in the order the model runs them."""
    include, exclude = config.include, config.exclude
    convs = [name for name in dict.fromkeys(run_order) if isinstance(model.get_submodule(name), nn.Conv2d)]
    for option, globs in (("include", include), ("exclude", exclude)):
        for glob in globs:
            if not any(fnmatch(name, glob) for name in convs):
                raise UserError(f"`{option}` {glob!r} matches no convolution; convolutions: {_names(convs)}", option)
    first = convs[0] if convs else None
    fits = [name for name in convs if not isinstance(model.get_submodule(name), PSConv2d)
            and tuple(model.get_submodule(name).kernel_size) == tuple(pattern.kernel_size)]
    kh, kw = pattern.kernel_size
    for glob in include:
        if not any(fnmatch(name, glob) for name in fits):
            raise UserError(f"`include` {glob!r} matches no dense {kh}x{kw} convolution that the pattern can apply to",
                            "include")
    wanted = config.filter_fn or (lambda name, conv: name != first)
    chosen = []
    for name in fits:
        if any(fnmatch(name, glob) for glob in include):
            chosen.append(name)
        elif wanted(name, model.get_submodule(name)) and not any(fnmatch(name, glob) for glob in exclude):
            chosen.append(name)
    if not chosen:
        count = sum(isinstance(model.get_submodule(name), PSConv2d) for name in convs)
        already = f"{count} are already pSConv; " if count else ""
        raise UserError(f"no convolution to convert: the model has no eligible {kh}x{kw} convolution "
                        f"({already}the first conv stays dense unless named with `include`)", "include")
    return chosen


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "") if names else "none"
