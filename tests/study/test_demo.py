"""`medlens demo`, shrunk (32 px phantoms, 24 samples per split, 1 epoch): the whole study runs."""

from __future__ import annotations

import re
from pathlib import Path

from medlens.runs import RunDir, read_json


def test_demo_runs_the_quick_suite_and_prints_the_report_path(cli, tmp_path):
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
    match = re.search(r"report: (\S+)", stdout)
    assert match, stdout
    if run.report.is_file():
        assert Path(match.group(1)).resolve() == run.report.resolve()

    # a second demo into the same folder replaces the first; another folder is never deleted
    other = tmp_path / "mine"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    code, _, stderr = cli("demo", "--out", other, "--source", "synthetic:chest2d@32", "--max-samples", "24")
    assert code == 2 and "not an earlier demo run" in stderr and (other / "keep.txt").is_file()
