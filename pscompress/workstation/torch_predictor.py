"""Running a PyTorch checkpoint like an exported model (the workstation side: needs torch).

``pscompress.board.predictor.open_predictor`` imports this module by name when a .pt/.pth
file is opened, so the board side never imports torch itself. Like every predictor, it takes
images in [0, 1] and applies the checkpoint's recorded ``preprocess`` mean and std itself.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from pscompress.board.predictor import Predictor, ambiguous_output, classifier_output
from pscompress.core.errors import UserError
from pscompress.core.inputs import normalize
from pscompress.workstation.checkpoint import load_model
from pscompress.workstation.model_io import known_io, named_outputs


class TorchPredictor(Predictor):
    """A PyTorch model loaded safely from a pscompress checkpoint or state dict."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, trust_pickle: bool = False,
                 output: str | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        loaded = load_model(path, trust_pickle=trust_pickle)
        self.module = loaded.module.eval()
        self.meta = dict(loaded.meta)
        self.classes = [str(c) for c in self.meta["classes"]] if self.meta.get("classes") else None
        self.preprocess = dict(self.meta.get("preprocess") or {})
        self.native = None
        in_channels, num_classes = known_io(self.module.state_dict())
        in_channels = loaded.arch_kwargs.get("in_channels") or in_channels
        self.num_outputs = loaded.arch_kwargs.get("num_classes") or num_classes
        hw = self.meta.get("input_shape")
        self.input_shape = (in_channels, *(tuple(hw[-2:]) if hw else (None, None)))
        self._name = os.path.basename(path)
        #: the output ``predict`` returns (None: the only one; its names are known after a run)
        self.output = output

    def predict(self, x: np.ndarray) -> np.ndarray:
        outputs = self.predict_all(x)
        chosen = classifier_output(list(outputs), self.output, self._name)
        if chosen is None:
            raise ambiguous_output(list(outputs), self._name)
        return outputs[chosen]

    def predict_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every output by name (pscompress.workstation.model_io.named_outputs, as the exports name them),
        for float32 images [N, C, H, W] in [0, 1] (mean/std applied here)."""
        x = np.ascontiguousarray(normalize(x, self.preprocess), dtype=np.float32)
        with torch.inference_mode():
            try:
                result = self.module(torch.from_numpy(x))
            except RuntimeError as exc:  # a model that records no input size meets images it cannot take
                reason = str(exc).strip().splitlines()[0]
                raise UserError(f"the model cannot run on images of shape {list(x.shape[1:])}: {reason}") from exc
            return {name: value.numpy() for name, value in named_outputs(result).items()}
