"""One way to run any model file pscompress knows: ``open_predictor(path)``.

Every format has one implementation of the ``Predictor`` protocol: ``OnnxPredictor``
(board/onnx_predictor.py), ``TFLitePredictor`` (board/tflite_predictor.py) and
``TorchPredictor`` (workstation/torch_predictor.py). Each module is imported only when its
format is opened, so evaluating an .onnx file works on a board without PyTorch or TFLite.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from pscompress.core.errors import UserError


class TopK(NamedTuple):
    """Per image, the k best classes: softmax probabilities and class indices, best first."""

    values: np.ndarray   # float32 [N, k]
    indices: np.ndarray  # int64 [N, k]


def topk_of(logits: np.ndarray, k: int = 5) -> TopK:
    """The ``k`` most probable classes of each row of ``logits`` [N, classes] (softmax)."""
    logits = np.asarray(logits).astype(np.float64)
    k = max(1, min(int(k), logits.shape[1]))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return TopK(np.take_along_axis(probs, order, axis=1).astype(np.float32), order.astype(np.int64))


def classifier_output(names: list[str], chosen: str | None, source: str) -> str | None:
    """Which of a model's outputs ``predict`` returns: ``chosen``, else the only one (None: ambiguous).

    UserError when ``chosen`` is not one of ``names``.
    """
    if chosen is not None and chosen not in names:
        raise UserError(f"{source} has no output {chosen!r}; its outputs: {', '.join(names)}", "output")
    return chosen if chosen is not None else (names[0] if len(names) == 1 else None)


def ambiguous_output(names: list[str], source: str) -> UserError:
    """The error of ``predict`` on a model with several outputs and none chosen as the classifier."""
    return UserError(f"{source} has {len(names)} outputs ({', '.join(names)}): choose the classifier with "
                     "`output`", "output")


class Predictor(Protocol):
    """A loaded model: ``predict(x)`` maps float32 NCHW images in [0, 1] to logits [N, classes].

    ``x`` is never normalised by the caller: every implementation applies the model's recorded
    ``preprocess`` mean and std (pscompress.core.inputs.normalize) itself, exactly once, so the
    same images mean the same to ``run``, ``eval`` and any format. Images are in the model's
    channel order and at its size (``load_input`` makes them from a file).

    For a model with several outputs, ``predict`` returns the one chosen as the classifier
    (``open_predictor``'s ``output``), or the only one; every predictor returns
    all of them from ``predict_all`` (by name, in the model's order). Implementations subclass
    this protocol to inherit ``topk`` and ``class_name``.
    """

    input_shape: tuple[Any, ...]  # (C, H, W); H and W are None when the model does not record them
    classes: list[str] | None     # None when the model does not name them
    meta: dict[str, Any]          # the metadata pscompress wrote into the model
    preprocess: dict[str, Any]    # meta["preprocess"] ({}: none recorded): mean/std that predict applies
    native: bool | None           # whether the native PSConv kernels run (None: not an ONNX matter)
    num_outputs: int | None       # logits per image; None when unknown

    def predict(self, x: np.ndarray) -> np.ndarray: ...

    def topk(self, x: np.ndarray, k: int = 5) -> TopK:
        """The ``k`` most probable classes of each image (softmax over the logits)."""
        return topk_of(self.predict(x), k)

    def class_name(self, index: int) -> str:
        return self.classes[index] if self.classes and 0 <= index < len(self.classes) else str(index)


class Format(NamedTuple):
    name: str                  # as the eval record names it
    module: str                # imported by name when a file of this format is opened
    cls: str
    options: tuple[str, ...]   # the open_predictor options the class takes


# The PyTorch entry is a module name, not an import: the workstation side needs torch, which
# the board install does not have (tests/test_import_boundary.py keeps it that way).
FORMATS = {
    ".pt": Format("pytorch", "pscompress.workstation.torch_predictor", "TorchPredictor",
                  ("threads", "trust_pickle", "output")),
    ".pth": Format("pytorch", "pscompress.workstation.torch_predictor", "TorchPredictor",
                   ("threads", "trust_pickle", "output")),
    ".onnx": Format("onnx", "pscompress.board.onnx_predictor", "OnnxPredictor", ("threads", "native", "output")),
    ".tflite": Format("tflite", "pscompress.board.tflite_predictor", "TFLitePredictor", ("threads", "output")),
}
WORKSTATION_EXTRA = "pip install 'pscompress[workstation]'"


def _format(path: str | os.PathLike) -> Format:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UserError(f"{path}: unknown model format {suffix or '(no suffix)'!r}; expected one of {', '.join(sorted(FORMATS))}")
    return FORMATS[suffix]


def model_format(path: str | os.PathLike) -> str:
    return _format(path).name


def open_predictor(path: str | os.PathLike, native: bool | None = None, threads: int | None = None,
                   trust_pickle: bool = False, output: str | None = None) -> Predictor:
    """Open a .pt/.pth, .onnx or .tflite model. ``native`` (ONNX only): None = use the kernel library if found.

    ``output``: the output ``predict`` returns, for a model with several.
    """
    fmt = _format(path)
    if not Path(path).is_file():
        raise UserError(f"cannot read {path}: no such file")
    if native is not None and "native" not in fmt.options:
        raise UserError(f"`native` applies to .onnx models only, not {Path(path).name}", "native")
    try:
        module = importlib.import_module(fmt.module)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "torch":
            raise
        raise UserError(f"{Path(path).name}: running PyTorch models needs the workstation extra: {WORKSTATION_EXTRA} "
                        "(this install has no PyTorch)") from exc
    given = {"threads": threads, "native": native, "trust_pickle": trust_pickle, "output": output}
    return getattr(module, fmt.cls)(path, **{name: given[name] for name in fmt.options})


def num_classes(predictor: Predictor) -> int | None:
    """The number of logits: from the model's layers or class names, else from one probe run when the input size is known."""
    if predictor.num_outputs:
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
