"""CSV manifests: ``path,label[,patient_id][,split][,mask]`` with a header row.

* ``path`` (required): an image file (PNG/JPEG/TIFF/BMP, NIfTI, DICOM) or DICOM series folder,
  relative to the CSV's folder or absolute. It is also the sample id.
* ``label``: a class name; ``a|b`` lists several labels of one sample, which makes the manifest
  multi-label (:attr:`Task.MULTILABEL`, multi-hot tuples over the sorted label names; an empty
  label is then "no finding"). Labels that are all integers keep numeric order; other class
  names are sorted. Without a ``label`` column the task is :attr:`Task.SEGMENTATION` when there
  is a ``mask`` column, else :attr:`Task.NONE`.
* ``patient_id`` (default: the file stem), ``split`` (train/training, val/valid/validation,
  test/testing, or empty), ``mask`` (a mask image or volume, loaded into ``Sample.mask``).
* any other column (``sex``, ``age``, ``view_position``, ``site``, ...): the record's
  ``attributes`` (see :mod:`medlens.data.attributes`); empty cells are missing.

Class order: a ``classes.txt`` beside the CSV (one class name per line) fixes the class indices;
for a binary task the first line is the negative class (e.g. ``normal``), the second the positive
one. Without it, integers keep numeric order and other names are sorted, except that a binary
task whose class names include a conventional negative name (``normal``, ``negative``,
``healthy``, ``benign``, ``no finding``, ``no_finding``; any case) puts it first: ``abnormal,
normal`` makes ``abnormal`` the positive class (:func:`medlens.data.sample.negative_first`).

A missing file, an empty label, an unknown split or a repeated path is an error naming the CSV,
the line and the path; with ``skip_bad`` the row is listed in ``dataset.problems`` instead.
2D images use the same channel policy as image folders (see :mod:`medlens.data.sources.folder`).
"""

from __future__ import annotations

import csv
import difflib
from pathlib import Path

from medlens.data.imageio import choose_channels, is_nifti_name, is_raster_name, read_image_file, read_label_map
from medlens.data.sample import Dataset, Problem, Record, Sample, Task, negative_first
from medlens.data.sources.folder import split_of
from medlens.errors import BadInputError, MedlensError

COLUMNS = ("path", "label", "patient_id", "split", "mask")
MANIFEST_NAME = "manifest.csv"
CLASSES_NAME = "classes.txt"


def open_csv_manifest(path: Path, *, skip_bad: bool = False) -> "ManifestDataset":
    """Open a CSV manifest (see the module doc)."""
    path = Path(path)
    base = path.parent
    rows = _read_rows(path)
    problems: list[Problem] = []
    has_label = "label" in rows[0][1] if rows else False
    raw_labels = [r.get("label", "").strip() for _, r in rows] if has_label else []
    multilabel = any("|" in v for v in raw_labels)

    kept: list[tuple[int, dict[str, str], Path, Path | None]] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        try:
            rel = row.get("path", "").strip()
            if not rel:
                raise BadInputError(f"line {line}: empty path", path)
            if rel in seen:
                raise BadInputError(f"line {line}: {rel} is listed twice (also on line {seen[rel]})", path)
            file = base / rel
            if not file.exists():
                raise BadInputError(f"line {line}: file not found: {rel}", path)
            mask = None
            if row.get("mask", "").strip():
                mask = base / row["mask"].strip()
                if not mask.exists():
                    raise BadInputError(f"line {line}: mask file not found: {row['mask'].strip()}", path)
            if has_label and not multilabel and not row.get("label", "").strip():
                raise BadInputError(f"line {line}: empty label for {rel}", path)
            if row.get("split", "").strip() and split_of(row["split"].strip()) is None:
                raise BadInputError(
                    f"line {line}: unknown split '{row['split'].strip()}' (expected train, val or test)", path
                )
        except BadInputError as e:
            if not skip_bad:
                raise
            problems.append(Problem(f"{path}:{line}", e.problem))
            continue
        seen[rel] = line
        kept.append((line, row, file, mask))
    if not kept:
        raise MedlensError("no usable rows in this manifest", path)

    task, class_names, encode = _labels(
        [row.get("label", "").strip() for _, row, _, _ in kept] if has_label else None,
        multilabel,
        has_mask=any(m is not None for *_, m in kept),
        order=_class_order(path),
    )
    records = []
    for line, row, file, mask in kept:
        extra = {"path": str(file), "line": line}
        if mask is not None:
            extra["mask"] = str(mask)
        split = row.get("split", "").strip()
        records.append(
            Record(
                id=row["path"].strip(),
                label=encode(row.get("label", "").strip()) if has_label else None,
                patient_id=row.get("patient_id", "").strip() or _stem(file),
                origin=str(file),
                split=split_of(split) if split else None,
                extra=extra,
                attributes={
                    k.strip(): v.strip() for k, v in row.items() if k and k.strip() not in COLUMNS and (v or "").strip()
                },
            )
        )
    first = Path(records[0].extra["path"])
    raster = [Path(r.extra["path"]) for r in records if is_raster_name(r.extra["path"])]
    channels = choose_channels(raster) if raster else None
    dims = (
        2
        if is_raster_name(first.name)
        else _nifti_dims(first)
        if is_nifti_name(first.name)
        else read_image_file(first).dims
    )
    name = path.parent.name if path.name.lower() == MANIFEST_NAME else path.stem
    return ManifestDataset(
        name,
        records,
        task=task,
        class_names=class_names,
        dims=dims,
        problems=problems,
        uri=str(path),
        channels=channels,
    )


class ManifestDataset(Dataset):
    """Rows of a CSV manifest, read lazily; 2D rasters get the dataset's channel count."""

    def __init__(self, *args, channels: int | None, **kwargs):
        super().__init__(*args, **kwargs)
        self.channels = channels

    def _load(self, record: Record) -> Sample:
        p = record.extra["path"]
        data = read_image_file(p, channels=self.channels if is_raster_name(p) else None)
        mask = None
        if "mask" in record.extra:
            declared = self.class_names if self.task is Task.SEGMENTATION else ()  # else class names are labels
            mask = read_label_map(record.extra["mask"], data.array.shape[1:], declared)
        return Sample(
            id=record.id,
            image=data.array,
            label=record.label,
            patient_id=record.patient_id,
            origin=record.origin,
            spacing=data.spacing,
            affine=data.affine,
            mask=mask,
            modality=data.modality or self.modality,
            meta=data.meta,
        )


def _read_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) pairs with lower-cased column names; checks the header."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None:
                raise BadInputError("empty manifest (expected a header: path,label[,patient_id][,split][,mask])", path)
            fields = [(n or "").strip().lower() for n in reader.fieldnames]
            if "path" not in fields:
                raise BadInputError(f"manifest has no 'path' column (columns: {', '.join(fields)})", path)
            for name in fields:  # other columns are attributes; a near-miss of ours is a typo
                close = difflib.get_close_matches(name, COLUMNS, n=1, cutoff=0.8) if name not in COLUMNS else []
                if close:
                    raise BadInputError(f"column '{name}': did you mean '{close[0]}'?", path)
            if len(set(fields)) != len(fields):
                raise BadInputError(f"a column name appears twice (columns: {', '.join(fields)})", path)
            rows = []
            for row in reader:
                clean = {(k or "").strip().lower(): (v or "") for k, v in row.items() if k is not None}
                if any(v.strip() for v in clean.values()):
                    rows.append((reader.line_num, clean))
            return rows
    except UnicodeDecodeError:
        raise BadInputError("not a text CSV file (UTF-8 expected)", path) from None
    except csv.Error as e:
        raise BadInputError(f"malformed CSV ({e})", path) from None


def _class_order(manifest: Path) -> list[str] | None:
    """Class names from ``classes.txt`` beside the manifest, in index order; None when absent."""
    path = manifest.parent / CLASSES_NAME
    if not path.is_file():
        return None
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise BadInputError("a class name is listed twice", path)
    return names


def _nifti_dims(path: Path) -> int:
    """2 or 3 spatial dimensions, from the NIfTI header (without reading the voxels)."""
    import nibabel as nib

    try:
        shape = nib.load(str(path)).shape
    except Exception as e:  # nibabel raises several types for a bad header
        raise BadInputError(f"not a readable NIfTI file ({e})", path) from None
    return 2 if len(shape) == 2 or (len(shape) >= 3 and shape[2] == 1) else 3


def _labels(values: list[str] | None, multilabel: bool, *, has_mask: bool, order: list[str] | None = None):
    """(task, class names, encoder of one label cell)."""
    if order is not None and values is not None:
        used = {p.strip() for v in values for p in (v.split("|") if multilabel else [v]) if p.strip()}
        missing = sorted(used - set(order))
        if missing:
            raise MedlensError(f"label(s) {', '.join(missing)} not listed in {CLASSES_NAME}")
    if values is None:
        return (Task.SEGMENTATION if has_mask else Task.NONE), [], lambda v: None
    if multilabel:
        names = order or _ordered({p.strip() for v in values for p in v.split("|") if p.strip()})
        index = {n: i for i, n in enumerate(names)}

        def encode(v: str) -> tuple[int, ...]:
            hot = [0] * len(names)
            for p in v.split("|"):
                if p.strip():
                    hot[index[p.strip()]] = 1
            return tuple(hot)

        return Task.MULTILABEL, names, encode
    names = order or negative_first(_ordered(set(values)))
    index = {n: i for i, n in enumerate(names)}
    return (Task.BINARY if len(names) == 2 else Task.MULTICLASS), names, lambda v: index[v]


def _ordered(names: set[str]) -> list[str]:
    """Integers in numeric order, anything else sorted as text."""
    try:
        return [str(v) for v in sorted(names, key=int)]
    except ValueError:
        return sorted(names)


def _stem(p: Path) -> str:
    name = p.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else p.stem
