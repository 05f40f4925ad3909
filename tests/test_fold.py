"""fold_batchnorm: the folded model computes what the unfolded one does, with no BN left."""
import pytest
import torch
from torch import nn

from pscompress.core.patterns import parse_pattern
from pscompress.exporters.fold import fold_batchnorm
from pscompress.workstation import archs
from pscompress.workstation.layers import PSConv2d


def _randomise_bn(model: nn.Module) -> None:
    """Non-trivial running statistics and affine parameters, as after training."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=gen))
            m.bias.data.copy_(torch.randn(n, generator=gen))


def _to_psconv(model: nn.Module, spec: str = "4of9") -> None:
    pattern = parse_pattern(spec)
    for name, m in list(model.named_modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, nn.Conv2d) and child.kernel_size == (3, 3):
                setattr(m, child_name, PSConv2d.from_conv(child, pattern, shift=len(child_name) % pattern.period))


@pytest.mark.parametrize("arch,sparse", [("resnet20", False), ("resnet20", True), ("vgg16", True)])
def test_folded_model_matches_unfolded(arch, sparse):
    torch.manual_seed(0)
    model = archs.build(arch, in_channels=1, num_classes=10)
    if sparse:
        _to_psconv(model)
    _randomise_bn(model)
    model.eval()
    x = torch.rand(4, 1, 28, 28)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        expected, got = model(x), folded(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_folding_keeps_patterns_and_leaves_the_input_alone():
    torch.manual_seed(1)
    model = archs.build("resnet20", in_channels=1, num_classes=10)
    _to_psconv(model)
    _randomise_bn(model)
    before = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    folded = fold_batchnorm(model)
    for name, m in folded.named_modules():
        if isinstance(m, PSConv2d):
            assert torch.all(m.weight[~m.mask] == 0), name
            assert m.bias is not None
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_batchnorm_not_after_a_conv_stays():
    model = nn.Sequential(nn.BatchNorm2d(1), nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    _randomise_bn(model)
    folded = fold_batchnorm(model)
    kinds = [type(m) for m in folded.modules()]
    assert kinds.count(nn.BatchNorm2d) == 1
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
