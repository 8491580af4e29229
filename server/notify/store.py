"""The notification outbox in the records store: staged with the event, claimed by one node.

A request's notices are staged in the transaction that stores it (staging.py). A due-soon
notice is staged by whichever node sees it first. A delivery is claimed with a lease as the PACS
outbox's are (server/store/outbox.py), released when it is done or failed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from server.consultations.lifecycle import State
from server.consultations.model import ConsultationRow
from server.consultations.store import Store, _consultation
from server.experts.store import _OPEN_IN, _OPEN_PARAMS
from server.notify.model import Channel, Delivery, Event, Notice
from server.notify.staging import stage
from server.store.outbox import PENDING, take_leases
from server.store.times import iso

SENT = "sent"
# The consultation was signed or cancelled before the notice went out: not worth a page.
DROPPED = "dropped"
# The mail server refused the recipient for good (a 5xx answer to RCPT).
REFUSED = "refused"


@dataclass(frozen=True)
class Claim:
    """A delivery leased to this node, with its consultation's state and the attempts so far."""

    notice: Notice
    state: State
    attempts: int


class Outbox:
    """Queries on the notification outbox."""

    def __init__(self, store: Store):
        self.store = store

    async def stage(self, deliveries: list[Delivery]) -> int:
        async with self.store.transaction() as conn:
            return await stage(conn, deliveries, datetime.now(UTC))

    async def coming_due(self, now: datetime, lead: timedelta) -> list[ConsultationRow]:
        """Open consultations due within `lead` that have no due-soon notice yet."""
        async with self.store.engine.connect() as conn:
            result = await conn.execute(
                text(
                    f"SELECT * FROM consultations c WHERE c.state IN ({_OPEN_IN})"  # noqa: S608
                    " AND c.due_at > :now AND c.due_at <= :horizon AND NOT EXISTS"
                    " (SELECT 1 FROM notify_outbox n WHERE n.consultation_id = c.id"
                    " AND n.event = :due_soon) ORDER BY c.due_at, c.id"
                ),
                {
                    **_OPEN_PARAMS,
                    "now": iso(now),
                    "horizon": iso(now + lead),
                    "due_soon": Event.DUE_SOON.value,
                },
            )
            return [_consultation(m) for m in result.mappings()]

    async def claim_due(self, limit: int, lease_seconds: float) -> list[Claim]:
        """Pending deliveries whose time has come, leased to the caller for `lease_seconds`."""
        now = datetime.now(UTC)
        until = iso(now + timedelta(seconds=lease_seconds))
        async with self.store.transaction() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT n.id, n.event, n.channel, n.recipient, n.attempts, c.state,"
                        " c.urgency, c.application, c.accession_number, c.due_at"
                        " FROM notify_outbox n JOIN consultations c ON c.id = n.consultation_id"
                        " WHERE n.state = :pending AND n.next_attempt_at <= :now"
                        " AND (n.claimed_until IS NULL OR n.claimed_until < :now)"
                        " ORDER BY n.next_attempt_at, n.id LIMIT :limit"
                    ),
                    {"pending": PENDING, "now": iso(now), "limit": limit},
                )
            ).all()
            won = await take_leases(
                conn, "notify_outbox", "id", [row[0] for row in rows], until, iso(now)
            )
            claimed = []
            for row in rows:
                if row[0] in won:
                    notice = Notice(
                        id=row[0],
                        event=Event(row[1]),
                        channel=Channel(row[2]),
                        recipient=row[3],
                        urgency=row[6],
                        application=row[7],
                        accession_number=row[8],
                        due_at=datetime.fromisoformat(row[9]),
                    )
                    claimed.append(Claim(notice, State(row[5]), int(row[4])))
            return claimed

    async def done(self, notice_id: str, state: str, error: str | None = None) -> None:
        """The delivery is over: sent, dropped or refused."""
        async with self.store.transaction() as conn:
            await conn.execute(
                text(
                    "UPDATE notify_outbox SET state = :state, claimed_until = NULL,"
                    " attempts = attempts + :tried, last_error = :error, updated_at = :now"
                    " WHERE id = :id"
                ),
                {
                    "state": state,
                    "tried": int(state != DROPPED),
                    "error": None if error is None else error[:500],
                    "now": iso(datetime.now(UTC)),
                    "id": notice_id,
                },
            )

    async def failed(self, notice_id: str, error: str, retry_in: float) -> None:
        """Not delivered this time: tried again after `retry_in` seconds."""
        now = datetime.now(UTC)
        async with self.store.transaction() as conn:
            await conn.execute(
                text(
                    "UPDATE notify_outbox SET attempts = attempts + 1, last_error = :error,"
                    " claimed_until = NULL, next_attempt_at = :next, updated_at = :now"
                    " WHERE id = :id"
                ),
                {
                    "error": error[:500],
                    "next": iso(now + timedelta(seconds=retry_in)),
                    "now": iso(now),
                    "id": notice_id,
                },
            )

    async def release(self, notice_ids: Iterable[str]) -> None:
        """Give back leases this node will not use (it is stopping): others may send at once."""
        async with self.store.transaction() as conn:
            for notice_id in notice_ids:
                await conn.execute(
                    text(
                        "UPDATE notify_outbox SET claimed_until = NULL"
                        " WHERE id = :id AND state = :pending"
                    ),
                    {"id": notice_id, "pending": PENDING},
                )

    async def backlog(self) -> int:
        """Deliveries waiting to be sent, over every consultation."""
        async with self.store.engine.connect() as conn:
            count = await conn.scalar(
                text("SELECT COUNT(*) FROM notify_outbox WHERE state = :pending"),
                {"pending": PENDING},
            )
        return int(count or 0)
