"""Fuzzing the readers, briefly: a seeded mutation corpus and hypothesis properties for DICOM,
PNG/JPEG/TIFF/BMP, NIfTI and npz. Only :class:`~medlens.errors.MedlensError` subclasses may escape,
and every input is answered quickly. ``benchmarks/bench_fuzz.py`` runs the same corpus at length.
"""

from __future__ import annotations

import time
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medlens.data.imageio import read_image_file
from medlens.data.sources import open_source
from medlens.errors import MedlensError
from tests.fuzz.corpus import base_files, mutants

N_MUTANTS = 600
MAX_SECONDS = 2.0  # per input
BASES = base_files()


def read_any(path) -> None:
    """What `data info` reads: the npz source with its samples, or one image file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if str(path).endswith(".npz"):
            dataset = open_source(str(path))
            for i in range(len(dataset)):
                dataset.load(i)
        else:
            read_image_file(path)


def escapes(path) -> str | None:
    """None when ``path`` reads or fails with a MedlensError, else the exception that escaped."""
    try:
        read_any(path)
    except MedlensError as e:
        assert "\n" not in str(e)
    except Exception as e:  # noqa: BLE001 - that is what the test looks for
        return f"{type(e).__name__}: {e}"
    return None


def test_base_files_read():
    assert set(BASES) >= {"png", "jpeg", "tiff", "bmp", "dicom", "dicom_rle", "nifti", "nifti_gz", "npz"}


def test_mutation_corpus_raises_only_medlens_errors_quickly(tmp_path):
    failures, slow = [], []
    for name, suffix, data in mutants(N_MUTANTS, seed=10):
        path = tmp_path / f"input{suffix}"
        path.write_bytes(data)
        start = time.perf_counter()
        problem = escapes(path)
        took = time.perf_counter() - start
        if problem:
            failures.append(f"{name}: {problem}")
        if took > MAX_SECONDS:
            slow.append(f"{name}: {took:.1f} s")
    assert not failures, failures[:10]
    assert not slow, slow[:10]


_PROPERTY = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], database=None
)


@_PROPERTY
@given(
    name=st.sampled_from(sorted(BASES)),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=12),
    keep=st.floats(0.0, 1.0),
)
def test_edited_files_raise_only_medlens_errors(tmp_path, name, edits, keep):
    suffix, data = BASES[name]
    out = bytearray(data)
    for pos, value in edits:
        out[pos % len(out)] = value
    out = out[: max(1, int(len(out) * keep))] if keep < 0.9 else out
    path = tmp_path / f"edited{suffix}"
    path.write_bytes(bytes(out))
    assert escapes(path) is None


@_PROPERTY
@given(
    magic=st.sampled_from(
        [
            (".png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
            (".jpg", b"\xff\xd8\xff\xe0"),
            (".tif", b"II*\x00"),
            (".bmp", b"BM"),
            (".dcm", b"\x00" * 128 + b"DICM"),
            (".nii", b"\x5c\x01\x00\x00"),
            (".nii.gz", b"\x1f\x8b\x08\x00"),
            (".npz", b"PK\x03\x04"),
        ]
    ),
    body=st.binary(max_size=2048),
)
def test_random_bytes_after_a_format_magic(tmp_path, magic, body):
    suffix, head = magic
    path = tmp_path / f"random{suffix}"
    path.write_bytes(head + body)
    assert escapes(path) is None


@pytest.mark.parametrize("seed", [1])
def test_predict_bytes_on_mutants(tiny_classical_run, seed):
    """The service's reader path (sniffing, temporary file, predictor checks) on a hundred mutants."""
    from medlens.serving.predictor import Predictor

    predictor = Predictor.from_run(tiny_classical_run)
    failures = []
    for name, _suffix, data in mutants(120, seed=seed):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                predictor.predict_bytes(data, name)
        except MedlensError:
            pass
        except Exception as e:  # noqa: BLE001
            failures.append(f"{name}: {type(e).__name__}: {e}")
    assert not failures, failures[:10]
