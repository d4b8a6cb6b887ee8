"""Subgroups (`evaluate --by`, `compare --by`) on a generated CSV manifest where one subgroup is harder.

The source: 16 px PNG images, a bright blob for the positive class; ``sex`` M has a third of its
labels flipped (harder), ``site`` is assigned at random (a balanced control), ``age`` is numeric
with some cells empty, ``scanner`` has one rare value (a too-small group). One logistic regression
is trained once per module.
"""

from __future__ import annotations

import csv
import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from medlens.runs import read_json
from tests.conftest import run_medlens

N = {"train": 240, "val": 160, "test": 400}
FLIP_M = 0.35
SIDE = 16


def _write_source(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    blob = np.exp(-((yy - SIDE / 2) ** 2 + (xx - SIDE / 2) ** 2) / (2 * 3.0**2))
    (root / "images").mkdir(parents=True)
    rows = []
    k = 0
    for split, n in N.items():
        for _ in range(n):
            truth = int(rng.random() < 0.5)
            sex = "M" if rng.random() < 0.5 else "F"
            image = 0.3 + 0.1 * rng.standard_normal((SIDE, SIDE)) + 0.3 * truth * blob
            label = 1 - truth if sex == "M" and rng.random() < FLIP_M else truth
            path = f"images/{k:04d}.png"
            Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(root / path)
            age = "" if rng.random() < 0.1 else str(int(rng.integers(20, 90)))
            scanner = "Y" if split == "test" and k % 50 == 0 else "X"
            site = "A" if rng.random() < 0.5 else "B"
            rows.append([path, "opacity" if label else "normal", split, sex, age, site, scanner])
            k += 1
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", "sex", "age", "site", "scanner"])
        w.writerows(rows)
    return manifest


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return _write_source(tmp_path_factory.mktemp("subgroup-data"))


@pytest.fixture(scope="module")
def trained(source, tmp_path_factory) -> Path:
    """A compared run (one logistic regression) evaluated with --by PatientSex (a DICOM keyword: sex)."""
    from medlens.study.compare import compare
    from medlens.study.suites import SuiteEntry

    out = tmp_path_factory.mktemp("subgroup-runs") / "run"
    compare(
        str(source),
        [SuiteEntry("logistic-regression")],
        out,
        seed=0,
        show_progress=False,
        threads=1,
        n_resamples=300,
        by=["PatientSex"],
    )
    return out


@pytest.fixture(scope="module")
def evaluated(trained, tmp_path_factory):
    """`medlens evaluate RUN --by sex,site,age,scanner --bands age=40,60,80` on a copy of the run,
    with the predictions' hashes before and after."""
    run = tmp_path_factory.mktemp("subgroup-eval") / "run"
    shutil.copytree(trained, run)
    before = _hashes(run)
    proc = run_medlens(
        "evaluate", run, "--by", "sex,site,age,scanner", "--bands", "age=40,60,80", "--resamples", "300", timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return run, proc, before, _hashes(run)


def _hashes(run: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.glob("models/*/predictions_*.csv"))}


def test_compare_by_a_dicom_keyword_finds_the_harder_subgroup(trained):
    section = read_json(trained / "comparison.json")["subgroups"]
    assert section["available"] and list(section["columns"]) == ["sex"]
    sex = section["columns"]["sex"]
    assert sex["kind"] == "categorical" and sex["order"] == ["F", "M"]
    stats = sex["models"]["logistic-regression"]
    assert stats["groups"]["F"]["auc"]["value"] > stats["groups"]["M"]["auc"]["value"] + 0.1
    gap = stats["gaps"]["auc"]
    assert (gap["high"], gap["low"]) == ("F", "M") and gap["ci_low"] > 0 and gap["significant"]
    assert gap["method"] == "delong_q" and gap["p_holm"] >= gap["p_value"]
    eo = stats["equalized_odds"]
    assert eo["gap"] == max(eo["tpr_gap"], eo["fpr_gap"]) > 0
    assert (trained / sex["figure"]).is_file()


def test_evaluate_by_several_columns(evaluated):
    run, proc, _, _ = evaluated
    columns = read_json(run / "comparison.json")["subgroups"]["columns"]
    assert list(columns) == ["sex", "site", "age", "scanner"]
    # the balanced control: no significant gap
    assert columns["site"]["significant"] == []
    assert "logistic-regression auc" in columns["sex"]["significant"]
    # numeric column banded at the given edges; missing ages are a group of their own
    age = columns["age"]
    assert age["kind"] == "numeric" and age["banding"] == "given" and age["edges"] == [40, 60, 80]
    assert age["order"] == ["<40", "40–<60", "60–<80", "≥80", "missing"]
    groups = age["models"]["logistic-regression"]["groups"]
    assert sum(g["n"] for g in groups.values()) == N["test"]
    # a rare value is listed as too small, with its n and no metrics
    rare = columns["scanner"]["models"]["logistic-regression"]["groups"]["Y"]
    assert rare["status"] == "too small" and rare["n"] == 8 and "auc" not in rare
    assert columns["scanner"]["models"]["logistic-regression"]["gaps"]["auc"] is None  # one scored group only
    # the CLI says which gap is significant
    assert re.search(r"subgroups: logistic-regression auc differs by sex: F \+0\.\d+ \[", proc.stdout)
    assert "differs by site" not in proc.stdout


def test_subgroup_sensitivity_counts_the_decisions_file(evaluated):
    """Group sensitivities are the share of positives decided positive in decisions_test.csv."""
    run, _, _, _ = evaluated
    stats = read_json(run / "comparison.json")["subgroups"]["columns"]["sex"]["models"]["logistic-regression"]
    with open(run / "models/logistic-regression/decisions_test.csv", newline="") as f:
        decided = {r["id"]: (int(r["label"]), int(r["decision"])) for r in csv.DictReader(f)}
    with open(Path(read_json(run / "comparison.json")["source"]), newline="") as f:
        sex = {r["path"]: r["sex"] for r in csv.DictReader(f)}
    for group in ("F", "M"):
        pos = [d for i, (y, d) in decided.items() if y == 1 and sex[i] == group]
        assert stats["groups"][group]["sensitivity"]["value"] == pytest.approx(sum(pos) / len(pos))


def test_evaluate_by_does_not_touch_the_predictions(evaluated):
    _, _, before, after = evaluated
    assert before and before == after


def test_quartile_bands_by_default(trained, tmp_path):
    from medlens.study.evaluate import evaluate

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    comparison = evaluate(run, by=["age"], n_resamples=100, report=False, min_group=10)
    age = comparison["subgroups"]["columns"]["age"]
    assert age["banding"] == "quartiles" and "quartiles of the test split" in age["banding_note"]
    assert len(age["edges"]) == 3 and age["order"][-1] == "missing"


def test_unknown_column_is_a_one_line_error(trained):
    proc = run_medlens("evaluate", trained, "--by", "sex,weight")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no attribute 'weight'" in lines[0]
    assert "age, scanner, sex, site" in lines[0]


def test_bad_bands_are_one_line_errors(trained):
    proc = run_medlens("evaluate", trained, "--by", "sex", "--bands", "sex=1,2")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "not numbers" in proc.stderr
    proc = run_medlens("evaluate", trained, "--by", "age", "--bands", "age=forty")
    assert proc.returncode == 2 and "expected COLUMN=EDGE" in proc.stderr


def test_data_info_shows_the_attributes(source):
    from medlens.data.fingerprint import compute_fingerprint
    from medlens.data.sources import open_source

    fp = compute_fingerprint(open_source(str(source)), show_progress=False)
    attrs = fp["attributes"]
    assert set(attrs) == {"sex", "age", "site", "scanner"}
    assert sum(attrs["sex"]["counts"].values()) == sum(N.values()) and attrs["sex"]["n_missing"] == 0
    assert attrs["age"]["numeric"]["min"] >= 20 and attrs["age"]["numeric"]["max"] < 90
    assert attrs["age"]["n_missing"] > 0
    proc = run_medlens("data", "info", source)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"age\s+│\s+min 2\d, median \d+(\.\d+)?, max 8\d", proc.stdout), proc.stdout


def test_report_has_the_subgroup_section(evaluated):
    run, _, _, _ = evaluated
    page = (run / "report.html").read_text()
    section = re.search(r'<section id="subgroups">(.*?)</section>', page, re.S)
    assert section, "no subgroups section"
    body = section.group(1)
    assert body.count('class="forest-plot"') == 4
    assert "too small" in body and "significant" in body
    assert "By age" in body and "bands at the given edges" in body


def test_forest_plot_loads_in_headless_chromium(evaluated, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("system chromium / chromedriver not installed")
    from selenium.webdriver.chrome.service import Service

    run, _, _, _ = evaluated
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1100"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        browser.get((run / "report.html").as_uri())
        sizes = browser.execute_script(
            "return [...document.querySelectorAll('#subgroups figure.forest-plot img')]"
            ".map(i => [i.complete, i.naturalWidth, i.naturalHeight])"
        )
    finally:
        browser.quit()
    assert len(sizes) == 4
    assert all(complete and w > 400 and h > 100 for complete, w, h in sizes), sizes


def test_multiclass_runs_say_subgroups_need_a_binary_task():
    from medlens.study.subgroups import gap_lines, subgroups_section

    section, written = subgroups_section(None, None, ["sex"], None, "multiclass", {}, split="test")
    assert section == {"available": False, "reason": "subgroups need a binary task (this run is multiclass)"}
    assert written == [] and gap_lines({"subgroups": section}) == [f"subgroups: {section['reason']}"]


def test_compare_checks_the_columns_before_training(source, tmp_path):
    out = tmp_path / "run"
    proc = run_medlens("compare", source, "--suite", "logistic-regression", "--out", out, "--by", "ViewPosition")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no attribute 'ViewPosition'" in proc.stderr
    assert not (out / "models").exists()  # nothing was trained
