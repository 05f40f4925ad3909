"""Loading models safely and writing pscompress checkpoints.

A pscompress checkpoint is a plain dict saved with torch.save and read back with
``weights_only=True`` (no code runs on load)::

    {"format": "pscompress", "version": 1,
     "arch": "resnet20", "arch_kwargs": {"in_channels": 1, "num_classes": 10},
     "state_dict": {...},   # PSConv2d layers carry their pattern as "<name>._extra_state"
     "meta": {...}}         # preprocessing, classes, accuracy, provenance: JSON-like values

A model of no built-in architecture is saved as the same dict with the pickled module in
place of ``arch``, ``arch_kwargs`` and ``state_dict`` (``{"format": "pscompress", "version": 1,
"module": <nn.Module>, "meta": {...}}``), so its metadata (input shape, preprocessing) travels
with it; a bare pickled module (torch.save(model)) loads too, with no metadata.

A torch.export program (``.pt2``, pscompress.workstation.program) loads without any class or
pickle: its graph is rewritten into nn.Conv2d / nn.BatchNorm2d layers. Its checkpoint holds the
program's bytes (a uint8 tensor) in place of ``arch``, beside the state dict of the rewritten
(and converted) module: ``{"format": "pscompress", "version": 1, "program": <uint8 tensor>,
"state_dict": {...}, "meta": {...}}``; loading rebuilds the same layers from the program, then
loads the state dict as for a built-in architecture.

A full pickled nn.Module can run arbitrary code when loaded, so it is read only when the
caller passes ``trust_pickle=True`` (the CLI's ``--trust-pickle``). Every field of a
checkpoint is checked, with bounds, before anything is built from it; a zip archive's sizes
are checked before torch inflates it (pscompress.core.inputs).
"""
from __future__ import annotations

import io
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from pscompress.core.errors import UserError, short_repr
from pscompress.core.files import atomic_output
from pscompress.core.inputs import check_zip
from pscompress.core.limits import MAX_CHANNELS, MAX_CLASSES, check_bytes, check_count, is_int
from pscompress.core.metadata import check_metadata
from pscompress.core.patterns import MAX_PERIOD, PatternSet
from pscompress.workstation import archs
from pscompress.workstation.layers import PSConv2d
from pscompress.workstation.lean import LEAN, STENCILS, LeanConv2d, lean_reason
from pscompress.workstation.program import is_program_archive, load_program, program_module
from pscompress.workstation.surgery import has_submodule, replace_module
from pscompress.workstation.virtual_pool import VIRTUAL_POOL, VirtualPoolConv2d, virtual_pool_reason

FORMAT = "pscompress"
PROGRAM_ARCH = "torch.export"  # the architecture of a model rebuilt from a .pt2 program
VERSION = 1
_EXTRA_STATE = "._extra_state"
# The keyword arguments every built-in architecture takes, with their bounds.
_ARCH_KWARGS = {"in_channels": MAX_CHANNELS, "num_classes": MAX_CLASSES}


@dataclass
class LoadedModel:
    """A model with what is needed to save it again: its architecture and metadata.

    ``arch`` is a built-in architecture's name, ``PROGRAM_ARCH`` for a model rebuilt from a
    torch.export program (then ``program`` holds its bytes), None for a pickled module.
    """

    module: nn.Module
    arch: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    program: bytes | None = None  # the torch.export program (.pt2 bytes) the module was rebuilt from
    notes: list[str] = field(default_factory=list)  # what loading left as it was, and why (for the report)


def load_model(path: str | os.PathLike, arch: str | None = None, trust_pickle: bool = False) -> LoadedModel:
    """Load a pscompress checkpoint, a state dict (with ``arch``), or, if trusted, a pickled module."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"cannot read {path}: {'it is a directory' if path.is_dir() else 'no such file'}")
    if not os.access(path, os.R_OK):
        raise UserError(f"cannot read {path}: permission denied")
    if zipfile.is_zipfile(path) and is_program_archive(path):
        check_bytes(str(path), path.stat().st_size)  # before its bytes are read whole (load_program checks the rest)
        loaded = _from_program(path.read_bytes(), str(path))
        _check_finite(loaded.module, path)
        return loaded
    obj = _torch_load(path, trust_pickle)
    if isinstance(obj, nn.Module):
        loaded = LoadedModel(obj.eval())
    elif isinstance(obj, dict) and obj.get("format") == FORMAT:
        loaded = _from_checkpoint(obj, path)
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values() if not _is_extra(v)):
        loaded = _from_state_dict(obj, arch, path)
    else:
        raise UserError(f"{path} holds no model: expected a pscompress checkpoint, a state dict or a module")
    _check_finite(loaded.module, path)
    return loaded


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    """What torch.save wrote, read with ``weights_only`` unless trusted; a zip's sizes are checked first."""
    if zipfile.is_zipfile(path):
        check_zip(path)
        if _is_torchscript(path):  # before torch.load, which warns and then refuses it
            raise UserError(f"{path} is a TorchScript archive (torch.jit.save), which pscompress does not read: "
                            "pass the model saved with torch.save(model, ...) and `trust_pickle`, or its "
                            "state_dict() with `arch` for a built-in architecture", "trust_pickle", "arch")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # how weights_only refuses an object (or fails on bytes that are no pickle)
        if not _is_torch_file(path):
            raise UserError(f"{path} is not a PyTorch model file") from exc
        if not trust_pickle:
            raise UserError(
                f"{path} holds pickled Python objects, which can run code when loaded: "
                "pass --trust-pickle only if you trust where it came from"
            ) from exc
        return _load_trusted(path)
    except Exception as exc:  # torch's loaders fail on arbitrary bytes in arbitrary ways (RuntimeError, KeyError, ...)
        raise UserError(f"{path} is not a PyTorch model file ({exc.__class__.__name__})") from exc


def save_checkpoint(model: LoadedModel, path: str | os.PathLike) -> None:
    """Write a checkpoint atomically; a model of no built-in architecture and no program holds its module pickled."""
    payload: dict[str, Any] = {"format": FORMAT, "version": VERSION, "meta": dict(model.meta)}
    if model.program is not None:
        payload.update({"program": torch.frombuffer(bytearray(model.program), dtype=torch.uint8),
                        "state_dict": _cpu_state(model.module)})
    elif model.arch is None:
        payload["module"] = model.module
    else:
        payload.update({"arch": model.arch, "arch_kwargs": dict(model.arch_kwargs), "state_dict": _cpu_state(model.module)})
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)


def _cpu_state(module: nn.Module) -> dict[str, Any]:
    return {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in module.state_dict().items()}


def _is_extra(value: Any) -> bool:
    return isinstance(value, dict) and "patterns" in value


def _is_torch_file(path: Path) -> bool:
    if zipfile.is_zipfile(path):  # torch.save's zip archives hold <name>/data.pkl
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") for name in archive.namelist())
    with open(path, "rb") as f:
        return f.read(2) == b"\x80\x02"  # legacy (non-zip) torch.save starts with a protocol-2 pickle


def _is_torchscript(path: Path) -> bool:
    """torch.jit.save's archives hold <name>/constants.pkl and the model's code; torch.save's never do."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(name.endswith("/constants.pkl") for name in names) and any("/code/" in name for name in names)


def _load_trusted(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # an arbitrary pickle can fail in arbitrary ways
        raise UserError(f"cannot unpickle {path}: {exc}") from exc


def _from_checkpoint(obj: dict, path: Path) -> LoadedModel:
    if obj.get("version") != VERSION:
        raise UserError(f"{path} is a pscompress checkpoint of version {obj.get('version')}; this pscompress reads version {VERSION}")
    meta = check_metadata({} if obj.get("meta") is None else obj["meta"], f"{path}: meta")
    if "module" in obj:  # only a trusted pickle gets here: weights_only refuses the module
        if not isinstance(obj["module"], nn.Module):
            raise UserError(f"{path}: module is a {type(obj['module']).__name__}, not a PyTorch module")
        return LoadedModel(obj["module"].eval(), meta=meta)
    if "program" in obj:
        loaded = _from_program(_program_bytes(obj["program"], path), f"{path}: program")
        _load_state(loaded.module, _state_dict(obj.get("state_dict"), path), path)
        return LoadedModel(loaded.module.eval(), PROGRAM_ARCH, meta=meta, program=loaded.program)
    arch = obj.get("arch")
    if not isinstance(arch, str) or arch not in archs.ARCHITECTURES:
        raise UserError(f"{path}: arch {arch!r} is not a built-in architecture ({', '.join(sorted(archs.ARCHITECTURES))})")
    kwargs = _arch_kwargs(obj.get("arch_kwargs"), path)
    state = _state_dict(obj.get("state_dict"), path)
    module = archs.build(arch, **kwargs)
    _load_state(module, state, path)
    return LoadedModel(module.eval(), arch, kwargs, meta)


def _from_program(data: bytes, what: str) -> LoadedModel:
    """A torch.export program's bytes, rebuilt into layers; its example input's shape recorded."""
    rebuilt = program_module(load_program(io.BytesIO(data), what), what)
    meta = {} if rebuilt.input_shape is None else {"input_shape": list(rebuilt.input_shape)}
    return LoadedModel(rebuilt.module, PROGRAM_ARCH, meta=meta, program=data, notes=rebuilt.notes)


def _program_bytes(value: Any, path: Path) -> bytes:
    if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8 or value.dim() != 1:
        raise UserError(f"{path}: program must be the bytes of a .pt2 file (a 1-D uint8 tensor), "
                        f"got {type(value).__name__}")
    return value.numpy().tobytes()


def _from_state_dict(state: dict, arch: str | None, path: Path) -> LoadedModel:
    if arch is None:
        raise UserError(f"{path} is a bare state dict: name its architecture with `arch` "
                        f"({', '.join(sorted(archs.ARCHITECTURES))})", "arch")
    from pscompress.workstation.model_io import weights_io  # model_io needs LoadedModel from here

    in_channels, num_classes = weights_io(state)
    kwargs = _arch_kwargs({"in_channels": in_channels, "num_classes": num_classes}, path)
    module = archs.build(arch, **kwargs)
    _load_state(module, state, path)
    return LoadedModel(module.eval(), arch, kwargs)


def _arch_kwargs(kwargs: Any, path: Path) -> dict[str, int]:
    """A checkpoint's ``arch_kwargs``: known keys only, each an integer within its bound."""
    if kwargs is None:
        return {}
    if not isinstance(kwargs, Mapping):
        raise UserError(f"{path}: arch_kwargs must be a mapping such as {{'in_channels': 3}}, got {type(kwargs).__name__}")
    unknown = sorted(str(k) for k in kwargs if k not in _ARCH_KWARGS)
    if unknown:
        raise UserError(f"{path}: arch_kwargs has unknown key(s) {', '.join(unknown)} (known: {', '.join(_ARCH_KWARGS)})")
    return {key: check_count(f"{path}: arch_kwargs {key}", value, _ARCH_KWARGS[key]) for key, value in kwargs.items()}


def _state_dict(state: Any, path: Path) -> Mapping[str, Any]:
    """A checkpoint's ``state_dict``: names to tensors (and pSConv extra state); shapes are checked on loading."""
    if state is None:
        raise UserError(f"{path} is a pscompress checkpoint without a state_dict")
    if not isinstance(state, Mapping):
        raise UserError(f"{path}: state_dict must map names to tensors, got {type(state).__name__}")
    for key, value in state.items():
        if not isinstance(key, str) or not (isinstance(value, torch.Tensor) or key.endswith(_EXTRA_STATE)):
            raise UserError(f"{path}: state_dict entry {key!r} is a {type(value).__name__}, not a tensor")
    return state


def _load_state(module: nn.Module, state: Mapping[str, Any], path: Path) -> None:
    """Turn the convs that carry a method (lean, virtual pool) or a pattern into LeanConv2d / VirtualPoolConv2d /
    PSConv2d, then load strictly."""
    extras = [(key[: -len(_EXTRA_STATE)], key, value) for key, value in state.items()
              if key.endswith(_EXTRA_STATE) and isinstance(value, dict)]
    # Parents before children: a lean layer's depth-wise PSConv2d, or the PSConv2d a virtual-pool layer wraps,
    # only exists once that layer does.
    for name, key, value in sorted(extras, key=lambda item: item[0].count(".")):
        method = value.get("method")
        if isinstance(method, str) and method in _REBUILDERS:  # a hostile list or dict is no key
            _REBUILDERS[method](module, name, value, f"{path}: {key}")
        elif _is_extra(value):
            _rebuild_psconv(module, name, value, path, key)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"{path} does not match the architecture: {_mismatches(module, state)}") from exc


def _rebuild_psconv(module: nn.Module, name: str, value: Mapping[str, Any], path: Path, key: str) -> None:
    conv = module.get_submodule(name) if has_submodule(module, name) else None
    if not isinstance(conv, nn.Conv2d):
        raise UserError(f"{path}: {name} carries a pattern but is not a convolution of this architecture")
    pattern, shift = _extra_pattern(value, f"{path}: {key}")
    if tuple(pattern.kernel_size) != tuple(conv.kernel_size):
        raise UserError(f"{path}: {key} is a pattern for {pattern.kernel_size} kernels, "
                        f"the convolution has {tuple(conv.kernel_size)}")
    replace_module(module, name, PSConv2d.from_conv(conv, pattern, shift))


def _rebuild_lean(module: nn.Module, name: str, value: Mapping[str, Any], where: str) -> None:
    """A LeanConv2d in place of the architecture's conv: {"method": "lean", "stencil": "5point" | "4point"}."""
    stencil = value.get("stencil")
    if set(value) != {"method", "stencil"} or not isinstance(stencil, str) or stencil not in STENCILS:
        raise UserError(f"{where}: a lean layer records exactly a method and a stencil "
                        f"({' or '.join(STENCILS)}), got {short_repr(value)}")
    conv = _eligible_conv(module, name, lambda conv: lean_reason(name, conv, first=None), "a lean layer", where)
    replace_module(module, name, LeanConv2d.from_conv(conv, stencil))


def _rebuild_virtual_pool(module: nn.Module, name: str, value: Mapping[str, Any], where: str) -> None:
    """A VirtualPoolConv2d around the architecture's stride-1 conv (now at stride 2): {"method": "virtual-pool"}."""
    if set(value) != {"method"}:
        raise UserError(f"{where}: a virtual-pool layer records exactly its method, got {short_repr(value)}")
    conv = _eligible_conv(module, name, lambda conv: virtual_pool_reason(name, conv), "a virtual-pool layer", where)
    replace_module(module, name, VirtualPoolConv2d.from_conv(conv))


def _eligible_conv(module: nn.Module, name: str, reason: Callable[[nn.Conv2d], str | None], what: str,
                   where: str) -> nn.Conv2d:
    """The architecture's conv called ``name``; UserError when there is none or ``reason`` says it cannot be ``what``."""
    conv = module.get_submodule(name) if has_submodule(module, name) else None
    why = "not a convolution of this architecture" if not isinstance(conv, nn.Conv2d) else reason(conv)
    if why is not None:
        raise UserError(f"{where}: {name} cannot be {what} ({why})")
    return conv


# How a layer whose extra state names its method is rebuilt, by method.
_REBUILDERS: dict[str, Callable[[nn.Module, str, Mapping[str, Any], str], None]] = {
    LEAN: _rebuild_lean, VIRTUAL_POOL: _rebuild_virtual_pool}


def _mismatches(module: nn.Module, state: Mapping[str, Any], shown: int = 3) -> str:
    """The first few keys the model lacks, does not expect or holds in another shape: one short line."""
    expected = module.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    shapes = [f"{key} {list(value.shape)} (the model's: {list(expected[key].shape)})" for key, value in state.items()
              if key in expected and isinstance(value, torch.Tensor) and isinstance(expected[key], torch.Tensor)
              and value.shape != expected[key].shape]
    parts = [f"{label} {len(keys)} key(s): {', '.join(keys[:shown])}{', ...' if len(keys) > shown else ''}"
             for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch in", shapes))
             if keys]
    return "; ".join(parts) or "the weights do not load"


def _extra_pattern(value: Mapping[str, Any], where: str) -> tuple[PatternSet, int]:
    """The pattern and shift a PSConv2d layer saved as extra state: {"kernel_size", "patterns", "shift"}."""
    kernel_size, patterns, shift = value.get("kernel_size"), value.get("patterns"), value.get("shift")
    if not isinstance(kernel_size, (list, tuple)) or len(kernel_size) != 2 or not all(is_int(k) for k in kernel_size):
        raise UserError(f"{where}: kernel_size must be two integers [KH, KW], got {kernel_size!r}")
    if not isinstance(patterns, (list, tuple)) or not 1 <= len(patterns) <= MAX_PERIOD \
            or not all(is_int(p) for p in patterns):
        raise UserError(f"{where}: patterns must be 1 to {MAX_PERIOD} integer bitmasks, got {short_repr(patterns)}")
    if not is_int(shift):
        raise UserError(f"{where}: shift must be an integer, got {shift!r}")
    try:
        pattern = PatternSet.from_bitmasks(kernel_size, patterns)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from exc
    if not 0 <= shift < pattern.period:
        raise UserError(f"{where}: shift {shift} is outside [0, {pattern.period})")
    return pattern, shift


def _check_finite(module: nn.Module, path: Path) -> None:
    """NaN or infinite weights (a diverged training run) would poison alignment, export and accuracy alike."""
    for name, value in module.state_dict().items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise UserError(f"{path}: {name} holds NaN or infinite values: the model's weights are broken")
