"""What the outboxes share (the PACS's, the notifications'): leases on their rows, so that nodes
sharing a database never work on one row at once, and the back-off between attempts.

A row is `pending` until its work is done; a node takes it by a conditional UPDATE of its
`claimed_until`, which only one transaction can win (PostgreSQL re-checks the condition after a
concurrent update commits; SQLite writes one transaction at a time). A lease that runs out, its
node gone, leaves the row to any other.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

PENDING = "pending"
RETRY_MIN_SECONDS = 1.0
RETRY_MAX_SECONDS = 300.0


def retry_delay(attempts: int) -> float:
    """Exponential back-off with jitter: 1 s, 2 s, 4 s ... up to 5 minutes."""
    base = min(RETRY_MAX_SECONDS, RETRY_MIN_SECONDS * 2 ** min(attempts, 16))
    return float(base * random.uniform(0.8, 1.0))


async def take_leases(
    conn: AsyncConnection, table: str, key: str, keys: Iterable[str], until: str, now: str
) -> set[str]:
    """Lease the pending, unleased rows of `table` whose `key` is in `keys` until `until`
    (ISO times); the keys this transaction won. `table` and `key` are the caller's constants."""
    won = set()
    for value in keys:
        result = await conn.execute(
            text(
                f"UPDATE {table} SET claimed_until = :until"  # noqa: S608
                f" WHERE {key} = :key AND state = :pending"
                " AND (claimed_until IS NULL OR claimed_until < :now)"
            ),
            {"until": until, "key": value, "now": now, "pending": PENDING},
        )
        if result.rowcount == 1:
            won.add(value)
    return won
