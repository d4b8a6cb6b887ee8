"""Audit on planted faults: duplicates within/across splits, near duplicates, leaks, conflicts."""

from __future__ import annotations

import io
import json

import numpy as np
from rich.console import Console

from medlens.data.audit import audit_dataset, hamming_pairs, perceptual_hash, render_8bit, render_audit
from medlens.data.sample import Problem
from tests.data._fakes import add_sample, blob_image, make_classification


def _audit(ds, **kw):
    report = audit_dataset(ds, show_progress=False, **kw)
    json.dumps(report)
    return report


def test_clean_dataset_has_no_findings():
    report = _audit(make_classification((4, 4)))
    assert report["leakage_found"] is False
    assert report["exact_duplicates"]["n_groups"] == 0
    assert report["near_duplicates"]["n_groups"] == 0
    assert report["warnings"] == []


def test_exact_duplicate_across_splits_is_leakage():
    ds = make_classification((4, 4))
    add_sample(ds, "copy", ds.images["c0_000"], 0, "test")  # c0_000 is in train
    report = _audit(ds)
    exact = report["exact_duplicates"]
    assert exact["n_groups"] == 1 and exact["n_cross_split_groups"] == 1
    assert {m["id"] for m in exact["groups"][0]["members"]} == {"c0_000", "copy"}
    assert report["leakage_found"] is True
    assert report["cross_split"]["samples_with_copy_in_other_split"] == {"train": 1, "test": 1}
    assert report["near_duplicates"]["n_groups"] == 0  # an exact copy is not also a near one


def test_within_split_duplicate_is_not_leakage_but_conflict_is_reported():
    ds = make_classification((4, 4))
    add_sample(ds, "copy", ds.images["c0_000"], 1, "train")  # same pixels, other label, same split
    report = _audit(ds)
    assert report["exact_duplicates"]["n_groups"] == 1
    assert report["exact_duplicates"]["n_cross_split_groups"] == 0
    assert report["leakage_found"] is False
    assert len(report["conflicting_labels"]) == 1
    assert any("conflicting labels" in w for w in report["warnings"])


def test_near_duplicate_across_splits():
    ds = make_classification((4, 4))
    rng = np.random.default_rng(5)
    noisy = np.clip(ds.images["c1_000"] * 0.9 + 10 + rng.normal(0, 1.0, ds.images["c1_000"].shape), 0, 255)
    add_sample(ds, "noisy", noisy, 1, "test")
    report = _audit(ds)
    near = report["near_duplicates"]
    assert near["n_cross_split_groups"] == 1
    assert {m["id"] for m in near["groups"][0]["members"]} == {"c1_000", "noisy"}
    assert report["leakage_found"] is True


def test_patient_leakage():
    ds = make_classification((4, 4))
    add_sample(ds, "other_view", blob_image(77), 0, "test", patient="p_c0_000")
    report = _audit(ds)
    leaks = report["patient_leakage"]
    assert leaks["patients"] == [{"patient_id": "p_c0_000", "splits": {"train": 1, "test": 1}, "n_images": 2}]
    assert leaks["n_patients"] == 1 and leaks["n_images"] == 2
    assert report["leakage_found"] is True
    out = io.StringIO()
    render_audit(report, Console(file=out, width=120))
    assert "Patients in more than one split: 1 (2 images)" in out.getvalue()
    assert "p_c0_000" in out.getvalue() and "train 1, test 1" in out.getvalue()


def test_nih_patients_in_more_than_one_given_split(shared_data):
    """The shared NIH subset: exactly 30 patients appear in more than one given split, each named."""
    from medlens.data.audit import patient_leakage
    from medlens.data.sources import open_source
    from tests.conftest import need

    ds = open_source(str(need(shared_data / "nih_cxr_1000" / "metadata.csv")))
    leaks = patient_leakage(ds)
    assert leaks["n_patients"] == 30 == len(leaks["patients"])
    assert all(len(p["splits"]) > 1 and p["n_images"] == sum(p["splits"].values()) for p in leaks["patients"])
    by_patient: dict[str, set] = {}
    for r in ds.records:
        by_patient.setdefault(r.patient_id, set()).add(r.split)
    assert {p["patient_id"] for p in leaks["patients"]} == {p for p, s in by_patient.items() if len(s) > 1}


def test_unreadable_and_unpaired_and_blank():
    problems = [
        Problem("/x/labels/hippocampus_010.nii.gz", "label without an image"),
        Problem("/x/images/broken.nii.gz", "truncated gzip stream"),
    ]
    ds = make_classification((4, 4), bad=["c1_002"], problems=problems)
    add_sample(ds, "black", np.zeros((1, 32, 32)), 0, "train")
    report = _audit(ds)
    assert [p["path"] for p in report["unpaired"]] == ["/x/labels/hippocampus_010.nii.gz"]
    assert {p["path"] for p in report["unreadable"]} == {"/x/images/broken.nii.gz", "/fake/c1_002.png"}
    assert report["blank_images"] == ["black"]


def test_imbalance_warning():
    report = _audit(make_classification((8, 2), splits=None))
    assert report["class_imbalance"]["ratio"] == 4.0
    assert "imbalance" in report["class_imbalance"]["warning"]
    assert report["splits"] == {"unsplit": 10}
    assert _audit(make_classification((3, 2)))["class_imbalance"]["warning"] is None


def test_volume_and_rgb_renderings():
    vol = np.zeros((1, 5, 8, 8), np.float32)
    vol[0, 2, 2:6, 2:6] = 1
    assert render_8bit(vol).shape == (8, 8) and render_8bit(vol).max() == 255
    rgb = blob_image(3, channels=3)
    assert render_8bit(rgb).shape == (32, 32)
    assert render_8bit(np.ones((1, 4, 4))) is None


def test_hamming_pairs_matches_brute_force():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, size=40, dtype=np.uint64)
    flips = [base[i] ^ np.uint64(1 << int(b)) for i, b in enumerate(rng.integers(0, 64, size=40))]
    twice = [f ^ np.uint64(1 << 7) ^ np.uint64(1 << 50) for f in flips[:10]]
    hashes = np.array(list(base) + flips + twice, dtype=np.uint64)
    for t in (0, 1, 2, 4):
        got = {(i, j) for i, j, _ in hamming_pairs(hashes, t)}
        want = {
            (i, j)
            for i in range(len(hashes))
            for j in range(i + 1, len(hashes))
            if bin(int(hashes[i]) ^ int(hashes[j])).count("1") <= t
        }
        assert got == want


def test_phash_is_stable_under_brightness_change():
    img = render_8bit(blob_image(9))
    brighter = render_8bit(blob_image(9) * 0.5 + 40)
    assert bin(perceptual_hash(img) ^ perceptual_hash(brighter)).count("1") <= 2


def test_render_audit_mentions_leakage():
    ds = make_classification((4, 4))
    add_sample(ds, "copy", ds.images["c0_000"], 0, "test")
    buf = io.StringIO()
    render_audit(_audit(ds), Console(file=buf, width=120))
    text = buf.getvalue()
    assert "LEAKAGE" in text and "copy" in text
