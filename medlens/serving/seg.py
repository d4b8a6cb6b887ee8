"""DICOM Segmentation (SEG) of a label-map mask, built with highdicom.

The mask is a label map (0 background, 1..K segments) in the voxel order of the volume that
:mod:`medlens.data.dicom` builds from ``sources`` (see :mod:`medlens.data.masks`). Slice ``d`` of
the mask is matched to its source instance (or frame) through
:func:`medlens.data.dicom.slice_sources`, the reader's own slice order, never the order the
sources come in. The SEG is BINARY, one frame per segment and source slice, each frame referencing
its source image and carrying its plane position; highdicom orders the frames along the slice
normal and indexes them by segment and position. Empty frames are kept (``omit_empty_frames=False``):
the SEG then states "nothing here" for every slice instead of leaving readers to infer it from a
missing frame (viewers that do not fill gaps show the right thing); bit-packed, that costs
rows x columns / 8 bytes per slice and segment.

`medlens predict --format seg` (through ``PredictionResult.dicom_seg``), the REST API and the
DICOM node build their SEG here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import highdicom as hd
import numpy as np
import pydicom
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

from medlens import __version__
from medlens.data.dicom import slice_sources
from medlens.data.masks import label_map
from medlens.errors import MedlensError
from medlens.serving.headers import complete_source

SEG_SERIES_DESCRIPTION = "medlens segmentation"


@dataclass(frozen=True)
class Segment:
    """One segment (label value = its position in ``segments``, from 1) and what it is, coded."""

    label: str
    category: CodedConcept = codes.SCT.MorphologicallyAbnormalStructure
    property_type: CodedConcept = codes.SCT.Tissue


def segmentation(
    mask,
    sources: Sequence[pydicom.Dataset],
    segments: Sequence[str | Segment],
    *,
    model: str,
    series_number: int = 9903,
    device_serial_number: str = "medlens",
) -> hd.seg.Segmentation:
    """Build the SEG of ``mask`` ((D, H, W) label map; (H, W) for one 2D image) over ``sources``.

    ``segments``: segment 1..K, each a label (coded with the defaults of :class:`Segment`) or a
    :class:`Segment`. ``model``: the model that made the mask (algorithm identification).
    """
    if not sources:
        raise MedlensError("a DICOM SEG needs the DICOM instances the mask was computed on")
    if not segments:
        raise MedlensError("a DICOM SEG needs at least one segment")
    sources = [complete_source(ds) for ds in sources]
    layout = slice_sources(sources)
    if len(layout) > 1:
        raise MedlensError(f"the sources hold {len(layout)} time points: a SEG of a 4D series is not supported")
    slices = layout[0]
    if any(s.mosaic for s in slices):
        raise MedlensError("a SEG cannot reference the slices of a Siemens mosaic one by one")
    rows, columns = int(sources[0].Rows), int(sources[0].Columns)
    labels = label_map(mask, (len(slices), rows, columns), len(segments))
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in sources):
        if len(sources) > 1:
            raise MedlensError("a SEG references either single-frame images or exactly one multi-frame image")
        pixels = np.empty_like(labels)
        pixels[[s.frame for s in slices]] = labels  # the file's frame order
        ordered = sources
    else:
        pixels, ordered = labels, [sources[s.dataset] for s in slices]
    algorithm = hd.AlgorithmIdentificationSequence(
        name="medlens", family=codes.DCM.ArtificialIntelligence, version=__version__, parameters={"model": model}
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=seg.label[:64],
            segmented_property_category=seg.category,
            segmented_property_type=seg.property_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, seg in enumerate((s if isinstance(s, Segment) else Segment(s) for s in segments), start=1)
    ]
    try:
        return hd.seg.Segmentation(
            source_images=ordered,
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="medlens",
            manufacturer_model_name=model[:64],
            software_versions=__version__,
            device_serial_number=device_serial_number,
            omit_empty_frames=False,
            series_description=SEG_SERIES_DESCRIPTION,
        )
    except ValueError as e:  # highdicom's checks of the sources (geometry, sizes, SOP classes)
        raise MedlensError(f"cannot build a DICOM SEG from these sources: {str(e).splitlines()[0]}") from None
