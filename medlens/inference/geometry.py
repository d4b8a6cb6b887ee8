"""From the model input's geometry back to the source image's: what every picture of a prediction shows.

Preprocessing (:func:`medlens.data.arrays.load_arrays` with the card's steps, see
:mod:`medlens.data.transforms`) changes the geometry in one way only: ``resize`` scales the whole
image to the model's size on every spatial axis (no crop, no pad, no flip, aspect ratio not kept,
half-pixel centres); the intensity steps and the channel conversion leave it alone, and a
one-slice volume given to a 2D model is that slice. So a map over the model input goes back onto
the source by resampling each axis to the source's length with the same half-pixel convention
(:func:`to_source_geometry`: linear for heatmaps, nearest for masks). Written by hand because
MONAI's inverse transforms need MetaTensors traced through the pipeline, which the batched
preprocessing path does not keep; :func:`check_invertible` refuses a pipeline with any other step.

:func:`source_view` is the one place that builds the picture of a prediction (web page, PNG
output, DICOM Secondary Capture): the source image as read, windowed for display the way a viewer
would (the DICOM window when there is one, else the 0.5-99.5 percentiles), with the heatmap
resampled onto its pixels; for a volume, the source slice where the resampled heatmap peaks.
:func:`answer_view` is what an answer carries: the same picture, made on first use when that is
cheap to postpone (a small 2D image without heatmap: no torch, and a bounded source to hold
meanwhile), so that the service answers before it draws.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from medlens.data.quantiles import percentiles
from medlens.errors import MedlensError

RESAMPLING_STEPS = {"resize"}
GEOMETRY_KEEPING_STEPS = {"window", "zscore", "minmax", "scale"}
DISPLAY_MAX_SIDE = 4096
"""Pictures wider or taller than this are shown reduced (area average), aspect ratio kept."""
DEFER_MAX_PIXELS = 512 * 512
"""2D sources up to this many pixels per channel get their picture on first use (:func:`answer_view`)."""


@dataclass(frozen=True)
class SourceView:
    """A prediction's picture in the source's geometry.

    ``image``: 2D float32 in [0, 1], the source's rows x columns (reduced only beyond
    :data:`DISPLAY_MAX_SIDE`); ``heatmap``: the heatmap on the same pixels (None without one);
    ``slice_index``: for a volume, the shown slice in the source's slice order (None for 2D).
    """

    image: np.ndarray
    heatmap: np.ndarray | None = None
    slice_index: int | None = None


def check_invertible(preprocessing: dict[str, Any] | None) -> None:
    """Refuse a preprocessing pipeline whose geometry :func:`to_source_geometry` cannot undo."""
    for step in (preprocessing or {}).get("steps", []):
        name = step.get("name")
        if name not in RESAMPLING_STEPS | GEOMETRY_KEEPING_STEPS:
            raise MedlensError(f"cannot map a heatmap back onto the source image: preprocessing step '{name}'")


def to_source_geometry(array: np.ndarray, shape: Sequence[int], *, nearest: bool = False) -> np.ndarray:
    """A map over the model input's spatial axes, (h, w) or (d, h, w), resampled to the source's ``shape``.

    Linear interpolation with half-pixel centres (``align_corners=False``, as the resize itself);
    ``nearest`` for label masks. Float32 out.
    """
    import torch
    import torch.nn.functional as F

    array = np.asarray(array, dtype=np.float32)
    shape = tuple(int(s) for s in shape)
    if array.ndim not in (2, 3) or len(shape) != array.ndim:
        raise MedlensError(f"cannot resample a map of shape {array.shape} to {shape}")
    if array.shape == shape:
        return array
    mode = "nearest-exact" if nearest else ("bilinear" if array.ndim == 2 else "trilinear")
    kw = {} if nearest else {"align_corners": False}
    out = F.interpolate(torch.from_numpy(np.ascontiguousarray(array))[None, None], size=shape, mode=mode, **kw)
    return out[0, 0].numpy()


def display_window(image: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
    """One source plane (C, H, W) in native units as grey values in [0, 1]: luminance of RGB(A),
    the mean of other channels (time points); ``window`` (centre, width) when given, else the
    0.5-99.5 percentile range."""
    from medlens.data.arrays import convert_channels
    from medlens.data.dicom import apply_window

    image = np.asarray(image, dtype=np.float32)
    grey = convert_channels(image, 1)[0] if image.shape[0] in (1, 3, 4) else image.mean(axis=0)
    if window is not None and window[1] > 0:
        return apply_window(grey, *window)
    lo, hi = percentiles(grey, [0.5, 99.5])
    if hi <= lo:
        return np.zeros_like(grey)
    return apply_window(grey, (lo + hi) / 2, hi - lo)


def source_view(
    source: np.ndarray,
    heatmap: np.ndarray | None = None,
    *,
    window: tuple[float, float] | None = None,
    preprocessing: dict[str, Any] | None = None,
) -> SourceView:
    """The picture of a prediction: ``source`` (C, H, W) or (C, D, H, W), the image as the model
    got it before preprocessing, with ``heatmap`` (over the model input's spatial axes) on its pixels.

    For a volume the shown slice is the one where the heatmap, resampled along the slice axis,
    peaks (the middle slice without a heatmap). ``preprocessing`` is checked by :func:`check_invertible`.
    """
    check_invertible(preprocessing)
    source = np.asarray(source)
    if source.ndim not in (3, 4):
        raise MedlensError(f"expected a channels-first (C, H, W) or (C, D, H, W) image, got shape {source.shape}")
    heat = None if heatmap is None else np.asarray(heatmap, dtype=np.float32)
    if heat is not None and heat.ndim != source.ndim - 1:
        raise MedlensError(f"a {heat.ndim}D heatmap does not fit a {source.ndim - 1}D image")
    index = None
    if source.ndim == 4:
        depth = source.shape[1]
        if heat is None:
            index = depth // 2
        else:  # along the slice axis only: (D, h, w) stays small for any source
            heat = to_source_geometry(heat, (depth, *heat.shape[1:]))
            index = int(np.argmax(heat.reshape(depth, -1).max(axis=1)))
            heat = heat[index]
        source = source[:, index]
    image = display_window(source, window)
    shape = _display_shape(image.shape)
    if shape != image.shape:
        image = _reduce(image, shape)
    if heat is not None:
        heat = np.clip(to_source_geometry(heat, shape), 0.0, 1.0)
    return SourceView(image.astype(np.float32, copy=False), heat, index)


class DeferredView:
    """A :class:`SourceView` without heatmap of a 2D source whose ``image`` is made on first use
    (once, thread-safe; the source is let go then). ``shape``: the image's shape, known before."""

    heatmap = None
    slice_index = None

    def __init__(self, source: np.ndarray, *, window: tuple[float, float] | None, preprocessing: dict | None):
        check_invertible(preprocessing)
        self._made: np.ndarray | None = None
        self._source: tuple | None = (source, window, preprocessing)
        self._lock = threading.Lock()
        self.shape = _display_shape(np.shape(source)[1:])

    @property
    def nbytes(self) -> int:
        """Bytes held: the source's until the image is made, then the image's."""
        with self._lock:
            if self._made is not None:
                return int(self._made.nbytes)
            assert self._source is not None
            return int(np.asarray(self._source[0]).nbytes)

    @property
    def image(self) -> np.ndarray:
        with self._lock:
            if self._made is None:
                assert self._source is not None
                source, window, preprocessing = self._source
                self._made = source_view(source, window=window, preprocessing=preprocessing).image
                self._source = None
            return self._made


def answer_view(
    source: np.ndarray,
    heatmap: np.ndarray | None = None,
    *,
    window: tuple[float, float] | None = None,
    preprocessing: dict[str, Any] | None = None,
) -> SourceView | DeferredView:
    """:func:`source_view`, or a :class:`DeferredView` of the same picture for a 2D source of at
    most :data:`DEFER_MAX_PIXELS` pixels without heatmap (its picture needs no torch, so any thread
    may make it; the source held until then is as large as the float32 picture for a grey image,
    three times for RGB, and at most a few MB)."""
    if heatmap is None and np.ndim(source) == 3 and int(np.prod(np.shape(source)[1:])) <= DEFER_MAX_PIXELS:
        return DeferredView(source, window=window, preprocessing=preprocessing)
    return source_view(source, heatmap, window=window, preprocessing=preprocessing)


def _display_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    scale = min(1.0, DISPLAY_MAX_SIDE / max(shape))
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def _reduce(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    out = F.interpolate(torch.from_numpy(np.ascontiguousarray(image))[None, None], size=shape, mode="area")
    return out[0, 0].numpy()
