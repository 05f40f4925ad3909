"""`convert --virtual-pool auto`: layers chosen by time saved on this CPU and agreement lost on real images."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import pscompress.workstation.virtual_pool_choice as choice
from pscompress.board.data import load_dataset
from pscompress.core.errors import UserError
from pscompress.workstation.agreement import predictions, recalibrate_batchnorm
from pscompress.workstation.checkpoint import load_model
from pscompress.workstation.sparsify import sparsify
from pscompress.workstation.virtual_pool import VirtualPoolConv2d, eligible_convs, virtual_pool

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "fashion_resnet20.pt"


@pytest.mark.parametrize("globs, budget", [(("auto",), choice.DEFAULT_MAX_LOSS), (("auto:0.05",), 0.05),
                                           (("auto:0",), 0.0), (("layers.7.*",), None), ((), None)])
def test_parse_auto(globs, budget):
    assert choice.parse_auto(globs) == budget


@pytest.mark.parametrize("globs", [("auto", "layers.7.*"), ("auto:x",), ("auto:1.5",), ("auto:-0.1",)])
def test_parse_auto_refuses(globs):
    with pytest.raises(UserError, match="--virtual-pool"):
        choice.parse_auto(globs)


@pytest.mark.parametrize("hw", [(7, 7), (8, 5), (28, 28)])
@pytest.mark.parametrize("pooled", [False, True])
def test_timed_layer_computes_what_the_layer_computes(hw, pooled):
    # The graph timed is the layer as exported: the conv, or its virtual-pooled form (stride 2 + upsample).
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False).eval()
    x = torch.rand(1, 4, *hw)
    expected = (VirtualPoolConv2d.from_conv(conv) if pooled else conv)(x).detach().numpy()
    got = ort.InferenceSession(choice._layer_model(conv, (4, *hw), pooled)).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_auto_on_the_sample_keeps_the_agreement_budget(run_cli, tmp_path):
    out = tmp_path / "vip.pt"
    status, stdout, stderr = run_cli("convert", SAMPLE, "--pattern", "4of9", "--virtual-pool", "auto:0.02",
                                     "--data", "fashion-mnist", "-o", out)
    assert status == 0, stderr
    saved = load_model(out)
    chosen = saved.meta["virtual_pool_layers"]
    assert saved.meta["virtual_pool"] == ["auto:0.02"] and chosen
    assert sorted(n for n, m in saved.module.named_modules() if isinstance(m, VirtualPoolConv2d)) == sorted(chosen)
    for name in chosen:
        assert f"  {name}: " in stdout and stdout.split(f"  {name}: ")[1].split("\n")[0].endswith("chosen")
    # Recomputed here: the chosen layers together lose at most the budget against 4of9 alone.
    dense = load_model(SAMPLE).module
    converted = copy.deepcopy(dense)
    sparsify(converted, "4of9", input_shape=(1, 28, 28))
    train = load_dataset("fashion-mnist", "train")
    test = load_dataset("fashion-mnist", "test").subset(choice.AGREEMENT_IMAGES)
    reference = predictions(dense, test)

    def agreement(layers):
        trial = copy.deepcopy(converted)
        virtual_pool(trial, layers, (1, 28, 28))
        recalibrate_batchnorm(trial, train, choice.RECALIBRATION_IMAGES)
        return np.mean(predictions(trial, test) == reference)
    assert agreement([]) - agreement(chosen) <= 0.02 + 1e-9


def test_layers_that_save_no_time_are_never_chosen(run_cli, tmp_path, monkeypatch):
    names = eligible_convs(load_model(SAMPLE).module, (1, 28, 28))
    slow = set(names[::2])
    times = iter([(1.0, 1.2) if n in slow else (1.0, 0.5) for n in names])  # in run order, as timed
    monkeypatch.setattr(choice, "_layer_times", lambda conv, size: next(times))
    out = tmp_path / "vip.pt"
    status, stdout, stderr = run_cli("convert", SAMPLE, "--pattern", "4of9", "--virtual-pool", "auto:0.5",
                                     "--data", "fashion-mnist", "--bn-recalibrate", "0", "-o", out)
    assert status == 0, stderr
    chosen = load_model(out).meta["virtual_pool_layers"]
    assert chosen and not slow & set(chosen)
    assert all(f"  {n}: 1.000 -> 1.200 ms: not faster here" in stdout for n in slow)


@pytest.mark.parametrize("args, message", [
    (["--virtual-pool", "auto"], "give --data SPEC"),
    (["--virtual-pool", "auto", "--virtual-pool", "layers.7.*", "--data", "fashion-mnist"], "give it alone"),
    (["--virtual-pool", "auto:2", "--data", "fashion-mnist"], "in [0, 1)"),
])
def test_auto_mistakes_are_one_line_exit_2(run_cli, tmp_path, args, message):
    out = tmp_path / "vip.pt"
    status, _, stderr = run_cli("convert", SAMPLE, *args, "-o", out)
    assert status == 2 and message in stderr and "Traceback" not in stderr and not out.exists()
