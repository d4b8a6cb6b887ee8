"""DICOM node under load, with a real Orthanc on loopback as the PACS (issue 10).

Scenarios (each on a fresh node storage; the node runs in its own process, as in production):

* ``load`` -- ``--senders`` simultaneous senders (default 50), each a copy of ``ct_series_17`` with
  new UIDs in one association: every instance accepted, every series answered exactly once
  (one SR and one overlay SC per study in Orthanc).
* ``pacs-down`` -- half the senders, then Orthanc stopped for ``--pacs-down-minutes`` while the
  other half send, then Orthanc restarted: every result arrives, none twice.
* ``kill`` -- senders pause mid-series; the node is SIGKILLed; it restarts and the senders send
  the rest: every instance acknowledged before the kill is on disk, every series is answered.

The model is an ELM trained in seconds on ``synthetic:nodule3d@32`` (accepts CT volumes).
``python -m benchmarks.bench_dicom_node [--scenarios load,pacs-down,kill] [--record]``
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pydicom
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDLENS_DATA", ROOT.parent / "shared" / "data"))
SERIES_DIR = DATA / "dicom" / "ct_series_17"
QUIET = 3.0


def bundle(work: Path) -> Path:
    out = work / "bundle"
    if not (out / "manifest.json").is_file():
        cmd = [str(Path(sys.executable).parent / "medlens"), "train", "synthetic:nodule3d@32", "--model", "elm"]
        subprocess.run([*cmd, "--out", str(out), "--max-samples", "24"], check=True, capture_output=True)
    return out


def copy_series(template: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """The template series with new Study, Series and SOP Instance UIDs."""
    study, series = generate_uid(), generate_uid()
    out = []
    for ds in template:
        ds = copy.deepcopy(ds)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        out.append(ds)
    return out


class Sender(threading.Thread):
    """One modality: sends its series in one association; ``pause_after`` instances, then waits for ``go``."""

    def __init__(self, name: str, port: int, series, pause_after: int | None = None):
        super().__init__(daemon=True)
        self.aet, self.port, self.series, self.pause_after = name, port, series, pause_after
        self.acked: list[str] = []
        self.statuses: list[int] = []
        self.rejected = False
        self.go = threading.Event()

    def run(self) -> None:
        ae = AE(ae_title=self.aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", self.port, ae_title="MEDLENS")
        if not assoc.is_established:
            self.rejected = True
            return
        for i, ds in enumerate(self.series):
            if self.pause_after is not None and i == self.pause_after:
                self.go.wait(600)
            if not assoc.is_established:
                return
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code is None:
                return
            self.statuses.append(code)
            if code == 0:
                self.acked.append(str(ds.SOPInstanceUID))
        assoc.release()


def start_node(storage: Path, port: int, pacs_port: int, model: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "benchmarks.bench_dicom_node", "--node", str(storage), str(port), str(pacs_port)]
    proc = subprocess.Popen([*cmd, str(model)], cwd=ROOT, stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ae = AE(ae_title="PROBE")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", port, ae_title="MEDLENS")
        if assoc.is_established:
            assoc.release()
            return proc
        time.sleep(0.5)
    raise RuntimeError(f"the node did not start: {log.read_text()[-2000:]}")


def run_node(storage: str, port: str, pacs_port: str, model: str) -> None:
    """The node process: a DicomNode with the real predictor, until killed."""
    import logging

    from medlens.serving.dicom_node import DicomNode
    from medlens.serving.pacs import PacsTarget
    from medlens.serving.predictor import Predictor

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    predictor = Predictor.from_run(Path(model))
    node = DicomNode(
        "MEDLENS",
        "127.0.0.1",
        int(port),
        None,
        lambda datasets: predictor.predict_dicom(datasets, explain=True),
        PacsTarget("ORTHANC", "127.0.0.1", int(pacs_port), timeout=10),
        storage,
        quiet_period=QUIET,
        pseudonym_key="bench-key",
        workers=2,
        retry_max=30.0,
    )
    node.start()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    node.stop()


def orthanc_results(http: httpx.Client) -> dict[str, dict[str, int]]:
    """{StudyInstanceUID: {"SR": n, "OT": n}} of the result instances in Orthanc."""
    out: dict[str, dict[str, int]] = {}
    for modality in ("SR", "OT"):
        query = {"Level": "Instance", "Query": {"Modality": modality}, "Expand": True, "RequestedTags": []}
        for inst in http.post("/tools/find", json=query).json():
            study = http.get(f"/instances/{inst['ID']}/tags?simplify").json()["StudyInstanceUID"]
            out.setdefault(study, {"SR": 0, "OT": 0})[modality] += 1
    return out


def wait_results(http, studies: set[str], timeout: float) -> tuple[dict, float]:
    start = time.monotonic()
    while True:
        found = orthanc_results(http)
        if all(found.get(s, {}).get("SR", 0) >= 1 and found.get(s, {}).get("OT", 0) >= 1 for s in studies):
            time.sleep(2 * QUIET + 2)  # anything sent twice would come now
            return orthanc_results(http), time.monotonic() - start
        if time.monotonic() - start > timeout:
            return found, float("nan")
        time.sleep(2)


def summary(found: dict, studies: set[str]) -> dict:
    answered = [s for s in studies if found.get(s, {}).get("SR")]
    twice = [s for s in studies if found.get(s, {}).get("SR", 0) > 1 or found.get(s, {}).get("OT", 0) > 1]
    return {"series": len(studies), "answered": len(answered), "answered more than once": len(twice)}


def scenario(name: str, args, work: Path, model: Path, template, orthanc_factory) -> dict:
    from tests.serving.orthanc_fixture import free_port

    base = work / name
    shutil.rmtree(base, ignore_errors=True)
    pacs = orthanc_factory(base / "orthanc")
    storage, port, log = base / "node", free_port(), base / "node.log"
    node = start_node(storage, port, pacs.dicom_port, model, log)
    http = pacs.client()
    t0 = time.monotonic()
    row: dict = {"scenario": name}
    try:
        if name == "load":
            senders = [Sender(f"SENDER{i:02d}", port, copy_series(template)) for i in range(args.senders)]
            for s in senders:
                s.start()
            for s in senders:
                s.join()
            row["send s"] = round(time.monotonic() - t0, 1)
        elif name == "pacs-down":
            half = args.senders // 2
            first = [Sender(f"SENDER{i:02d}", port, copy_series(template)) for i in range(half)]
            for s in first:
                s.start()
            for s in first:
                s.join()
            pacs.stop()
            second = [Sender(f"LATE{i:02d}", port, copy_series(template)) for i in range(args.senders - half)]
            for s in second:
                s.start()
            for s in second:
                s.join()
            time.sleep(args.pacs_down_minutes * 60)
            pacs = orthanc_factory(base / "orthanc", restart=pacs)
            http = pacs.client()
            senders = first + second
            row["PACS down min"] = args.pacs_down_minutes
        else:  # kill
            senders = [Sender(f"SENDER{i:02d}", port, copy_series(template), pause_after=9) for i in range(10)]
            for s in senders:
                s.start()
            while sum(len(s.acked) for s in senders) < 90:
                time.sleep(0.1)
            acked_before = {uid for s in senders for uid in s.acked}
            node.send_signal(signal.SIGKILL)
            node.wait()
            for s in senders:
                s.go.set()
                s.join()
            node = start_node(storage, port, pacs.dicom_port, model, log)
            key = "bench-key"
            from medlens.data.deid import pseudonym

            on_disk = {p.stem for p in storage.rglob("*.dcm")}
            row["acked before kill"] = len(acked_before)
            row["acked and lost"] = sum(pseudonym(uid, key) not in on_disk for uid in acked_before)
            rest = []
            for s in senders:
                left = [ds for ds in s.series if str(ds.SOPInstanceUID) not in s.acked]
                rest.append(Sender(s.aet, port, left))
            for s in rest:
                s.start()
            for s in rest:
                s.join()
            for s, r in zip(senders, rest):
                s.acked += r.acked
                s.statuses += r.statuses
        row["rejected associations"] = sum(s.rejected for s in senders)
        row["instances accepted"] = f"{sum(len(s.acked) for s in senders)} / {sum(len(s.series) for s in senders)}"
        studies = {str(s.series[0].StudyInstanceUID) for s in senders}
        found, took = wait_results(http, studies, timeout=args.timeout)
        row.update(summary(found, studies))
        row["results complete after s"] = round(time.monotonic() - t0, 1) if took == took else "timeout"
        db = sqlite3.connect(storage / "node.sqlite")
        row["answers (node journal)"] = db.execute("SELECT SUM(answers) FROM series WHERE state='answered'").fetchone()[
            0
        ]
        row["unsent in outbox"] = db.execute("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0]
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(60)
        pacs.stop()
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--scenarios", default="load,pacs-down,kill")
    parser.add_argument("--senders", type=int, default=50)
    parser.add_argument("--pacs-down-minutes", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=900.0, help="Seconds to wait for all results.")
    parser.add_argument("--work", type=Path, default=Path("/tmp/medlens-bench-dicom-node"))
    parser.add_argument("--record", action="store_true", help="Write the figures into BENCHMARKS.md.")
    args = parser.parse_args()
    if args.node:
        return run_node(*args.node)
    from tests.serving.orthanc_fixture import Orthanc, orthanc_binary, start_orthanc

    if orthanc_binary() is None or not SERIES_DIR.is_dir():
        sys.exit("needs Orthanc (Debian package) and ../shared/data/dicom/ct_series_17")

    def orthanc_factory(workdir: Path, restart: Orthanc | None = None) -> Orthanc:
        if restart is None:
            return start_orthanc(workdir)
        proc = subprocess.Popen(
            [orthanc_binary(), str(workdir / "orthanc.json")], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        server = Orthanc(restart.url, restart.dicom_port, restart.aet, proc, restart.log_path)
        for _ in range(150):
            try:
                if httpx.get(f"{server.url}/system", timeout=2).status_code == 200:
                    return server
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("Orthanc did not restart")

    args.work.mkdir(parents=True, exist_ok=True)
    model = bundle(args.work)
    template = [pydicom.dcmread(p) for p in sorted(SERIES_DIR.glob("*.dcm"))]
    rows = [scenario(n, args, args.work, model, template, orthanc_factory) for n in args.scenarios.split(",")]
    if args.record:
        from benchmarks._record import record_section

        keys = list(dict.fromkeys(k for r in rows for k in r))
        table = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"
        table += "".join("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |\n" for r in rows)
        note = (
            f"Senders: copies of `ct_series_17` (17 CT instances) with new UIDs, one association each; "
            f"node: quiet period {QUIET:g} s, 2 workers, ELM on `synthetic:nodule3d@32` with occlusion maps, "
            "in its own process; PACS: Orthanc 1.10 (Debian) on loopback. 'answered more than once' counts "
            "studies with more than one SR or SC in Orthanc.\n\n"
        )
        record_section("dicom_node", "DICOM node under load (Orthanc as PACS)", note + table)


if __name__ == "__main__":
    main()
