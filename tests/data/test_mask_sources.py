"""Masks from every reader: image + mask folders (CHASE_DB1, HRF), synthetic -seg, DICOM SEG; data info/audit."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medlens.data.sample import Task
from medlens.data.sources import open_source
from medlens.data.sources.maskfolder import derive_fov
from medlens.errors import BadInputError, MedlensError
from tests.conftest import need

SIZE = 32


def _fundus(seed: int = 0) -> np.ndarray:
    """A 32x32 RGB 'fundus': a bright disc (the field of view) on black, with a dark hole-free interior."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    disc = (yy - 15.5) ** 2 + (xx - 15.5) ** 2 < 13**2
    rgb = np.zeros((SIZE, SIZE, 3), np.uint8)
    rgb[disc] = (180, 90, 40)
    rgb[14:18, 14:18] = (60, 30, 10)  # a darker spot inside: still in the field of view
    rgb[..., 1] = np.clip(rgb[..., 1].astype(int) + seed, 0, 255)
    return rgb


def _vessels(seed: int = 0) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[8 + seed, 4:28] = 255
    mask[4:28, 20] = 255
    return mask


def _chase(root: Path, names=("Image_01L", "Image_01R", "Image_11L"), second=True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        Image.fromarray(_fundus(k)).save(root / f"{name}.png")  # lossless: exact FOV
        Image.fromarray(_vessels(k) > 0).save(root / f"{name}_1stHO.png")  # mode "1", like the real set
        if second:
            Image.fromarray(_vessels(k + 1)).save(root / f"{name}_2ndHO.png")  # 0/255
    return root


def _hrf(root: Path, stems=("01_h", "02_dr", "03_g"), without_vessels=("03_g",)) -> Path:
    for d in ("images", "manual1", "mask"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for k, stem in enumerate(stems):
        Image.fromarray(_fundus(k)).save(root / "images" / f"{stem}.jpg", quality=95)
        fov = np.zeros((SIZE, SIZE), np.uint8)
        fov[2:30, 3:29] = 255
        Image.fromarray(np.repeat(fov[..., None], 3, axis=2)).save(root / "mask" / f"{stem}_mask.tif")
        if stem not in without_vessels:
            Image.fromarray(_vessels(k)).save(root / "manual1" / f"{stem}.tif")
    return root


# -- CHASE_DB1 layout ---------------------------------------------------------------------------
def test_chase_layout_pairs_annotators_splits_and_derives_the_fov(tmp_path):
    root = _chase(tmp_path / "chase")
    ds = open_source(str(root))
    assert ds.task is Task.SEGMENTATION and ds.class_names == ["background", "vessel"] and ds.dims == 2
    assert [(r.id, r.split, r.patient_id) for r in ds.records] == [
        ("Image_01L", "train", "child_01"),
        ("Image_01R", "train", "child_01"),
        ("Image_11L", "test", "child_11"),
    ]
    s = ds.load("Image_01L")
    assert s.image.shape == (3, SIZE, SIZE) and s.mask.dtype == np.uint8
    np.testing.assert_array_equal(s.mask, _vessels(0) // 255)
    assert s.meta["fov_from"] == "derived from the image" and s.meta["fov"].dtype == bool
    yy, xx = np.mgrid[:SIZE, :SIZE]
    disc = (yy - 15.5) ** 2 + (xx - 15.5) ** 2 < 13**2
    np.testing.assert_array_equal(s.meta["fov"], disc)  # the dark spot inside is filled
    second = open_source(f"{root}?annotator=2").load("Image_01L")
    np.testing.assert_array_equal(second.mask, _vessels(1) // 255)
    assert second.meta["annotator"] == 2


def test_chase_names_outside_the_published_set_get_no_split_and_missing_masks_are_named(tmp_path):
    root = _chase(tmp_path / "c", names=("Image_01L", "Image_15L"), second=False)
    Image.fromarray(_fundus()).save(root / "Image_02L.jpg")  # no mask
    Image.fromarray(_vessels()).save(root / "Image_09R_1stHO.png")  # no image
    (root / "notes.txt").write_text("x")
    ds = open_source(str(root))
    assert [r.id for r in ds.records] == ["Image_01L", "Image_15L"] and not ds.has_source_splits
    problems = [str(p) for p in ds.problems]
    assert any("Image_02L.jpg: image without a mask" in p for p in problems)
    assert any("Image_09R_1stHO.png: mask without an image" in p for p in problems)
    assert any("notes.txt" in p for p in problems)
    with pytest.raises(MedlensError, match="no image with its vessel mask"):  # no _2ndHO files here
        open_source(f"{root}?annotator=2")


def test_source_options_are_checked(tmp_path):
    root = _chase(tmp_path / "c")
    with pytest.raises(MedlensError, match="unknown option"):
        open_source(f"{root}?reader=2")
    with pytest.raises(MedlensError, match="annotator must be 1 or 2"):
        open_source(f"{root}?annotator=3")
    (tmp_path / "classes" / "a").mkdir(parents=True)
    Image.fromarray(_fundus()).save(tmp_path / "classes" / "a" / "x.png")
    with pytest.raises(MedlensError, match="apply only to image \\+ mask folders"):
        open_source(f"{tmp_path / 'classes'}?annotator=2")


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda p: Image.fromarray(np.full((SIZE, SIZE), 128, np.uint8)).save(p), "found values 128"),
        (lambda p: Image.fromarray(np.zeros((SIZE, SIZE + 4), np.uint8)).save(p), "mask shape \\(32, 36\\) differs"),
        (lambda p: p.write_bytes(p.read_bytes()[:-30]), "corrupt image"),  # truncated
    ],
    ids=["values", "size", "corrupt"],
)
def test_bad_vessel_masks_are_one_line_errors_naming_the_file(tmp_path, cli, bad, message):
    root = _chase(tmp_path / "c", second=False)
    bad(root / "Image_01R_1stHO.png")
    with pytest.raises(BadInputError, match=f"Image_01R_1stHO.png: .*{message}"):
        open_source(str(root)).load("Image_01R")
    code, out, err = cli("data", "info", root, "--json")  # --json: no progress bar on stderr
    assert code == 2 and "Image_01R_1stHO.png" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


# -- HRF layout ---------------------------------------------------------------------------------
def test_hrf_layout_reads_the_fov_file_and_names_images_without_vessel_masks(tmp_path):
    root = _hrf(tmp_path / "hrf")
    ds = open_source(str(root))  # not taken for a folder of classes images/, manual1/, mask/
    assert ds.task is Task.SEGMENTATION and [r.id for r in ds.records] == ["01_h", "02_dr"]
    assert [str(p) for p in ds.problems] == [
        f"{root}/images/03_g.jpg: image without a mask (no vessel mask manual1/03_g.tif); not used"
    ]
    s = ds.load("02_dr")
    assert s.meta["fov_from"].endswith("mask/02_dr_mask.tif")
    assert s.meta["fov"].sum() == 28 * 26 and s.meta["fov"][2, 3] and not s.meta["fov"][1, 3]
    np.testing.assert_array_equal(s.mask, _vessels(1) // 255)
    with pytest.raises(MedlensError, match="one annotator"):
        open_source(f"{root}?annotator=2")


def test_derived_fov_of_a_black_image_is_everything():
    assert derive_fov(np.zeros((1, 4, 5), np.float32)).all()


# -- real data ----------------------------------------------------------------------------------
def test_real_chasedb1(shared_data):
    ds = open_source(str(need(shared_data / "chasedb1")))
    assert len(ds) == 28 and not ds.problems
    splits = [r.split for r in ds.records]
    assert splits.count("train") == 20 and splits.count("test") == 8
    assert {r.id for r in ds.records if r.split == "test"} == {f"Image_{n}{e}" for n in range(11, 15) for e in "LR"}
    s = ds.load("Image_01L")
    assert s.image.shape == (3, 960, 999) and set(np.unique(s.mask)) == {0, 1}
    assert 0.6 < s.meta["fov"].mean() < 0.8 and 0.04 < s.mask.mean() < 0.1


def test_real_hrf_names_the_three_images_without_vessel_masks(shared_data):
    ds = open_source(str(need(shared_data / "hrf")))
    assert len(ds) == 42
    named = sorted(Path(p.path).stem for p in ds.problems)
    assert named == ["11_h", "12_h", "13_h"] and all("without a mask" in p.problem for p in ds.problems)


# -- synthetic -seg -----------------------------------------------------------------------------
def test_synthetic_segmentation_variants_carry_per_finding_label_maps():
    ds = open_source("synthetic:chest2d-seg@32")
    assert ds.task is Task.SEGMENTATION and ds.class_names == ["background", "nodule", "opacity"]
    assert ds.uri == "synthetic:chest2d-seg@32"
    for label in (0, 1, 2):
        s = ds.load(next(r.id for r in ds.records if r.label == label))
        assert set(np.unique(s.mask)) == ({0} if label == 0 else {0, label})
    plain = open_source("synthetic:chest2d@32").load(ds.records[1].id)
    np.testing.assert_array_equal(plain.mask > 0, ds.load(1).mask > 0)  # the same lesions
    vol = open_source("synthetic:nodule3d-seg@16")
    assert vol.class_names == ["background", "nodule"] and vol.dims == 3
    with pytest.raises(MedlensError, match="nodule3d-seg"):
        open_source("synthetic:lung-seg")


def test_synth_refuses_to_write_a_seg_variant(cli, tmp_path):
    code, _, err = cli("data", "synth", "synthetic:chest2d-seg", tmp_path / "out")
    assert code == 2 and "without -seg" in err


# -- data info / audit on segmentation sources -----------------------------------------------------
def test_info_and_audit_report_label_values_foreground_and_problems(cli, tmp_path):
    root = _hrf(tmp_path / "hrf")
    code, out, _ = cli("data", "info", root, "--json")
    assert code == 0
    masks = json.loads(out)["masks"]
    assert masks["n"] == 2 and masks["label_values"] == {"0": 2, "1": 2}
    vessel = masks["classes"]["vessel"]
    fractions = [(_vessels(k) > 0).mean() for k in range(2)]
    assert vessel["cases"] == 2 and vessel["foreground_fraction"]["min"] == pytest.approx(min(fractions), abs=1e-6)
    assert vessel["foreground_fraction"]["mean"] == pytest.approx(np.mean(fractions), abs=1e-6)
    code, out, _ = cli("data", "audit", root, "--json")
    report = json.loads(out)
    assert code == 0 and report["masks"]["classes"]["vessel"]["cases"] == 2
    assert [Path(p["path"]).name for p in report["unpaired"]] == ["03_g.jpg"]
    code, out, _ = cli("data", "audit", root)
    assert "vessel" in out and "image without a mask" in out and "03_g" in out


def _nifti_pairs(root: Path, label_affine=None, label_values=(0, 1)):
    for d in ("images", "labels"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for k, stem in enumerate(("a", "b")):
        nib.save(nib.Nifti1Image(np.ones((6, 5, 4), np.float32) * k, np.eye(4)), root / "images" / f"{stem}.nii.gz")
        label = np.zeros((6, 5, 4), np.uint8)
        label[1:3, 1:3, 1:3] = label_values[1] if stem == "b" else 1
        affine = label_affine if (label_affine is not None and stem == "b") else np.eye(4)
        nib.save(nib.Nifti1Image(label, affine), root / "labels" / f"{stem}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "lesion"}}))
    return root


def test_nifti_spacing_or_affine_mismatch_is_reported_and_the_sample_kept(cli, tmp_path):
    shifted = np.eye(4)
    shifted[:3, 3] = (5.0, 0.0, 0.0)
    root = _nifti_pairs(tmp_path / "n", label_affine=shifted)
    code, out, _ = cli("data", "audit", root, "--json")
    report = json.loads(out)
    assert code == 0 and report["n_samples"] == 2
    (mismatch,) = report["masks"]["geometry_mismatches"]
    assert mismatch["id"] == "b" and "labels/b.nii.gz" in mismatch["path"] and "affine differs" in mismatch["problem"]
    assert any("geometry mismatch" in w for w in report["warnings"])
    code, out, _ = cli("data", "info", root, "--json")
    assert "up to 5 mm" in json.loads(out)["masks"]["geometry_mismatches"][0]["problem"]


def test_label_value_outside_the_declared_classes_is_an_error_naming_the_file(cli, tmp_path):
    root = _nifti_pairs(tmp_path / "n", label_values=(0, 3))
    code, _, err = cli("data", "info", root, "--json")
    assert code == 2 and "labels/b.nii.gz" in err and "label value(s) 3 outside the declared classes" in err
    assert len(err.strip().splitlines()) == 1


def test_audit_names_the_hippocampus_planted_faults(cli, shared_data):
    root = need(shared_data / "hippocampus_msd")
    code, out, _ = cli("data", "audit", root, "--json")
    report = json.loads(out)
    assert code == 0 and report["n_samples"] == 260
    named = {Path(p["path"]).name for p in report["unpaired"]}
    assert named == {"hippocampus_118.nii.gz", "hippocampus_010.nii.gz", "hippocampus_281.nii.gz"}
    masks = report["masks"]
    assert masks["n"] == 260 and masks["label_values"] == {"0": 260, "1": 260, "2": 260}
    anterior, posterior = masks["classes"].values()
    assert 0.01 < anterior["foreground_fraction"]["mean"] < 0.05 and posterior["cases"] == 260
