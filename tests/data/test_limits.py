"""Size limits are checked from headers, before any decode, and every reader fails with one line.

The hostile files are tiny on disk (:mod:`tests.fuzz.hostile`); each is read in a subprocess whose
address space is capped, so a regression shows as a failed test, not a swapping machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from medlens.data.imageio import read_image_file
from medlens.data.limits import Limits, check_size
from medlens.errors import BadInputError
from tests.conftest import PROJECT_ROOT
from tests.fuzz import hostile

MAX_GROWTH_MB = 500

# (name, generator): the defects of issue 10, each a file a few KB on disk
HUGE = {
    "rle_dicom_65535": lambda d: hostile.rle_dicom_bomb(d / "rle.dcm"),
    "png_12500": lambda d: hostile.png_bomb(d / "bomb.png"),
    "nifti_gz_800": lambda d: hostile.nifti_gz_bomb(d / "bomb.nii.gz"),
    "nifti_header_1e9": lambda d: hostile.nifti_lying(d / "lying.nii"),
    "dicom_100k_frames": lambda d: hostile.multiframe_dicom(d / "frames.dcm"),
}

_READ_ALL = textwrap.dedent(
    """
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # a regression fails, not swaps
    from medlens.data.imageio import read_image_file
    from medlens.errors import MedlensError
    out = {}
    for name, path in json.loads(sys.argv[1]).items():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            read_image_file(path)
            result = "read"
        except MedlensError as e:
            result = type(e).__name__ + ": " + str(e)
        except BaseException as e:
            result = "ESCAPED " + type(e).__name__
        growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        out[name] = {"result": result, "growth_mb": growth}
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def huge_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("huge")
    paths = {name: str(make(folder)) for name, make in HUGE.items()}
    proc = subprocess.run(
        [sys.executable, "-c", _READ_ALL, json.dumps(paths)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT_ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(HUGE))
def test_huge_declared_sizes_are_refused_before_decoding(huge_results, name):
    got = huge_results[name]
    assert got["result"].startswith("BadInputError: "), got
    assert "too large" in got["result"] and "\n" not in got["result"]
    assert got["growth_mb"] < MAX_GROWTH_MB, got


def test_limits_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDLENS_MAX_PIXELS", "100")
    assert Limits.from_env().max_pixels == 100
    path = hostile.small_dicom(tmp_path / "a.dcm", side=16)  # 256 pixels
    with pytest.raises(BadInputError, match=r"too large: .*MEDLENS_MAX_PIXELS"):
        read_image_file(path)
    monkeypatch.setenv("MEDLENS_MAX_PIXELS", "lots")
    with pytest.raises(BadInputError, match="must be a number"):
        Limits.from_env()


def test_check_size_counts_frames_channels_and_bytes():
    small = Limits(max_pixels=100, max_voxels=1000, max_frames=5, max_bytes=2000)
    check_size("x", rows=10, cols=10, frames=5, limits=small)
    for kwargs, word in (
        (dict(rows=11, cols=10), "pixels"),
        (dict(rows=2, cols=2, frames=6), "frames"),
        (dict(rows=10, cols=10, frames=5, channels=3), "values"),
        (dict(rows=10, cols=10, frames=5, bytes_per_value=8), "bytes"),
        (dict(rows=0, cols=10), "corrupt header"),
    ):
        with pytest.raises(BadInputError, match=word):
            check_size("x", limits=small, **kwargs)


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda d: hostile.dicom_with_is(d / "is.dcm"), "IS value '12345J' in InstanceNumber"),
        (lambda d: hostile.dicom_with_vr(d / "vr.dcm"), "Unknown Value Representation 'Uj'"),
        (lambda d: hostile.multiframe_dicom(d / "mf.dcm", frames=4000), "StopIteration"),
        (lambda d: hostile.dicom_with_is(d / "sn.dcm", "7,5"), "IS value '7,5'"),
    ],
    ids=["IS-12345J", "VR-Uj", "frames-missing", "IS-comma"],
)
def test_mutated_dicom_headers_are_one_line_errors(tmp_path, make, problem):
    with pytest.raises(BadInputError) as e:
        read_image_file(make(tmp_path))
    assert problem in str(e.value) and "\n" not in str(e.value)


def test_dicom_without_transfer_syntax_reads_as_its_encoding(tmp_path):
    data = read_image_file(hostile.dicom_without_ts(tmp_path / "nots.dcm"))
    assert data.array.shape == (1, 16, 16)


def test_pil_decompression_bomb_is_one_line(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL refuses > 2000 pixels in Image.open
    path = hostile.png_bomb(tmp_path / "b.png", side=64, rgb=False)
    with pytest.raises(BadInputError, match="too large: .*decompression bomb"):
        read_image_file(path)


def test_memory_error_is_one_line(tmp_path, monkeypatch):
    import medlens.data.imageio as imageio

    def no_memory(*_a, **_k):
        raise MemoryError

    path = hostile.png_bomb(tmp_path / "ok.png", side=8, rgb=False)
    monkeypatch.setattr(imageio, "_pil_to_array", no_memory)
    with pytest.raises(BadInputError, match="memory available"):
        read_image_file(path)


def test_uncompressed_nifti_shorter_than_its_header_says(tmp_path):
    path = tmp_path / "short.nii"
    path.write_bytes(hostile.nifti_header((64, 64, 64)) + bytes(1000))
    with pytest.raises(BadInputError, match="truncated NIfTI"):
        read_image_file(path)


def test_npz_declaring_more_than_it_holds(tmp_path):
    import zipfile

    from medlens.data.sources import open_source

    good = tmp_path / "good.npz"
    np.savez(good, train_images=np.zeros((2, 8, 8), np.uint8), train_labels=np.zeros((2, 1), np.uint8))
    bad = tmp_path / "lying.npz"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "train_images.npy":
                data = data.replace(b"(2, 8, 8)", b"(9, 8, 8)")
            dst.writestr(info.filename, data)
    with pytest.raises(BadInputError, match="declares 576 bytes but holds"):
        open_source(str(bad))
