"""The key object selection: after a capture's ack, one for a burst of captures.

Each version lists every key image recorded so far and is written off the ack path, coalesced per
consultation; after a start, each open consultation's is brought up to date in the background.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

from server.consultations.lifecycle import OPEN_STATES
from server.consultations.model import ConsultationRow
from server.dicom import deid, writer
from server.imaging.archive import Archive
from server.imaging.identity import KEY_IMAGE_KINDS, StudyIdentity
from server.imaging.model import ArchivedObject
from server.imaging.store import KeyImageLog

log = logging.getLogger(__name__)

KOS_CLOSE_TIMEOUT_SECONDS = 10.0
# The key of the start-up catch-up among the jobs (consultation ids are 32 hex digits).
RESUME_JOB = "resume"


class KeyObjectSelections:
    def __init__(
        self,
        records: KeyImageLog,
        archive: Archive,
        identity: StudyIdentity,
        key: bytes,
        building: asyncio.Semaphore,
        on_pushable: Callable[[], None],
    ):
        self.records = records
        self.archive = archive
        self.identity = identity
        self.key = key
        # Shared with the captures: the pixel and file work at once, across all of it.
        self._building = building
        # Called when a written selection is queued for the PACS.
        self._on_pushable = on_pushable
        # The writers, by consultation, and those asked for again meanwhile.
        self._kos_jobs: dict[str, asyncio.Task[None]] = {}
        self._kos_dirty: set[str] = set()
        # Whether objects are queued for a PACS.
        self.push = False

    def due(self, row: ConsultationRow) -> None:
        """Write the consultation's key object selection soon (coalesced, off the ack path)."""
        job = self._kos_jobs.get(row.id)
        if job is not None and not job.done():
            self._kos_dirty.add(row.id)
            return
        task = asyncio.create_task(self._write(row), name="kos")
        self._kos_jobs[row.id] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._kos_jobs.get(row.id) is done:
                del self._kos_jobs[row.id]

        task.add_done_callback(forget)

    async def _write(self, row: ConsultationRow) -> None:
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
            for kind in KEY_IMAGE_KINDS
            for o in await self.records.objects(row.id, kind)
        ]
        if not listed:
            return
        sop = deid.derived_uid(self.key, "key_object_selection", row.id, str(len(listed)))
        if await self.records.has_object(sop):
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
        if await self.records.add_object(row.id, obj, push=self.push) and self.push:
            self._on_pushable()

    def resume(self) -> None:
        """After a start, in the background: bring each open consultation's key object
        selection up to date (a crash between a capture's ack and its KOS leaves it one
        behind), one at a time; start-up does not wait for it."""

        async def catch_up() -> None:
            for row in await self.records.store.list_consultations(OPEN_STATES):
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
