"""Queries on the records: consultations, participants, their standing, and the audit log.

Each feature keeps its own queries in its own package, built in app.py on the same engine: the
room's events and marks (`server/live/log.py`), key images and report versions.

Plain SQL through SQLAlchemy's `text()`, the same statements on SQLite and
PostgreSQL. Every write that changes a record appends its audit entry in the
same transaction, so the record and its audit trail commit or fail together.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import RowMapping, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from server.audit import GENESIS_HASH, AuditEntry, AuditFacts, ChainCheck, chain_next, verify_chain
from server.auth import Role
from server.consultations.access import Standing
from server.consultations.lifecycle import Cancellation, State, accepts_participants, on_cancelled
from server.consultations.model import ClinicalContext, ConsultationRow, new_accession_number
from server.consultations.turnaround import Times
from server.errors import Conflict, NotFound
from server.store.database import open_engine
from server.store.times import from_iso, iso

AUDIT_LOCK_ID = 0x61756474  # "audt": advisory lock key serializing audit appends on PostgreSQL
AUDIT_PAGE_ROWS = 1000


# Draws of an accession number before a clash is an error (one in 6.6e11 clashes at all).
ACCESSION_ATTEMPTS = 3
# The archived objects a reviewer reads (imaging's kinds; counted for the queue).
ATTACHMENT_KINDS = ("still", "clip", "scanner_still", "scanner_clip", "prior")


@dataclass(frozen=True)
class ParticipantRow:
    """A person invited into one consultation."""

    id: str
    consultation_id: str
    role: Role
    name: str
    invited_by: str
    invited_at: datetime
    joined_at: datetime | None = None
    left_at: datetime | None = None
    # The expert whose `accept` made this participant (None: a coordinator's invite).
    expert_sub: str | None = None

    @classmethod
    def invited(cls, consultation_id: str, role: Role, name: str, by: str) -> ParticipantRow:
        """A new participant, invited now by `by` (a coordinator, or an expert accepting)."""
        return cls(uuid.uuid4().hex, consultation_id, role, name, by, datetime.now(UTC))


# More writes a caller makes in the transaction that stores a new consultation.
AlsoWrite = Callable[[AsyncConnection], Awaitable[object]]


class Store:
    """The records store behind one engine (SQLite or PostgreSQL)."""

    def __init__(self, engine: AsyncEngine):
        # Pooled async engine; its dialect picks the few dialect-specific statements.
        self.engine = engine
        # "sqlite" or "postgresql".
        self.dialect = engine.dialect.name

    async def close(self) -> None:
        await self.engine.dispose()

    async def ping(self) -> None:
        """Raise unless the store answers a query."""
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.begin() as conn:
            yield conn

    # Consultations

    async def create_consultation(
        self, row: ConsultationRow, audit: AuditFacts, also: AlsoWrite | None = None
    ) -> ConsultationRow:
        """Store a new consultation, and whatever `also` writes in the same transaction (the
        notices of its arrival); returns it as stored (a clashing accession number, one in
        hundreds of billions, is drawn again)."""
        for attempt in range(ACCESSION_ATTEMPTS):
            try:
                await self._insert_consultation(row, audit, also)
                return row
            except IntegrityError:
                if attempt + 1 == ACCESSION_ATTEMPTS or not await self._accession_taken(row):
                    raise
                row = replace(row, accession_number=new_accession_number())
        raise AssertionError("unreachable")

    async def _accession_taken(self, row: ConsultationRow) -> bool:
        return await self.consultation_by_accession(row.accession_number or "") is not None

    async def consultation_by_accession(self, accession_number: str) -> ConsultationRow | None:
        async with self.engine.connect() as conn:
            result = await conn.execute(
                text("SELECT * FROM consultations WHERE accession_number = :a"),
                {"a": accession_number},
            )
            found = result.mappings().first()
        return None if found is None else _consultation(found)

    async def _insert_consultation(
        self, row: ConsultationRow, audit: AuditFacts, also: AlsoWrite | None
    ) -> None:
        async with self.transaction() as conn:
            await conn.execute(
                text(
                    "INSERT INTO consultations (id, state, urgency, application, context,"
                    " created_by, requested_at, due_at, updated_at, accession_number)"
                    " VALUES (:id, :state, :urgency, :application, :context,"
                    " :created_by, :requested_at, :due_at, :updated_at, :accession_number)"
                ),
                {
                    "accession_number": row.accession_number,
                    "id": row.id,
                    "state": row.state.value,
                    "urgency": row.urgency.value,
                    "application": row.context.application,
                    "context": row.context.model_dump_json(exclude_none=True),
                    "created_by": row.created_by,
                    "requested_at": iso(row.requested_at),
                    "due_at": iso(row.due_at),
                    "updated_at": iso(row.updated_at),
                },
            )
            await self.append_audit(conn, audit)
            if also is not None:
                await also(conn)

    async def get_consultation(self, consultation_id: str) -> ConsultationRow | None:
        async with self.engine.connect() as conn:
            result = await conn.execute(
                text("SELECT * FROM consultations WHERE id = :id"), {"id": consultation_id}
            )
            found = result.mappings().first()
        return None if found is None else _consultation(found)

    async def list_consultations(self, states: Iterable[State]) -> list[ConsultationRow]:
        """Consultations in the given states, earliest due first (the caller ranks urgency)."""
        wanted = sorted(s.value for s in states)
        if not wanted:
            return []
        names = ", ".join(f":s{i}" for i in range(len(wanted)))
        async with self.engine.connect() as conn:
            result = await conn.execute(
                text(f"SELECT * FROM consultations WHERE state IN ({names}) ORDER BY due_at, id"),  # noqa: S608
                {f"s{i}": s for i, s in enumerate(wanted)},
            )
            return [_consultation(m) for m in result.mappings()]

    async def turnaround_times(self) -> list[Times]:
        """What turnaround needs of every consultation not cancelled (no context parsed)."""
        async with self.engine.connect() as conn:
            result = await conn.execute(
                text(
                    "SELECT state, requested_at, due_at, first_joined_at, signed_at"
                    " FROM consultations WHERE state <> :cancelled"
                ),
                {"cancelled": State.CANCELLED.value},
            )
            return [
                Times(
                    State(m["state"]),
                    datetime.fromisoformat(m["requested_at"]),
                    datetime.fromisoformat(m["due_at"]),
                    from_iso(m["first_joined_at"]),
                    from_iso(m["signed_at"]),
                )
                for m in result.mappings()
            ]

    # Participants

    async def add_participant(self, row: ParticipantRow, audit: AuditFacts) -> None:
        """Invite a participant, unless the consultation no longer takes any."""
        async with self.transaction() as conn:
            state = (
                await conn.execute(
                    text("SELECT state FROM consultations WHERE id = :id"),
                    {"id": row.consultation_id},
                )
            ).scalar()
            if state is None:
                raise NotFound("no such consultation", code="consultation_not_found")
            if not accepts_participants(State(state)):
                raise Conflict(
                    f"the consultation is {state}; it takes no new participants",
                    code="invalid_state",
                )
            await conn.execute(
                text(
                    "INSERT INTO participants (id, consultation_id, role, name, invited_by,"
                    " invited_at) VALUES (:id, :cid, :role, :name, :by, :at)"
                ),
                {
                    "id": row.id,
                    "cid": row.consultation_id,
                    "role": row.role.value,
                    "name": row.name,
                    "by": row.invited_by,
                    "at": iso(row.invited_at),
                },
            )
            await self.append_audit(conn, audit)

    async def participants(self, consultation_id: str) -> list[ParticipantRow]:
        async with self.engine.connect() as conn:
            result = await conn.execute(
                text(
                    "SELECT * FROM participants WHERE consultation_id = :cid"
                    " ORDER BY invited_at, id"
                ),
                {"cid": consultation_id},
            )
            return [
                ParticipantRow(
                    id=m["id"],
                    consultation_id=m["consultation_id"],
                    role=Role(m["role"]),
                    name=m["name"],
                    invited_by=m["invited_by"],
                    invited_at=datetime.fromisoformat(m["invited_at"]),
                    joined_at=from_iso(m["joined_at"]),
                    left_at=from_iso(m["left_at"]),
                    expert_sub=m["expert_sub"],
                )
                for m in result.mappings()
            ]

    async def standing(self, consultation_id: str, sub: str) -> Standing | None:
        """What decides whether a token of `sub` still opens the consultation (one lookup);
        None when there is no such consultation."""
        async with self.engine.connect() as conn:
            found = (
                (
                    await conn.execute(
                        text(
                            "SELECT c.state, c.assigned_expert, c.cancel_reason, p.expert_sub,"
                            " e.active FROM consultations c"
                            " LEFT JOIN participants p ON p.id = :sub AND p.consultation_id = c.id"
                            " LEFT JOIN experts e ON e.sub = p.expert_sub WHERE c.id = :cid"
                        ),
                        {"cid": consultation_id, "sub": sub},
                    )
                )
                .mappings()
                .first()
            )
        if found is None:
            return None
        return Standing(
            state=State(found["state"]),
            assigned_expert=found["assigned_expert"],
            cancel_reason=found["cancel_reason"],
            link_expert=found["expert_sub"],
            link_expert_active=bool(found["active"]),
        )

    async def cancel(
        self, consultation_id: str, cancellation: Cancellation, now: datetime, audit: AuditFacts
    ) -> ConsultationRow:
        """Cancel an open consultation, if its life cycle allows; audited with the reason."""
        async with self.transaction() as conn:
            before, _assigned = await locked_assignment(conn, consultation_id)
            on_cancelled(State(before))
            await conn.execute(
                text(
                    "UPDATE consultations SET state = :state, cancelled_at = :at,"
                    " cancel_reason = :reason, cancel_note = :note, updated_at = :at"
                    " WHERE id = :id"
                ),
                {
                    "state": State.CANCELLED.value,
                    "at": iso(now),
                    "reason": cancellation.reason.value,
                    "note": cancellation.note,
                    "id": consultation_id,
                },
            )
            # The coded reason only: the note may say anything, the audit log never holds it.
            detail = {"reason": cancellation.reason.value, "previous_state": before}
            await self.append_audit(conn, replace(audit, detail=detail))
            result = await conn.execute(
                text("SELECT * FROM consultations WHERE id = :id"), {"id": consultation_id}
            )
            return _consultation(result.mappings().one())

    async def attachments(self, consultation_ids: list[str]) -> dict[str, dict[str, int]]:
        """What each consultation holds for review, by kind: key images (stills, clips, a
        scanner's images) and priors. Counted on the archived objects (one query)."""
        if not consultation_ids:
            return {}
        names = ", ".join(f":c{i}" for i in range(len(consultation_ids)))
        kinds = ", ".join(f":k{i}" for i in range(len(ATTACHMENT_KINDS)))
        where = f"consultation_id IN ({names}) AND kind IN ({kinds})"
        query = f"SELECT consultation_id, kind, COUNT(*) AS n FROM dicom_objects WHERE {where}"  # noqa: S608
        async with self.engine.connect() as conn:
            result = await conn.execute(
                text(query + " GROUP BY consultation_id, kind"),
                {
                    **{f"c{i}": c for i, c in enumerate(consultation_ids)},
                    **{f"k{i}": k for i, k in enumerate(ATTACHMENT_KINDS)},
                },
            )
            counts: dict[str, dict[str, int]] = {}
            for m in result.mappings():
                counts.setdefault(m["consultation_id"], {})[m["kind"]] = int(m["n"])
        return counts

    async def related_rows(self, table: str, consultation_id: str) -> list[dict[str, Any]]:
        """Marks, key images or reports of a consultation, as stored columns.

        Partial: these tables are written by the live room, capture and report
        features; until those land this returns what is stored (nothing).
        """
        order = {"marks": "seq", "key_images": "created_at, id", "reports": "version"}[table]
        async with self.engine.connect() as conn:
            result = await conn.execute(
                text(f"SELECT * FROM {table} WHERE consultation_id = :cid ORDER BY {order}"),  # noqa: S608
                {"cid": consultation_id},
            )
            return [dict(m) for m in result.mappings()]

    # Audit log

    async def record_audit(self, facts: AuditFacts) -> AuditEntry:
        """Append one audit entry in its own transaction."""
        async with self.transaction() as conn:
            return await self.append_audit(conn, facts)

    async def append_audit(self, conn: AsyncConnection, facts: AuditFacts) -> AuditEntry:
        if self.dialect == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": AUDIT_LOCK_ID})
        last = (
            await conn.execute(text("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1"))
        ).first()
        seq, prev = (1, GENESIS_HASH) if last is None else (last[0] + 1, last[1])
        entry = chain_next(seq, iso(datetime.now(UTC)), facts, prev)
        await conn.execute(
            text(
                "INSERT INTO audit_log (seq, at, actor, role, action, object_type, object_id,"
                " outcome, source, detail, prev_hash, hash) VALUES (:seq, :at, :actor, :role,"
                " :action, :object_type, :object_id, :outcome, :source, :detail, :prev, :hash)"
            ),
            {
                "seq": entry.seq,
                "at": entry.at,
                "actor": facts.actor,
                "role": facts.role,
                "action": facts.action,
                "object_type": facts.object_type,
                "object_id": facts.object_id,
                "outcome": facts.outcome,
                "source": facts.source,
                "detail": json.dumps(facts.detail, sort_keys=True),
                "prev": entry.prev_hash,
                "hash": entry.hash,
            },
        )
        return entry

    async def audit_entries(
        self, after_seq: int = 0, limit: int = AUDIT_PAGE_ROWS
    ) -> list[AuditEntry]:
        async with self.engine.connect() as conn:
            result = await conn.execute(
                text("SELECT * FROM audit_log WHERE seq > :after ORDER BY seq LIMIT :limit"),
                {"after": after_seq, "limit": limit},
            )
            return [_audit_entry(m) for m in result.mappings()]

    async def verify_audit(self) -> ChainCheck:
        """Walk the whole chain page by page; report the first entry that does not fit."""
        check = verify_chain([])
        while check.ok and (page := await self.audit_entries(check.entries)):
            check = verify_chain(page, resume=check)
        return check


def _consultation(m: RowMapping) -> ConsultationRow:
    return ConsultationRow(
        id=m["id"],
        state=State(m["state"]),
        context=ClinicalContext.model_validate_json(m["context"]),
        created_by=m["created_by"],
        requested_at=datetime.fromisoformat(m["requested_at"]),
        due_at=datetime.fromisoformat(m["due_at"]),
        updated_at=datetime.fromisoformat(m["updated_at"]),
        first_joined_at=from_iso(m["first_joined_at"]),
        reported_at=from_iso(m["reported_at"]),
        signed_at=from_iso(m["signed_at"]),
        assigned_expert=m["assigned_expert"],
        cancelled_at=from_iso(m["cancelled_at"]),
        cancel_reason=m["cancel_reason"],
        cancel_note=m["cancel_note"],
        accession_number=m["accession_number"],
    )


async def locked_assignment(conn: AsyncConnection, consultation_id: str) -> tuple[str, str | None]:
    """The consultation's state and assigned expert, locked until the transaction ends."""
    lock = " FOR UPDATE" if conn.dialect.name == "postgresql" else ""
    found = (
        await conn.execute(
            text(f"SELECT state, assigned_expert FROM consultations WHERE id = :id{lock}"),  # noqa: S608
            {"id": consultation_id},
        )
    ).first()
    if found is None:
        raise NotFound("no such consultation", code="consultation_not_found", field="id")
    return str(found[0]), found[1]


def _audit_entry(m: RowMapping) -> AuditEntry:
    facts = AuditFacts(
        actor=m["actor"],
        role=m["role"],
        action=m["action"],
        object_type=m["object_type"],
        object_id=m["object_id"],
        outcome=m["outcome"],
        source=m["source"],
        detail=json.loads(m["detail"]),
    )
    return AuditEntry(m["seq"], m["at"], facts, m["prev_hash"], m["hash"])


async def open_store(url: str) -> Store:
    """Connect to the records store at `url` and bring its schema up to date."""
    return Store(await open_engine(url))
