"""The files of one prediction, as ``medlens predict`` writes them (one reader of ``--format``)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from medlens.errors import MedlensError
from medlens.serving.predictor import PredictionResult

FORMATS = ("json", "sr", "fhir", "seg", "nifti")
SEGMENTATION_FORMATS = ("seg", "nifti")  # need a label map: segmentation models only


def write_outputs(
    result: PredictionResult, name: str, *, fmt: str, out: Path | None, explain: bool, durable: bool = True
) -> tuple[dict[str, Any] | None, list[Path]]:
    """Write the outputs of one prediction; returns (document for stdout or None, files written).

    Every file is written whole or not at all (:func:`medlens.runs.atomic_write_bytes`, fsynced
    unless ``durable`` is False); without ``out``, json and fhir are returned for stdout and files
    go to the current folder.
    """
    from medlens.runs import _json_default, atomic_write_bytes

    pred = result.prediction
    written: list[Path] = []
    folder = out if out is not None else Path(".")
    document = None
    if fmt in ("sr", "seg"):
        if not result.sources:
            what = "a DICOM SR" if fmt == "sr" else "a DICOM SEG"
            raise MedlensError(f"--format {fmt} needs DICOM input ({what} references the source images)")
        datasets = [result.dicom_seg()] if fmt == "seg" else result.dicom_results()
        for ds in datasets:
            path = folder / f"{name}.{'seg' if ds.Modality == 'SEG' else 'sr'}.dcm"
            atomic_write_bytes(path, dicom_bytes(ds), durable=durable)
            written.append(path)
    elif fmt == "nifti":
        path = folder / f"{name}.mask.nii.gz"
        atomic_write_bytes(path, gzip.compress(result.mask_nifti().to_bytes(), mtime=0), durable=durable)
        written.append(path)
    else:
        if fmt == "fhir":
            from medlens.serving.fhir import diagnostic_report

            document = diagnostic_report(pred)
            path = folder / f"{name}.fhir.json"
        else:
            document = pred.to_json()
            path = folder / f"{name}.json"
        if out is not None:
            text = json.dumps(document, indent=2, default=_json_default) + "\n"
            atomic_write_bytes(path, text.encode(), durable=durable)
            written.append(path)
            document = None
    if explain and pred.heatmap is not None:
        path = folder / f"{name}.heatmap.png"
        atomic_write_bytes(path, result.overlay_png(), durable=durable)
        written.append(path)
    return document, written


def dicom_bytes(ds: Any) -> bytes:
    """A DICOM dataset as a Part 10 file's bytes (what every download and file of a result holds)."""
    from io import BytesIO

    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
