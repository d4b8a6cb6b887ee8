"""Text that is safe to log and to answer: control characters escaped, DICOM UIDs redacted.

:func:`printable` is applied to every client-chosen name (upload file names, ids in paths) before it
reaches a log line or an answer. :func:`configure_logging` sets up `medlens serve`'s log with a
filter that also redacts anything shaped like a DICOM UID, whichever library wrote the line.
"""

from __future__ import annotations

import logging
import re

from medlens.errors import printable as escape

# A UID has at least 5 numeric components here: an IPv4 address (4) or a version number is left alone.
UID = re.compile(r"(?<![\w.])[0-2](?:\.\d+){4,}(?!\d)")  # a UID ending a sentence ("...6.") counts too
"""A DICOM-UID-shaped token (the DICOM node's log filter uses it too)."""
REDACTED = "<uid>"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def printable(text: str, limit: int | None = 200) -> str:
    """``text`` cut to ``limit`` characters, each non-printable character escaped
    (:func:`medlens.errors.printable`)."""
    return escape(text if limit is None else text[:limit])


def redact_uids(text: str) -> str:
    """``text`` with every DICOM-UID-shaped token replaced by ``<uid>``."""
    return UID.sub(REDACTED, text)


class SafeLogFilter(logging.Filter):
    """Rewrites each record's message: UIDs redacted, control characters escaped (no forged lines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = printable(redact_uids(message), limit=None)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def configure_logging(level: str) -> logging.Handler:
    """Log to stderr through :class:`SafeLogFilter`; library warnings (they quote header values) are dropped."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(SafeLogFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.ERROR)
    return handler
