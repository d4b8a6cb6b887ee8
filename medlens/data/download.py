"""Download a file into the medlens cache, verified by its published MD5.

The cache folder is ``$MEDLENS_CACHE`` (default ``~/.cache/medlens``). A download streams to a
temporary file beside its destination, shows a progress bar on stderr, checks the MD5 and only
then renames the file into place, so the cache never holds a partial or corrupt file: on a
checksum mismatch the downloaded bytes are deleted and :class:`~medlens.errors.ChecksumError`
names the file and both checksums.

This is the only module of medlens that touches the network, and only when a user asks for a
MedMNIST data set that is not in the cache yet.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from medlens import progress
from medlens.errors import ChecksumError, MedlensError

CHUNK = 1 << 20


def cache_dir() -> Path:
    """The medlens cache folder: ``$MEDLENS_CACHE`` or ``~/.cache/medlens`` (not created here)."""
    env = os.environ.get("MEDLENS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "medlens"


def md5_file(path: str | Path, chunk: int = CHUNK) -> str:
    """The MD5 hex digest of a file, read in chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def download(
    url: str, dest: str | Path, *, md5: str | None = None, show_progress: bool = True, timeout: float = 60.0
) -> Path:
    """Download ``url`` to ``dest`` atomically, checking ``md5`` when given; return ``dest``.

    Raises :class:`MedlensError` when the server cannot be reached or answers with an error,
    and :class:`ChecksumError` (after deleting the downloaded bytes) when the MD5 differs.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    h = hashlib.md5()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - http(s) URL from the catalog
            except (urllib.error.URLError, OSError, ValueError) as e:
                reason = getattr(e, "reason", None) or e
                raise MedlensError(f"download failed from {url} ({reason})", dest) from None
            with response:
                total = int(response.headers.get("Content-Length") or 0) or None
                with progress.bar(total, desc=f"downloading {dest.name}", disable=not show_progress, unit="B") as bar:
                    while True:
                        try:
                            block = response.read(CHUNK)
                        except OSError as e:
                            raise MedlensError(f"download from {url} was interrupted ({e})", dest) from None
                        if not block:
                            break
                        out.write(block)
                        h.update(block)
                        bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
        got = h.hexdigest()
        if md5 is not None and got.lower() != md5.lower():
            raise ChecksumError(
                f"checksum mismatch for the file downloaded from {url}: expected MD5 {md5}, got {got} "
                "(the file was deleted)",
                dest,
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest
