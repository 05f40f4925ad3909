"""``convert --virtual-pool auto``: which layers to virtual-pool, from measurements on this CPU and on real images.

The ViP paper picks its layers by how much each costs in accuracy for what it saves. Here both sides
are measured rather than counted: MACs saved need not be time saved (on the sample's 7x7 maps a
stride-2 conv plus its upsample runs no faster than the conv), so each eligible layer is timed in
onnxruntime, as the export runs it (Conv at stride 1 against Conv at stride 2 + Resize, batch 1,
1 thread, random weights), and layers that save under MIN_SAVING of their own time are left out.
The others are ranked by the top-1 agreement with the dense model each costs alone per millisecond
saved, after batch-norm recalibration, and added in that order while the agreement of the whole
model stays within ``max_loss`` of the model without Virtual Pooling. Before fine-tuning, so the
budget is a ranking device, not a promise about accuracy after it.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from tqdm import tqdm

from pscompress.board.data import ArrayDataset
from pscompress.board.tune import Timer
from pscompress.core.errors import UserError
from pscompress.runtime import create_session
from pscompress.workstation.agreement import predictions, recalibrate_batchnorm
from pscompress.workstation.measure import layer_inputs
from pscompress.workstation.virtual_pool import FACTOR, eligible_convs, same_padding, virtual_pool

AUTO = "auto"
DEFAULT_MAX_LOSS = 0.01   # agreement with the dense model the chosen layers may cost together
MIN_SAVING = 0.10         # a layer must save this fraction of its own time
RECALIBRATION_IMAGES = 512
AGREEMENT_IMAGES = 500


@dataclass
class Candidate:
    name: str
    conv_ms: float       # the conv as it is
    pooled_ms: float     # at stride 2 with the upsample
    loss: float | None = None  # agreement lost when virtual-pooled alone (None: not measured)

    @property
    def saved_ms(self) -> float:
        return self.conv_ms - self.pooled_ms


def parse_auto(globs: Sequence[str]) -> float | None:
    """The agreement budget of ``--virtual-pool auto[:LOSS]``, None when the globs name layers instead."""
    autos = [g for g in globs if g == AUTO or g.startswith(AUTO + ":")]
    if not autos:
        return None
    if len(globs) > 1:
        raise UserError("--virtual-pool auto chooses every layer itself: give it alone, not with globs")
    _, _, loss = autos[0].partition(":")
    try:
        value = float(loss) if loss else DEFAULT_MAX_LOSS
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise UserError(f"--virtual-pool {autos[0]!r}: the agreement budget after 'auto:' must be a number in "
                        "[0, 1), e.g. auto:0.02 (two points)")
    return value


def choose_layers(dense: nn.Module, model: nn.Module, shape: Sequence[int], train: ArrayDataset,
                  test: ArrayDataset, max_loss: float, log: Callable[[str], None] = print,
                  progress: bool | None = None) -> list[str]:
    """The layers of ``model`` (already converted, not modified) to virtual-pool, in run order."""
    names = eligible_convs(model, shape)
    if not names:
        return []
    sizes = layer_inputs(model, names, shape)
    test = test.subset(AGREEMENT_IMAGES)
    reference = predictions(dense, test)

    def agreement(layers: list[str]) -> float:
        trial = copy.deepcopy(model)
        virtual_pool(trial, layers, shape)
        recalibrate_batchnorm(trial, train, RECALIBRATION_IMAGES)
        return float(np.mean(predictions(trial, test) == reference))

    bar = tqdm(total=2 * len(names) + 1, desc="virtual-pool auto", unit="layer",
               disable=None if progress is None else not progress, leave=False)
    candidates = []
    for name in names:
        conv_ms, pooled_ms = _layer_times(model.get_submodule(name), tuple(sizes[name][1:]))
        candidates.append(Candidate(name, conv_ms, pooled_ms))
        bar.update()
    base = agreement([])
    bar.update()
    useful = [c for c in candidates if c.saved_ms >= MIN_SAVING * c.conv_ms]
    bar.total = len(names) + 1 + len(useful)
    for c in useful:
        c.loss = base - agreement([c.name])
        bar.update()
    bar.close()
    chosen: list[str] = []
    for c in sorted(useful, key=lambda c: max(c.loss, 0.0) / c.saved_ms):
        if c.loss <= max_loss and base - agreement([*chosen, c.name]) <= max_loss:
            chosen.append(c.name)
    _log_choice(candidates, chosen, base, log)
    return [name for name in names if name in chosen]


def _log_choice(candidates: list[Candidate], chosen: list[str], base: float, log: Callable[[str], None]) -> None:
    log(f"virtual-pool auto: agreement with the dense model {base:.1%} without it "
        f"({AGREEMENT_IMAGES} test images, batch norm recalibrated on {RECALIBRATION_IMAGES})")
    for c in candidates:
        verdict = ("chosen" if c.name in chosen else "not faster here" if c.loss is None else "over the budget")
        lost = "" if c.loss is None else f", costs {c.loss:+.1%} agreement alone"
        log(f"  {c.name}: {c.conv_ms:.3f} -> {c.pooled_ms:.3f} ms{lost}: {verdict}")


def _layer_times(conv: nn.Conv2d, size: tuple[int, int, int]) -> tuple[float, float]:
    """Milliseconds of ``conv`` on one ``size`` image in onnxruntime, as it is and virtual-pooled."""
    x = np.random.default_rng(0).random((1, *size), dtype=np.float32)
    runs = {}
    for pooled in (False, True):
        session = create_session(_layer_model(conv, size, pooled), threads=1, native=False)
        runs[pooled] = (lambda s: lambda: s.run(None, {"x": x}))(session)
    times = Timer(clock=time.thread_time, min_seconds=0.2)("layer", runs)
    return 1e3 * times[False], 1e3 * times[True]


def _layer_model(conv: nn.Conv2d, size: tuple[int, int, int], pooled: bool) -> bytes:
    """One Conv with ``conv``'s weights (unmasked: they only set the shape timed), at its stride, or at
    stride 2 followed by the virtual-pool upsample as the ONNX export writes it (Resize linear,
    asymmetric, scale 2, cropped to the input's size)."""
    padding = same_padding(conv)  # eligible convs keep their input's size
    pads = list(padding) if len(padding) == 4 else [*padding, *padding]  # ONNX: top, left, bottom, right
    stride = FACTOR if pooled else 1
    inits = [numpy_helper.from_array(conv.weight.detach().float().numpy(), "w")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["s" if pooled else "y"], kernel_shape=list(conv.kernel_size),
                              strides=[stride, stride], pads=pads, dilations=list(conv.dilation), group=conv.groups)]
    if pooled:
        inits.append(numpy_helper.from_array(np.array([1, 1, FACTOR, FACTOR], np.float32), "scales"))
        inits += [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
                  (("starts", [0, 0]), ("ends", list(size[1:])), ("axes", [2, 3]))]
        nodes += [helper.make_node("Resize", ["s", "", "scales"], ["u"], mode="linear",
                                   coordinate_transformation_mode="asymmetric"),
                  helper.make_node("Slice", ["u", "starts", "ends", "axes"], ["y"])]
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, *size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8).SerializeToString()
