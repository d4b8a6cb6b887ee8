"""load_arrays / load_masks: common size, normalization, channels, shape errors, bulk MedMNIST path."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.data.arrays import load_arrays, load_masks
from medlens.data.sample import Dataset, Record, Sample, Task
from medlens.data.sources.synthetic import open_synthetic
from medlens.data.transforms import default_preprocessing
from medlens.errors import MedlensError


class _Mixed(Dataset):
    def __init__(self, shapes):
        recs = [Record(f"s{i}", i % 2, f"p{i}", f"file{i}.png") for i in range(len(shapes))]
        self.shapes = shapes
        super().__init__("mixed", recs, task=Task.BINARY, class_names=["a", "b"], dims=2)

    def _load(self, r):
        i = int(r.id[1:])
        return Sample(r.id, np.full(self.shapes[i], i, np.float32), r.label, r.patient_id, r.origin)


def test_synthetic_arrays_resized_normalized_rgb():
    ds = open_synthetic("chest2d@40", n_per_class=2)
    ids = [r.id for r in ds.records]
    x, y = load_arrays(
        ds, ids, size=24, channels=3, preprocessing=default_preprocessing("DX", 2, 32), show_progress=False
    )
    assert x.shape == (6, 3, 24, 24) and x.dtype == np.float32
    assert np.allclose(x.min(axis=(1, 2, 3)), 0) and np.allclose(x.max(axis=(1, 2, 3)), 1, atol=1e-5)
    assert y.tolist() == ds.labels().tolist()
    masks = load_masks(ds, ids, 24)
    assert masks.shape == (6, 24, 24) and masks.dtype == np.uint8
    assert [bool(m.any()) for m in masks] == [lab != 0 for lab in y]


def test_mixed_shapes_without_size_name_the_sample():
    ds = _Mixed([(1, 8, 8), (1, 8, 8), (1, 9, 8)])
    with pytest.raises(MedlensError, match="file2.png"):
        load_arrays(ds, None, size=None, channels=None, preprocessing=None, show_progress=False)
    x, _ = load_arrays(ds, None, size=(6, 5), channels=None, preprocessing=None, show_progress=False)
    assert x.shape == (3, 1, 6, 5)
    assert load_masks(ds, None, 6) is None


def test_rgb_to_gray():
    ds = _Mixed([(3, 4, 4)])
    x, _ = load_arrays(ds, ["s0"], size=None, channels=1, preprocessing=None, show_progress=False)
    assert x.shape == (1, 1, 4, 4) and np.allclose(x, 0)


@pytest.mark.parametrize(
    "dims, shape, steps",
    [
        (2, (1, 37, 51), [{"name": "resize", "size": [28, 28], "mode": "area"}, {"name": "minmax"}]),
        (2, (3, 40, 40), [{"name": "resize", "size": [32, 32], "mode": "bilinear"}, {"name": "scale"}]),
        (2, (1, 24, 24), [{"name": "resize", "size": [24, 24], "mode": "area"}, {"name": "minmax"}]),
        (3, (1, 9, 20, 20), [{"name": "window", "low": -100, "high": 300}, {"name": "zscore"}]),
    ],
)
def test_one_image_batched_preprocessing_matches_the_per_sample_pipeline(dims, shape, steps, monkeypatch):
    """A prediction's image goes through the batched steps; training's per-sample MONAI pipeline gives the same input."""
    import medlens.data.transforms as transforms
    from medlens.inference.preprocess import OneImage

    batched = []
    real = transforms.preprocess_batch
    monkeypatch.setattr(transforms, "preprocess_batch", lambda *a, **k: batched.append(1) or real(*a, **k))
    image = np.random.default_rng(1).normal(100, 80, shape).astype(np.float32)
    one = OneImage(image, dims, "binary", 2, None)
    size = steps[0]["size"] if steps[0]["name"] == "resize" else None
    fast, _ = load_arrays(one, size=size, channels=1, preprocessing={"steps": steps}, show_progress=False)
    assert batched == [1]
    monkeypatch.setattr(OneImage, "stacked_images", lambda self: None)
    slow, _ = load_arrays(one, size=size, channels=1, preprocessing={"steps": steps}, show_progress=False)
    assert batched == [1] and fast.shape == slow.shape and fast.shape[1] == 1
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-6)


def test_bulk_path_matches_per_sample(tmp_path, monkeypatch):
    import medlens.data.arrays as arrays_mod
    from medlens.data.sources.medmnist import open_medmnist_npz

    rng = np.random.default_rng(0)
    arrays = {}
    for s, n in (("train", 6), ("val", 2), ("test", 3)):
        arrays[f"{s}_images"] = rng.integers(0, 256, (n, 10, 10), dtype=np.uint8)
        arrays[f"{s}_labels"] = rng.integers(0, 2, (n, 1)).astype(np.uint8)
    np.savez(tmp_path / "toy.npz", **arrays)
    ds = open_medmnist_npz(tmp_path / "toy.npz")
    assert hasattr(ds, "raw_arrays")
    ids = ["test/2", "train/0", "val/1"]
    pre = default_preprocessing(None, 2, 8)
    fast, y = load_arrays(ds, ids, size=8, channels=1, preprocessing=pre, show_progress=False)
    monkeypatch.setattr(arrays_mod, "_bulk_images", lambda dataset, records: None)
    slow, y2 = load_arrays(ds, ids, size=8, channels=1, preprocessing=pre, show_progress=False)
    monkeypatch.undo()
    np.testing.assert_allclose(fast, slow)
    assert y.tolist() == y2.tolist()
    assert y.tolist() == [
        int(arrays["test_labels"][2, 0]),
        int(arrays["train_labels"][0, 0]),
        int(arrays["val_labels"][1, 0]),
    ]
    raw, _ = load_arrays(ds, ["val/1"], size=None, channels=None, preprocessing=None, show_progress=False)
    np.testing.assert_array_equal(raw[0, 0], arrays["val_images"][1])
