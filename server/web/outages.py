"""Which failures are outages of a component: answered `503` with a code and `Retry-After`.

A database that does not answer, a full disk or an unreachable Redis is not a bug in the
request: the client is told which component is out and when to try again, and nothing was
changed (each write is one transaction, or a file written before the row that names it).
"""

from __future__ import annotations

import errno
import socket
import sqlite3

from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from server.errors import ProbelinkError, Unavailable

# Seconds a client should wait before trying again, by code.
RETRY_AFTER_SECONDS = {
    "store_busy": 2,
    "store_unavailable": 10,
    "storage_full": 60,
    "bus_unavailable": 5,
}
DEFAULT_RETRY_AFTER_SECONDS = 5
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
POSTGRES_DISK_FULL = "53100"


def as_outage(exc: BaseException) -> Unavailable | None:
    """The `Unavailable` an exception stands for, or None when it is not an outage."""
    if isinstance(exc, PoolTimeout):
        return Unavailable(
            "the records store is busy; nothing was changed, try again", code="store_busy"
        )
    if isinstance(exc, OperationalError | DBAPIError) and _disk_full(exc.orig):
        return _storage_full()
    if isinstance(exc, OperationalError) or (
        # No statement: it failed while connecting (a database closed to connections, or down).
        isinstance(exc, DBAPIError) and (exc.connection_invalidated or exc.statement is None)
    ):
        return _store_unavailable()
    if isinstance(exc, OSError) and _disk_full(exc):
        return _storage_full()
    if isinstance(exc, ConnectionError | socket.gaierror):
        # Raised bare by the database driver when it cannot reach the server (Redis and the
        # PACS client wrap theirs).
        return _store_unavailable()
    if isinstance(exc, RedisError):
        return Unavailable(
            "the message bus (Redis) is unreachable; nothing was changed, try again",
            code="bus_unavailable",
        )
    return None


def retry_after(error: ProbelinkError) -> int:
    return RETRY_AFTER_SECONDS.get(error.code, DEFAULT_RETRY_AFTER_SECONDS)


def _store_unavailable() -> Unavailable:
    return Unavailable(
        "the records store does not answer; nothing was changed, try again",
        code="store_unavailable",
    )


def _storage_full() -> Unavailable:
    return Unavailable(
        "the server's storage is full; nothing was changed, try again later", code="storage_full"
    )


def _disk_full(exc: BaseException | None) -> bool:
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    # SQLite reports a full disk as SQLITE_FULL, PostgreSQL as SQLSTATE 53100, not as an errno.
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        return True
    return getattr(exc, "sqlstate", None) == POSTGRES_DISK_FULL or (
        getattr(exc, "pgcode", None) == POSTGRES_DISK_FULL
    )
