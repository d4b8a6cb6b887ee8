"""Open any SOURCE string as a :class:`~medlens.data.sample.Dataset`.

One reader per kind, chosen by URI scheme (``medmnist:``, ``synthetic:``) or by what the path is
(``.npz``, ``.csv``, NIfTI, DICOM, an image + mask folder, a folder of class sub-folders). Readers are
imported lazily so that opening one kind never pays for the others' dependencies.

Options follow a path after ``?`` (``chasedb1?annotator=2``): image + mask folders take
``annotator``, NIfTI ``images/`` + ``labels/`` folders take ``labels`` (the class names of the
label values 0, 1, ... joined by commas: ``hippocampus_msd?labels=background,anterior,posterior``),
and every file or folder takes ``modality`` (the imaging modality when the files do not say, e.g.
``?modality=MR`` for NIfTI, which has no such field; it chooses the default normalization); any
other option, or an option on another kind, is refused in one line.
"""

from __future__ import annotations

from pathlib import Path

from medlens.data.sample import Dataset
from medlens.errors import MedlensError, UnknownSourceError

SCHEMES = ("medmnist", "synthetic")
SOURCE_HELP = (
    "a .npz file (MedMNIST layout), medmnist:NAME[@SIZE], a folder of class sub-folders, "
    "an image + mask folder (CHASE_DB1 or HRF layout; FOLDER?annotator=2 for the second annotator), "
    "a CSV manifest, a DICOM file or folder, a NIfTI file or folder (images/ + labels/: "
    "FOLDER?labels=background,NAME,... names the label values), or synthetic:NAME[-seg][@SIZE]"
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

    options: dict[str, str] = {}
    path_text, qmark, query = source.partition("?")
    if qmark and not Path(source).exists():
        source, options = path_text, _options(query, source)
    path = Path(source)
    if not path.exists():
        raise MedlensError("no such file or folder", source)
    modality = options.pop("modality", None)
    dataset = _open_path(path, skip_bad=skip_bad, options=options)
    if modality is not None:
        dataset.modality = modality_option(modality, path)
    return dataset


def modality_option(value: str, path: Path) -> str:
    """``mri`` -> ``MR``: a DICOM modality code (letters and digits, at most 16), upper-case."""
    code = {"MRI": "MR"}.get(value.strip().upper(), value.strip().upper())
    if not (code.isalnum() and len(code) <= 16):
        raise MedlensError(f"modality must be a DICOM modality code such as MR, CT or DX, not '{value}'", path)
    return code


SOURCE_OPTIONS = {
    "annotator": "image + mask folders (CHASE_DB1, HRF)",
    "labels": "NIfTI folders with images/ and labels/",
    "modality": "any file or folder (a DICOM modality code such as MR, CT, DX)",
}
"""Each ``?NAME=VALUE`` option and the kind of source that takes it."""


def _options(query: str, source: str) -> dict[str, str]:
    """``annotator=2`` -> ``{"annotator": "2"}``; unknown or malformed options are one-line errors."""
    from urllib.parse import parse_qsl

    try:
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=True))
    except ValueError:
        raise MedlensError(f"malformed options '?{query}' (expected ?NAME=VALUE[&NAME=VALUE])", source) from None
    unknown = sorted(set(options) - set(SOURCE_OPTIONS))
    if unknown:
        raise MedlensError(f"unknown option(s) {', '.join(unknown)} (known: {', '.join(SOURCE_OPTIONS)})", source)
    return options


def _class_names_option(value: str, path: Path) -> list[str]:
    """``background,anterior,posterior`` -> the names of the label values 0, 1, 2."""
    names = [n.strip() for n in value.split(",")]
    if len(names) < 2 or not all(names):
        raise MedlensError(f"labels must be two or more class names joined by commas, got '{value}'", path)
    if len(set(names)) != len(names):
        raise MedlensError(f"labels names a class twice: '{value}'", path)
    return names


def _open_path(path: Path, *, skip_bad: bool, options: dict[str, str] | None = None) -> Dataset:
    from medlens.data.sources import dicom, folder, manifest, maskfolder, nifti

    options = options or {}
    takes = {"annotator": maskfolder.looks_like_mask_folder, "labels": nifti.looks_like_labelled_folder}
    for option in options:
        if not (path.is_dir() and takes[option](path)):
            raise MedlensError(f"options (?{option}=...) apply only to {SOURCE_OPTIONS[option]}", path)

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
        names = _class_names_option(options["labels"], path) if "labels" in options else None
        return nifti.open_nifti(path, skip_bad=skip_bad, class_names=names)
    if maskfolder.looks_like_mask_folder(path):  # before class folders: HRF's images/, manual1/ look like classes
        annotator = options.get("annotator", "1")
        if not annotator.isdigit():
            raise MedlensError(f"annotator must be 1 or 2, got '{annotator}'", path)
        return maskfolder.open_mask_folder(path, annotator=int(annotator))
    if folder.looks_like_image_folder(path):
        return folder.open_image_folder(path, skip_bad=skip_bad)
    if dicom.looks_like_dicom_folder(path):
        return dicom.open_dicom(path, skip_bad=skip_bad)
    raise UnknownSourceError(
        "cannot tell what this folder holds (expected class sub-folders of images, image + mask files, "
        "NIfTI files, or DICOM files)",
        path,
    )
