"""Image + mask folders (retinal vessel sets): the CHASE_DB1 and HRF layouts, :attr:`Task.SEGMENTATION`.

* **CHASE_DB1**: one flat folder of ``STEM.jpg`` images, each with ``STEM_1stHO.png`` (first
  annotator, the default) and ``STEM_2ndHO.png`` (second annotator: ``FOLDER?annotator=2``).
  Recognised by its ``*_1stHO.*`` files. When every image is named ``Image_NN[LR]`` with NN in
  01..14 (the published set), the source gives CHASE_DB1's usual split: images 01-10 (20 images)
  ``train``, 11-14 (8 images) ``test``; otherwise no split. ``patient_id`` is the child
  (``Image_01L`` and ``Image_01R`` are the two eyes of child 01), so derived splits keep both eyes
  together.
* **HRF**: ``images/STEM.jpg`` with the vessel mask ``manual1/STEM.tif`` and the field-of-view
  mask ``mask/STEM_mask.tif``; no given split; ``patient_id`` is the stem.

Class names are ``["background", "vessel"]``; a vessel mask must hold 0/255 (or 0/1) and becomes
0/1: any other value set, a mask of another size than its image, or an unreadable mask is a
one-line error naming the mask file when the sample is loaded.

The field of view goes to ``Sample.meta["fov"]`` (bool, the image's spatial shape;
``meta["fov_from"]`` says where it came from): HRF's ``mask/`` file, else (CHASE_DB1 has none)
**derived** from the image by :func:`derive_fov`. Images are RGB fundus photographs (modality
``OP``), read lazily with one channel count for the folder (see :mod:`medlens.data.sources.folder`).

Nothing is dropped silently: an image without its vessel mask (HRF's ``11_h``, ``12_h``, ``13_h``)
and a mask without its image are listed by name in ``dataset.problems`` and not used; so is any
other file of the folder.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from medlens.data.imageio import choose_channels, is_raster_name, read_image_file, read_mask_file
from medlens.data.sample import Dataset, Problem, Record, Sample, Task
from medlens.errors import BadInputError, MedlensError

CLASS_NAMES = ("background", "vessel")
ANNOTATOR_SUFFIX = {1: "_1stHO", 2: "_2ndHO"}
HRF_DIRS = ("images", "manual1")
HRF_FOV_DIR = "mask"
CHASE_NAME = re.compile(r"^Image_(\d{2})([LR])$")
CHASE_TRAIN, CHASE_TEST = range(1, 11), range(11, 15)  # the usual 20 / 8 image split
FOV_THRESHOLD = 0.1  # of the channel's maximum (fundus background is near black)


def looks_like_mask_folder(path: Path) -> bool:
    """An HRF layout (``images/`` and ``manual1/``) or a CHASE_DB1 layout (``*_1stHO`` masks)."""
    path = Path(path)
    if all((path / d).is_dir() for d in HRF_DIRS):
        return True
    return any(
        p.is_file() and is_raster_name(p.name) and _stem(p).endswith(ANNOTATOR_SUFFIX[1]) for p in path.iterdir()
    )


def open_mask_folder(path: Path, *, annotator: int = 1) -> "MaskFolderDataset":
    """Open a CHASE_DB1 or HRF layout (see the module doc); ``annotator`` picks CHASE_DB1's 1st or 2nd."""
    path = Path(path)
    if annotator not in ANNOTATOR_SUFFIX:
        raise MedlensError(f"annotator must be 1 or 2, got {annotator}", path)
    if all((path / d).is_dir() for d in HRF_DIRS):
        if annotator != 1:
            raise MedlensError("this HRF layout has one annotator (manual1/); annotator=2 needs _2ndHO masks", path)
        pairs, problems, layout = *_hrf_pairs(path), "HRF"
    else:
        pairs, problems, layout = *_chase_pairs(path, ANNOTATOR_SUFFIX[annotator]), "CHASE_DB1"
    if not pairs:
        raise MedlensError(f"no image with its vessel mask in this {layout} layout", path)
    chase_split = layout == "CHASE_DB1" and all(_chase_number(img) in (*CHASE_TRAIN, *CHASE_TEST) for img, *_ in pairs)
    records = []
    for image, mask, fov in pairs:
        number = _chase_number(image) if layout == "CHASE_DB1" else None
        split = None if not chase_split else "train" if number in CHASE_TRAIN else "test"
        extra = {"image": str(image), "mask": str(mask), "fov": None if fov is None else str(fov)}
        patient = f"child_{number:02d}" if number is not None else _stem(image)
        records.append(
            Record(id=_stem(image), label=None, patient_id=patient, origin=str(image), split=split, extra=extra)
        )
    return MaskFolderDataset(
        path.name,
        records,
        task=Task.SEGMENTATION,
        class_names=CLASS_NAMES,
        dims=2,
        modality="OP",
        problems=problems,
        uri=str(path),
        channels=choose_channels([img for img, *_ in pairs]),
        layout=layout,
        annotator=annotator,
    )


class MaskFolderDataset(Dataset):
    """Image, vessel mask and field of view read lazily from their files."""

    def __init__(self, *args, channels: int, layout: str, annotator: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.channels, self.layout, self.annotator = channels, layout, annotator

    def _load(self, record: Record) -> Sample:
        data = read_image_file(record.extra["image"], channels=self.channels)
        shape = data.array.shape[1:]
        mask = binary_mask(record.extra["mask"], shape)
        if record.extra["fov"] is not None:
            fov, fov_from = binary_mask(record.extra["fov"], shape).astype(bool), record.extra["fov"]
        else:
            fov, fov_from = derive_fov(data.array), "derived from the image"
        meta = dict(data.meta, fov=fov, fov_from=fov_from, annotator=self.annotator, layout=self.layout)
        return Sample(
            id=record.id,
            image=data.array,
            label=None,
            patient_id=record.patient_id,
            origin=record.origin,
            spacing=data.spacing,
            mask=mask,
            modality=self.modality,
            meta=meta,
        )


def binary_mask(path: str | Path, shape: tuple[int, ...]) -> np.ndarray:
    """A 0/255 (or 0/1) mask file as uint8 0/1 of ``shape``; anything else is a one-line error naming the file."""
    mask = read_mask_file(path)
    if mask.shape != tuple(shape):
        raise BadInputError(f"mask shape {mask.shape} differs from image shape {tuple(shape)}", path)
    values = set(np.unique(mask).tolist())
    if values <= {0, 255}:
        return (mask // 255).astype(np.uint8)
    if values <= {0, 1}:
        return mask.astype(np.uint8)
    shown = ", ".join(map(str, sorted(values)[:6])) + (" ..." if len(values) > 6 else "")
    raise BadInputError(f"a binary mask must hold 0/255 (or 0/1), found values {shown}", path)


def derive_fov(image: np.ndarray) -> np.ndarray:
    """The field of view of a fundus photograph ((C, H, W), RGB or gray), **derived** from its pixels:
    the red (or only) channel above :data:`FOV_THRESHOLD` of its maximum, its largest connected
    component (scikit-image), holes filled (SciPy's ``binary_fill_holes``: skimage's
    ``remove_small_holes`` also fills the border-connected background). Agrees with HRF's own FOV
    masks on about 99.9% of pixels."""
    from scipy.ndimage import binary_fill_holes
    from skimage.measure import label

    channel = np.asarray(image[0], dtype=np.float32)
    top = float(channel.max()) if channel.size else 0.0
    inside = channel > FOV_THRESHOLD * top
    if top <= 0 or not inside.any():
        return np.ones(channel.shape, dtype=bool)  # a black image: no boundary to find
    components = label(inside, connectivity=1)
    largest = np.argmax(np.bincount(components.ravel())[1:]) + 1
    return binary_fill_holes(components == largest)


# -- layouts ------------------------------------------------------------------------------------
def _stem(p: Path) -> str:
    return p.name.rsplit(".", 1)[0]


def _chase_number(image: Path) -> int | None:
    match = CHASE_NAME.match(_stem(image))
    return int(match.group(1)) if match else None


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _chase_pairs(path: Path, suffix: str) -> tuple[list[tuple[Path, Path, None]], list[Problem]]:
    problems: list[Problem] = []
    images: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    other_masks = tuple(s for s in ANNOTATOR_SUFFIX.values() if s != suffix)
    for p in _visible(path):
        stem = _stem(p)
        if not (p.is_file() and is_raster_name(p.name)):
            problems.append(Problem(str(p), "not an image or mask file; not used"))
        elif stem.endswith(suffix):
            masks[stem[: -len(suffix)]] = p
        elif not stem.endswith(other_masks):
            images[stem] = p
    for stem in sorted(images.keys() - masks.keys()):
        problems.append(
            Problem(str(images[stem]), f"image without a mask (no vessel mask {stem}{suffix}.png); not used")
        )
    for stem in sorted(masks.keys() - images.keys()):
        problems.append(Problem(str(masks[stem]), f"mask without an image (no {stem}.jpg); not used"))
    return [(images[s], masks[s], None) for s in sorted(images.keys() & masks.keys())], problems


def _hrf_pairs(path: Path) -> tuple[list[tuple[Path, Path, Path | None]], list[Problem]]:
    problems: list[Problem] = []

    def by_stem(folder: Path, strip: str = "") -> dict[str, Path]:
        found: dict[str, Path] = {}
        if not folder.is_dir():
            return found
        for p in _visible(folder):
            if p.is_file() and is_raster_name(p.name):
                stem = _stem(p)
                found[stem[: -len(strip)] if strip and stem.endswith(strip) else stem] = p
            else:
                problems.append(Problem(str(p), "not an image file; not used"))
        return found

    images, vessels = by_stem(path / "images"), by_stem(path / "manual1")
    fovs = by_stem(path / HRF_FOV_DIR, "_mask")
    for p in _visible(path):
        if p.name not in (*HRF_DIRS, HRF_FOV_DIR):
            problems.append(Problem(str(p), "not part of the HRF layout (images/, manual1/, mask/); not used"))
    for stem in sorted(images.keys() - vessels.keys()):
        problems.append(
            Problem(str(images[stem]), f"image without a mask (no vessel mask manual1/{stem}.tif); not used")
        )
    for stem in sorted(vessels.keys() - images.keys()):
        problems.append(Problem(str(vessels[stem]), f"mask without an image (no images/{stem}.jpg); not used"))
    return [(images[s], vessels[s], fovs.get(s)) for s in sorted(images.keys() & vessels.keys())], problems
