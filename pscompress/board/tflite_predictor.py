"""Running exported .tflite models without PyTorch or TensorFlow.

Uses whichever TFLite interpreter is installed: ``ai-edge-litert`` (numpy 2 works) or
``tflite-runtime`` (needs numpy < 2). The model's input is NHWC; ``predict`` takes PyTorch's
NCHW images in [0, 1], applies the recorded ``preprocess`` mean and std (once; never normalise
before calling it) and transposes them, so callers never see the difference.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from pscompress.board.predictor import Predictor, ambiguous_output, classifier_output
from pscompress.board.tflite_reader import file_metadata
from pscompress.core.errors import UserError
from pscompress.core.inputs import normalize
from pscompress.core.limits import check_input_shape

_INTERPRETERS = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")
_MAX_BATCH = 64


def interpreter_module() -> Any:
    """The first importable TFLite interpreter module."""
    for name in _INTERPRETERS:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise UserError("running .tflite models needs a TFLite interpreter: pip install ai-edge-litert "
                    "(or tflite-runtime, which needs numpy<2)")


class TFLitePredictor(Predictor):
    """A .tflite model: ``predict(x)`` maps float32 [N, C, H, W] images in [0, 1] to logits [N, classes].

    ``xnnpack=False`` turns the runtime's default XNNPACK delegate off; ``threads`` sets the
    interpreter's thread count (None: the runtime's default). A model with several outputs needs
    ``output="NAME"`` (the classifier) for ``predict`` and ``topk``; ``predict_all`` returns every
    output by name, in the model's order, as the ONNX predictor does.
    """

    def __init__(self, path: str | os.PathLike, xnnpack: bool = True, threads: int | None = None,
                 output: str | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"cannot read {path}: no such file")
        self._load(path.read_bytes(), str(path), xnnpack, threads, output)

    @classmethod
    def from_bytes(cls, content: bytes, xnnpack: bool = True, threads: int | None = None,
                   output: str | None = None) -> "TFLitePredictor":
        """A predictor for a model held in memory (e.g. just exported, before it is written)."""
        predictor = cls.__new__(cls)
        predictor._load(content, "the model", xnnpack, threads, output)
        return predictor

    def _load(self, content: bytes, path: str, xnnpack: bool, threads: int | None, output: str | None) -> None:
        if content[4:8] != b"TFL3":
            raise UserError(f"{path} is not a TFLite model")
        module = interpreter_module()
        options: dict[str, Any] = {"model_content": content, "num_threads": threads}
        if not xnnpack:
            options["experimental_op_resolver_type"] = module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            self._interpreter = module.Interpreter(**options)
        except (ValueError, RuntimeError) as exc:
            raise UserError(f"{path}: the TFLite runtime cannot load it ({exc})") from exc
        self._input = self._interpreter.get_input_details()[0]
        self._outputs = self._interpreter.get_output_details()
        self._batch = 0
        self.meta: dict[str, Any] = file_metadata(content, path)
        recorded = [o["name"] for o in self.meta.get("outputs") or []]
        #: the model's output names, in order: as recorded (pscompress.workstation.model_io.named_outputs), else
        #: "logits" for the one output of an older file
        self.output_names: list[str] = (recorded if len(recorded) == len(self._outputs) else
                                        ["logits"] if len(self._outputs) == 1 else [o["name"] for o in self._outputs])
        #: the output ``predict`` returns (None: several outputs and none chosen)
        self._name = Path(path).name
        self.output = classifier_output(self.output_names, output, self._name)
        shape = [int(d) for d in self._input["shape"]]
        if len(shape) != 4:
            raise UserError(f"{path} takes a {len(shape)}-D input, not images [N, H, W, C]")
        _, h, w, c = shape
        self.input_shape: tuple[int, int, int] = check_input_shape((c, h, w), f"{path}: the model's input")
        classes = self.meta.get("classes")
        self.classes: list[str] | None = [str(name) for name in classes] if classes else None
        self.preprocess: dict[str, Any] = dict(self.meta.get("preprocess") or {})
        self.native = None  # pscompress's native kernels are an ONNX runtime matter
        # Logits per image as a probe run would count them: everything but the batch dimension.
        chosen = self._outputs[self.output_names.index(self.output)] if self.output else None
        if chosen is not None:
            self.num_outputs: int | None = int(np.prod(chosen["shape"][1:])) or None
        else:
            self.num_outputs = len(self.classes) if self.classes else None
        self.dynamic_hw = False  # a TFLite file takes its recorded size only

    def takes(self, shape: tuple[int, ...]) -> bool:
        """Whether the model runs on images of ``shape`` (C, H, W): its input's."""
        return tuple(shape) == tuple(self.input_shape)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Logits (the classifier output) for float32 images [N, C, H, W] in [0, 1]: mean/std applied, then the graph."""
        if self.output is None:
            raise ambiguous_output(self.output_names, self._name)
        return self.predict_all(x)[self.output]

    def predict_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every output by name, in the model's order, for float32 images [N, C, H, W] in [0, 1] (mean/std applied)."""
        return self.run_normalized(normalize(self._checked(x), self.preprocess))

    def predict_normalized(self, x: np.ndarray) -> np.ndarray:
        """The graph's classifier output for images already normalised."""
        if self.output is None:
            raise ambiguous_output(self.output_names, self._name)
        return self.run_normalized(x)[self.output]

    def run_normalized(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the graph by name for images already normalised (what export verification compares
        with PyTorch): batches of up to 64 images, their results joined."""
        nhwc = np.ascontiguousarray(self._checked(x).transpose(0, 2, 3, 1), dtype=np.float32)
        runs = [self._run(nhwc[i:i + _MAX_BATCH]) for i in range(0, len(nhwc), _MAX_BATCH)]
        return {name: np.concatenate([run[k] for run in runs]) if runs else
                np.zeros((0, *detail["shape"][1:]), np.float32)
                for k, (name, detail) in enumerate(zip(self.output_names, self._outputs))}

    def _checked(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise UserError(f"expected images of shape [N, {', '.join(map(str, self.input_shape))}], got {list(x.shape)}")
        return x

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        try:
            if len(batch) != self._batch:  # re-plan only when the batch size changes
                self._interpreter.resize_tensor_input(self._input["index"], list(batch.shape), strict=False)
                self._interpreter.allocate_tensors()
                self._batch = len(batch)
            self._interpreter.set_tensor(self._input["index"], batch)
            self._interpreter.invoke()
        except (RuntimeError, ValueError) as exc:  # the interpreter's errors on a model it cannot run
            raise UserError(f"the TFLite runtime cannot run the model: {str(exc).strip().splitlines()[0]}") from exc
        return [self._interpreter.get_tensor(detail["index"]).copy() for detail in self._outputs]
