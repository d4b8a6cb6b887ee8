"""The medlens DICOM node: a pynetdicom C-ECHO / C-STORE SCP that analyzes each series it receives.

How it works
------------
* **Who may connect.** The called AE title must be the node's own (``ae_title``), and the calling
  AE title must be on ``allowed_calling_aets`` (``None`` accepts any). At most
  ``maximum_associations`` associations are open at once (default 64); one more is rejected as
  "local limit exceeded". The log names the true reason of every rejection.
* **Receiving.** An instance is checked before anything is written: it needs Series and SOP
  Instance UIDs, its declared pixel data must fit ``max_instance_mb`` and must decode (the
  compressed transfer syntaxes too: RLE, JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000,
  decoded by pydicom with pylibjpeg). A truncated or corrupt instance is refused with status
  0xC000 ("cannot understand") and never replaces a stored copy with the same SOP Instance UID;
  the series goes on with its good instances and its result says how many were refused.
  Accepted instances are written (fsync'd before the success status) to
  ``storage_dir/<series pseudonym>/<instance pseudonym>.dcm``; folders 0700, files 0600, names
  keyed hashes, never UIDs. Instances without pixel data and series medlens produced are stored
  but not analyzed.
* **When is a series complete?** C-STORE has no "end of series", so: a series is complete when
  every association that brought instances of it has closed *and* no new instance of it has
  arrived for ``quiet_period`` seconds (default 5 s). It is then analyzed as a whole (every
  instance on disk) and answered once. Its *state* is the set of its instances: if the same
  instances complete again (a sender re-sends the series), nothing new is sent. If more
  instances arrive after the answer, the series is analyzed again when it is complete again,
  and the new SR **supersedes** the earlier one: it lists it in Predecessor Documents Sequence,
  its series description says so, and the log says so. So every complete state is answered
  exactly once, and a result for fewer instances is never left standing silently.
* **Analysis.** A worker thread reads the series' files and calls ``analyze(datasets)``, which
  returns a :class:`~medlens.serving.predictor.PredictionResult`. From it the node builds the
  DICOM SR (:func:`medlens.serving.sr.structured_report`, series number 9901) and a Secondary
  Capture of the heatmap over the source image at the source's resolution
  (:func:`medlens.serving.overlay.secondary_capture`, series 9902), both new
  series in the source study, keeps them under ``storage_dir/results/`` and records the
  prediction in the :class:`~medlens.serving.audit.AuditLog`. A segmentation model's answer is its
  DICOM SEG (:meth:`~medlens.serving.predictor.PredictionResult.dicom_seg`, series 9903) and the
  TID 1500 SR referencing it (:func:`medlens.serving.sr.segmentation_report`, series 9904) instead.
* **Sending.** Results go through a durable outbox (:mod:`medlens.serving.outbox`,
  ``storage_dir/node.sqlite``): the answer and its results are committed together, then sent to
  the :class:`~medlens.serving.pacs.PacsTarget` and retried with exponential backoff
  (``retry_initial`` .. ``retry_max`` s) until the PACS acknowledges each one; a restart of the
  node resumes both the sending and the series that were received but not yet answered.
* **Retention.** Received instances (and the results kept beside them) are deleted
  ``retention_hours`` after their series was answered and its results acknowledged (default
  24 h; 0 deletes them right after). A series that grows after that is analyzed from what
  arrives anew.
* **Logs** name series and instances only by keyed pseudonyms
  (:func:`medlens.data.deid.pseudonym`); every UID in a line of pynetdicom, pydicom, highdicom or
  a warning is replaced by its pseudonym (:mod:`medlens.serving.node_logging`). The pseudonym key
  is ``pseudonym_key``, else ``$MEDLENS_PSEUDONYM_KEY``, else a random key created once in
  ``storage_dir/.pseudonym_key`` (so pseudonyms are stable per installation).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import secrets
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, DEFAULT_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from medlens.data.deid import pseudonym
from medlens.inference.prediction import Prediction
from medlens.serving.audit import AuditLog, hash_identifier
from medlens.serving.node_logging import UidRedactor, redact_uids
from medlens.serving.outbox import Outbox
from medlens.serving.overlay import overlay_for_result, secondary_capture
from medlens.serving.pacs import PacsTarget

log = logging.getLogger("medlens.dicom_node")

SC_SERIES_NUMBER = 9902
_STATUS_SUCCESS = 0x0000
_STATUS_CANNOT_UNDERSTAND = 0xC000  # "Error: cannot understand": corrupt, truncated, no UIDs
_STATUS_OUT_OF_RESOURCES = 0xA700

# Compressed transfer syntaxes accepted besides the uncompressed ones (pydicom + pylibjpeg decode them).
COMPRESSED_TRANSFER_SYNTAXES = [
    RLELossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
]
TRANSFER_SYNTAXES = [*DEFAULT_TRANSFER_SYNTAXES, *COMPRESSED_TRANSFER_SYNTAXES]

# (result source, diagnostic) of an A-ASSOCIATE-RJ sent by pynetdicom -> what the log says.
_REJECT_REASONS = {
    (0x01, 0x03): "calling AE title not on the allow-list",
    (0x01, 0x07): "called AE title is not this node's",
    (0x02, 0x01): "user identity not accepted",
    (0x03, 0x02): "local limit exceeded: {max} associations already open",
}

# Library loggers whose messages below the given level are chatty (UIDs in them are redacted anyway).
LIBRARY_LOG_LEVELS = {"pynetdicom": logging.INFO, "highdicom": logging.WARNING}


def quiet_library_loggers() -> None:
    """Raise pynetdicom and highdicom loggers to levels without per-instance chatter."""
    for name, level in LIBRARY_LOG_LEVELS.items():
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < level:
            logger.setLevel(level)


def instance_problem(ds: Dataset, max_bytes: int) -> str | None:
    """Why a received instance cannot be kept (one line, no values), or None when it is sound.

    Checks the UIDs, then the declared pixel size against ``max_bytes`` before decoding, then
    decodes the pixel data (a truncated or corrupt instance fails here).
    """
    try:
        if not ds.get("SeriesInstanceUID") or not ds.get("SOPInstanceUID"):
            return "no Series or SOP Instance UID"
        if "PixelData" not in ds:
            return None
        declared = (
            int(ds.Rows)
            * int(ds.Columns)
            * int(ds.get("NumberOfFrames") or 1)
            * int(ds.get("SamplesPerPixel") or 1)
            * max(int(ds.BitsAllocated), 8)
            // 8
        )
        if declared > max_bytes:
            return f"declares {declared / 2**20:.0f} MB of pixel data (limit {max_bytes / 2**20:.0f} MB)"
        ds.pixel_array  # noqa: B018 - decoding is the check
    except Exception as e:  # noqa: BLE001 - pydicom parses lazily: any error means a corrupt instance
        return f"corrupt or truncated ({type(e).__name__})"
    return None


@dataclass
class NodeResult:
    """What happened to one analyzed series (identifiers pseudonymized)."""

    series: str  # series pseudonym
    instances: int
    refused: int = 0  # instances of the series refused as corrupt since the previous answer
    supersedes: bool = False  # a later, complete state of a series answered before
    prediction_id: str | None = None
    finding: str | None = None
    sr_sop_instance_uid: str | None = None  # UIDs of the objects medlens created (no PHI)
    sc_sop_instance_uid: str | None = None
    seg_sop_instance_uid: str | None = None  # a segmentation's answer: SEG + SR (no SC)
    outputs: list[Path] = field(default_factory=list)
    stored: bool = False  # acknowledged by the PACS (else still in the outbox)
    error: str | None = None


@dataclass
class _Pending:
    last: float  # time.monotonic() of the last instance received
    open: set = field(default_factory=set)  # associations that brought instances and are still open


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (mode 0600), durable once this returns (fsync, atomic rename)."""
    tmp = path.with_name(
        f".{path.name}.{secrets.token_hex(4)}.part"
    )  # one per writer: the same instance may arrive twice at once
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class DicomNode:
    """C-ECHO and C-STORE SCP that runs ``analyze`` on every complete series (see the module docstring)."""

    def __init__(
        self,
        ae_title: str = "MEDLENS",
        host: str = "127.0.0.1",
        port: int = 11112,
        allowed_calling_aets: set[str] | None = None,
        analyze: Callable[[list[Dataset]], Any] | None = None,
        pacs: PacsTarget | None = None,
        storage_dir: str | Path = "medlens-dicom",
        audit: AuditLog | None = None,
        *,
        quiet_period: float = 5.0,
        pseudonym_key: str | None = None,
        timeout: float = 30.0,
        workers: int = 1,
        maximum_associations: int = 64,
        retention_hours: float = 24.0,
        max_instance_mb: float = 256.0,
        retry_initial: float = 1.0,
        retry_max: float = 60.0,
    ):
        if analyze is None:
            raise ValueError("DicomNode needs an analyze(datasets) callable")
        if allowed_calling_aets is not None and not allowed_calling_aets:
            raise ValueError("allowed_calling_aets is empty: pass None to accept any calling AE title")
        if quiet_period <= 0:
            raise ValueError(f"quiet_period must be positive, got {quiet_period}")
        if maximum_associations < 1:
            raise ValueError(f"maximum_associations must be at least 1, got {maximum_associations}")
        if retention_hours < 0:
            raise ValueError(f"retention_hours must not be negative, got {retention_hours}")
        self.ae_title = ae_title
        self.host = host
        self.port = int(port)
        self.allowed_calling_aets = set(allowed_calling_aets) if allowed_calling_aets is not None else None
        self.analyze = analyze
        self.pacs = pacs
        self.storage_dir = _private_dir(Path(storage_dir))
        self.audit = audit
        self.quiet_period = float(quiet_period)
        self.timeout = float(timeout)
        self.workers = int(workers)
        self.maximum_associations = int(maximum_associations)
        self.retention_hours = float(retention_hours)
        self.max_instance_bytes = int(max_instance_mb * 2**20)
        self.key = pseudonym_key or os.environ.get("MEDLENS_PSEUDONYM_KEY") or self._installation_key()
        self.outbox = Outbox(self.storage_dir / "node.sqlite", retry_initial=retry_initial, retry_max=retry_max)
        self.results: list[NodeResult] = []
        self._pending: dict[str, _Pending] = {}
        self._running: set[str] = set()
        self._lock = threading.Lock()
        self._results_changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._server = None
        self._threads: list[threading.Thread] = []
        self._executor: ThreadPoolExecutor | None = None
        self._redactor = UidRedactor(self.key)

    # ----------------------------------------------------------------------------------------
    # life cycle
    # ----------------------------------------------------------------------------------------
    def _installation_key(self) -> str:
        path = self.storage_dir / ".pseudonym_key"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        return path.read_text().strip()

    def start(self) -> "DicomNode":
        """Start listening (non-blocking). With ``port=0`` a free port is chosen; see :attr:`port`."""
        if self._server is not None:
            return self
        quiet_library_loggers()
        self._redactor = redact_uids(self.key)
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        ae.maximum_associations = self.maximum_associations
        ae.require_called_aet = True
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        if self.allowed_calling_aets is not None:
            ae.require_calling_aet = sorted(self.allowed_calling_aets)
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_CONN_CLOSE, self._on_close),
        ]
        self._stop.clear()
        now = time.monotonic()
        with self._lock:  # series received before a restart but never answered: complete them now
            for series in self.outbox.receiving():
                self._pending.setdefault(series, _Pending(last=now))
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="medlens-analyze")
        self._server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        self.port = int(self._server.server_address[1])
        self._threads = [
            threading.Thread(target=self._watch, name="medlens-series-watch", daemon=True),
            threading.Thread(target=self._send_loop, name="medlens-outbox", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        log.info(
            "DICOM node %s listening on %s:%d (allow-list: %s, quiet period %.1f s, at most %d associations, "
            "retention %g h)",
            self.ae_title,
            self.host,
            self.port,
            "any" if self.allowed_calling_aets is None else sorted(self.allowed_calling_aets),
            self.quiet_period,
            self.maximum_associations,
            self.retention_hours,
        )
        return self

    def stop(self) -> None:
        """Stop listening, then wait for analyses already started (unanswered series resume at the next start)."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        for thread in self._threads:
            thread.join(timeout=15)
        self._threads = []
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        log.info("DICOM node %s stopped", self.ae_title)

    def __enter__(self) -> "DicomNode":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----------------------------------------------------------------------------------------
    # events
    # ----------------------------------------------------------------------------------------
    def _pseudo(self, uid: str) -> str:
        return pseudonym(uid, self.key)

    def _on_accepted(self, event) -> None:
        log.info("association accepted from %s", event.assoc.requestor.ae_title)

    def _on_rejected(self, event) -> None:
        rj = event.assoc.acceptor.primitive
        reason = _REJECT_REASONS.get((rj.result_source, rj.diagnostic), "rejected (source {src}, reason {diag})")
        reason = reason.format(max=self.maximum_associations, src=rj.result_source, diag=rj.diagnostic)
        log.warning(
            "association from %s to %s rejected: %s",
            event.assoc.requestor.ae_title,
            event.assoc.requestor.primitive.called_ae_title,
            reason,
        )

    def _on_close(self, event) -> None:
        with self._lock:
            for pending in self._pending.values():
                pending.open.discard(event.assoc)

    def _on_echo(self, event) -> int:
        log.info("C-ECHO from %s", event.assoc.requestor.ae_title)
        return _STATUS_SUCCESS

    def _on_store(self, event) -> int:
        sender = event.assoc.requestor.ae_title
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            series_uid, sop_uid = str(ds.get("SeriesInstanceUID", "")), str(ds.get("SOPInstanceUID", ""))
        except Exception as e:  # noqa: BLE001 - undecodable data set: answer with a failure status
            log.warning("C-STORE from %s refused: cannot decode the data set (%s)", sender, type(e).__name__)
            return _STATUS_CANNOT_UNDERSTAND
        problem = instance_problem(ds, self.max_instance_bytes)
        series = self._pseudo(series_uid) if series_uid else "?"
        instance = self._pseudo(sop_uid) if sop_uid else "?"
        if problem:
            log.warning("C-STORE from %s: instance %s of series %s refused: %s", sender, instance, series, problem)
            if series_uid and self.outbox.state(series) != "generated":
                self.outbox.received(series, refused=True)
                self._touch(series, event.assoc)
            return _STATUS_CANNOT_UNDERSTAND
        path = self.storage_dir / series / f"{instance}.dcm"
        try:
            _write_private(_private_dir(path.parent) / path.name, event.encoded_dataset())
        except OSError as e:
            log.error("C-STORE: cannot write instance %s of series %s: %s", instance, series, type(e).__name__)
            return _STATUS_OUT_OF_RESOURCES
        if "PixelData" in ds and self.outbox.state(series) != "generated":
            self.outbox.received(series)
            self._touch(series, event.assoc)
            log.debug("C-STORE from %s: instance %s of series %s stored", sender, instance, series)
        else:
            log.info(
                "stored instance %s of series %s (not analyzed: no pixel data or a medlens result)", instance, series
            )
        return _STATUS_SUCCESS

    def _touch(self, series: str, assoc) -> None:
        with self._lock:
            pending = self._pending.setdefault(series, _Pending(last=time.monotonic()))
            pending.last = time.monotonic()
            pending.open.add(assoc)

    # ----------------------------------------------------------------------------------------
    # series completion, analysis, sending, retention
    # ----------------------------------------------------------------------------------------
    def _watch(self) -> None:
        tick = min(0.2, self.quiet_period / 4)
        prune_every = min(60.0, max(tick, self.retention_hours * 3600 / 4))
        next_prune = time.monotonic()
        while not self._stop.wait(tick):
            now = time.monotonic()
            with self._lock:
                due = [
                    s
                    for s, p in self._pending.items()
                    if now - p.last >= self.quiet_period and not p.open and s not in self._running
                ]
                for series in due:
                    del self._pending[series]
                    self._running.add(series)
            for series in due:
                log.info(
                    "series %s complete (senders closed, no new instance for %.1f s): analyzing",
                    series,
                    self.quiet_period,
                )
                self._executor.submit(self._process_safely, series)
            if now >= next_prune:
                next_prune = now + prune_every
                self._prune()

    def _send_loop(self) -> None:
        while not self._stop.wait(0.5):
            if self.pacs is not None and self.outbox.unsent():
                self._flush()

    def _flush(self) -> None:
        try:
            sent = self.outbox.send_due(self.pacs)
        except Exception as e:  # noqa: BLE001 - the outbox keeps what was not sent
            log.error("sending results to %s failed: %s", self.pacs, f"{type(e).__name__}: {e}".splitlines()[0])
            return
        if sent:
            log.info("%d result instance(s) acknowledged by %s; %d waiting", sent, self.pacs, self.outbox.unsent())

    def _prune(self) -> None:
        with self._lock:
            busy = set(self._pending) | self._running
        for series in self.outbox.expired(time.time() - self.retention_hours * 3600):
            if series in busy or self.outbox.unsent(series):
                continue
            shutil.rmtree(self.storage_dir / series, ignore_errors=True)
            shutil.rmtree(self.storage_dir / "results" / series, ignore_errors=True)
            self.outbox.mark_pruned(series)
            log.info("series %s: received instances deleted (retention %g h)", series, self.retention_hours)

    def _process_safely(self, series: str) -> None:
        result = None
        try:
            result = self._process(series)
        except Exception as e:  # noqa: BLE001 - one bad series must not stop the node
            result = NodeResult(
                series=series,
                instances=0,
                error=self._redactor.redact(f"{type(e).__name__}: {e}".splitlines()[0][:300]),
            )
            log.error("series %s: analysis failed: %s", series, result.error)
        finally:
            with self._lock:
                self._running.discard(series)
                if result is not None:
                    self.results.append(result)
                self._results_changed.notify_all()

    def _process(self, series: str) -> NodeResult | None:
        files = sorted((self.storage_dir / series).glob("*.dcm"))
        digest = hashlib.sha256("\n".join(f.name for f in files).encode()).hexdigest()
        answered, refused, last_sr = self.outbox.answer_of(series)
        result = NodeResult(series=series, instances=len(files), refused=refused, supersedes=last_sr is not None)
        if digest == answered:
            self.outbox.record_unchanged(series)
            log.info(
                "series %s complete again with the %d instances already answered: not sent again", *(series, len(files))
            )
            return None
        datasets = [ds for ds in (pydicom.dcmread(f) for f in files) if "PixelData" in ds]
        if not datasets:
            self.outbox.record_unchanged(series)
            raise ValueError(f"no instance to analyze ({refused} refused as corrupt)")
        analysis = self.analyze(datasets)
        pred: Prediction = analysis.prediction
        sources = list(getattr(analysis, "sources", None) or datasets)
        result.prediction_id, result.finding = pred.id, pred.finding

        previous = [_reference(last_sr)] if last_sr else None
        answers = analysis.dicom_results(previous_versions=previous)
        if analysis.mask is not None:  # a segmentation: the SEG (series 9903) and the SR referencing it (9904)
            seg, sr = answers
            objects = {"seg": seg, "sr": sr}
            result.seg_sop_instance_uid = str(seg.SOPInstanceUID)
        else:  # the SR (series 9901) and the overlay's Secondary Capture
            (sr,) = answers
            rgb, shown = overlay_for_result(analysis)
            sc = secondary_capture(rgb, pred, shown, series_number=SC_SERIES_NUMBER)
            objects = {"sr": sr, "sc": sc}
            result.sc_sop_instance_uid = str(sc.SOPInstanceUID)
        if previous:
            sr.SeriesDescription = "medlens AI result (supersedes an earlier result)"
        for obj in objects.values():
            self.outbox.mark_generated(self._pseudo(str(obj.SeriesInstanceUID)))
        result.sr_sop_instance_uid = str(sr.SOPInstanceUID)

        out = _private_dir(_private_dir(self.storage_dir / "results") / series)
        outputs = {}
        for name, obj in objects.items():
            path = out / f"{pred.id}-{name}.dcm"
            _write_private(path, _encode(obj))
            outputs[str(obj.SOPInstanceUID)] = path
        result.outputs = list(outputs.values())

        if self.audit is not None:
            self.audit.record(
                prediction_id=pred.id,
                input_hash=pred.source.input_sha256,
                input_ids_hashed=[hash_identifier(str(ds.SOPInstanceUID), self.key) for ds in sources],
                model=pred.model,
                model_sha256=pred.model_sha256,
                output=audit_output(pred, self.key),
                client=f"dicom:{self.ae_title}",
            )
        self.outbox.record_answer(series, digest, _sr_ref(sr), outputs)
        if pred.out_of_scope:
            answer = "not assessed, referred: outside the model's scope (" + ", ".join(
                r["check"] for r in pred.out_of_scope
            )
            answer += ")"
        else:
            answer = f"{pred.finding} p={pred.confidence:.3f}{' (abstained)' if pred.abstain else ''}"
        log.info(
            "series %s (%d instances%s): %s%s",
            series,
            len(sources),
            f", {refused} refused as corrupt" if refused else "",
            answer,
            "; supersedes the earlier result of this series" if previous else "",
        )
        if self.pacs is not None:
            self._flush()
            result.stored = all(self.outbox.is_sent(uid) for uid in outputs)
            if result.stored:
                log.info("series %s: %s stored to %s", series, " and ".join(o.upper() for o in objects), self.pacs)
            else:
                log.warning(
                    "series %s: results queued in the outbox, %s has not acknowledged them yet", series, self.pacs
                )
        return result

    def wait_for_results(self, count: int = 1, timeout: float = 60.0) -> list[NodeResult]:
        """Block until at least ``count`` series were processed; raises TimeoutError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self._results_changed:
            while len(self.results) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self.results)} of {count} series processed after {timeout:.0f} s")
                self._results_changed.wait(left)
            return list(self.results)


def _sr_ref(sr: Dataset) -> dict[str, str]:
    keys = ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID")
    return {k: str(getattr(sr, k)) for k in keys}


def _reference(ref: dict[str, str]) -> Dataset:
    """A stand-in of an earlier SR holding what a Predecessor Documents Sequence needs."""
    ds = Dataset()
    for k, v in ref.items():
        setattr(ds, k, v)
    return ds


def audit_output(pred: Prediction, key: str) -> dict[str, Any]:
    """The prediction as JSON for the audit log, with study/series/instance UIDs replaced by keyed hashes."""
    out = pred.to_json()
    src = out.get("source", {})
    for name in ("study_instance_uid", "series_instance_uid"):
        if src.get(name):
            src[name] = hash_identifier(str(src[name]), key)
    src["sop_instance_uids"] = [hash_identifier(str(u), key) for u in src.get("sop_instance_uids") or []]
    return out
