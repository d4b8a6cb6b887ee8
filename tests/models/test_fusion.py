"""Folding BatchNorm into convolutions for answering: same function, same module names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medlens.models.deep.fusion import conv_batchnorm_pairs, fold_batchnorm
from medlens.models.deep.small_cnn import SmallCNN


def _with_statistics(net: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, as after training."""
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return net.eval()


def _batchnorms(net: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def test_small_cnn_folds_every_batchnorm_and_keeps_its_function_and_names():
    net = _with_statistics(SmallCNN(1, 3, img_size=28))
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = net(x)
    before = _batchnorms(net)
    assert before == 4
    assert fold_batchnorm(net) == before
    assert _batchnorms(net) == 0
    with torch.no_grad():
        assert torch.allclose(net(x), expected, atol=1e-5, rtol=1e-5)
    net.get_submodule("features.stage4")  # the Grad-CAM layer is still there
    assert isinstance(net.get_submodule("head.dropout"), nn.Dropout)  # and the MC-dropout layer


class _Shared(nn.Module):
    """A convolution whose output is used twice, and a BatchNorm module called twice."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.conv2 = nn.Conv2d(2, 2, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2)

    def forward(self, x):
        y = self.conv(x)
        z = self.bn(y) + y  # the convolution's output is needed unnormalised too: not foldable
        return self.bn2(self.conv2(z)) + self.bn2(z)  # bn2 called twice: not foldable


def test_pairs_that_are_not_a_plain_chain_stay():
    net = _with_statistics(_Shared())
    assert conv_batchnorm_pairs(net) == []
    assert fold_batchnorm(net) == 0
    assert _batchnorms(net) == 2


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return self.bn(self.conv(x))
        return self.conv(x)


def test_a_network_fx_cannot_trace_keeps_its_batchnorms():
    net = _with_statistics(_Untraceable())
    assert fold_batchnorm(net) == 0
    assert _batchnorms(net) == 1


def test_training_mode_is_refused():
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(SmallCNN(1, 2).train())


def test_resnet18_folds_and_answers_the_same():
    from medlens.models.registry import get_model

    net = get_model("resnet18").build(in_channels=1, num_outputs=2, spatial_dims=2, img_size=28)
    net = _with_statistics(net)
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = net(x)
        assert fold_batchnorm(net) > 0
        assert torch.allclose(net(x), expected, atol=1e-4, rtol=1e-4)
