"""Queries on experts' credentials and on who a consultation is assigned to.

Assigning and accepting are single conditional UPDATEs, so two experts accepting
the same request at once cannot both get it; each write appends its audit entry
in the same transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import RowMapping, text
from sqlalchemy.ext.asyncio import AsyncConnection

from server.audit import AuditFacts
from server.consultations.lifecycle import OPEN_STATES
from server.consultations.model import Application, ConsultationRow
from server.consultations.store import (
    ParticipantRow,
    Store,
    _consultation,
    locked_assignment,
)
from server.errors import Conflict, Forbidden
from server.store.times import iso

_OPEN = sorted(s.value for s in OPEN_STATES)
_OPEN_PARAMS = {f"open{i}": s for i, s in enumerate(_OPEN)}
_OPEN_IN = ", ".join(f":{name}" for name in _OPEN_PARAMS)
# Built from the placeholders above only (no input).
_ASSIGNED_OPEN = f"SELECT id, application FROM consultations WHERE assigned_expert = :sub AND state IN ({_OPEN_IN})"  # noqa: S608, E501


@dataclass(frozen=True)
class ExpertRow:
    """An expert's registered credentials."""

    sub: str
    name: str
    subspecialties: tuple[Application, ...]
    active: bool
    created_at: datetime
    updated_at: datetime
    # Where notifications reach them (None: not told by e-mail).
    email: str | None = None


class Experts:
    """Experts and consultation assignments, in the records store."""

    def __init__(self, store: Store):
        self.store = store

    async def put(
        self,
        sub: str,
        name: str,
        subspecialties: tuple[Application, ...],
        active: bool,
        now: datetime,
        audit: AuditFacts,
        email: str | None = None,
    ) -> tuple[ExpertRow, bool]:
        """Register or update an expert; returns the row and whether it was created."""
        async with self.store.transaction() as conn:
            before = await _expert(conn, sub)
            created = before is None
            await conn.execute(
                text(
                    "INSERT INTO experts (sub, name, subspecialties, active, email, created_at,"
                    " updated_at) VALUES (:sub, :name, :subs, :active, :email, :at, :at)"
                    " ON CONFLICT (sub) DO UPDATE SET name = :name, subspecialties = :subs,"
                    " active = :active, email = :email, updated_at = :at"
                ),
                {
                    "sub": sub,
                    "name": name,
                    "subs": json.dumps([s.value for s in subspecialties]),
                    "active": active,
                    "email": email,
                    "at": iso(now),
                },
            )
            action = "expert.register" if created else "expert.update"
            await self.store.append_audit(conn, replace(audit, action=action))
            # Open requests the expert may no longer read go back to the queue.
            kept = [s.value for s in subspecialties] if active else []
            await self._release_assignments(conn, sub, kept, now, audit)
            row = await _expert(conn, sub)
        assert row is not None
        return row, created

    async def _release_assignments(
        self, conn: AsyncConnection, sub: str, kept: list[str], now: datetime, audit: AuditFacts
    ) -> None:
        """Unassign `sub` from open consultations whose application is not in `kept`."""
        result = await conn.execute(text(_ASSIGNED_OPEN), {"sub": sub, **_OPEN_PARAMS})
        for consultation_id, application in result.all():
            if (application or Application.OTHER.value) in kept:
                continue
            await conn.execute(
                text(
                    "UPDATE consultations SET assigned_expert = NULL, updated_at = :at"
                    " WHERE id = :id"
                ),
                {"at": iso(now), "id": consultation_id},
            )
            await self.store.append_audit(
                conn,
                replace(
                    audit,
                    action="consultation.unassign",
                    object_type="consultation",
                    object_id=consultation_id,
                ),
            )

    async def linked_consultations(self, sub: str) -> list[str]:
        """The consultations holding a join link from this expert's `accept`."""
        async with self.store.engine.connect() as conn:
            result = await conn.execute(
                text("SELECT DISTINCT consultation_id FROM participants WHERE expert_sub = :sub"),
                {"sub": sub},
            )
            return list(result.scalars())

    async def get(self, sub: str) -> ExpertRow | None:
        async with self.store.engine.connect() as conn:
            return await _expert(conn, sub)

    async def active(self, sub: str) -> ExpertRow:
        """The expert's credentials if they are active, else 403 `not_credentialed`."""
        expert = await self.get(sub)
        if expert is None or not expert.active:
            raise Forbidden(
                "no active credentials are registered for this expert: a coordinator must register"
                " their subspecialties (PUT /api/experts/{sub})",
                code="not_credentialed",
            )
        return expert

    async def all(self) -> list[ExpertRow]:
        async with self.store.engine.connect() as conn:
            result = await conn.execute(text("SELECT * FROM experts ORDER BY sub"))
            return [_expert_row(m) for m in result.mappings()]

    async def open_for(self, sub: str) -> list[ConsultationRow]:
        """Open consultations that are unassigned or assigned to `sub` (any application)."""
        async with self.store.engine.connect() as conn:
            result = await conn.execute(
                text(
                    f"SELECT * FROM consultations WHERE state IN ({_OPEN_IN})"  # noqa: S608
                    " AND (assigned_expert IS NULL OR assigned_expert = :sub)"
                    " ORDER BY due_at, id"
                ),
                {**_OPEN_PARAMS, "sub": sub},
            )
            return [_consultation(m) for m in result.mappings()]

    async def accept(
        self, consultation_id: str, participant: ParticipantRow, audit: AuditFacts
    ) -> None:
        """Assign an open consultation to the expert `participant.invited_by` and let them in.

        Refused with `Conflict` when it is assigned to another expert or no longer open.
        """
        sub = participant.invited_by
        async with self.store.transaction() as conn:
            result = await conn.execute(
                text(
                    "UPDATE consultations SET assigned_expert = :sub, updated_at = :at"  # noqa: S608
                    f" WHERE id = :id AND state IN ({_OPEN_IN})"
                    " AND (assigned_expert IS NULL OR assigned_expert = :sub)"
                ),
                {
                    **_OPEN_PARAMS,
                    "sub": sub,
                    "at": iso(participant.invited_at),
                    "id": consultation_id,
                },
            )
            if result.rowcount != 1:
                state, _assigned = await locked_assignment(conn, consultation_id)
                if state not in _OPEN:
                    raise Conflict(
                        f"the consultation is {state}; it cannot be accepted", code="invalid_state"
                    )
                raise Conflict(
                    "the consultation is assigned to another expert; a coordinator can reassign it",
                    code="assigned_to_another",
                )
            await conn.execute(
                text(
                    "INSERT INTO participants (id, consultation_id, role, name, invited_by,"
                    " invited_at, expert_sub) VALUES (:id, :cid, :role, :name, :by, :at, :by)"
                ),
                {
                    "id": participant.id,
                    "cid": consultation_id,
                    "role": participant.role.value,
                    "name": participant.name,
                    "by": sub,
                    "at": iso(participant.invited_at),
                },
            )
            await self.store.append_audit(conn, audit)

    async def assign(
        self, consultation_id: str, sub: str | None, now: datetime, audit: AuditFacts
    ) -> str | None:
        """Assign an open consultation to `sub` (None: unassign); returns who had it before."""
        async with self.store.transaction() as conn:
            state, before = await locked_assignment(conn, consultation_id)
            if state not in _OPEN:
                raise Conflict(
                    f"the consultation is {state}; it cannot be reassigned", code="invalid_state"
                )
            await conn.execute(
                text(
                    "UPDATE consultations SET assigned_expert = :sub, updated_at = :at"
                    " WHERE id = :id"
                ),
                {"sub": sub, "at": iso(now), "id": consultation_id},
            )
            detail = {**audit.detail, "expert": sub, "previous_expert": before}
            await self.store.append_audit(conn, replace(audit, detail=detail))
        return before


async def _expert(conn: AsyncConnection, sub: str) -> ExpertRow | None:
    result = await conn.execute(text("SELECT * FROM experts WHERE sub = :sub"), {"sub": sub})
    found = result.mappings().first()
    return None if found is None else _expert_row(found)


def _expert_row(m: RowMapping) -> ExpertRow:
    subspecialties: Iterable[str] = json.loads(m["subspecialties"])
    return ExpertRow(
        sub=m["sub"],
        name=m["name"],
        subspecialties=tuple(Application(s) for s in subspecialties),
        active=bool(m["active"]),
        created_at=datetime.fromisoformat(m["created_at"]),
        updated_at=datetime.fromisoformat(m["updated_at"]),
        email=m["email"],
    )
