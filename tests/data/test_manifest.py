"""CSV manifests: labels, multi-label, splits, masks, errors naming the line, folder with manifest.csv."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medlens.data.sample import Task
from medlens.data.sources import _open_path
from medlens.data.sources.manifest import open_csv_manifest
from medlens.errors import BadInputError, MedlensError


def _img(path, value=0, shape=(5, 5)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)


def _csv(path, text):
    path.write_text(text)
    return path


def test_integer_labels_numeric_order_splits_patients(tmp_path):
    for i in range(4):
        _img(tmp_path / "img" / f"{i}.png", i)
    p = _csv(
        tmp_path / "m.csv",
        "path,label,patient_id,split\n"
        "img/0.png,10,p1,train\nimg/1.png,9,p1,Training\nimg/2.png,2,p2,valid\nimg/3.png,10,,\n",
    )
    ds = open_csv_manifest(p)
    assert ds.class_names == ["2", "9", "10"] and ds.task is Task.MULTICLASS
    assert [r.label for r in ds.records] == [2, 1, 0, 2]
    assert [r.split for r in ds.records] == ["train", "train", "val", None]
    assert [r.patient_id for r in ds.records] == ["p1", "p1", "p2", "3"]
    s = ds.load("img/1.png")
    assert s.image.shape == (1, 5, 5) and s.image[0, 0, 0] == 1 and s.label == 1


def test_text_labels_sorted_binary(tmp_path):
    _img(tmp_path / "a.png")
    _img(tmp_path / "b.png")
    ds = open_csv_manifest(_csv(tmp_path / "m.csv", "path,label\na.png,tumour\nb.png,normal\n"))
    assert ds.task is Task.BINARY and ds.class_names == ["normal", "tumour"]
    assert [r.label for r in ds.records] == [1, 0]


def test_multilabel(tmp_path):
    for n in "abc":
        _img(tmp_path / f"{n}.png")
    ds = open_csv_manifest(_csv(tmp_path / "m.csv", "path,label\na.png,edema|mass\nb.png,mass\nc.png,\n"))
    assert ds.task is Task.MULTILABEL and ds.class_names == ["edema", "mass"]
    assert [r.label for r in ds.records] == [(1, 1), (0, 1), (0, 0)]
    assert ds.labels().shape == (3, 2)


def test_mask_column_2d_and_3d(tmp_path):
    _img(tmp_path / "a.png", 7)
    m = np.zeros((5, 5), np.uint8)
    m[2, 2] = 255
    Image.fromarray(m).save(tmp_path / "a_mask.png")
    ds = open_csv_manifest(_csv(tmp_path / "m.csv", "path,label,mask\na.png,x,a_mask.png\n"))
    s = ds.load(0)
    assert s.mask.shape == (5, 5) and s.mask[2, 2] == 1 and s.mask.sum() == 1
    nib.save(nib.Nifti1Image(np.ones((3, 4, 5), np.int16), np.eye(4)), tmp_path / "v.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((3, 4, 5), np.uint8), np.eye(4)), tmp_path / "v_seg.nii.gz")
    ds3 = open_csv_manifest(_csv(tmp_path / "v.csv", "path,mask\nv.nii.gz,v_seg.nii.gz\n"))
    assert ds3.task is Task.SEGMENTATION and ds3.dims == 3
    s3 = ds3.load(0)
    assert s3.image.shape == (1, 5, 4, 3) and s3.mask.shape == (5, 4, 3)


def test_missing_file_names_line_and_path(tmp_path):
    _img(tmp_path / "a.png")
    p = _csv(tmp_path / "m.csv", "path,label\na.png,x\nmissing.png,y\n")
    with pytest.raises(BadInputError, match=r"m.csv: line 3: file not found: missing.png"):
        open_csv_manifest(p)
    ds = open_csv_manifest(p, skip_bad=True)
    assert len(ds) == 1 and str(ds.problems[0]).endswith("m.csv:3: line 3: file not found: missing.png")


def test_bad_manifests(tmp_path):
    _img(tmp_path / "a.png")
    with pytest.raises(BadInputError, match="no 'path' column"):
        open_csv_manifest(_csv(tmp_path / "1.csv", "file,label\na.png,x\n"))
    with pytest.raises(BadInputError, match="line 2: empty label"):
        open_csv_manifest(_csv(tmp_path / "2.csv", "path,label\na.png,\n"))
    with pytest.raises(BadInputError, match="unknown split 'holdout'"):
        open_csv_manifest(_csv(tmp_path / "3.csv", "path,label,split\na.png,x,holdout\n"))
    with pytest.raises(BadInputError, match="listed twice"):
        open_csv_manifest(_csv(tmp_path / "4.csv", "path,label\na.png,x\na.png,y\n"))
    with pytest.raises(BadInputError, match="column 'lable': did you mean 'label'"):
        open_csv_manifest(_csv(tmp_path / "5.csv", "path,lable\na.png,x\n"))
    with pytest.raises(BadInputError, match="appears twice"):
        open_csv_manifest(_csv(tmp_path / "6.csv", "path,label,age,age\na.png,x,3,4\n"))


def test_other_columns_are_attributes(tmp_path):
    _img(tmp_path / "a.png")
    _img(tmp_path / "b.png")
    ds = open_csv_manifest(_csv(tmp_path / "m.csv", "path,label,Sex,age,site\na.png,x,F,56,\nb.png,y,M,,north\n"))
    by_id = {r.id: r.attributes for r in ds.records}
    assert by_id == {"a.png": {"sex": "F", "age": "56"}, "b.png": {"sex": "M", "site": "north"}}  # empty: missing


def test_folder_with_manifest_opens_it(tmp_path):
    _img(tmp_path / "imgs" / "a.png")
    _img(tmp_path / "imgs" / "b.png")
    _csv(tmp_path / "manifest.csv", "path,label\nimgs/a.png,0\nimgs/b.png,1\n")
    ds = _open_path(tmp_path, skip_bad=False)
    assert len(ds) == 2 and ds.task is Task.BINARY and ds.name == tmp_path.name


def test_classes_txt_fixes_class_order(tmp_path):
    """classes.txt beside the manifest sets the class indices (first line: the negative class)."""
    import numpy as np
    from PIL import Image

    from medlens.data.sources.manifest import open_csv_manifest

    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / name)
    (tmp_path / "manifest.csv").write_text("path,label\na.png,normal\nb.png,nodule\n")
    assert open_csv_manifest(tmp_path / "manifest.csv").class_names == ["normal", "nodule"]  # negative name first
    (tmp_path / "classes.txt").write_text("nodule\nnormal\n")  # classes.txt wins over the negative name
    ds = open_csv_manifest(tmp_path / "manifest.csv")
    assert ds.class_names == ["nodule", "normal"]
    assert [r.label for r in ds.records] == [1, 0]
    (tmp_path / "classes.txt").write_text("normal\n")
    with pytest.raises(MedlensError, match="nodule"):
        open_csv_manifest(tmp_path / "manifest.csv")


def test_dicom_headers_give_attributes():
    from types import SimpleNamespace

    from medlens.data.attributes import attribute_key, dicom_age_years, dicom_attributes

    header = {"PatientSex": "F", "PatientAge": "056Y", "ViewPosition": "AP", "Manufacturer": " GE ", "Modality": "DX"}
    ds = SimpleNamespace(get=header.get)
    assert dicom_attributes(ds) == {"sex": "F", "age": "56", "view_position": "AP", "manufacturer": "GE"}
    assert [dicom_age_years(v) for v in ("018M", "003W", "7Y", "56", "")] == ["1.50", "0.06", "7", None, None]
    assert attribute_key("PatientSex") == "sex" and attribute_key("site") == "site"


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (("abnormal", "normal"), ["normal", "abnormal"]),
        (("Tumour", "Healthy"), ["Healthy", "Tumour"]),
        (("positive", "NEGATIVE"), ["NEGATIVE", "positive"]),
        (("effusion", "No Finding"), ["No Finding", "effusion"]),
        (("malignant", "benign"), ["benign", "malignant"]),
        (("cat", "dog"), ["cat", "dog"]),  # no negative name: sorted
        (("a", "b", "normal"), ["a", "b", "normal"]),  # not binary: sorted
    ],
)
def test_binary_negative_name_comes_first(tmp_path, labels, expected):
    """A conventional negative class name is index 0 in a manifest and in an image folder."""
    from medlens.data.sources.folder import open_image_folder

    rows = []
    for i, label in enumerate(labels * 2):
        _img(tmp_path / "m" / f"{i}.png", i)
        _img(tmp_path / "f" / label / f"{i}.png", i)
        rows.append(f"{i}.png,{label}")
    ds = open_csv_manifest(_csv(tmp_path / "m" / "manifest.csv", "path,label\n" + "\n".join(rows) + "\n"))
    assert ds.class_names == expected
    assert [ds.class_names[r.label] for r in ds.records] == list(labels * 2)
    assert open_image_folder(tmp_path / "f").class_names == expected
