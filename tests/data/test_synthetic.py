"""Synthetic phantoms: determinism, patient structure, masks, geometry, errors."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.data.sample import Task
from medlens.data.sources import open_source
from medlens.data.sources.synthetic import open_synthetic, parse_spec
from medlens.errors import MedlensError


def test_chest2d_structure_and_masks():
    ds = open_synthetic("chest2d@48", seed=3, n_per_class=6)
    assert ds.task is Task.MULTICLASS and ds.class_names == ["normal", "nodule", "opacity"]
    assert len(ds) == 18 and np.bincount(ds.labels()).tolist() == [6, 6, 6]
    assert not ds.has_source_splits
    per_patient = {}
    for r in ds.records:
        per_patient.setdefault(r.patient_id, set()).add(r.label)
    assert all(len(v) == 1 for v in per_patient.values())  # a patient keeps one class
    assert len(per_patient) < len(ds)  # some patients have several images
    for s in ds:
        assert s.image.shape == (1, 48, 48) and s.image.dtype == np.float32
        assert s.mask.shape == (48, 48) and s.modality == "DX"
        assert 0 <= s.image.min() and s.image.max() <= 255 and np.all(s.image == np.round(s.image))
        assert (s.mask.sum() > 0) == (s.label != 0)


def test_same_seed_same_images_other_seed_differs():
    a = open_synthetic("chest2d", seed=1, n_per_class=2, size=32)
    b = open_synthetic("chest2d", seed=1, n_per_class=2, size=32)
    c = open_synthetic("chest2d", seed=2, n_per_class=2, size=32)
    assert [r.id for r in a.records] == [r.id for r in b.records]
    np.testing.assert_array_equal(a.load(3).image, b.load(3).image)
    assert not np.array_equal(a.load(3).image, c.load(3).image)


def test_views_of_a_patient_share_the_lesion_but_differ():
    ds = open_synthetic("chest2d", seed=0, n_per_class=12, size=48)
    by_patient = {}
    for r in ds.records:
        by_patient.setdefault(r.patient_id, []).append(r.id)
    pid, ids = next((p, i) for p, i in by_patient.items() if len(i) > 1 and "nod" in p)
    s0, s1 = ds.load(ids[0]), ds.load(ids[1])
    assert s0.meta["lesions"] == s1.meta["lesions"]
    assert not np.array_equal(s0.image, s1.image)


def test_nodule_is_brighter_than_its_surroundings():
    ds = open_synthetic("nodule3d@24", seed=0, n_per_class=3)
    assert ds.task is Task.BINARY and ds.dims == 3
    s = next(s for s in ds if s.label == 1)
    assert s.image.shape == (1, 24, 24, 24) and s.mask.shape == (24, 24, 24) and s.modality == "CT"
    inside = s.image[0][s.mask > 0].mean()
    assert inside > -500  # solid-ish nodule in HU, lung is about -850


def test_affine_is_ras_and_matches_spacing():
    s = open_synthetic("nodule3d@16", n_per_class=1).load(0)
    sd, sh, sw = s.spacing
    assert np.allclose(s.affine[:3, :3], [[0, 0, -sw], [0, -sh, 0], [sd, 0, 0]])


def test_open_source_dispatches_synthetic():
    ds = open_source("synthetic:chest2d@32", seed=5)
    assert len(ds) == 3 * 170 and ds.load(0).image.shape == (1, 32, 32)


@pytest.mark.parametrize("spec", ["lungs", "chest2d@x", "chest2d@4"])
def test_bad_specs_are_one_line_errors(spec):
    with pytest.raises(MedlensError) as e:
        open_synthetic(spec)
    assert "synthetic:" in str(e.value) and "\n" not in str(e.value)


def test_parse_spec():
    assert parse_spec("chest2d@64") == ("chest2d", 64)
    assert parse_spec("nodule3d") == ("nodule3d", None)
