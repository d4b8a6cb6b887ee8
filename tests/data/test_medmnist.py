"""MedMNIST npz reader, catalog and medmnist:NAME[@SIZE] URIs."""

from __future__ import annotations

import copy
import hashlib
import re

import numpy as np
import pytest

from medlens.data.sample import Task
from medlens.data.sources import medmnist as mm
from medlens.data.sources import open_source
from medlens.errors import BadInputError, ChecksumError, MedlensError
from tests.conftest import need
from tests.data.test_download import serve, small_npz_bytes  # noqa: F401  (fixture)

README_MD5 = re.compile(r"^([0-9a-f]{32})\s+medmnist/(\S+)\.npz$", re.M)


def test_catalog_complete():
    cat = mm.load_catalog()["datasets"]
    assert len(cat) == 18
    for name, entry in cat.items():
        assert entry["task"] in mm.TASKS
        assert set(entry["n_samples"]) == {"train", "val", "test"}
        assert entry["files"].keys() == ({"28", "64"} if name.endswith("3d") else {"28", "64", "128", "224"})
        for f in entry["files"].values():
            assert re.fullmatch(r"[0-9a-f]{32}", f["md5"]) and f["url"].startswith("https://zenodo.org/")
    assert cat["pneumoniamnist"]["labels"] == ["normal", "pneumonia"]
    assert cat["chestmnist"]["task"] == "multi-label, binary-class" and len(cat["chestmnist"]["labels"]) == 14


def test_catalog_md5_matches_shared_readme(shared_data):
    found = README_MD5.findall((shared_data / "README.md").read_text())
    assert len(found) == 4
    for md5, stem in found:
        name, size = mm.infer_name(shared_data / "medmnist" / f"{stem}.npz")
        assert mm.load_catalog()["datasets"][name]["files"][str(size)]["md5"] == md5


def test_parse_spec_and_names():
    assert mm.parse_spec("pneumoniamnist@64") == ("pneumoniamnist", 64)
    assert mm.parse_spec("retinamnist") == ("retinamnist", 28)
    assert mm.file_name("adrenalmnist3d", 64) == "adrenalmnist3d_64.npz"
    assert mm.file_url("pneumoniamnist", 28, "http://h/") == "http://h/pneumoniamnist.npz"
    with pytest.raises(MedlensError, match="size must be one of 28, 64"):
        mm.parse_spec("adrenalmnist3d@224")
    with pytest.raises(MedlensError, match="unknown MedMNIST data set"):
        mm.parse_spec("nosuchmnist")


def _write_npz(path, images: dict, labels: dict):
    np.savez(path, **{f"{s}_images": a for s, a in images.items()}, **{f"{s}_labels": a for s, a in labels.items()})
    return path


def test_unknown_name_infers_task_and_layout(tmp_path):
    rng = np.random.default_rng(1)
    p = _write_npz(
        tmp_path / "mydata.npz",
        {
            "train": rng.integers(0, 255, (5, 8, 8, 3), dtype=np.uint8),
            "test": rng.integers(0, 255, (3, 8, 8, 3), dtype=np.uint8),
        },
        {"train": np.array([[0], [1], [2], [1], [0]], np.uint8), "test": np.array([[2], [1], [0]], np.uint8)},
    )
    ds = mm.open_medmnist_npz(p)
    assert ds.task is Task.MULTICLASS and ds.class_names == ["0", "1", "2"] and ds.dims == 2
    s = ds.load("test/0")
    assert s.image.shape == (3, 8, 8) and s.image.dtype == np.float32 and s.label == 2
    assert s.patient_id == "test/0" and s.origin == "mydata.npz#test/0"
    np.testing.assert_array_equal(s.image, np.moveaxis(np.load(p)["test_images"][0], -1, 0))


def test_multilabel_and_3d_inference(tmp_path):
    lab = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0]], np.uint8)
    p = _write_npz(tmp_path / "vol.npz", {"train": np.zeros((3, 4, 5, 6), np.uint8)}, {"train": lab})
    ds = mm.open_medmnist_npz(p)
    assert ds.task is Task.MULTILABEL and ds.dims == 3
    assert ds.records[0].label == (1, 0, 1)
    assert ds.load(0).image.shape == (1, 4, 5, 6)
    images, labels = ds.raw_arrays("train")
    assert images.shape == (3, 4, 5, 6) and labels.shape == (3, 3)


def test_bad_npz_files(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(BadInputError, match="junk.npz: corrupt"):
        mm.open_medmnist_npz(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(BadInputError, match="not a MedMNIST npz"):
        mm.open_medmnist_npz(tmp_path / "other.npz")
    p = _write_npz(
        tmp_path / "mismatch.npz", {"train": np.zeros((3, 4, 4), np.uint8)}, {"train": np.zeros((2, 1), np.uint8)}
    )
    with pytest.raises(BadInputError, match="3 images but 2 labels"):
        mm.open_medmnist_npz(p)


def test_large_files_are_memory_mapped(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(mm.MMAP_THRESHOLD_ENV, "0")
    rng = np.random.default_rng(2)
    imgs = rng.integers(0, 255, (4, 6, 6), dtype=np.uint8)
    p = _write_npz(tmp_path / "big.npz", {"train": imgs}, {"train": np.array([[0], [1], [1], [0]], np.uint8)})
    images, labels = mm.open_medmnist_npz(p).raw_arrays("train")
    assert isinstance(images, np.memmap)
    np.testing.assert_array_equal(images, imgs)
    assert labels.tolist() == [0, 1, 1, 0]
    assert len(list((tmp_path / "cache" / "npy").glob("big-*/train_images.npy"))) == 1


def _fake_catalog(monkeypatch, md5: str):
    cat = copy.deepcopy(mm.load_catalog())
    cat["datasets"]["pneumoniamnist"]["files"]["28"]["md5"] = md5
    monkeypatch.setattr(mm, "load_catalog", lambda: cat)


def test_uri_downloads_then_hits_cache(tmp_path, monkeypatch, serve):  # noqa: F811
    body = small_npz_bytes()
    server = serve({"pneumoniamnist.npz": body})
    monkeypatch.setenv("MEDLENS_CACHE", str(tmp_path))
    monkeypatch.setenv(mm.BASE_URL_ENV, server.url)
    _fake_catalog(monkeypatch, hashlib.md5(body).hexdigest())
    ds = open_source("medmnist:pneumoniamnist")
    assert len(ds) == 11 and ds.task is Task.BINARY and ds.class_names == ["normal", "pneumonia"]
    assert ds.uri == "medmnist:pneumoniamnist"
    assert (tmp_path / "medmnist" / "pneumoniamnist.npz").read_bytes() == body
    assert len(server.requests) == 1
    ds2 = mm.open_medmnist_uri("pneumoniamnist", show_progress=False)
    assert len(ds2) == 11 and len(server.requests) == 1  # served from the cache


def test_uri_checksum_mismatch_keeps_nothing(tmp_path, monkeypatch, serve):  # noqa: F811
    server = serve({"pneumoniamnist.npz": small_npz_bytes()})
    monkeypatch.setenv("MEDLENS_CACHE", str(tmp_path))
    _fake_catalog(monkeypatch, "f" * 32)
    with pytest.raises(ChecksumError, match="f" * 32):
        mm.open_medmnist_uri("pneumoniamnist", base_url=server.url, show_progress=False)
    assert list((tmp_path / "medmnist").iterdir()) == []


# -- real data -------------------------------------------------------------------------------------
def test_real_pneumoniamnist(shared_data):
    ds = mm.open_medmnist_npz(need(shared_data / "medmnist" / "pneumoniamnist.npz"))
    assert ds.task is Task.BINARY and ds.modality == "DX" and ds.dims == 2
    counts = {s: [0, 0] for s in ("train", "val", "test")}
    for r in ds.records:
        counts[r.split][r.label] += 1
    assert counts == {"train": [1214, 3494], "val": [135, 389], "test": [234, 390]}
    s = ds.load("val/3")
    assert s.image.shape == (1, 28, 28) and 0 <= s.image.min() and s.image.max() <= 255
    images, labels = ds.raw_arrays("train")
    assert images.shape == (4708, 28, 28) and images.dtype == np.uint8 and np.bincount(labels).tolist() == [1214, 3494]


def test_real_retinamnist_rgb(shared_data):
    ds = mm.open_medmnist_npz(need(shared_data / "medmnist" / "retinamnist.npz"))
    assert ds.task is Task.ORDINAL and len(ds.class_names) == 5
    img = ds.load("test/0").image
    assert img.shape == (3, 28, 28) and not np.array_equal(img[0], img[1])
    assert np.bincount(ds.raw_arrays("test")[1]).tolist() == [174, 46, 92, 68, 20]


def test_real_adrenal3d(shared_data):
    ds = mm.open_medmnist_npz(need(shared_data / "medmnist" / "adrenalmnist3d.npz"))
    assert ds.dims == 3 and ds.task is Task.BINARY and ds.class_names == ["normal", "hyperplasia"]
    assert ds.load(0).image.shape == (1, 28, 28, 28)
    assert np.bincount(ds.raw_arrays("train")[1]).tolist() == [929, 259]
    assert [sum(r.split == s for r in ds.records) for s in ("train", "val", "test")] == [1188, 98, 298]
