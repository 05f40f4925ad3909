"""sparsify(): which layers convert, how they are placed, and what the report says."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from pscompress.core.errors import UserError
from pscompress.core.patterns import PatternSet, parse_pattern
from pscompress.workstation.align import align
from pscompress.workstation.archs import build
from pscompress.workstation.layers import PSConv2d
from pscompress.workstation.measure import measure
from pscompress.workstation.sparsify import sparsify


def _small_net(in_channels: int = 1) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(12, 12, 1),
        nn.Conv2d(12, 16, 3, padding=1, groups=4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )


def test_resnet20_converts_every_3x3_but_the_stem_in_place():
    torch.manual_seed(0)
    model = build("resnet20", in_channels=1)
    original = copy.deepcopy(model)
    report = sparsify(model, "4of9")
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert not isinstance(convs["conv1"], PSConv2d)
    for name, conv in convs.items():
        expected = conv.kernel_size == (3, 3) and name != "conv1"
        assert isinstance(conv, PSConv2d) == expected, name
    assert {layer.name for layer in report.converted} == {n for n, c in convs.items() if isinstance(c, PSConv2d)}
    # each converted layer keeps its original weights inside its mask, and the energy it reports
    for layer in report.converted:
        before = original.get_submodule(layer.name).weight.detach()
        after = model.get_submodule(layer.name)
        assert torch.equal(after.weight.detach(), before * after.mask)
        energy = float((before * after.mask).double().square().sum() / before.double().square().sum())
        assert layer.retained_energy == pytest.approx(energy, rel=1e-9)
        assert layer.method == "aligned" and layer.pattern == after.pattern.describe()


def test_report_counts_parameters_and_macs_from_shapes():
    torch.manual_seed(1)
    model = _small_net()
    report = sparsify(model, "2of9", input_shape=(1, 28, 28))
    rows = {layer.name: layer for layer in report.layers}
    # 28x28 -> stem 28x28 -> stride 2: 14x14 for the rest
    assert rows["0"].macs == rows["0"].macs_dense == 8 * 1 * 9 * 28 * 28
    assert rows["2"].macs_dense == 12 * 8 * 9 * 14 * 14 and rows["2"].macs == 12 * 8 * 2 * 14 * 14
    assert rows["4"].macs == 12 * 12 * 14 * 14
    assert rows["5"].macs_dense == 16 * 3 * 9 * 14 * 14 and rows["5"].macs == 16 * 3 * 2 * 14 * 14
    assert rows["9"].macs == 16 * 10
    assert rows["2"].params == 12 * 8 * 9 + 12 and rows["2"].nonzero == 12 * 8 * 2 + 12
    assert report.params == sum(p.numel() for p in model.parameters())
    assert report.nonzero == report.params - sum(int((~m.mask).sum()) for m in model.modules() if isinstance(m, PSConv2d))
    data = json.loads(report.to_json())
    assert data["total"]["macs"] == report.macs and data["total"]["macs_dense"] == report.macs_dense
    assert [row["name"] for row in data["layers"]] == ["0", "2", "4", "5", "9"]
    table = report.format_table()
    assert "total" in table and "aligned" in table and f"{report.macs:,}" in table
    assert measure(model, (1, 28, 28)).macs == report.macs  # the same numbers for any model


def test_a_layer_that_is_already_periodic_is_recognised_exactly():
    torch.manual_seed(2)
    model = _small_net()
    planted = PatternSet.from_bitmasks((3, 3), [0b000011011, 0b110110000, 0b111111111, 0b010111010, 0b000111000])
    mask = torch.from_numpy(planted.mask(12, 8, 3))
    with torch.no_grad():
        model[2].weight.mul_(mask)
    report = sparsify(model, "4of9")
    layer = {row.name: row for row in report.layers}["2"]
    assert layer.method == "recognised" and layer.retained_energy == 1.0
    assert torch.equal(model[2].mask, mask)
    assert {row.name: row for row in report.layers}["5"].method == "aligned"


def test_include_exclude_and_no_align():
    model = _small_net()
    report = sparsify(model, "4of9", include=["0"], exclude=["5"], align=False)
    assert [layer.name for layer in report.converted] == ["0", "2"]
    assert all(layer.method == "default" and layer.shift == 0 for layer in report.converted)
    assert model[0].pattern == parse_pattern("4of9") and not isinstance(model[5], PSConv2d)

    model = _small_net()
    sparsify(model, "4of9", exclude=["*"], include=["5"])  # include wins over exclude
    assert [isinstance(model[i], PSConv2d) for i in (0, 2, 5)] == [False, False, True]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"include": ["nope*"]}, "matches no convolution"),
        ({"include": ["4"]}, r"matches no dense convolution that a pattern is for \(4: 1x1"),  # a 1x1 conv
        ({"pattern": ["4of9", "5x5:13of25"]}, "the pattern for 5x5 fits no convolution of the model"),
        ({"pattern": "2of4"}, r"the pattern for kernels of 4 positions fits no convolution of the model \(its kernels: 3x3, 1x1\)"),
        ({"pattern": ["4of9", "1of1"], "exclude": ["2", "4", "5"]}, "no convolution to convert"),
        ({"exclude": ["2", "5"]}, "no convolution to convert"),
        ({"pattern": "4of9", "period": 2}, "period 2"),
        ({"pattern": parse_pattern("4of9"), "dense_kernel": True}, "PatternSet"),
        ({"input_shape": (3, 28, 28)}, "does not run on a 3x28x28 input"),
    ],
)
def test_mistakes_are_user_errors_and_leave_the_model_alone(kwargs, message):
    model = _small_net()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(UserError, match=message):
        sparsify(model, **kwargs)
    assert not any(isinstance(m, PSConv2d) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_dummy_forward_leaves_training_state_and_statistics_alone():
    model = build("resnet20", in_channels=1).train()
    stats = copy.deepcopy([m.running_mean for m in model.modules() if isinstance(m, nn.BatchNorm2d)])
    sparsify(model, "4of9")
    assert model.training
    after = [m.running_mean for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(stats, after))


def test_alignment_keeps_more_energy_than_the_default_on_a_trained_layer():
    """A model trained briefly on Fashion-MNIST: alignment is never worse, per layer."""
    from pscompress.board.data import load_dataset

    torch.manual_seed(3)
    train = load_dataset("fashion-mnist", "train").subset(1024)
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y).long()
    model = _small_net()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for start in range(0, len(x), 128):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[start:start + 128]), y[start:start + 128]).backward()
        optimizer.step()
    aligned, default = copy.deepcopy(model), copy.deepcopy(model)
    by_align = {r.name: r.retained_energy for r in sparsify(aligned, "4of9").converted}
    by_default = {r.name: r.retained_energy for r in sparsify(default, "4of9", align=False).converted}
    assert by_align.keys() == by_default.keys() == {"2", "5"}
    for name in by_align:
        assert by_align[name] >= by_default[name] - 1e-12
        weight = model.get_submodule(name).weight.detach().numpy()
        assert by_align[name] == pytest.approx(align(weight, parse_pattern("4of9")).retained_energy)



def test_a_config_object_with_a_filter_function_chooses_the_layers():
    from pscompress.workstation.sparsify import SparsifyConfig

    wide_only = SparsifyConfig("4of9", filter_fn=lambda name, conv: conv.out_channels >= 16)
    model = _small_net()
    report = sparsify(model, wide_only)
    assert [isinstance(model[i], PSConv2d) for i in (0, 2, 5)] == [False, False, True]
    assert report.config is wide_only
    # The filter replaces the default rule: it may choose the first conv too.
    model = _small_net()
    sparsify(model, SparsifyConfig("4of9", filter_fn=lambda name, conv: name == "0"))
    assert [isinstance(model[i], PSConv2d) for i in (0, 2, 5)] == [True, False, False]


def test_config_to_dict_is_json_and_keeps_every_field():
    from pscompress.workstation.sparsify import SparsifyConfig

    def big(name, conv):
        return True

    record = SparsifyConfig("2of9", period=4, dense_kernel=True, exclude=("5",), align=False, filter_fn=big).to_dict()
    assert json.loads(json.dumps(record)) == {"pattern": "2of9", "period": 4, "dense_kernel": True, "include": [],
                                              "exclude": ["5"], "align": False,
                                              "filter_fn": "test_config_to_dict_is_json_and_keeps_every_field.<locals>.big"}
    explicit = SparsifyConfig(parse_pattern("0,1,2,3,4/4,5,6,7,8")).to_dict()["pattern"]
    assert explicit == {"kernel_size": [3, 3], "patterns": list(parse_pattern("0,1,2,3,4/4,5,6,7,8").bitmasks)}


def test_a_config_and_keyword_options_together_are_refused():
    from pscompress.workstation.sparsify import SparsifyConfig

    with pytest.raises(UserError, match="not both"):
        sparsify(_small_net(), SparsifyConfig(), exclude=["5"])


def test_library_errors_name_parameters_and_the_cli_names_flags():
    with pytest.raises(ValueError, match="`include` 'nope' matches no convolution") as caught:
        sparsify(_small_net(), "4of9", include=["nope"])
    assert isinstance(caught.value, UserError) and "--include" not in str(caught.value)
    assert caught.value.for_cli().startswith("--include 'nope' matches no convolution")


def _snapshot(model: nn.Module) -> tuple[dict, dict]:
    return ({name: type(m) for name, m in model.named_modules()},
            {key: value.clone() for key, value in model.state_dict().items()})


def _assert_unchanged(model: nn.Module, before: tuple[dict, dict], x: torch.Tensor, expected: torch.Tensor) -> None:
    types, state = before
    assert {name: type(m) for name, m in model.named_modules()} == types
    assert not any(isinstance(m, PSConv2d) for m in model.modules())
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
    with torch.no_grad():
        assert torch.equal(model(x), expected)


def test_a_failure_in_a_middle_layer_leaves_the_model_as_it_was(monkeypatch):
    from pscompress.workstation import sparsify as sparsify_module

    torch.manual_seed(3)
    model = build("resnet20", in_channels=1).eval()
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
    before = _snapshot(model)
    middle = model.get_submodule("layers.4.conv1")
    real = PSConv2d.from_conv

    def failing(conv, pattern, shift=0, pads=None):
        if conv is middle:
            raise RuntimeError("simulated failure")
        return real(conv, pattern, shift, pads)

    monkeypatch.setattr(sparsify_module.PSConv2d, "from_conv", failing)
    with pytest.raises(UserError, match="cannot convert layer layers.4.conv1: simulated failure"):
        sparsify(model, "4of9")
    _assert_unchanged(model, before, x, expected)


class _ChecksItsLayer(nn.Module):
    """A block whose forward stops working once its conv is another type: no Conv2d subclass check can see it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if type(self.conv) is not nn.Conv2d:
            raise RuntimeError("this block runs its own layer type only")
        return y


def test_a_model_that_no_longer_runs_once_converted_is_put_back():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          _ChecksItsLayer(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)).eval()
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        expected = model(x)
    before = _snapshot(model)
    with pytest.raises(UserError, match="no longer runs after layer 4.conv was converted") as caught:
        sparsify(model, "4of9", input_shape=(1, 8, 8))
    assert "`exclude`" in str(caught.value) and "input_shape" not in str(caught.value)
    _assert_unchanged(model, before, x, expected)
    sparsify(model, "4of9", input_shape=(1, 8, 8), exclude=["4.*"])  # the way out the message names
    assert isinstance(model[2], PSConv2d) and type(model[4].conv) is nn.Conv2d


def test_a_dense_layer_with_a_few_exact_zeros_is_not_recognised():
    """Issue 14: a trained dense layer with a handful of exact zeros is no periodic pattern."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(1, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(64, 64, 3, padding=1))
    with torch.no_grad():
        for o, i, p in [(0, 0, 0), (5, 9, 4), (63, 63, 8), (20, 1, 2), (1, 40, 6), (33, 33, 3), (10, 50, 7), (60, 2, 1)]:
            model[2].weight[o, i].view(-1)[p] = 0.0  # 8 zeros, each alone on its anti-diagonal at its position
        model[4].weight.mul_(torch.from_numpy(parse_pattern("8of9").mask(64, 64, 1)))  # a real (dense-most) family
    report = sparsify(model, "2of9", input_shape=(1, 8, 8))
    rows = {row.name: row for row in report.layers}
    assert rows["2"].method == "aligned" and model[2].pattern.density() == pytest.approx(2 / 9)
    assert rows["2"].retained_energy < 0.5
    assert rows["4"].method == "recognised" and model[4].pattern.density() == pytest.approx(8 / 9)
    assert len(rows["4"].pattern) < 80


def test_a_long_period_is_not_recognised_and_names_stay_short():
    from pscompress.core.metadata import MAX_PATTERN_TEXT
    from pscompress.exporters.onnx_export import pattern_summary
    from pscompress.workstation.align import MAX_RECOGNISED_PERIOD, recognise

    long = parse_pattern("0,1,3,4/1,2,4,5/3,4,6,7/4,5,7,8/0,4,8", period=2 * MAX_RECOGNISED_PERIOD + 1)
    weight = np.where(long.mask(70, 70, 0), 1.0, 0.0)
    assert recognise(weight) is None  # exact at period 33, but beyond the bound
    assert recognise(np.where(parse_pattern("4of9", period=8).mask(70, 70, 3), 1.0, 0.0)) is not None
    layer = PSConv2d(70, 70, 3, pattern=long)
    assert len(long.describe()) > 200
    summary = pattern_summary([layer])
    assert summary == f"period {long.period}, density {long.density():.3f}" and len(summary) <= MAX_PATTERN_TEXT
    assert measure(nn.Sequential(layer), (70, 4, 4)).layers[0].pattern == summary  # convert's table and metadata
    many = [PSConv2d(8, 8, 3, pattern=parse_pattern(f"{k}of9", period=9, dense_kernel=True)) for k in range(1, 9)]
    assert len(pattern_summary(many)) <= MAX_PATTERN_TEXT and pattern_summary(many).endswith("more")
