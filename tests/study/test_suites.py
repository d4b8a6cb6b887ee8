"""Suites: which models each holds for 2D / 3D data, custom lists, and fitting a time budget."""

from __future__ import annotations

import pytest

from medlens.errors import MedlensError
from medlens.models.registry import all_models
from medlens.study.suites import SuiteEntry, default_suite, describe_suites, fit_budget, suite_entries


def _names(entries):
    return [e.model for e in entries]


def test_quick_suite_has_classical_and_deep_models_per_dims():
    two = _names(suite_entries("quick", 2, "multiclass"))
    assert {"svm", "elm", "cnn-small"} <= set(two) and len([m for m in two if m not in ("svm", "elm")]) >= 2
    three = _names(suite_entries("quick", 3, "binary"))
    assert {"svm", "elm", "resnet18-3d", "cnn-lstm"} == set(three)
    for e in suite_entries("quick", 2):
        if e.model not in ("svm", "elm"):
            assert 1 <= e.epochs <= 20


def test_full_suite_is_every_fitting_registered_model():
    full = set(_names(suite_entries("full", 3, "binary")))
    expected = {s.name for s in all_models() if 3 in s.dims and (not s.tasks or "binary" in s.tasks)}
    assert full == expected and "cnn-small" not in full  # cnn-small is 2D only


def test_model_lists_and_errors():
    assert _names(suite_entries("elm,cnn-small", 2)) == ["elm", "cnn-small"]
    assert _names(suite_entries([SuiteEntry("svm"), "elm"], 2)) == ["svm", "elm"]
    with pytest.raises(MedlensError, match="unknown suite"):
        suite_entries("tiny", 2)
    with pytest.raises(MedlensError, match="does not support 3D"):
        suite_entries("cnn-small,elm", 3)
    with pytest.raises(MedlensError, match="twice"):
        suite_entries("elm,elm", 2)


def test_describe_suites_lists_every_suite():
    rows = describe_suites()
    assert {r["suite"] for r in rows} == {"quick", "standard", "full", "seg-quick", "seg"}
    assert any(r["model"] == "resnet18-3d" and r["dims"] == 3 for r in rows)
    full_seg = {r["model"] for r in rows if r["suite"] == "full" and r["task"] == "segmentation"}
    assert full_seg == {s.name for s in all_models() if "segmentation" in s.tasks}
    assert not any(r["task"] == "classification" and r["model"] == "unet" for r in rows)


def test_segmentation_suites_and_the_default_suite_per_task():
    for dims in (2, 3):
        assert _names(suite_entries("seg-quick", dims, "segmentation")) == ["unet", "pixel-forest"]
        seg = _names(suite_entries("seg", dims, "segmentation"))
        assert "pixel-forest" in seg and {"unet", "dynunet"} <= set(seg)
        assert set(_names(suite_entries("full", dims, "segmentation"))) == {
            "unet",
            "dynunet",
            "segresnet",
            "pixel-forest",
        }
    assert default_suite("segmentation") == "seg-quick"
    assert default_suite("binary") == default_suite("multiclass") == "quick"
    with pytest.raises(MedlensError, match=r"suite 'standard' is for classification.*seg-quick, seg, full"):
        suite_entries("standard", 2, "segmentation")
    with pytest.raises(MedlensError, match=r"suite 'seg-quick' is for segmentation.*quick, standard, full"):
        suite_entries("seg-quick", 3, "multiclass")
    with pytest.raises(MedlensError, match="does not support 2D segmentation"):
        suite_entries("svm,unet", 2, "segmentation")


def test_budget_scales_deep_epochs_down_only():
    entries = [SuiteEntry("elm"), SuiteEntry("cnn-small", {"epochs": 20, "patience": 10})]
    kw = dict(
        n_train=1000,
        n_val=200,
        dims=2,
        in_channels=1,
        num_outputs=2,
        img_sizes={"cnn-small": 28},
        batch_sizes={"cnn-small": 64},
        throughput={"cnn-small": 100.0},
    )
    # one epoch ~ (1000 + 0.35 * 200) / 100 = 10.7 s; elm ~ 25 s
    tight, record = fit_budget(entries, 1.0, **kw)  # 48 s usable -> 23 s for the CNN -> 2 epochs
    assert tight[0] == entries[0] and tight[1].settings["epochs"] == 2 and tight[1].settings["patience"] == 2
    assert record["models"]["cnn-small"]["epochs"] == 2 and 0 < record["epoch_scale"] < 1
    roomy, record = fit_budget(entries, 60.0, **kw)
    assert roomy[1].settings["epochs"] == 20 and record["epoch_scale"] == 1.0 and record["fits"]
    starved, record = fit_budget(entries, 0.1, **kw)
    assert starved[1].settings["epochs"] == 1 and not record["fits"]
    with pytest.raises(MedlensError):
        fit_budget(entries, 0, **kw)
