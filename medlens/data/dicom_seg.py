"""DICOM Segmentation (SEG) as input: its label map in the DICOM reader's volume order.

:func:`read_seg` reads a SEG with highdicom (``hd.seg.segread``) and lays its segments out on the
volume that :mod:`medlens.data.dicom` builds from the referenced source series: slice ``d`` of
the result is the SEG's content for the source instance (or frame) that
:func:`~medlens.data.dicom.slice_sources` puts at slice ``d``, found by the SEG's references,
never by the order of its frames. Segments become labels 1..K in segment-number order (0 is
background); source slices the SEG leaves out are empty. Overlapping segments, a SEG of another
series and an unreadable SEG are one-line errors naming the SEG file.

The inverse, a SEG built from a label map, is :mod:`medlens.serving.seg`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from medlens.data.dicom import read_file, slice_sources
from medlens.errors import BadInputError

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def seg_segment_labels(seg_header) -> list[str]:
    """The segment labels of a SEG header (pydicom dataset), in segment-number order."""
    segments = sorted(seg_header.get("SegmentSequence", []), key=lambda s: int(s.SegmentNumber))
    return [str(s.get("SegmentLabel", s.SegmentNumber)) for s in segments]


def seg_referenced_series(seg_header) -> set[str]:
    """The SeriesInstanceUIDs a SEG header references."""
    return {str(r.SeriesInstanceUID) for r in seg_header.get("ReferencedSeriesSequence", [])}


def read_seg(seg_path: str | Path, source_files: Sequence[str | Path]) -> tuple[np.ndarray, list[str]]:
    """The SEG at ``seg_path`` as a uint8 (D, H, W) label map over the series in ``source_files``
    (any order), and its segment labels (label value k is ``labels[k - 1]``)."""
    import highdicom as hd

    seg_path = Path(seg_path)
    headers = [read_file(p, pixels=False) for p in source_files]
    layout = slice_sources(headers, source=str(Path(source_files[0]).parent) if source_files else "")
    if len(layout) > 1:
        raise BadInputError(f"the SEG's source series has {len(layout)} time points; only 3D/2D series", seg_path)
    slices = layout[0]
    if any(s.mosaic for s in slices):
        raise BadInputError(
            "the SEG's source is a Siemens mosaic: its slices cannot be referenced one by one", seg_path
        )
    try:
        seg = hd.seg.segread(seg_path)
    except Exception as e:  # noqa: BLE001 - pydicom/highdicom raise many kinds for a broken SEG
        raise BadInputError(f"not a readable DICOM SEG ({_first_line(e)})", seg_path) from None
    series_uid = str(headers[0].get("SeriesInstanceUID", ""))
    if series_uid not in seg_referenced_series(seg):
        raise BadInputError(f"the SEG does not reference series {series_uid}", seg_path)
    options = dict(combine_segments=True, relabel=True, assert_missing_frames_are_empty=True, dtype=np.uint8)
    try:
        if len(headers) == 1 and int(headers[0].get("NumberOfFrames", 1) or 1) > 1:
            uid = str(headers[0].SOPInstanceUID)
            labels = seg.get_pixels_by_source_frame(uid, [s.frame + 1 for s in slices], **options)
        else:
            uids = [str(headers[s.dataset].SOPInstanceUID) for s in slices]
            labels = seg.get_pixels_by_source_instance(uids, **options)
    except (ValueError, KeyError, RuntimeError) as e:
        raise BadInputError(f"cannot map the SEG onto its source series ({_first_line(e)})", seg_path) from None
    return np.ascontiguousarray(labels), seg_segment_labels(seg)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]
