"""The DICOM node without Orthanc: pynetdicom SCU -> medlens node -> a second local Storage SCP."""

from __future__ import annotations

import copy
import logging
import threading
import time

import numpy as np
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from medlens.inference.geometry import source_view
from medlens.inference.prediction import Prediction, SourceInfo
from medlens.serving.audit import AuditLog
from medlens.serving.dicom_node import DicomNode
from medlens.serving.pacs import PacsError, PacsTarget
from medlens.serving.predictor import PredictionResult
from tests.serving.orthanc_fixture import (
    PATIENT_ID,
    PATIENT_NAME,
    CollectingSCP,
    free_port,
    synthetic_ct_series,
    to_bytes,
)

QUIET = 1.0  # seconds of silence that complete a series in these tests


def fake_prediction(datasets, finding="nodule", heatmap_depth=8) -> Prediction:
    heat = np.zeros((heatmap_depth, 16, 16), dtype=np.float32)
    heat[heatmap_depth - 2, 4:8, 4:8] = 1.0  # hottest near the last slice
    return Prediction(
        model="fake-cnn",
        model_sha256="ab" * 32,
        task="multiclass",
        class_names=["normal", finding],
        probabilities={"normal": 0.3, finding: 0.7},
        finding=finding,
        confidence=0.7,
        uncertainty=0.2,
        uncertainty_method="entropy",
        abstain=False,
        abstain_reason=None,
        source=SourceInfo(
            kind="dicom",
            input_sha256="cd" * 32,
            study_instance_uid=str(datasets[0].StudyInstanceUID),
            series_instance_uid=str(datasets[0].SeriesInstanceUID),
            sop_instance_uids=[str(d.SOPInstanceUID) for d in datasets],
            modality="CT",
        ),
        heatmap=heat,
    )


def fake_result(datasets, heatmap=None, **kwargs) -> PredictionResult:
    """A PredictionResult for :func:`fake_prediction` (or ``heatmap``) on the series in slice order."""
    ordered = sorted(datasets, key=lambda d: float(d.ImagePositionPatient[2]))
    volume = np.stack([d.pixel_array for d in ordered]).astype(np.float32)[None]
    pred = fake_prediction(datasets, **kwargs)
    pred.heatmap = pred.heatmap if heatmap is None else heatmap
    return PredictionResult(
        pred, list(datasets), source_view(volume, pred.heatmap), slice_uids=[str(d.SOPInstanceUID) for d in ordered]
    )


class FakeAnalyzer:
    """Records each call (thread-safe) and answers like Predictor.predict_dicom."""

    def __init__(self, fail_on: set[str] | None = None):
        self.calls: list[tuple[float, list]] = []
        self.fail_on = fail_on or set()
        self._lock = threading.Lock()

    def __call__(self, datasets):
        with self._lock:
            self.calls.append((time.monotonic(), datasets))
        if str(datasets[0].SeriesInstanceUID) in self.fail_on:
            raise RuntimeError("model exploded")
        return fake_result(datasets)


@pytest.fixture
def pacs():
    scp = CollectingSCP(ae_title="PACS").start()
    yield scp
    scp.stop()


@pytest.fixture
def make_node(tmp_path):
    nodes = []

    def factory(analyze, pacs_scp=None, **kwargs) -> DicomNode:
        target = PacsTarget("PACS", "127.0.0.1", pacs_scp.port, retries=1, retry_delay=0.2) if pacs_scp else None
        node = DicomNode(
            "MEDLENS",
            "127.0.0.1",
            0,
            kwargs.pop("allowed", {"MODALITY", "ORTHANC"}),
            analyze,
            target,
            tmp_path / "node",
            kwargs.pop("audit", None),
            quiet_period=QUIET,
            pseudonym_key="test-key",
            **kwargs,
        )
        nodes.append(node.start())
        return node

    yield factory
    for node in nodes:
        node.stop()


def _associate(node: DicomNode, calling: str, contexts):
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for c in contexts:
        ae.add_requested_context(c)
    return ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)


def _send(node: DicomNode, datasets, calling="MODALITY") -> None:
    assoc = _associate(node, calling, [CTImageStorage])
    assert assoc.is_established
    try:
        for ds in datasets:
            assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()


def test_echo_from_an_allowed_ae_title(make_node):
    node = make_node(FakeAnalyzer())
    assoc = _associate(node, "MODALITY", [Verification])
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_association_from_an_unlisted_ae_title_is_rejected(make_node):
    node = make_node(FakeAnalyzer())
    assoc = _associate(node, "INTRUDER", [Verification, CTImageStorage])
    assert assoc.is_rejected and not assoc.is_established
    # the allow-list is case- and character-exact, and allowed titles still get in
    assoc = _associate(node, "modality", [Verification])
    assert assoc.is_rejected
    assoc = _associate(node, "ORTHANC", [Verification])
    assert assoc.is_established
    assoc.release()


def test_empty_allow_list_is_refused(tmp_path):
    with pytest.raises(ValueError, match="None to accept any"):
        DicomNode("MEDLENS", "127.0.0.1", 0, set(), FakeAnalyzer(), None, tmp_path)


def test_each_series_is_analyzed_once_after_the_quiet_period_and_results_reach_the_pacs(
    make_node, pacs, tmp_path, caplog
):
    caplog.set_level(logging.DEBUG)
    analyzer = FakeAnalyzer()
    audit = AuditLog(tmp_path / "audit.db")
    node = make_node(analyzer, pacs, audit=audit)
    study = synthetic_ct_series(3)[0].StudyInstanceUID
    first = synthetic_ct_series(3, study_uid=study, seed=1)
    second = synthetic_ct_series(4, study_uid=study, seed=2)

    # one series sent in two associations with a pause shorter than the quiet period
    _send(node, first[:2])
    time.sleep(QUIET / 3)
    _send(node, first[2:])
    last_sent = {first[0].SeriesInstanceUID: time.monotonic()}
    _send(node, second)
    last_sent[second[0].SeriesInstanceUID] = time.monotonic()
    assert analyzer.calls == []  # nothing happens before the series has been quiet long enough

    results = node.wait_for_results(2, timeout=30)
    assert len(analyzer.calls) == 2
    by_series = {str(call[1][0].SeriesInstanceUID): call for call in analyzer.calls}
    assert set(by_series) == {first[0].SeriesInstanceUID, second[0].SeriesInstanceUID}
    for series, call in by_series.items():
        expected = first if series == first[0].SeriesInstanceUID else second
        assert sorted(d.SOPInstanceUID for d in call[1]) == sorted(d.SOPInstanceUID for d in expected)
        assert call[0] - last_sent[series] >= QUIET * 0.9
    assert all(r.stored and r.error is None for r in results), results

    received = pacs.wait_for(4, timeout=30)
    modalities = sorted(str(d.Modality) for d in received)
    assert modalities == ["OT", "OT", "SR", "SR"]
    source_uids = {d.SeriesInstanceUID for d in first + second}
    for ds in received:
        assert ds.StudyInstanceUID == study  # same study ...
        assert ds.SeriesInstanceUID not in source_uids  # ... new series
        assert ds.PatientID == PATIENT_ID
    for sc in (d for d in received if d.Modality == "OT"):
        assert sc.BurnedInAnnotation == "YES" and sc.SeriesDescription == "medlens overlay"
        assert sc.PhotometricInterpretation == "RGB" and sc.SamplesPerPixel == 3
        ref = sc.SourceImageSequence[0].ReferencedSOPInstanceUID
        series = first if ref in {d.SOPInstanceUID for d in first} else second
        # the heatmap is hottest near its last slice: the overlay shows the matching source slice
        ordered = sorted(series, key=lambda d: float(d.ImagePositionPatient[2]))
        assert ref == ordered[round(6 * (len(ordered) - 1) / 7)].SOPInstanceUID
    for sr in (d for d in received if d.Modality == "SR"):
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
        refs = {item.ReferencedSOPInstanceUID for item in evidence}
        assert refs in ({d.SOPInstanceUID for d in first}, {d.SOPInstanceUID for d in second})

    # every prediction is in the audit log, with hashed identifiers only
    rows = audit.recent(10)
    assert {r["prediction_id"] for r in rows} == {r.prediction_id for r in results}
    audit_text = repr(rows)
    audit.close()
    # no patient information in the logs or the audit rows; pseudonyms only
    logs = caplog.text
    assert "complete" in logs and "stored" in logs
    secrets = [PATIENT_NAME, PATIENT_ID, study] + [d.SOPInstanceUID for d in first + second] + list(source_uids)
    for secret in secrets:
        assert secret not in logs
        assert secret not in audit_text
    # received files are stored under pseudonymous names
    names = [p.name for p in (tmp_path / "node").rglob("*.dcm")]
    assert len(names) >= 7 and not any(uid in name for name in names for uid in secrets)


def test_a_failing_analysis_is_reported_and_the_node_keeps_working(make_node, pacs):
    bad, good = synthetic_ct_series(2, seed=3), synthetic_ct_series(2, seed=4)
    analyzer = FakeAnalyzer(fail_on={bad[0].SeriesInstanceUID})
    node = make_node(analyzer, pacs)
    _send(node, bad)
    _send(node, good)
    results = node.wait_for_results(2, timeout=30)
    errors = [r for r in results if r.error]
    assert len(errors) == 1 and "model exploded" in errors[0].error and not errors[0].stored
    assert len(pacs.wait_for(2, timeout=30)) == 2  # SR + SC of the good series only


def test_results_are_not_analyzed_again_when_they_come_back(make_node):
    analyzer = FakeAnalyzer()
    node = make_node(analyzer)  # no PACS: results are kept on disk only
    series = synthetic_ct_series(2, seed=5)
    _send(node, series)
    (result,) = node.wait_for_results(1, timeout=30)
    assert len(result.outputs) == 2 and all(p.exists() for p in result.outputs)
    import pydicom

    sc = pydicom.dcmread(next(p for p in result.outputs if p.name.endswith("-sc.dcm")))
    assoc = _associate(node, "ORTHANC", [sc.SOPClassUID])
    assert assoc.send_c_store(sc).Status == 0x0000  # e.g. a PACS routing our own result back
    assoc.release()
    time.sleep(QUIET * 2)
    assert len(analyzer.calls) == 1 and len(node.results) == 1


def test_pacs_target_echo_store_and_clear_errors(pacs):
    target = PacsTarget("PACS", "127.0.0.1", pacs.port)
    target.echo()
    ds = synthetic_ct_series(1)[0]
    target.store([ds])
    assert pacs.wait_for(1, timeout=10)[0].SOPInstanceUID == ds.SOPInstanceUID

    closed = PacsTarget("PACS", "127.0.0.1", free_port(), timeout=2, retries=2, retry_delay=0.1)
    start = time.monotonic()
    with pytest.raises(PacsError, match="cannot be reached"):
        closed.store([ds])
    assert time.monotonic() - start < 15  # retries are bounded
    with pytest.raises(PacsError, match="cannot be reached"):
        closed.echo()


@pytest.mark.slow
def test_node_with_the_real_predictor(tiny_run, make_node, pacs):
    """``tiny_run`` (tests/serving/conftest.py): cnn-small, one epoch on 32 px synthetic chest X-rays."""
    pytest.importorskip("medlens.serving.predictor", reason="medlens/serving/predictor.py is not there yet")
    from medlens.data.sources.synthetic import open_synthetic
    from medlens.serving.predictor import Predictor
    from tests.serving.orthanc_fixture import synthetic_dx_instance

    predictor = Predictor.from_run(tiny_run)
    node = make_node(lambda datasets: predictor.predict_dicom(datasets, explain=True), pacs)
    image = open_synthetic("chest2d@32").load(0).image[0]
    dx = synthetic_dx_instance(image)
    assoc = _associate(node, "MODALITY", [dx.SOPClassUID])
    assert assoc.send_c_store(dx).Status == 0x0000
    assoc.release()

    (result,) = node.wait_for_results(1, timeout=60)
    assert result.error is None and result.stored, result
    received = {str(d.Modality): d for d in pacs.wait_for(2, timeout=30)}
    assert set(received) == {"SR", "OT"}
    sc, sr = received["OT"], received["SR"]
    assert sc.StudyInstanceUID == sr.StudyInstanceUID == dx.StudyInstanceUID
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == dx.SOPInstanceUID
    assert sc.pixel_array.shape == (32, 32, 3)
    assert result.finding in predictor_class_names(tiny_run)
    assert predictor.card.codes[result.finding].code in str(sr)  # the finding, coded as the card says


@pytest.mark.slow
def test_the_node_answers_an_image_outside_the_models_scope_as_not_assessed(tiny_run, make_node, pacs, caplog):
    """A 128 x 128 DX to a model trained on 32 x 32 images (issue #11): the SR says why, with no finding."""
    from medlens.data.sources.synthetic import open_synthetic
    from medlens.serving.predictor import Predictor
    from tests.serving.orthanc_fixture import synthetic_dx_instance

    caplog.set_level(logging.INFO)
    predictor = Predictor.from_run(tiny_run)
    node = make_node(lambda datasets: predictor.predict_dicom(datasets, explain=False), pacs)
    image = np.kron(open_synthetic("chest2d@32").load(0).image[0], np.ones((4, 4)))
    dx = synthetic_dx_instance(image)
    assoc = _associate(node, "MODALITY", [dx.SOPClassUID])
    assert assoc.send_c_store(dx).Status == 0x0000
    assoc.release()

    (result,) = node.wait_for_results(1, timeout=60)
    assert result.error is None and result.stored, result
    (sr,) = [d for d in pacs.wait_for(1, timeout=30) if d.Modality == "SR"]
    text = str(sr)
    assert "OUTSCOPE" in text and "Image size outside the training range" in text and "REFER" in text
    assert "121071" not in text  # no "Finding" evaluation
    assert "not assessed, referred: outside the model's scope (size" in caplog.text


def predictor_class_names(run) -> list[str]:
    import json

    (model_json,) = list(run.glob("models/*/model.json"))
    info = json.loads(model_json.read_text())
    return list(info.get("class_names") or info.get("classes") or [])


# --------------------------------------------------------------------------------------------
# hardening (issue 10): each test failed before the fix
# --------------------------------------------------------------------------------------------
def _statuses(node: DicomNode, items, calling="MODALITY", contexts=(CTImageStorage,)) -> list[int]:
    assoc = _associate(node, calling, contexts)
    assert assoc.is_established
    try:
        return [assoc.send_c_store(item).Status for item in items]
    finally:
        assoc.release()


def test_a_corrupt_instance_is_refused_and_never_replaces_the_good_copy(make_node, pacs, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    analyzer = FakeAnalyzer()
    node = make_node(analyzer, pacs)
    series = synthetic_ct_series(4, seed=11)
    _send(node, series)
    (first,) = node.wait_for_results(1, timeout=30)
    stored = sorted((tmp_path / "node" / first.series).glob("*.dcm"))
    before = {p.name: p.read_bytes() for p in stored}

    short = copy.deepcopy(series[0])
    short.PixelData = short.PixelData[: len(short.PixelData) // 2]  # same SOP Instance UID, half the pixels
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(to_bytes(series[1])[:-700])  # a truncated file
    assert _statuses(node, [short, cut]) == [0xC000, 0xC000]
    assert {p.name: p.read_bytes() for p in stored} == before  # the good copies are untouched
    time.sleep(QUIET * 2)
    assert len(analyzer.calls) == 1  # nothing new to answer: the stored series did not change

    # a series with one bad instance among good ones: the good ones are analyzed, the refusal is reported
    other = synthetic_ct_series(4, seed=12)
    bad = copy.deepcopy(other[2])
    bad.PixelData = bad.PixelData[:100]
    assert _statuses(node, [other[0], other[1], bad, other[3]]) == [0, 0, 0xC000, 0]
    second = node.wait_for_results(2, timeout=30)[1]
    assert second.error is None and second.stored and second.instances == 3 and second.refused == 1
    assert len(analyzer.calls[1][1]) == 3
    assert "1 refused as corrupt" in caplog.text


def test_compressed_transfer_syntaxes_are_accepted_and_decoded(make_node):
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

    from medlens.serving.dicom_node import COMPRESSED_TRANSFER_SYNTAXES

    analyzer = FakeAnalyzer()
    node = make_node(analyzer)
    for syntax in COMPRESSED_TRANSFER_SYNTAXES:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage, [syntax])
        assoc = ae.associate("127.0.0.1", node.port, ae_title="MEDLENS")
        assert assoc.is_established and len(assoc.accepted_contexts) == 1, syntax.name
        assoc.release()
    series = synthetic_ct_series(3, seed=13)
    for ds, syntax in zip(series, (RLELossless, JPEGLSLossless, JPEG2000Lossless)):
        ds.compress(syntax)
    ae = AE(ae_title="MODALITY")
    for syntax in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
        ae.add_requested_context(CTImageStorage, [syntax])
    assoc = ae.associate("127.0.0.1", node.port, ae_title="MEDLENS")
    assert [assoc.send_c_store(ds).Status for ds in series] == [0, 0, 0]
    assoc.release()
    (result,) = node.wait_for_results(1, timeout=30)
    assert result.error is None and result.instances == 3


def test_a_series_is_answered_once_per_complete_state_and_a_grown_series_supersedes(make_node, pacs, caplog):
    caplog.set_level(logging.INFO)
    analyzer = FakeAnalyzer()
    node = make_node(analyzer, pacs)
    series = synthetic_ct_series(6, seed=14)

    # a sender that pauses longer than the quiet period inside its association: no partial answer
    assoc = _associate(node, "MODALITY", [CTImageStorage])
    assert [assoc.send_c_store(ds).Status for ds in series[:2]] == [0, 0]
    time.sleep(QUIET * 2.5)
    assert analyzer.calls == []
    assert [assoc.send_c_store(ds).Status for ds in series[2:4]] == [0, 0]
    assoc.release()
    (first,) = node.wait_for_results(1, timeout=30)
    assert first.instances == 4 and not first.supersedes

    _send(node, series[4:])  # the series grows after its answer: one new, superseding answer
    second = node.wait_for_results(2, timeout=30)[1]
    assert second.instances == 6 and second.supersedes and second.stored
    _send(node, series)  # the same complete state again: not answered again
    time.sleep(QUIET * 3)
    assert len(node.results) == 2 and len(analyzer.calls) == 2
    received = pacs.wait_for(4, timeout=30)
    srs = [d for d in received if d.Modality == "SR"]
    assert len(received) == 4 and len(srs) == 2
    later = next(d for d in srs if d.SOPInstanceUID == second.sr_sop_instance_uid)
    predecessor = later.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert predecessor.ReferencedSOPInstanceUID == first.sr_sop_instance_uid
    assert "supersedes" in later.SeriesDescription and "supersedes the earlier result" in caplog.text
    assert "not sent again" in caplog.text


def test_the_outbox_retries_until_the_pacs_acknowledges_across_a_restart(make_node, tmp_path):
    port = free_port()
    analyzer = FakeAnalyzer()
    node = DicomNode(
        "MEDLENS",
        "127.0.0.1",
        0,
        None,
        analyzer,
        PacsTarget("PACS", "127.0.0.1", port, timeout=2),
        tmp_path / "node",
        quiet_period=QUIET,
        pseudonym_key="test-key",
        retry_initial=0.2,
        retry_max=0.5,
    ).start()
    try:
        _send(node, synthetic_ct_series(2, seed=15))
        (result,) = node.wait_for_results(1, timeout=30)
        assert result.error is None and not result.stored  # the PACS is down: queued
        assert node.outbox.unsent() == 2
    finally:
        node.stop()
    late = CollectingSCP(ae_title="PACS", port=port).start()
    try:
        node = make_node(analyzer, late, retry_initial=0.2, retry_max=0.5)  # a restart on the same storage
        assert len(late.wait_for(2, timeout=30)) == 2
        time.sleep(2)
        assert len(late.received) == 2 and node.outbox.unsent() == 0  # none twice
        assert len(analyzer.calls) == 1  # the answered series is not analyzed again
    finally:
        late.stop()


def test_a_series_received_before_a_restart_is_answered_after_it(make_node, pacs, tmp_path):
    analyzer = FakeAnalyzer()
    node = DicomNode(
        "MEDLENS", "127.0.0.1", 0, None, analyzer, None, tmp_path / "node", quiet_period=60, pseudonym_key="test-key"
    ).start()
    series = synthetic_ct_series(3, seed=16)
    _send(node, series)
    node.stop()  # before its quiet period ended
    assert analyzer.calls == []
    node = make_node(analyzer, pacs)
    (result,) = node.wait_for_results(1, timeout=30)
    assert result.instances == 3 and result.stored


def test_association_limit_and_called_ae_title_are_logged_truthfully(make_node, caplog):
    caplog.set_level(logging.INFO)
    node = make_node(FakeAnalyzer(), maximum_associations=1)
    held = _associate(node, "MODALITY", [Verification])
    assert held.is_established
    extra = _associate(node, "MODALITY", [Verification])
    assert extra.is_rejected
    held.release()
    assert "local limit exceeded" in caplog.text and "not on the allow-list" not in caplog.text

    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    assert ae.associate("127.0.0.1", node.port, ae_title="OTHERNODE").is_rejected
    assert "called AE title is not this node's" in caplog.text
    assert _associate(node, "INTRUDER", [Verification]).is_rejected
    assert "calling AE title not on the allow-list" in caplog.text


def test_received_data_is_private_and_deleted_after_the_retention_period(make_node, pacs, tmp_path):
    node = make_node(FakeAnalyzer(), pacs, retention_hours=1.5 / 3600)
    _send(node, synthetic_ct_series(2, seed=17))
    (result,) = node.wait_for_results(1, timeout=30)
    root = tmp_path / "node"
    folders = [root, root / result.series, root / "results", root / "results" / result.series]
    files = [*(root / result.series).glob("*.dcm"), *result.outputs, root / "node.sqlite"]
    assert all(p.stat().st_mode & 0o777 == 0o700 for p in folders)
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in files)
    deadline = time.monotonic() + 20
    while (root / result.series).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not (root / result.series).exists() and not (root / "results" / result.series).exists()


def test_library_log_lines_name_pseudonyms_not_uids(make_node, pacs, caplog):
    import warnings

    from pydicom import config
    from pydicom.valuerep import validate_value

    caplog.set_level(logging.DEBUG)
    node = make_node(FakeAnalyzer(), pacs)
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG)  # its DEBUG lines quote SOP Instance UIDs
    try:
        series = synthetic_ct_series(2, seed=18)
        _send(node, series)
        node.wait_for_results(1, timeout=30)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            validate_value("UI", series[0].SeriesInstanceUID + ".x", config.WARN)  # pydicom warns with the value
    finally:
        logging.getLogger("pynetdicom").setLevel(logging.INFO)
    assert "Affected SOP Instance UID" in caplog.text and "uid:" in caplog.text and "<value>" in caplog.text
    for uid in [series[0].StudyInstanceUID, series[0].SeriesInstanceUID, *(d.SOPInstanceUID for d in series)]:
        assert uid not in caplog.text
