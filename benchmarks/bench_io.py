"""I/O throughput: DICOM series -> volume (medlens vs MONAI vs SimpleITK) and npz loading.

DICOM: the same series folders are read by

* medlens  ``medlens.data.dicom.read_dicom(folder)`` (each file parsed once, slices ordered by
  position along the normal, rescale applied, float32);
* MONAI    ``LoadImage(reader="PydicomReader", image_only=True)(folder)``;
* SimpleITK ``ImageSeriesReader`` with ``GetGDCMSeriesFileNames`` (GDCM orders the files).

Each reader gets one warm-up run, then ``--repeats`` timed runs; the median is reported as
slices (files) per second. npz: ``pneumoniamnist.npz`` read fully with ``np.load`` vs medlens's
MedMNIST reader (open, then every split's arrays, then every sample through ``Dataset.load``).

    python benchmarks/bench_io.py [--quick] [--data ../shared/data] [--no-record]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SERIES = {
    "GE EPI 150 files (dcm_qa_nih mr_0004)": "dicom/dcm_qa_nih/In/20180918GE/mr_0004",
    "TCIA MR T1post 22 files": "dicom/tcia_brain_mr_study/11-T1post-18670",
}


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def dicom_readers() -> dict[str, Callable[[Path], np.ndarray]]:
    from medlens.data.dicom import read_dicom

    def medlens_read(folder: Path) -> np.ndarray:
        return read_dicom(folder).array

    def monai_read(folder: Path) -> np.ndarray:
        from monai.transforms import LoadImage

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(LoadImage(reader="PydicomReader", image_only=True)(str(folder)))

    def sitk_read(folder: Path) -> np.ndarray:
        import SimpleITK as sitk

        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
        return sitk.GetArrayFromImage(reader.Execute())

    return {"medlens": medlens_read, "MONAI PydicomReader": monai_read, "SimpleITK ImageSeriesReader": sitk_read}


def bench_dicom(data: Path, repeats: int) -> list[dict]:
    rows = []
    readers = dicom_readers()
    for label, rel in SERIES.items():
        folder = data / rel
        if not folder.is_dir():
            print(f"skip {label}: {folder} absent")
            continue
        n_files = sum(1 for p in folder.iterdir() if p.suffix == ".dcm")
        for name, fn in readers.items():
            try:
                seconds = timed(lambda fn=fn, folder=folder: fn(folder), repeats)
                shape = tuple(fn(folder).shape)
            except Exception as e:  # noqa: BLE001 - a third-party reader failing is a result, not a crash
                rows.append(
                    {"series": label, "reader": name, "files": n_files, "error": f"{type(e).__name__}: {e}"[:120]}
                )
                print(f"{label:40s} {name:28s} failed: {e}")
                continue
            rows.append(
                {
                    "series": label,
                    "reader": name,
                    "files": n_files,
                    "seconds": seconds,
                    "slices_per_s": n_files / seconds,
                    "shape": shape,
                }
            )
            print(f"{label:40s} {name:28s} {seconds * 1000:8.1f} ms  {n_files / seconds:8.0f} slices/s  {shape}")
    return rows


def bench_npz(data: Path, repeats: int) -> list[dict]:
    path = data / "medmnist" / "pneumoniamnist.npz"
    if not path.exists():
        print(f"skip npz: {path} absent")
        return []
    from medlens.data.sources.medmnist import open_medmnist_npz

    def np_full():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def ml_open():
        return open_medmnist_npz(path)

    def ml_arrays():
        ds = open_medmnist_npz(path)
        return [ds.raw_arrays(split) for split in ("train", "val", "test")]

    def ml_samples():
        ds = open_medmnist_npz(path)
        return [ds.load(i).image for i in range(len(ds))]

    n = len(open_medmnist_npz(path))
    cases = [
        ("np.load, every array", np_full),
        ("medlens open (records only)", ml_open),
        ("medlens open + raw_arrays of every split", ml_arrays),
        (f"medlens open + Dataset.load of all {n} samples", ml_samples),
    ]
    rows = []
    for label, fn in cases:
        seconds = timed(fn, repeats)
        rows.append({"case": label, "seconds": seconds})
        print(f"{label:55s} {seconds * 1000:8.1f} ms")
    return rows


def markdown(dicom_rows: list[dict], npz_rows: list[dict], repeats: int) -> str:
    lines = [
        f"Median of {repeats} runs after one warm-up. Slices/s = files in the series / seconds for the whole "
        "series -> array read (listing, parsing, ordering, decoding).",
        "",
        "| series | reader | files | ms | slices/s | array shape |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in dicom_rows:
        if "error" in r:
            lines.append(f"| {r['series']} | {r['reader']} | {r['files']} | - | - | failed: {r['error']} |")
        else:
            lines.append(
                f"| {r['series']} | {r['reader']} | {r['files']} | {r['seconds'] * 1000:.1f} | "
                f"{r['slices_per_s']:.0f} | {r['shape']} |"
            )
    if npz_rows:
        lines += ["", "pneumoniamnist.npz (5856 images of 28x28):", "", "| case | ms |", "|---|---:|"]
        lines += [f"| {r['case']} | {r['seconds'] * 1000:.1f} |" for r in npz_rows]
    lines += [
        "",
        "medlens reads the GE series as 4D (10 time points x 15 slices); MONAI and SimpleITK stack the "
        "150 files as one 3D volume. The machine was shared with other jobs: compare readers within one run.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 timed runs instead of --repeats")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("MEDLENS_DATA", ROOT.parent / "shared" / "data"))
    )
    parser.add_argument("--no-record", action="store_true", help="print only; do not write BENCHMARKS.md")
    args = parser.parse_args(argv)
    repeats = 2 if args.quick else args.repeats
    if not args.data.is_dir():
        print(f"data folder {args.data} not found (set MEDLENS_DATA or --data)")
        return 1
    dicom_rows = bench_dicom(args.data, repeats)
    npz_rows = bench_npz(args.data, repeats)
    if not args.no_record:
        from benchmarks._record import record_section

        record_section("io", "I/O: DICOM series and npz loading", markdown(dicom_rows, npz_rows, repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
