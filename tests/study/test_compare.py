"""`compare`: a two-model suite on identical splits gives a complete, strict comparison.json."""

from __future__ import annotations

import json
import math

from medlens.manifest import verify_manifest
from medlens.runs import RunDir, read_json


def _strict(path):
    """Parse with NaN/Infinity forbidden (strict JSON)."""

    def bad(token):
        raise ValueError(f"non-strict JSON token {token}")

    return json.loads(path.read_text(), parse_constant=bad)


def test_compare_writes_comparison_with_cis_delong_and_holm(tiny_run):
    run = RunDir(tiny_run)
    c = _strict(run.comparison)
    assert c["schema"] == "medlens.comparison/1"
    assert c["order"] == ["elm", "cnn-small"] and c["task"] == "binary"
    assert c["ci"]["n_resamples"] >= 1000
    # identical test ids for both models
    ids = [
        [row.split(",")[0] for row in run.model(n).predictions("test").read_text().splitlines()[1:]] for n in c["order"]
    ]
    assert ids[0] == ids[1] and len(ids[0]) == c["pairwise"]["n_common"]
    for name in c["order"]:
        m = c["models"][name]["metrics"]["test"]
        for metric in ("auc", "acc", "sensitivity", "specificity", "brier", "ece"):
            ci = m[metric]
            assert ci["low"] <= ci["value"] <= ci["high"], (name, metric, ci)
        assert c["models"][name]["calibrated_metrics"]["test"]["auc"]["value"] == m["auc"]["value"] or math.isclose(
            c["models"][name]["calibrated_metrics"]["test"]["auc"]["value"], m["auc"]["value"], abs_tol=1e-9
        )
    tests = c["pairwise"]["tests"]
    auc_tests = [t for t in tests if t["metric"] == "auc"]
    acc_tests = [t for t in tests if t["metric"] == "accuracy"]
    assert [t["method"] for t in auc_tests] == ["delong"] and [t["method"] for t in acc_tests] == ["mcnemar"]
    raw = sorted(t["p_value"] for t in tests)
    for t in tests:
        assert 0 <= t["p_value"] <= t["p_holm"] <= 1
    # Holm with two tests: the smallest p doubled (capped at 1)
    assert math.isclose(min(t["p_holm"] for t in tests), min(1.0, 2 * raw[0]))
    assert c["best"]["model"] in c["order"] and "auc" in c["best"]["by_metric"]
    assert c["summary"][0]["model"] == "elm" and c["summary"][0]["auc_low"] is not None


def test_compare_records_study_and_keeps_bundles_verifiable(tiny_run):
    run = RunDir(tiny_run)
    study = read_json(run.study)
    assert [e["model"] for e in study["entries"]] == ["elm", "cnn-small"]
    assert set(study["timings"]) >= {"elm", "cnn-small", "evaluation", "total"}
    info = read_json(run.model("cnn-small").info)
    assert info["temperature"] > 0 and info["abstention"]["method"] in ("max_prob", "entropy")
    assert info["thresholds"]["decision"] == info["thresholds"]["youden"]
    assert "sensitivity_0.95" in info["thresholds"]
    assert verify_manifest(run.root) == []


def test_compare_cli_list_suites(cli):
    code, out, _ = cli("compare", "--list-suites")
    assert code == 0
    for word in ("quick", "standard", "full", "cnn-small", "resnet18-3d", "cnn-lstm", "svm", "elm"):
        assert word in out
    for word in ("seg-quick", "segmentation", "unet", "dynunet", "pixel-forest"):
        assert word in out


def _counting(monkeypatch, module, name: str) -> list:
    """Count the calls of ``module.name`` (callers import it at call time, so the patch is seen)."""
    calls: list = []
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args[0] if args else None)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def _pneumonia_like(binary_npz, folder):
    """The binary phantom under PneumoniaMNIST's name (catalog: X-ray, normal / pneumonia), or the real file."""
    import shutil

    from tests.conftest import shared_data_dir

    real = shared_data_dir() / "medmnist" / "pneumoniamnist.npz"
    if real.is_file():
        return real
    path = folder / "pneumoniamnist.npz"
    shutil.copy(binary_npz, path)
    return path


def test_compare_opens_the_source_once_and_preprocesses_once(binary_npz, tmp_path, monkeypatch):
    """PneumoniaMNIST (the real file when ../shared/data has it): one open_source for the whole
    study (suite, training, evaluation, report), and the two classical models, which share their
    preprocessing, load each split once."""
    import medlens.data.arrays as arrays
    import medlens.data.sources as sources
    from medlens.study.compare import compare
    from medlens.study.suites import SuiteEntry

    source = _pneumonia_like(binary_npz, tmp_path)
    opens = _counting(monkeypatch, sources, "open_source")
    loads = _counting(monkeypatch, arrays, "load_arrays")
    suite = [SuiteEntry("elm"), SuiteEntry("logistic-regression")]
    out = tmp_path / "run"
    compare(str(source), suite, out, seed=0, max_samples=40, show_progress=False, n_resamples=100)
    assert len(opens) == 1
    assert len(loads) == 3  # train, val, test: once for both models
    run = RunDir(out)
    assert run.report.is_file() and verify_manifest(run.root) == []
    stages = {e["stage"] for e in read_json(run.manifest)["files"].values()}
    assert stages == {"train:elm", "train:logistic-regression", "evaluate", "report", "compare"}
    files = read_json(run.manifest)["files"]
    assert files["models/elm/model.joblib"]["stage"] == "train:elm"
    assert files["comparison.json"]["stage"] == "evaluate" and files["study.json"]["stage"] == "compare"
    assert read_json(run.model("elm").info)["updates"][-1]["stage"] == "evaluate"


def test_a_failing_suite_model_is_recorded_and_reported_not_dropped(binary_npz, tmp_path, monkeypatch):
    """One model of the suite fails: the others are still trained and compared, study.json keeps
    the failure with its error, and the report's key findings say which model is missing and why."""
    import medlens.training.run as run_module
    from medlens.errors import MedlensError
    from medlens.study.compare import compare
    from medlens.study.suites import SuiteEntry

    real = run_module.train

    def failing(config, **kwargs):
        if config.model == "logistic-regression":
            raise MedlensError("the GPU caught fire", config.source)
        return real(config, **kwargs)

    monkeypatch.setattr(run_module, "train", failing)
    out = tmp_path / "run"
    suite = [SuiteEntry("elm"), SuiteEntry("logistic-regression")]
    compare(str(binary_npz), suite, out, seed=0, max_samples=40, show_progress=False, n_resamples=100)
    run = RunDir(out)
    outcomes = read_json(run.study)["outcomes"]
    assert outcomes["elm"]["status"] == "trained"
    assert (
        outcomes["logistic-regression"]["status"] == "failed"
        and "GPU caught fire" in outcomes["logistic-regression"]["error"]
    )
    assert read_json(run.comparison)["order"] == ["elm"]
    page = run.report.read_text()
    assert "logistic-regression is missing from this comparison: its training failed" in page


def test_segmentation_suite_through_the_cli(cli, tmp_path):
    """A segmentation source gets seg-quick by default: U-Net and the pixel forest on the same capped
    splits, every model's outcome in study.json, the budget estimated on patches, Dice/HD95/NSD in
    comparison.json, the summary table and the report's segmentation section."""
    out = tmp_path / "seg"
    code, stdout, stderr = cli(
        "compare",
        "synthetic:chest2d-seg@32",
        "--out",
        out,
        "--max-samples",
        "16",
        "--epochs",
        "1",
        "--budget-minutes",
        "5",
        "--resamples",
        "100",
        "--no-progress",
    )
    assert code == 0, stderr
    run = RunDir(out)
    study = read_json(run.study)
    assert study["suite"] == "seg-quick" and study["status"] == "evaluated"
    assert {m: o["status"] for m, o in study["outcomes"].items()} == {"unet": "trained", "pixel-forest": "trained"}
    budget = study["budget"]["models"]
    assert (
        budget["unet"]["kind"] == "deep"
        and budget["unet"]["epochs"] == 1
        and budget["pixel-forest"]["kind"] == "classical"
    )
    test_ids = read_json(run.splits)["splits"]["test"]
    assert len(test_ids) == 16  # the capped splits are the run's splits: every listed case is scored
    for model in ("unet", "pixel-forest"):
        predicted = sorted(p.stem for p in (run.model(model).root / "segmentations_test").glob("*.npz"))
        assert predicted == sorted(test_ids)
    seg = read_json(run.comparison)["segmentation"]
    assert set(seg["models"]) == {"unet", "pixel-forest"} and seg["classes"] == ["nodule", "opacity"]
    for entry in seg["models"].values():
        assert entry["n_cases"] == 16 and 0 <= entry["mean_over_classes"]["dice"]["value"] <= 1
    assert {t["metric"] for t in seg["pairwise"]["tests"]} == {"dice", "hd95", "nsd"}
    assert "no segmentation" not in stderr and "test Dice" in stderr
    assert "Dice [95%" in stdout and "Wilcoxon" in stdout and "AUC" not in stdout
    assert "Segmentation results" in run.report.read_text()
    assert verify_manifest(run.root) == []


def test_suite_of_the_other_task_is_a_one_line_error(cli, binary_npz, tmp_path):
    code, _, stderr = cli("compare", "synthetic:chest2d-seg@32", "--suite", "quick", "--out", tmp_path / "a")
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert "suite 'quick' is for classification" in stderr and "seg-quick" in stderr
    code, _, stderr = cli("compare", binary_npz, "--suite", "seg", "--out", tmp_path / "b")
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert "suite 'seg' is for segmentation" in stderr and "quick, standard" in stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_compare_trains_each_deep_model_from_scratch_and_pretrained(tmp_path):
    """--pretrain-epochs: MODEL+pretrained starts from an encoder made on the run's own training and
    validation images (its splits.json), and the paired tests compare it with MODEL."""
    from medlens.study.compare import compare

    run = compare(
        "synthetic:chest2d@32",
        "elm,cnn-small",
        tmp_path / "run",
        epochs=1,
        max_samples=32,
        threads=1,
        show_progress=False,
        n_resamples=200,
        pretrain_epochs=1,
    )
    c = read_json(run.comparison)
    assert c["order"] == ["elm", "cnn-small", "cnn-small+pretrained"]
    pair = [t for t in c["pairwise"]["tests"] if {t["a"], t["b"]} == {"cnn-small", "cnn-small+pretrained"}]
    assert [t["metric"] for t in pair] == ["auc", "accuracy"]  # three classes: a paired bootstrap for AUC
    card = read_json(run.model("cnn-small+pretrained").info)
    assert card["name"] == "cnn-small+pretrained" and card["model"] == "cnn-small"
    encoder = read_json(run.root / "pretrained" / "cnn-small.json")
    assert card["pretrained"]["sha256"] == encoder["weights_sha256"]
    splits = read_json(run.splits)["splits"]
    assert set(encoder["images"]["ids"]) <= set(splits["train"]) | set(splits["val"])
    assert encoder["held_out"]["rule"].startswith("the test split of ")
    stages = {k: v["stage"] for k, v in read_json(run.manifest)["files"].items()}
    assert stages["pretrained/cnn-small.safetensors"] == "pretrain:cnn-small"
    assert stages["models/cnn-small+pretrained/model.safetensors"] == "train:cnn-small+pretrained"
    assert verify_manifest(run.root) == []


def test_compare_pretrains_a_segmentation_network_by_inpainting(tmp_path):
    """--pretrain-epochs on a segmentation source: unet+pretrained starts from masked-inpainting
    weights made on the run's training and validation images, and the evaluation pairs it with unet."""
    from medlens.study.compare import compare

    run = compare(
        "synthetic:chest2d-seg@32",
        "unet",
        tmp_path / "run",
        epochs=1,
        max_samples=12,
        threads=1,
        show_progress=False,
        n_resamples=200,
        pretrain_epochs=1,
    )
    c = read_json(run.comparison)
    assert set(c["models"]) == {"unet", "unet+pretrained"}
    encoder = read_json(run.root / "pretrained" / "unet.json")
    assert encoder["method"] == "mim" and encoder["patch_size"]
    assert read_json(run.model("unet+pretrained").info)["pretrained"]["sha256"] == encoder["weights_sha256"]
    splits = read_json(run.splits)["splits"]
    assert set(encoder["images"]["ids"]) <= set(splits["train"]) | set(splits["val"])
    tests = c["segmentation"]["pairwise"]["tests"]  # the paired Wilcoxon tests on per-case Dice and HD95
    assert any({t["a"], t["b"]} == {"unet", "unet+pretrained"} for t in tests)
    assert verify_manifest(run.root) == []
