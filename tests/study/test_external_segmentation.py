"""`medlens evaluate RUN --on SOURCE` for segmentation runs: per case and class, `--scale`, never retraining."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlens.errors import MedlensError
from medlens.evaluation import segmentation as S
from medlens.runs import RunDir, read_json, sha256_file
from medlens.study.external import evaluate_external
from medlens.study.external_segmentation import mean_difference, segment_scaled
from tests.conftest import run_medlens

MODEL = "pixel-forest"


def write_fundus(root: Path, *, n: int, seed: int, side: int = 32, upscale: int = 1) -> Path:
    """An HRF layout (images/, manual1/, mask/ with the field of view) of noisy bright discs."""
    for d in ("images", "manual1", "mask"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(seed)
    grid = np.indices((side, side)).astype(np.float32)
    fov = ((grid - side / 2 + 0.5) ** 2).sum(0) <= (side / 2 - 1) ** 2
    for i in range(n):
        r = rng.uniform(0.15, 0.25) * side
        centre = rng.uniform(r + 4, side - r - 4, size=2)
        mask = (((grid - centre[:, None, None]) ** 2).sum(0) <= r * r) & fov
        image = np.clip((rng.normal(0, 0.6, (side, side)) + 1.5 * mask) * 50 + 80, 0, 255) * fov
        files = {
            f"images/c{i:02d}.png": (image.astype(np.uint8), Image.BILINEAR),
            f"manual1/c{i:02d}.png": (mask.astype(np.uint8) * 255, Image.NEAREST),
            f"mask/c{i:02d}_mask.png": (fov.astype(np.uint8) * 255, Image.NEAREST),
        }
        for rel, (array, resample) in files.items():
            img = Image.fromarray(array)
            if upscale != 1:
                img = img.resize((side * upscale, side * upscale), resample)
            img.save(root / rel)
    return root


def _internal_files(run: Path) -> dict[str, str]:
    files = [
        *run.glob("models/*/segmentations_*/*.npz"),
        *run.glob("models/*/segmentation_cases_*.csv"),
        *run.glob("models/*/model.joblib"),
        *run.glob("models/*/metrics.json"),
    ]
    assert len(files) > 5
    return {p.relative_to(run).as_posix(): sha256_file(p) for p in files}


def _cases(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    """A pixel-forest run on site A, evaluated internally with 200 resamples."""
    from medlens.study.evaluate import evaluate
    from medlens.training.config import TrainConfig
    from medlens.training.run import train

    root = tmp_path_factory.mktemp("extseg")
    source = write_fundus(root / "site_a", n=16, seed=0)
    config = TrainConfig(
        source=str(source), out=str(root / "run"), model=MODEL, progress=False, threads=1, accelerator="cpu"
    )
    train(config)
    evaluate(root / "run", n_resamples=200, seed=0, report=False)
    return root / "run", root


@pytest.fixture(scope="module")
def external(seg_run):
    """A copy of the run validated on site B (another seed); the internal files' hashes before."""
    run_src, root = seg_run
    run = root / "ext_run"
    shutil.copytree(run_src, run)
    before = _internal_files(run)
    site_b = write_fundus(root / "site_b", n=8, seed=1)
    entry = evaluate_external(run, str(site_b), n_resamples=200, seed=0)
    return run, site_b, entry, before


def test_internal_side_equals_the_runs_own_segmentation_summary(external):
    run, _, entry, _ = external
    comparison = read_json(RunDir(run).comparison)
    assert comparison["external"]["site_b"] == entry and entry["task"] == "segmentation"
    internal = comparison["segmentation"]["models"][MODEL]
    m = entry["models"][MODEL]
    assert m["internal_split"] == "test" and m["n"]["internal"] == internal["n_cases"] and m["n"]["external"] == 8
    assert set(m["by_class"]) == {"vessel"} and m["mean_over_classes"] is None
    assert set(entry["metrics"]) == set(comparison["segmentation"]["metrics"]) >= {"dice", "hd95", "nsd", "f1", "auc"}
    for metric, cell in m["by_class"]["vessel"].items():
        assert cell["internal"] == internal["by_class"]["vessel"][metric], metric  # same resamples and seed


def test_external_figures_follow_from_the_written_case_rows(external):
    from medlens.data.sources import open_source
    from medlens.inference.bundle import Bundle

    run, site_b, entry, _ = external
    m = entry["models"][MODEL]
    path = run / m["cases_file"]
    assert path == run / "models" / MODEL / "external" / "site_b" / "segmentation_cases.csv"
    rows = _cases(path)
    assert len(rows) == 8 and {r["class"] for r in rows} == {"vessel"} and {r["source_split"] for r in rows} == {""}
    assert entry["classes"] == {"background": "background", "vessel": "vessel"} and entry["field_of_view"] is True
    cells = m["by_class"]["vessel"]
    for metric in ("dice", "nsd", "f1", "auc"):
        values = np.array([float(r[metric]) for r in rows])
        assert cells[metric]["external"]["value"] == pytest.approx(values.mean(), abs=1e-5), metric
        d, e, i = cells[metric]["difference"], cells[metric]["external"], cells[metric]["internal"]
        assert d["value"] == pytest.approx(e["value"] - i["value"], abs=1e-12)
        assert d["low"] <= d["value"] <= d["high"]
    assert 0.3 < cells["dice"]["external"]["value"] <= 1.0  # the model segments the other site, too
    # one case, recomputed on the one inference path: the row is its score at native resolution
    dataset, bundle = open_source(str(site_b)), Bundle.load(run, MODEL)
    sample = dataset.load(0)
    probs = bundle.segment(bundle.preprocess(sample.image))
    direct = S.case_rows(
        sample.id, sample.mask, probs.argmax(0), ["background", "vessel"], fov=sample.meta["fov"], foreground=probs[1]
    )[0]
    assert rows[0]["id"] == sample.id
    for metric in ("dice", "hd95", "f1", "auc", "truth_voxels"):
        assert float(rows[0][metric]) == pytest.approx(direct[metric], rel=1e-5), metric


def test_internal_files_are_never_touched_and_the_bundle_still_loads(external):
    from medlens.inference.bundle import Bundle

    run, _, _, before = external
    assert _internal_files(run) == before
    Bundle.load(run, MODEL)  # the external table is in the manifest: the bundle verifies


def test_a_rerun_of_the_internal_evaluation_keeps_the_external_entry(external, tmp_path):
    from medlens.study.evaluate import evaluate

    run, _, entry, _ = external
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert evaluate(copy, n_resamples=100, report=False)["external"]["site_b"] == entry


def test_scale_resizes_the_image_and_the_probabilities_back(external, tmp_path):
    run, _, entry, _ = external
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    big = write_fundus(tmp_path / "site_b_x2", n=8, seed=1, upscale=2)
    scaled = evaluate_external(copy, str(big), scale=0.5, n_resamples=200, report=False)
    assert scaled["scale"] == 0.5 and scaled["n_images"] == 8
    rows = _cases(copy / scaled["models"][MODEL]["cases_file"])
    small = _cases(run / entry["models"][MODEL]["cases_file"])
    # scored against the native (upscaled) masks: four times the pixels
    assert [int(r["truth_voxels"]) for r in rows] == pytest.approx([4 * int(r["truth_voxels"]) for r in small], rel=0.1)
    dice = lambda e: e["models"][MODEL]["by_class"]["vessel"]["dice"]["external"]["value"]  # noqa: E731
    assert dice(scaled) == pytest.approx(dice(entry), abs=0.05)


def test_segment_scaled_round_trip_with_a_transparent_model():
    class Echo:  # probabilities are the image itself: the round trip must give them back
        seen = None

        def preprocess(self, image, name="input"):
            return image

        def segment(self, x):
            Echo.seen = x.shape
            return np.concatenate([1 - x, x])

    grid = np.indices((40, 30)).astype(np.float32)
    image = (0.5 + 0.4 * np.sin(grid[0] / 6) * np.cos(grid[1] / 5))[None]
    probs = segment_scaled(Echo(), image, 2.0)
    assert Echo.seen == (1, 80, 60) and probs.shape == (2, 40, 30)
    np.testing.assert_allclose(probs[1, 1:-1, 1:-1], image[0, 1:-1, 1:-1], atol=0.005)
    np.testing.assert_allclose(probs[1], image[0], atol=0.03)  # the border row is interpolated towards its neighbour
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    volume = np.random.default_rng(0).random((1, 8, 10, 12)).astype(np.float32)
    assert segment_scaled(Echo(), volume, 0.5).shape == (2, 8, 10, 12) and Echo.seen == (1, 4, 5, 6)


def test_mean_difference_uses_independent_resamples():
    a, b = [0.9, 0.8, 0.85, 0.95, 0.7], [0.5, 0.6, 0.55]
    d = mean_difference(a, b, 500, 0)
    assert d["value"] == pytest.approx(np.mean(a) - np.mean(b)) and d["low"] < d["value"] < d["high"]
    assert d["low"] > 0  # clearly apart
    assert mean_difference([1.0, np.nan], [0.5], 200, 0) == {"value": 0.5, "low": None, "high": None}


def test_unknown_class_is_one_line_and_a_class_map_fixes_it(external, tmp_path):
    run, site_b, _, before = external
    other = tmp_path / "other"
    shutil.copytree(site_b / "images", other)
    rows = ["path,mask"] + [f"{p.name},{site_b}/manual1/{p.name}" for p in sorted(other.glob("*.png"))]
    (other / "cases.csv").write_text("\n".join(rows) + "\n")
    r = run_medlens("evaluate", run, "--on", other / "cases.csv", "--resamples", "100", "--no-report")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "is not a class of the model (background, vessel)" in lines[0], r.stderr
    mapping = tmp_path / "map.json"
    unknown = re.search(r"external class '([^']+)'", lines[0]).group(1)
    mapping.write_text(json.dumps({unknown: "vessel"}))
    entry = evaluate_external(run, str(other / "cases.csv"), class_map=mapping, n_resamples=100, report=False)
    assert entry["classes"][unknown] == "vessel" and entry["class_map"] == str(mapping)
    assert entry["field_of_view"] is False  # a CSV manifest has none: no F1 outside, F1 inside
    assert entry["models"][MODEL]["by_class"]["vessel"]["f1"]["external"]["value"] is None
    assert _internal_files(run) == before


def test_bad_inputs_are_one_line_errors(external, tmp_path, cli):
    run, site_b, _, _ = external
    with pytest.raises(MedlensError, match="--scale must be a positive number"):
        evaluate_external(run, str(site_b), scale=0.0, report=False)
    code, _, err = cli("evaluate", run, "--scale", "2")
    assert code == 2 and "--scale needs --on SOURCE" in err
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    info = copy / "models" / MODEL / "model.json"
    info.write_text(json.dumps({**json.loads(info.read_text()), "task": "classification"}))
    with pytest.raises(MedlensError, match="--scale is for segmentation runs"):
        evaluate_external(copy, str(site_b), scale=2.0, report=False)


def test_report_shows_a_table_per_class_and_it_renders_in_chromium(external, tmp_path):
    from medlens.reporting import build_report
    from tests.reporting.test_report import CHROMIUM, _section

    run, _, entry, _ = external
    page = build_report(run).read_text()
    section = _section(page, "external")
    assert 'href="#external"' in page and "site_b" in section and "<img" not in section  # no reliability diagram
    dice = entry["models"][MODEL]["by_class"]["vessel"]["dice"]
    assert f"{dice['external']['value']:.3f} [" in section and f"{dice['difference']['value']:+.3f} [" in section
    assert "HD95 (px)" in section and "AUC (in FOV)" in section and "segmentation_cases.csv" in section
    if CHROMIUM is None:
        pytest.skip("headless chromium is not installed")
    html = tmp_path / "section.html"
    html.write_text(f"<html><body>{section}</body></html>")
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path}/user", "--dump-dom",
         html.as_uri()],
        capture_output=True, text=True, timeout=90, check=False,
    ).stdout  # fmt: skip
    tables = re.findall(r'<table class="external-segmentation">(.*?)</table>', dom, re.S)
    n_sources = len(read_json(RunDir(run).comparison)["external"])  # other tests may add sources
    assert len(tables) == n_sources and all(len(re.findall(r"<tr", t)) == 1 + len(entry["metrics"]) for t in tables)
