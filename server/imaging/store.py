"""Queries on key images, the archived DICOM objects and the PACS outbox.

A key image, its DICOM objects, its outbox entries, its room event and its audit
entry are written in one transaction: the capture is acknowledged only after
that commit (and after the files are durable), so an acknowledged capture is
always complete in both the archive and the record.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from server.audit import AuditFacts
from server.imaging.model import ArchivedObject, NewKeyImage, OutboxItem
from server.live.log import insert_event, next_seq
from server.live.room import RoomEvent
from server.store.outbox import PENDING, take_leases
from server.store.times import iso

if TYPE_CHECKING:
    from server.consultations.store import Store

SENT = "sent"
NOT_CONFIGURED = "not_configured"


class KeyImageLog:
    def __init__(self, store: Store):
        self.store = store
        self.engine = store.engine

    async def archived_bytes(self, consultation_id: str) -> int:
        """What the consultation's archived objects take, all kinds (its quota counts this)."""
        async with self.engine.connect() as conn:
            result = await conn.execute(
                text(
                    "SELECT COALESCE(SUM(size), 0) FROM dicom_objects WHERE consultation_id = :cid"
                ),
                {"cid": consultation_id},
            )
            return int(result.scalar() or 0)

    async def images(self, consultation_id: str) -> list[dict[str, Any]]:
        """The consultation's key images with their PACS state, oldest first."""
        async with self.engine.connect() as conn:
            result = await conn.execute(
                text(
                    "SELECT k.id, k.kind, k.sop_instance_uid, k.media_ts, k.marks, k.guidance,"
                    " k.detail, k.created_by, k.created_at, k.pacs_state, k.measurements,"
                    " o.sha256,"
                    " o.kind AS object_kind"
                    " FROM key_images k JOIN dicom_objects o"
                    " ON o.sop_instance_uid = k.sop_instance_uid"
                    " WHERE k.consultation_id = :cid ORDER BY k.created_at, k.id"
                ),
                {"cid": consultation_id},
            )
            return [_image_view(dict(m)) for m in result.mappings()]

    async def key_image_of(self, sop_instance_uid: str) -> str | None:
        """The id of the key image whose image is this object, or None."""
        async with self.engine.connect() as conn:
            result = await conn.execute(
                text("SELECT id FROM key_images WHERE sop_instance_uid = :sop"),
                {"sop": sop_instance_uid},
            )
            found = result.scalar()
        return None if found is None else str(found)

    async def image(self, key_image_id: str) -> tuple[dict[str, Any], ArchivedObject] | None:
        """One key image (with its consultation id) and its archived file."""
        async with self.engine.connect() as conn:
            result = await conn.execute(
                text(
                    "SELECT k.*, o.path, o.sha256 AS file_sha256, o.size FROM key_images k"
                    " JOIN dicom_objects o ON o.sop_instance_uid = k.sop_instance_uid"
                    " WHERE k.id = :id"
                ),
                {"id": key_image_id},
            )
            m = result.mappings().first()
        if m is None:
            return None
        row = dict(m)
        obj = ArchivedObject(
            row["sop_instance_uid"], row["kind"], row["path"], row["file_sha256"], row["size"]
        )
        return row, obj

    async def add(self, image: NewKeyImage, *, push: bool, audit: AuditFacts) -> RoomEvent:
        """Record a durable key image; returns the room's `key_image` event."""
        now = iso(datetime.now(UTC))
        async with self.store.transaction() as conn:
            seq = await next_seq(conn, image.consultation_id)
            await conn.execute(
                text(
                    "INSERT INTO key_images (id, consultation_id, kind, sop_instance_uid, path,"
                    " sha256, media_ts, marks, created_by, created_at, pacs_state, guidance,"
                    " detail) VALUES (:id, :cid, :kind, :sop, :path, :sha, :ts, :marks, :by,"
                    " :at, :pacs, :guidance, :detail)"
                ),
                {
                    "id": image.id,
                    "cid": image.consultation_id,
                    "kind": image.kind,
                    "sop": image.sop_instance_uid,
                    "path": image.objects[0].path,
                    "sha": image.objects[0].sha256,
                    "ts": image.media_ts,
                    "marks": json.dumps(image.marks),
                    "by": image.created_by,
                    "at": now,
                    "pacs": PENDING if push else NOT_CONFIGURED,
                    "guidance": json.dumps(image.guidance),
                    "detail": json.dumps(image.detail),
                },
            )
            for obj in image.objects:
                await insert_object(conn, image.consultation_id, obj, image.id, push=push)
            event = RoomEvent(
                seq,
                "key_image",
                {
                    "id": image.id,
                    "kind": image.kind,
                    "author": image.created_by,
                    "preview_url": f"/api/key-images/{image.id}/preview",
                    # When it was captured: the gallery and the viewer show it.
                    "created_at": now,
                    "seq": seq,
                },
            )
            await insert_event(conn, image.consultation_id, event, image.created_by)
            await self.store.append_audit(conn, audit)
            return event

    async def add_prior(self, consultation_id: str, obj: ArchivedObject, audit: AuditFacts) -> bool:
        """Attach an imported prior; False when this very object is attached already."""
        try:
            async with self.store.transaction() as conn:
                exists = (
                    await conn.execute(
                        text("SELECT 1 FROM dicom_objects WHERE sop_instance_uid = :sop"),
                        {"sop": obj.sop_instance_uid},
                    )
                ).first()
                if exists is not None:
                    return False
                await insert_object(conn, consultation_id, obj, None, push=False)
                await self.store.append_audit(conn, audit)
                return True
        except IntegrityError:
            return False  # the same prior, attached at the same moment by another request

    async def set_measurements(
        self,
        consultation_id: str,
        key_image_id: str,
        measured: dict[str, Any],
        state: ArchivedObject,
        *,
        push: bool,
        audit: AuditFacts,
    ) -> None:
        """Record a key image's measurements (replacing earlier ones) with the presentation
        state that draws them."""
        async with self.store.transaction() as conn:
            await insert_object(conn, consultation_id, state, key_image_id, push=push)
            await conn.execute(
                text("UPDATE key_images SET measurements = :m WHERE id = :id"),
                {"m": json.dumps(measured), "id": key_image_id},
            )
            await self.store.append_audit(conn, audit)

    async def has_object(self, sop_instance_uid: str) -> bool:
        async with self.engine.connect() as conn:
            found = await conn.execute(
                text("SELECT 1 FROM dicom_objects WHERE sop_instance_uid = :sop"),
                {"sop": sop_instance_uid},
            )
            return found.first() is not None

    async def add_object(self, consultation_id: str, obj: ArchivedObject, *, push: bool) -> bool:
        """Record an object that belongs to no one key image (a key object selection)."""
        try:
            async with self.store.transaction() as conn:
                await insert_object(conn, consultation_id, obj, None, push=push)
                return True
        except IntegrityError:
            return False  # the same version, written by another node a moment before

    async def prior(self, sop_instance_uid: str) -> tuple[str, ArchivedObject] | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT consultation_id, sop_instance_uid, kind, path, sha256, size"
                        " FROM dicom_objects WHERE sop_instance_uid = :sop AND kind = 'prior'"
                    ),
                    {"sop": sop_instance_uid},
                )
            ).first()
        return None if row is None else (row[0], ArchivedObject(*row[1:]))

    # PACS outbox

    async def claim_due(self, limit: int, lease_seconds: float) -> list[OutboxItem]:
        """Pending entries whose time has come, leased to the caller for `lease_seconds`."""
        now = datetime.now(UTC)
        until = iso(now + timedelta(seconds=lease_seconds))
        async with self.store.transaction() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT b.sop_instance_uid, b.consultation_id, o.path, o.sha256,"
                        " b.attempts FROM pacs_outbox b JOIN dicom_objects o"
                        " ON o.sop_instance_uid = b.sop_instance_uid"
                        " WHERE b.state = :pending AND b.next_attempt_at <= :now"
                        " AND (b.claimed_until IS NULL OR b.claimed_until < :now)"
                        " ORDER BY b.next_attempt_at LIMIT :limit"
                    ),
                    {"pending": PENDING, "now": iso(now), "limit": limit},
                )
            ).all()
            keys = [row[0] for row in rows]
            won = await take_leases(conn, "pacs_outbox", "sop_instance_uid", keys, until, iso(now))
            return [OutboxItem(*row) for row in rows if row[0] in won]

    async def pushed(self, sop_instance_uid: str) -> None:
        now = iso(datetime.now(UTC))
        async with self.store.transaction() as conn:
            await conn.execute(
                text(
                    "UPDATE pacs_outbox SET state = :sent, claimed_until = NULL, last_error = NULL,"
                    " attempts = attempts + 1, updated_at = :now WHERE sop_instance_uid = :sop"
                ),
                {"sent": SENT, "now": now, "sop": sop_instance_uid},
            )
            # A key image is sent when all of its objects are (its presentation state included).
            await conn.execute(
                text(
                    "UPDATE key_images SET pacs_state = :sent WHERE id IN (SELECT key_image_id"
                    " FROM dicom_objects WHERE sop_instance_uid = :sop) AND NOT EXISTS"
                    " (SELECT 1 FROM pacs_outbox b JOIN dicom_objects o"
                    " ON o.sop_instance_uid = b.sop_instance_uid"
                    " WHERE o.key_image_id = key_images.id AND b.state <> :sent)"
                ),
                {"sent": SENT, "sop": sop_instance_uid},
            )

    async def push_failed(
        self, sop_instance_uid: str, error: str, retry_in: float, *, attempt: bool = True
    ) -> None:
        """The push did not happen: retried after `retry_in`; `attempt` False leaves its count
        (and so its back-off) alone, for an object this node could not even try."""
        now = datetime.now(UTC)
        async with self.store.transaction() as conn:
            await conn.execute(
                text(
                    f"UPDATE pacs_outbox SET attempts = attempts + {int(attempt)},"  # noqa: S608
                    " last_error = :error,"
                    " claimed_until = NULL, next_attempt_at = :next, updated_at = :now"
                    " WHERE sop_instance_uid = :sop"
                ),
                {
                    "error": error[:500],
                    "next": iso(now + timedelta(seconds=retry_in)),
                    "now": iso(now),
                    "sop": sop_instance_uid,
                },
            )

    async def outbox_state(self, consultation_id: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT state, COUNT(*), MAX(last_error) FROM pacs_outbox"
                        " WHERE consultation_id = :cid GROUP BY state"
                    ),
                    {"cid": consultation_id},
                )
            ).all()
        return {
            "pending": sum(r[1] for r in rows if r[0] == PENDING),
            "sent": sum(r[1] for r in rows if r[0] == SENT),
            "last_error": next((r[2] for r in rows if r[0] == PENDING and r[2]), None),
        }

    async def outbox_backlog(self) -> int:
        """Objects waiting to be pushed to the PACS, over every consultation."""
        async with self.engine.connect() as conn:
            count = await conn.scalar(
                text("SELECT COUNT(*) FROM pacs_outbox WHERE state = :pending"),
                {"pending": PENDING},
            )
        return int(count or 0)

    async def objects(self, consultation_id: str, kind: str) -> list[ArchivedObject]:
        async with self.engine.connect() as conn:
            result = await conn.execute(
                text(
                    "SELECT sop_instance_uid, kind, path, sha256, size FROM dicom_objects"
                    " WHERE consultation_id = :cid AND kind = :kind ORDER BY created_at"
                ),
                {"cid": consultation_id, "kind": kind},
            )
            return [ArchivedObject(*r) for r in result]


async def insert_object(
    conn: AsyncConnection,
    consultation_id: str,
    obj: ArchivedObject,
    key_image_id: str | None,
    *,
    push: bool,
) -> None:
    """Record an archived object (in the caller's transaction), queued for the PACS if `push`."""
    now = iso(datetime.now(UTC))
    await conn.execute(
        text(
            "INSERT INTO dicom_objects (sop_instance_uid, consultation_id,"
            " key_image_id, kind, path, sha256, size, created_at)"
            " VALUES (:sop, :cid, :kid, :kind, :path, :sha, :size, :at)"
        ),
        {
            "sop": obj.sop_instance_uid,
            "cid": consultation_id,
            "kid": key_image_id,
            "kind": obj.kind,
            "path": obj.path,
            "sha": obj.sha256,
            "size": obj.size,
            "at": now,
        },
    )
    if push:
        await conn.execute(
            text(
                "INSERT INTO pacs_outbox (sop_instance_uid, consultation_id, state,"
                " next_attempt_at, updated_at) VALUES (:sop, :cid, :state, :at, :at)"
            ),
            {"sop": obj.sop_instance_uid, "cid": consultation_id, "state": PENDING, "at": now},
        )


def _image_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "kind": row["kind"],
        # The archived object's kind: its series (a scanner's images have their own).
        "object_kind": row["object_kind"],
        "sop_instance_uid": row["sop_instance_uid"],
        "media_ts": row["media_ts"],
        "marks": json.loads(row["marks"]),
        "guidance": json.loads(row["guidance"]),
        "detail": json.loads(row["detail"]),
        "measurements": json.loads(row["measurements"]) if row["measurements"] else None,
        "created_by": row["created_by"],
        "created_at": row["created_at"],
        "pacs_state": row["pacs_state"],
        "sha256": row["sha256"],
        "dicom_url": f"/api/key-images/{row['id']}/dicom",
        "preview_url": f"/api/key-images/{row['id']}/preview",
    }
