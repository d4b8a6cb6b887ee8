"""Fingerprint on small in-memory datasets: counts, balance, shapes, intensities, problems."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from rich.console import Console

from medlens.data.fingerprint import compute_fingerprint, render_fingerprint
from medlens.data.sample import Problem, Record, Task
from medlens.errors import BadInputError
from tests.data._fakes import FakeDataset, make_classification


def test_counts_balance_and_json():
    ds = make_classification((6, 2), splits=("train", "test"))
    fp = compute_fingerprint(ds, show_progress=False)
    json.dumps(fp)  # JSON-able as is
    assert fp["n_samples"] == 8
    assert fp["splits"]["train"] == {"n": 4, "classes": {"class0": 3, "class1": 1}}
    assert fp["splits"]["test"]["n"] == 4
    assert fp["class_counts"] == {"class0": 6, "class1": 2}
    assert fp["class_balance"] == {"class0": 0.75, "class1": 0.25}
    assert fp["imbalance_ratio"] == 3.0
    assert fp["task"] == "binary" and fp["dims"] == 2
    assert fp["shapes"]["distinct"] == [{"shape": [1, 32, 32], "count": 8}]
    assert fp["channels"] == {"1": 8}


def test_unsplit_source():
    fp = compute_fingerprint(make_classification((3, 3), splits=None), show_progress=False)
    assert list(fp["splits"]) == ["unsplit"]
    assert fp["splits"]["unsplit"]["n"] == 6


def test_intensity_stats_are_a_seeded_sample():
    ds = make_classification((40, 40), splits=("train",))
    fp = compute_fingerprint(ds, show_progress=False, max_samples_for_stats=10)
    it = fp["intensity"]
    assert it["sampled"] is True and it["n_samples"] == 10 and it["of"] == 80
    assert ds.loads == 10  # only the sampled samples were read
    assert 0 <= it["min"] <= it["percentiles"]["50"] <= it["max"] <= 255
    assert fp["shapes"]["from"] == "sample"
    again = compute_fingerprint(ds, show_progress=False, max_samples_for_stats=10)
    assert again["intensity"] == it


def test_exact_stats_when_everything_is_read():
    images = {"a": np.zeros((1, 4, 4)), "b": np.full((1, 4, 4), 2.0)}
    records = [Record("a", 0, "pa", "a.png", "train"), Record("b", 1, "pb", "b.png", "train")]
    fp = compute_fingerprint(FakeDataset(images, records), show_progress=False)
    it = fp["intensity"]
    assert it["sampled"] is False
    assert (it["min"], it["max"], it["mean"], it["std"]) == (0.0, 2.0, 1.0, 1.0)


def test_unreadable_raises_unless_skip_bad():
    ds = make_classification((3, 3), bad=["c0_001"])
    with pytest.raises(BadInputError):
        compute_fingerprint(ds, show_progress=False)
    fp = compute_fingerprint(ds, skip_bad=True, show_progress=False)
    assert any(p["path"] == "/fake/c0_001.png" for p in fp["problems"])
    assert any(p.path == "/fake/c0_001.png" for p in ds.problems)  # reported by the CLI too
    assert fp["intensity"]["n_samples"] == 5


def test_skip_bad_leaves_unreadable_files_out_of_the_counts():
    """Issue 10: `data info --skip-bad` counted unreadable files in the class counts."""
    ds = make_classification((3, 3), bad=["c0_001"])
    fp = compute_fingerprint(ds, skip_bad=True, show_progress=False)
    assert fp["n_samples"] == 5 and fp["n_unreadable"] == 1
    assert list(fp["class_counts"].values()) == [2, 3]
    assert sum(sum(s["classes"].values()) for s in fp["splits"].values()) == 5


def test_reader_problems_and_volume_listing():
    images = {f"s{i}": np.random.default_rng(i).normal(size=(1, 6, 8, 8)) for i in range(3)}
    records = [Record(f"s{i}", None, "p1", f"/dicom/s{i}", None) for i in range(3)]
    meta = {"s0": {"series_description": "T1post"}, "s1": {"series_description": "FLAIR"}}
    ds = FakeDataset(
        images,
        records,
        task=Task.NONE,
        class_names=(),
        dims=3,
        spacing=(3.0, 0.5, 0.5),
        meta=meta,
        modality="MR",
        problems=[Problem("/dicom/junk.txt", "not a DICOM file")],
    )
    fp = compute_fingerprint(ds, show_progress=False)
    assert fp["class_counts"] is None and fp["splits"]["unsplit"]["classes"] == {}
    assert [s["series_description"] for s in fp["samples"]] == ["T1post", "FLAIR", None]
    assert fp["samples"][0]["shape"] == [1, 6, 8, 8]
    assert fp["samples"][0]["spacing"] == [3.0, 0.5, 0.5]
    assert fp["spacings"]["median"] == [3.0, 0.5, 0.5]
    assert fp["shapes"]["min"] == [6, 8, 8]
    assert fp["problems"] == [{"path": "/dicom/junk.txt", "problem": "not a DICOM file"}]


def test_segmentation_mask_fractions():
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[:1] = 1
    images = {"a": np.ones((1, 4, 4))}
    ds = FakeDataset(
        images,
        [Record("a", None, "p", "a.nii", None)],
        task=Task.SEGMENTATION,
        class_names=("background", "lesion"),
        masks={"a": mask},
    )
    fp = compute_fingerprint(ds, show_progress=False)
    assert fp["masks"]["class_fractions"] == {"0": 0.75, "1": 0.25}


def test_raw_arrays_give_every_shape():
    ds = make_classification((5, 5), splits=("train", "test"))
    raw = {"train": np.zeros((5, 32, 32), np.uint8), "test": np.zeros((5, 32, 32), np.uint8)}
    ds.raw_arrays = lambda split: (raw[split], np.zeros((5, 1)))
    fp = compute_fingerprint(ds, show_progress=False, max_samples_for_stats=4)
    assert fp["shapes"]["from"] == "all"
    assert fp["shapes"]["distinct"] == [{"shape": [1, 32, 32], "count": 10}]


def test_render_prints_tables():
    ds = make_classification((3, 2))
    buf = io.StringIO()
    render_fingerprint(compute_fingerprint(ds, show_progress=False), Console(file=buf, width=120))
    text = buf.getvalue()
    assert "class0" in text and "Counts per split and class" in text and "Intensities" in text
