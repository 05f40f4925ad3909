"""Running exported ONNX models: the board-side Python API (numpy + onnxruntime, no PyTorch).

    from pscompress.board.onnx_predictor import OnnxPredictor
    p = OnnxPredictor("model.onnx", threads=2)
    images = load_input("photo.png", p.input_shape, p.preprocess)   # resized, channel order, [0, 1]
    logits = p.predict(images)              # float32 [N, C, H, W] in [0, 1]; mean/std applied here
    top = p.topk(images, k=3)               # probabilities and class indices, best first
    outputs = p.predict_all(images)         # every output by name: {"logits": ...} or {"output0": ..., ...}

``predict``, ``topk`` and ``predict_all`` take images in [0, 1] (in the model's channel order, at
its size, or any H x W when the file was exported with ``--dynamic-hw``: ``p.dynamic_hw``) and
apply the recorded ``preprocess`` mean and std themselves, once: never normalise images before
passing them. ``load_input`` (pscompress.core.inputs) makes such images from a
file, applying the recorded resize and channel order.

A model with several outputs needs ``output="NAME"`` (the classifier) for ``predict`` and ``topk``.

The native PSConv kernels are used when the library is installed (``native=None``); the
model's portable ONNX functions run otherwise.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pscompress import runtime
from pscompress.board.predictor import Predictor as PredictorProtocol
from pscompress.board.predictor import ambiguous_output, classifier_output
from pscompress.core.errors import UserError
from pscompress.core.inputs import load_input, normalize
from pscompress.core.limits import check_input_shape
from pscompress.core.metadata import decode_onnx_metadata


class OnnxPredictor(PredictorProtocol):
    """An exported model loaded in onnxruntime, with the metadata pscompress wrote into it."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, native: bool | None = None,
                 output: str | None = None) -> None:
        self.path = Path(path)
        self.session = runtime.create_session(self.path, threads=threads, native=native)
        #: whether the native kernel library is registered in this session
        self.native = runtime.native_library(native) is not None
        self.meta = decode_onnx_metadata(self.session.get_modelmeta().custom_metadata_map, str(self.path))
        model_input = self.session.get_inputs()[0]
        self._input_name = model_input.name
        self.input_shape = self._resolve_input_shape(model_input.shape)
        #: whether the graph takes any H x W (``export --dynamic-hw``); ``input_shape`` is then the default size
        self.dynamic_hw = bool(self.meta.get("dynamic_hw"))
        classes = self.meta.get("classes")
        self.classes: list[str] | None = [str(c) for c in classes] if classes else None
        self.preprocess = dict(self.meta.get("preprocess") or {})
        outputs = self.session.get_outputs()
        #: the model's output names, in order
        self.output_names: list[str] = [o.name for o in outputs]
        #: the output ``predict`` returns (None: several outputs and none chosen)
        self.output = classifier_output(self.output_names, output, self.path.name)
        out = outputs[self.output_names.index(self.output)].shape if self.output else None
        self.num_outputs = out[-1] if out and isinstance(out[-1], int) else (len(self.classes) if self.classes else None)

    def _resolve_input_shape(self, onnx_shape: list) -> tuple[int, int, int]:
        recorded = self.meta.get("input_shape")
        if recorded:
            return tuple(recorded)  # type: ignore[return-value]
        dims = onnx_shape[1:]
        if len(dims) != 3 or not all(isinstance(d, int) for d in dims):
            raise UserError(f"{self.path} does not say what input it takes (no input_shape metadata, input {onnx_shape})")
        return check_input_shape(dims, f"{self.path}: the graph's input")

    def takes(self, shape: tuple[int, ...]) -> bool:
        """Whether the model runs on images of ``shape`` (C, H, W): its input's, or any H x W when dynamic."""
        if len(shape) != 3:
            return False
        return tuple(shape) == tuple(self.input_shape) or (self.dynamic_hw and shape[0] == self.input_shape[0])

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Logits [N, classes] (the classifier output) for float32 images [N, C, H, W] in [0, 1] (mean/std applied here)."""
        if self.output is None:
            raise ambiguous_output(self.output_names, self.path.name)
        return self.predict_all(x)[self.output]

    def predict_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the model by name, in its order, for float32 images [N, C, H, W] in [0, 1]."""
        x = np.asarray(x)
        if not self.takes(x.shape[1:] if x.ndim == 4 else ()):
            want = "x".join(map(str, self.input_shape))
            if self.dynamic_hw:
                raise UserError(f"the model takes images of shape [N, {self.input_shape[0]}, H, W], "
                                f"got an array of shape {list(x.shape)}")
            raise UserError(f"the model takes images of shape [N, {', '.join(map(str, self.input_shape))}] "
                            f"(C x H x W = {want}), got an array of shape {list(x.shape)}")
        x = np.ascontiguousarray(normalize(x, self.preprocess), dtype=np.float32)
        try:
            values = self.session.run(None, {self._input_name: x})
        except runtime.onnxruntime_errors() as exc:  # e.g. a node whose input shape its kernel rejects
            raise UserError(f"onnxruntime cannot run {self.path.name}: {runtime.first_line(exc)}") from exc
        return dict(zip(self.output_names, values))


# The names README.md, docs/export.md and docs/raspberry-pi.md show users.
Predictor = OnnxPredictor
__all__ = ["OnnxPredictor", "Predictor", "load_input"]
