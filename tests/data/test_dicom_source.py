"""medlens.data.sources.dicom: a DICOM file/folder as a Dataset (one sample per series), and the CLI on it."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medlens.data.sample import Task
from medlens.data.sources.dicom import looks_like_dicom_folder, open_dicom
from medlens.errors import BadInputError
from tests.conftest import need, run_medlens
from tests.data.test_dicom import stored_slice, write_series


def _dispatch_ready() -> bool:
    """open_source imports every reader; other engineers' readers may not exist yet."""
    names = ("folder", "manifest", "nifti")
    return all(importlib.util.find_spec(f"medlens.data.sources.{n}") for n in names) and bool(
        importlib.util.find_spec("medlens.data.fingerprint")
    )


needs_dispatch = pytest.mark.skipif(
    not _dispatch_ready(), reason="source dispatch / fingerprint modules not all present yet"
)


@pytest.fixture
def study(tmp_path):
    root = tmp_path / "study"
    write_series(root / "a", n=4, description="first")
    write_series(root / "b" / "deeper", n=3, rows=10, cols=12, description="second")
    (root / "README.txt").write_text("not dicom")
    (root / "a" / "sidecar.json").write_text("{}")
    return root


def test_one_sample_per_series_with_metadata(study):
    ds = open_dicom(study, skip_bad=False)
    assert len(ds) == 2 and ds.task is Task.NONE and ds.class_names == [] and ds.dims == 3
    assert ds.modality == "CT" and not ds.problems
    by_desc = {r.extra["series_description"]: r for r in ds.records}
    assert by_desc["first"].extra["shape"] == [4, 8, 6]
    assert by_desc["second"].extra["shape"] == [3, 10, 12]
    assert by_desc["first"].extra["spacing"] == pytest.approx([2.5, 0.8, 0.6])
    assert by_desc["first"].extra["modality"] == "CT" and len(by_desc["first"].extra["files"]) == 4
    rec = by_desc["first"]
    sample = ds.load(rec.id)
    assert sample.image.shape == (1, 4, 8, 6) and sample.image.dtype == np.float32
    np.testing.assert_array_equal(sample.image[0, 2], stored_slice(2, 8, 6) * 2.0 - 1024.0)
    assert sample.patient_id == "PAT-001" and sample.origin == rec.origin == rec.id
    assert sample.modality == "CT" and sample.meta["series_description"] == "first"
    assert sample.spacing == pytest.approx((2.5, 0.8, 0.6))
    assert sample.affine.shape == (4, 4) and sample.meta["affine_space"] == "RAS"
    assert len(sample.meta["sop_instance_uids"]) == 4


def test_single_file_gives_2d_sample(tmp_path):
    write_series(tmp_path / "s", n=1)
    ds = open_dicom(next((tmp_path / "s").iterdir()), skip_bad=False)
    assert ds.dims == 2 and len(ds) == 1
    sample = ds.load(0)
    assert sample.image.shape == (1, 8, 6) and sample.spacing == pytest.approx((0.8, 0.6))


def test_png_is_not_dicom(tmp_path):
    png = tmp_path / "chest.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(BadInputError, match="not a DICOM file") as e:
        open_dicom(png, skip_bad=False)
    assert e.value.path == str(png)


def test_unreadable_file_in_folder_is_error_or_problem(study):
    (study / "a" / "broken.dcm").write_bytes(b"garbage that is not DICOM" * 10)
    with pytest.raises(BadInputError, match="broken.dcm: not a DICOM file"):
        open_dicom(study, skip_bad=False)
    ds = open_dicom(study, skip_bad=True)
    assert len(ds) == 2
    assert [p.path.endswith("broken.dcm") for p in ds.problems] == [True]


def test_truncated_file_is_reported_with_skip_bad(study):
    victim = sorted((study / "a").glob("*.dcm"))[0]
    victim.write_bytes(victim.read_bytes()[:-30])
    with pytest.raises(BadInputError, match="truncated pixel data"):
        open_dicom(study, skip_bad=False)
    ds = open_dicom(study, skip_bad=True)
    assert len(ds.problems) == 1 and "truncated pixel data" in ds.problems[0].problem
    assert {r.extra["shape"][0] for r in ds.records} == {3}  # the other series; series a has a hole
    # (series a's remaining 3 slices still form a volume; the missing one is named in problems)


def test_looks_like_dicom_folder(study, tmp_path):
    assert looks_like_dicom_folder(study)
    other = tmp_path / "pngs"
    other.mkdir()
    (other / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (other / "notes.txt").write_text("hi")
    assert not looks_like_dicom_folder(other)


def test_tcia_study_lists_five_series(shared_data):
    root = need(shared_data / "dicom" / "tcia_brain_mr_study")
    ds = open_dicom(root, skip_bad=False)
    assert len(ds) == 5 and ds.modality == "MR" and not ds.problems
    shapes = sorted(tuple(r.extra["shape"]) for r in ds.records)
    assert shapes == [(22, 320, 280)] * 4 + [(40, 50, 34)]
    assert len({r.patient_id for r in ds.records}) == 1


# -- through the command line -----------------------------------------------------------------


@needs_dispatch
def test_cli_info_truncated_dicom_exits_2_with_one_line(tmp_path):
    write_series(tmp_path / "s", n=1)
    src = next((tmp_path / "s").iterdir())
    bad = tmp_path / "cut.dcm"
    bad.write_bytes(src.read_bytes()[:-30])
    proc = run_medlens("data", "info", bad)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "truncated pixel data" in lines[0] and "cut.dcm" in lines[0]
    assert "Traceback" not in proc.stderr


@needs_dispatch
def test_cli_info_json_lists_tcia_series(shared_data, tmp_path):
    root = need(shared_data / "dicom" / "tcia_brain_mr_study")
    proc = run_medlens("data", "info", root, "--json")
    assert proc.returncode == 0, proc.stderr
    fp = json.loads(proc.stdout)
    samples = fp["samples"]
    assert len(samples) == 5
    assert {s["series_description"] for s in samples} == {"T1post", "T1pre_reg", "FLAIR_reg", "T2_reg", "HippoCrop"}
    assert all(s["modality"] == "MR" for s in samples)
    assert sorted(s["shape"] for s in samples)[0] == [1, 22, 320, 280]


@needs_dispatch
def test_open_source_dispatches_dicom_folder_and_file(tmp_path, study):
    from medlens.data.sources import open_source

    assert len(open_source(str(study))) == 2
    single = next((study / "a").glob("*.dcm"))
    shutil.copy(single, tmp_path / "noext")
    assert open_source(str(tmp_path / "noext")).load(0).image.shape == (1, 8, 6)


def test_side_files_are_passed_over_and_listed(study):
    """Issue 10: a DICOM folder with thumbnails or a README beside the images failed unless --skip-bad."""
    from PIL import Image

    Image.new("L", (8, 8)).save(study / "a" / "thumb.jpg")
    (study / "README").write_text("scanned on the old console\n")
    (study / "b" / "preview").write_bytes((study / "a" / "thumb.jpg").read_bytes())
    ds = open_dicom(study, skip_bad=False)
    assert len(ds) == 2
    listed = sorted(Path(p.path).name for p in ds.problems)
    assert listed == ["README", "preview"] and all("side file" in p.problem for p in ds.problems)


def test_a_corrupt_dicom_file_is_still_an_error(study):
    victim = sorted((study / "a").glob("*.dcm"))[0]
    victim.write_bytes(victim.read_bytes()[:300])
    with pytest.raises(BadInputError):
        open_dicom(study, skip_bad=False)
