"""Test helpers for the DICOM network tests: a real Orthanc, a collecting Storage SCP, synthetic CT.

* :func:`start_orthanc` runs ``/usr/sbin/Orthanc`` (Debian package) with a temporary JSON
  configuration: storage and index in a temporary folder, free HTTP and DICOM ports, remote
  access off, no authentication, AE title ORTHANC and the given DICOM modalities. It waits
  (bounded) until the REST API answers ``/system``. Orthanc 1.10 has no listen-address option:
  it binds its ports on all interfaces, but with ``RemoteAccessAllowed: false`` its REST API
  answers only 127.0.0.1, and every peer we configure is 127.0.0.1.
* The ``orthanc`` fixture is a factory (the DICOM node's port must be known before Orthanc's
  configuration is written): ``orthanc(modalities={"medlens": ["MEDLENS", "127.0.0.1", port]})``;
  every Orthanc it started is terminated in teardown.
* :class:`CollectingSCP` is a minimal pynetdicom Storage SCP that keeps what it receives.
* :func:`synthetic_ct_series` builds small CT slices with valid headers and a bright blob.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

ORTHANC_BINARY = Path("/usr/sbin/Orthanc")  # Debian package 'orthanc'
ORTHANC_AET = "ORTHANC"

# Fake identifiers: the tests check that none of them ever shows up in a log.
PATIENT_NAME = "Testperson^Erika"
PATIENT_ID = "PID-4711-SECRET"


def orthanc_binary() -> str | None:
    """Path of the Orthanc executable, or None when it is not installed."""
    return str(ORTHANC_BINARY) if ORTHANC_BINARY.exists() else shutil.which("Orthanc")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# synthetic data
# --------------------------------------------------------------------------------------------
def synthetic_ct_series(
    n_slices: int = 4,
    size: int = 32,
    *,
    study_uid: str | None = None,
    blob_slice: int | None = None,
    seed: int = 0,
) -> list[Dataset]:
    """``n_slices`` axial CT Image Storage instances of one new series (16-bit, HU via rescale).

    A bright blob sits on ``blob_slice`` (default: the middle one). Headers hold what a CT image
    needs (patient, study, series, frame of reference, plane geometry, pixel description).
    """
    rng = np.random.default_rng(seed)
    study_uid = study_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), generate_uid()
    blob_slice = n_slices // 2 if blob_slice is None else blob_slice
    yy, xx = np.mgrid[:size, :size]
    blob = ((yy - size * 0.6) ** 2 + (xx - size * 0.4) ** 2) < (size / 6) ** 2
    now = dt.datetime(2024, 5, 17, 10, 30, 0)
    out = []
    for k in range(n_slices):
        hu = rng.normal(0.0, 20.0, (size, size)) - 100.0
        if k == blob_slice:
            hu[blob] = 400.0
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        sop_uid = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
        ds.PatientBirthDate, ds.PatientSex = "19700101", "F"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = "ACC0001", "1", ""
        ds.Modality, ds.Manufacturer = "CT", "medlens-tests"
        ds.SeriesNumber, ds.InstanceNumber = 2, k + 1
        ds.SeriesDescription = "synthetic chest"
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, ""
        ds.PatientPosition = "HFS"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-16.0, -16.0, -20.0 + 2.5 * k]
        ds.SliceLocation = -20.0 + 2.5 * k
        ds.SliceThickness, ds.PixelSpacing = 2.5, [1.0, 1.0]
        ds.KVP, ds.AcquisitionNumber = 120, 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = np.round(hu + 1024).astype(np.int16).tobytes()
        out.append(ds)
    return out


def to_bytes(ds: Dataset) -> bytes:
    """A dataset as a DICOM Part 10 file in memory."""
    from io import BytesIO

    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# a Storage SCP that collects
# --------------------------------------------------------------------------------------------
@dataclass
class CollectingSCP:
    """A pynetdicom Storage SCP on 127.0.0.1 that appends every received dataset to ``received``."""

    ae_title: str = "PACS"
    port: int = 0
    received: list[Dataset] = field(default_factory=list)

    def __post_init__(self):
        self._server = None
        self._arrived = threading.Condition()

    def start(self) -> "CollectingSCP":
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10

        def on_store(event):
            ds = event.dataset
            ds.file_meta = event.file_meta
            with self._arrived:
                self.received.append(ds)
                self._arrived.notify_all()
            return 0x0000

        self._server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
        )
        self.port = self._server.server_address[1]
        return self

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Dataset]:
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self.received)} of {count} datasets arrived in {timeout:.0f} s")
                self._arrived.wait(left)
            return list(self.received)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None


# --------------------------------------------------------------------------------------------
# Orthanc
# --------------------------------------------------------------------------------------------
@dataclass
class Orthanc:
    """A running Orthanc: its REST base URL, DICOM port and process."""

    url: str
    dicom_port: int
    aet: str
    process: subprocess.Popen
    log_path: Path

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_orthanc(
    workdir: Path,
    modalities: dict[str, list] | None = None,
    *,
    plugins: list[str] | None = None,
    startup_timeout: float = 30.0,
) -> Orthanc:
    """Start Orthanc with a temporary configuration in ``workdir``; returns once ``/system`` answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    while dicom_port == http_port:
        dicom_port = free_port()
    config = {
        "Name": "medlens-test",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAet": ORTHANC_AET,
        "DicomCheckCalledAet": False,
        "DicomModalities": modalities or {},
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomScuTimeout": 10,
        "DicomAssociationCloseDelay": 0,
        "HttpThreadsCount": 4,
        "DicomThreadsCount": 2,
        "ConcurrentJobs": 1,
        "SaveJobs": False,
        "StorageCompression": False,
        "Plugins": plugins or [],
    }
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log_path = workdir / "orthanc.log"
    log_file = open(log_path, "wb")
    binary = orthanc_binary()
    if binary is None:
        raise RuntimeError("Orthanc is not installed")
    proc = subprocess.Popen([binary, str(config_path)], stdout=log_file, stderr=subprocess.STDOUT, cwd=workdir)
    log_file.close()  # the child keeps its own descriptor
    server = Orthanc(f"http://127.0.0.1:{http_port}", dicom_port, ORTHANC_AET, proc, log_path)
    deadline = time.monotonic() + startup_timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"Orthanc exited with code {proc.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}"
            )
        try:
            if httpx.get(f"{server.url}/system", timeout=2.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(
                f"Orthanc did not answer /system within {startup_timeout:.0f} s:\n"
                f"{log_path.read_text(errors='replace')[-3000:]}"
            )
        time.sleep(0.2)


@pytest.fixture
def orthanc(tmp_path):
    """Factory: ``orthanc(modalities) -> Orthanc``; skips when Orthanc is not installed; stops it after the test."""
    if orthanc_binary() is None:
        pytest.skip(f"Orthanc is not installed ({ORTHANC_BINARY} absent; Debian package 'orthanc')")
    started: list[Orthanc] = []

    def factory(modalities: dict[str, list] | None = None, **kwargs) -> Orthanc:
        server = start_orthanc(tmp_path / f"orthanc{len(started)}", modalities, **kwargs)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


def synthetic_dx_instance(image: np.ndarray, *, study_uid: str | None = None) -> Dataset:
    """One DX (digital X-ray, for presentation) instance holding ``image`` (2D, values 0..255)."""
    from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation as DigitalXRayImagePresentationStorage

    image = np.clip(np.round(np.asarray(image, dtype=np.float32)), 0, 255).astype(np.uint8)
    ds = synthetic_ct_series(1, size=image.shape[0], study_uid=study_uid)[0]
    for kw in (
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "SliceLocation",
        "SliceThickness",
        "KVP",
        "FrameOfReferenceUID",
        "PositionReferenceIndicator",
        "RescaleIntercept",
        "RescaleSlope",
        "RescaleType",
        "WindowCenter",
        "WindowWidth",
        "PixelSpacing",
    ):
        delattr(ds, kw)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImagePresentationStorage
    ds.Modality, ds.ImageType, ds.SeriesDescription = "DX", ["ORIGINAL", "PRIMARY"], "synthetic chest x-ray"
    ds.PresentationIntentType, ds.ImagerPixelSpacing, ds.PatientOrientation = "FOR PRESENTATION", [0.5, 0.5], ["R", "F"]
    ds.Rows, ds.Columns = image.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = image.tobytes()
    return ds
