"""One way to run any model file pscompress knows: ``open_predictor(path)``.

Every predictor has ``predict(x) -> logits`` for float32 NCHW images in [0, 1], plus
``input_shape`` (C, H, W; H and W may be None), ``classes`` (None when the model does not
name them), ``meta``, ``native`` and ``num_outputs`` (None when unknown).
PyTorch and TFLite are imported only for their own formats, so evaluating an .onnx file
works on a board without either.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pscompress.core.errors import UserError

FORMATS = {".pt": "pytorch", ".pth": "pytorch", ".onnx": "onnx", ".tflite": "tflite"}


class Predictor(Protocol):
    input_shape: tuple[Any, ...]
    classes: list[str] | None
    meta: dict[str, Any]
    native: bool | None
    num_outputs: int | None

    def predict(self, x: np.ndarray) -> np.ndarray: ...


class TorchPredictor:
    """A PyTorch model loaded safely from a pscompress checkpoint or state dict."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, trust_pickle: bool = False) -> None:
        import torch

        from pscompress.workstation.checkpoint import load_model

        self._torch = torch
        if threads:
            torch.set_num_threads(threads)
        loaded = load_model(path, trust_pickle=trust_pickle)
        self.module = loaded.module.eval()
        self.meta = dict(loaded.meta)
        self.classes = [str(c) for c in self.meta["classes"]] if self.meta.get("classes") else None
        self.native = None
        convs = [m for m in self.module.modules() if isinstance(m, torch.nn.Conv2d)]
        in_channels = loaded.arch_kwargs.get("in_channels") or (convs[0].in_channels if convs else None)
        hw = self.meta.get("input_shape")
        self.input_shape = (in_channels, *(tuple(hw[-2:]) if hw else (None, None)))
        linears = [m for m in self.module.modules() if isinstance(m, torch.nn.Linear)]
        self.num_outputs = loaded.arch_kwargs.get("num_classes") or (linears[-1].out_features if linears else None)

    def predict(self, x: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            try:
                return self.module(self._torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()
            except RuntimeError as exc:  # a model that records no input size meets images it cannot take
                reason = str(exc).strip().splitlines()[0]
                raise UserError(f"the model cannot run on images of shape {list(x.shape[1:])}: {reason}") from exc


def model_format(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UserError(f"{path}: unknown model format {suffix or '(no suffix)'!r}; expected one of {', '.join(sorted(FORMATS))}")
    return FORMATS[suffix]


def open_predictor(path: str | os.PathLike, native: bool | None = None, threads: int | None = None,
                   trust_pickle: bool = False) -> Predictor:
    """Open a .pt/.pth, .onnx or .tflite model. ``native`` (ONNX only): None = use the kernel library if found."""
    fmt = model_format(path)
    if not Path(path).is_file():
        raise UserError(f"cannot read {path}: no such file")
    if native is not None and fmt != "onnx":
        raise UserError(f"--native/--no-native applies to .onnx models only, not {Path(path).name}")
    if fmt == "pytorch":
        return TorchPredictor(path, threads=threads, trust_pickle=trust_pickle)
    if fmt == "onnx":
        from pscompress.board.onnx_predictor import Predictor as OnnxPredictor

        return OnnxPredictor(path, threads=threads, native=native)
    from pscompress.board.tflite_predictor import TFLitePredictor

    return TFLitePredictor(path, threads=threads)


def num_classes(predictor: Predictor) -> int | None:
    """The number of logits: from the model's class names or layers, else from one probe run when the input size is known."""
    if getattr(predictor, "num_outputs", None):
        return int(predictor.num_outputs)
    if predictor.classes:
        return len(predictor.classes)
    channels, *hw = predictor.input_shape
    if not all(isinstance(d, int) and d > 0 for d in (channels, *hw)):
        return None
    return int(np.asarray(predictor.predict(np.zeros((1, channels, *hw), np.float32))).reshape(1, -1).shape[1])


def describe(path: str | os.PathLike, predictor: Predictor) -> dict[str, Any]:
    """What the eval record says about the model."""
    return {"path": str(path), "format": model_format(path), "size_bytes": Path(path).stat().st_size,
            "native": predictor.native}
