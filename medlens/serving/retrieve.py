"""Query/retrieve from a PACS: find studies and series, fetch their instances, store results back.

Two ways to reach a PACS behind one interface (:class:`Pacs`):

* :class:`DimsePacs` (DICOM networking, pynetdicom): Study Root C-FIND at study, series and image
  level; C-GET with the storage sub-operations on the same association, or with ``move_port``
  C-MOVE to a temporary Storage SCP of ours (the PACS must know our AE title at this host and
  port, e.g. Orthanc's ``DicomModalities``; only the PACS's AE title may store to it); results
  go back with C-STORE (:class:`~medlens.serving.pacs.PacsTarget`).
* :class:`DicomWebPacs` (DICOMweb, dicomweb-client): QIDO-RS, WADO-RS (streamed), STOW-RS.

:meth:`Pacs.retrieve` lists a series' instances first (C-FIND image level / QIDO-RS) and compares
what arrived with that list: failed sub-operations are counted and any instance that did not arrive
is a :class:`~medlens.serving.pacs.PacsError`, never silently dropped. A series may hold at most
``$MEDLENS_MAX_FRAMES`` instances and ``$MEDLENS_MAX_BYTES`` bytes (:mod:`medlens.data.limits`),
checked before retrieving and again as instances arrive.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from medlens.data.limits import Limits
from medlens.errors import MedlensError
from medlens.serving.pacs import NotInPacsError, PacsError, PacsTarget, PacsUnreachableError

# Series of these modalities hold no image a model can read (reports, key objects, states, RT plans).
NON_IMAGE_MODALITIES = frozenset(
    {"SR", "KO", "PR", "SEG", "RTSTRUCT", "RTPLAN", "RTRECORD", "RTDOSE", "REG", "FID", "DOC", "PLAN", "AU", "ECG"}
)
# Offered for C-GET's storage sub-operations: uncompressed first, then what pydicom + pylibjpeg decode.
RETRIEVE_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]
ANY = (("application/dicom", "*"),)  # WADO-RS: instances in the transfer syntax they are stored in
STUDY_FIELDS = (
    "PatientID",
    "AccessionNumber",
    "StudyDate",
    "StudyDescription",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
)
SERIES_FIELDS = ("Modality", "SeriesNumber", "SeriesDescription", "NumberOfSeriesRelatedInstances")
IDENTIFIERS = {"PatientID": "patient id", "AccessionNumber": "accession number", "StudyInstanceUID": "study UID"}


@dataclass(frozen=True)
class StudyInfo:
    """One study as the PACS describes it."""

    study_uid: str
    patient_id: str = ""
    accession: str = ""
    date: str = ""
    description: str = ""
    modalities: tuple[str, ...] = ()


@dataclass(frozen=True)
class SeriesInfo:
    """One series of a study as the PACS describes it."""

    study_uid: str
    series_uid: str
    modality: str = ""
    number: str = ""
    description: str = ""

    @property
    def label(self) -> str:
        """Names the series in messages: its number (else UID) and modality."""
        return f"series {self.number or self.series_uid} ({self.modality or 'no modality'}) of study {self.study_uid}"

    @property
    def name(self) -> str:
        """Names the output files of the series: its UID."""
        return self.series_uid

    @property
    def holds_images(self) -> bool:
        return self.modality.upper() not in NON_IMAGE_MODALITIES


class Pacs(ABC):
    """A PACS to query and retrieve from and to store results into."""

    # -- what each way of reaching the PACS provides ------------------------------------------------------
    @abstractmethod
    def query(self, level: str, filters: dict[str, str], fields: Sequence[str]) -> list[Dataset]:
        """Matches of a Study Root query at ``level`` (STUDY, SERIES, IMAGE) with ``fields`` filled in."""

    @abstractmethod
    def fetch(self, series: SeriesInfo, sop_classes: set[str], intake: "Intake") -> None:
        """Hand every instance of ``series`` to ``intake``; raises :class:`PacsError` on a failed transfer."""

    @abstractmethod
    def store(self, datasets: Sequence[Dataset]) -> None:
        """Store ``datasets`` (e.g. an SR) in the PACS; raises :class:`PacsError` unless all were stored."""

    # -- shared --------------------------------------------------------------------------------------
    def find_studies(
        self, *, patient_id: str | None = None, accession: str | None = None, study_uid: str | None = None
    ) -> list[StudyInfo]:
        """The studies matching every given identifier exactly; :class:`NotInPacsError` when none does."""
        given = {"PatientID": patient_id, "AccessionNumber": accession, "StudyInstanceUID": study_uid}
        filters = {k: v.strip() for k, v in given.items() if v is not None}
        if not filters:
            raise MedlensError("give a patient id, an accession number or a study UID to look for")
        for keyword, value in filters.items():
            if not value or any(c in value for c in "*?\\"):
                raise MedlensError(f"the {IDENTIFIERS[keyword]} must be an exact value (no *, ? or \\), not '{value}'")
        found = [_study(ds) for ds in self.query("STUDY", filters, STUDY_FIELDS)]
        found = [s for s in found if s.study_uid]
        if not found:
            what = " and ".join(f"{IDENTIFIERS[k]} '{v}'" for k, v in filters.items())
            raise NotInPacsError(f"PACS {self} has no study with {what}")
        return found

    def find_series(self, study_uid: str) -> list[SeriesInfo]:
        """The series of a study, in series-number order."""
        found = [_series(ds, study_uid) for ds in self.query("SERIES", {"StudyInstanceUID": study_uid}, SERIES_FIELDS)]
        return sorted((s for s in found if s.series_uid), key=lambda s: (_number(s.number), s.series_uid))

    def retrieve(self, series: SeriesInfo) -> list[Dataset]:
        """Every instance of ``series``; :class:`PacsError` when any listed instance did not arrive."""
        listed = self.query(
            "IMAGE",
            {"StudyInstanceUID": series.study_uid, "SeriesInstanceUID": series.series_uid},
            ("SOPInstanceUID", "SOPClassUID"),
        )
        expected = {str(ds.get("SOPInstanceUID", "")): str(ds.get("SOPClassUID", "")) for ds in listed}
        expected.pop("", None)
        if not expected:
            raise NotInPacsError(f"PACS {self} lists no instances in {series.label}")
        intake = Intake(series.label)
        intake.check_count(len(expected))
        self.fetch(series, {c for c in expected.values() if c}, intake)
        intake.raise_if_refused()
        arrived = {str(ds.get("SOPInstanceUID", "")) for ds in intake.datasets}
        missing = len(set(expected) - arrived)
        if missing:
            unreadable = f", {intake.unreadable} unreadable" if intake.unreadable else ""
            raise PacsError(
                f"PACS {self}: {missing} of {len(expected)} instances of {series.label} did not arrive{unreadable}"
            )
        return intake.datasets


class Intake:
    """Collects retrieved instances within $MEDLENS_MAX_FRAMES instances and $MEDLENS_MAX_BYTES bytes."""

    def __init__(self, what: str):
        self.what = what
        self.limits = Limits.from_env()
        self.datasets: list[Dataset] = []
        self.bytes = 0
        self.unreadable = 0
        self.refused: str | None = None

    def check_count(self, count: int) -> None:
        if count > self.limits.max_frames:
            raise PacsError(
                f"{self.what} is too large: {count} instances, over the limit of {self.limits.max_frames} "
                "(set $MEDLENS_MAX_FRAMES to allow more)"
            )

    def add(self, ds: Dataset, size: int) -> bool:
        """Keep ``ds`` (``size`` bytes encoded) unless a limit is passed; False when refused."""
        if self.refused is None and len(self.datasets) >= self.limits.max_frames:
            self.refused = f"more than {self.limits.max_frames} instances (set $MEDLENS_MAX_FRAMES to allow more)"
        if self.refused is None and self.bytes + size > self.limits.max_bytes:
            self.refused = f"more than {self.limits.max_bytes} bytes (set $MEDLENS_MAX_BYTES to allow more)"
        if self.refused is not None:
            return False
        self.datasets.append(ds)
        self.bytes += size
        return True

    def on_store(self, event) -> int:
        """pynetdicom EVT_C_STORE handler (C-GET and C-MOVE sub-operations): a DIMSE status."""
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            size = len(event.request.DataSet.getvalue())
        except Exception:  # noqa: BLE001 - counted, and the instance is then reported as missing
            self.unreadable += 1
            return 0xC210  # cannot understand
        return 0x0000 if self.add(ds, size) else 0xA700  # out of resources

    def raise_if_refused(self) -> None:
        if self.refused is not None:
            raise PacsError(f"{self.what} is too large: {self.refused}")


def find_series_to_predict(
    pacs: Pacs,
    accepts_modality: Callable[[str], bool],
    *,
    patient_id: str | None = None,
    accession: str | None = None,
    study_uid: str | None = None,
) -> tuple[list[StudyInfo], list[SeriesInfo], list[str]]:
    """(studies found, series a model accepting ``accepts_modality`` can read, why each other series is skipped)."""
    studies = pacs.find_studies(patient_id=patient_id, accession=accession, study_uid=study_uid)
    chosen: list[SeriesInfo] = []
    skipped: list[str] = []
    for study in studies:
        for series in pacs.find_series(study.study_uid):
            if not series.holds_images:
                skipped.append(f"{series.label}: {series.modality} series hold no images")
            elif not accepts_modality(series.modality):
                skipped.append(f"{series.label}: the model does not take {series.modality} images")
            else:
                chosen.append(series)
    return studies, chosen, skipped


def open_pacs(text: str, *, calling_ae_title: str = "MEDLENS", move_port: int = 0, timeout: float = 30.0) -> Pacs:
    """A DICOMweb root URL (http/https) or AET@HOST:PORT (DICOM) -> the :class:`Pacs` it names."""
    if text.startswith(("http://", "https://")):
        if move_port:
            raise MedlensError("C-MOVE (--move-port) needs a DICOM PACS (AET@HOST:PORT), not a DICOMweb URL")
        return DicomWebPacs(text, timeout=timeout)
    target = PacsTarget.parse(text, calling_ae_title=calling_ae_title, timeout=timeout)
    return DimsePacs(target, move_port=move_port)


# ================================================================================================
# DICOM networking (pynetdicom)
# ================================================================================================
class DimsePacs(Pacs):
    """A PACS reached by DICOM networking: C-FIND, C-GET (or C-MOVE to us), C-STORE."""

    def __init__(self, target: PacsTarget, *, move_port: int = 0):
        self.target = target
        self.move_port = move_port

    def __str__(self) -> str:
        return str(self.target)

    def query(self, level: str, filters: dict[str, str], fields: Sequence[str]) -> list[Dataset]:
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

        identifier = Dataset()
        identifier.QueryRetrieveLevel = level
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", *fields):
            setattr(identifier, keyword, "")
        for keyword, value in filters.items():
            setattr(identifier, keyword, value)
        ae = self.target.application_entity()
        ae.add_requested_context(FIND)
        assoc = self.target.associate(ae)
        found: list[Dataset] = []
        try:
            for status, match in assoc.send_c_find(identifier, FIND):
                code = getattr(status, "Status", None)
                if code in (0xFF00, 0xFF01) and match is not None:
                    found.append(match)
                elif code != 0x0000:
                    raise PacsError(f"PACS {self} C-FIND at {level} level failed (status {_hex(code)})")
        finally:
            if assoc.is_established:
                assoc.release()
        return found

    def fetch(self, series: SeriesInfo, sop_classes: set[str], intake: Intake) -> None:
        if self.move_port:
            self._move(series, intake)
        else:
            self._get(series, sop_classes, intake)

    def _get(self, series: SeriesInfo, sop_classes: set[str], intake: Intake) -> None:
        from pynetdicom import build_role, evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET

        if len(sop_classes) > 127:
            raise PacsError(f"{series.label} mixes {len(sop_classes)} SOP classes: too many for one C-GET")
        ae = self.target.application_entity()
        ae.add_requested_context(GET)
        for sop_class in sorted(sop_classes):
            ae.add_requested_context(sop_class, RETRIEVE_SYNTAXES)
        roles = [build_role(sop_class, scp_role=True) for sop_class in sorted(sop_classes)]
        assoc = self.target.associate(ae, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, intake.on_store)])
        try:
            final = _final_status(assoc.send_c_get(_series_identifier(series), GET))
        finally:
            if assoc.is_established:
                assoc.release()
        intake.raise_if_refused()
        self._check(final, "C-GET", series, arrived=len(intake.datasets))

    def _move(self, series: SeriesInfo, intake: Intake) -> None:
        from pynetdicom import StoragePresentationContexts, evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE

        ae = self.target.application_entity()
        ae.add_requested_context(MOVE)
        ae.supported_contexts = StoragePresentationContexts
        ae.require_calling_aet = [self.target.ae_title]  # only the PACS may store to our temporary SCP
        try:
            server = ae.start_server(
                ("", self.move_port), block=False, evt_handlers=[(evt.EVT_C_STORE, intake.on_store)]
            )
        except OSError as e:
            raise PacsError(f"cannot listen on port {self.move_port} for C-MOVE ({e.strerror or e})") from None
        try:
            assoc = self.target.associate(ae)
            try:
                final = _final_status(assoc.send_c_move(_series_identifier(series), self.target.calling_ae_title, MOVE))
            finally:
                if assoc.is_established:
                    assoc.release()
        finally:
            server.shutdown()
        intake.raise_if_refused()
        self._check(final, "C-MOVE", series, arrived=len(intake.datasets))

    def _check(self, final: Dataset | None, what: str, series: SeriesInfo, *, arrived: int) -> None:
        code = getattr(final, "Status", None)
        if code is None:
            raise PacsError(f"PACS {self} {what} of {series.label}: no final answer (aborted or timed out)")
        failed = int(final.get("NumberOfFailedSuboperations", 0) or 0)
        if failed:
            raise PacsError(
                f"PACS {self} {what} of {series.label}: {failed} instance(s) failed to transfer, {arrived} arrived"
            )
        if code not in (0x0000, 0xB000):
            hint = " (does the PACS know our AE title, host and port?)" if what == "C-MOVE" and code == 0xA801 else ""
            raise PacsError(f"PACS {self} {what} of {series.label} failed (status {_hex(code)}){hint}")

    def store(self, datasets: Sequence[Dataset]) -> None:
        self.target.store(datasets)


def _series_identifier(series: SeriesInfo) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES"
    identifier.StudyInstanceUID = series.study_uid
    identifier.SeriesInstanceUID = series.series_uid
    return identifier


def _final_status(responses: Iterable[tuple[Dataset, Dataset | None]]) -> Dataset | None:
    """The last status of a C-GET / C-MOVE (pending ones carry only running counts); None: no answer."""
    final = None
    for status, _identifier in responses:
        final = status if status else None
    return final


def _hex(code) -> str:
    return f"0x{code:04X}" if isinstance(code, int) else "none (no response)"


# ================================================================================================
# DICOMweb (dicomweb-client)
# ================================================================================================
class DicomWebPacs(Pacs):
    """A PACS reached by DICOMweb (QIDO-RS, WADO-RS, STOW-RS) at its root URL."""

    def __init__(self, url: str, *, timeout: float = 30.0):
        from dicomweb_client.api import DICOMwebClient

        self.url = url.rstrip("/")
        self.client = DICOMwebClient(self.url, timeout=timeout)
        self.client.set_http_retry_params(retry=False)

    def __str__(self) -> str:
        return self.url

    def _call(self, work: Callable):
        """Run ``work()`` (a dicomweb-client request), with HTTP problems as one-line PacsErrors."""
        import requests

        try:
            return work()
        except requests.HTTPError as e:
            status = e.response.status_code if e.response is not None else None
            if status == 404:
                raise NotInPacsError(f"PACS {self} has no such study or series") from None
            raise PacsError(f"PACS {self} answered HTTP {status}") from None
        except requests.RequestException as e:
            raise PacsUnreachableError(f"PACS {self} did not answer ({type(e).__name__})") from None

    def query(self, level: str, filters: dict[str, str], fields: Sequence[str]) -> list[Dataset]:
        c = self.client
        if level == "STUDY":
            found = self._call(lambda: c.search_for_studies(fields=list(fields), search_filters=dict(filters)))
        elif level == "SERIES":
            study = filters["StudyInstanceUID"]
            found = self._call(lambda: c.search_for_series(study_instance_uid=study, fields=list(fields)))
        else:
            study, series = filters["StudyInstanceUID"], filters["SeriesInstanceUID"]
            found = self._call(
                lambda: c.search_for_instances(
                    study_instance_uid=study, series_instance_uid=series, fields=list(fields)
                )
            )
        return [Dataset.from_json(item) for item in found]

    def fetch(self, series: SeriesInfo, sop_classes: set[str], intake: Intake) -> None:
        c = self.client
        self._call(lambda: self._take(c.iter_series(series.study_uid, series.series_uid, media_types=ANY), intake))

    def _take(self, instances: Iterator[Dataset], intake: Intake) -> None:
        """Stream instances into ``intake``, stopping at the first it refuses."""
        while True:
            try:
                ds = next(instances)
            except StopIteration:
                return
            except (OSError, ValueError, EOFError, InvalidDicomError) as e:
                raise PacsError(
                    f"PACS {self} sent an instance that is not readable DICOM ({type(e).__name__})"
                ) from None
            pixels = ds.get("PixelData")
            if not intake.add(ds, len(pixels) if isinstance(pixels, bytes) else 0):
                return

    def store(self, datasets: Sequence[Dataset]) -> None:
        answer = self._call(lambda: self.client.store_instances(list(datasets)))
        failed = len(answer.get("FailedSOPSequence", [])) if answer is not None else 0
        if failed:
            raise PacsError(f"PACS {self} did not store {failed} of {len(datasets)} instances (STOW-RS)")

    # -- for the REST service (`serve --pacs-url`) -------------------------------------------------------
    def recent_studies(self, limit: int = 50) -> list[dict]:
        """Up to ``limit`` studies as the web page lists them."""
        fields = ["StudyDescription", "ModalitiesInStudy", "StudyDate"]
        found = self._call(lambda: self.client.search_for_studies(limit=limit, fields=fields))
        out = []
        for item in found:
            study = _study(Dataset.from_json(item))
            out.append(
                {
                    "study_instance_uid": study.study_uid,
                    "date": study.date,
                    "modalities": list(study.modalities),
                    "description": study.description,
                }
            )
        return out

    def fetch_image_series(self, study_uid: str, series_uid: str | None = None) -> list[Dataset]:
        """The instances of one series of the study (``series_uid``, else its largest image series); [] without images."""
        c = self.client
        intake = Intake(f"study {study_uid}")
        if series_uid:
            self._call(lambda: self._take(c.iter_series(study_uid, series_uid, media_types=ANY), intake))
        else:
            self._call(lambda: self._take(c.iter_study(study_uid, media_types=ANY), intake))
        intake.raise_if_refused()
        by_series: dict[str, list[Dataset]] = {}
        for ds in intake.datasets:
            if "PixelData" in ds or "FloatPixelData" in ds:
                by_series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
        return max(by_series.values(), key=len) if by_series else []


# ================================================================================================
# reading query answers
# ================================================================================================
def _study(ds: Dataset) -> StudyInfo:
    modalities = ds.get("ModalitiesInStudy", [])
    if isinstance(modalities, (str, bytes)):
        modalities = [modalities] if modalities else []
    return StudyInfo(
        study_uid=_text(ds, "StudyInstanceUID"),
        patient_id=_text(ds, "PatientID"),
        accession=_text(ds, "AccessionNumber"),
        date=_text(ds, "StudyDate"),
        description=_text(ds, "StudyDescription"),
        modalities=tuple(str(m) for m in modalities if m),
    )


def _series(ds: Dataset, study_uid: str) -> SeriesInfo:
    return SeriesInfo(
        study_uid=_text(ds, "StudyInstanceUID") or study_uid,
        series_uid=_text(ds, "SeriesInstanceUID"),
        modality=_text(ds, "Modality"),
        number=_text(ds, "SeriesNumber"),
        description=_text(ds, "SeriesDescription"),
    )


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("inf")
