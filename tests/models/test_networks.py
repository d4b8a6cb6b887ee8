"""Every registered deep network builds, runs forward and backward on tiny inputs of its dims."""

from __future__ import annotations

import pytest
import torch

from medlens.errors import MedlensError
from medlens.models.deep.networks import count_parameters, vit_patch_size
from medlens.models.registry import all_models, get_model

torch.set_num_threads(1)

DEEP = [s.name for s in all_models() if s.kind == "deep"]
EXPECTED = {
    "cnn-small",
    "cnn-medium",
    "resnet18",
    "resnet50",
    "densenet121",
    "efficientnet-b0",
    "vit",
    "resnet18-3d",
    "cnn-2.5d",
    "cnn-lstm",
}

# (in_channels, spatial size) per dims; 3D size is (D, H, W)
CASES_2D = [(1, 28), (3, 32)]
CASES_3D = [(1, (16, 28, 28))]


def _cases(name: str):
    spec = get_model(name)
    out = []
    if 2 in spec.dims:
        out += [(2, c, (s, s)) for c, s in CASES_2D]
    if 3 in spec.dims:
        out += [(3, c, s) for c, s in CASES_3D]
    return out


def test_all_expected_models_registered():
    assert EXPECTED <= set(DEEP)
    for name in EXPECTED:
        spec = get_model(name)
        assert spec.kind == "deep"
        assert {"cam_layer", "default_img_size", "lr", "batch_size", "mc_dropout"} <= set(spec.defaults)
        assert "binary" in spec.tasks and "multiclass" in spec.tasks


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_forward_backward_and_cam_layer(name):
    spec = get_model(name)
    for dims, channels, size in _cases(name):
        torch.manual_seed(0)
        model = spec.build(in_channels=channels, num_outputs=3, spatial_dims=dims, img_size=size)
        x = torch.rand(2, channels, *size)
        out = model(x)
        assert out.shape == (2, 3), (name, size)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        out.sum().backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None for g in grads), f"{name}: some parameters got no gradient"
        assert any(g.abs().sum() > 0 for g in grads)
        layer = model.get_submodule(spec.defaults["cam_layer"])
        assert isinstance(layer, torch.nn.Module)
        has_dropout = any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
        assert has_dropout == spec.defaults["mc_dropout"], name


@pytest.mark.parametrize("name", ["cnn-small", "cnn-medium", "resnet18", "vit"])
def test_cam_layer_sees_a_spatial_map(name):
    """The Grad-CAM layer outputs (N, C, h, w) and the logits depend on it."""
    spec = get_model(name)
    model = spec.build(in_channels=1, num_outputs=2, spatial_dims=2, img_size=28).eval()
    seen = {}
    handle = model.get_submodule(spec.defaults["cam_layer"]).register_forward_hook(
        lambda m, i, o: seen.setdefault("out", o)
    )
    model(torch.rand(2, 1, 28, 28))
    handle.remove()
    assert seen["out"].ndim == 4 and seen["out"].shape[0] == 2


def test_mc_dropout_changes_outputs_in_train_mode():
    model = get_model("cnn-small").build(in_channels=1, num_outputs=2, spatial_dims=2, img_size=28)
    x = torch.rand(4, 1, 28, 28)
    model.eval()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.train()
    assert not torch.allclose(model(x), model(x))


def test_cnn_lstm_handles_variable_depth_and_pooling():
    spec = get_model("cnn-lstm")
    for pooling in ("attention", "mean", "last"):
        model = spec.build(in_channels=1, num_outputs=2, spatial_dims=3, img_size=(8, 28, 28), pooling=pooling).eval()
        for depth in (1, 5, 12):
            assert model(torch.rand(2, 1, depth, 28, 28)).shape == (2, 2)


def test_cnn_lstm_attention_weights_sum_to_one():
    model = get_model("cnn-lstm").build(in_channels=1, num_outputs=2, spatial_dims=3, img_size=28).eval()
    model(torch.rand(3, 1, 6, 28, 28))
    w = model.last_attention
    assert w.shape == (3, 6)
    torch.testing.assert_close(w.sum(dim=1), torch.ones(3))


def test_cnn_25d_depth_is_fixed_by_img_size():
    model = get_model("cnn-2.5d").build(in_channels=1, num_outputs=2, spatial_dims=3, img_size=(10, 28, 28))
    assert model.cnn.features.stage1.conv.in_channels == 10
    assert model(torch.rand(2, 1, 10, 28, 28)).shape == (2, 2)
    with pytest.raises(ValueError, match="built for"):
        model(torch.rand(2, 1, 12, 28, 28))


def test_small_input_stems():
    small = get_model("resnet18").build(in_channels=1, num_outputs=2, spatial_dims=2, img_size=28)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert small.no_max_pool
    large = get_model("resnet18").build(in_channels=1, num_outputs=2, spatial_dims=2, img_size=128)
    assert large.conv1.kernel_size == (7, 7) and large.conv1.stride == (2, 2) and not large.no_max_pool
    dense = get_model("densenet121").build(in_channels=1, num_outputs=2, spatial_dims=2, img_size=28)
    assert dense.features.conv0.stride == (1, 1)


def test_efficientnet_224_is_monai_efficientnetbn():
    from monai.networks.nets import EfficientNetBN

    model = get_model("efficientnet-b0").build(in_channels=3, num_outputs=2, spatial_dims=2, img_size=224)
    assert isinstance(model, EfficientNetBN)
    small = get_model("efficientnet-b0").build(in_channels=3, num_outputs=2, spatial_dims=2, img_size=32)
    assert set(small.state_dict()) == set(model.state_dict())  # same architecture, other paddings


def test_vit_patch_size_and_logits_not_squashed():
    assert vit_patch_size(28) == (4, 4)
    assert vit_patch_size(64) == (8, 8)
    assert vit_patch_size(224) == (16, 16)
    model = get_model("vit").build(in_channels=1, num_outputs=2, spatial_dims=2, img_size=28)
    with torch.no_grad():
        model.vit.classification_head.bias.fill_(5.0)
    assert model(torch.rand(2, 1, 28, 28)).min() > 1.0  # no Tanh after the head


def test_wrong_dims_is_a_clear_error():
    with pytest.raises(MedlensError, match="takes 2D"):
        get_model("resnet18").build(in_channels=1, num_outputs=2, spatial_dims=3, img_size=28)
    with pytest.raises(MedlensError, match="takes 3D"):
        get_model("cnn-lstm").build(in_channels=1, num_outputs=2, spatial_dims=2, img_size=28)


def test_count_parameters_and_small_cnn_size():
    model = get_model("cnn-small").build(in_channels=1, num_outputs=2, spatial_dims=2, img_size=28)
    n = count_parameters(model)
    assert 200_000 < n < 400_000
    model.head.fc.weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == n - model.head.fc.weight.numel()
