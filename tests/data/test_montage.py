"""Montage PNG: one row per class, not blank, volumes and unlabelled sources."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medlens.data.montage import display_image, save_montage
from medlens.data.sample import Record, Task
from medlens.errors import MedlensError
from tests.data._fakes import FakeDataset, make_classification


def _pixels(path):
    return np.asarray(Image.open(path).convert("L"), dtype=np.float32)


def test_montage_rows_per_class(tmp_path):
    ds = make_classification((5, 3, 4), class_names=["glioma", "meningioma", "notumor"])
    out = save_montage(ds, tmp_path / "m.png", per_class=4)
    assert out.exists()
    px = _pixels(out)
    assert px.std() > 10  # not blank
    assert px.shape[0] > px.shape[1] * 0.5  # three rows of cells


def test_montage_skips_unreadable_and_is_deterministic(tmp_path):
    ds = make_classification((3, 3), bad=["c0_000", "c0_001"])
    a = save_montage(ds, tmp_path / "a.png", per_class=3)
    b = save_montage(ds, tmp_path / "b.png", per_class=3)
    assert a.read_bytes() == b.read_bytes()


def test_montage_of_volumes_without_labels(tmp_path):
    rng = np.random.default_rng(0)
    images = {f"s{i}": rng.normal(size=(1, 7, 16, 16)) for i in range(3)}
    records = [Record(f"s{i}", None, "p", f"/d/s{i}", None) for i in range(3)]
    ds = FakeDataset(
        images, records, task=Task.NONE, class_names=(), dims=3, meta={"s0": {"series_description": "T2reg"}}
    )
    out = save_montage(ds, tmp_path / "sub" / "vol.png")
    assert _pixels(out).std() > 10


def test_no_readable_sample_is_a_user_error(tmp_path):
    ds = make_classification((1, 1), bad=["c0_000", "c1_000"])
    with pytest.raises(MedlensError):
        save_montage(ds, tmp_path / "x.png")


def test_display_image_windows_per_image():
    img = np.zeros((1, 40, 40), np.float32)
    img[0, :20] = 1000
    img[0, 0, 0] = 1e6  # a hot pixel does not wash out the rest
    view = display_image(img)
    assert view.shape == (40, 40) and view.min() == 0 and view[10, 5] == 1.0
    rgb = display_image(np.stack([img[0]] * 3))
    assert rgb.shape == (40, 40, 3)
    assert display_image(np.ones((1, 3, 4, 4))).shape == (4, 4)
