"""Image folders: ``ROOT/CLASS/*.png`` or ``ROOT/SPLIT/CLASS/*.png`` (PNG, JPEG, TIFF, BMP).

Split folder names are matched case-insensitively: train/training, val/valid/validation,
test/testing; the source's split is kept in ``Record.split``. Class names are the sorted class
folder names (the union over splits); two classes give :attr:`Task.BINARY`, more
:attr:`Task.MULTICLASS`. Of two classes, a conventional negative name (``normal``, ``negative``,
``healthy``, ``benign``, ``no finding``, ``no_finding``; any case) comes first, as the negative
class (:func:`medlens.data.sample.negative_first`): ``abnormal/`` and ``normal/`` make
``abnormal`` the positive class.

Channel policy (one per dataset): up to 32 images, evenly spaced over the sorted file list, are
inspected; when all are gray-valued (a gray mode, or RGB with three equal channels) every sample
is loaded with 1 channel, otherwise with 3. An image that disagrees with the choice is converted
when loaded (colour to gray by luminance, gray repeated to RGB) and says so in
``sample.meta["converted"]``. Pixels are read lazily.

``patient_id`` is the file stem: an image folder carries no patient information.

Nothing is ignored silently: a non-image file in a class folder, a file outside any class
folder, and an empty class folder are reported (with ``skip_bad`` they are listed in
``dataset.problems``; without it a non-image file raises). Hidden files (``.DS_Store``,
``._x``) and ``Thumbs.db``/``desktop.ini`` are system files and are ignored.
"""

from __future__ import annotations

from pathlib import Path

from medlens.data.imageio import choose_channels, is_raster_name, read_image_file
from medlens.data.sample import Dataset, Problem, Record, Sample, Task, negative_first
from medlens.errors import BadInputError, MedlensError

SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
SYSTEM_FILES = {"thumbs.db", "desktop.ini"}


def split_of(name: str) -> str | None:
    """The canonical split of a folder name (``Training`` -> ``train``), or None."""
    return SPLIT_ALIASES.get(name.lower())


def _ignored(p: Path) -> bool:
    return p.name.startswith(".") or p.name.lower() in SYSTEM_FILES


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not _ignored(p))


def _has_images(folder: Path) -> bool:
    return any(p.is_file() and is_raster_name(p.name) for p in folder.iterdir())


def looks_like_image_folder(path: Path) -> bool:
    """True when ``path`` has class sub-folders of images, directly or under split folders."""
    path = Path(path)
    if not path.is_dir():
        return False
    subdirs = _subdirs(path)
    split_dirs = [d for d in subdirs if split_of(d.name)]
    if split_dirs:
        return any(_has_images(c) for d in split_dirs for c in _subdirs(d))
    return any(_has_images(d) for d in subdirs)


def open_image_folder(path: Path, *, skip_bad: bool = False) -> "ImageFolderDataset":
    """Open an image folder (see the module doc for layout, channel policy and reporting)."""
    path = Path(path)
    problems: list[Problem] = []
    subdirs = _subdirs(path)
    split_dirs = [d for d in subdirs if split_of(d.name)]
    if split_dirs:
        groups = [(split_of(d.name), d) for d in split_dirs]
        for d in subdirs:
            if d not in split_dirs:
                _report(
                    problems, d, "folder beside the split folders is not a split (train, val, test); not used", True
                )
        for _s, d in groups:
            _report_loose_files(problems, d)
    else:
        groups = [(None, path)]
    _report_loose_files(problems, path)

    entries: list[tuple[str | None, str, Path]] = []  # (split, class, file)
    for split, folder in groups:
        for class_dir in _subdirs(folder):
            files = []
            for p in sorted(class_dir.iterdir()):
                if _ignored(p):
                    continue
                if p.is_file() and is_raster_name(p.name):
                    files.append(p)
                else:
                    kind = "folder" if p.is_dir() else "file"
                    _report(
                        problems,
                        p,
                        f"not an image {kind} in class folder '{class_dir.name}' "
                        "(expected .png, .jpg, .jpeg, .tif, .tiff or .bmp)",
                        skip_bad,
                    )
            if not files:
                _report(problems, class_dir, "empty class folder: no images", True)
            entries += [(split, class_dir.name, f) for f in files]
    if not entries:
        raise MedlensError("no images in class sub-folders", path)

    class_names = negative_first(sorted({c for _, c, _ in entries}))
    index = {c: i for i, c in enumerate(class_names)}
    records = []
    for split, cls, f in entries:
        rel = f.relative_to(path).as_posix()
        records.append(
            Record(id=rel, label=index[cls], patient_id=f.stem, origin=str(f), split=split, extra={"path": str(f)})
        )
    channels = choose_channels([f for _, _, f in entries])
    task = Task.BINARY if len(class_names) == 2 else Task.MULTICLASS
    return ImageFolderDataset(
        path.name,
        records,
        task=task,
        class_names=class_names,
        dims=2,
        problems=problems,
        uri=str(path),
        channels=channels,
    )


class ImageFolderDataset(Dataset):
    """Images read lazily from their files with the dataset's channel count (``self.channels``)."""

    def __init__(self, *args, channels: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.channels = channels

    def _load(self, record: Record) -> Sample:
        data = read_image_file(record.extra["path"], channels=self.channels)
        return Sample(
            id=record.id,
            image=data.array,
            label=record.label,
            patient_id=record.patient_id,
            origin=record.origin,
            spacing=data.spacing,
            modality=self.modality,
            meta=data.meta,
        )


def _report(problems: list[Problem], p: Path, message: str, skip_bad: bool) -> None:
    if not skip_bad:
        raise BadInputError(message + " (use --skip-bad to list and skip it)", p)
    problems.append(Problem(str(p), message))


def _report_loose_files(problems: list[Problem], folder: Path) -> None:
    """Images lying outside any class folder have no label: reported, not used."""
    for p in sorted(folder.iterdir()):
        if p.is_file() and not _ignored(p) and is_raster_name(p.name):
            problems.append(Problem(str(p), "image outside any class folder: no label; not used"))
