"""`medlens demo`, shrunk (32 px phantoms, 24 samples per split, 1 epoch): both studies run."""

from __future__ import annotations

import re
from pathlib import Path

from medlens.runs import RunDir, read_json


def test_demo_runs_the_quick_and_seg_quick_suites_and_prints_the_report_paths(cli, tmp_path):
    out = tmp_path / "demo"
    code, stdout, stderr = cli(
        "demo",
        "--out",
        out,
        "--source",
        "synthetic:chest2d@32",
        "--max-samples",
        "24",
        "--epochs",
        "1",
        "--no-progress",
    )
    assert code == 0, stderr
    run = RunDir(out)
    c = read_json(run.comparison)
    assert {"svm", "elm", "cnn-small"} <= set(c["order"]) and len(c["order"]) >= 4
    assert c["localization"]["available"] and c["localization"]["n_images"] > 0
    assert all(c["models"][m]["localization"]["n_scored"] > 0 for m in c["order"])
    gallery = c["figures"]["gradcam_gallery"]
    assert gallery and all((run.root / g["file"]).is_file() for g in gallery)
    assert "AUC" in stdout and "pairwise" in stdout and "demo finished" in stdout
    reports = [Path(m).resolve() for m in re.findall(r"report: (\S+)", stdout)]
    assert len(reports) == 2, stdout
    if run.report.is_file():
        assert reports[0] == run.report.resolve()

    # the segmentation study: U-Net and the pixel forest on the same capped splits, its report section
    seg = RunDir(tmp_path / "demo-seg")
    study = read_json(seg.study)
    assert study["suite"] == "seg-quick" and study["source"] == "synthetic:chest2d-seg@32"
    assert {m: o["status"] for m, o in study["outcomes"].items()} == {"unet": "trained", "pixel-forest": "trained"}
    s = read_json(seg.comparison)["segmentation"]
    assert set(s["models"]) == {"unet", "pixel-forest"}
    assert all(e["n_cases"] == len(read_json(seg.splits)["splits"]["test"]) for e in s["models"].values())
    assert s["pairwise"]["tests"] and all(t["method"] == "wilcoxon" for t in s["pairwise"]["tests"])
    assert reports[1] == seg.report.resolve() and "Segmentation results" in seg.report.read_text()
    assert "Dice [95%" in stdout and "Wilcoxon" in stdout

    # a second demo into the same folder replaces the first; another folder is never deleted
    other = tmp_path / "mine"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    code, _, stderr = cli("demo", "--out", other, "--source", "synthetic:chest2d@32", "--max-samples", "24")
    assert code == 2 and "not an earlier demo run" in stderr and (other / "keep.txt").is_file()
    # ... nor is the segmentation folder next to it, and nothing is trained before that check
    mine_seg = tmp_path / "fresh-seg"
    mine_seg.mkdir()
    (mine_seg / "keep.txt").write_text("x")
    code, _, stderr = cli("demo", "--out", tmp_path / "fresh", "--max-samples", "24")
    assert code == 2 and "fresh-seg" in stderr and "not an earlier demo run" in stderr
    assert (mine_seg / "keep.txt").is_file() and not (tmp_path / "fresh").exists()
