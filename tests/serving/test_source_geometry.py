"""Findings shown on the real image: a 512 x 512 input gives a 512 x 512 PNG, page image and
Secondary Capture with the heatmap on the right pixels; a volume shows the source slice where it peaks.

The heatmaps here come from a stand-in for ``Bundle.explain`` that marks where the model input is
bright: a one-epoch model's Grad-CAM can look anywhere, but this map must come back onto the blob
in source coordinates, so a flipped, transposed or shifted mapping fails.
"""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from PIL import Image

from medlens.inference.bundle import Bundle
from medlens.serving.overlay import overlay_for_result, secondary_capture
from medlens.serving.predictor import Predictor
from tests.serving.orthanc_fixture import synthetic_ct_series, synthetic_dx_instance, to_bytes

SIDE = 512
BLOB = (slice(320, 400), slice(96, 176))  # rows, columns: off-centre, lower left


def bright_spots(self, x, classes):
    """Stand-in for Bundle.explain: the model input's brightness in [0, 1] (the blob is the peak)."""
    m = np.asarray(x, dtype=np.float32).mean(axis=1)
    lo = m.reshape(len(m), -1).min(axis=1).reshape(-1, *[1] * (m.ndim - 1))
    hi = m.reshape(len(m), -1).max(axis=1).reshape(-1, *[1] * (m.ndim - 1))
    return (m - lo) / np.maximum(hi - lo, 1e-6)


def dx_with_blob() -> pydicom.Dataset:
    """A 512 x 512 DX instance (ImagerPixelSpacing 0.5 mm) with a bright square at :data:`BLOB`."""
    image = np.random.default_rng(3).normal(60.0, 5.0, (SIDE, SIDE))
    image[BLOB] = 230.0
    return synthetic_dx_instance(image)


def in_blob(row: int, col: int) -> bool:
    return BLOB[0].start <= row < BLOB[0].stop and BLOB[1].start <= col < BLOB[1].stop


def hot_and_cold(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean colour inside the blob and in the opposite corner."""
    return rgb[BLOB].reshape(-1, 3).mean(axis=0), rgb[40:100, 400:480].reshape(-1, 3).mean(axis=0)


@pytest.fixture
def explained(monkeypatch):
    monkeypatch.setattr(Bundle, "explain", bright_spots)


@pytest.fixture
def dx_file(tmp_path):
    path = tmp_path / "dx512.dcm"
    dx_with_blob().save_as(path, enforce_file_format=True)
    return path


def test_a_512_dicom_gives_a_512_png_with_the_heatmap_on_the_blob(tiny_run, explained, dx_file, cli, tmp_path):
    result = Predictor.from_run(tiny_run).predict_path(dx_file, explain=True)
    assert result.prediction.heatmap.shape == (32, 32)  # the model's own geometry is kept in the record
    image, heat = result.heatmap_slice()
    assert image.shape == heat.shape == (SIDE, SIDE)
    assert in_blob(*np.unravel_index(np.argmax(heat), heat.shape))
    assert image[BLOB].mean() > 0.9 > 0.5 > image[40:100, 400:480].mean()  # the source, windowed

    code, _, err = cli("predict", tiny_run, dx_file, "--explain", "--out", tmp_path / "out")
    assert code == 0, err
    with Image.open(tmp_path / "out" / "dx512.heatmap.png") as im:
        assert im.size == (SIDE, SIDE)
        hot, cold = hot_and_cold(np.asarray(im.convert("RGB"), dtype=np.float32))
    assert hot[0] > hot[2] + 30 and cold[2] > cold[0] + 40  # jet: red on the blob, blue far from it


def test_the_secondary_capture_is_the_source_resolution_with_its_spacing(tiny_run, explained, tmp_path):
    dx = dx_with_blob()
    result = Predictor.from_run(tiny_run).predict_dicom([dx], explain=True)
    rgb, shown = overlay_for_result(result)
    assert shown is dx
    path = tmp_path / "sc.dcm"
    secondary_capture(rgb, result.prediction, shown).save_as(path, enforce_file_format=True)
    sc = pydicom.dcmread(path)
    assert (sc.Rows, sc.Columns) == (SIDE, SIDE) and [float(v) for v in sc.ImagerPixelSpacing] == [0.5, 0.5]
    hot, cold = hot_and_cold(sc.pixel_array.astype(np.float32))
    assert hot[0] > hot[2] + 30 and cold[2] > cold[0] + 40
    if shutil.which("dciodvfy"):
        report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        assert [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")] == []


@pytest.fixture(scope="module")
def tiny_3d_run(tmp_path_factory):
    from medlens.training.config import TrainConfig
    from medlens.training.run import train

    out = tmp_path_factory.mktemp("run3d") / "run"
    train(
        TrainConfig(
            source="synthetic:nodule3d@16", model="cnn-2.5d", out=str(out), epochs=1, max_samples=12, progress=False
        )
    )
    return out


def test_a_volume_shows_the_source_slice_at_the_heatmap_peak(tiny_3d_run, explained):
    series = synthetic_ct_series(24, size=48, blob_slice=17, seed=4)  # 24 slices: not the model's 16
    shuffled = [series[i] for i in np.random.default_rng(0).permutation(len(series))]
    predictor = Predictor.from_run(tiny_3d_run, uncertainty="max_prob")
    result = predictor.predict_dicom(shuffled, explain=True)
    assert result.prediction.heatmap.shape == (16, 16, 16)
    image, heat = result.heatmap_slice()
    assert image.shape == heat.shape == (48, 48)
    weight = np.where(heat > 0.5, heat, 0.0)  # the hot region's centre: the blob of synthetic_ct_series
    yy, xx = np.mgrid[:48, :48]
    centre = (weight * yy).sum() / weight.sum(), (weight * xx).sum() / weight.sum()
    assert np.hypot(centre[0] - 48 * 0.6, centre[1] - 48 * 0.4) < 3
    assert abs(result.view.slice_index - 17) <= 1  # source slice order (by position), not arrival order
    shown = result.shown_source()
    assert shown.SOPInstanceUID == series[result.view.slice_index].SOPInstanceUID
    rgb, shown_by_overlay = overlay_for_result(result)
    assert shown_by_overlay is shown and rgb.shape == (48, 48, 3)


def test_bytes_upload_of_a_512_dicom_keeps_its_size_through_the_store(tiny_run, explained, tmp_path):
    from medlens.serving.app import _png_layers
    from medlens.serving.store import PredictionStore

    result = Predictor.from_run(tiny_run).predict_bytes(to_bytes(dx_with_blob()), "dx.dcm", explain=True)
    image, heat = result.heatmap_slice()
    store = PredictionStore(tmp_path / "store")
    entry = store.put(result.prediction, image, result.sources, heatmap=heat)
    store.close()  # the disk writes are done
    reread = PredictionStore(tmp_path / "store").get(result.prediction.id)
    for kept in (entry, reread):
        grey, layer = _png_layers(kept)
        for png in (grey, layer):
            assert Image.open(io.BytesIO(png)).size == (SIDE, SIDE)
        colour = np.asarray(Image.open(io.BytesIO(layer)).convert("RGB"), dtype=np.float32)
        hot, cold = hot_and_cold(colour)
        assert hot[0] > hot[2] + 100 and cold[2] > cold[0] + 100  # the colour layer alone (alpha 1)


def test_answer_view_defers_only_small_2d_pictures_without_heatmap_and_draws_the_same_picture():
    from medlens.inference.geometry import DEFER_MAX_PIXELS, DeferredView, SourceView, answer_view, source_view

    rng = np.random.default_rng(0)
    small = rng.normal(0.0, 1.0, (3, 40, 30)).astype(np.float32)
    view = answer_view(small, window=(0.0, 2.0))
    assert isinstance(view, DeferredView) and view.heatmap is None and view.slice_index is None
    assert np.array_equal(view.image, source_view(small, window=(0.0, 2.0)).image)
    assert view.nbytes == view.image.nbytes  # the source is let go once the picture is made
    side = int(DEFER_MAX_PIXELS**0.5) + 1
    for source, heat in (
        (np.zeros((1, side, side), np.float32), None),  # large: drawn at once
        (small, np.zeros((8, 8), np.float32)),  # heatmap: resampled with torch, on the network's thread
        (np.zeros((1, 4, 16, 16), np.float32), None),  # volume
    ):
        assert isinstance(answer_view(source, heat), SourceView)
