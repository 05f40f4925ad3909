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
import torch
from torch import nn
from tqdm import tqdm

from pscompress.core.errors import UserError
from pscompress.core.patterns import PatternChoice, PatternSet, choose_patterns
from pscompress.workstation import align as alignment
from pscompress.workstation.layers import PSConv2d
from pscompress.workstation.measure import ALIGNED, DEFAULT, RECOGNISED, ConversionReport, layer_inputs, measure
from pscompress.workstation.model_io import default_input_shape
from pscompress.workstation.surgery import replace_module


@dataclass(frozen=True)
class SparsifyConfig:
    """What ``sparsify`` converts and how; checkpoints record it whole (``to_dict``).

    ``pattern`` is a spec such as ``"4of9"``, ``"5x5:13of25"`` or ``"0,1,3,4/4,5,7,8"`` (with ``period``
    and ``dense_kernel`` as in :func:`~pscompress.core.patterns.parse_pattern`), a PatternSet, or a
    sequence of those, one per kernel size (:func:`~pscompress.core.patterns.choose_patterns`: an
    unprefixed ``kofN`` is for every kernel of N positions). Eligible convolutions are the
    nn.Conv2d whose kernel size a pattern is for; of those,
    ``filter_fn(name, conv)`` picks which to convert (default: all but the first the model
    runs). Names matching an ``include`` glob (fnmatch) are converted regardless; names
    matching an ``exclude`` glob stay dense. ``align=False`` takes the pattern's order as given
    with shift 0 instead of the order and shift that keep the most weight energy.
    """

    pattern: str | PatternSet | Sequence[str | PatternSet] = "4of9"
    period: int | None = None
    dense_kernel: bool = False
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    align: bool = True
    filter_fn: Callable[[str, nn.Conv2d], bool] | None = None

    def patterns(self) -> PatternChoice:
        return choose_patterns(self.pattern, self.period, self.dense_kernel)

    def to_dict(self) -> dict[str, Any]:
        """JSON values: a PatternSet as its kernel size and bitmasks, ``filter_fn`` by its qualified name."""
        def encode(item: str | PatternSet) -> Any:
            if isinstance(item, PatternSet):
                return {"kernel_size": list(item.kernel_size), "patterns": list(item.bitmasks)}
            return item

        several = not isinstance(self.pattern, (str, PatternSet))
        pattern = [encode(item) for item in self.pattern] if several else encode(self.pattern)
        filter_name = None if self.filter_fn is None else getattr(self.filter_fn, "__qualname__", repr(self.filter_fn))
        return {"pattern": pattern, "period": self.period, "dense_kernel": self.dense_kernel,
                "include": list(self.include), "exclude": list(self.exclude), "align": self.align,
                "filter_fn": filter_name}


def sparsify(model: nn.Module, config: SparsifyConfig | str | PatternSet | Sequence[str | PatternSet] | None = None, *,
             input_shape: Sequence[int] | None = None, **options: Any) -> ConversionReport:
    """Replace the model's eligible convolutions by pSConv layers, IN PLACE, and report.

    ``config`` is a :class:`SparsifyConfig`, or its pattern with the other fields as keyword
    ``options`` (``sparsify(model, "4of9", exclude=["layer1.*"])``; no config: the options alone,
    4of9 by default). For each converted layer:
    if its weights are already periodic sparse (a period of at most 16, at most 8 of 9 positions
    kept on average, fewer for kernels of under 9 positions: ``align.MAX_RECOGNISED_PERIOD``,
    ``recognised_density_limit``), that pattern is
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
    choice = config.patterns()
    shape = tuple(int(d) for d in input_shape) if input_shape is not None else default_input_shape(model)
    before = measure(model, shape)  # also proves the input shape works before anything changes
    run_order = [layer.name for layer in before.layers]
    targets = _select(model, run_order, choice, config)
    _check_finite(model, targets)  # before any layer is replaced
    pads = _subclass_pads(model, targets, shape)  # refuses, naming it, a subclass it cannot reproduce

    placements: dict[str, tuple[alignment.Placement, str]] = {}
    replacements: dict[str, PSConv2d] = {}
    kept_energy = total_energy = 0.0
    for name, pattern_set in tqdm(targets.items(), desc="converting", unit="layer", disable=None, leave=False):
        conv = model.get_submodule(name)
        weight = conv.weight.detach().cpu().numpy()
        try:
            placement, method = _place(weight, pattern_set, config.align)
            replacements[name] = PSConv2d.from_conv(conv, placement.pattern, placement.shift, pads.get(name))
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
    report.notes = _dense_notes(model, run_order, choice)
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
    if recognised is not None and recognised.pattern.density() <= alignment.recognised_density_limit(weight.shape[2:]):
        return recognised, RECOGNISED
    if align:
        return alignment.align(weight, pattern), ALIGNED
    return alignment.default_placement(weight, pattern), DEFAULT


def _select(model: nn.Module, run_order: list[str], choice: PatternChoice,
            config: SparsifyConfig) -> dict[str, PatternSet]:
    """The convs to convert, in the order the model runs them, each with its kernel size's pattern."""
    include, exclude = config.include, config.exclude
    convs = [name for name in dict.fromkeys(run_order) if isinstance(model.get_submodule(name), nn.Conv2d)]
    for option, globs in (("include", include), ("exclude", exclude)):
        for glob in globs:
            if not any(fnmatch(name, glob) for name in convs):
                raise UserError(f"`{option}` {glob!r} matches no convolution; convolutions: {_names(convs)}", option)
    kernels = {name: tuple(model.get_submodule(name).kernel_size) for name in convs}
    unused = choice.unused(kernels.values())
    if unused:
        raise UserError(f"the pattern for {unused[0]} fits no convolution of the model (its kernels: "
                        f"{_kernel_list(kernels.values())})")
    first = convs[0] if convs else None
    fits = [name for name in convs if not isinstance(model.get_submodule(name), PSConv2d)
            and choice.applies_to(kernels[name])]
    for glob in include:
        if not any(fnmatch(name, glob) for name in fits):
            matched = [name for name in convs if fnmatch(name, glob)]
            raise UserError(f"`include` {glob!r} matches no dense convolution that a pattern is for "
                            f"({_names(matched)}: "
                            f"{_kernel_list(kernels[n] for n in matched)}; give a --pattern for that kernel size)",
                            "include")
    wanted = config.filter_fn or (lambda name, conv: name != first)
    chosen = [name for name in fits if any(fnmatch(name, glob) for glob in include)
              or (wanted(name, model.get_submodule(name)) and not any(fnmatch(name, glob) for glob in exclude))]
    if not chosen:
        count = sum(isinstance(model.get_submodule(name), PSConv2d) for name in convs)
        already = f"{count} are already pSConv; " if count else ""
        raise UserError(f"no convolution to convert: the model has no eligible convolution of a kernel size the "
                        f"pattern is for ({_kernel_list(kernels.values())}; {already}the first conv stays dense "
                        "unless named with `include`)", "include")
    return {name: _pattern_for(name, kernels[name], choice) for name in chosen}


def _pattern_for(name: str, kernel: tuple[int, int], choice: PatternChoice) -> PatternSet:
    try:
        pattern = choice.for_kernel(kernel)
    except UserError as exc:
        raise UserError(f"layer {name} ({kernel[0]}x{kernel[1]} kernel): {exc}", *exc.parameters) from exc
    assert pattern is not None  # _select keeps only the kernels a pattern applies to
    return pattern


def _dense_notes(model: nn.Module, run_order: list[str], choice: PatternChoice) -> list[str]:
    """One line per kernel size the conversion left dense because no pattern is for it."""
    counts: dict[tuple[int, int], int] = {}
    for name in dict.fromkeys(run_order):
        m = model.get_submodule(name)
        if isinstance(m, nn.Conv2d) and not isinstance(m, PSConv2d) and not choice.applies_to(m.kernel_size):
            kernel = (int(m.kernel_size[0]), int(m.kernel_size[1]))
            counts[kernel] = counts.get(kernel, 0) + 1
    notes = []
    for (kh, kw), count in counts.items():
        n = kh * kw
        why = ("a 1x1 kernel has one position, no sparsity to gain (--pattern 1of1 makes them pSConv, still dense)"
               if n == 1 else f"no --pattern is for {kh}x{kw} kernels (e.g. --pattern {kh}x{kw}:{(n + 1) // 2}of{n})")
        notes.append(f"{count} {kh}x{kw} conv(s) stay dense: {why}")
    return notes


def _subclass_pads(model: nn.Module, targets: dict[str, PatternSet],
                   shape: tuple[int, ...]) -> dict[str, tuple[int, int, int, int]]:
    """For each target of a Conv2d subclass with its own forward: the zero pads (top, left, bottom, right)
    that make a plain convolution compute what that forward does on the layer's input.

    Two forms are recognised, by running the layer on a random input of its real shape: a forward that
    is a plain convolution after all (no pads needed), and TF-style 'same' padding in front of the
    convolution (EfficientNet's static or dynamic 'same' Conv2d subclasses), whose pads follow from the
    layer's input size. Any other forward is refused, naming the layer and its class.
    """
    subclassed = [name for name in targets if type(model.get_submodule(name)).forward is not nn.Conv2d.forward]
    if not subclassed:
        return {}
    inputs = layer_inputs(model, subclassed, shape)
    pads = {}
    for name in subclassed:
        conv = model.get_submodule(name)
        found = _forward_pads(conv, inputs[name])
        if found is None:
            size = "x".join(map(str, inputs[name][1:]))
            raise UserError(f"layer {name} ({type(conv).__name__}) is a Conv2d subclass whose forward computes "
                            f"neither a plain convolution nor one after TF-style 'same' padding (input {size}): "
                            "leave it dense with `exclude` (the model is left as it was)", "exclude")
        if found != (0, 0, 0, 0):
            pads[name] = found
    return pads


def _forward_pads(conv: nn.Conv2d, input_shape: torch.Size) -> tuple[int, int, int, int] | None:
    """(0, 0, 0, 0) when ``conv``'s forward is its plain convolution; the total zero pads when it is one
    after TF-style 'same' padding; None otherwise."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(tuple(input_shape), generator=generator).to(conv.weight.device, conv.weight.dtype)
    was_training = conv.training
    conv.eval()
    try:
        with torch.no_grad():
            expected = conv(x)  # ran in the dummy forward on this shape already
            if _same_values(_plain_conv(conv, x), expected):
                return (0, 0, 0, 0)
            if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
                return None
            top, left, bottom, right = tf_same_pads(tuple(input_shape[2:]), conv.kernel_size, conv.stride,
                                                    conv.dilation)
            padded = nn.functional.pad(x, (left, right, top, bottom))
            if not _same_values(_plain_conv(conv, padded), expected):
                return None
    finally:
        conv.train(was_training)
    ph, pw = (int(p) for p in conv.padding)
    return (top + ph, left + pw, bottom + ph, right + pw)


def tf_same_pads(size: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                 dilation: Sequence[int]) -> tuple[int, int, int, int]:
    """TensorFlow's 'same' padding of an input of ``size`` (H, W), as (top, left, bottom, right):
    the output has ceil(size / stride) pixels, and an odd total puts the extra zero bottom/right."""
    totals = [max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0) for n, k, s, d in zip(size, kernel, stride, dilation)]
    return (totals[0] // 2, totals[1] // 2, totals[0] - totals[0] // 2, totals[1] - totals[1] // 2)


def _plain_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor | None:
    """What nn.Conv2d's own forward computes on ``x``; None when it cannot run on it (a kernel larger than x)."""
    try:
        return nn.Conv2d.forward(conv, x)
    except RuntimeError:
        return None


def _same_values(actual: torch.Tensor | None, expected: torch.Tensor) -> bool:
    if actual is None or not isinstance(expected, torch.Tensor) or actual.shape != expected.shape:
        return False
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    return bool(torch.allclose(actual, expected, rtol=1e-5, atol=1e-6 * max(scale, 1.0)))


def _kernel_list(kernels) -> str:
    return ", ".join(f"{kh}x{kw}" for kh, kw in dict.fromkeys(tuple(int(k) for k in kernel) for kernel in kernels)) \
        or "none"


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "") if names else "none"
