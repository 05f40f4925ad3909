"""What a PyTorch model takes and gives: input channels, class count and input shape, worked out once."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from pscompress.core.errors import UserError
from pscompress.core.limits import MAX_CLASSES, check_input_shape
from pscompress.core.metadata import check_preprocess
from pscompress.workstation.checkpoint import LoadedModel


def known_io(state: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(input channels, classes) from weights in model order: the first conv's and the last linear
    layer's; None for what the model lacks."""
    weights = [v for k, v in state.items() if k.endswith("weight") and isinstance(v, torch.Tensor)]
    convs = [w for w in weights if w.dim() == 4]
    linears = [w for w in weights if w.dim() == 2]
    return (int(convs[0].shape[1]) if convs else None), (int(linears[-1].shape[0]) if linears else None)


def weights_io(state: Mapping[str, Any]) -> tuple[int, int]:
    """``known_io``, for a model that must be an image classifier."""
    in_channels, num_classes = known_io(state)
    if in_channels is None or num_classes is None:
        raise UserError("the model has no convolution or no linear classifier: it is not an image classifier")
    return in_channels, num_classes


def model_io(module: nn.Module) -> tuple[int, int]:
    """(input channels, classes) of a model."""
    return weights_io(module.state_dict())


def default_input_shape(model: nn.Module, meta: Mapping[str, Any] | None = None) -> tuple[int, int, int]:
    """meta["input_shape"] if recorded; else 1x28x28 for a 1-channel first conv, Cx32x32 otherwise."""
    if meta and meta.get("input_shape"):
        return check_input_shape(meta["input_shape"], "input_shape")
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    channels = first.in_channels if first is not None else 3
    return (1, 28, 28) if channels == 1 else (channels, 32, 32)


def model_input_shape(loaded: LoadedModel, override: Sequence[int] | None = None) -> tuple[int, int, int]:
    """(C, H, W) the model takes: ``override``, else what its checkpoint metadata records."""
    shape = override if override is not None else loaded.meta.get("input_shape")
    if shape is None:
        raise UserError("the model does not record its input shape: pass `input_shape` C,H,W (e.g. 1,28,28)", "input_shape")
    return check_input_shape(shape)


def input_meta(loaded: LoadedModel, shape: Sequence[int], classes: Sequence[str] | None,
               preprocess: Mapping[str, Any]) -> dict[str, Any]:
    """The ``classes`` and ``preprocess`` metadata to record for ``loaded`` taking ``shape`` (C, H, W).

    ``preprocess`` holds the steps given now (None: not given); they replace the recorded ones
    key by key. UserError (naming the option) when a value does not fit the model.
    """
    given = {key: value for key, value in preprocess.items() if value is not None}
    merged = {**(loaded.meta.get("preprocess") or {}), **given}
    meta: dict[str, Any] = {"preprocess": check_preprocess(merged, shape, options=True)} if merged else {}
    if classes is not None:
        meta["classes"] = _check_classes(loaded.module, shape, list(classes))
    return meta


def _check_classes(module: nn.Module, shape: Sequence[int], classes: list[str]) -> list[str]:
    """``classes``, when one of the model's outputs has one score per name (a run on one blank image says)."""
    if len(classes) > MAX_CLASSES:
        raise UserError(f"`classes` has {len(classes):,} names, more than the {MAX_CLASSES:,} allowed", "classes")
    was_training = module.training
    with torch.no_grad():
        outputs = named_outputs(module.eval()(torch.zeros(1, *shape)))
    module.train(was_training)
    widths = [value.shape[-1] for value in outputs.values() if value.dim() == 2]
    if len(classes) not in widths:
        shapes = ", ".join(f"{name} {list(value.shape[1:])}" for name, value in outputs.items())
        raise UserError(f"`classes` has {len(classes)} names, but no output of the model has {len(classes)} scores "
                        f"per image ({shapes})", "classes")
    return classes


SINGLE_OUTPUT = "logits"  # the name of a model's only output (every single-output export uses it)


def named_outputs(result: Any) -> dict[str, torch.Tensor]:
    """A forward's result by output name, in the order the ONNX exporter flattens it.

    A tensor (or a one-element tuple/list) is ``logits``; a tuple or list of several is
    ``output0``, ``output1``, ...; a dict keeps its string keys. Anything else is a UserError.
    """
    if isinstance(result, torch.Tensor):
        return {SINGLE_OUTPUT: result}
    if isinstance(result, dict):
        items = list(result.items())
        if not all(isinstance(key, str) and key for key, _ in items):
            raise UserError("a model that returns a dict must use non-empty string keys: "
                            f"got {', '.join(repr(k) for k, _ in items[:5])}")
    elif isinstance(result, (tuple, list)):
        items = [(SINGLE_OUTPUT, result[0])] if len(result) == 1 else [(f"output{i}", v) for i, v in enumerate(result)]
    else:
        raise UserError(f"the model returns a {type(result).__name__}: export takes models that return a tensor, "
                        "or a tuple, list or dict of tensors")
    if not items:
        raise UserError("the model returns no output")
    for name, value in items:
        if not isinstance(value, torch.Tensor):
            raise UserError(f"the model's output {name} is a {type(value).__name__}, not a tensor "
                            "(nested outputs are not supported)")
    return dict(items)
