"""The PACS: every archived object goes there by DICOMweb STOW-RS, eventually; and comes back.

A worker per node claims due entries (a lease, so nodes sharing a database do
not push the same object at once), sends each file from the archive, and marks
it sent only when the PACS lists its SOP Instance UID as stored. A failure is
retried with exponential back-off; a PACS that is down delays pushes, never
loses one. Re-sending an object the PACS already has is harmless (same SOP
Instance UID, same bytes). A node that has not archived an object itself (another
node did) reads it back by WADO-RS, as stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

import aiohttp

from server.imaging.archive import Archive, ArchiveCorrupt, ArchiveMissing
from server.imaging.model import OutboxItem
from server.imaging.store import KeyImageLog
from server.store.outbox import retry_delay

log = logging.getLogger(__name__)

BATCH = 8
IDLE_POLL_SECONDS = 2.0
# An object another node archived is looked at again after this (by whichever node claims it).
OTHER_NODE_RETRY_SECONDS = 2.0
REQUEST_TIMEOUT_SECONDS = 60.0
# Someone is waiting for the picture: a PACS that does not answer by then is reported as such.
RETRIEVE_TIMEOUT_SECONDS = 15.0
# Long enough for a whole batch at the request timeout: no other node takes a claimed entry.
LEASE_SECONDS = BATCH * REQUEST_TIMEOUT_SECONDS + 60.0
# Referenced SOP Sequence, Failed SOP Sequence, SOP Instance UID (DICOM JSON tags).
REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
SOP_INSTANCE_UID = "00081155"
# WADO-RS: the instance as stored (`transfer-syntax=*`), so its bytes hash as archived.
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


class PushFailed(Exception):
    """The PACS did not take the object; the message says why (no patient data in it)."""


class RetrieveFailed(Exception):
    """The PACS did not give the object back; the message says why (no patient data in it)."""


def stow_body(files: list[bytes]) -> tuple[bytes, str]:
    """A multipart/related body of application/dicom parts, and its Content-Type."""
    boundary = f"probelink-{secrets.token_hex(16)}"
    parts = []
    for data in files:
        parts.append(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def stored_uids(response: dict[str, Any]) -> tuple[set[str], set[str]]:
    """SOP Instance UIDs the STOW-RS response says were stored, and those that failed."""

    def uids(tag: str) -> set[str]:
        element = response.get(tag)
        items = element.get("Value") if isinstance(element, dict) else None
        found: set[str] = set()
        for item in items if isinstance(items, list) else []:
            uid = item.get(SOP_INSTANCE_UID) if isinstance(item, dict) else None
            values = uid.get("Value") if isinstance(uid, dict) else None
            if isinstance(values, list):
                found.update(v for v in values if isinstance(v, str))
        return found

    return uids(REFERENCED_SOP_SEQUENCE), uids(FAILED_SOP_SEQUENCE)


class Dicomweb:
    """The PACS's DICOMweb service: STOW-RS to store an object, WADO-RS to read one back."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.session: aiohttp.ClientSession | None = None

    def open(self) -> None:
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def send(self, sop_instance_uid: str, data: bytes) -> None:
        """STOW-RS one object; return only if the PACS says it stored it."""
        assert self.session is not None
        body, content_type = stow_body([data])
        headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
        try:
            async with self.session.post(
                # A stream, not bytes: a clip is tens of MiB, sent without holding the loop.
                f"{self.url}/studies",
                data=io.BytesIO(body),
                headers=headers,
            ) as response:
                raw = await response.read()
                if response.status not in (200, 202):
                    raise PushFailed(f"the PACS answered HTTP {response.status}")
                try:
                    parsed = json.loads(raw) if raw.strip() else {}
                except (ValueError, UnicodeDecodeError):
                    raise PushFailed("the PACS's STOW-RS answer is not JSON") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise PushFailed(f"the PACS is unreachable ({type(exc).__name__})") from None
        stored, failed = stored_uids(parsed if isinstance(parsed, dict) else {})
        if sop_instance_uid in failed or sop_instance_uid not in stored:
            raise PushFailed("the PACS did not confirm storing the object")

    async def retrieve(self, study: str, series: str, sop_instance_uid: str, size: int) -> bytes:
        """WADO-RS one instance as the PACS stored it (no transcoding), at most `size` bytes."""
        assert self.session is not None
        url = f"{self.url}/studies/{study}/series/{series}/instances/{sop_instance_uid}"
        try:
            async with self.session.get(
                url,
                headers={"Accept": WADO_ACCEPT},
                timeout=aiohttp.ClientTimeout(total=RETRIEVE_TIMEOUT_SECONDS),
            ) as response:
                if response.status == 404:
                    raise RetrieveFailed("the PACS does not have it (yet)")
                if response.status != 200:
                    raise RetrieveFailed(f"the PACS answered HTTP {response.status}")
                if response.content_type != "multipart/related":
                    raise RetrieveFailed("the PACS's WADO-RS answer is not multipart/related")
                part = await aiohttp.MultipartReader(response.headers, response.content).next()
                if not isinstance(part, aiohttp.BodyPartReader):
                    raise RetrieveFailed("the PACS's WADO-RS answer has no DICOM part")
                data = bytearray()
                while chunk := await part.read_chunk():
                    data += chunk
                    if len(data) > size:
                        raise RetrieveFailed("the PACS's copy is larger than the archived file")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RetrieveFailed(f"the PACS is unreachable ({type(exc).__name__})") from None
        except ValueError:  # a multipart answer without a boundary
            raise RetrieveFailed("the PACS's WADO-RS answer is not multipart") from None
        return bytes(data)


class PacsPusher:
    def __init__(
        self,
        pacs: Dicomweb,
        log_: KeyImageLog,
        archive: Archive,
        on_push: Callable[[str], None],
    ):
        self.pacs = pacs
        # Told each push's outcome ("sent" or "failed"), for metrics.
        self.on_push = on_push
        self.log = log_
        self.archive = archive
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="pacs-outbox")

    def kick(self) -> None:
        """Something new is in the outbox: look now rather than at the next poll."""
        self.wake.set()

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self) -> None:
        while True:
            try:
                due = await self.log.claim_due(BATCH, LEASE_SECONDS)
            except Exception:
                log.exception("PACS outbox: cannot read the outbox")
                due = []
            for item in due:
                try:
                    await self._push(item)
                except Exception as exc:
                    # Never let one entry stop the worker; the entry is retried later.
                    log.warning("PACS push failed unexpectedly", extra={"why": type(exc).__name__})
                    with contextlib.suppress(Exception):
                        await self.log.push_failed(
                            item.sop_instance_uid,
                            f"internal error ({type(exc).__name__})",
                            retry_delay(item.attempts),
                        )
            if len(due) < BATCH:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), IDLE_POLL_SECONDS)
                self.wake.clear()

    async def _push(self, item: OutboxItem) -> None:
        try:
            data = await asyncio.to_thread(self.archive.read, item.path, item.sha256)
        except ArchiveMissing:
            # Another node archived it (nodes with archives of their own): let that node push
            # it soon, with no attempt counted (a back-off here would hold back the owner).
            await self.log.push_failed(
                item.sop_instance_uid,
                "the file is in another node's archive: that node pushes it",
                OTHER_NODE_RETRY_SECONDS,
                attempt=False,
            )
            return
        try:
            await self.pacs.send(item.sop_instance_uid, data)
        except (PushFailed, ArchiveCorrupt) as exc:
            delay = retry_delay(item.attempts)
            log.warning(
                "PACS push failed; will retry",
                extra={"attempts": item.attempts + 1, "retry_in": round(delay, 1), "why": str(exc)},
            )
            await self.log.push_failed(item.sop_instance_uid, str(exc), delay)
            self.on_push("failed")
            return
        await self.log.pushed(item.sop_instance_uid)
        self.on_push("sent")
