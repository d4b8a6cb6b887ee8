"""Weights round-trip through safetensors; mismatches are clear errors or reported partial loads."""

from __future__ import annotations

import pytest
import torch

from medlens.errors import MedlensError
from medlens.models.deep.weights import load_weights, read_weights, save_weights
from medlens.models.registry import get_model

torch.set_num_threads(1)


def _cnn(num_outputs=2, in_channels=1, seed=0):
    torch.manual_seed(seed)
    return get_model("cnn-small").build(in_channels=in_channels, num_outputs=num_outputs, spatial_dims=2, img_size=28)


def test_round_trip_gives_identical_outputs(tmp_path):
    a, b = _cnn(seed=0), _cnn(seed=1)
    a(torch.rand(8, 1, 28, 28))  # train mode: moves the BatchNorm running statistics
    x = torch.rand(3, 1, 28, 28)
    a.eval(), b.eval()
    assert not torch.allclose(a(x), b(x))
    path = save_weights(a, tmp_path / "sub" / "model.safetensors")
    report = load_weights(b, path)
    assert report.complete and not report.missing and len(report.loaded) == len(a.state_dict())
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    # BatchNorm buffers travel too
    assert not torch.allclose(a.features.stage1.adn.N.running_var, torch.ones(32))
    torch.testing.assert_close(a.features.stage1.adn.N.running_var, b.features.stage1.adn.N.running_var)


def test_strict_mismatch_lists_keys_and_loads_nothing(tmp_path):
    path = save_weights(_cnn(num_outputs=5), tmp_path / "five.safetensors")
    target = _cnn(num_outputs=2, seed=3)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(MedlensError) as err:
        load_weights(target, path)
    msg = str(err.value)
    assert "five.safetensors" in msg and "head.fc.weight" in msg and "[5, 192]" in msg
    for k, v in target.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed although the load was refused"


def test_partial_load_of_a_different_head(tmp_path):
    source = _cnn(num_outputs=5, seed=0)
    path = save_weights(source, tmp_path / "five.safetensors")
    target = _cnn(num_outputs=2, seed=3)
    report = load_weights(target, path, strict=False)
    assert set(report.mismatched) == {"head.fc.weight", "head.fc.bias"}
    assert not report.missing and not report.unexpected
    assert "2 with another shape" in report.summary()
    torch.testing.assert_close(target.features.stage4.conv.weight, source.features.stage4.conv.weight)
    assert target.head.fc.weight.shape == (2, 192)


def test_missing_and_unexpected_keys(tmp_path):
    model = get_model("cnn-lstm").build(in_channels=1, num_outputs=2, spatial_dims=3, img_size=28)
    path = save_weights(_cnn(), tmp_path / "cnn.safetensors")
    with pytest.raises(MedlensError, match="missing from the file.*not in the model"):
        load_weights(model, path)
    report = load_weights(model, path, strict=False)
    assert report.loaded == [] and report.missing and report.unexpected


def test_refuses_pickles_and_garbage(tmp_path):
    model = _cnn()
    pt = tmp_path / "model.pt"
    torch.save(model.state_dict(), pt)
    with pytest.raises(MedlensError, match="safetensors"):
        load_weights(model, pt)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not really a safetensors file")
    with pytest.raises(MedlensError, match="bad.safetensors"):
        load_weights(model, bad)
    with pytest.raises(MedlensError, match="not found"):
        read_weights(tmp_path / "absent.safetensors")
