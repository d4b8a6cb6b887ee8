"""MedMNIST: the official ``.npz`` files, opened from a path or as ``medmnist:NAME[@SIZE]``.

An npz holds ``{train,val,test}_images`` and ``{train,val,test}_labels``. Images are uint8:
(N, H, W) gray 2D, (N, H, W, 3) RGB 2D, or (N, D, H, W) 3D; labels are (N, 1) class indices
or (N, L) multi-hot. Samples come out channels first in native units (0..255 as float32):
(1, H, W), (3, H, W) or (1, D, H, W).

Names, sizes, URLs, MD5s, tasks and class names live in ``medlens/data/medmnist_catalog.json``
(copied from the ``medmnist`` package's ``info.py``). ``medmnist:NAME[@SIZE]`` is looked up in
``$MEDLENS_CACHE/medmnist/`` and downloaded (MD5-verified) when absent; ``$MEDLENS_MEDMNIST_URL``
or the ``base_url`` argument replaces the Zenodo base URL (a mirror, or a local test server).

MedMNIST has no patient identifiers, so each sample is its own "patient" (``patient_id`` equals
the sample id, e.g. ``train/17``): patient-level splitting cannot do better than the source's
own splits, which are kept in ``Record.split``.

Large files are memory-mapped: npz members cannot be mapped, so a file above
``MMAP_THRESHOLD`` bytes has each member extracted once to ``.npy`` in the cache (keyed by the
file's path, size and modification time) and opened with ``np.load(mmap_mode="r")``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from medlens.data.download import cache_dir, download
from medlens.data.limits import check_bytes, check_size
from medlens.data.sample import SPLITS, Dataset, Record, Sample, Task
from medlens.errors import BadInputError, MedlensError

CATALOG_PATH = Path(__file__).resolve().parents[1] / "medmnist_catalog.json"
BASE_URL_ENV = "MEDLENS_MEDMNIST_URL"
MMAP_THRESHOLD_ENV = "MEDLENS_MMAP_THRESHOLD"
MMAP_THRESHOLD = 256 * 1024 * 1024  # bytes; override with $MEDLENS_MMAP_THRESHOLD

TASKS = {
    "binary-class": Task.BINARY,
    "multi-class": Task.MULTICLASS,
    "multi-label, binary-class": Task.MULTILABEL,
    "ordinal-regression": Task.ORDINAL,
}


# -- catalog ------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def load_catalog() -> dict[str, Any]:
    """The MedMNIST catalog: ``{"datasets": {name: {task, modality, labels, n_channels, dims,
    n_samples, license, files: {size: {url, md5}}}}}``."""
    return json.loads(CATALOG_PATH.read_text())


def catalog_entry(name: str) -> dict[str, Any]:
    """The catalog entry of ``name``; unknown names raise a one-line error listing the known ones."""
    datasets = load_catalog()["datasets"]
    if name not in datasets:
        raise MedlensError(f"unknown MedMNIST data set '{name}' (known: {', '.join(datasets)})", f"medmnist:{name}")
    return datasets[name]


def parse_spec(spec: str) -> tuple[str, int]:
    """``"pneumoniamnist@64"`` -> ``("pneumoniamnist", 64)``; the size defaults to 28."""
    name, _, size_text = spec.strip().lower().partition("@")
    entry = catalog_entry(name)
    if not size_text:
        return name, 28
    if not size_text.isdigit() or size_text not in entry["files"]:
        raise MedlensError(f"size must be one of {', '.join(entry['files'])} for {name}", f"medmnist:{spec}")
    return name, int(size_text)


def file_name(name: str, size: int = 28) -> str:
    """The official file name: ``pneumoniamnist.npz`` at 28, ``pneumoniamnist_64.npz`` otherwise."""
    return f"{name}.npz" if size == 28 else f"{name}_{size}.npz"


def file_url(name: str, size: int = 28, base_url: str | None = None) -> str:
    """The download URL: the catalog's Zenodo URL, or ``base_url`` (or ``$MEDLENS_MEDMNIST_URL``) + file name."""
    base_url = base_url or os.environ.get(BASE_URL_ENV)
    if base_url:
        return base_url.rstrip("/") + "/" + file_name(name, size)
    return catalog_entry(name)["files"][str(size)]["url"]


def fetch_medmnist(name: str, size: int = 28, *, base_url: str | None = None, show_progress: bool = True) -> Path:
    """The cached path of a MedMNIST file, downloading and MD5-checking it first when absent."""
    entry = catalog_entry(name)
    path = cache_dir() / "medmnist" / file_name(name, size)
    if not path.is_file():
        download(
            file_url(name, size, base_url), path, md5=entry["files"][str(size)]["md5"], show_progress=show_progress
        )
    return path


def infer_name(path: Path) -> tuple[str | None, int | None]:
    """Catalog name and size from a file name (``adrenalmnist3d_64.npz`` -> ("adrenalmnist3d", 64))."""
    m = re.fullmatch(r"([a-z0-9]+?)(?:_(\d+))?", path.name.lower().removesuffix(".npz"))
    if m and m.group(1) in load_catalog()["datasets"]:
        return m.group(1), int(m.group(2) or 28)
    return None, None


# -- opening ------------------------------------------------------------------------------------
def open_medmnist_uri(
    spec: str, *, skip_bad: bool = False, base_url: str | None = None, show_progress: bool = True
) -> "MedMNISTDataset":
    """Open ``medmnist:NAME[@SIZE]`` (``spec`` is the part after the colon) from the cache,
    downloading it when absent. ``skip_bad`` is accepted for symmetry: an npz has no per-file faults."""
    name, size = parse_spec(spec)
    path = fetch_medmnist(name, size, base_url=base_url, show_progress=show_progress)
    uri = f"medmnist:{name}" + ("" if size == 28 else f"@{size}")
    return open_medmnist_npz(path, name=name, uri=uri)


def open_medmnist_npz(path: Path, *, name: str | None = None, uri: str | None = None) -> "MedMNISTDataset":
    """Open an npz in the MedMNIST layout. The catalog name is taken from ``name`` or the file name;
    an unknown name gets its task inferred from the labels and class names "0", "1", ..."""
    return MedMNISTDataset(Path(path), name=name, uri=uri)


class MedMNISTDataset(Dataset):
    """A MedMNIST npz with lazy, per-split array access and a fast bulk accessor :meth:`raw_arrays`."""

    def __init__(self, path: Path, *, name: str | None = None, uri: str | None = None):
        self.path = path
        inferred, _ = infer_name(path)
        self.catalog_name = name or inferred
        entry = load_catalog()["datasets"].get(self.catalog_name) if self.catalog_name else None
        self._arrays: dict[str, np.ndarray] = {}
        shapes = _member_shapes(path)
        splits = [s for s in SPLITS if f"{s}_images" in shapes or f"{s}_labels" in shapes]
        if not splits:
            raise BadInputError(
                f"not a MedMNIST npz (expected train_images, train_labels, ...; found {', '.join(shapes) or 'nothing'})",
                path,
            )
        for s in splits:
            for kind in ("images", "labels"):
                if f"{s}_{kind}" not in shapes:
                    raise BadInputError(f"not a MedMNIST npz: {s}_{kind} is missing", path)
            n_img, n_lab = shapes[f"{s}_images"][0], shapes[f"{s}_labels"][0]
            if n_img != n_lab:
                raise BadInputError(f"{s}: {n_img} images but {n_lab} labels", path)
        self.splits = splits
        image_shape = shapes[f"{splits[0]}_images"]
        if len(image_shape) < 3:
            raise BadInputError(f"not a MedMNIST npz: images of shape {image_shape}", path)
        frames = image_shape[1] if len(image_shape) == 5 or (len(image_shape) == 4 and image_shape[-1] != 3) else 1
        rows, cols = (image_shape[-3], image_shape[-2]) if image_shape[-1] == 3 else (image_shape[-2], image_shape[-1])
        check_size(path, rows=rows, cols=cols, frames=frames)
        self.dims, self.rgb = _layout(image_shape, entry)

        labels = {s: self._read_labels(s) for s in splits}
        if entry is not None:
            task = TASKS[entry["task"]]
            class_names = list(entry["labels"])
            modality = entry.get("modality")
        else:
            task, class_names = _infer_task(np.concatenate([labels[s] for s in splits]))
            modality = None
            if "class_names" in shapes:  # written by medlens (e.g. `data synth --format npz`)
                with np.load(path, allow_pickle=False) as z:
                    stored = [str(c) for c in z["class_names"]]
                if len(stored) == len(class_names):
                    class_names = stored
        records = []
        for s in splits:
            lab = labels[s]
            multi = task is Task.MULTILABEL
            for i in range(lab.shape[0]):
                sid = f"{s}/{i}"
                label = tuple(int(v) for v in lab[i]) if multi else int(lab[i, 0])
                records.append(Record(sid, label, sid, f"{path.name}#{sid}", split=s, extra={"index": i}))
        super().__init__(
            path.stem,
            records,
            task=task,
            class_names=class_names,
            dims=self.dims,
            modality=modality,
            uri=uri or str(path),
        )

    # -- arrays -----------------------------------------------------------------------------
    def _read_labels(self, split: str) -> np.ndarray:
        lab = self._member(f"{split}_labels")
        lab = np.asarray(lab)
        return lab.reshape(lab.shape[0], -1).astype(np.int64)

    def _member(self, key: str) -> np.ndarray:
        """One npz member, cached; memory-mapped from an extracted ``.npy`` for large files."""
        if key not in self._arrays:
            self._arrays[key] = _read_member(self.path, key)
        return self._arrays[key]

    def raw_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """All images of ``split`` in the file's layout ((N,H,W), (N,H,W,3) or (N,D,H,W), uint8,
        possibly memory-mapped) and their labels: (N,) int64, or (N, L) multi-hot for multi-label."""
        if split not in self.splits:
            raise MedlensError(f"no '{split}' split (has {', '.join(self.splits)})", self.path)
        labels = self._read_labels(split)
        if self.task is not Task.MULTILABEL:
            labels = labels[:, 0]
        return self._member(f"{split}_images"), labels

    def _load(self, record: Record) -> Sample:
        img = np.asarray(self._member(f"{record.split}_images")[record.extra["index"]], dtype=np.float32)
        img = np.moveaxis(img, -1, 0) if self.rgb else img[None]
        return Sample(
            id=record.id,
            image=np.ascontiguousarray(img),
            label=record.label,
            patient_id=record.patient_id,
            origin=record.origin,
            modality=self.modality,
            meta={"split": record.split},
        )


# -- helpers ------------------------------------------------------------------------------------
def _layout(image_shape: tuple[int, ...], entry: dict | None) -> tuple[int, bool]:
    """(dims, rgb) from the catalog, else from the array shape of one split's images."""
    if entry is not None:
        return entry["dims"], entry["dims"] == 2 and entry["n_channels"] == 3
    if len(image_shape) == 3:
        return 2, False
    if len(image_shape) == 4 and image_shape[-1] == 3 and min(image_shape[1:3]) > 3:
        return 2, True
    if len(image_shape) == 4:
        return 3, False
    raise MedlensError(f"unexpected image array shape {image_shape}")


def _infer_task(labels: np.ndarray) -> tuple[Task, list[str]]:
    """Task and class names from the labels of a file not in the catalog."""
    if labels.shape[1] > 1:
        return Task.MULTILABEL, [str(i) for i in range(labels.shape[1])]
    n = int(labels.max()) + 1 if labels.size else 0
    return (Task.BINARY if n <= 2 else Task.MULTICLASS), [str(i) for i in range(max(n, 2))]


def _member_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Array shapes of the npz members, read from the ``.npy`` headers without loading data."""
    try:
        with zipfile.ZipFile(path) as zf:
            shapes = {}
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read_header(f)
                    data_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                    if data_bytes > info.file_size:
                        raise BadInputError(
                            f"corrupt npz: member {info.filename} declares {data_bytes} bytes but holds {info.file_size}",
                            path,
                        )
                shapes[info.filename[:-4]] = tuple(shape)
            return shapes
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib.error, NotImplementedError, RuntimeError) as e:
        raise BadInputError(f"corrupt or unreadable npz ({e})", path) from None


def _read_member(path: Path, key: str) -> np.ndarray:
    threshold = int(os.environ.get(MMAP_THRESHOLD_ENV, MMAP_THRESHOLD))
    try:
        if path.stat().st_size > threshold:
            try:
                return np.load(_extract_member(path, key), mmap_mode="r", allow_pickle=False)
            except OSError:
                pass  # cache not writable: fall back to reading into memory
        with zipfile.ZipFile(path) as zf:  # read into memory: the member's declared size is the cost
            check_bytes(path, zf.getinfo(f"{key}.npy").file_size, f"npz member {key}")
        with np.load(path, allow_pickle=False) as z:
            return z[key]
    except KeyError:
        raise BadInputError(f"npz has no member {key}", path) from None
    except MemoryError:
        raise BadInputError(f"npz member {key} too large for the memory available", path) from None
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, zlib.error, NotImplementedError, RuntimeError) as e:
        raise BadInputError(f"corrupt npz member {key} ({e})", path) from None


def _extract_member(path: Path, key: str) -> Path:
    """Extract ``key`` once to ``$MEDLENS_CACHE/npy/STEM-KEY/key.npy`` (streamed, atomic)."""
    st = path.stat()
    tag = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    folder = cache_dir() / "npy" / f"{path.stem}-{tag}"
    target = folder / f"{key}.npy"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{key}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as src:
            shutil.copyfileobj(src, out, 1 << 22)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target
