"""The HTML report: self-contained, complete, honest about what is missing, readable in a browser."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from medlens.reporting import build_report
from medlens.reporting.sections import ci_range, num, p_text
from medlens.runs import read_json, sha256_file, write_json


def _section(page: str, sid: str) -> str:
    m = re.search(rf'<section id="{re.escape(sid)}">(.*?)</section>', page, re.S)
    assert m, f"no section {sid}"
    return m.group(1)


@pytest.fixture(scope="module")
def built(_template_run, tmp_path_factory):
    """The report of the two-model fake run, built once for the read-only checks."""
    run = tmp_path_factory.mktemp("built") / "run"
    shutil.copytree(_template_run, run)
    path = build_report(run)
    return run, path, path.read_text()


def test_report_is_one_self_contained_file(built):
    run, path, page = built
    assert path == run / "report.html"
    assert not re.search(r'(src|href)\s*=\s*["\']?\s*(https?:)?//', page, re.I)
    assert "<script" not in page.lower() and "<link" not in page.lower() and "@import" not in page
    assert "url(" not in page
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]+)"', page)
    assert len(srcs) >= 9  # balance, montage, ROC/PR, confusion, 2 reliability, risk-coverage, training, 3 Grad-CAM
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "Not available" not in page  # the full fake run has every piece


def test_summary_table_lists_each_model_with_its_confidence_intervals(built):
    run, _, page = built
    comp = read_json(run / "comparison.json")
    table = _section(page, "summary")
    for name in comp["order"]:
        row = re.search(rf"<tr>\s*<td><strong>{re.escape(name)}</strong>(.*?)</tr>", table, re.S)
        assert row, name
        test = comp["models"][name]["metrics"]["test"]
        for metric in ("auc", "acc", "sensitivity", "specificity"):
            assert num(test[metric]["value"]) in row.group(1)
            assert f"[{ci_range(test[metric])}]" in row.group(1)


def test_best_model_per_metric_is_marked(built):
    run, _, page = built
    comp = read_json(run / "comparison.json")
    table = _section(page, "summary")
    header = re.findall(r'<th class="num">([^<]+)</th>', table)
    rows = {
        m.group(1): re.findall(r'<td class="num( best)?">', m.group(2))
        for m in re.finditer(r"<td><strong>([^<]+)</strong>(.*?)</tr>", table, re.S)
    }
    labels = {"auc": "AUC", "acc": "Accuracy", "sensitivity": "Sensitivity", "specificity": "Specificity", "f1": "F1"}
    checked = 0
    for metric, label in labels.items():
        best = comp["best"]["by_metric"].get(metric)
        if not best:
            continue
        col = header.index(label)
        for name, cells in rows.items():
            assert (cells[col] == " best") == (name in best["tied"]), (metric, name)
        checked += 1
    assert checked >= 4
    assert table.count("★") == sum(c == " best" for cells in rows.values() for c in cells) + 1  # + the legend's star


def test_significance_matrix_shows_holm_adjusted_tests(built):
    run, _, page = built
    comp = read_json(run / "comparison.json")
    sec = _section(page, "significance")
    assert sec.count('<table class="matrix">') == 2  # AUC (DeLong) and accuracy (McNemar)
    assert "DeLong" in sec and "McNemar" in sec
    for t in comp["pairwise"]["tests"]:
        assert html.escape(p_text(t["p_holm"])) in sec
        assert f"{t['diff']:+.3f}" in sec and f"{-t['diff']:+.3f}" in sec  # both directions
    assert sec.count('class="diag"') == 2 * len(comp["order"])


def test_key_findings_compare_best_deep_and_classical_in_plain_words(built):
    run, _, page = built
    comp = read_json(run / "comparison.json")
    box = re.search(r'<div class="findings" id="findings">(.*?)</div>', page, re.S).group(1)
    auc = comp["models"]["cnn-small"]["metrics"]["test"]["auc"]
    assert f"The best deep model (cnn-small) reached AUC {num(auc['value'])} [{ci_range(auc)}]" in box
    assert "best classical model (svm)" in box and "Holm-adjusted" in box
    test = next(t for t in comp["pairwise"]["tests"] if t["metric"] == "auc")
    assert ("is significant" if test["significant"] else "is not significant") in box


def test_a_model_card_per_model(built):
    run, _, page = built
    cards = re.findall(r'<article class="card model-card" id="card-([^"]+)">(.*?)</article>', page, re.S)
    assert [c[0] for c in cards] == read_json(run / "comparison.json")["order"]
    for _, body in cards:
        for heading in ("Intended use", "Model", "Data", "Performance", "Limitations"):
            assert f"<h4>{heading}" in body
        assert "not a medical device" in body


def test_provenance_lists_the_manifest_hashes(built):
    run, _, page = built
    prov = _section(page, "provenance")
    manifest = read_json(run / "manifest.json")
    for rel, rec in manifest["files"].items():
        if rel == "report.html":
            continue
        assert rec["sha256"] in prov, rel
        assert f"<code>{rel}</code>" in prov
    assert "changed" not in prov and "missing" not in prov
    # the report recorded itself in the manifest, leaving the other entries alone
    assert manifest["files"]["report.html"]["sha256"] == sha256_file(run / "report.html")


def test_provenance_flags_a_file_changed_after_the_manifest(fake_run):
    (fake_run / "models" / "svm" / "model.joblib").write_bytes(b"tampered")
    prov = _section(build_report(fake_run).read_text(), "provenance")
    row = re.search(r"<code>models/svm/model.joblib</code>.*?</tr>", prov, re.S).group(0)
    assert "updated since the manifest" in row
    assert sha256_file(fake_run / "models" / "svm" / "model.joblib") in row
    # a rebuilt report never re-blesses a changed model file
    listed = read_json(fake_run / "manifest.json")["files"]["models/svm/model.joblib"]["sha256"]
    assert listed != sha256_file(fake_run / "models" / "svm" / "model.joblib")


def test_missing_pieces_say_why_instead_of_crashing(make_fake_run):
    run = make_fake_run(models=("cnn-small",), gallery=False, localization=False, audit=False)
    page = build_report(run).read_text()
    assert "Not available: only one model in the run" in _section(page, "significance")
    assert "no lesion masks in the source" in _section(page, "gradcam")
    audit = _section(page, "audit")
    assert "Not available: the source" in audit and "cannot be opened here" in audit
    assert "No sample montage: the source" in _section(page, "data")
    assert "The best model (cnn-small) reached AUC" in page
    assert 'id="card-cnn-small"' in page


def test_a_run_without_comparison_still_reports_training_metrics(make_fake_run):
    run = make_fake_run(comparison=False)
    page = build_report(run).read_text()
    assert "run `medlens evaluate RUN`" in _section(page, "roc")
    summary = _section(page, "summary")
    assert "svm" in summary and "cnn-small" in summary and "0.80" in summary
    assert "no confidence intervals" in summary
    assert "<img" in _section(page, "training")  # from training_log.csv


def test_audit_findings_and_run_split_leakage(fake_run):
    write_json(
        fake_run / "audit.json",
        {
            "n_samples": 400,
            "unreadable": [],
            "unpaired": [],
            "exact_duplicates": {
                "n_groups": 1,
                "n_images": 2,
                "n_cross_split_groups": 0,
                "groups": [{"members": [{"id": "r000"}, {"id": "t005"}]}],
            },
            "near_duplicates": {"n_groups": 0, "n_images": 0, "n_cross_split_groups": 0, "groups": []},
            "patient_leakage": {"n_patients": 0, "patients": []},
            "class_imbalance": None,
            "conflicting_labels": [],
            "blank_images": [],
            "leakage_found": False,
            "warnings": ["1 exact-duplicate group(s) within one split"],
        },
    )
    page = build_report(fake_run).read_text()
    audit = _section(page, "audit")
    assert "Exact duplicate groups" in audit and "1 exact-duplicate group(s) within one split" in audit
    assert "1 duplicate group(s) span this run" in audit  # r000 is train, t005 is test in splits.json
    assert "Caution — 1 duplicate group(s) span this run" in page


def test_cli_report_prints_the_path(fake_run):
    from medlens.cli.main import main

    (fake_run / "report.html").unlink(missing_ok=True)
    assert main(["report", str(fake_run), "--no-source"]) == 0
    assert (fake_run / "report.html").is_file()
    assert main(["report", str(fake_run / "nope")]) == 2


def test_bad_comparison_json_is_a_one_line_error(fake_run):
    from medlens.errors import MedlensError

    (fake_run / "comparison.json").write_text("{not json")
    with pytest.raises(MedlensError, match="not valid JSON"):
        build_report(fake_run)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="headless chromium is not installed")
def test_report_renders_in_headless_chromium(built):
    import numpy as np
    from PIL import Image

    _, path, _ = built
    with tempfile.TemporaryDirectory() as profile:
        shot = Path(profile) / "shot.png"
        subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}/user",
                f"--screenshot={shot}",
                "--window-size=1200,2400",
                path.as_uri(),
            ],
            capture_output=True,
            timeout=90,
            check=False,
        )
        assert shot.is_file(), "chromium wrote no screenshot"
        pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert pixels.shape[:2] == (2400, 1200)
    assert pixels.std() > 20  # not a blank page
    assert (pixels.mean(axis=2) < 100).mean() > 0.005  # dark text is drawn
    colours = np.unique((pixels[::4, ::4] // 16).reshape(-1, 3), axis=0)
    assert len(colours) > 50  # figures and tables, not a flat error page


def test_read_csv_columns(tmp_path):
    from medlens.reporting.sections import read_csv_columns

    log = tmp_path / "training_log.csv"
    log.write_text("epoch,val_auc\n0,0.5\n1,\n")
    assert read_csv_columns(log) == {"epoch": ["0", "1"], "val_auc": ["0.5", ""]}


def test_a_model_that_learned_nothing_is_flagged_in_the_key_findings(fake_run):
    comparison = read_json(fake_run / "comparison.json")
    comparison["models"]["svm"]["warnings"] = ["its test AUC 0.500 [0.431, 0.569] is indistinguishable from chance"]
    write_json(fake_run / "comparison.json", comparison)
    page = build_report(fake_run).read_text()
    box = re.search(r'<div class="findings" id="findings">(.*?)</div>', page, re.S).group(1)
    assert "Caution — svm: its test AUC 0.500 [0.431, 0.569] is indistinguishable from chance." in html.unescape(box)


def test_the_report_says_how_many_images_were_actually_used(fake_run):
    """--max-samples caps the splits: the report must not claim the whole source was used."""
    for name in ("svm", "cnn-small"):
        path = fake_run / "models" / name / "metrics.json"
        metrics = read_json(path)
        metrics["n"] = {"train": 100, "val": 40, "test": 60}
        write_json(path, metrics)
    page = build_report(fake_run).read_text()
    box = html.unescape(re.search(r'<div class="findings" id="findings">(.*?)</div>', page, re.S).group(1))
    assert "trained on 100 training and 40 validation images (a capped subset of the 400 DX images" in box
    assert "trained on 400" not in box
