"""Open any SOURCE string as a :class:`~medlens.data.sample.Dataset`.

One reader per kind, chosen by URI scheme (``medmnist:``, ``synthetic:``) or by what the path is
(``.npz``, ``.csv``, NIfTI, DICOM, a folder of class sub-folders). Readers are imported lazily so
that opening one kind never pays for the others' dependencies.
"""

from __future__ import annotations

from pathlib import Path

from medlens.data.sample import Dataset
from medlens.errors import MedlensError, UnknownSourceError

SCHEMES = ("medmnist", "synthetic")
SOURCE_HELP = (
    "a .npz file (MedMNIST layout), medmnist:NAME[@SIZE], a folder of class sub-folders, "
    "a CSV manifest, a DICOM file or folder, a NIfTI file or folder, or synthetic:NAME"
)


def open_source(source: str, *, skip_bad: bool = False, seed: int = 0) -> Dataset:
    """Open ``source`` with the reader for its kind.

    ``skip_bad`` lets readers continue past unreadable files; they are listed in
    ``dataset.problems`` (never dropped silently). ``seed`` drives generated sources.
    """
    scheme, sep, rest = source.partition(":")
    if sep and scheme in SCHEMES:
        if scheme == "medmnist":
            from medlens.data.sources.medmnist import open_medmnist_uri

            return open_medmnist_uri(rest, skip_bad=skip_bad)
        from medlens.data.sources.synthetic import open_synthetic

        return open_synthetic(rest, seed=seed)
    if sep and len(scheme) > 1 and not Path(source).exists():
        raise UnknownSourceError(
            f"unknown URI scheme '{scheme}:' (known: {', '.join(s + ':' for s in SCHEMES)})", source
        )

    path = Path(source)
    if not path.exists():
        raise MedlensError("no such file or folder", source)
    return _open_path(path, skip_bad=skip_bad)


def _open_path(path: Path, *, skip_bad: bool) -> Dataset:
    from medlens.data.sources import dicom, folder, manifest, nifti

    name = path.name.lower()
    if path.is_file():
        if name.endswith(".npz"):
            from medlens.data.sources.medmnist import open_medmnist_npz

            return open_medmnist_npz(path)
        if name.endswith(".csv"):
            return manifest.open_csv_manifest(path, skip_bad=skip_bad)
        if nifti.is_nifti_name(name):
            return nifti.open_nifti(path, skip_bad=skip_bad)
        # A DICOM file need not have an ending; anything else is tried as DICOM last.
        return dicom.open_dicom(path, skip_bad=skip_bad)

    if not path.is_dir():
        raise MedlensError("not a file or folder", path)
    if not any(path.iterdir()):
        raise MedlensError("empty folder", path)
    if (path / manifest.MANIFEST_NAME).is_file():  # a folder with manifest.csv is that manifest
        return manifest.open_csv_manifest(path / manifest.MANIFEST_NAME, skip_bad=skip_bad)
    if nifti.looks_like_nifti_folder(path):
        return nifti.open_nifti(path, skip_bad=skip_bad)
    if folder.looks_like_image_folder(path):
        return folder.open_image_folder(path, skip_bad=skip_bad)
    if dicom.looks_like_dicom_folder(path):
        return dicom.open_dicom(path, skip_bad=skip_bad)
    raise UnknownSourceError(
        "cannot tell what this folder holds (expected class sub-folders of images, NIfTI files, or DICOM files)",
        path,
    )
