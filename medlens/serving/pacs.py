"""Sending results to a PACS: C-ECHO and C-STORE as a pynetdicom SCU.

:class:`PacsTarget` names the remote node (AE title, host, port) and sends datasets to it.
Failures are :class:`PacsError` (a :class:`~medlens.errors.MedlensError`) with one clear line:
association refused or unreachable, or the SOP instances the PACS did not accept with their
status codes. Sending is retried a bounded number of times (``retries``, with a fixed delay);
on a retry only the instances that were not yet stored are sent again. :meth:`PacsTarget.send` is
one attempt without retries (the DICOM node's outbox retries on its own schedule).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Sequence

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from medlens.errors import MedlensError

log = logging.getLogger("medlens.pacs")


class PacsError(MedlensError):
    """The PACS could not be reached, refused the association, or did not store an instance."""


class PacsUnreachableError(PacsError):
    """No association (or HTTP answer) from the PACS: refused, unreachable or timed out."""


class NotInPacsError(PacsError):
    """The PACS holds no study, series or instance that matches."""


@dataclass
class PacsTarget:
    """A remote DICOM node to send results to (the PACS)."""

    ae_title: str
    host: str
    port: int
    calling_ae_title: str = "MEDLENS"
    timeout: float = 10.0  # seconds, for the association, each DIMSE message and the network
    retries: int = 2  # additional attempts after the first one
    retry_delay: float = 1.0  # seconds between attempts

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str, *, option: str = "--pacs", **kwargs) -> "PacsTarget":
        """AET@HOST:PORT (``kwargs``: the other fields) or a one-line error naming ``option``."""
        aet, at, rest = text.partition("@")
        host, colon, port = rest.rpartition(":")
        if not (at and colon and aet and host and port.isdigit() and 0 < int(port) < 65536):
            raise PacsError(f"{option} must look like AET@HOST:PORT, not '{text}'")
        return cls(aet, host.strip("[]"), int(port), **kwargs)

    def application_entity(self) -> AE:
        """A pynetdicom AE calling as ``calling_ae_title`` with this target's timeouts (add contexts to it)."""
        ae = AE(ae_title=self.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        ae.connection_timeout = self.timeout
        return ae

    def associate(self, ae: AE, **kwargs):
        """An established association of ``ae`` with the PACS (``kwargs``: for ``AE.associate``)."""
        assoc = ae.associate(self.host, int(self.port), ae_title=self.ae_title, **kwargs)
        if assoc.is_established:
            return assoc
        if assoc.is_rejected:
            raise PacsUnreachableError(f"PACS {self} rejected the association from {self.calling_ae_title}")
        raise PacsUnreachableError(f"PACS {self} cannot be reached (association failed or timed out)")

    def echo(self) -> None:
        """C-ECHO the PACS; raises :class:`PacsError` unless it answers with status Success."""
        ae = self.application_entity()
        ae.add_requested_context(Verification)
        assoc = self.associate(ae)
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
        code = getattr(status, "Status", None)
        if code != 0x0000:
            raise PacsError(f"PACS {self} C-ECHO failed (status {_hex(code)})")

    def store(self, datasets: Sequence[Dataset]) -> None:
        """C-STORE every dataset; raises :class:`PacsError` if any is still not stored after the retries."""
        pending = list(datasets)
        last: PacsError | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.retry_delay)
            try:
                pending = self.send(pending)
            except PacsError as e:
                last = e
                log.warning("store to %s failed (attempt %d of %d): %s", self, attempt + 1, self.retries + 1, e)
                continue
            if not pending:
                return
            last = PacsError(f"PACS {self} did not store {len(pending)} of {len(datasets)} instances")
            log.warning(
                "store to %s: %d instance(s) not stored (attempt %d of %d)",
                self,
                len(pending),
                attempt + 1,
                self.retries + 1,
            )
        raise last or PacsError(f"PACS {self}: store failed")

    def send(self, datasets: Sequence[Dataset]) -> list[Dataset]:
        """C-STORE in one association, no retry; returns the datasets not stored (status not Success/Warning).

        Raises :class:`PacsError` when no association could be established.
        """
        ae = self.application_entity()
        for sop_class in dict.fromkeys(str(ds.SOPClassUID) for ds in datasets):
            syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
            for ds in datasets:
                ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
                if str(ds.SOPClassUID) == sop_class and ts and ts not in syntaxes:
                    syntaxes.append(ts)
            ae.add_requested_context(sop_class, syntaxes)
        assoc = self.associate(ae)
        failed: list[Dataset] = []
        try:
            for i, ds in enumerate(datasets):
                status = assoc.send_c_store(ds)
                code = getattr(status, "Status", None)
                # 0x0000 Success; 0xB000 / 0xB007 / 0xB006 are warnings (stored, with coercion)
                if code is None or not (code == 0x0000 or (code & 0xF000) == 0xB000):
                    log.warning("PACS %s answered C-STORE status %s for a %s", self, _hex(code), _sop_name(ds))
                    failed.append(ds)
                if not assoc.is_established:  # the PACS aborted: the rest was not sent
                    failed.extend(datasets[i + 1 :])
                    break
        finally:
            if assoc.is_established:
                assoc.release()
        return failed


def _hex(code) -> str:
    return f"0x{code:04X}" if isinstance(code, int) else "none (no response)"


def _sop_name(ds: Dataset) -> str:
    uid = ds.get("SOPClassUID")
    return getattr(uid, "name", str(uid))
