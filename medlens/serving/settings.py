"""Settings of the REST service (`medlens serve`), and the API key file.

Safe defaults: bound to 127.0.0.1, CORS off (no origin allowed), uploads up to 64 MB, no API
keys (open, for a single-user workstation; `medlens serve` refuses a host beyond loopback without
keys unless told ``--insecure-no-keys``). With a key file every endpoint but ``/healthz``
needs a key (``X-API-Key: KEY`` or ``Authorization: Bearer KEY``).

Key file: one key per line, ``KEY_ID:SHA256_HEX`` (lines starting with ``#`` are comments).
Only the sha256 of a key is stored; :func:`create_key` makes a new random key, appends its
hash to the file and returns the key, which is shown once and never stored.
``$MEDLENS_API_KEYS`` may hold the same lines separated by commas or semicolons.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from medlens.errors import MedlensError

API_KEYS_ENV = "MEDLENS_API_KEYS"
_KEY_ID = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class ServeSettings:
    """Everything `medlens serve` needs; :func:`medlens.serving.app.create_app` takes one of these."""

    run_dir: Path
    model: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys_file: Path | None = None
    api_key_hashes: dict[str, str] = field(default_factory=dict)  # key id -> sha256 hex; merged with the file
    max_upload_mb: float = 64.0
    audit_url: str | None = None  # SQLAlchemy URL or SQLite path; default RUN/serve/audit.sqlite
    store_dir: Path | None = None  # default RUN/serve/predictions
    store_memory: int = 256  # recent predictions kept in memory
    store_disk: int = 2000  # recent predictions kept on disk
    cors_origins: list[str] = field(default_factory=list)  # none: CORS off
    pacs_url: str | None = None  # DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web
    pacs_timeout: float = 30.0
    uncertainty: str | None = None  # override of the model's uncertainty method
    max_batch: int = 16  # concurrent predictions answered in one pass of the network, at most
    pseudonym_key: str | None = None  # keys pseudonyms and hashed identifiers; default $MEDLENS_PSEUDONYM_KEY or random

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        if self.max_batch < 1:
            raise MedlensError(f"the batch size must be at least 1, got {self.max_batch}")
        if self.max_upload_mb <= 0:
            raise MedlensError(f"the upload limit must be positive, got {self.max_upload_mb} MB")
        if self.pacs_url:
            self.pacs_url = self.pacs_url.rstrip("/")
            if not self.pacs_url.startswith(("http://", "https://")):
                raise MedlensError(f"the PACS URL must be an http(s) DICOMweb root, got '{self.pacs_url}'")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def serve_dir(self) -> Path:
        return self.run_dir / "serve"

    def resolved_audit_url(self) -> str:
        return self.audit_url or str(self.serve_dir / "audit.sqlite")

    def resolved_store_dir(self) -> Path:
        return Path(self.store_dir) if self.store_dir else self.serve_dir / "predictions"

    def key_hashes(self) -> dict[str, str]:
        """All accepted keys as {key id: sha256 hex}: the key file, $MEDLENS_API_KEYS, and ``api_key_hashes``."""
        keys: dict[str, str] = {}
        if self.api_keys_file is not None:
            keys.update(read_key_file(Path(self.api_keys_file)))
        env = os.environ.get(API_KEYS_ENV, "").strip()
        if env:
            keys.update(parse_key_lines(re.split(r"[,;\n]", env), API_KEYS_ENV))
        keys.update(self.api_key_hashes)
        return keys


def hash_key(key: str) -> str:
    """sha256 hex of an API key (what the key file stores)."""
    return hashlib.sha256(key.encode()).hexdigest()


def parse_key_lines(lines, where: str) -> dict[str, str]:
    keys: dict[str, str] = {}
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key_id, sep, digest = line.partition(":")
        key_id, digest = key_id.strip(), digest.strip().lower()
        if not sep or not _KEY_ID.match(key_id) or not _HEX64.match(digest):
            raise MedlensError(f"line {n} is not 'KEY_ID:SHA256_HEX' (64 hex digits)", where)
        keys[key_id] = digest
    return keys


def read_key_file(path: Path) -> dict[str, str]:
    """{key id: sha256 hex} from a key file; a missing or malformed file is a one-line error."""
    if not path.is_file():
        raise MedlensError("API key file not found", path)
    keys = parse_key_lines(path.read_text().splitlines(), str(path))
    if not keys:
        raise MedlensError("API key file holds no key (create one with `medlens serve-keys FILE`)", path)
    return keys


def create_key(path: Path, key_id: str | None = None) -> tuple[str, str]:
    """Make a new random key, append ``KEY_ID:SHA256`` to ``path`` (mode 0600), return (key id, key)."""
    path = Path(path)
    existing = read_key_file(path) if path.is_file() and path.stat().st_size else {}
    key_id = key_id or f"key{len(existing) + 1}"
    if not _KEY_ID.match(key_id):
        raise MedlensError(f"key id '{key_id}' must be 1-64 letters, digits or _.@-")
    if key_id in existing:
        raise MedlensError(f"key id '{key_id}' already exists", path)
    key = "mlk_" + secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(f"{key_id}:{hash_key(key)}\n")
    return key_id, key


def match_key(presented: str, hashes: dict[str, str]) -> str | None:
    """The key id whose hash matches ``presented`` (constant-time comparison), else None."""
    digest = hash_key(presented)
    found = None
    for key_id, expected in hashes.items():
        if hmac.compare_digest(digest, expected):
            found = key_id
    return found
