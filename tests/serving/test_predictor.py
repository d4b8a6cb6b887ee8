"""The predictor: verified bundle loading, training-identical preprocessing, inputs, uncertainty."""

from __future__ import annotations

import csv
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pydicom
import pytest

from medlens.errors import ChecksumError, MedlensError
from medlens.inference.prediction import SourceInfo
from medlens.manifest import artifact_files, record_files
from medlens.runs import RunDir, read_json, sha256_file, write_json
from medlens.serving.predictor import Predictor, UnsupportedMediaError, find_inputs, sniff_suffix
from tests.serving.conftest import SYNTH


@pytest.fixture(scope="module")
def deep(tiny_run) -> Predictor:
    return Predictor.from_run(tiny_run)


@pytest.fixture(scope="module")
def classical(tiny_classical_run) -> Predictor:
    return Predictor.from_run(tiny_classical_run)


def _copy_run(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def _test_rows(run, model: str) -> list[dict]:
    with open(RunDir(run).model(model).predictions("test"), newline="") as f:
        return list(csv.DictReader(f))


# -- preprocessing and probabilities ------------------------------------------------------------
@pytest.mark.parametrize("fixture, model", [("tiny_run", "cnn-small"), ("tiny_classical_run", "elm")])
def test_probabilities_match_the_training_predictions(request, fixture, model):
    """The same image gives the probabilities written at training: the preprocessing is identical."""
    from medlens.data.sources.synthetic import open_synthetic

    run = request.getfixturevalue(fixture)
    predictor = Predictor.from_run(run)
    dataset = open_synthetic(SYNTH, seed=0)
    rows = _test_rows(run, model)[:4]
    assert len(rows) == 4
    for row in rows:
        result = predictor.predict_array(
            dataset.load(row["id"]).image, source=SourceInfo(kind="array", input_sha256="0")
        )
        expected = [float(row[f"prob_{c}"]) for c in predictor.card.class_names]
        assert list(result.prediction.probabilities.values()) == pytest.approx(expected, abs=1e-4)


def test_png_prediction_record(deep, tiny_run, serving_inputs):
    result = deep.predict_path(serving_inputs["png"])
    pred = result.prediction
    assert pred.model == "cnn-small" == deep.model_id
    assert pred.model_sha256 == sha256_file(RunDir(tiny_run).model("cnn-small").weights) == deep.model_sha256
    assert sum(pred.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert pred.finding == max(pred.probabilities, key=pred.probabilities.get)
    assert pred.confidence == pytest.approx(pred.probabilities[pred.finding], abs=1e-6)
    assert pred.source.kind == "png" and pred.source.input_sha256 == sha256_file(serving_inputs["png"])
    assert pred.heatmap is None and result.sources == []
    assert result.model_input.shape == (1, 32, 32)
    assert result.display_image.shape == (32, 32) and 0 <= result.display_image.min() <= result.display_image.max() <= 1
    # abstention: the default rule says which rule fired
    assert pred.abstain == (pred.confidence < 0.6)
    if pred.abstain:
        assert "default rule" in pred.abstain_reason


def test_nifti_and_jpeg_inputs(deep, serving_inputs):
    png = deep.predict_path(serving_inputs["png"]).prediction.probabilities
    nifti = deep.predict_path(serving_inputs["nifti"]).prediction
    assert nifti.source.kind == "nifti"
    assert list(nifti.probabilities.values()) == pytest.approx(list(png.values()), abs=1e-5)
    jpeg = deep.predict_path(serving_inputs["jpeg"]).prediction
    assert jpeg.source.kind == "jpeg" and sum(jpeg.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_dicom_input_keeps_sources_and_pseudonymizes(tiny_run, serving_inputs):
    predictor = Predictor.from_run(tiny_run, pseudonym_key="k1")
    path = serving_inputs["dicom"]
    ds = pydicom.dcmread(path)
    result = predictor.predict_path(path, explain=True)
    src = result.prediction.source
    assert src.kind == "dicom" and src.modality == "DX"
    assert src.sop_instance_uids == [ds.SOPInstanceUID] and src.study_instance_uid == ds.StudyInstanceUID
    assert len(result.sources) == 1 and result.sources[0].SOPInstanceUID == ds.SOPInstanceUID
    assert src.patient_pseudonym and src.patient_pseudonym != ds.PatientID and len(src.patient_pseudonym) == 16
    assert (
        Predictor.from_run(tiny_run, pseudonym_key="k1").predict_path(path).prediction.source.patient_pseudonym
        == src.patient_pseudonym
    )
    # the same image from datasets (DICOM node) and from uploaded bytes
    from_ds = predictor.predict_dicom([pydicom.dcmread(path)], explain=False)
    from_bytes = predictor.predict_bytes(path.read_bytes(), "upload.dcm")
    for other in (from_ds, from_bytes):
        assert other.prediction.probabilities == pytest.approx(result.prediction.probabilities, abs=1e-6)
        assert other.sources[0].SOPInstanceUID == ds.SOPInstanceUID


def test_explain_gives_a_heatmap_and_leaves_the_shared_network_clean(deep, serving_inputs):
    for _ in range(2):
        result = deep.predict_path(serving_inputs["png"], explain=True)
    heat = result.prediction.heatmap
    assert heat.shape == result.model_input.shape[1:] and 0.0 <= heat.min() <= heat.max() <= 1.0
    layer = deep.bundle.net.get_submodule(deep.card.cam_layer)
    assert not layer._forward_hooks and not layer._backward_hooks  # MONAI's hooks went on a copy
    assert result.overlay_png()[:8] == b"\x89PNG\r\n\x1a\n"


def test_classical_bundle_predicts_and_explains_by_occlusion(classical, serving_inputs):
    result = classical.predict_path(serving_inputs["png"], explain=True)
    pred = result.prediction
    assert pred.model == "elm" and pred.uncertainty_method == "entropy"
    assert sum(pred.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert pred.heatmap.shape == (32, 32) and pred.heatmap.max() <= 1.0


# -- uncertainty ---------------------------------------------------------------------------------------
def test_mc_dropout_is_seeded_and_max_prob_is_one_pass(tiny_run, deep, serving_inputs):
    a = deep.predict_path(serving_inputs["png"]).prediction
    b = deep.predict_path(serving_inputs["png"]).prediction
    assert a.uncertainty_method == "predictive_entropy" and deep.bundle._mc is not None
    assert a.uncertainty == b.uncertainty and 0 <= a.uncertainty <= np.log(3) + 1e-9
    fast = Predictor.from_run(tiny_run, uncertainty="max_prob")
    f = fast.predict_path(serving_inputs["png"]).prediction
    assert fast.bundle._mc is None
    assert f.uncertainty == pytest.approx(1 - max(f.probabilities.values()), abs=1e-6)
    assert f.probabilities == a.probabilities  # draws inform the uncertainty, not the probabilities


def test_mc_dropout_runs_the_layers_before_dropout_once_with_the_same_draws(deep):
    import torch
    from torch import nn

    from medlens.inference.uncertainty import MCDropout

    x = torch.rand(1, 1, 32, 32)
    fast = MCDropout(deep.bundle.net, x, passes=8)
    plain = MCDropout(deep.bundle.net, x, passes=8)
    plain.expands = False
    assert fast.expands
    a, b = fast.logits(x, seed=3), plain.logits(x, seed=3)
    assert a.shape == (8, 1, 3) and torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a[0], a[1])  # the draws differ from each other
    assert torch.equal(a, fast.logits(x, seed=3)) and not torch.equal(a, fast.logits(x, seed=4))

    class BatchBound(nn.Module):  # reshapes with the input's batch size: no early expansion
        def __init__(self):
            super().__init__()
            self.fc1, self.drop, self.fc2 = nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2)

        def forward(self, v):
            return self.fc2(self.drop(self.fc1(v.flatten(1)))).view(v.shape[0], -1)

    bound = MCDropout(BatchBound().eval(), torch.rand(1, 1, 2, 2), passes=5)
    assert not bound.expands and bound.logits(torch.rand(2, 1, 2, 2)).shape == (5, 2, 2)


def test_validated_abstention_rule_and_temperature_from_model_json(tiny_run, tmp_path, serving_inputs):
    run = _copy_run(tiny_run, tmp_path)
    info_path = RunDir(run).model("cnn-small").info
    base = Predictor.from_run(run, uncertainty="max_prob").predict_path(serving_inputs["png"]).prediction
    for threshold, abstains in ((0.0, True), (0.99, False)):
        info = read_json(info_path)
        info["abstention"] = {"method": "max_prob", "threshold": threshold, "target_risk": 0.1}
        info["temperature"] = 3.0
        write_json(info_path, info)
        record_files(run, artifact_files(run), "test")  # what the comparison stage does after choosing them
        pred = Predictor.from_run(run).predict_path(serving_inputs["png"]).prediction
        assert pred.uncertainty_method == "max_prob" and pred.abstain is abstains
        if abstains:
            assert "validation" in pred.abstain_reason and "0.1" in pred.abstain_reason
        assert max(pred.probabilities.values()) < max(base.probabilities.values())  # T=3 flattens
    with pytest.raises(MedlensError, match="chosen for 'max_prob'"):
        Predictor.from_run(run, uncertainty="entropy")


def test_concurrent_requests_agree_with_sequential_ones(deep, serving_inputs):
    paths = [serving_inputs[k] for k in ("png", "nifti", "png", "nifti")]
    sequential = [deep.predict_path(p, explain=True).prediction for p in paths]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda p: deep.predict_path(p, explain=True).prediction, paths))
    for s, p in zip(sequential, parallel):
        assert s.probabilities == p.probabilities and s.uncertainty == p.uncertainty
        np.testing.assert_allclose(s.heatmap, p.heatmap, atol=1e-5)


# -- bundle verification and model choice --------------------------------------------------------------
def test_a_tampered_weights_file_is_refused(tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path)
    weights = RunDir(run).model("cnn-small").weights
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=r"model\.safetensors: changed"):
        Predictor.from_run(run)


def test_an_unknown_file_in_the_bundle_is_refused(tiny_classical_run, tmp_path):
    run = _copy_run(tiny_classical_run, tmp_path)
    (RunDir(run).model("elm").root / "extra.joblib").write_bytes(b"not ours")
    with pytest.raises(ChecksumError, match=r"extra\.joblib: not listed in the manifest"):
        Predictor.from_run(run)


def test_a_missing_manifest_is_refused(tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path)
    RunDir(run).manifest.unlink()
    with pytest.raises(ChecksumError, match="no manifest"):
        Predictor.from_run(run)


def test_model_choice_lists_models_or_takes_the_best_by_validation_auc(tiny_run, tiny_classical_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path)
    shutil.copytree(RunDir(tiny_classical_run).model("elm").root, RunDir(run).model("elm").root)
    record_files(run, artifact_files(run), "test")
    with pytest.raises(MedlensError, match=r"2 models \(cnn-small, elm\).*--model"):
        Predictor.from_run(run)
    with pytest.raises(MedlensError, match="no model 'vit'"):
        Predictor.from_run(run, "vit")
    assert Predictor.from_run(run, "elm").model_id == "elm"
    val = lambda auc: {"metrics": {"val": {"auc": auc}}}  # noqa: E731 - comparison.json's schema
    write_json(RunDir(run).comparison, {"models": {"cnn-small": val(0.61), "elm": val(0.83)}})
    assert Predictor.from_run(run).model_id == "elm"
    write_json(RunDir(run).comparison, {"models": {"cnn-small": val(0.83), "elm": val(0.83)}})
    assert Predictor.from_run(run).model_id == "cnn-small"  # a tie: the first name, as the study's "best"


# -- input checks --------------------------------------------------------------------------------------
def test_a_volume_to_a_2d_model_is_a_clear_error(deep, serving_inputs):
    with pytest.raises(MedlensError, match=r"3D volume .* takes 2D images") as e:
        deep.predict_path(serving_inputs["nifti3d"])
    assert "volume.nii.gz" in str(e.value)
    with pytest.raises(MedlensError, match="3D volume"):
        deep.predict_path(serving_inputs["ct_series"])


def test_ct_to_an_xray_model_is_a_clear_error(deep, serving_inputs):
    with pytest.raises(MedlensError, match="the input is CT but model 'cnn-small' was trained on DX images"):
        deep.predict_path(serving_inputs["ct_slice"])


def test_uploads_are_sniffed_and_non_images_refused(deep, serving_inputs):
    png = serving_inputs["png"].read_bytes()
    by_bytes = deep.predict_bytes(png, "whatever.bin").prediction
    assert by_bytes.source.kind == "png"
    assert by_bytes.probabilities == deep.predict_path(serving_inputs["png"]).prediction.probabilities
    assert sniff_suffix(serving_inputs["nifti"].read_bytes()) == ".nii.gz"
    assert sniff_suffix(serving_inputs["jpeg"].read_bytes()) == ".jpg"
    with pytest.raises(MedlensError, match=r"^scan\.dcm: .*truncated") as e:
        deep.predict_bytes(serving_inputs["dicom"].read_bytes()[:400], "scan.dcm")
    assert not isinstance(e.value, UnsupportedMediaError)
    with pytest.raises(UnsupportedMediaError, match="report.pdf: not a supported image"):
        deep.predict_bytes(b"%PDF-1.4 not an image at all", "report.pdf")
    with pytest.raises(UnsupportedMediaError):
        deep.predict_bytes(serving_inputs["text"].read_bytes(), "notes.png")


def test_raster_uploads_are_decoded_in_memory(deep, serving_inputs, monkeypatch):
    """PNG/JPEG uploads never touch the disk: same answer and hash as the file, errors name the upload."""
    import tempfile

    def no_temporary_files(*_a, **_k):
        raise AssertionError("a raster upload went through a temporary file")

    monkeypatch.setattr(tempfile, "TemporaryDirectory", no_temporary_files)
    for kind in ("png", "jpeg"):
        data = serving_inputs[kind].read_bytes()
        by_bytes = deep.predict_bytes(data, f"upload.{kind}").prediction
        by_path = deep.predict_path(serving_inputs[kind]).prediction
        assert by_bytes.probabilities == by_path.probabilities
        assert by_bytes.source.input_sha256 == by_path.source.input_sha256 == sha256_file(serving_inputs[kind])
    broken = serving_inputs["png"].read_bytes()[:200]
    with pytest.raises(MedlensError, match=r"^chest\.png: corrupt image"):
        deep.predict_bytes(broken, "chest.png")


def test_find_inputs_expands_studies_and_reports_problems(serving_inputs, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(serving_inputs["study"], study)
    (study / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    items, problems = find_inputs([study, serving_inputs["png"], tmp_path / "missing.png"])
    series = [i for i in items if i.files]
    assert len(series) == 3 and len({i.name for i in items}) == len(items)
    assert any(i.path == serving_inputs["png"] for i in items)
    assert any("broken.dcm" in p for p in problems) and any("missing.png: file not found" in p for p in problems)


def test_a_2_5d_bundle_explains_a_dicom_series(serving_inputs, tmp_path):
    """cnn-2.5d reads slices as channels: its Grad-CAM (a 2D map) used to fail every series the
    DICOM node received; it now covers every slice of the volume."""
    from medlens.training.config import TrainConfig
    from medlens.training.run import train

    out = tmp_path / "run25d"
    config = TrainConfig(
        source="synthetic:nodule3d@16", model="cnn-2.5d", out=str(out), epochs=1, max_samples=12, progress=False
    )
    train(config)
    predictor = Predictor.from_run(out, uncertainty="max_prob")
    files = sorted(serving_inputs["ct_series"].glob("*.dcm"))
    result = predictor.predict_files(files, explain=True)
    heat = result.prediction.heatmap
    assert heat is not None and heat.shape == (16, 16, 16) and 0 <= heat.min() <= heat.max() <= 1
    image, plane = result.heatmap_slice()
    assert image.shape == plane.shape == (32, 32)  # the source's slices, not the model's 16 x 16
