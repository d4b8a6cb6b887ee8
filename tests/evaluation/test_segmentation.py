"""Segmentation metrics on hand-made masks with known answers, their intervals and paired tests."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from medlens.evaluation import segmentation as S

BINARY = ["background", "lesion"]


def _squares(offset: int) -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((40, 40), np.uint8)
    pred = np.zeros_like(truth)
    truth[10:20, 10:20] = 1
    pred[10:20, 10 + offset : 20 + offset] = 1
    return truth, pred


def _lines(shift: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """A one-voxel line spanning the image and the same line moved ``shift`` voxels along ``axis``."""
    truth = np.zeros((20, 20), np.uint8)
    pred = np.zeros_like(truth)
    if axis == 0:
        truth[5, :], pred[5 + shift, :] = 1, 1
    else:
        truth[:, 5], pred[:, 5 + shift] = 1, 1
    return truth, pred


def test_dice_of_two_offset_squares():
    truth, pred = _squares(5)  # 10 x 5 of 10 x 10 overlap
    assert S.overlap_metrics(truth, pred, 2)["dice"][0] == pytest.approx(0.5)
    assert S.overlap_metrics(truth, truth, 2)["dice"][0] == pytest.approx(1.0)


def test_hd95_in_mm_uses_the_spacing_of_each_axis():
    truth, pred = _lines(3, axis=0)
    assert S.overlap_metrics(truth, pred, 2, spacing=(2.0, 0.5))["hd95"][0] == pytest.approx(6.0)
    assert S.overlap_metrics(truth, pred, 2)["hd95"][0] == pytest.approx(3.0)  # no spacing: pixels
    truth, pred = _lines(3, axis=1)
    assert S.overlap_metrics(truth, pred, 2, spacing=(2.0, 0.5))["hd95"][0] == pytest.approx(1.5)


def test_nsd_counts_boundary_within_the_tolerance_in_mm():
    truth, pred = _lines(3, axis=0)  # every boundary point 6 mm from the other boundary
    assert S.overlap_metrics(truth, pred, 2, spacing=(2.0, 0.5), tolerance_mm=5.9)["nsd"][0] == 0.0
    assert S.overlap_metrics(truth, pred, 2, spacing=(2.0, 0.5), tolerance_mm=6.0)["nsd"][0] == 1.0
    assert S.overlap_metrics(truth, truth, 2, spacing=(2.0, 0.5))["nsd"][0] == 1.0


def test_empty_mask_conventions():
    empty = np.zeros((16, 16), np.uint8)
    some = empty.copy()
    some[4:8, 4:8] = 1
    both = S.overlap_metrics(empty, empty, 2, spacing=(1.0, 1.0))
    assert (both["dice"][0], both["hd95"][0], both["nsd"][0]) == (1.0, 0.0, 1.0)
    for truth, pred in ((some, empty), (empty, some)):
        one = S.overlap_metrics(truth, pred, 2, spacing=(1.0, 1.0))
        assert one["dice"][0] == 0.0 and one["nsd"][0] == 0.0 and math.isnan(one["hd95"][0])


def test_case_rows_one_row_per_foreground_class_3d():
    truth = np.zeros((6, 12, 12), np.uint8)
    truth[2:4, 2:6, 2:6] = 1
    pred = truth.copy()
    rows = S.case_rows("c1", truth, pred, ["background", "anterior", "posterior"], spacing=(3.0, 1.0, 1.0))
    assert [r["class"] for r in rows] == ["anterior", "posterior"]
    assert rows[0]["dice"] == 1.0 and rows[0]["truth_voxels"] == 32
    assert rows[1]["dice"] == 1.0 and rows[1]["hd95"] == 0.0  # absent from both: perfect, by convention
    assert math.isnan(rows[0]["f1"])  # pixel metrics only for two-class tasks with a field of view
    assert set(rows[0]) == set(S.CASE_COLUMNS)


def test_labels_outside_the_classes_and_shape_mismatch_are_refused():
    truth = np.zeros((8, 8), np.uint8)
    with pytest.raises(ValueError, match="outside 0..1"):
        S.overlap_metrics(truth, truth + 2, 2)
    with pytest.raises(ValueError, match="shape"):
        S.overlap_metrics(truth, np.zeros((8, 9), np.uint8), 2)


def test_vessel_metrics_count_inside_the_field_of_view_only():
    fov = np.zeros((4, 4), bool)
    fov[:, :2] = True
    truth = np.zeros((4, 4), np.uint8)
    pred = np.zeros_like(truth)
    truth[0, 0] = truth[1, 0] = 1  # inside: tp at (0,0), fn at (1,0), fp at (2,0), 5 tn
    pred[0, 0] = pred[2, 0] = 1
    truth[:, 2:] = 1 - pred[:, 2:]  # outside the FOV everything disagrees: must not count
    prob = np.where(truth == 1, 0.9, 0.1).astype(np.float16)
    prob[:, 2:] = 1 - prob[:, 2:]
    m = S.fov_metrics(truth, pred, fov, prob)
    assert m["sensitivity"] == pytest.approx(0.5)
    assert m["specificity"] == pytest.approx(5 / 6)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["f1"] == pytest.approx(0.5)
    assert m["auc"] == pytest.approx(1.0)
    rows = S.case_rows("r", truth, pred, ["background", "vessel"], fov=fov, foreground=prob)
    assert rows[0]["f1"] == pytest.approx(0.5) and rows[0]["auc"] == pytest.approx(1.0)
    assert S.metrics_present(rows) == ["dice", "hd95", "nsd", *S.FOV_METRICS]


def test_mean_ci_brackets_the_mean_and_counts_undefined_cases():
    rng = np.random.default_rng(0)
    values = list(rng.uniform(0.6, 0.9, 30)) + [float("nan")]
    ci = S.mean_ci(values, n_resamples=300, seed=0)
    assert ci["value"] == pytest.approx(np.nanmean(values))
    assert ci["low"] < ci["value"] < ci["high"]
    assert (ci["n"], ci["n_undefined"]) == (30, 1)
    assert math.isnan(S.mean_ci([float("nan")])["value"])


def test_summarize_gives_each_class_and_the_mean_over_classes():
    rows = []
    for i in range(6):
        rows += [
            {"id": f"c{i}", "class": "anterior", "dice": 0.8, "hd95": 1.0, "nsd": 0.9},
            {"id": f"c{i}", "class": "posterior", "dice": 0.6, "hd95": 3.0, "nsd": 0.7},
        ]
    s = S.summarize(rows, ["background", "anterior", "posterior"], ["dice", "hd95"], n_resamples=100)
    assert s["by_class"]["anterior"]["dice"]["value"] == pytest.approx(0.8)
    assert s["by_class"]["posterior"]["hd95"]["value"] == pytest.approx(3.0)
    assert s["mean_over_classes"]["dice"]["value"] == pytest.approx(0.7)


def test_wilcoxon_with_holm_on_known_data():
    n = 10
    base = np.linspace(0.5, 0.8, n)
    a = [{"id": f"c{i}", "class": "lesion", "dice": base[i] + 0.05, "hd95": 2.0} for i in range(n)]
    b = [{"id": f"c{i}", "class": "lesion", "dice": base[i], "hd95": 2.0} for i in range(n)]
    b.append({"id": "only-b", "class": "lesion", "dice": 0.0, "hd95": 9.0})  # not shared: not tested
    out = S.paired_tests({"unet": a, "rf": b}, BINARY, ["dice", "hd95"])
    dice, hd = out["tests"]
    exact = stats.wilcoxon(base + 0.05, base).pvalue
    assert dice["p_value"] == pytest.approx(exact) == pytest.approx(2 / 2**n)
    assert dice["n"] == n and dice["diff"] == pytest.approx(0.05)
    assert hd["p_value"] == 1.0  # identical values
    assert dice["p_holm"] == pytest.approx(2 * exact)  # Holm over the two tests
    assert hd["p_holm"] == 1.0
    assert dice["significant"] and dice["better"] == "unet"
    assert not hd["significant"] and hd["better"] is None


def test_lower_hd95_is_better():
    n = 8
    a = [{"id": f"c{i}", "class": "lesion", "hd95": 1.0 + i} for i in range(n)]
    b = [{"id": f"c{i}", "class": "lesion", "hd95": 3.0 + 2 * i} for i in range(n)]
    (t,) = S.paired_tests({"a": a, "b": b}, BINARY, ["hd95"])["tests"]
    assert t["significant"] and t["better"] == "a"
