"""NIfTI sources: one file, a folder of files, or an ``images/`` + ``labels/`` segmentation set.

* A single ``.nii``/``.nii.gz`` file: one sample, :attr:`Task.NONE`.
* A folder of NIfTI files: one sample per file, :attr:`Task.NONE`.
* A folder with ``images/`` and ``labels/`` (also the Decathlon names ``imagesTr``/``labelsTr``):
  :attr:`Task.SEGMENTATION`; image and label are paired by file name and the label volume is
  loaded into ``Sample.mask``. An image without a label or a label without an image is listed
  by name in ``dataset.problems``; it is never dropped silently and never a crash.
  Class names, in the order of the label values 0, 1, 2, ...: the names the user gives
  (``FOLDER?labels=background,anterior,posterior``, see :mod:`medlens.data.sources`), else the
  ``labels`` of a Medical Segmentation Decathlon ``dataset.json`` next to the folders (MSD's
  ``{"0": "background", "1": "Anterior"}`` or nnU-Net v2's ``{"background": 0, "Anterior": 1}``),
  else the values found in the first few label volumes ("background", "1", "2", ...). The
  modality is dataset.json's ``modality`` when it names one (MSD's ``{"0": "MRI"}`` -> ``MR``),
  else none (NIfTI headers do not carry it; ``?modality=MR`` gives it). Given
  names whose count differs from dataset.json's or from the label values found are a one-line
  error, and so is a dataset.json that cannot be read. A label value outside the classes, or a
  label of another shape, is a one-line error naming the label file when loaded; a label
  whose header has another spacing or affine than its image is kept and its mismatch noted in
  ``Record.extra["mask_geometry"]`` (reported by ``data info``/``audit``).

Pixels are read lazily (see :mod:`medlens.data.imageio` for the axis order: volumes are
(1, z, y, x) with spacing from the header and the affine kept). Headers are read when the
source is opened, so that image/label shape mismatches are found up front.
Hidden files (``.name``, e.g. macOS ``._`` files) are ignored.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medlens.data.imageio import is_nifti_name, read_image_file, read_label_map, read_mask_file
from medlens.data.sample import Dataset, Problem, Record, Sample, Task
from medlens.errors import BadInputError, MedlensError

__all__ = ["is_nifti_name", "looks_like_labelled_folder", "looks_like_nifti_folder", "open_nifti", "NiftiDataset"]

IMAGE_DIRS = ("images", "imagesTr")
LABEL_DIRS = ("labels", "labelsTr")
LABEL_SCAN = 5  # label volumes read for class names when there is no dataset.json


def nifti_stem(name: str) -> str:
    """``case_001.nii.gz`` -> ``case_001``."""
    lower = name.lower()
    return name[: -len(".nii.gz")] if lower.endswith(".nii.gz") else name[: -len(".nii")]


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and is_nifti_name(p.name))


def _find_dir(path: Path, names: tuple[str, ...]) -> Path | None:
    for n in names:
        if (path / n).is_dir():
            return path / n
    return None


def looks_like_nifti_folder(path: Path) -> bool:
    """True for a folder holding NIfTI files, or an ``images/`` folder that does."""
    path = Path(path)
    if not path.is_dir():
        return False
    images = _find_dir(path, IMAGE_DIRS)
    if images is not None and _nifti_files(images):
        return True
    return any(p.is_file() and is_nifti_name(p.name) and not p.name.startswith(".") for p in path.iterdir())


def looks_like_labelled_folder(path: Path) -> bool:
    """True for a folder with NIfTI files in ``images/`` and a ``labels/`` (or ``imagesTr/``, ``labelsTr/``)."""
    path = Path(path)
    return (
        looks_like_nifti_folder(path)
        and _find_dir(path, IMAGE_DIRS) is not None
        and _find_dir(path, LABEL_DIRS) is not None
    )


def open_nifti(path: Path, *, skip_bad: bool = False, class_names: list[str] | None = None) -> "NiftiDataset":
    """Open a NIfTI file, a folder of NIfTI files, or an images/labels folder (see the module doc).

    ``class_names``: the names of the label values 0, 1, ... of an images/labels folder.
    """
    path = Path(path)
    if class_names is not None and not looks_like_labelled_folder(path):
        raise MedlensError("class names apply only to a folder with images/ and labels/", path)
    if path.is_file():
        return _unlabelled(path, [path])
    images_dir = _find_dir(path, IMAGE_DIRS)
    labels_dir = _find_dir(path, LABEL_DIRS)
    if images_dir is not None and labels_dir is not None:
        return _paired(path, images_dir, labels_dir, skip_bad=skip_bad, given=class_names)
    files = _nifti_files(images_dir or path)
    if not files:
        raise MedlensError("no NIfTI files (.nii, .nii.gz) in this folder", path)
    return _unlabelled(path, files)


class NiftiDataset(Dataset):
    """NIfTI volumes read lazily; ``Record.extra`` holds ``image`` (and ``label``) paths."""

    def _load(self, record: Record) -> Sample:
        data = read_image_file(record.extra["image"])
        mask = None
        if "label" in record.extra:
            mask = read_label_map(record.extra["label"], data.array.shape[1:], self.class_names)
        return Sample(
            id=record.id,
            image=data.array,
            label=record.label,
            patient_id=record.patient_id,
            origin=record.origin,
            spacing=data.spacing,
            affine=data.affine,
            mask=mask,
            modality=self.modality,
            meta=data.meta,
        )


def _unlabelled(root: Path, files: list[Path]) -> NiftiDataset:
    dims = _header_dims(files[0])
    records = [
        Record(id=nifti_stem(f.name), label=None, patient_id=nifti_stem(f.name), origin=str(f), extra={"image": str(f)})
        for f in files
    ]
    return NiftiDataset(
        nifti_stem(root.name) if root.is_file() else root.name,
        records,
        task=Task.NONE,
        class_names=[],
        dims=dims,
        uri=str(root),
    )


def _paired(
    root: Path, images_dir: Path, labels_dir: Path, *, skip_bad: bool, given: list[str] | None = None
) -> NiftiDataset:
    images = {nifti_stem(p.name): p for p in _nifti_files(images_dir)}
    labels = {nifti_stem(p.name): p for p in _nifti_files(labels_dir)}
    problems: list[Problem] = []
    for stem in sorted(images.keys() - labels.keys()):
        problems.append(Problem(str(images[stem]), f"image without a label (no {labels_dir.name}/{images[stem].name})"))
    for stem in sorted(labels.keys() - images.keys()):
        problems.append(
            Problem(str(labels[stem]), f"label without an image (no {images_dir.name}/{labels[stem].name})")
        )
    for folder in (images_dir, labels_dir):
        for p in sorted(folder.iterdir()):
            if not p.name.startswith(".") and not (p.is_file() and is_nifti_name(p.name)):
                problems.append(Problem(str(p), "not a NIfTI file; not used"))
    for extra in ("imagesTs",):
        if (root / extra).is_dir():
            problems.append(
                Problem(str(root / extra), f"{len(_nifti_files(root / extra))} unlabelled test image(s); not used")
            )

    records = []
    for stem in sorted(images.keys() & labels.keys()):
        img, lab = images[stem], labels[stem]
        try:
            shape_i, shape_l = _header_shape(img), _header_shape(lab)
            if shape_i[:3] != shape_l[:3]:
                raise BadInputError(f"label shape {shape_l} differs from image shape {shape_i}", lab)
        except BadInputError as e:
            if not skip_bad:
                raise
            problems.append(Problem(e.path or str(img), e.problem))
            continue
        extra = {"image": str(img), "label": str(lab)}
        mismatch = _geometry_mismatch(img, lab)
        if mismatch:
            extra["mask_geometry"] = mismatch  # kept (voxels pair up), reported by data info / audit
        records.append(Record(id=stem, label=None, patient_id=stem, origin=str(img), extra=extra))
    if not records:
        raise MedlensError(f"no image/label pairs in {images_dir.name}/ and {labels_dir.name}/", root)
    dims = _header_dims(Path(records[0].extra["image"]))
    class_names = _class_names(root, [Path(r.extra["label"]) for r in records], given)
    return NiftiDataset(
        root.name,
        records,
        task=Task.SEGMENTATION,
        class_names=class_names,
        dims=dims,
        problems=problems,
        uri=str(root),
        modality=_dataset_json_modality(root / "dataset.json"),
    )


def _header_shape(path: Path) -> tuple[int, ...]:
    import nibabel as nib

    try:
        return tuple(int(s) for s in nib.load(str(path)).shape)
    except Exception as e:  # noqa: BLE001 - nibabel raises several kinds for broken headers
        raise BadInputError(
            f"corrupt image (NIfTI header: {str(e).splitlines()[0] if str(e) else type(e).__name__})", path
        ) from None


def _geometry_mismatch(image: Path, label: Path, tol_mm: float = 1e-3) -> str | None:
    """How the label file's voxel spacing or affine differs from its image's (headers only), or None."""
    import nibabel as nib

    try:
        a, b = nib.load(str(image)), nib.load(str(label))
    except Exception:  # noqa: BLE001 - unreadable headers are reported when the sample is loaded
        return None
    za, zb = np.asarray(a.header.get_zooms()[:3], float), np.asarray(b.header.get_zooms()[:3], float)
    if za.shape != zb.shape or not np.allclose(za, zb, atol=tol_mm):
        return f"label spacing {tuple(round(float(z), 4) for z in zb)} differs from image spacing {tuple(round(float(z), 4) for z in za)}"
    offset = float(np.abs(np.asarray(a.affine) - np.asarray(b.affine)).max())
    if offset > tol_mm:
        return f"label affine differs from image affine (up to {offset:.3g} mm)"
    return None


def _header_dims(path: Path) -> int:
    shape = _header_shape(path)
    return 2 if len(shape) == 2 else 3


def _class_names(root: Path, label_files: list[Path], given: list[str] | None) -> list[str]:
    """The class names (see the module doc); ``label_files`` are every label of the set, of which
    the first :data:`LABEL_SCAN` are read when the values decide."""
    known = _dataset_json_names(root / "dataset.json")
    if given is None:
        if known is not None:
            return known
        return ["background", *[str(i) for i in range(1, _top_label(label_files[:LABEL_SCAN]) + 1)]]
    if known is None:
        _check_count(root, given, label_files)
    elif len(given) != len(known):
        raise MedlensError(
            f"{len(given)} class names given, but dataset.json names {len(known)} ({', '.join(known)})",
            root / "dataset.json",
        )
    return given


def _check_count(root: Path, given: list[str], label_files: list[Path]) -> None:
    """Given names must name the label values 0..top: the first few labels are read, and all of
    them before more names than values found is called an error (a class may be rare)."""
    top = _top_label(label_files[:LABEL_SCAN])
    if len(given) > top + 1:
        top = _top_label(label_files)
    if len(given) != top + 1:
        raise MedlensError(
            f"{len(given)} class names given ({', '.join(given)}), but the label files hold the values 0..{top} "
            f"({top + 1} classes)",
            root,
        )


def _top_label(label_files: list[Path]) -> int:
    """The largest label value of ``label_files`` (at least 1); unreadable files are reported on load."""
    top = 1
    for f in label_files:
        try:
            top = max(top, int(read_mask_file(f).max()))
        except MedlensError:
            continue
    return top


def _dataset_json_modality(meta: Path) -> str | None:
    """The one modality of an MSD ``dataset.json`` (``{"0": "MRI"}`` -> ``MR``); None without the
    file, without ``modality`` or with several channels of different modalities."""
    if not meta.is_file():
        return None
    try:
        meta_json = json.loads(meta.read_text())
        found = meta_json.get("modality") or meta_json.get("channel_names")  # MSD; nnU-Net v2
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None  # the class names' reader reports a broken file
    names = {str(v).strip().upper() for v in found.values()} if isinstance(found, dict) else set()
    if len(names) != 1:
        return None
    name = names.pop()
    return {"MRI": "MR", "T1": "MR", "T2": "MR", "FLAIR": "MR", "ADC": "MR", "T2W": "MR"}.get(name, name)


def _dataset_json_names(meta: Path) -> list[str] | None:
    """The class names of an MSD ``dataset.json``'s ``labels`` by value; None without the file or
    without ``labels``; a file that cannot be read is a one-line error."""
    if not meta.is_file():
        return None
    try:
        labels = json.loads(meta.read_text()).get("labels")
        if labels is None:
            return None
        if not isinstance(labels, dict) or not labels:
            raise TypeError("not an object")
        if all(isinstance(v, int) and not isinstance(v, bool) for v in labels.values()):  # nnU-Net v2
            by_value = {int(v): str(k) for k, v in labels.items()}
        else:  # MSD: {"0": "background", ...}
            by_value = {int(k): str(v) for k, v in labels.items()}
        if min(by_value) < 0:
            raise ValueError("negative label value")
    except (OSError, UnicodeDecodeError, ValueError, TypeError, AttributeError) as e:
        raise MedlensError(f'cannot read the class names (\'labels\': {{"0": "background", ...}}): {e}', meta) from None
    return [by_value.get(i, str(i)) for i in range(max(by_value) + 1)]
