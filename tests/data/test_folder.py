"""Image folders: layout detection, split aliases, channel policy, reporting, real brain tumour MRI."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from PIL import Image

from medlens.data.sample import Task
from medlens.data.sources.folder import looks_like_image_folder, open_image_folder, split_of
from medlens.errors import BadInputError, MedlensError
from tests.conftest import need


def _img(path, value=0, rgb=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.full((6, 6), value, np.uint8)
    if rgb:
        a = np.dstack([a, a // 2, 255 - a])
    Image.fromarray(a).save(path)


def test_split_aliases():
    assert [split_of(n) for n in ("Training", "VALID", "validation", "Testing", "test", "other")] == [
        "train",
        "val",
        "val",
        "test",
        "test",
        None,
    ]


def test_class_folders_without_splits(tmp_path):
    for i in range(3):
        _img(tmp_path / "cat" / f"c{i}.png", i)
    _img(tmp_path / "dog" / "d0.jpg", 50)
    (tmp_path / "dog" / ".DS_Store").write_text("x")
    assert looks_like_image_folder(tmp_path)
    ds = open_image_folder(tmp_path)
    assert ds.task is Task.BINARY and ds.class_names == ["cat", "dog"] and len(ds) == 4
    assert not ds.has_source_splits and ds.problems == [] and ds.channels == 1
    s = ds.load("dog/d0.jpg")
    assert s.label == 1 and s.patient_id == "d0" and s.image.shape == (1, 6, 6)


def test_split_layout_and_rgb_policy(tmp_path):
    _img(tmp_path / "Training" / "a" / "1.png", 1, rgb=True)
    _img(tmp_path / "Training" / "b" / "2.png", 2)
    _img(tmp_path / "Validation" / "a" / "3.png", 3)
    _img(tmp_path / "TEST" / "c" / "4.png", 4)
    ds = open_image_folder(tmp_path)
    assert ds.task is Task.MULTICLASS and ds.class_names == ["a", "b", "c"]
    assert Counter(r.split for r in ds.records) == {"train": 2, "val": 1, "test": 1}
    assert ds.channels == 3
    s = ds.load("TEST/c/4.png")
    assert s.image.shape == (3, 6, 6) and s.meta["converted"] == "gray->rgb"


def test_non_images_reported_not_ignored(tmp_path):
    _img(tmp_path / "a" / "1.png")
    _img(tmp_path / "b" / "2.png")
    (tmp_path / "a" / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    _img(tmp_path / "loose.png")
    with pytest.raises(BadInputError, match=r"notes.txt: not an image file in class folder 'a'"):
        open_image_folder(tmp_path)
    ds = open_image_folder(tmp_path, skip_bad=True)
    assert len(ds) == 2
    text = "\n".join(map(str, ds.problems))
    assert "notes.txt: not an image" in text and "empty: empty class folder" in text
    assert "loose.png: image outside any class folder" in text


def test_corrupt_image_fails_on_load(tmp_path):
    _img(tmp_path / "a" / "1.png")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "bad.png").write_bytes(b"nope")
    ds = open_image_folder(tmp_path)
    with pytest.raises(BadInputError, match="bad.png: not an image"):
        ds.load("b/bad.png")


def test_not_an_image_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "a.txt").write_text("t")
    assert not looks_like_image_folder(tmp_path)
    with pytest.raises(MedlensError):
        open_image_folder(tmp_path / "x")


def test_real_brain_tumor_mri(shared_data):
    ds = open_image_folder(need(shared_data / "brain_tumor_mri"))
    assert ds.class_names == ["glioma", "meningioma", "notumor", "pituitary"] and ds.task is Task.MULTICLASS
    counts = Counter((r.split, ds.class_names[r.label]) for r in ds.records)
    assert [counts["train", c] for c in ds.class_names] == [1321, 1339, 1591, 1457]
    assert [counts["test", c] for c in ds.class_names] == [300, 306, 405, 300]
    assert ds.problems == []
    s = ds.load(0)
    assert s.image.shape == (ds.channels, 224, 224) and s.image.dtype == np.float32
