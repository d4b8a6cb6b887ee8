"""Logs of the DICOM node without identifiers: every DICOM UID in a log line becomes its pseudonym.

Libraries name the data they handle: pynetdicom logs Affected SOP Instance UIDs (at DEBUG),
pydicom warns with the offending value (``Invalid value for VR UI: '1.2.826...'``), highdicom
logs UIDs at INFO. :func:`redact_uids` attaches :class:`UidRedactor` to those loggers (each of
their child loggers: a filter on a parent does not see its children's records), to medlens'
own loggers and to ``py.warnings``, and routes :mod:`warnings` into logging, so that such lines
read ``uid:<pseudonym>`` instead, and values quoted in their warnings
(highdicom quotes patient names) read ``<value>``. Well-known UIDs (SOP classes, transfer syntaxes) are kept:
they name no patient.
"""

from __future__ import annotations

import logging
import re

from pydicom.uid import UID_dictionary

from medlens.data.deid import pseudonym
from medlens.serving.logsafe import UID

# A quoted value in a library's warning ('Invalid value ...: 'X'', highdicom's 'The string "NAME" ...').
_QUOTED = re.compile(r"""(["'])[^"'\n]{1,64}\1""")
_QUOTING_LOGGERS = ("py.warnings", "pydicom", "highdicom")
LOGGER_PREFIXES = ("pynetdicom", "pydicom", "highdicom", "medlens.dicom_node", "medlens.pacs", "py.warnings")


class UidRedactor(logging.Filter):
    """Rewrites a record's message with every non-well-known DICOM UID replaced by its keyed pseudonym."""

    def __init__(self, key: str):
        super().__init__()
        self.key = key

    def redact(self, text: str) -> str:
        return UID.sub(lambda m: m[0] if m[0] in UID_dictionary else f"uid:{pseudonym(m[0], self.key)}", text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redact(message)
        if record.name.startswith(_QUOTING_LOGGERS):  # values quoted by libraries may be names
            redacted = _QUOTED.sub(r"\1<value>\1", redacted)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def redact_uids(key: str) -> UidRedactor:
    """Attach one :class:`UidRedactor` to the node's and the DICOM libraries' loggers (idempotent per key)."""
    logging.captureWarnings(True)
    redactor = UidRedactor(key)
    names = [n for n in logging.root.manager.loggerDict if n.startswith(LOGGER_PREFIXES)]
    for name in {*names, *LOGGER_PREFIXES}:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, UidRedactor)]:
            logger.removeFilter(old)
        logger.addFilter(redactor)
    return redactor
