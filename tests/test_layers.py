"""PSConv2d: forward against F.conv2d on the masked weight, masks under optimizers, checkpoints."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pscompress.core.patterns import parse_pattern
from pscompress.workstation.archs import build
from pscompress.workstation.checkpoint import LoadedModel, load_model, save_checkpoint
from pscompress.workstation.layers import PSConv2d
from pscompress.workstation.sparsify import sparsify
from pscompress.workstation.surgery import psconv_layers


def _rule_mask(pattern, out_channels: int, in_per_group: int, shift: int) -> torch.Tensor:
    """The periodic rule written out kernel by kernel (independent of PatternSet.mask)."""
    kh, kw = pattern.kernel_size
    mask = torch.zeros(out_channels, in_per_group, kh * kw, dtype=torch.bool)
    for o in range(out_channels):
        for i in range(in_per_group):
            mask[o, i, sorted(pattern.supports[(o + i + shift) % pattern.period])] = True
    return mask.view(out_channels, in_per_group, kh, kw)


@pytest.mark.parametrize(
    "spec, cin, cout, stride, padding, dilation, groups, bias, shift",
    [
        ("4of9", 6, 8, 1, 1, 1, 1, False, 0),
        ("2of9", 4, 6, 2, 1, 1, 2, True, 5),
        ("3of9", 8, 8, 1, 0, 2, 8, True, 2),  # depthwise, dilated, no padding
        ("0,1,3,4/4,5,7,8/2,4,6", 5, 7, (2, 1), (0, 1), 1, 1, True, 1),
    ],
)
def test_forward_matches_conv2d_on_masked_weight(spec, cin, cout, stride, padding, dilation, groups, bias, shift):
    torch.manual_seed(0)
    pattern = parse_pattern(spec)
    conv = nn.Conv2d(cin, cout, 3, stride, padding, dilation, groups, bias)
    layer = PSConv2d.from_conv(conv, pattern, shift)
    mask = _rule_mask(pattern, cout, cin // groups, shift)
    x = torch.randn(2, cin, 11, 9)
    expected = F.conv2d(x, conv.weight * mask, conv.bias, stride, padding, dilation, groups)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(layer.weight == 0, ~mask | (conv.weight == 0))
    kept = [conv.weight[o, i].flatten()[p] for o in range(cout) for i in range(cin // groups)
            for p in sorted(pattern.supports[(o + i + shift) % pattern.period])]
    assert torch.equal(layer.packed_weight(), torch.stack(kept).detach())


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.05),
    ],
    ids=["sgd-momentum", "sgd-nesterov", "adamw"],
)
def test_masked_weights_stay_exactly_zero_under_training(make_optimizer):
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        PSConv2d(8, 8, 3, padding=1, pattern=parse_pattern("4of9"), shift=1), nn.ReLU(),
        PSConv2d(8, 4, 3, padding=1, groups=2, pattern=parse_pattern("2of9", dense_kernel=True), shift=3),
    )
    sparse = [m for m in model if isinstance(m, PSConv2d)]
    start = [m.weight.detach().clone() for m in sparse]
    optimizer = make_optimizer(model.parameters())
    for _ in range(40):
        optimizer.zero_grad()
        loss = model(torch.randn(4, 3, 8, 8)).square().mean()
        loss.backward()
        optimizer.step()
    for layer, before in zip(sparse, start):
        outside = ~_rule_mask(layer.pattern, layer.out_channels, layer.in_channels // layer.groups, layer.shift)
        assert torch.count_nonzero(layer.weight[outside]) == 0  # exactly zero, not just small
        assert not torch.equal(layer.weight[~outside], before[~outside])  # the kept weights did train


def test_checkpoint_round_trip_keeps_patterns_and_outputs(tmp_path):
    torch.manual_seed(2)
    model = build("resnet20", in_channels=1)
    sparsify(model, "3of9", period=5, dense_kernel=True)
    with torch.no_grad():  # non-trivial batch-norm statistics, so the comparison means something
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "model.pt"
    save_checkpoint(LoadedModel(model, "resnet20", {"in_channels": 1, "num_classes": 10}, {"note": "x"}), path)
    loaded = load_model(path)
    assert loaded.meta == {"note": "x"} and loaded.arch == "resnet20"
    before, after = psconv_layers(model), psconv_layers(loaded.module)
    assert before.keys() == after.keys() and len(before) == 18
    for name, layer in before.items():
        assert after[name].pattern == layer.pattern and after[name].shift == layer.shift
        assert torch.equal(after[name].mask, layer.mask)
    x = torch.rand(3, 1, 28, 28)
    model.eval()
    torch.testing.assert_close(loaded.module(x), model(x), rtol=0, atol=0)


def test_loading_reapplies_the_mask():
    """A state dict with non-zeros outside the pattern is masked on load."""
    pattern = parse_pattern("4of9")
    layer = PSConv2d(4, 4, 3, pattern=pattern, shift=2)
    state = layer.state_dict()
    state["weight"] = torch.ones_like(state["weight"])
    fresh = PSConv2d(4, 4, 3, pattern=parse_pattern("9of9"))
    fresh.load_state_dict(state)
    assert fresh.pattern == pattern and fresh.shift == 2
    np.testing.assert_array_equal(fresh.weight.detach().numpy() != 0, pattern.mask(4, 4, 2))
