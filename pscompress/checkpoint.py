"""Loading models safely and writing pscompress checkpoints.

A pscompress checkpoint is a plain dict saved with torch.save and read back with
``weights_only=True`` (no code runs on load)::

    {"format": "pscompress", "version": 1,
     "arch": "resnet20", "arch_kwargs": {"in_channels": 1, "num_classes": 10},
     "state_dict": {...},   # PSConv2d layers carry their pattern as "<name>._extra_state"
     "meta": {...}}         # preprocessing, classes, accuracy, provenance: JSON-like values

A full pickled nn.Module can run arbitrary code when loaded, so it is read only when the
caller passes ``trust_pickle=True`` (the CLI's ``--trust-pickle``).
"""
from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pscompress import archs
from pscompress.errors import UserError
from pscompress.files import atomic_output
from pscompress.layers import PSConv2d
from pscompress.patterns import PatternSet

FORMAT = "pscompress"
VERSION = 1
_EXTRA_STATE = "._extra_state"


@dataclass
class LoadedModel:
    """A model with what is needed to save it again: its architecture and metadata."""

    module: nn.Module
    arch: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def load_model(path: str | os.PathLike, arch: str | None = None, trust_pickle: bool = False) -> LoadedModel:
    """Load a pscompress checkpoint, a state dict (with ``arch``), or, if trusted, a pickled module."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"cannot read {path}: {'it is a directory' if path.is_dir() else 'no such file'}")
    if not os.access(path, os.R_OK):
        raise UserError(f"cannot read {path}: permission denied")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as exc:
        if not _is_torch_file(path):
            raise UserError(f"{path} is not a PyTorch model file") from exc
        if not trust_pickle:
            raise UserError(
                f"{path} holds pickled Python objects, which can run code when loaded: "
                "pass --trust-pickle only if you trust where it came from"
            ) from exc
        obj = _load_trusted(path)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path} is not a PyTorch model file ({exc.__class__.__name__})") from exc
    except Exception as exc:  # torch's loaders fail on arbitrary bytes in arbitrary ways (KeyError, ...)
        raise UserError(f"{path} is not a PyTorch model file ({exc.__class__.__name__})") from exc

    if isinstance(obj, nn.Module):
        return LoadedModel(obj.eval())
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return _from_checkpoint(obj, path)
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values() if not _is_extra(v)):
        return _from_state_dict(obj, arch, path)
    raise UserError(f"{path} holds no model: expected a pscompress checkpoint, a state dict or a module")


def save_checkpoint(model: LoadedModel, path: str | os.PathLike) -> None:
    """Write a checkpoint atomically; a model of no built-in architecture is saved as a pickle."""
    state = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in model.module.state_dict().items()}
    if model.arch is None:
        payload: Any = model.module
    else:
        payload = {"format": FORMAT, "version": VERSION, "arch": model.arch,
                   "arch_kwargs": dict(model.arch_kwargs), "state_dict": state, "meta": dict(model.meta)}
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)


def psconv_layers(module: nn.Module) -> dict[str, PSConv2d]:
    return {name: m for name, m in module.named_modules() if isinstance(m, PSConv2d)}


def _is_extra(value: Any) -> bool:
    return isinstance(value, dict) and "patterns" in value


def _is_torch_file(path: Path) -> bool:
    if zipfile.is_zipfile(path):  # torch.save's zip archives hold <name>/data.pkl
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") for name in archive.namelist())
    with open(path, "rb") as f:
        return f.read(2) == b"\x80\x02"  # legacy (non-zip) torch.save starts with a protocol-2 pickle


def _load_trusted(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # an arbitrary pickle can fail in arbitrary ways
        raise UserError(f"cannot unpickle {path}: {exc}") from exc


def _from_checkpoint(obj: dict, path: Path) -> LoadedModel:
    if obj.get("version") != VERSION:
        raise UserError(f"{path} is a pscompress checkpoint of version {obj.get('version')}; this pscompress reads version {VERSION}")
    kwargs = dict(obj.get("arch_kwargs") or {})
    module = archs.build(obj["arch"], **kwargs)
    _load_state(module, obj["state_dict"], path)
    return LoadedModel(module.eval(), obj["arch"], kwargs, dict(obj.get("meta") or {}))


def _from_state_dict(state: dict, arch: str | None, path: Path) -> LoadedModel:
    if arch is None:
        raise UserError(f"{path} is a bare state dict: name its architecture with --arch ({', '.join(sorted(archs.ARCHITECTURES))})")
    kwargs = _infer_arch_kwargs(state)
    module = archs.build(arch, **kwargs)
    _load_state(module, state, path)
    return LoadedModel(module.eval(), arch, kwargs)


def _infer_arch_kwargs(state: dict) -> dict[str, int]:
    """in_channels from the first conv, num_classes from the last linear layer."""
    convs = [v for k, v in state.items() if k.endswith("weight") and isinstance(v, torch.Tensor) and v.dim() == 4]
    linears = [v for k, v in state.items() if k.endswith("weight") and isinstance(v, torch.Tensor) and v.dim() == 2]
    if not convs or not linears:
        raise UserError("the state dict has no convolution or no linear layer: it does not match any built-in architecture")
    return {"in_channels": int(convs[0].shape[1]), "num_classes": int(linears[-1].shape[0])}


def _load_state(module: nn.Module, state: dict, path: Path) -> None:
    """Turn the convs that carry a pattern into PSConv2d, then load the weights strictly."""
    for key, value in state.items():
        if key.endswith(_EXTRA_STATE) and _is_extra(value):
            name = key[: -len(_EXTRA_STATE)]
            conv = module.get_submodule(name) if _has_submodule(module, name) else None
            if not isinstance(conv, nn.Conv2d):
                raise UserError(f"{path}: {name} carries a pattern but is not a convolution of this architecture")
            pattern = PatternSet.from_bitmasks(value["kernel_size"], value["patterns"])
            replace_module(module, name, PSConv2d.from_conv(conv, pattern, int(value["shift"])))
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise UserError(f"{path} does not match the architecture: {first}") from exc


def _has_submodule(module: nn.Module, name: str) -> bool:
    try:
        module.get_submodule(name)
        return True
    except AttributeError:
        return False


def replace_module(module: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` in place of the submodule called ``name`` (dotted path)."""
    parent_name, _, child = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    setattr(parent, child, new)
