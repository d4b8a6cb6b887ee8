"""Measurements of a label map: sizes from the spacing, vessel fraction inside the field of view, errors."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.sr.codedict import codes

from medlens.errors import MedlensError
from medlens.inference.measurements import QUANTITIES, describe_measurement, is_vessel, measure_segments


def test_volume_is_voxel_count_times_voxel_volume_and_empty_segments_are_kept():
    labels = np.zeros((4, 6, 5), np.uint8)
    labels[1:3, 2:5, 1:4] = 1  # 2 * 3 * 3 = 18 voxels
    labels[0, 0, 0] = 2
    out = measure_segments(labels, ["background", "anterior", "posterior", "tail"], (2.5, 0.8, 0.6))
    assert [(m["segment"], m["label"], m["quantity"], m["unit"], m["voxels"]) for m in out] == [
        (1, "anterior", "volume", "mm3", 18),
        (2, "posterior", "volume", "mm3", 1),
        (3, "tail", "volume", "mm3", 0),
    ]
    assert out[0]["value"] == pytest.approx(18 * 2.5 * 0.8 * 0.6)
    assert out[2]["value"] == 0.0
    assert describe_measurement(out[0]) == "anterior: volume 21.6 mm3"


def test_a_2d_map_gives_areas_and_no_spacing_gives_pixel_counts():
    labels = np.zeros((8, 8), np.uint8)
    labels[:2, :5] = 1
    (area,) = measure_segments(labels, ["background", "lesion"], (0.5, 0.2))
    assert (area["quantity"], area["unit"], area["value"]) == ("area", "mm2", pytest.approx(10 * 0.1))
    (count,) = measure_segments(labels, ["background", "lesion"])
    assert (count["quantity"], count["unit"], count["value"]) == ("area", "{pixel}", 10.0)


def test_vessel_fraction_is_counted_inside_the_field_of_view():
    labels = np.zeros((10, 10), np.uint8)
    labels[:, :2] = 1  # 20 vessel pixels, 10 of them outside the field of view
    fov = np.zeros((10, 10), bool)
    fov[5:, :] = True  # 50 pixels, 10 vessel pixels inside
    size, fraction = measure_segments(labels, ["background", "Vessels"], fov=fov)
    assert size["voxels"] == 20
    assert (fraction["quantity"], fraction["unit"], fraction["region"]) == ("vessel fraction", "%", "field of view")
    assert fraction["value"] == pytest.approx(100 * 10 / 50) and fraction["voxels"] == 10
    _, whole = measure_segments(labels, ["background", "vessel"])
    assert whole["value"] == pytest.approx(20.0) and whole["region"] == "whole image"
    assert is_vessel("blood_vessel") and not is_vessel("lesion")


def test_quantities_carry_the_dicom_standard_codes():
    assert QUANTITIES["volume"].code == codes.SCT.Volume.value
    assert QUANTITIES["area"].code == codes.SCT.Area.value


@pytest.mark.parametrize(
    "labels, kwargs, message",
    [
        (np.full((3, 3), 2, np.uint8), {}, "label values 2 outside the declared segments 1..1"),
        (np.zeros((3, 3), np.float32), {}, "integer labels"),
        (np.zeros((3, 3, 3), np.uint8), {"spacing": (1.0, 1.0)}, "does not fit a 3D label map"),
        (np.zeros((3, 3), np.uint8), {"fov": np.ones((3, 4), bool)}, "field-of-view mask must be boolean"),
        (np.zeros((3, 3), np.uint8), {"fov": np.zeros((3, 3), bool)}, "field-of-view mask is empty"),
        (np.zeros(3, np.uint8), {}, "2D or 3D"),
    ],
    ids=["label-too-high", "float", "spacing", "fov-shape", "fov-empty", "1d"],
)
def test_bad_input_is_a_one_line_error(labels, kwargs, message):
    with pytest.raises(MedlensError, match=message) as error:
        measure_segments(labels, ["background", "lesion"], **kwargs)
    assert "\n" not in str(error.value)
