"""The medlens DICOM node: a pynetdicom C-ECHO / C-STORE SCP that analyzes each series it receives.

How it works
------------
* **Who may connect.** ``allowed_calling_aets`` is an allow-list of calling AE titles; an
  association from any other AE title is rejected (A-ASSOCIATE-RJ, "calling AE title not
  recognised", via pynetdicom's ``require_calling_aet``). ``None`` accepts any AE title.
* **Receiving.** Every C-STORE'd instance is written, as received (file meta included), to
  ``storage_dir/<series pseudonym>/<instance pseudonym>.dcm``; directory and file names are
  keyed hashes, never UIDs or names. Instances without pixel data (an SR, a KO...) and instances
  of series this node produced itself are stored but not analyzed.
* **When is a series complete?** DICOM C-STORE has no "end of series" message, so the node uses
  a *quiet period*: a series counts as complete when no new instance of it has arrived for
  ``quiet_period`` seconds (default 5 s; tests use ~1-2 s). A sender that pauses longer than
  that in the middle of a series makes the node analyze the part received so far; instances
  that arrive later start a new quiet period and the series is analyzed again, as a whole
  (every instance of it on disk), giving a second result.
* **Analysis.** A worker thread reads the series' files and calls ``analyze(datasets)``, which
  returns a PredictionResult-like object (``.prediction``, ``.sources``, ``.display_image``;
  see ``medlens.serving.predictor``). From it the node builds the DICOM SR
  (:func:`medlens.serving.sr.structured_report`, series number 9901) and a Secondary Capture of
  the heatmap overlay (:func:`medlens.serving.overlay.secondary_capture`, series 9902), both new
  series in the source study, keeps copies under ``storage_dir/results/``, records the
  prediction in the :class:`~medlens.serving.audit.AuditLog` (before sending anything) and
  C-STOREs SR and SC to the configured :class:`~medlens.serving.pacs.PacsTarget`.
* **Logs** name series and instances only by keyed pseudonyms
  (:func:`medlens.data.deid.pseudonym`) and PHI-free summaries
  (:func:`medlens.data.deid.phi_free_summary`); patient names, IDs and UIDs are never logged.
  The pseudonym key is ``pseudonym_key``, else ``$MEDLENS_PSEUDONYM_KEY``, else a random key
  created once in ``storage_dir/.pseudonym_key`` (so pseudonyms are stable per installation).
  Libraries print UIDs too (pynetdicom at DEBUG, highdicom at INFO), so :meth:`DicomNode.start`
  raises those loggers to a level without identifiers (:func:`quiet_library_loggers`).
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from medlens.data.deid import phi_free_summary, pseudonym
from medlens.inference.prediction import Prediction
from medlens.serving.audit import AuditLog, hash_identifier
from medlens.serving.overlay import overlay_for_result, secondary_capture
from medlens.serving.pacs import PacsTarget
from medlens.serving.sr import structured_report

log = logging.getLogger("medlens.dicom_node")

SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
_STATUS_SUCCESS = 0x0000
_STATUS_CANNOT_UNDERSTAND = 0xC000  # "Error: cannot understand" (missing UIDs)
_STATUS_OUT_OF_RESOURCES = 0xA700


# Library loggers whose messages below the given level name UIDs of the data they handle.
LIBRARY_LOG_LEVELS = {"pynetdicom": logging.INFO, "highdicom": logging.WARNING}


def quiet_library_loggers() -> None:
    """Raise pynetdicom and highdicom loggers to levels whose messages hold no identifiers."""
    for name, level in LIBRARY_LOG_LEVELS.items():
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < level:
            logger.setLevel(level)


@dataclass
class NodeResult:
    """What happened to one analyzed series (identifiers pseudonymized)."""

    series: str  # series pseudonym
    instances: int
    prediction_id: str | None = None
    finding: str | None = None
    sr_sop_instance_uid: str | None = None  # UIDs of the objects medlens created (no PHI)
    sc_sop_instance_uid: str | None = None
    outputs: list[Path] = field(default_factory=list)
    stored: bool = False  # sent to the PACS
    error: str | None = None


@dataclass
class _Pending:
    last: float  # time.monotonic() of the last instance received
    count: int = 0


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
    ):
        if analyze is None:
            raise ValueError("DicomNode needs an analyze(datasets) callable")
        if allowed_calling_aets is not None and not allowed_calling_aets:
            raise ValueError("allowed_calling_aets is empty: pass None to accept any calling AE title")
        if quiet_period <= 0:
            raise ValueError(f"quiet_period must be positive, got {quiet_period}")
        self.ae_title = ae_title
        self.host = host
        self.port = int(port)
        self.allowed_calling_aets = set(allowed_calling_aets) if allowed_calling_aets is not None else None
        self.analyze = analyze
        self.pacs = pacs
        self.storage_dir = Path(storage_dir)
        self.audit = audit
        self.quiet_period = float(quiet_period)
        self.timeout = float(timeout)
        self.workers = int(workers)
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.key = pseudonym_key or os.environ.get("MEDLENS_PSEUDONYM_KEY") or self._installation_key()
        self.results: list[NodeResult] = []
        self._pending: dict[str, _Pending] = {}
        self._running: set[str] = set()
        self._generated_series: set[str] = set()
        self._lock = threading.Lock()
        self._results_changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._server = None
        self._watcher: threading.Thread | None = None
        self._executor: ThreadPoolExecutor | None = None

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
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        if self.allowed_calling_aets is not None:
            ae.require_calling_aet = sorted(self.allowed_calling_aets)
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ACCEPTED, self._on_accepted),
        ]
        self._stop.clear()
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="medlens-analyze")
        self._server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        self.port = int(self._server.server_address[1])
        self._watcher = threading.Thread(target=self._watch, name="medlens-series-watch", daemon=True)
        self._watcher.start()
        log.info(
            "DICOM node %s listening on %s:%d (allow-list: %s, quiet period %.1f s)",
            self.ae_title,
            self.host,
            self.port,
            "any" if self.allowed_calling_aets is None else sorted(self.allowed_calling_aets),
            self.quiet_period,
        )
        return self

    def stop(self) -> None:
        """Stop listening, then wait for analyses already started (series still in their quiet period are dropped)."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._watcher is not None:
            self._watcher.join(timeout=5)
            self._watcher = None
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
        log.warning("association rejected from %s (not on the allow-list)", event.assoc.requestor.ae_title)

    def _on_echo(self, event) -> int:
        log.info("C-ECHO from %s", event.assoc.requestor.ae_title)
        return _STATUS_SUCCESS

    def _on_store(self, event) -> int:
        try:
            ds = event.dataset
        except Exception:  # noqa: BLE001 - undecodable data set: answer with a failure status
            log.warning("C-STORE from %s: cannot decode the data set", event.assoc.requestor.ae_title)
            return _STATUS_CANNOT_UNDERSTAND
        series_uid, sop_uid = str(ds.get("SeriesInstanceUID", "")), str(ds.get("SOPInstanceUID", ""))
        if not series_uid or not sop_uid:
            log.warning(
                "C-STORE from %s: instance without Series/SOP Instance UID refused", event.assoc.requestor.ae_title
            )
            return _STATUS_CANNOT_UNDERSTAND
        folder = self.storage_dir / self._pseudo(series_uid)
        path = folder / f"{self._pseudo(sop_uid)}.dcm"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".part")
            tmp.write_bytes(event.encoded_dataset())
            tmp.replace(path)
        except OSError as e:
            log.error(
                "C-STORE: cannot write instance %s of series %s: %s",
                self._pseudo(sop_uid),
                self._pseudo(series_uid),
                type(e).__name__,
            )
            return _STATUS_OUT_OF_RESOURCES
        analyzable = "PixelData" in ds and series_uid not in self._generated_series
        with self._lock:
            if analyzable:
                pending = self._pending.setdefault(series_uid, _Pending(last=time.monotonic()))
                pending.last = time.monotonic()
                pending.count += 1
        log.debug("C-STORE from %s: %s", event.assoc.requestor.ae_title, phi_free_summary(ds, key=self.key))
        if not analyzable:
            log.info(
                "stored instance %s of series %s (not analyzed: no pixel data or a medlens result)",
                self._pseudo(sop_uid),
                self._pseudo(series_uid),
            )
        return _STATUS_SUCCESS

    # ----------------------------------------------------------------------------------------
    # series completion and analysis
    # ----------------------------------------------------------------------------------------
    def _watch(self) -> None:
        tick = min(0.2, self.quiet_period / 4)
        while not self._stop.wait(tick):
            now = time.monotonic()
            with self._lock:
                due = [
                    uid
                    for uid, p in self._pending.items()
                    if now - p.last >= self.quiet_period and uid not in self._running
                ]
                for uid in due:
                    del self._pending[uid]
                    self._running.add(uid)
            for uid in due:
                log.info(
                    "series %s complete (no new instance for %.1f s): analyzing", self._pseudo(uid), self.quiet_period
                )
                self._executor.submit(self._process_safely, uid)

    def _process_safely(self, series_uid: str) -> None:
        files = sorted((self.storage_dir / self._pseudo(series_uid)).glob("*.dcm"))
        result = NodeResult(series=self._pseudo(series_uid), instances=len(files))
        try:
            self._process(files, result)
        except Exception as e:  # noqa: BLE001 - one bad series must not stop the node
            result.error = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            log.error("series %s: analysis or sending failed: %s", result.series, result.error)
        finally:
            with self._lock:
                self._running.discard(series_uid)
                self.results.append(result)
                self._results_changed.notify_all()

    def _process(self, files: Sequence[Path], result: NodeResult) -> None:
        datasets = [pydicom.dcmread(f) for f in files]
        datasets = [ds for ds in datasets if "PixelData" in ds]
        analysis = self.analyze(datasets)
        pred: Prediction = analysis.prediction
        sources = list(getattr(analysis, "sources", None) or datasets)
        result.prediction_id, result.finding = pred.id, pred.finding

        sr = structured_report(pred, sources, series_number=SR_SERIES_NUMBER)
        rgb, shown = overlay_for_result(analysis, sources)
        sc = secondary_capture(rgb, pred, shown, series_number=SC_SERIES_NUMBER)
        with self._lock:
            self._generated_series.update({str(sr.SeriesInstanceUID), str(sc.SeriesInstanceUID)})
        result.sr_sop_instance_uid, result.sc_sop_instance_uid = str(sr.SOPInstanceUID), str(sc.SOPInstanceUID)

        out = self.storage_dir / "results" / result.series
        out.mkdir(parents=True, exist_ok=True)
        for name, obj in (("sr", sr), ("sc", sc)):
            path = out / f"{pred.id}-{name}.dcm"
            obj.save_as(path, enforce_file_format=True)
            result.outputs.append(path)

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
        log.info(
            "series %s (%d instances): %s p=%.3f%s",
            result.series,
            len(sources),
            pred.finding,
            pred.confidence,
            " (abstained)" if pred.abstain else "",
        )

        if self.pacs is not None:
            self.pacs.store([sr, sc])
            result.stored = True
            log.info("series %s: SR and overlay SC stored to %s", result.series, self.pacs)

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


def audit_output(pred: Prediction, key: str) -> dict[str, Any]:
    """The prediction as JSON for the audit log, with study/series/instance UIDs replaced by keyed hashes."""
    out = pred.to_json()
    src = out.get("source", {})
    for name in ("study_instance_uid", "series_instance_uid"):
        if src.get(name):
            src[name] = hash_identifier(str(src[name]), key)
    src["sop_instance_uids"] = [hash_identifier(str(u), key) for u in src.get("sop_instance_uids") or []]
    return out
