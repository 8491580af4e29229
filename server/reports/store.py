"""Queries on reports: every draft, signature and addendum is a new version row.

A version, the consultation's state and times, the report's DICOM SR (when one is written) and
the audit entry commit together; two writers racing for the same version number collide on the
table's unique key and the later one is refused (`report_changed`), never silently merged.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from server.audit import AuditFacts
from server.consultations.lifecycle import State
from server.errors import Conflict
from server.imaging.model import ArchivedObject
from server.imaging.store import insert_object
from server.reports.model import ReportBody, Version
from server.store.times import from_iso, iso

if TYPE_CHECKING:
    from server.consultations.store import Store


class ReportLog:
    """The versions of each consultation's report."""

    def __init__(self, store: Store):
        # The records store whose transactions the report writes join.
        self.store = store

    async def versions(self, consultation_id: str) -> list[Version]:
        async with self.store.engine.connect() as conn:
            result = await conn.execute(
                text("SELECT * FROM reports WHERE consultation_id = :cid ORDER BY version"),
                {"cid": consultation_id},
            )
            rows = list(result.mappings())
        versions = []
        for row in rows:
            stored = json.loads(row["body"])
            body = stored.get("body")
            versions.append(
                Version(
                    version=row["version"],
                    author=row["author"],
                    body=None if body is None else ReportBody.model_validate(body, strict=False),
                    addendum=stored.get("addendum"),
                    created_at=datetime.fromisoformat(row["created_at"]),
                    signed_at=from_iso(row["signed_at"]),
                    signed_by=row["signed_by"],
                )
            )
        return versions

    async def append(
        self,
        consultation_id: str,
        version: Version,
        audit: AuditFacts,
        *,
        state: State | None = None,
        sr: ArchivedObject | None = None,
        push: bool = False,
        pdf: ArchivedObject | None = None,
    ) -> None:
        """Store `version`, move the consultation to `state` (stamping its time), record the SR
        and the report's PDF archived beside it."""
        stored = (
            {"addendum": version.addendum}
            if version.body is None
            else {"body": version.body.model_dump(mode="json")}
        )
        try:
            async with self.store.transaction() as conn:
                await conn.execute(
                    text(
                        "INSERT INTO reports (id, consultation_id, version, author, body,"
                        " created_at, signed_at, signed_by) VALUES (:id, :cid, :version,"
                        " :author, :body, :at, :signed_at, :signed_by)"
                    ),
                    {
                        "id": uuid.uuid4().hex,
                        "cid": consultation_id,
                        "version": version.version,
                        "author": version.author,
                        "body": json.dumps(stored),
                        "at": iso(version.created_at),
                        "signed_at": iso(version.signed_at) if version.signed_at else None,
                        "signed_by": version.signed_by,
                    },
                )
                if state is not None:
                    # Reported once, at the first draft; signed when signed. Never once
                    # cancelled (a cancellation committed since the handler read the state).
                    moved = await conn.execute(
                        text(
                            "UPDATE consultations SET state = :state, updated_at = :at,"
                            " reported_at = COALESCE(reported_at, :at),"
                            " signed_at = COALESCE(:signed_at, signed_at)"
                            " WHERE id = :cid AND state <> :cancelled"
                        ),
                        {
                            "state": state.value,
                            "at": iso(version.created_at),
                            "signed_at": iso(version.created_at) if state is State.SIGNED else None,
                            "cid": consultation_id,
                            "cancelled": State.CANCELLED.value,
                        },
                    )
                    if moved.rowcount != 1:
                        raise Conflict(
                            "the consultation is cancelled; it takes no report",
                            code="invalid_state",
                        )
                for archived in (sr, pdf):
                    if archived is not None:
                        await insert_object(conn, consultation_id, archived, None, push=push)
                await self.store.append_audit(conn, audit)
        except IntegrityError:
            raise Conflict(
                "the report was changed meanwhile; load it again and retry",
                code="report_changed",
            ) from None
