"""Leaked splits and shortcuts: audit names shared patients, `--resplit patient`, `--drop-duplicates`,
and a label that is a function of the view position is flagged by the metadata-only baseline."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from medlens.runs import RunDir, read_json

N_PATIENTS = 80  # 0-47 train, 48-63 val, 64-79 test; two images each
LEAKED = [f"p{i:03d}" for i in range(5)]  # their second image is in test
DUPLICATED = [f"p{i:03d}" for i in (10, 11, 12)]  # their first image is copied into test as dupN.png


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Pure-noise 16 px images; label abnormal exactly when view_position is AP; 5 patients leak
    from train into test; 3 training images are copied into test under other patients."""
    from PIL import Image

    root = tmp_path_factory.mktemp("leaky")
    rng = np.random.default_rng(0)
    rows, pixels = [], {}
    for p in range(N_PATIENTS):
        pid = f"p{p:03d}"
        split = "train" if p < 48 else "val" if p < 64 else "test"
        sex, age = rng.choice(["F", "M"]), int(rng.integers(20, 90))
        for k in range(2):
            view = "AP" if rng.random() < 0.5 else "PA"
            name = f"{pid}_{k}.png"
            pixels[name] = rng.integers(0, 256, (16, 16), dtype=np.uint8)
            Image.fromarray(pixels[name]).save(root / name)
            image_split = "test" if pid in LEAKED and k == 1 else split
            label = "abnormal" if view == "AP" else "normal"
            rows.append([name, label, pid, image_split, sex, age, view])
    for n, pid in enumerate(DUPLICATED):
        original = next(r for r in rows if r[0] == f"{pid}_0.png")
        Image.fromarray(pixels[original[0]]).save(root / f"dup{n}.png")
        rows.append([f"dup{n}.png", original[1], f"d{n}", "test", original[4], original[5], original[6]])
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "patient_id", "split", "sex", "age", "view_position"])
        writer.writerows(rows)
    return root / "manifest.csv"


def _compare(source: Path, out: Path, **options) -> Path:
    from medlens.study.compare import compare
    from medlens.study.suites import SuiteEntry

    compare(str(source), [SuiteEntry("elm")], out, seed=0, n_resamples=200, show_progress=False, threads=1, **options)
    return out


@pytest.fixture(scope="module")
def given_run(source, tmp_path_factory) -> Path:
    return _compare(source, tmp_path_factory.mktemp("runs") / "given", drop_duplicates="exact")


@pytest.fixture(scope="module")
def resplit_run(source, tmp_path_factory) -> Path:
    return _compare(source, tmp_path_factory.mktemp("runs") / "resplit", resplit="patient")


def test_negative_name_is_the_negative_class(source):
    from medlens.data.sources import open_source

    assert open_source(str(source)).class_names == ["normal", "abnormal"]


def test_audit_names_the_patients_shared_between_splits(cli, source):
    code, out, _ = cli("data", "audit", source)
    assert code == 0
    assert "Patients in more than one split: 5 (10 images)" in out
    for pid in LEAKED:
        assert re.search(rf"{pid}\s.*train 1, test 1\s.*2", out)
    assert "p005" not in out


def test_drop_duplicates_removes_the_test_copies_and_lists_them(given_run):
    run = RunDir(given_run)
    with open(run.root / "dropped.csv", newline="") as f:
        dropped = list(csv.DictReader(f))
    assert sorted(r["id"] for r in dropped) == ["dup0.png", "dup1.png", "dup2.png"]
    assert {(r["split"], r["kept_in"], r["kind"]) for r in dropped} == {("test", "train", "exact")}
    assert sorted(r["copy_of"] for r in dropped) == [f"{p}_0.png" for p in DUPLICATED]
    stored = read_json(run.splits)
    everything = [i for ids in stored["splits"].values() for i in ids]
    assert not any(i.startswith("dup") for i in everything) and len(everything) == 2 * N_PATIENTS
    assert stored["splitting"]["n_dropped"] == 3 and stored["splitting"]["method"] == "given"
    test_ids = [r.split(",")[0] for r in run.model("elm").predictions("test").read_text().splitlines()[1:]]
    assert len(test_ids) == len(stored["splits"]["test"]) and not any(i.startswith("dup") for i in test_ids)
    c = read_json(run.comparison)
    assert c["splitting"]["description"].startswith("split: given; 3 exact duplicate image(s)")
    assert c["splitting"]["patients_across_splits"] == 5 == c["splitting"]["patients_across_given_splits"]
    assert c["suite"]["drop_duplicates"] == "exact"


def test_patient_resplit_shares_no_patient(resplit_run, source):
    from medlens.data.sources import open_source

    run = RunDir(resplit_run)
    stored = read_json(run.splits)
    patient = {r.id: r.patient_id for r in open_source(str(source)).records}
    owner: dict[str, str] = {}
    for name, ids in stored["splits"].items():
        for i in ids:
            assert owner.setdefault(patient[i], name) == name, f"patient {patient[i]} in {owner[patient[i]]} and {name}"
    assert sum(len(v) for v in stored["splits"].values()) == 2 * N_PATIENTS + len(DUPLICATED)
    given_test = 2 * 16 + len(LEAKED) + len(DUPLICATED)  # the re-split keeps the given proportions
    assert abs(len(stored["splits"]["test"]) - given_test) <= 3
    made = stored["splitting"]
    assert made["method"] == "patient" and made["moved_patients"] >= len(LEAKED)
    assert not (run.root / "dropped.csv").exists()
    c = read_json(run.comparison)
    assert c["splitting"]["description"] == f"split: patient-level re-split, {made['moved_patients']} patients moved"
    assert c["splitting"]["patients_across_splits"] == 0 and c["splitting"]["patients_across_given_splits"] == 5


def test_a_run_with_other_splits_is_not_reused(resplit_run):
    from medlens.errors import MedlensError
    from medlens.training.config import TrainConfig
    from medlens.training.run import train

    config = TrainConfig(source="unused", model="elm", out=str(resplit_run), resplit="given", progress=False)
    with pytest.raises(MedlensError, match="made with --resplit patient, not given"):
        train(config, dataset=_open(resplit_run))


def _open(run_dir: Path):
    from medlens.data.sources import open_source

    return open_source(read_json(RunDir(run_dir).splits)["source"])


def test_bad_options_are_one_line_errors(cli, source, tmp_path):
    code, _, err = cli("compare", source, "--out", tmp_path / "r", "--resplit", "site")
    assert code == 2 and "--resplit must be one of given, patient, not 'site'" in err and "Traceback" not in err
    code, _, err = cli("compare", source, "--out", tmp_path / "r", "--drop-duplicates", "all")
    assert code == 2 and "--drop-duplicates must be one of exact, near" in err


def test_metadata_baseline_flags_a_label_that_is_the_view_position(given_run):
    c = read_json(RunDir(given_run).comparison)
    s = c["shortcuts"]
    assert s["available"] and [col["name"] for col in s["columns"]["used"]] == ["age", "sex", "view_position"]
    base = s["metadata_baseline"]
    assert base["fitted_on"] == "train" and base["threshold_chosen_on"] == "val"
    assert base["metrics"]["auc"]["value"] > 0.99 and base["metrics"]["auc"]["low"] > 0.95
    (vs,) = base["comparisons"]
    assert (
        vs["model"] == "elm"
        and vs["method"] == "delong"
        and vs["n"] == len(read_json(RunDir(given_run).splits)["splits"]["test"])
    )
    assert vs["ci_high"] < 0 and vs["verdict"] == "worse than metadata"  # pure noise images
    assert any("predict the label almost perfectly" in f for f in s["findings"])
    assert any(f.startswith("elm is worse than metadata alone") for f in s["findings"])
    view = next(e for e in s["attribute_prediction"]["models"]["elm"] if e["attribute"] == "view_position")
    assert 0.5 <= view["auc"] and view["n"] == vs["n"] and view["higher_for"] in ("AP", "PA")
    age = next(e for e in s["attribute_prediction"]["models"]["elm"] if e["attribute"] == "age")
    assert age["higher_for"].startswith("above the median") or age["versus"].startswith("above the median")
    assert -1 <= age["spearman"]["rho"] <= 1


def test_report_states_that_the_image_model_is_not_better_than_metadata(given_run, tmp_path):
    from tests.reporting.test_report import CHROMIUM, _section

    page = (RunDir(given_run).report).read_text()
    section = _section(page, "shortcuts")
    assert "split: given; 3 exact duplicate image(s)" in section and "dropped.csv" in section
    assert "elm is worse than metadata alone" in section and "worse than metadata</td>" in section
    assert "almost perfectly" in _section_findings(page)
    if CHROMIUM is None:
        pytest.skip("headless chromium is not installed")
    html = tmp_path / "report.html"
    shutil.copy(RunDir(given_run).report, html)
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path}/user", "--dump-dom", html.as_uri()],
        capture_output=True, text=True, timeout=90, check=False,
    ).stdout  # fmt: skip
    rendered = _section(dom, "shortcuts")
    assert "Metadata-only baseline" in rendered and rendered.count('class="flag"') >= 1
    assert "elm is worse than metadata alone" in rendered


def _section_findings(page: str) -> str:
    m = re.search(r'<div class="findings" id="findings">(.*?)</div>', page, re.S)
    assert m
    return m.group(1)


def test_a_score_that_carries_an_attribute_more_than_the_label_is_flagged():
    from medlens.data.sample import Dataset, Record, Task
    from medlens.study.shortcuts import attribute_prediction, findings

    rng = np.random.default_rng(1)
    n = 200
    view = rng.random(n) < 0.5
    records = [
        Record(
            id=f"i{k}",
            label=int(rng.random() < 0.5),
            patient_id=f"p{k}",
            origin="",
            attributes={"view": "AP" if v else "PA"},
        )
        for k, v in enumerate(view)
    ]
    ds = Dataset("fake", records, task=Task.BINARY, class_names=["normal", "abnormal"], dims=2)
    score = np.clip(0.5 + 0.2 * np.where(view, 1, -1) + rng.normal(0, 0.2, n), 0, 1)
    probs = np.stack([1 - score, score], axis=1)
    (entry,) = attribute_prediction(
        ds,
        [r.id for r in records],
        probs,
        [{"name": "view", "kind": "categorical"}],
        task="binary",
        class_names=ds.class_names,
    )
    assert 0.85 < entry["auc"] < 0.99 and entry["higher_for"] == "AP" and entry["versus"] == "PA"
    section = {"attribute_prediction": {"models": {"m": [entry]}}}
    (text,) = findings(section, {"m": 0.55}, "test")
    assert text.startswith("m's score separates view (AP vs PA) with AUC") and "(AUC 0.550)" in text
    assert findings(section, {"m": 0.99}, "test") == []
