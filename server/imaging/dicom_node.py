"""The DICOM node: scanners send their own images (C-STORE) and read the worklist (C-FIND).

A thin adapter around pynetdicom, which serves each association in a thread of its own; every
request is handed to the server's event loop and answered from there, so the node shares the
capture path (`KeyImages.from_dicom`) and the records with the HTTP API. Only the peers on
PROBELINK_DICOM_PEERS (AE title and address both) may associate; anyone else is rejected
before a byte of data is taken. An image is stored only when its AccessionNumber names an open
consultation; it is de-identified before anything touches the disk (the received dataset is
kept in memory: pynetdicom's option to spool it to a file is left off).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
)
from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer

from server.audit import AuditFacts
from server.config import Settings
from server.consultations.lifecycle import OPEN_STATES
from server.consultations.model import ConsultationRow, Kind
from server.consultations.store import Store
from server.dicom import deid, worklist
from server.errors import PayloadTooLarge, ProbelinkError, Unavailable
from server.imaging.captures import KeyImages, room_commit
from server.imaging.model import Capture
from server.live.hub import Live
from server.live.room import CaptureKind

log = logging.getLogger(__name__)

# What scanners send: the ultrasound storage classes, in these transfer syntaxes.
# Modality Worklist Information Model - FIND (PS3.4 K.6.1.2).
WORKLIST_FIND = UID("1.2.840.10008.5.1.4.31")
VERIFICATION = UID("1.2.840.10008.1.1")  # C-ECHO: how a scanner tests the connection
STORAGE_CLASSES = (UltrasoundImageStorage, UltrasoundMultiFrameImageStorage)
TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
)
# A C-STORE is answered within this (a 20 s clip is built in a few seconds).
STORE_TIMEOUT_SECONDS = 120.0
FIND_TIMEOUT_SECONDS = 30.0
# C-STORE statuses (PS3.4 B.2.3): out of resources, cannot understand.
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
UNABLE_TO_PROCESS = 0xC001
ERROR_COMMENT_MAX = 64
SCANNER_ROLE = "scanner"
PROCEDURES = {"dvt": "US venous (DVT) second opinion"}


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:ERROR_COMMENT_MAX]
    return status


def resolve_peers(peers: tuple[tuple[str, str], ...]) -> frozenset[tuple[str, str]]:
    """(AE title, IP address) pairs, names resolved now; ValueError naming one that does not."""
    allowed: set[tuple[str, str]] = set()
    for title, host in peers:
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except OSError:
            raise ValueError(f"the DICOM peer host {host!r} cannot be resolved") from None
        allowed.update((title, str(info[4][0])) for info in infos)
    return frozenset(allowed)


class DicomNode:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        key_images: KeyImages,
        live: Live,
        loop: asyncio.AbstractEventLoop,
    ):
        self.settings = settings
        self.store = store
        self.key_images = key_images
        self.live = live
        self.loop = loop
        self.allowed = resolve_peers(settings.dicom_peer_list)
        self.ae = AE(ae_title=settings.dicom_ae_title)
        self.ae.maximum_pdu_size = 0  # no limit on the PDUs we receive (scanners send large)
        for sop_class in STORAGE_CLASSES:
            self.ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        self.ae.add_supported_context(VERIFICATION)
        self.ae.add_supported_context(WORKLIST_FIND)
        self.ae.require_called_aet = True
        self.server: ThreadedAssociationServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    def start(self) -> None:
        host = self.settings.dicom_host or self.settings.host
        port = self.settings.dicom_port
        assert port is not None
        self.server = self.ae.start_server(
            (host, port),
            block=False,
            evt_handlers=[
                (evt.EVT_REQUESTED, self._on_requested),
                (evt.EVT_C_STORE, self._on_store),
                (evt.EVT_C_FIND, self._on_find),
            ],
        )
        log.info(
            "DICOM node listening",
            extra={"port": self.port, "ae_title": self.settings.dicom_ae_title},
        )

    def stop(self) -> None:
        """Stop taking associations and end those open (blocking: call from a thread)."""
        self.ae.shutdown()

    # Association: only the peers allowed (pynetdicom thread)

    def allows(self, calling: str, address: str) -> bool:
        # An IPv4 peer reaching a dual-stack listener is seen as ::ffff:a.b.c.d.
        address = address.removeprefix("::ffff:")
        return (calling.strip(), address) in self.allowed

    def _on_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        try:
            request = assoc.requestor.primitive
            calling = str(request.calling_ae_title if request is not None else "").strip()
            address = str(assoc.requestor.address)
            allowed = self.allows(calling, address)
        except Exception:  # pynetdicom would log it and accept: refuse instead
            calling, address, allowed = "", "", False
        if not allowed:
            # Rejected permanent, by the service user: calling AE title not recognised.
            assoc.acse.send_reject(0x01, 0x01, 0x03)
            assoc.kill()  # waits until the rejection is sent, as pynetdicom's own rejections do
            log.warning(
                "DICOM association refused: the peer is not on PROBELINK_DICOM_PEERS",
                extra={"calling_ae_title": calling, "address": address},
            )

    def _peer(self, event: evt.Event) -> tuple[str, str]:
        return (
            str(event.assoc.requestor.ae_title).strip(),
            str(event.assoc.requestor.address),
        )

    # C-STORE (pynetdicom thread, answered on the event loop)

    def _on_store(self, event: evt.Event) -> Dataset | int:
        title, address = self._peer(event)
        if not self.allows(title, address):  # checked again: never store for a stranger
            return _status(CANNOT_UNDERSTAND, "this peer may not store here")
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            accession = str(ds.get("AccessionNumber", "") or "").strip()
        except Exception:
            return _status(CANNOT_UNDERSTAND, "the dataset cannot be read")
        work = asyncio.run_coroutine_threadsafe(
            self._store(ds, accession, title, address), self.loop
        )
        try:
            return work.result(timeout=STORE_TIMEOUT_SECONDS)
        except TimeoutError:
            # Not cancelled: the build goes on within its limit and is recorded; the scanner's
            # retry of the same object is then answered at once.
            return _status(OUT_OF_RESOURCES, "the image was not stored in time; send it again")

    async def _store(self, ds: Dataset, accession: str, title: str, address: str) -> Dataset | int:
        actor = f"dicom:{title}"
        row = await self._open_consultation(accession) if accession else None
        if row is None:
            await self._refused(actor, address, "unknown_accession")
            return _status(
                UNABLE_TO_PROCESS, "no open consultation has this AccessionNumber; not stored"
            )
        capture = Capture(row, CaptureKind.STILL, actor, SCANNER_ROLE, address, [], None)
        commit = room_commit(self.live, self.key_images, row.id)
        try:
            await self.key_images.from_dicom(capture, ds, commit)
        except ProbelinkError as exc:
            await self._refused(actor, address, exc.code, row.id)
            code = (
                OUT_OF_RESOURCES
                if isinstance(exc, PayloadTooLarge | Unavailable)
                else (CANNOT_UNDERSTAND)
            )
            log.info(
                "a scanner's image was refused",
                extra={"code": exc.code, "reason": str(exc), "consultation": row.id},
            )
            return _status(code, str(exc))
        except Exception:
            log.exception("a scanner's image could not be stored", extra={"consultation": row.id})
            return _status(UNABLE_TO_PROCESS, "the image could not be stored; send it again")
        return 0x0000

    async def _open_consultation(self, accession: str) -> ConsultationRow | None:
        row = await self.store.consultation_by_accession(accession)
        return row if row is not None and row.state in OPEN_STATES else None

    async def _refused(
        self, actor: str, address: str, code: str, consultation: str | None = None
    ) -> None:
        detail: dict[str, Any] = {"code": code}
        if consultation is not None:
            detail["consultation"] = consultation
        facts = AuditFacts(
            actor, SCANNER_ROLE, "key_image.scanner", "key_image", "", "refused", address, detail
        )
        try:
            await self.store.record_audit(facts)
        except Exception:
            log.exception("a refused scanner image could not be audited")

    # C-FIND on the worklist (pynetdicom thread)

    def _on_find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        if not self.allows(*self._peer(event)):
            yield CANNOT_UNDERSTAND, None
            return
        try:
            query = event.identifier
            work = asyncio.run_coroutine_threadsafe(self._worklist(query), self.loop)
            answers = work.result(timeout=FIND_TIMEOUT_SECONDS)
        except Exception:
            log.exception("a worklist query could not be answered")
            yield CANNOT_UNDERSTAND, None
            return
        for found in answers:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield 0xFF00, found
        yield 0x0000, None

    async def _worklist(self, query: Dataset) -> list[Dataset]:
        rows = await self.store.list_consultations(OPEN_STATES)
        # A device setup session has no patient and takes no images: not on the worklist.
        items = [
            self._item(row)
            for row in rows
            if row.accession_number and row.context.kind is not Kind.DEVICE_SETUP
        ]
        return worklist.search(query, items)

    def _item(self, row: ConsultationRow) -> worklist.Item:
        key = self.key_images.key
        pseudonym = deid.pseudonym(key, row.id)
        application = row.context.application.value if row.context.application else None
        procedure = PROCEDURES.get(application or "", f"US {application or ''} second opinion")
        assert row.accession_number is not None
        return worklist.Item(
            accession_number=row.accession_number,
            patient_id=row.context.patient_ref or pseudonym,
            patient_name=f"{pseudonym}^",
            study_uid=self.key_images.identity.study_uid(row.id),
            requested_at=row.requested_at,
            procedure=" ".join(procedure.split()),
        )
