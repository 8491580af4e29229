"""Queries on outcomes (each recording a new version row) and what the ledger reads.

A version and its audit entry commit together; two coordinators recording at once collide on
the table's unique key and the later one is refused (`outcome_changed`), never merged.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import RowMapping, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from server.audit import AuditFacts
from server.consultations.lifecycle import State
from server.consultations.model import ClinicalContext
from server.errors import Conflict
from server.outcomes.model import OutcomeBody, OutcomeVersion
from server.reports.model import ReportBody
from server.store.times import iso

if TYPE_CHECKING:
    from server.consultations.store import Store

# Which time places a consultation in a period.
BASES = ("signed_at", "requested_at")


@dataclass(frozen=True)
class SignedReport:
    """A signed report as the ledger reads it: the request, the signed body, the reader (the
    expert behind the signature: a reading-room expert's sub, else the signer's) and the latest
    outcome."""

    application: str
    context: ClinicalContext
    body: ReportBody
    reader: str
    outcome: OutcomeBody | None


class OutcomeLog:
    """The outcome versions of each consultation, and the signed reports of a period."""

    def __init__(self, store: Store):
        # The records store whose transactions the outcome writes join.
        self.store = store

    async def versions(self, consultation_id: str) -> list[OutcomeVersion]:
        async with self.store.engine.connect() as conn:
            result = await conn.execute(
                text("SELECT * FROM outcomes WHERE consultation_id = :cid ORDER BY version"),
                {"cid": consultation_id},
            )
            return [_version(m) for m in result.mappings()]

    async def append(
        self, consultation_id: str, version: OutcomeVersion, audit: AuditFacts
    ) -> None:
        try:
            async with self.store.transaction() as conn:
                await conn.execute(
                    text(
                        "INSERT INTO outcomes (id, consultation_id, version, body, recorded_by,"
                        " recorded_at) VALUES (:id, :cid, :version, :body, :by, :at)"
                    ),
                    {
                        "id": uuid.uuid4().hex,
                        "cid": consultation_id,
                        "version": version.version,
                        "body": version.body.model_dump_json(exclude_none=True),
                        "by": version.recorded_by,
                        "at": iso(version.recorded_at),
                    },
                )
                await self.store.append_audit(conn, audit)
        except IntegrityError:
            raise Conflict(
                "the outcome was recorded meanwhile; load it again and retry",
                code="outcome_changed",
            ) from None

    async def signed_reports(
        self, basis: str, start: datetime | None, end: datetime | None
    ) -> list[SignedReport]:
        """The signed reports of consultations whose `basis` time is in [start, end)."""
        # Open ends: every ISO time sorts after "" and before "~".
        params = {
            "signed": State.SIGNED.value,
            "start": iso(start) if start is not None else "",
            "end": iso(end) if end is not None else "~",
        }
        # The only text put into the queries is a column name from BASES.
        period = f"c.state = :signed AND c.{BASES[BASES.index(basis)]} >= :start"
        period += f" AND c.{basis} < :end"
        query = (
            "SELECT c.id, c.application, c.context, r.body,"  # noqa: S608
            " COALESCE(p.expert_sub, r.signed_by)"
            " AS reader FROM consultations c JOIN reports r ON r.consultation_id = c.id"
            " LEFT JOIN participants p ON p.id = r.signed_by"
            f" WHERE {period} AND r.signed_at IS NOT NULL ORDER BY c.id, r.version"
        )
        async with self.store.engine.connect() as conn:
            rows = list((await conn.execute(text(query), params)).mappings())
            latest = await self._latest_outcomes(conn, period, params)
        found: dict[str, SignedReport] = {}
        for m in rows:
            stored = json.loads(m["body"])
            if "body" not in stored or m["id"] in found:
                continue  # an addendum; or a second signed body, which the rules never make
            found[m["id"]] = SignedReport(
                application=m["application"] or "",
                context=ClinicalContext.model_validate_json(m["context"]),
                body=ReportBody.model_validate(stored["body"], strict=False),
                reader=m["reader"],
                outcome=latest.get(m["id"]),
            )
        return list(found.values())

    @staticmethod
    async def _latest_outcomes(
        conn: AsyncConnection, period: str, params: dict[str, str]
    ) -> dict[str, OutcomeBody]:
        """The newest outcome of each consultation the period's conditions select."""
        query = (
            "SELECT o.consultation_id, o.body FROM outcomes o"  # noqa: S608
            " JOIN (SELECT consultation_id, MAX(version) AS version FROM outcomes"
            " GROUP BY consultation_id) newest ON newest.consultation_id = o.consultation_id"
            " AND newest.version = o.version"
            f" JOIN consultations c ON c.id = o.consultation_id WHERE {period}"
        )
        result = await conn.execute(text(query), params)
        return {
            m["consultation_id"]: OutcomeBody.model_validate_json(m["body"])
            for m in result.mappings()
        }


def _version(m: RowMapping) -> OutcomeVersion:
    return OutcomeVersion(
        version=m["version"],
        body=OutcomeBody.model_validate_json(m["body"]),
        recorded_by=m["recorded_by"],
        recorded_at=datetime.fromisoformat(m["recorded_at"]),
    )
