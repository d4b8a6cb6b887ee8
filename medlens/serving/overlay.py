"""Heatmap overlays: an RGB picture of where the model looked, as PNG or as a DICOM Secondary Capture.

* :func:`overlay_rgb` blends a colour-mapped heatmap (matplotlib colormap, bilinear resize to the
  image with Pillow) over a grey image; :func:`overlay_png` encodes it as PNG.
* :func:`secondary_capture` wraps the RGB picture in a DICOM Secondary Capture Image built with
  highdicom (``SCImage.from_ref_dataset``): same patient and study as the source image, a new
  series ("medlens overlay"), ``BurnedInAnnotation = YES`` (the overlay and the AI label are
  burned into the pixels) and a SourceImageSequence reference to the instance it was made from.
* :func:`overlay_for_result` draws a prediction's picture: the source image at its own resolution
  with the heatmap on its pixels (for 3D the source slice where the heatmap peaks), and names the
  source instance it shows.
* Segmentations: :func:`mask_layer` colours a label map (segment ``n`` in
  :func:`segment_colour`, background transparent) as an RGBA layer for the image,
  :func:`display_slices` gives every slice of a segmented volume as grey values.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

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
SEGMENT_COLOURS = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
)
"""RGB of segments 1, 2, 3 ... (cycled): saturated hues, none grey, so that a mask reads over a grey image."""


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


def _spacing(source_ds: Dataset, keyword: str, shape: tuple[int, ...]) -> tuple[float, float] | None:
    """The source's ``keyword`` spacing (row, column) for a picture of ``shape``: the source's own
    at its resolution, scaled when the picture is reduced (same physical field of view)."""
    spacing = source_ds.get(keyword)
    if spacing is None or len(spacing) != 2 or "Rows" not in source_ds or "Columns" not in source_ds:
        return None
    return (
        float(spacing[0]) * int(source_ds.Rows) / shape[0],
        float(spacing[1]) * int(source_ds.Columns) / shape[1],
    )


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
    ``source_ds`` in SourceImageSequence and flags ``BurnedInAnnotation = YES``; its PixelSpacing
    and ImagerPixelSpacing are the source's (scaled when the picture is smaller than the source).
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise MedlensError(f"secondary capture needs a uint8 (H, W, 3) image, got {rgb.dtype} {rgb.shape}")
    if label:
        rgb = burn_in_label(rgb, label_text(pred))
    source_ds = complete_source(source_ds)
    pixel_spacing = _spacing(source_ds, "PixelSpacing", rgb.shape)
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
    imager_spacing = _spacing(source_ds, "ImagerPixelSpacing", rgb.shape)
    if imager_spacing is not None:  # projection X-ray: measurements at the detector stay true
        sc.ImagerPixelSpacing = [pydicom.valuerep.DSfloat(v, auto_format=True) for v in imager_spacing]
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


def overlay_for_result(result: Any) -> tuple[np.ndarray, Dataset]:
    """(RGB overlay, the source instance it shows) for a :class:`~medlens.serving.predictor.PredictionResult`:
    its picture in the source's geometry (:func:`medlens.inference.geometry.source_view`)."""
    image, heat = result.heatmap_slice()
    source = result.shown_source()
    if image is None or source is None:
        raise MedlensError("an overlay needs the source image and at least one source DICOM instance")
    return overlay_rgb(image, heat), source


def segment_colour(number: int) -> str:
    """The colour of segment ``number`` (1..K) as ``#rrggbb`` (the page's legend; :func:`mask_layer` draws it)."""
    return "#{:02x}{:02x}{:02x}".format(*SEGMENT_COLOURS[(number - 1) % len(SEGMENT_COLOURS)])


def mask_layer(labels_2d: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 (H, W, 4): each segment of a 2D label map in its colour, opaque; background transparent.

    ``shape``: the picture's (rows, columns) when it differs from the label map's (nearest
    neighbour: label values are never blended).
    """
    labels = np.asarray(labels_2d)
    if labels.ndim != 2:
        raise MedlensError(f"a mask layer needs a 2D label map, got shape {labels.shape}")
    if shape is not None and tuple(shape) != labels.shape:
        resized = Image.fromarray(labels.astype(np.uint8), mode="L").resize(
            (int(shape[1]), int(shape[0])), Image.NEAREST
        )
        labels = np.asarray(resized)
    palette = np.zeros((256, 4), np.uint8)
    for number in range(1, 256):
        palette[number] = (*SEGMENT_COLOURS[(number - 1) % len(SEGMENT_COLOURS)], 255)
    return palette[labels.astype(np.uint8)]


def png_bytes(array: np.ndarray) -> bytes:
    """A uint8 (H, W), (H, W, 3) or (H, W, 4) array as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def display_slices(model_input: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Every slice of a segmented volume as grey values in [0, 1], float32 (D, H, W) of ``shape``.

    Made from the model input (C, d, h, w), resampled onto the source's grid when it differs (as
    the label map is), with one 0.5-99.5 percentile window for the whole volume, so that slices
    compare while scrolling. The preprocessing's intensity steps are linear (z-score, min-max,
    scale) or a clip (window), so this is the picture the source gives with the same window.
    """
    from medlens.inference.geometry import display_window, to_source_geometry

    x = np.asarray(model_input, dtype=np.float32)
    if x.ndim != 4:
        raise MedlensError(f"display slices need a (C, D, H, W) volume, got shape {x.shape}")
    c, d, h, w = x.shape
    grey = display_window(x.reshape(c, d * h, w)).reshape(d, h, w)
    return np.clip(to_source_geometry(grey, shape), 0.0, 1.0)
