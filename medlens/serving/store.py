"""Recent predictions, kept for the REST API's follow-up requests (JSON, heatmap PNG, mask, SEG, SR, FHIR).

Two bounded levels: the most recent ``memory`` predictions in memory (and no more than
``memory_bytes`` of their images: at source resolution one large radiograph holds tens of MB),
the most recent ``disk`` ones in a folder (mode 0700; it holds DICOM headers of the inputs, so it is as sensitive as the
images themselves). Per prediction the folder holds what every rendering is made from:

* ``prediction.json``: :meth:`Prediction.to_json`;
* ``arrays.npz``: the display image and the heatmap (uint8, 0-255, the source's resolution); for a
  segmentation also its :class:`StoredMask` (label map, every slice's display image of a volume,
  the source's spacing and affine);
* ``source_NNNN.dcm``: the headers (no pixel data) of the source DICOM instances, the SR's evidence.

Renderings (PNGs, FHIR, SR) are made on first request and cached in memory, so a prediction
costs no rendering time unless someone asks for it. The disk copy is written by a background
thread after the answer (in order; :meth:`PredictionStore.close` waits for it). The audit log, not this store, is the
durable record; the store may lose its newest entries in a crash.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
import shutil
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from medlens.errors import MedlensError
from medlens.inference.geometry import DeferredView
from medlens.inference.prediction import Prediction, SourceInfo

log = logging.getLogger("medlens.serve")
MAX_PENDING_WRITES = 64  # disk writes queued behind the answers, at most
COMPRESS_ABOVE = 1 << 20  # bytes of arrays per entry above which arrays.npz is compressed
ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
SUMMARY_KEYS = ("has_heatmap", "slices", "slice", "segments")  # added to Prediction.to_json by summary()


@dataclass
class StoredMask:
    """A segmentation's label map and what its pictures and files need.

    ``labels``: uint8, the source's spatial shape ((D, H, W) in the reader's slice order, or
    (H, W)); ``slices``: a volume's display image of every slice (uint8 (D, H, W), 0-255; None for
    one image, whose display image is the entry's); ``spacing`` and ``affine`` (voxel -> RAS) as
    the predictor read them from the source (None when unknown), for the NIfTI mask.
    """

    labels: np.ndarray
    slices: np.ndarray | None = None
    spacing: tuple[float, ...] | None = None
    affine: np.ndarray | None = None

    @property
    def depth(self) -> int:
        """Slices of the label map (1 for one image)."""
        return self.labels.shape[0] if self.slices is not None else 1

    @property
    def shown(self) -> int:
        """The slice the page shows first: the one with the most segmented voxels (the middle when none)."""
        if self.slices is None:
            return 0
        counts = np.count_nonzero(self.labels.reshape(self.depth, -1), axis=1)
        return int(np.argmax(counts)) if counts.any() else self.depth // 2

    def plane(self, index: int) -> np.ndarray:
        """The 2D label map of slice ``index`` (the only one of one image)."""
        return self.labels[index] if self.slices is not None else self.labels.reshape(self.labels.shape[-2:])

    @property
    def nbytes(self) -> int:
        return self.labels.nbytes + (0 if self.slices is None else self.slices.nbytes)


@dataclass
class StoredPrediction:
    """One prediction with what its renderings need, and the renderings made so far."""

    prediction: Prediction  # without its heatmap (kept 2D in ``heatmap``)
    display: np.ndarray | DeferredView | None  # see display_image; a DeferredView until first use
    heatmap: np.ndarray | None = None  # 2D uint8, on the display image's pixels
    sources: list[pydicom.Dataset] = field(default_factory=list)  # headers only
    mask: StoredMask | None = None  # segmentations only
    cache: dict[str, Any] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)  # renderings nest: SR -> SEG
    nbytes: int = field(init=False, default=0)

    def summary(self) -> dict[str, Any]:
        """The prediction's JSON (:meth:`Prediction.to_json`), ``has_heatmap`` from the kept heatmap;
        a segmentation's with ``slices`` (its number of slices), ``slice`` (the one shown first) and
        ``segments`` (number, label and colour of each)."""
        from medlens.serving.overlay import segment_colour

        d = self.prediction.to_json()
        d["has_heatmap"] = self.heatmap is not None
        if self.mask is not None:
            d["slices"], d["slice"] = self.mask.depth, self.mask.shown
            names = self.prediction.class_names[1:]
            d["segments"] = [
                {"segment": n, "label": name, "colour": segment_colour(n)} for n, name in enumerate(names, start=1)
            ]
        return d

    @property
    def display_image(self) -> np.ndarray | None:
        """2D uint8 (0-255 for [0, 1]), a quarter of float32 at source resolution; a deferred
        picture is made here on first use (by the disk writer, or by whoever reads it first)."""
        with self.lock:
            if isinstance(self.display, DeferredView):
                self.display = _to_u8(self.display.image)
            return self.display

    def __post_init__(self) -> None:
        # bytes of the kept images (what bounds the memory level), fixed when kept: a deferred picture
        # counts as the source it holds until it is made (never less than the picture it becomes)
        arrays = (self.display, self.heatmap, self.mask)
        self.nbytes = sum(a.nbytes for a in arrays if a is not None)

    def planes(self, index: int | None = None) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(display image, heatmap) as float32 in [0, 1]; ``index``: slice ``index`` of a segmented volume
        (0 is the only slice of any other prediction)."""
        if index is not None:
            depth = 1 if self.mask is None else self.mask.depth
            if not 0 <= index < depth:
                raise MedlensError(f"slice {index} is outside 0..{depth - 1} (the slices this prediction keeps)")
            if self.mask is not None and self.mask.slices is not None:
                return _from_u8(self.mask.slices[index]), None
        return _from_u8(self.display_image), _from_u8(self.heatmap)

    def rendered(self, name: str, make):
        """``make()`` once per entry and name; later calls return the cached value (or re-raise its error)."""
        with self.lock:
            if name not in self.cache:
                try:
                    self.cache[name] = ("ok", make())
                except MedlensError as e:
                    self.cache[name] = ("error", e)
            status, value = self.cache[name]
        if status == "error":
            raise value
        return value


def _to_u8(a: np.ndarray | None) -> np.ndarray | None:
    """Floats in [0, 1] as uint8 (NaN 0, beyond the range clipped): four array passes, no temporaries
    beyond one (np.nan_to_num's several passes held the GIL longest on the request path)."""
    if a is None:
        return None
    v = np.multiply(a, 255.0, dtype=np.float32)
    np.clip(v, 0, 255, out=v)
    v[np.isnan(v)] = 0
    return np.round(v, out=v).astype(np.uint8)


def _from_u8(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else a.astype(np.float32) / 255.0


def header_only(ds: pydicom.Dataset) -> pydicom.Dataset:
    """A copy of ``ds`` without pixel data (enough as SR evidence, much smaller to keep)."""
    out = pydicom.Dataset()
    for tag in list(ds.keys()):
        if tag.group == 0x7FE0:  # pixel data of every kind
            continue
        try:
            out.add(ds[tag])
        except Exception:  # noqa: BLE001 - an element pydicom cannot decode (corrupt upload): left out
            continue
    if hasattr(ds, "file_meta"):
        out.file_meta = ds.file_meta
    return out


class PredictionStore:
    """Thread-safe, bounded store of recent predictions (memory and, when ``root`` is given, disk)."""

    def __init__(self, root: Path | None, *, memory: int = 256, memory_bytes: int = 512 * 2**20, disk: int = 2000):
        self.root = Path(root) if root is not None else None
        self.memory_limit = max(1, int(memory))
        self.memory_bytes = max(0, int(memory_bytes))
        self.disk_limit = max(0, int(disk))
        self._memory: OrderedDict[str, StoredPrediction] = OrderedDict()
        self._memory_nbytes = 0  # sum of the kept entries' nbytes
        self._disk_ids: OrderedDict[str, None] = OrderedDict()  # oldest first
        self._pending: dict[str, StoredPrediction] = {}  # queued for disk, not written yet
        self._lock = threading.Lock()
        # disk writes happen beside the requests, in order (one thread); close() waits for them
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            self.root.chmod(0o700)
            dirs = [
                d
                for d in self.root.iterdir()
                if d.is_dir() and ID_PATTERN.match(d.name) and (d / "prediction.json").is_file()
            ]
            for d in sorted(dirs, key=lambda d: (d / "prediction.json").stat().st_mtime):
                self._disk_ids[d.name] = None

    # -- writing ---------------------------------------------------------------------------------
    def put(
        self,
        prediction: Prediction,
        display_image: np.ndarray | DeferredView | None,
        sources=(),
        *,
        heatmap: np.ndarray | None = None,
        mask: StoredMask | None = None,
    ) -> StoredPrediction:
        """Keep ``prediction`` with its 2D display image (floats in [0, 1], or a deferred picture made
        on first use) and the 2D heatmap on its pixels (floats in [0, 1]), and a segmentation's
        ``mask`` (its ``slices`` as floats in [0, 1], kept as uint8)."""
        light = dataclasses.replace(prediction, heatmap=None)
        if mask is not None:
            labels = np.asarray(mask.labels, dtype=np.uint8)
            mask = StoredMask(labels, _to_u8(mask.slices), mask.spacing, mask.affine)
        entry = StoredPrediction(
            light,
            display_image if isinstance(display_image, DeferredView) else _to_u8(display_image),
            _to_u8(heatmap),
            [header_only(s) for s in sources],
            mask=mask,
        )
        with self._lock:
            self._keep(entry)
        if self.root is not None and self.disk_limit:
            with self._lock:
                behind = len(self._pending) >= MAX_PENDING_WRITES
                if not behind:
                    self._pending[prediction.id] = entry  # reachable even when memory drops it before the write
            if behind:  # the writer cannot keep up: this request writes itself (bounded memory)
                self._write_logged(entry)
            else:
                self._writer.submit(self._write_logged, entry)
        return entry

    def flush(self) -> None:
        """Wait until the disk writes queued so far are done (and the disk bound applied)."""
        self._writer.submit(lambda: None).result()

    def close(self) -> None:
        """Wait for the disk writes still queued (the service's shutdown)."""
        self._writer.shutdown(wait=True)

    def _write_logged(self, entry: StoredPrediction) -> None:
        try:
            self._write(entry)
        except Exception as e:  # noqa: BLE001 - the store is a cache; the audit log holds the record
            log.warning("prediction %s not kept on disk (%s)", entry.prediction.id, type(e).__name__)
        finally:
            with self._lock:
                self._pending.pop(entry.prediction.id, None)

    def _write(self, entry: StoredPrediction) -> None:
        pred = entry.prediction
        folder = self.root / pred.id
        folder.mkdir(exist_ok=True)
        buf = io.BytesIO()
        arrays = {k: v for k, v in (("display", entry.display_image), ("heatmap", entry.heatmap)) if v is not None}
        if entry.mask is not None:
            m = entry.mask
            named = (("labels", m.labels), ("slices", m.slices), ("spacing", m.spacing), ("affine", m.affine))
            arrays.update({f"mask_{k}": np.asarray(v) for k, v in named if v is not None})
        # small pictures uncompressed: deflate cost 1.3 ms of CPU per 224 px X-ray, beside the requests
        save = np.savez_compressed if sum(a.nbytes for a in arrays.values()) > COMPRESS_ABOVE else np.savez
        save(buf, **arrays)
        (folder / "arrays.npz").write_bytes(buf.getvalue())
        for i, ds in enumerate(entry.sources):
            ds.save_as(folder / f"source_{i:04d}.dcm", enforce_file_format=False)
        # prediction.json last: its presence marks a complete entry
        (folder / "prediction.json").write_text(json.dumps(entry.summary(), default=str))
        stale: list[str] = []
        with self._lock:
            self._disk_ids[pred.id] = None
            while len(self._disk_ids) > self.disk_limit:
                stale.append(self._disk_ids.popitem(last=False)[0])
        for old in stale:
            shutil.rmtree(self.root / old, ignore_errors=True)

    # -- reading ---------------------------------------------------------------------------------
    def get(self, prediction_id: str) -> StoredPrediction | None:
        if not ID_PATTERN.match(prediction_id or ""):
            return None
        with self._lock:
            entry = self._memory.get(prediction_id) or self._pending.get(prediction_id)
            on_disk = prediction_id in self._disk_ids
        if entry is not None:
            return entry
        if not on_disk or self.root is None:
            return None
        entry = self._read(self.root / prediction_id)
        if entry is not None:
            with self._lock:
                self._keep(entry)
        return entry

    def _keep(self, entry: StoredPrediction) -> None:
        """Keep ``entry`` in memory as the newest, then drop the oldest beyond the count or byte
        limit (the newest stays). Called with the lock held."""
        old = self._memory.pop(entry.prediction.id, None)
        self._memory_nbytes += entry.nbytes - (0 if old is None else old.nbytes)
        self._memory[entry.prediction.id] = entry
        while len(self._memory) > 1 and (
            len(self._memory) > self.memory_limit or self._memory_nbytes > self.memory_bytes
        ):
            self._memory_nbytes -= self._memory.popitem(last=False)[1].nbytes

    def _read(self, folder: Path) -> StoredPrediction | None:
        try:
            d = json.loads((folder / "prediction.json").read_text())
            with np.load(folder / "arrays.npz") as z:
                display = z["display"] if "display" in z.files else None
                heatmap = z["heatmap"] if "heatmap" in z.files else None
                mask = None
                if "mask_labels" in z.files:
                    spacing = tuple(float(v) for v in z["mask_spacing"]) if "mask_spacing" in z.files else None
                    mask = StoredMask(z["mask_labels"], z.get("mask_slices"), spacing, z.get("mask_affine"))
            sources = [pydicom.dcmread(p, force=True) for p in sorted(folder.glob("source_*.dcm"))]
        except (OSError, ValueError, KeyError):
            return None
        for key in SUMMARY_KEYS:
            d.pop(key, None)
        d["source"] = SourceInfo(**d["source"])
        return StoredPrediction(Prediction(**d), display, heatmap, sources, mask=mask)

    def recent(self, limit: int = 20) -> list[dict[str, Any]]:
        """JSON summaries of the newest predictions (newest first), from memory and then disk."""
        with self._lock:
            ids = list(reversed(self._memory.keys()))
            ids += [pid for pid in self._pending if pid not in self._memory]
            for pid in reversed(self._disk_ids.keys()):
                if len(ids) >= limit:
                    break
                if pid not in self._memory and pid not in self._pending:
                    ids.append(pid)
        out = []
        for pid in ids:
            entry = self.get(pid)
            if entry is not None:
                out.append(entry.summary())
        out.sort(key=lambda d: d["created"], reverse=True)
        return out[:limit]
