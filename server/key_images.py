"""Captures become key images: decode, de-identify, write DICOM, archive, record.

The adapter between the live room (or an upload) and the DICOM core. A capture
is refused before any work when the consultation's device has no profile (and
does not declare a clean source). The pixel work runs in a worker thread, at most
BUILD_CONCURRENCY at once across captures and prior imports; what it wrote is
refused before the archive when it would take the consultation over its quota. A
capture is acknowledged only once every file is durable and the row committed.
One capture at a time per consultation on a node (instance numbers and the key
object selection's versions follow each other).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset

from server import image_limits, png
from server.audit import AuditFacts
from server.auth import Principal
from server.config import Settings
from server.consultations.model import OPEN_STATES, ConsultationRow
from server.dicom import deid, priors, writer
from server.dicom.archive import Archive, ArchiveCorrupt, ArchiveMissing, study_and_series
from server.dicom.pacs import Dicomweb, RetrieveFailed
from server.dicom.profiles import Profiles
from server.errors import BadRequest, Conflict, PayloadTooLarge, ProbelinkError, Unavailable
from server.live.hub import Live
from server.live.log import RoomLog
from server.live.room import RoomEvent
from server.media.capture import Frame, decode_pictures, frame_rate
from server.metrics import Metrics
from server.store.key_images import ArchivedObject, KeyImageLog, NewKeyImage
from server.study_identity import StudyIdentity

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


@dataclass(frozen=True)
class Capture:
    """What was asked for and what was on screen."""

    consultation: ConsultationRow
    kind: str  # still or clip
    author: str
    author_role: str
    source: str  # the address it came from, for the audit log
    marks: list[dict[str, Any]]
    guidance: dict[str, Any] | None


@dataclass(frozen=True)
class Built:
    objects: list[tuple[str, str, bytes]]  # (kind, sop uid, file bytes), image first
    media_ts: int | None
    detail: dict[str, Any]


# Decoding, masking and encoding at once, across all consultations (2 cores: more would
# only queue inside the threads and hold more pictures in memory).
BUILD_CONCURRENCY = 2
# A clip holds at most this many frames, one at a time in memory as pixels.
CLIP_FRAMES_MAX = image_limits.FRAMES_MAX
KOS_CLOSE_TIMEOUT_SECONDS = 10.0
# The key of the start-up catch-up among the KOS jobs (consultation ids are 32 hex digits).
RESUME_JOB = "resume"
MIB = 1 << 20
# How a prior's refusal is answered, by its code (others: 400).
IMPORT_REFUSALS: dict[str, type[ProbelinkError]] = {
    "no_device_profile": Conflict,
    "image_too_large": PayloadTooLarge,
}
Rects = tuple[tuple[int, int, int, int], ...]


class KeyImages:
    def __init__(
        self,
        settings: Settings,
        log_: KeyImageLog,
        room_log: RoomLog,
        archive: Archive,
        profiles: Profiles,
        key: bytes,
        metrics: Metrics | None = None,
    ):
        self.metrics = metrics
        self.settings = settings
        self.log = log_
        self.room_log = room_log
        self.archive = archive
        self.profiles = profiles
        self.key = key
        # The consultation's DICOM identity (pseudonym, UIDs), derived from the same key.
        self.identity = StudyIdentity(key)
        self.push = settings.dicomweb_url is not None
        # Told when the outbox has something new (set by the app when a PACS is configured).
        self.on_outbox: Callable[[], None] | None = None
        # The PACS, where objects another node archived are read back from (set by the app).
        self.pacs: Dicomweb | None = None
        self._building = asyncio.Semaphore(BUILD_CONCURRENCY)
        # Key object selection writers, by consultation, and those asked for again meanwhile.
        self._kos_jobs: dict[str, asyncio.Task[None]] = {}
        self._kos_dirty: set[str] = set()

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

    def _profile_exists(self, manufacturer: str | None, model: str | None) -> bool:
        return bool(manufacturer and model) and any(
            p.matches_device(manufacturer or "", model or "") for p in self.profiles.profiles
        )

    def check_device(self, row: ConsultationRow) -> None:
        """Refuse at once when nothing could mask this device's burned-in text."""
        device = row.context.device
        if device is not None and device.burned_in_text is False:
            return
        if device is None or not device.manufacturer or not device.model:
            raise Conflict(
                "captures are refused until the consultation names its device (device."
                "manufacturer and device.model) so its burned-in text can be masked, or "
                "declares that its video carries none (device.burned_in_text = false)",
                code="device_unknown",
            )
        if not self._profile_exists(device.manufacturer, device.model):
            raise Conflict(
                "no de-identification profile for this consultation's device: add one to the "
                "file named by PROBELINK_DEVICE_PROFILES (format: server/dicom/"
                "device_profiles.toml), or declare device.burned_in_text = false if its video "
                "carries no burned-in text",
                code="no_device_profile",
            )

    def rects_for(self, row: ConsultationRow, width: int, height: int) -> Rects | None:
        """The mask for a frame of this size; None only for a declared clean source.

        A device with a profile is masked even when declared clean: the profile is the
        stronger statement.
        """
        device = row.context.device
        if device is not None and self._profile_exists(device.manufacturer, device.model):
            assert device.manufacturer and device.model
            try:
                return self.profiles.mask_for(device.manufacturer, device.model, width, height)
            except LookupError:
                if device.burned_in_text is False:
                    return None
                raise Conflict(
                    f"the device's profile does not cover {width}x{height} captures: add that "
                    "size to the device profiles (PROBELINK_DEVICE_PROFILES)",
                    code="no_device_profile",
                ) from None
        if device is not None and device.burned_in_text is False:
            return None
        self.check_device(row)
        raise Conflict("no de-identification profile for this device", code="no_device_profile")

    # Capture paths

    async def capture(
        self, row: ConsultationRow, kind: str, author: Principal, source: str
    ) -> Capture:
        """A capture asked for now, with what is on screen: the room's open marks and guidance.

        The one way in for live captures (`signaling`) and uploaded stills (`images_api`), once
        they have checked the consultation is open and its device can be masked.
        """
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

    async def import_prior(self, row: ConsultationRow, upload: bytes) -> ArchivedObject:
        """A prior study's DICOM file, de-identified and archived (the caller records it);
        built in turn with the captures, within the same limit."""

        def build() -> tuple[Dataset, bytes]:
            imported = priors.deidentify_prior(
                priors.read_upload(upload),
                key=self.key,
                consultation_id=row.id,
                profiles=self.profiles,
                undated=row.requested_at,
            ).dataset
            return imported, writer.to_bytes(imported)

        await self.check_quota(row.id, 1)  # a full archive refuses at once, before any work
        async with self._building:
            try:
                ds, data = await asyncio.to_thread(build)
            except priors.ImportRefused as exc:
                raise IMPORT_REFUSALS.get(exc.code, BadRequest)(str(exc), code=exc.code) from None
            sop = str(ds.SOPInstanceUID)
            if not await self.log.has_object(sop):  # the same prior again takes no more room
                await self.check_quota(row.id, len(data))
            where = await asyncio.to_thread(
                self.archive.store, data, ds.StudyInstanceUID, ds.SeriesInstanceUID
            )
        return ArchivedObject(sop, "prior", where.path, where.sha256, where.size)

    async def check_quota(self, consultation_id: str, adding: int) -> None:
        """Refuse, before anything is written, what would take the consultation's archive
        over its quota (key object selections and reports are never refused: small, owed)."""
        quota_mib = self.settings.consultation_quota_mib
        used = await self.log.archived_bytes(consultation_id)
        if used + adding > quota_mib * MIB:
            raise PayloadTooLarge(
                f"the consultation's archive holds {used / MIB:.1f} MiB of its {quota_mib} MiB "
                "quota (PROBELINK_CONSULTATION_QUOTA_MIB) and this image does not fit; nothing "
                "was stored",
                code="quota_exceeded",
            )

    def _count(self, kind: str, source: str, started: float) -> None:
        if self.metrics is not None:
            self.metrics.key_images.labels(kind, source).inc()
            self.metrics.capture_seconds.labels(kind).observe(time.monotonic() - started)

    async def commit_alone(self, image: NewKeyImage, audit: AuditFacts) -> RoomEvent:
        """Record the key image (for callers with no live room to tell, the whole commit)."""
        event = await self.log.add(image, push=self.push, audit=audit)
        if self.push and self.on_outbox is not None:
            self.on_outbox()
        return event

    async def _store(
        self,
        capture: Capture,
        pictures: Callable[[], Iterator[tuple[np.ndarray, int]]],
        codec: str | None,
        detail: dict[str, Any],
        commit: Commit,
    ) -> RoomEvent:
        row = capture.consultation
        key_image_id = uuid.uuid4().hex
        await self.check_quota(row.id, 1)  # a full archive refuses at once, before any work
        async with self._building:
            built = await asyncio.to_thread(self._build, capture, pictures, codec, key_image_id)
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
            kind=capture.kind,
            sop_instance_uid=stored[0].sop_instance_uid,
            media_ts=built.media_ts,
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
        self._key_object_selection_due(row)
        return event

    # The key object selection: after the ack, one for a burst of captures

    def _key_object_selection_due(self, row: ConsultationRow) -> None:
        """Write the consultation's key object selection soon (coalesced, off the ack path)."""
        job = self._kos_jobs.get(row.id)
        if job is not None and not job.done():
            self._kos_dirty.add(row.id)
            return
        task = asyncio.create_task(self._write_key_object_selection(row), name="kos")
        self._kos_jobs[row.id] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._kos_jobs.get(row.id) is done:
                del self._kos_jobs[row.id]

        task.add_done_callback(forget)

    async def _write_key_object_selection(self, row: ConsultationRow) -> None:
        """A KOS listing every key image recorded so far, unless one for that many exists.

        Objects are immutable: each version is a new instance (UID from the consultation and
        the number of key images, so nodes agree), and the newest is the consultation's.
        A crash before it is written leaves the previous version; the next capture writes it.
        """
        while True:
            self._kos_dirty.discard(row.id)
            try:
                await self._write_kos_version(row)
            except Exception:
                log.exception("key object selection not written", extra={"consultation": row.id})
            if row.id not in self._kos_dirty:
                return

    async def _write_kos_version(self, row: ConsultationRow) -> None:
        listed = [
            (o.sop_instance_uid, o.kind)
            for kind in ("still", "clip")
            for o in await self.log.objects(row.id, kind)
        ]
        if not listed:
            return
        sop = deid.derived_uid(self.key, "key_object_selection", row.id, str(len(listed)))
        if await self.log.has_object(sop):
            return
        study = self.identity.study_of(row)
        inst = self.identity.instance_of(row, "key_object_selection", sop, datetime.now(UTC))
        inst = replace(inst, instance_number=len(listed))
        evidence = [self.identity.evidence_of(study, row.id, s, k) for s, k in listed]
        async with self._building:
            data = await asyncio.to_thread(
                lambda: writer.to_bytes(writer.key_object_selection(evidence, study, inst))
            )
            where = await asyncio.to_thread(
                self.archive.store,
                data,
                study.study_uid,
                self.identity.series_uid(row.id, "key_object_selection"),
            )
        obj = ArchivedObject(sop, "key_object_selection", where.path, where.sha256, where.size)
        if await self.log.add_object(row.id, obj, push=self.push) and self.push:
            if self.on_outbox is not None:
                self.on_outbox()

    def resume(self) -> None:
        """After a start, in the background: bring each open consultation's key object
        selection up to date (a crash between a capture's ack and its KOS leaves it one
        behind), one at a time; start-up does not wait for it."""

        async def catch_up() -> None:
            for row in await self.log.store.list_consultations(OPEN_STATES):
                try:
                    await self._write_kos_version(row)
                except Exception:
                    log.exception(
                        "key object selection not written", extra={"consultation": row.id}
                    )

        task = asyncio.create_task(catch_up(), name="kos-resume")
        self._kos_jobs[RESUME_JOB] = task
        task.add_done_callback(lambda done: self._kos_jobs.pop(RESUME_JOB, None))

    async def settled(self) -> None:
        """Wait for the key object selections due so far (and those they re-queue)."""
        while jobs := [j for j in self._kos_jobs.values() if not j.done()]:
            await asyncio.wait(jobs)

    async def close(self) -> None:
        """Let pending key object selections finish (they are short); the next capture of a
        consultation whose selection was cut short writes it."""
        try:
            async with asyncio.timeout(KOS_CLOSE_TIMEOUT_SECONDS):
                await self.settled()
        except TimeoutError:
            log.warning("key object selections still pending at shutdown")

    # The pixel work (worker thread)

    def _build(
        self,
        capture: Capture,
        pictures: Callable[[], Iterator[tuple[np.ndarray, int]]],
        codec: str | None,
        key_image_id: str,
    ) -> Built:
        """Decode, mask each picture as it comes (own size, one at a time), write the objects."""
        row = capture.consultation
        now = datetime.now(UTC)
        size: tuple[int, int] | None = None  # (height, width) of the first picture: the clip's
        rects: Rects | None = None
        still: np.ndarray | None = None
        jpegs: list[bytes] = []
        timestamps: list[int] = []
        for picture, timestamp in pictures():
            if size is None:
                size = (picture.shape[0], picture.shape[1])
                rects = self.rects_for(row, size[1], size[0])
            elif picture.shape[:2] != size:
                # The resolution changed mid-clip (WebRTC adapting): one size for the clip,
                # masked at that size.
                picture = _resize(picture, size)
            if rects is not None:
                try:
                    deid.mask(picture, rects)
                except deid.MaskingFailed:
                    raise Conflict(
                        "the device profile's mask does not fit the picture; nothing was stored",
                        code="masking_failed",
                    ) from None
            timestamps.append(timestamp)
            if capture.kind == "still":
                still = picture
            else:
                if len(jpegs) >= CLIP_FRAMES_MAX:
                    break
                jpegs.append(writer.jpeg_frame(picture))
        if size is None:
            raise Conflict("the operator's video could not be decoded", code="no_picture")
        study = self.identity.study_of(row)
        sop = deid.derived_uid(self.key, "instance", key_image_id)
        inst = self.identity.instance_of(
            row, capture.kind, sop, now, pixels_cleaned=rects is not None, stream_codec=codec
        )
        fps = frame_rate(timestamps)
        if capture.kind == "still":
            assert still is not None
            image = writer.still(still, study, inst)
        else:
            image = writer.clip(jpegs, size, fps, study, inst)
        objects = [(capture.kind, sop, writer.to_bytes(image))]
        if capture.kind == "still" and capture.marks:
            pr_sop = deid.derived_uid(self.key, "presentation_state", key_image_id)
            pr_inst = self.identity.instance_of(row, "presentation_state", pr_sop, now)
            state = writer.presentation_state(image, capture.marks, study, pr_inst)
            objects.append(("presentation_state", pr_sop, writer.to_bytes(state)))
        detail = {
            "width": size[1],
            "height": size[0],
            "frames": len(timestamps) if capture.kind == "still" else len(jpegs),
            "fps": round(fps, 2),
            "masked": rects is not None,
        }
        return Built(objects, timestamps[-1] if codec else None, detail)


def _resize(picture: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    return np.array(Image.fromarray(picture, "RGB").resize((width, height)))
