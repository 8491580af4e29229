"""Staging notices in the caller's transaction, beside the event that causes them.

A request's notices are inserted in the transaction that stores the request, so a request is
never stored without them nor they without it. One (event, channel, recipient) per consultation
is a unique key: a due-soon notice staged by two nodes at once is stored once.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from server.notify.model import Delivery
from server.store.outbox import PENDING
from server.store.times import iso


async def stage(conn: AsyncConnection, deliveries: Iterable[Delivery], now: datetime) -> int:
    """Insert deliveries in the caller's transaction, skipping any already staged; how many new."""
    added = 0
    for d in deliveries:
        result = await conn.execute(
            text(
                "INSERT INTO notify_outbox (id, consultation_id, event, channel, recipient, state,"
                " attempts, next_attempt_at, created_at, updated_at) VALUES (:id, :cid, :event,"
                " :channel, :recipient, :pending, 0, :now, :now, :now)"
                " ON CONFLICT (consultation_id, event, channel, recipient) DO NOTHING"
            ),
            {
                "id": d.id,
                "cid": d.consultation_id,
                "event": d.event.value,
                "channel": d.channel.value,
                "recipient": d.recipient,
                "pending": PENDING,
                "now": iso(now),
            },
        )
        added += result.rowcount
    return added
