"""Captures become key images: one use case for live captures and uploaded stills.

A capture is refused before any work when the consultation's device could not be masked
(`masking.py`). The pixel work (`pixels.py`) runs in a worker thread, at most BUILD_CONCURRENCY
at once across captures and prior imports; what it wrote is refused before the archive when it
would take the consultation over its quota. A capture is acknowledged only once every file is
durable and the row committed; the key object selection follows off the ack path (`kos.py`).
One capture at a time per consultation on a node (instance numbers and the key object
selection's versions follow each other).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from sqlalchemy.exc import IntegrityError

from server.audit import AuditFacts
from server.auth import Principal, Role
from server.config import Settings
from server.consultations.model import ConsultationRow
from server.dicom import deid, incoming, writer
from server.dicom.profiles import Profiles
from server.dicom.text_check import TextCheck, TextFound
from server.errors import BadRequest, Conflict, PayloadTooLarge, ProbelinkError, Unavailable
from server.imaging import measurements, pixels, png, video
from server.imaging.archive import Archive, ArchiveCorrupt, ArchiveMissing, study_and_series
from server.imaging.identity import StudyIdentity
from server.imaging.kos import KeyObjectSelections
from server.imaging.masking import TEXT_FOUND, DeviceMasks, require_patient_consultation
from server.imaging.model import ArchivedObject, Capture, NewKeyImage
from server.imaging.pacs import Dicomweb, RetrieveFailed
from server.imaging.profile_store import ProfileStore
from server.imaging.store import KeyImageLog
from server.live.hub import Live
from server.live.log import RoomLog
from server.live.room import CaptureKind, RoomEvent
from server.media.capture import Frame, decode_pictures
from server.metrics import Metrics

log = logging.getLogger(__name__)

# Records a durable key image and tells the room, in sequence: returns the room event.
Commit = Callable[[NewKeyImage, AuditFacts], Awaitable[RoomEvent]]


def room_commit(live: Live, key_images: KeyImages, consultation_id: str) -> Commit:
    """Record a key image and tell the live room, in the room's sequence."""

    async def commit(image: NewKeyImage, audit: AuditFacts) -> RoomEvent:
        async with live.bus.sequenced(consultation_id):
            event = await key_images.commit_alone(image, audit)
            await live.publish(consultation_id, event)
        return event

    return commit


# Decoding, masking and encoding at once, across all consultations (2 cores: more would
# only queue inside the threads and hold more pictures in memory).
BUILD_CONCURRENCY = 2
RECEIVE_CONCURRENCY = 2
MIB = 1 << 20
UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)+")
UID_MAX = 64
# How a prior's refusal is answered, by its code (others: 400).
IMPORT_REFUSALS: dict[str, type[ProbelinkError]] = {
    "no_device_profile": Conflict,
    "image_too_large": PayloadTooLarge,
}


def refusal(exc: incoming.ImportRefused) -> ProbelinkError:
    """An incoming file's refusal as the API answers it (by its code; others: 400)."""
    return IMPORT_REFUSALS.get(exc.code, BadRequest)(str(exc), code=exc.code)


def read_dicom(data: bytes) -> Dataset:
    """An uploaded DICOM file, parsed (worker thread), or the refusal that says why not."""
    try:
        return incoming.read_upload(data)
    except incoming.ImportRefused as exc:
        raise refusal(exc) from None


class KeyImages:
    def __init__(
        self,
        settings: Settings,
        records: KeyImageLog,
        room_log: RoomLog,
        archive: Archive,
        profiles: Profiles,
        key: bytes,
        text: TextCheck,
        metrics: Metrics | None = None,
    ):
        self.metrics = metrics
        # The safety net under the masks, run on what they leave before anything is stored.
        self.text = text
        self.settings = settings
        self.records = records
        self.room_log = room_log
        self.archive = archive
        self.profiles = profiles
        self.masks = DeviceMasks(profiles)
        # Profiles made over the API (the records store), swapped into `profiles` when read.
        self.profile_store = ProfileStore(records.store)
        self.key = key
        # The consultation's DICOM identity (pseudonym, UIDs), derived from the same key.
        self.identity = StudyIdentity(key)
        self.push = settings.dicomweb_url is not None
        # Told when the outbox has something new (set by the app when a PACS is configured).
        self.on_outbox: Callable[[], None] | None = None
        # The PACS, where objects another node archived are read back from (set by the app).
        self.pacs: Dicomweb | None = None
        self._building = asyncio.Semaphore(BUILD_CONCURRENCY)
        # Large uploads (a scanner's DICOM, a clip) read, parsed and built at once.
        self.receiving = asyncio.Semaphore(RECEIVE_CONCURRENCY)
        self.selections = KeyObjectSelections(
            records, archive, self.identity, key, self._building, self._pushable
        )
        self.selections.push = self.push

    async def refresh_profiles(self) -> None:
        """Put the profiles in force in the records store into use (at start, every few
        seconds, and after a save on this node)."""
        current = await self.profile_store.current()
        self.profiles.use_stored(tuple(profile for profile, _ in current))

    def _pushable(self) -> None:
        if self.on_outbox is not None:
            self.on_outbox()

    async def read(self, obj: ArchivedObject, what: str) -> bytes:
        """An archived object's bytes, checked against its record: from this node's archive, or
        (another node archived it) from the PACS, then kept in this node's archive.

        Raises Unavailable (503) naming `what` and why when it cannot be had intact.
        """
        try:
            return await self._read(obj)
        except ArchiveMissing as exc:
            raise Unavailable(
                f"{what} cannot be served: {exc}", code="archived_on_another_node"
            ) from None
        except ArchiveCorrupt as exc:
            raise Unavailable(f"{what} cannot be served: {exc}", code="archive_corrupt") from None

    async def _read(self, obj: ArchivedObject) -> bytes:
        try:
            return await asyncio.to_thread(self.archive.read, obj.path, obj.sha256)
        except ArchiveMissing:
            if self.pacs is None:
                raise ArchiveMissing(
                    "the file is in another node's archive: nodes share one archive, or read "
                    "from a PACS (PROBELINK_DICOMWEB_URL; see docs/deployment.md)"
                ) from None
        study, series = study_and_series(obj.path)
        try:
            data = await self.pacs.retrieve(study, series, obj.sop_instance_uid, obj.size)
        except RetrieveFailed as exc:
            raise ArchiveMissing(
                f"the file is in another node's archive and cannot be read from the PACS: {exc}"
            ) from None
        try:
            await asyncio.to_thread(self.archive.adopt, data, obj.path, obj.sha256)
        except ArchiveCorrupt:
            raise ArchiveCorrupt("the PACS's copy is not the archived file (SHA-256)") from None
        log.info("an archived %s was read back from the PACS into this node's archive", obj.kind)
        return data

    # Rules checked before any work

    # Capture paths

    async def capture(
        self,
        row: ConsultationRow,
        kind: CaptureKind,
        author: Principal,
        source: str,
        on_screen: bool = True,
    ) -> Capture:
        """A capture asked for now, with what is on screen: the room's open marks and guidance.

        The one way in for live captures (`signaling`) and uploaded stills (`images_api`), once
        they have checked the consultation is open and its device can be masked.
        """
        if not on_screen:  # a file from elsewhere: what is on screen now is not about it
            return Capture(row, kind, author.sub, author.role.value, source, [], None)
        snapshot = await self.room_log.snapshot(row.id)
        return Capture(
            consultation=row,
            kind=kind,
            author=author.sub,
            author_role=author.role.value,
            source=source,
            marks=snapshot.marks,
            guidance=snapshot.guidance,
        )

    async def from_stream(
        self,
        capture: Capture,
        codec: str,
        frames: Sequence[Frame],
        keep_from: float | None,
        commit: Commit,
        detail: dict[str, Any] | None = None,
    ) -> RoomEvent:
        """A still (keep_from None) or clip decoded from the operator's forwarded video.

        The caller has checked the device (`check_device`) before taking the frames; the mask
        (`rects_for`) refuses again if nothing could mask it.
        """
        started = time.monotonic()
        frames = list(frames)

        def pictures() -> Iterator[tuple[np.ndarray, int]]:
            return decode_pictures(codec, frames, keep_from)

        extra = {"source": "relay", **(detail or {})}
        event = await self._store(capture, pictures, codec, extra, commit)
        self._count(capture.kind, "relay", started)
        return event

    async def from_upload(self, capture: Capture, image: bytes, commit: Commit) -> RoomEvent:
        """A lossless still uploaded by the bedside page (PNG), preferred over the relay's.

        The caller has checked the device before reading the upload, as for `from_stream`.
        """
        started = time.monotonic()

        def pictures() -> Iterator[tuple[np.ndarray, int]]:
            yield png.read(image), 0

        event = await self._store(capture, pictures, None, {"source": "upload"}, commit)
        self._count(capture.kind, "upload", started)
        return event

    async def from_video(
        self, capture: Capture, data: bytes, content_type: str, commit: Commit
    ) -> RoomEvent:
        """A clip uploaded as MP4 or WebM (`video`), masked by the consultation's device on
        every frame, stored as a US multi-frame key image. The caller has checked the device."""
        started = time.monotonic()
        codec = await asyncio.to_thread(video.codec_of, data, content_type)

        def pictures() -> Iterator[tuple[np.ndarray, int]]:
            return video.pictures(data, content_type)

        event = await self._store(capture, pictures, codec, {"source": "video_upload"}, commit)
        self._count(capture.kind, "video_upload", started)
        return event

    async def from_dicom(
        self, capture: Capture, ds: Dataset, commit: Commit
    ) -> tuple[str, RoomEvent | None]:
        """A scanner's own image (C-STORE, or an uploaded DICOM file) as a key image of the
        consultation: rebuilt and masked by the profile of the device its header names
        (`incoming`), its ultrasound regions and cine timing kept, in the consultation's study.

        Returns the key image's id and its room event; the same object again (a scanner
        retrying) is the same key image, recorded once (event None).
        """
        started = time.monotonic()
        row = capture.consultation
        require_patient_consultation(row)
        received = datetime.now(UTC)
        try:
            original = str(ds.get("SOPInstanceUID", "") or "").strip()
        except Exception:
            raise BadRequest("the DICOM file could not be read", code="invalid_dicom") from None
        # The object's own UID is what tells a scanner's retry from a new image.
        if not UID_PATTERN.fullmatch(original) or len(original) > UID_MAX:
            raise BadRequest("the DICOM file has no valid SOP Instance UID", code="invalid_dicom")
        sop = deid.derived_uid(self.key, "scanner-instance", row.id, original)
        known = await self.records.key_image_of(sop)
        if known is not None:
            return known, None

        def build() -> tuple[str, incoming.Imported, bytes]:
            kind = "scanner_clip" if incoming.frame_count(ds) > 1 else "scanner_still"
            # When it arrived: a scanner's own times are local, without a zone as a rule.
            inst = self.identity.instance_of(row, kind, sop, received)
            imported = incoming.rebuild(
                ds,
                profiles=self.profiles,
                text=self.text,
                study=self.identity.study_of(row),
                inst=inst,
                what="scanner image",
            )
            return kind, imported, writer.to_bytes(imported.dataset)

        await self.check_quota(row.id, 1)  # a full archive refuses at once, before any work
        async with self._building:
            try:
                kind, imported, data = await asyncio.to_thread(build)
            except incoming.ImportRefused as exc:
                raise refusal(exc) from None
            except TextFound as exc:
                raise await self._text_found(exc, capture, "scanner") from None
            await self.check_quota(row.id, len(data))
            where = await asyncio.to_thread(
                self.archive.store,
                data,
                self.identity.study_uid(row.id),
                self.identity.series_uid(row.id, kind),
            )
        key_image_id = uuid.uuid4().hex
        ds_out = imported.dataset
        image = NewKeyImage(
            id=key_image_id,
            consultation_id=row.id,
            kind=(CaptureKind.CLIP if imported.frames > 1 else CaptureKind.STILL).value,
            sop_instance_uid=sop,
            media_ts=None,
            marks=[],
            guidance=None,
            detail={
                "source": "scanner",
                "width": int(ds_out.Columns),
                "height": int(ds_out.Rows),
                "frames": imported.frames,
                "fps": None if imported.fps is None else round(imported.fps, 2),
                "masked": imported.masked,
                "ultrasound_regions": imported.regions,
                "calibration": imported.calibration,
            },
            created_by=capture.author,
            objects=[ArchivedObject(sop, kind, where.path, where.sha256, where.size)],
        )
        audit = AuditFacts(
            capture.author,
            capture.author_role,
            "key_image.scanner",
            "key_image",
            key_image_id,
            "ok",
            capture.source,
            {"consultation": row.id, "frames": imported.frames},
        )
        try:
            event = await commit(image, audit)
        except IntegrityError:
            # The same object, received twice at once: the other one is recorded.
            again = await self.records.key_image_of(sop)
            if again is None:
                raise
            return again, None
        self.selections.due(row)
        self._count(image.kind, "scanner", started)
        return key_image_id, event

    async def save_measurements(
        self,
        row: ConsultationRow,
        view: dict[str, Any],
        obj: ArchivedObject,
        body: measurements.MeasurementsBody,
        audit: AuditFacts,
    ) -> dict[str, Any]:
        """Measure a stored key image (`measurements`) and archive a presentation state that
        draws its calipers; returns the measurements as stored (they replace earlier ones)."""
        data = await self.read(obj, "the key image")
        detail = json.loads(view["detail"]) if isinstance(view["detail"], str) else view["detail"]
        image = await asyncio.to_thread(
            lambda: pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        )
        width, height = int(image.Columns), int(image.Rows)
        frames = int(image.get("NumberOfFrames", 1) or 1)
        measured = measurements.measure(body, width, height, detail.get("calibration"), frames)
        now = datetime.now(UTC)
        sop = deid.derived_uid(self.key, "measurements", view["id"], uuid.uuid4().hex)
        study = replace(self.identity.study_of(row), manufacturer=image.get("Manufacturer"))
        inst = self.identity.instance_of(row, "presentation_state", sop, now)
        marks = [
            {
                "kind": "caliper",
                "points": [[x / width, y / height] for x, y in c["points"]],
                "frame": c["frame"],
            }
            for c in measured["calipers"]
        ]
        async with self._building:
            state = await asyncio.to_thread(
                lambda: writer.to_bytes(writer.presentation_state(image, marks, study, inst))
            )
            await self.check_quota(row.id, len(state))
            where = await asyncio.to_thread(
                self.archive.store,
                state,
                study.study_uid,
                self.identity.series_uid(row.id, "presentation_state"),
            )
        measured.update(presentation_state=sop, by=audit.actor, at=now.isoformat())
        archived = ArchivedObject(sop, "presentation_state", where.path, where.sha256, where.size)
        await self.records.set_measurements(
            row.id, view["id"], measured, archived, push=self.push, audit=audit
        )
        if self.push:
            self._pushable()
        return measured

    async def import_prior(
        self, row: ConsultationRow, upload: bytes, author: Principal, source: str
    ) -> ArchivedObject:
        """A prior study's DICOM file, de-identified and archived (the caller records it);
        built in turn with the captures, within the same limit."""
        require_patient_consultation(row)

        def build() -> tuple[Dataset, bytes]:
            imported = incoming.deidentify_prior(
                incoming.read_upload(upload),
                key=self.key,
                consultation_id=row.id,
                profiles=self.profiles,
                text=self.text,
                undated=row.requested_at,
            ).dataset
            return imported, writer.to_bytes(imported)

        await self.check_quota(row.id, 1)  # a full archive refuses at once, before any work
        async with self._building:
            try:
                ds, data = await asyncio.to_thread(build)
            except incoming.ImportRefused as exc:
                raise refusal(exc) from None
            except TextFound as exc:
                capture = Capture(
                    row, CaptureKind.STILL, author.sub, author.role.value, source, [], None
                )
                raise await self._text_found(exc, capture, "prior") from None
            sop = str(ds.SOPInstanceUID)
            if not await self.records.has_object(sop):  # the same prior again takes no more room
                await self.check_quota(row.id, len(data))
            where = await asyncio.to_thread(
                self.archive.store, data, ds.StudyInstanceUID, ds.SeriesInstanceUID
            )
        return ArchivedObject(sop, "prior", where.path, where.sha256, where.size)

    async def check_quota(self, consultation_id: str, adding: int) -> None:
        """Refuse, before anything is written, what would take the consultation's archive
        over its quota (key object selections and reports are never refused: small, owed)."""
        quota_mib = self.settings.consultation_quota_mib
        used = await self.records.archived_bytes(consultation_id)
        if used + adding > quota_mib * MIB:
            raise PayloadTooLarge(
                f"the consultation's archive holds {used / MIB:.1f} MiB of its {quota_mib} MiB "
                "quota (PROBELINK_CONSULTATION_QUOTA_MIB) and this image does not fit; nothing "
                "was stored",
                code="quota_exceeded",
            )

    async def _text_found(self, exc: TextFound, capture: Capture, source: str) -> Conflict:
        """The refusal of a capture the safety net stopped: counted, audited (what kind of text
        and where, never the text), and said to the coordinator with where it was found so the
        profile can be corrected, to a clinician in plain words."""
        kinds = sorted({f.what for f in exc.findings})
        if self.metrics is not None:
            for kind in kinds:
                self.metrics.text_refusals.labels(source, kind).inc()
        row = capture.consultation
        facts = AuditFacts(
            capture.author,
            capture.author_role,
            "key_image.text_found",
            "consultation",
            row.id,
            "refused",
            capture.source,
            {
                "source": source,
                "found": kinds,
                "frame": exc.frame,
                "boxes": [list(f.box) for f in exc.findings[:8]],
            },
        )
        try:
            await self.records.store.record_audit(facts)
        except Exception:
            log.exception("a refusal of the text check could not be audited")
        log.warning(
            "a capture was refused: text that looks like patient data was left after masking",
            extra={"consultation": row.id, "source": source, "found": kinds},
        )
        if capture.author_role not in (Role.OPERATOR.value, Role.EXPERT.value):
            message = (
                f"{exc.describe()}. The device's profile must mask it: correct it on the device "
                "setup page (a rectangle over that text, or the picture region if the text is "
                "part of the ultrasound image)"
            )
        else:
            message = TEXT_FOUND
        return Conflict(message, code="burned_in_text")

    def _count(self, kind: str, source: str, started: float) -> None:
        if self.metrics is not None:
            self.metrics.key_images.labels(kind, source).inc()
            self.metrics.capture_seconds.labels(kind).observe(time.monotonic() - started)

    async def commit_alone(self, image: NewKeyImage, audit: AuditFacts) -> RoomEvent:
        """Record the key image (for callers with no live room to tell, the whole commit)."""
        event = await self.records.add(image, push=self.push, audit=audit)
        if self.push:
            self._pushable()
        return event

    async def _store(
        self,
        capture: Capture,
        pictures: pixels.Pictures,
        codec: str | None,
        detail: dict[str, Any],
        commit: Commit,
    ) -> RoomEvent:
        row = capture.consultation
        require_patient_consultation(row)
        key_image_id = uuid.uuid4().hex
        await self.check_quota(row.id, 1)  # a full archive refuses at once, before any work
        async with self._building:
            try:
                built = await asyncio.to_thread(
                    pixels.build,
                    capture,
                    pictures,
                    codec,
                    key_image_id,
                    masks=self.masks,
                    text=self.text,
                    identity=self.identity,
                    key=self.key,
                    # A recorded file is masked only by a profile of its exact size.
                    exact_size=detail.get("source") == "video_upload",
                )
            except TextFound as exc:
                raise await self._text_found(exc, capture, detail["source"]) from None
            await self.check_quota(row.id, sum(len(data) for _, _, data in built.objects))
            stored = []
            for kind, sop, data in built.objects:
                where = await asyncio.to_thread(
                    self.archive.store,
                    data,
                    self.identity.study_uid(row.id),
                    self.identity.series_uid(row.id, kind),
                )
                stored.append(ArchivedObject(sop, kind, where.path, where.sha256, where.size))
        image = NewKeyImage(
            id=key_image_id,
            consultation_id=row.id,
            kind=capture.kind.value,
            sop_instance_uid=stored[0].sop_instance_uid,
            # Only the live stream's timestamps place a capture on the room's timeline.
            media_ts=built.media_ts if detail.get("source") == "relay" else None,
            marks=capture.marks,
            guidance=capture.guidance,
            detail={**detail, **built.detail},
            created_by=capture.author,
            objects=stored,
        )
        audit = AuditFacts(
            capture.author,
            capture.author_role,
            f"key_image.{capture.kind}",
            "key_image",
            key_image_id,
            "ok",
            capture.source,
            {"consultation": row.id, "frames": built.detail["frames"]},
        )
        event = await commit(image, audit)
        self.selections.due(row)
        log.info(
            "captured",
            extra={
                "consultation": row.id,
                "key_image": key_image_id,
                "kind": capture.kind.value,
                "source": detail.get("source"),
                "participant": capture.author,
                "role": capture.author_role,
                "frames": built.detail["frames"],
            },
        )
        return event

    # The key object selection: after the ack, one for a burst of captures

    # The pixel work (worker thread)

    async def close(self) -> None:
        """Let pending key object selections finish (they are short)."""
        await self.selections.close()
