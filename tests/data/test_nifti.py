"""NIfTI sources: single file, folder, images/labels pairs with unpaired files reported by name."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medlens.data.sample import Task
from medlens.data.sources.nifti import is_nifti_name, looks_like_nifti_folder, open_nifti
from medlens.errors import BadInputError, MedlensError
from tests.conftest import need


def _vol(path, shape=(4, 5, 6), dtype=np.int16, value=None, zooms=(1.0, 1.0, 2.5)):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.arange(np.prod(shape)).reshape(shape).astype(dtype) if value is None else np.full(shape, value, dtype)
    img = nib.Nifti1Image(data, np.diag([*zooms, 1.0]))
    nib.save(img, path)
    return data


def test_names():
    assert is_nifti_name("a.nii") and is_nifti_name("B.NII.GZ") and not is_nifti_name("a.gz")


def test_single_file(tmp_path):
    data = _vol(tmp_path / "ct.nii.gz")
    ds = open_nifti(tmp_path / "ct.nii.gz")
    assert len(ds) == 1 and ds.task is Task.NONE and ds.dims == 3
    s = ds.load(0)
    assert s.id == "ct" and s.image.shape == (1, 6, 5, 4) and s.spacing == (2.5, 1.0, 1.0)
    np.testing.assert_array_equal(s.image[0], data.transpose(2, 1, 0))
    assert s.affine.shape == (4, 4)


def test_pairs_and_unpaired_reported(tmp_path):
    for n in ("a", "b", "c"):
        _vol(tmp_path / "images" / f"{n}.nii.gz")
    (tmp_path / "labels").mkdir()
    lab = np.zeros((4, 5, 6), np.uint8)
    lab[1, 1, 1], lab[2, 2, 2] = 1, 2
    for n in ("a", "b", "d"):
        nib.save(nib.Nifti1Image(lab, np.eye(4)), tmp_path / "labels" / f"{n}.nii.gz")
    (tmp_path / "labels" / "readme.txt").write_text("x")
    (tmp_path / "images" / "._a.nii.gz").write_bytes(b"apple double")
    assert looks_like_nifti_folder(tmp_path)
    ds = open_nifti(tmp_path)
    assert ds.task is Task.SEGMENTATION and [r.id for r in ds.records] == ["a", "b"]
    assert ds.class_names == ["background", "1", "2"]
    text = "\n".join(map(str, ds.problems))
    assert "images/c.nii.gz: image without a label" in text
    assert "labels/d.nii.gz: label without an image" in text
    assert "readme.txt: not a NIfTI file" in text and "._a" not in text
    s = ds.load("a")
    assert s.mask.shape == s.image.shape[1:] == (6, 5, 4) and s.mask.dtype == np.uint8 and s.mask.max() == 2


def test_dataset_json_names_and_shape_mismatch(tmp_path):
    _vol(tmp_path / "imagesTr" / "x.nii.gz")
    _vol(tmp_path / "labelsTr" / "x.nii.gz", dtype=np.uint8, value=0)
    _vol(tmp_path / "imagesTr" / "y.nii.gz")
    _vol(tmp_path / "labelsTr" / "y.nii.gz", shape=(4, 5, 7), dtype=np.uint8, value=0)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "tumour"}}))
    with pytest.raises(BadInputError, match=r"y.nii.gz: label shape \(4, 5, 7\) differs"):
        open_nifti(tmp_path)
    ds = open_nifti(tmp_path, skip_bad=True)
    assert [r.id for r in ds.records] == ["x"] and ds.class_names == ["background", "tumour"]
    assert "label shape" in str(ds.problems[0])


def test_folder_of_files_and_errors(tmp_path):
    _vol(tmp_path / "a.nii")
    _vol(tmp_path / "b.nii.gz")
    ds = open_nifti(tmp_path)
    assert [r.id for r in ds.records] == ["a", "b"] and ds.task is Task.NONE
    (tmp_path / "e").mkdir()
    with pytest.raises(MedlensError, match="no NIfTI files"):
        open_nifti(tmp_path / "e")
    (tmp_path / "bad.nii.gz").write_bytes(b"junk")
    with pytest.raises(BadInputError, match="bad.nii.gz"):
        open_nifti(tmp_path / "bad.nii.gz")


def test_real_hippocampus(shared_data):
    root = need(shared_data / "hippocampus_msd")
    ds = open_nifti(root)
    assert len(ds) == 260 and ds.task is Task.SEGMENTATION and ds.dims == 3
    assert ds.class_names == ["background", "1", "2"]
    problems = sorted(str(p) for p in ds.problems)
    assert len(problems) == 3
    assert any("hippocampus_118" in p and "image without a label" in p for p in problems)
    assert any("hippocampus_010" in p and "label without an image" in p for p in problems)
    assert any("hippocampus_281" in p and "label without an image" in p for p in problems)
    s = ds.load("hippocampus_001")
    assert s.image.shape == (1, 35, 51, 35) and s.mask.shape == (35, 51, 35) and s.spacing == (1.0, 1.0, 1.0)
    assert set(np.unique(s.mask)) == {0, 1, 2}
    # the copy has no dataset.json: the user names the classes (MSD Task04's names)
    from medlens.data.sources import open_source

    named = open_source(f"{root}?labels=background,anterior,posterior")
    assert named.class_names == ["background", "anterior", "posterior"] and len(named) == 260


def test_real_nifti_ct_example(shared_data):
    root = need(shared_data / "nifti_ct_example")
    s = open_nifti(root / "example_ct_sm.nii.gz").load(0)
    assert s.image.shape == (1, 30, 101, 122) and s.spacing == (3.0, 3.0, 3.0)
    assert s.image.min() < -900 and s.image.max() > 500  # Hounsfield units
    src = nib.load(str(root / "example_ct_sm.nii.gz"))
    np.testing.assert_allclose(s.affine @ [7, 5, 3, 1], src.affine @ [3, 5, 7, 1])
    ds = open_nifti(root)
    assert [r.id for r in ds.records] == ["example_ct_sm", "example_ct_sm_T300_output"]


def _labelled(root, values_per_case, dataset_json=None):
    """images/ + labels/ with one case per entry of ``values_per_case`` (the label values it holds)."""
    for k, values in enumerate(values_per_case):
        _vol(root / "images" / f"c{k}.nii.gz")
        lab = np.zeros((4, 5, 6), np.uint8)
        for v in values:
            lab[v, 0, 0] = v
        (root / "labels").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(lab, np.diag([1.0, 1.0, 2.5, 1.0])), root / "labels" / f"c{k}.nii.gz")
    if dataset_json is not None:
        (root / "dataset.json").write_text(dataset_json if isinstance(dataset_json, str) else json.dumps(dataset_json))
    return root


def test_labels_option_names_the_label_values(tmp_path):
    from medlens.data.sources import open_source

    root = _labelled(tmp_path / "h", [(1, 2)] * 2)
    ds = open_source(f"{root}?labels=background,anterior,posterior")
    assert ds.class_names == ["background", "anterior", "posterior"] and ds.load("c0").mask.max() == 2
    assert (
        open_source(f"{root}?labels=background,anterior+hippocampus,posterior").class_names[1] == "anterior hippocampus"
    )
    for value, message in [
        (
            "background,anterior",
            r"2 class names given \(background, anterior\), but the label files hold the values 0..2",
        ),
        ("background,a,b,c", "4 class names given"),
        ("background", "two or more class names"),
        ("background,,b", "two or more class names"),
        ("background,a,a", "names a class twice"),
    ]:
        with pytest.raises(MedlensError, match=message):
            open_source(f"{root}?labels={value}")
    # a value that only later cases hold: every label file is read before more names are refused
    rare = _labelled(tmp_path / "rare", [(1,)] * 5 + [(1, 2, 3)])
    assert open_source(f"{rare}?labels=bg,a,b,c").class_names == ["bg", "a", "b", "c"]
    assert open_nifti(rare).class_names == ["background", "1"]  # without names: the first few labels decide
    # only an images/ + labels/ NIfTI folder takes it
    _vol(tmp_path / "plain" / "a.nii.gz")
    with pytest.raises(MedlensError, match=r"\?labels=...\) apply only to NIfTI folders"):
        open_source(f"{tmp_path / 'plain'}?labels=background,x")


def test_dataset_json_labels_in_msd_and_nnunet_v2_form(tmp_path):
    from medlens.data.sources import open_source

    msd = {"name": "Hippocampus", "labels": {"0": "background", "1": "Anterior", "2": "Posterior"}}
    root = _labelled(tmp_path / "msd", [(1, 2)], msd)
    assert open_nifti(root).class_names == ["background", "Anterior", "Posterior"]
    v2 = _labelled(tmp_path / "v2", [(1, 2)], {"labels": {"background": 0, "Anterior": 1, "Posterior": 2}})
    assert open_nifti(v2).class_names == ["background", "Anterior", "Posterior"]
    # given names replace dataset.json's, in the same number only
    assert open_source(f"{root}?labels=bg,ant,post").class_names == ["bg", "ant", "post"]
    with pytest.raises(MedlensError, match=r"dataset.json: 2 class names given, but dataset.json names 3"):
        open_source(f"{root}?labels=bg,ant")
    # no "labels" in dataset.json: the values decide; an unreadable one is a one-line error
    assert open_nifti(_labelled(tmp_path / "other", [(1, 2)], {"name": "x"})).class_names == ["background", "1", "2"]
    for k, bad in enumerate(
        ["{not json", json.dumps({"labels": ["background", "x"]}), json.dumps({"labels": {"a": "b"}})]
    ):
        with pytest.raises(MedlensError, match="dataset.json: cannot read the class names"):
            open_nifti(_labelled(tmp_path / f"bad{k}", [(1,)], bad))


def test_modality_comes_from_dataset_json_or_the_option(tmp_path):
    from medlens.data.sources import open_source

    plain = _labelled(tmp_path / "plain", [(1,)] * 2)
    assert open_source(str(plain)).modality is None  # NIfTI headers do not say
    assert open_source(f"{plain}?modality=mri").modality == "MR"
    assert open_source(f"{plain}?modality=CT&labels=background,lesion").modality == "CT"
    msd = _labelled(tmp_path / "msd", [(1,)] * 2, {"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "a"}})
    assert open_source(str(msd)).modality == "MR"
    several = _labelled(tmp_path / "several", [(1,)] * 2, {"modality": {"0": "FLAIR", "1": "CT"}})
    assert open_source(str(several)).modality is None
    with pytest.raises(MedlensError, match="DICOM modality code"):
        open_source(f"{plain}?modality=not a code")
