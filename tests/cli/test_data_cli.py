"""`medlens data info|audit`: the done-list checks on real data (skipped when absent) and on a
tiny generated image folder, plus one-line errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import need, run_medlens
from tests.data._fakes import blob_image


@pytest.fixture
def tiny_folder(tmp_path):
    """train/test class folders of 32 px PNGs; Testing/b/copy.png is Training/a/a0.png re-labelled."""
    root = tmp_path / "tiny"
    k = 0
    for split, n in (("Training", 3), ("Testing", 2)):
        for cls in ("a", "b"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                img = blob_image(500 + k)[0].astype(np.uint8)
                Image.fromarray(img).save(folder / f"{cls}{split[1]}{i}.png")
                k += 1
    (root / "Testing" / "b" / "copy.png").write_bytes((root / "Training" / "a" / "ar0.png").read_bytes())
    return root


# -- real data ----------------------------------------------------------------------------------


def test_info_pneumoniamnist_counts_and_balance(cli, shared_data):
    path = need(shared_data / "medmnist" / "pneumoniamnist.npz")
    code, out, _ = cli("data", "info", path, "--json")
    assert code == 0
    fp = json.loads(out)
    assert {k: v["n"] for k, v in fp["splits"].items()} == {"train": 4708, "val": 524, "test": 624}
    assert fp["splits"]["train"]["classes"] == {"normal": 1214, "pneumonia": 3494}
    assert fp["splits"]["test"]["classes"] == {"normal": 234, "pneumonia": 390}
    assert fp["class_balance"]["pneumonia"] == pytest.approx(4273 / 5856, abs=1e-5)
    assert fp["shapes"]["distinct"] == [{"shape": [1, 28, 28], "count": 5856}]
    assert fp["intensity"]["sampled"] is True and fp["intensity"]["n_samples"] == 2000


def test_info_dicom_study_lists_series(cli, shared_data):
    path = need(shared_data / "dicom" / "tcia_brain_mr_study")
    code, out, _ = cli("data", "info", path, "--json")
    assert code == 0
    fp = json.loads(out)
    assert fp["task"] == "none" and fp["n_samples"] == 5
    series = {s["series_description"]: s for s in fp["samples"]}
    assert len(series) == 5
    assert {"T1post", "FLAIR_reg", "T2_reg"} <= set(series)
    assert all(s["modality"] == "MR" for s in fp["samples"])
    t1 = series["T1post"]
    assert t1["shape"][1] == 22 and len(t1["shape"]) == 4
    assert t1["spacing"] == pytest.approx([6.5, 0.6875, 0.6875])


def test_info_hippocampus_names_unpaired_files(cli, shared_data):
    path = need(shared_data / "hippocampus_msd")
    code, out, err = cli("data", "info", path, "--json")
    assert code == 0
    for name in ("hippocampus_118", "hippocampus_010", "hippocampus_281"):
        assert name in err  # named on stderr too, for people reading the terminal
    fp = json.loads(out)
    assert fp["n_samples"] == 260
    problems = " ".join(p["path"] for p in fp["problems"])
    assert len(fp["problems"]) == 3
    assert all(n in problems for n in ("images/hippocampus_118", "labels/hippocampus_010", "labels/hippocampus_281"))
    assert set(fp["masks"]["class_fractions"]) == {"0", "1", "2"}


@pytest.mark.slow
def test_audit_brain_tumor_mri_finds_cross_split_duplicates(cli, shared_data):
    path = need(shared_data / "brain_tumor_mri")
    code, out, _ = cli("data", "audit", path, "--json", "--strict")
    assert code == 1  # --strict: leakage found
    report = json.loads(out)
    assert report["n_samples"] > 7000
    exact = report["exact_duplicates"]
    assert exact["n_cross_split_groups"] > 50
    group = exact["groups"][0]
    assert group["cross_split"] and {m["split"] for m in group["members"]} == {"train", "test"}
    assert report["leakage_found"] is True
    assert report["cross_split"]["samples_with_copy_in_other_split"]["test"] > 100


def test_info_montage_png_is_not_blank(cli, shared_data, tmp_path):
    path = need(shared_data / "medmnist" / "pneumoniamnist.npz")
    png = tmp_path / "montage.png"
    code, out, _ = cli("data", "info", path, "--json", "--montage", png)
    assert code == 0 and json.loads(out)["montage"] == str(png)
    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.float32)
    assert pixels.std() > 20


# -- generated data -----------------------------------------------------------------------------


def test_audit_strict_exit_codes_on_a_planted_copy(cli, tiny_folder):
    code, out, _ = cli("data", "audit", tiny_folder, "--json")
    assert code == 0
    report = json.loads(out)
    ids = {m["id"].split("/")[-1] for m in report["exact_duplicates"]["groups"][0]["members"]}
    assert ids == {"ar0.png", "copy.png"}
    assert report["conflicting_labels"]  # class a in Training, class b in Testing
    code, out, _ = cli("data", "audit", tiny_folder, "--strict")
    assert code == 1
    assert "LEAKAGE" in out


def test_info_and_montage_on_a_small_folder(cli, tiny_folder, tmp_path):
    png = tmp_path / "m.png"
    code, out, _ = cli("data", "info", tiny_folder, "--montage", png)
    assert code == 0
    assert "Counts per split and class" in out and "train" in out and "test" in out
    assert np.asarray(Image.open(png).convert("L"), dtype=np.float32).std() > 20


def test_bad_inputs_give_one_line_and_exit_2(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    for command, source in (("info", text), ("info", empty), ("info", "nosuchscheme:x"), ("audit", empty)):
        proc = run_medlens("data", command, source)
        assert proc.returncode == 2, (source, proc.stderr)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout


def test_audit_names_each_member_once(cli, tiny_folder):
    """Issue 10: the audit printed folder member ids twice over (test/a/test/a/...)."""
    code, out, _ = cli("data", "audit", tiny_folder)
    assert code == 0
    assert "Training/a/Training/a" not in out and "Testing/b/Testing/b" not in out
    assert "Testing/b/copy" in out.replace("\n", "")
