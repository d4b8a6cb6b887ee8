"""Heatmap overlays: an RGB picture of where the model looked, as PNG or as a DICOM Secondary Capture.

* :func:`overlay_rgb` blends a colour-mapped heatmap (matplotlib colormap, bilinear resize to the
  image with Pillow) over a grey image; :func:`overlay_png` encodes it as PNG.
* :func:`secondary_capture` wraps the RGB picture in a DICOM Secondary Capture Image built with
  highdicom (``SCImage.from_ref_dataset``): same patient and study as the source image, a new
  series ("medlens overlay"), ``BurnedInAnnotation = YES`` (the overlay and the AI label are
  burned into the pixels) and a SourceImageSequence reference to the instance it was made from.
* :func:`overlay_for_result` picks what to draw for a prediction: the 2D display image, or for a
  3D heatmap the source slice where the heatmap is largest.
"""

from __future__ import annotations

import io
import warnings
from typing import Any, Sequence

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset

from medlens import __version__
from medlens.errors import MedlensError
from medlens.inference.prediction import Prediction
from medlens.serving.headers import complete_source

SC_SERIES_DESCRIPTION = "medlens overlay"


def _as_unit_float(a: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    if a.ndim != 2:
        raise MedlensError(f"{what} must be a 2D array, got shape {a.shape}")
    return np.clip(np.nan_to_num(a, nan=0.0), 0.0, 1.0)


def resize_2d(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float 2D array to ``shape`` (rows, columns)."""
    array = np.asarray(array, dtype=np.float32)
    if array.shape == tuple(shape):
        return array
    img = Image.fromarray(array, mode="F").resize((int(shape[1]), int(shape[0])), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def overlay_rgb(
    display_image_2d: np.ndarray,
    heatmap_2d: np.ndarray | None,
    alpha: float = 0.4,
    colormap: str = "jet",
) -> np.ndarray:
    """uint8 (H, W, 3): the grey image (values in [0, 1]) with the colour-mapped heatmap blended in.

    The heatmap (values in [0, 1]) is resized to the image; ``alpha`` is the heatmap's weight.
    Without a heatmap the grey image is returned as RGB.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    grey = _as_unit_float(display_image_2d, "display image")
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if heatmap_2d is not None:
        import matplotlib

        heat = np.clip(resize_2d(_as_unit_float(heatmap_2d, "heatmap"), grey.shape), 0.0, 1.0)
        colours = matplotlib.colormaps[colormap](heat)[..., :3].astype(np.float32)
        rgb = (1.0 - alpha) * rgb + alpha * colours
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def overlay_png(
    display_image_2d: np.ndarray,
    heatmap_2d: np.ndarray | None,
    alpha: float = 0.4,
    colormap: str = "jet",
) -> bytes:
    """:func:`overlay_rgb` encoded as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(overlay_rgb(display_image_2d, heatmap_2d, alpha, colormap), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def label_text(pred: Prediction) -> str:
    """The burned-in caption: an AI result, to be confirmed."""
    text = f"AI (medlens): {pred.finding} p={pred.confidence:.2f}"
    return text + " - REFER" if pred.abstain else text


def burn_in_label(rgb: np.ndarray, text: str) -> np.ndarray:
    """Copy of ``rgb`` with ``text`` written in the top-left corner on a dark band."""
    img = Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = draw.textbbox((2, 2), text)
    draw.rectangle((0, 0, min(right + 2, img.width - 1), min(bottom + 2, img.height - 1)), fill=(0, 0, 0))
    draw.text((2, 2), text, fill=(255, 255, 0))
    return np.asarray(img, dtype=np.uint8)


def _orientation_letters(vector: np.ndarray) -> str:
    """DICOM patient-orientation letters of a direction in LPS (dominant axes first, at most 2)."""
    letters = []
    for axis in np.argsort(-np.abs(vector))[:2]:
        v = vector[axis]
        if abs(v) < 1e-3:
            continue
        letters.append(("L", "R") if axis == 0 else ("P", "A") if axis == 1 else ("H", "F"))
        letters[-1] = letters[-1][0] if v > 0 else letters[-1][1]
    return "".join(letters) or "L"


def _patient_orientation(ds: Dataset) -> tuple[str, str]:
    iop = ds.get("ImageOrientationPatient")
    if iop is not None and len(iop) == 6:
        v = np.asarray([float(x) for x in iop])
        return _orientation_letters(v[:3]), _orientation_letters(v[3:])
    po = ds.get("PatientOrientation")
    if po is not None and len(po) == 2:
        return str(po[0]), str(po[1])
    return "L", "P"  # unknown geometry: axial-like default required by the SC module


def secondary_capture(
    rgb: np.ndarray,
    pred: Prediction,
    source_ds: Dataset,
    *,
    series_number: int = 9902,
    series_instance_uid: str | None = None,
    label: bool = True,
) -> Dataset:
    """A DICOM Secondary Capture of the overlay in ``source_ds``'s study, as a new series.

    ``label`` burns the finding and probability into the top-left corner. The result references
    ``source_ds`` in SourceImageSequence and flags ``BurnedInAnnotation = YES``.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise MedlensError(f"secondary capture needs a uint8 (H, W, 3) image, got {rgb.dtype} {rgb.shape}")
    if label:
        rgb = burn_in_label(rgb, label_text(pred))
    source_ds = complete_source(source_ds)
    spacing = source_ds.get("PixelSpacing")
    pixel_spacing = None
    if spacing is not None and len(spacing) == 2 and "Rows" in source_ds and "Columns" in source_ds:
        # the overlay may be resampled: keep the physical field of view of the source image
        pixel_spacing = (
            float(spacing[0]) * int(source_ds.Rows) / rgb.shape[0],
            float(spacing[1]) * int(source_ds.Columns) / rgb.shape[1],
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source_ds,
            pixel_array=np.ascontiguousarray(rgb),
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=series_instance_uid or hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="medlens",
            pixel_spacing=pixel_spacing,
            patient_orientation=_patient_orientation(source_ds),
            transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
        )
    sc.SeriesDescription = SC_SERIES_DESCRIPTION
    if "Laterality" not in sc:  # type 2C in General Series: present (empty when unknown)
        sc.Laterality = source_ds.get("Laterality", "")
    sc.BurnedInAnnotation = "YES"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.SoftwareVersions = __version__
    sc.DerivationDescription = f"medlens {pred.model} heatmap overlay; {label_text(pred)}"[:1024]
    ref = Dataset()
    ref.ReferencedSOPClassUID = source_ds.SOPClassUID
    ref.ReferencedSOPInstanceUID = source_ds.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    return sc


# --------------------------------------------------------------------------------------------
# choosing the picture for a prediction
# --------------------------------------------------------------------------------------------
def _slice_position(ds: Dataset) -> float:
    ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    if ipp is not None and iop is not None and len(ipp) == 3 and len(iop) == 6:
        v = np.asarray([float(x) for x in iop])
        return float(np.dot(np.cross(v[:3], v[3:]), [float(x) for x in ipp]))
    return float(ds.get("InstanceNumber", 0) or 0)


def slice_order(sources: Sequence[Dataset]) -> list[Dataset]:
    """Sources in volume order: by position along the slice normal (InstanceNumber without geometry)."""
    return sorted(sources, key=_slice_position)


def _display(ds: Dataset) -> np.ndarray:
    """One source image as grey values in [0, 1] (its own window, else the 0.5-99.5 percentiles)."""
    from medlens.data.dicom import apply_window

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = ds.pixel_array.astype(np.float32)
    if arr.ndim == 3 and int(ds.get("SamplesPerPixel", 1)) == 3:
        arr = arr @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    elif arr.ndim == 3:  # multi-frame: middle frame
        arr = arr[arr.shape[0] // 2]
    arr = arr * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
    wc, ww = ds.get("WindowCenter"), ds.get("WindowWidth")
    try:
        wc = float(wc[0] if isinstance(wc, pydicom.multival.MultiValue) else wc)
        ww = float(ww[0] if isinstance(ww, pydicom.multival.MultiValue) else ww)
    except (TypeError, ValueError):
        wc = ww = None
    if not ww or ww <= 0:
        lo, hi = np.percentile(arr, [0.5, 99.5])
        wc, ww = (lo + hi) / 2, max(hi - lo, 1e-6)
    return apply_window(arr, wc, ww)


def overlay_for_result(result: Any, sources: Sequence[Dataset] | None = None) -> tuple[np.ndarray, Dataset]:
    """(RGB overlay, the source instance it shows) for a PredictionResult-like object.

    With a 3D heatmap (D, H, W) the slice with the largest heatmap value is chosen, mapped onto the
    sources in volume order (the heatmap's D may differ from the number of slices), and drawn from
    that instance's own pixels. With a 2D heatmap (or none) the result's ``display_image`` is
    used (falling back to the middle source image) and the middle source instance is referenced.
    """
    pred: Prediction = result.prediction
    ordered = slice_order(list(sources if sources is not None else result.sources))
    if not ordered:
        raise MedlensError("an overlay needs at least one source DICOM instance")
    heat = None if pred.heatmap is None else np.asarray(pred.heatmap, dtype=np.float32)
    if heat is not None:
        heat = np.squeeze(heat)
    if heat is not None and heat.ndim == 3:
        k = int(np.argmax(heat.reshape(heat.shape[0], -1).max(axis=1)))
        n, d = len(ordered), heat.shape[0]
        index = int(round(k * (n - 1) / (d - 1))) if d > 1 else n // 2
        source = ordered[index]
        return overlay_rgb(_display(source), heat[k]), source
    if heat is not None and heat.ndim != 2:
        raise MedlensError(f"heatmap must be 2D or 3D, got shape {heat.shape}")
    source = ordered[len(ordered) // 2]
    display = getattr(result, "display_image", None)
    display = _display(source) if display is None else np.squeeze(np.asarray(display, dtype=np.float32))
    return overlay_rgb(display, heat), source
