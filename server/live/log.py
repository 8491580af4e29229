"""The live room's persistent events: sequenced, stored before they are acknowledged.

Each consultation has one counter (`consultations.last_seq`), bumped with
`UPDATE ... RETURNING` inside the event's transaction: the row lock (PostgreSQL)
or the write lock (SQLite) gives every event of a room a unique, gap-free
sequence number, whichever node stores it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from server.consultations.lifecycle import OPEN_STATES, State, on_expert_joined
from server.errors import Conflict, NotFound
from server.live.room import RoomEvent, RoomSnapshot
from server.store.times import iso

_OPEN = ", ".join(f"'{s.value}'" for s in sorted(OPEN_STATES))
# The state an expert's first join moves a consultation to, by the life cycle's rule, applied in
# the same statement that stamps the join (a cancellation committed meanwhile is not undone).
_JOIN_MOVES = [(s, on_expert_joined(s)) for s in State if on_expert_joined(s) is not s]
_JOIN_MOVES_PARAMETERS = {
    **{f"from{i}": before.value for i, (before, _) in enumerate(_JOIN_MOVES)},
    **{f"to{i}": after.value for i, (_, after) in enumerate(_JOIN_MOVES)},
}
# Built from placeholders only (no input).
_JOIN_CASES = "".join(f" WHEN state = :from{i} THEN :to{i}" for i in range(len(_JOIN_MOVES)))
_FIRST_EXPERT_JOINED = text(
    "UPDATE consultations SET first_joined_at = :at, updated_at = :at,"  # noqa: S608
    f" state = CASE{_JOIN_CASES} ELSE state END"
    " WHERE id = :cid AND first_joined_at IS NULL AND signed_at IS NULL"
)
_NEXT_SEQ = text(
    f"UPDATE consultations SET last_seq = last_seq + 1 WHERE id = :cid AND state IN ({_OPEN})"  # noqa: S608
    " RETURNING last_seq"
)


class RoomLog:
    """Queries on `room_events` and `marks`."""

    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    async def add_mark(
        self, consultation_id: str, body: dict[str, Any], *, kind: str, media_ts: int | None
    ) -> RoomEvent:
        async with self.engine.begin() as conn:
            seq = await next_seq(conn, consultation_id)
            event = RoomEvent(seq, "mark", {**body, "seq": seq})
            await conn.execute(
                text(
                    "INSERT INTO marks (id, consultation_id, seq, author, kind, body, media_ts,"
                    " created_at) VALUES (:id, :cid, :seq, :author, :kind, :body, :ts, :at)"
                ),
                {
                    "id": body["id"],
                    "cid": consultation_id,
                    "seq": seq,
                    "author": body["author"],
                    "kind": kind,
                    "body": json.dumps(event.body),
                    "ts": media_ts,
                    "at": iso(datetime.now(UTC)),
                },
            )
            await insert_event(conn, consultation_id, event, body["author"])
            return event

    async def open_marks(self, consultation_id: str) -> list[tuple[str, str]]:
        """The open marks, oldest first: (id, author)."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT id, author FROM marks WHERE consultation_id = :cid"
                    " AND cleared_at IS NULL ORDER BY seq"
                ),
                {"cid": consultation_id},
            )
            return [(r[0], r[1]) for r in rows.all()]

    async def clear_marks(self, consultation_id: str, ids: list[str], author: str) -> RoomEvent:
        """Clear these marks, as one sequenced event (the caller holds the room's sequence)."""
        async with self.engine.begin() as conn:
            seq = await next_seq(conn, consultation_id)
            now = iso(datetime.now(UTC))
            for cleared in ids:
                await conn.execute(
                    text("UPDATE marks SET cleared_at = :at WHERE id = :id"),
                    {"at": now, "id": cleared},
                )
            event = RoomEvent(seq, "mark_clear", {"ids": ids, "author": author, "seq": seq})
            await insert_event(conn, consultation_id, event, author)
            return event

    async def add_guidance(self, consultation_id: str, body: dict[str, Any]) -> RoomEvent:
        async with self.engine.begin() as conn:
            seq = await next_seq(conn, consultation_id)
            event = RoomEvent(seq, "guidance", {**body, "seq": seq})
            await insert_event(conn, consultation_id, event, body["author"])
            return event

    async def events_after(
        self, consultation_id: str, after_seq: int, limit: int
    ) -> list[RoomEvent]:
        async with self.engine.connect() as conn:
            result = await conn.execute(
                text(
                    "SELECT seq, type, body FROM room_events WHERE consultation_id = :cid"
                    " AND seq > :after ORDER BY seq LIMIT :limit"
                ),
                {"cid": consultation_id, "after": after_seq, "limit": limit},
            )
            return [RoomEvent(r[0], r[1], json.loads(r[2])) for r in result]

    async def snapshot(self, consultation_id: str) -> RoomSnapshot:
        async with self.engine.connect() as conn:
            last_seq = (
                await conn.execute(
                    text("SELECT last_seq FROM consultations WHERE id = :cid"),
                    {"cid": consultation_id},
                )
            ).scalar()
            if last_seq is None:
                raise NotFound("no such consultation", code="consultation_not_found")
            marks = (
                await conn.execute(
                    text(
                        "SELECT body FROM marks WHERE consultation_id = :cid"
                        " AND cleared_at IS NULL ORDER BY seq"
                    ),
                    {"cid": consultation_id},
                )
            ).scalars()
            guidance = (
                await conn.execute(
                    text(
                        "SELECT body FROM room_events WHERE consultation_id = :cid"
                        " AND type = 'guidance' ORDER BY seq DESC LIMIT 1"
                    ),
                    {"cid": consultation_id},
                )
            ).scalar()
            return RoomSnapshot(
                marks=[json.loads(m) for m in marks],
                guidance=json.loads(guidance) if guidance else None,
                last_seq=int(last_seq),
            )

    async def participant_joined(
        self, consultation_id: str, participant_id: str, *, is_expert: bool
    ) -> bool:
        """Record first join times; the first expert to join makes a request live (True then)."""
        now = iso(datetime.now(UTC))
        async with self.engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE participants SET joined_at = :at"
                    " WHERE id = :pid AND consultation_id = :cid AND joined_at IS NULL"
                ),
                {"at": now, "pid": participant_id, "cid": consultation_id},
            )
            if not is_expert:
                return False
            # Joining a signed room later is not part of its turnaround.
            result = await conn.execute(
                _FIRST_EXPERT_JOINED,
                {"at": now, "cid": consultation_id, **_JOIN_MOVES_PARAMETERS},
            )
            return result.rowcount == 1


async def next_seq(conn: AsyncConnection, consultation_id: str) -> int:
    seq = (await conn.execute(_NEXT_SEQ, {"cid": consultation_id})).scalar()
    if seq is None:
        state = (
            await conn.execute(
                text("SELECT state FROM consultations WHERE id = :cid"), {"cid": consultation_id}
            )
        ).scalar()
        if state is None:
            raise NotFound("no such consultation", code="consultation_not_found")
        raise Conflict(f"the consultation is {state}; the room is closed", code="invalid_state")
    return int(seq)


async def insert_event(
    conn: AsyncConnection, consultation_id: str, event: RoomEvent, author: str
) -> None:
    await conn.execute(
        text(
            "INSERT INTO room_events (consultation_id, seq, type, author, body, created_at)"
            " VALUES (:cid, :seq, :type, :author, :body, :at)"
        ),
        {
            "cid": consultation_id,
            "seq": event.seq,
            "type": event.type,
            "author": author,
            "body": json.dumps(event.body),
            "at": iso(datetime.now(UTC)),
        },
    )
