"""Heatmap overlays: blending, PNG, DICOM Secondary Capture, slice choice for 3D heatmaps."""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from PIL import Image

from medlens.errors import MedlensError
from medlens.inference.geometry import source_view
from medlens.serving.overlay import overlay_for_result, overlay_png, overlay_rgb, secondary_capture
from medlens.serving.predictor import PredictionResult
from tests.serving.orthanc_fixture import synthetic_ct_series
from tests.serving.test_dicom_node import fake_prediction, fake_result


def test_overlay_blends_a_resized_heatmap_over_the_grey_image():
    grey = np.full((64, 48), 0.5, dtype=np.float32)
    heat = np.zeros((8, 6), dtype=np.float32)
    heat[:4, :3] = 1.0  # top-left quarter hot
    rgb = overlay_rgb(grey, heat, alpha=0.5)
    assert rgb.shape == (64, 48, 3) and rgb.dtype == np.uint8
    hot, cold = rgb[5, 5].astype(int), rgb[60, 44].astype(int)
    assert hot[0] > hot[2] + 60  # jet: 1.0 is red
    assert cold[2] > cold[0] + 60  # jet: 0.0 is blue
    # alpha 0 is the grey image itself; no heatmap gives grey RGB
    assert np.all(overlay_rgb(grey, heat, alpha=0.0) == 128)
    plain = overlay_rgb(grey, None)
    assert np.all(plain[..., 0] == plain[..., 2])


def test_overlay_png_round_trips_and_bad_shapes_are_refused():
    png = overlay_png(np.random.default_rng(0).random((20, 30)), np.random.default_rng(1).random((5, 5)))
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.size == (30, 20) and img.mode == "RGB"
    with pytest.raises(MedlensError, match="2D"):
        overlay_rgb(np.zeros((2, 4, 4)), None)
    with pytest.raises(ValueError, match="alpha"):
        overlay_rgb(np.zeros((4, 4)), None, alpha=1.5)


def test_secondary_capture_is_a_new_series_in_the_source_study(tmp_path):
    series = synthetic_ct_series(3)
    pred = fake_prediction(series)
    rgb = overlay_rgb(np.random.default_rng(0).random((32, 32)), np.random.default_rng(1).random((8, 8)))
    sc = secondary_capture(rgb, pred, series[1], series_number=42)
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    back = pydicom.dcmread(path)
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
    assert back.StudyInstanceUID == series[0].StudyInstanceUID
    assert back.SeriesInstanceUID != series[0].SeriesInstanceUID and back.SeriesNumber == 42
    assert back.PatientID == series[0].PatientID
    assert back.BurnedInAnnotation == "YES" and back.SeriesDescription == "medlens overlay"
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == series[1].SOPInstanceUID
    assert back.pixel_array.shape == (32, 32, 3)
    # the AI label is burned into the top-left corner (yellow text on black)
    corner = back.pixel_array[:12, :32]
    assert np.any((corner[..., 0] > 200) & (corner[..., 1] > 200) & (corner[..., 2] < 80))
    if shutil.which("dciodvfy"):
        report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        assert [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")] == []
    with pytest.raises(MedlensError, match="uint8"):
        secondary_capture(rgb.astype(np.float32), pred, series[0])


def test_3d_heatmap_shows_the_source_slice_where_it_peaks():
    series = synthetic_ct_series(5, blob_slice=4)
    shuffled = [series[i] for i in (3, 0, 4, 2, 1)]
    result = fake_result(shuffled, heatmap_depth=5)  # peaks at heatmap slice 3
    rgb, shown = overlay_for_result(result)
    assert shown.InstanceNumber == 4 and rgb.shape == (32, 32, 3)
    heat = np.zeros((5, 8, 8), dtype=np.float32)
    heat[4, 2, 2] = 1.0
    result = fake_result(shuffled, heatmap=heat)
    _, shown = overlay_for_result(result)
    assert shown.InstanceNumber == 5  # the slice with the blob


def test_2d_overlay_is_the_source_image_with_the_heatmap_on_it():
    series = synthetic_ct_series(1)
    pred = fake_prediction(series)
    view = source_view(np.zeros((1, 16, 16), dtype=np.float32), np.ones((4, 4), dtype=np.float32))
    rgb, shown = overlay_for_result(PredictionResult(pred, series, view))
    assert rgb.shape == (16, 16, 3) and shown is series[0]
    assert rgb[8, 8, 0] == round(0.4 * 0.5 * 255) and rgb[8, 8, 2] == 0  # jet(1) = dark red, alpha 0.4, over black
    with pytest.raises(MedlensError, match="source DICOM instance"):
        overlay_for_result(PredictionResult(pred, [], view))
