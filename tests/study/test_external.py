"""`medlens evaluate RUN --on SOURCE`: external validation, never refitting, never touching internal predictions."""

from __future__ import annotations

import csv
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medlens.errors import MedlensError
from medlens.runs import RunDir, read_json, sha256_file
from medlens.study.external import evaluate_external, match_classes, read_class_map
from tests.conftest import run_medlens


def _phantom(path: Path, *, seed: int, class_names=("normal", "opacity"), n_per_class: int = 30) -> Path:
    """The binary phantom of the run's source, drawn with another seed (a different 'site')."""
    from medlens.data.sources.synthetic import CHEST2D, open_synthetic
    from medlens.data.synth_writer import write_dataset

    cfg = replace(CHEST2D, class_names=tuple(class_names), size=32, n_per_class=n_per_class)
    write_dataset(open_synthetic("chest2d", seed=seed, config=cfg), path, "npz", seed=seed, show_progress=False)
    return path


def _internal_files(run: Path) -> dict[str, str]:
    files = [*run.glob("models/*/predictions_*.csv"), *run.glob("models/*/decisions_*.csv")]
    assert files
    return {p.relative_to(run).as_posix(): sha256_file(p) for p in files}


@pytest.fixture(scope="module")
def external(tiny_run, tmp_path_factory):
    """A copy of the tiny run validated on another phantom site; the internal files' hashes before."""
    root = tmp_path_factory.mktemp("external")
    run = root / "run"
    shutil.copytree(tiny_run, run)
    before = _internal_files(run)
    source = _phantom(root / "site_b.npz", seed=1)
    entry = evaluate_external(run, str(source), n_resamples=200, seed=0)
    return run, source, entry, before


def test_internal_side_equals_the_runs_own_test_figures(external):
    run, _, entry, _ = external
    comparison = read_json(RunDir(run).comparison)
    assert comparison["external"]["site_b"] == entry
    assert set(entry["models"]) == set(comparison["order"]) == {"elm", "cnn-small"}
    for name, m in entry["models"].items():
        internal = comparison["models"][name]
        assert m["internal_split"] == "test" and m["n"]["internal"] == internal["n"]["test"]
        assert m["temperature"] == internal["temperature"]
        assert m["decision_threshold"] == internal["decision_threshold"] is not None
        ours = {k: v["internal"] for k, v in m["metrics"].items()}
        # comparison.json's CIs have 1000 resamples, these 200: the values agree exactly (next test: the CIs)
        theirs = internal["calibrated_metrics"]["test"]
        assert set(ours) == set(theirs) >= {"auc", "sensitivity", "specificity", "ece", "acc@threshold"}
        assert {k: v["value"] for k, v in ours.items()} == {k: v["value"] for k, v in theirs.items()}


def test_internal_intervals_equal_the_internal_evaluation_with_the_same_resamples(tiny_run, tmp_path):
    from medlens.study.evaluate import evaluate

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    comparison = evaluate(run, n_resamples=200, seed=0, n_localization=0, report=False)
    entry = evaluate_external(run, str(_phantom(tmp_path / "other.npz", seed=2, n_per_class=10)), n_resamples=200)
    for name, m in entry["models"].items():
        theirs = comparison["models"][name]["calibrated_metrics"]["test"]
        assert {k: v["internal"] for k, v in m["metrics"].items()} == theirs


def test_external_figures_follow_from_the_written_predictions(external):
    run, source, entry, _ = external
    assert entry["n_images"] == 60 and sum(entry["splits"].values()) == 60 and len(entry["splits"]) == 3
    assert entry["classes"] == {"normal": "normal", "opacity": "opacity"}
    for name, m in entry["models"].items():
        path = run / m["predictions_file"]
        assert path == run / "models" / name / "external" / "site_b" / "predictions.csv"
        rows = list(csv.DictReader(path.open()))
        assert len(rows) == 60 and {r["source_split"] for r in rows} == {"train", "val", "test"}
        y = np.array([int(r["label"]) for r in rows])
        p1 = np.array([float(r["prob_opacity"]) for r in rows])
        assert [r["source_label"] for r in rows] == [["normal", "opacity"][k] for k in y]
        assert m["metrics"]["auc"]["external"]["value"] == pytest.approx(roc_auc_score(y, p1), abs=1e-6)
        # the internal threshold, applied unchanged
        assert [int(r["decision"]) for r in rows] == (p1 > m["decision_threshold"]).astype(int).tolist()
        sens = np.mean(p1[y == 1] > m["decision_threshold"])
        assert m["metrics"]["sensitivity"]["external"]["value"] == pytest.approx(sens, abs=1e-6)
        for metric, cell in m["metrics"].items():
            d, e, i = cell["difference"], cell["external"], cell["internal"]
            if e["value"] is not None and i["value"] is not None:
                assert d["value"] == pytest.approx(e["value"] - i["value"], abs=1e-12), metric
                assert d["low"] <= d["value"] <= d["high"], metric
        ext_rel = m["reliability"]["external"]
        assert sum(ext_rel["counts"]) == 60 and ext_rel["ece"] == pytest.approx(
            m["metrics"]["ece"]["external"]["value"], abs=1e-9
        )
        assert set(m["abstention"]) == {"method", "threshold", "internal", "external"}


def test_internal_predictions_are_never_touched_and_the_bundle_still_loads(external):
    from medlens.inference.bundle import Bundle

    run, _, _, before = external
    assert _internal_files(run) == before
    for name in ("elm", "cnn-small"):
        Bundle.load(run, name)  # the external files are in the manifest: the bundle verifies


def test_cli_unknown_class_is_one_line_and_a_class_map_fixes_it(external, tmp_path):
    run, _, _, before = external
    renamed = _phantom(tmp_path / "site_c.npz", seed=3, class_names=(" Normal", "pneumonia"), n_per_class=10)
    r = run_medlens("evaluate", run, "--on", renamed, "--resamples", "100", "--no-report")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "'pneumonia'" in lines[0] and "normal, opacity" in lines[0] and "--class-map" in lines[0]

    mapping = tmp_path / "map.csv"
    mapping.write_text("external,model\npneumonia,Opacity\n")
    r = run_medlens("evaluate", run, "--on", renamed, "--class-map", mapping, "--resamples", "100", "--no-report")
    assert r.returncode == 0, r.stderr
    assert "external validation on site_c" in r.stdout and "AUC" in r.stdout
    external_section = read_json(RunDir(run).comparison)["external"]
    assert set(external_section) == {"site_b", "site_c"}  # sources accumulate
    assert external_section["site_c"]["classes"] == {" Normal": "normal", "pneumonia": "opacity"}
    created = external_section["site_c"]["created"]
    r = run_medlens("evaluate", run, "--on", renamed, "--class-map", mapping, "--resamples", "100", "--no-report")
    assert r.returncode == 0, r.stderr
    again = read_json(RunDir(run).comparison)["external"]
    assert set(again) == {"site_b", "site_c"} and again["site_c"]["created"] >= created  # replaced, not added
    assert _internal_files(run) == before


def test_a_rerun_of_the_internal_evaluation_keeps_the_external_results(external, tmp_path):
    from medlens.study.evaluate import evaluate

    run, _, entry, _ = external
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    comparison = evaluate(copy, n_resamples=100, n_localization=0, report=False)
    assert comparison["external"]["site_b"] == entry


def test_bad_inputs_are_one_line_errors(external, tmp_path):
    run, source, _, _ = external
    with pytest.raises(MedlensError, match="the run's own source"):
        evaluate_external(run, read_json(RunDir(run).comparison)["source"], report=False)
    unlabelled = tmp_path / "nolabel.csv"
    from PIL import Image

    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(tmp_path / "a.png")
    unlabelled.write_text("path\na.png\n")
    with pytest.raises(MedlensError, match="needs a labelled source"):
        evaluate_external(run, str(unlabelled), report=False)
    r = run_medlens("evaluate", run, "--class-map", tmp_path / "m.json")
    assert r.returncode == 2 and "--class-map needs --on" in r.stderr and "Traceback" not in r.stderr
    r = run_medlens("evaluate", run, "--on", source, "--by", "sex")
    assert r.returncode == 2 and "--by apply to the internal evaluation" in r.stderr and "Traceback" not in r.stderr


def test_a_run_claiming_segmentation_without_its_results_is_one_line(external, tmp_path):
    run, source, _, _ = external
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    info = copy / "models" / "elm" / "model.json"
    info.write_text(json.dumps({**json.loads(info.read_text()), "task": "segmentation"}))
    with pytest.raises(MedlensError, match="it needs masks"):  # see test_external_segmentation.py
        evaluate_external(copy, str(source), report=False)


def test_class_matching_and_class_map_files(tmp_path):
    assert match_classes(["NORMAL ", "Opacity"], ["normal", "opacity"], None) == {
        "NORMAL ": "normal",
        "Opacity": "opacity",
    }
    assert (
        match_classes(
            ["viral", "bacterial", "normal"], ["normal", "pneumonia"], {"viral": "pneumonia", "bacterial": "Pneumonia"}
        )["bacterial"]
        == "pneumonia"
    )
    with pytest.raises(MedlensError, match=r"'covid' is not a class of the model \(normal, pneumonia\)"):
        match_classes(["covid"], ["normal", "pneumonia"], None)
    with pytest.raises(MedlensError, match="maps 'covid' to 'virus'"):
        match_classes(["covid"], ["normal", "pneumonia"], {"covid": "virus"})
    good = tmp_path / "m.json"
    good.write_text('{" Covid ": "pneumonia"}')
    assert read_class_map(good) == {"covid": "pneumonia"}
    for name, text, message in (
        ("bad.json", "[1, 2]", "JSON object"),
        ("broken.json", "{", "not valid JSON"),
        ("nohead.csv", "covid,pneumonia\n", "header 'external,model'"),
        ("short.csv", "external,model\ncovid\n", "line 2"),
        ("m.txt", "x", ".json or .csv"),
    ):
        (tmp_path / name).write_text(text)
        with pytest.raises(MedlensError, match=re.escape(message)):
            read_class_map(tmp_path / name)


def test_report_has_the_external_section_and_its_figure_renders_in_chromium(external, tmp_path):
    from medlens.reporting import build_report
    from tests.reporting.test_report import CHROMIUM, _section

    run, _, entry, _ = external
    page = build_report(run).read_text()  # as `evaluate --on` rebuilt it (here: failures raise)
    section = _section(page, "external")
    assert "External validation" in page and 'href="#external"' in page
    assert "site_b" in section and "Internal test" in section and "External − internal" in section
    auc = entry["models"]["elm"]["metrics"]["auc"]
    assert f"{auc['external']['value']:.3f} [" in section and f"{auc['difference']['value']:+.3f} [" in section
    images = re.findall(r'<img src="(data:image/png;base64,[^"]+)"', section)
    n_sources = len(read_json(RunDir(run).comparison)["external"])  # other tests may add sources
    assert len(images) == 2 * n_sources  # a reliability diagram per model and source
    if CHROMIUM is None:
        pytest.skip("headless chromium is not installed")
    import subprocess

    from PIL import Image

    html = tmp_path / "figure.html"
    html.write_text(f'<html><body style="margin:0;background:#000"><img src="{images[0]}" width="600"></body></html>')
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path}/user", f"--screenshot={shot}",
         "--window-size=600,800", html.as_uri()],
        capture_output=True, timeout=90, check=False,
    )  # fmt: skip
    assert shot.is_file(), "chromium wrote no screenshot"
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    figure = pixels[:600]
    assert (figure.mean(axis=2) > 240).mean() > 0.3  # the figure's white background replaced the black page
    assert len(np.unique((figure[::4, ::4] // 16).reshape(-1, 3), axis=0)) > 10  # lines and text, not a broken icon
