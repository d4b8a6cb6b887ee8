"""Grad-CAM, occlusion and localization scoring on a model whose answer is known to depend on one place."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medlens.explain.cam import grad_cam, occlusion_sensitivity
from medlens.explain.localization import heatmap_iou, localization_scores, pointing_hit


class Split(nn.Module):
    """Channel 0: the image inside the top-left 8x8 corner; channel 1: the image elsewhere."""

    def __init__(self):
        super().__init__()
        corner = torch.zeros(1, 1, 32, 32)
        corner[..., :8, :8] = 1.0
        self.register_buffer("corner", corner)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return torch.cat([x * self.corner, x * (1 - self.corner)], dim=1) * self.scale


class CornerNet(nn.Module):
    """Global-average-pooled classifier: class 1 reads only the corner, class 0 only the rest."""

    def __init__(self):
        super().__init__()
        self.features = Split()

    def forward(self, x):
        f = self.features(x).mean(dim=(2, 3))
        return torch.stack([f[:, 1], f[:, 0]], dim=1) * 50


def _images():
    x = np.zeros((2, 1, 32, 32), dtype=np.float32)
    x[:, :, 2:6, 2:6] = 1.0  # bright blob inside the corner the model reads
    x[:, :, 20:28, 20:28] = 1.0  # a distractor outside it
    return x


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_grad_cam_points_at_the_region_the_model_uses(method):
    maps = grad_cam(CornerNet(), torch.from_numpy(_images()), target_layer="features", class_index=1, method=method)
    assert maps.shape == (2, 32, 32) and maps.min() >= 0 and maps.max() <= 1
    mask = np.zeros((32, 32), bool)
    mask[2:6, 2:6] = True
    assert pointing_hit(maps[0], mask)
    assert maps[0][20:28, 20:28].mean() < maps[0][2:6, 2:6].mean()


def test_occlusion_works_for_any_probability_function():
    model = CornerNet()

    def predict_proba(x):
        with torch.no_grad():
            return torch.softmax(model(torch.from_numpy(x)), 1).numpy()

    maps = occlusion_sensitivity(predict_proba, _images(), class_index=1, patch=4, stride=2, fill=0.0)
    assert maps.shape == (2, 32, 32)
    assert maps[0][2:6, 2:6].mean() > 0.5 and maps[0][20:28, 20:28].max() == 0


def test_localization_scores():
    mask = np.zeros((2, 10, 10), bool)
    mask[0, 2:4, 2:4] = True
    hm = np.zeros((2, 10, 10), np.float32)
    hm[0, 2:4, 2:4] = 1.0
    scores = localization_scores(hm, mask, tolerance=0)
    assert scores["n_scored"] == 1  # the empty mask is not scored
    assert scores["pointing_game"] == 1.0 and scores["iou"] == 1.0
    hm2 = np.zeros((10, 10), np.float32)
    hm2[8, 8] = 1.0
    assert not pointing_hit(hm2, mask[0], tolerance=1)
    assert heatmap_iou(hm2, mask[0]) == 0.0


def test_grad_cam_of_a_2_5d_network_covers_every_slice():
    """cnn-2.5d reads slices as channels: its 2D map is resized in-plane and holds for each slice."""
    from medlens.models.registry import get_model

    net = get_model("cnn-2.5d").build(in_channels=1, num_outputs=2, spatial_dims=3, img_size=16).eval()
    x = torch.randn(2, 1, 16, 16, 16)
    maps = grad_cam(net, x, target_layer="cnn.features.stage4", class_index=np.array([0, 1]))
    assert maps.shape == (2, 16, 16, 16)
    assert np.allclose(maps[:, 0], maps[:, 7]) and 0 <= maps.min() <= maps.max() <= 1
