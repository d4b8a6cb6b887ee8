"""User-facing errors.

Anything the user can fix (a bad path, a corrupt file, an unknown URI scheme) raises
:class:`MedlensError`. The command line prints it as one line and exits with code 2;
no traceback is shown for a user mistake.
"""

from __future__ import annotations

from pathlib import Path


def printable(text: str) -> str:
    """``text`` with each non-printable character escaped (``\\x1b``, ``\\n``), so that a file name
    cannot forge log lines or terminal escapes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class MedlensError(Exception):
    """A problem with the user's input, reported as one line naming the file and the problem.

    ``path`` and ``problem`` are kept as given; the message escapes control characters in both."""

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = str(path) if path is not None else None
        self.problem = message
        text = f"{self.path}: {message}" if self.path else message
        super().__init__(printable(text))


class BadInputError(MedlensError):
    """A file exists but cannot be read as what it claims to be (corrupt, truncated, not an image)."""


class UnknownSourceError(MedlensError):
    """A SOURCE string matches no reader (unknown URI scheme or file ending)."""


class ChecksumError(MedlensError):
    """A downloaded or cached file does not match its published checksum."""
