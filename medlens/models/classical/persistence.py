"""Saving and loading fitted classical estimators (joblib), hash-checked before unpickling.

joblib *unpickles* on load and can run arbitrary code from a crafted file. :func:`load_estimator`
therefore loads only a file whose sha256 matches the one recorded when it was written (the run's
``manifest.json``); never load a ``model.joblib`` from anyone else.
"""

from __future__ import annotations

import io
from pathlib import Path

from medlens.errors import ChecksumError, MedlensError
from medlens.runs import atomic_write_bytes, sha256_file


def save_estimator(estimator, path: str | Path) -> str:
    """Write ``estimator`` with joblib (atomically); returns the file's sha256 for the manifest."""
    import joblib

    buf = io.BytesIO()
    joblib.dump(estimator, buf, compress=3)
    atomic_write_bytes(path, buf.getvalue())
    return sha256_file(path)


def load_estimator(path: str | Path, expected_sha256: str):
    """Load an estimator saved by :func:`save_estimator`, only if its sha256 matches.

    joblib unpickles, which can execute code: only files we wrote ourselves and whose hash is
    recorded in the run's manifest may be loaded. A missing, changed or unhashed file raises
    :class:`~medlens.errors.MedlensError` before anything is unpickled.
    """
    import joblib

    path = Path(path)
    if not expected_sha256:
        raise ChecksumError("refusing to load a joblib file without its expected sha256", path)
    if not path.is_file():
        raise MedlensError("model file not found", path)
    actual = sha256_file(path)
    if actual != expected_sha256.lower():
        raise ChecksumError(
            f"sha256 {actual[:12]}... does not match the manifest ({expected_sha256[:12]}...); "
            "refusing to unpickle a file that is not the one we wrote",
            path,
        )
    return joblib.load(path)
