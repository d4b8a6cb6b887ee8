"""Heatmaps from the model input's geometry back onto the source image (medlens.inference.geometry)."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.errors import MedlensError
from medlens.inference import geometry
from medlens.inference.geometry import check_invertible, display_window, source_view, to_source_geometry


def test_a_2d_heatmap_lands_on_the_same_place_of_a_non_square_source():
    heat = np.zeros((8, 8), dtype=np.float32)
    heat[6, 1] = 1.0  # lower left: a transposed or flipped mapping puts it elsewhere
    source = np.random.default_rng(0).normal(100.0, 10.0, (1, 64, 48)).astype(np.float32)
    view = source_view(source, heat, preprocessing={"steps": [{"name": "resize", "size": [8, 8]}, {"name": "minmax"}]})
    assert view.image.shape == view.heatmap.shape == (64, 48) and view.slice_index is None
    row, col = np.unravel_index(np.argmax(view.heatmap), view.heatmap.shape)
    assert 6 * 8 <= row < 7 * 8 and 1 * 6 <= col < 2 * 6  # inside model pixel (6, 1) scaled by (8, 6)
    assert 0.0 <= view.image.min() < view.image.max() <= 1.0


def test_half_pixel_centres_and_nearest_for_masks():
    ramp = np.arange(4, dtype=np.float32)[None].repeat(2, axis=0)  # (2, 4): 0 1 2 3 along columns
    up = to_source_geometry(ramp, (2, 8))
    np.testing.assert_allclose(up[0], [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3], atol=1e-6)
    mask = to_source_geometry(np.array([[0, 1], [1, 0]], dtype=np.float32), (4, 4), nearest=True)
    np.testing.assert_array_equal(mask, [[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]])


def test_a_volume_shows_the_source_slice_where_the_heatmap_peaks():
    source = np.zeros((1, 10, 20, 20), dtype=np.float32)
    source[0, :, 2:6, 2:6] = np.arange(10)[:, None, None] + 1  # each slice recognisable
    heat = np.zeros((4, 8, 8), dtype=np.float32)
    heat[1, 1, 1] = 1.0  # model slice 1 of 4 is centred on source slice 3.25
    view = source_view(source, heat)
    assert view.slice_index == 3 and view.image.shape == view.heatmap.shape == (20, 20)
    assert np.unravel_index(np.argmax(view.heatmap), (20, 20)) in {(r, c) for r in range(2, 6) for c in range(2, 6)}
    np.testing.assert_allclose(view.image, display_window(source[:, 3]))
    assert source_view(source).slice_index == 5 and source_view(source).heatmap is None  # middle slice


def test_the_dicom_window_is_used_when_given_and_rgb_is_shown_as_luminance():
    ct = np.array([[[-1000.0, 40.0, 240.0, 1000.0]]], dtype=np.float32)
    np.testing.assert_allclose(display_window(ct, (40.0, 400.0)), [[0.0, 0.5, 1.0, 1.0]])
    rgb = np.zeros((3, 2, 2), dtype=np.float32)
    rgb[1] = 200.0  # pure green
    rgb[:, 0, 0] = 0.0
    grey = display_window(rgb)
    assert grey.shape == (2, 2) and grey[0, 0] == 0.0 and grey[1, 1] == pytest.approx(1.0)


def test_a_huge_picture_is_reduced_with_its_aspect_ratio(monkeypatch):
    monkeypatch.setattr(geometry, "DISPLAY_MAX_SIDE", 32)
    view = source_view(np.random.default_rng(1).random((1, 64, 48)).astype(np.float32), np.ones((8, 8)))
    assert view.image.shape == view.heatmap.shape == (32, 24)


def test_steps_that_move_pixels_are_refused():
    check_invertible({"steps": [{"name": "resize", "size": [8, 8]}, {"name": "zscore"}, {"name": "window"}]})
    with pytest.raises(MedlensError, match="'flip'"):
        source_view(np.ones((1, 4, 4)), None, preprocessing={"steps": [{"name": "flip", "prob": 1.0}]})
    with pytest.raises(MedlensError, match="does not fit"):
        source_view(np.ones((1, 4, 4)), np.ones((2, 2, 2)))
