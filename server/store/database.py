"""Opening the records store: engine, per-dialect settings, and migrations.

SQLite runs with WAL and `synchronous=FULL` (a committed row survives power
loss) and one connection whose transactions take the write lock up front
(`BEGIN IMMEDIATE`), so concurrent writers queue instead of failing. PostgreSQL
serializes migrations and audit appends with transaction-scoped advisory locks.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from server.errors import ConfigError
from server.files import create_private_file, ensure_private_dir, restrict_file
from server.store.migrations import MIGRATIONS

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 10_000
# A request waits this long for a connection, then fails fast with 503 `store_busy`
# (server.web.outages) instead of queueing behind a flood for SQLAlchemy's default 30 s.
POOL_WAIT_SECONDS = 5.0
MIGRATION_LOCK_ID = 0x70726F62  # "prob": advisory lock key for migrations on PostgreSQL
POSTGRES_POOL_SIZE = 10
# The database file and the files SQLite keeps beside it in WAL mode.
SQLITE_FILE_SUFFIXES = ("", "-wal", "-shm")


async def open_engine(url: str) -> AsyncEngine:
    """Connect to the records store at `url` and bring its schema up to date."""
    parsed = make_url(url)
    kwargs: dict[str, Any] = {}
    sqlite_file = _sqlite_file(parsed.get_backend_name(), parsed.database)
    if sqlite_file is not None:
        ensure_private_dir(sqlite_file.parent)
        # SQLite gives its -wal and -shm files the database file's mode.
        create_private_file(sqlite_file)
    if parsed.get_backend_name() == "sqlite":
        kwargs.update(pool_size=1, max_overflow=0, pool_timeout=POOL_WAIT_SECONDS)
    else:
        kwargs.update(
            pool_size=POSTGRES_POOL_SIZE,
            max_overflow=0,
            pool_pre_ping=True,
            pool_timeout=POOL_WAIT_SECONDS,
        )
    # hide_parameters: SQL errors must not carry clinical text into logs.
    engine = create_async_engine(url, hide_parameters=True, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        _configure_sqlite(engine)
    try:
        await migrate(engine)
    except (SQLAlchemyError, OSError) as exc:
        await engine.dispose()
        raise ConfigError(
            f"cannot open the records store ({parsed.get_backend_name()}): {type(exc).__name__}"
        ) from exc
    if sqlite_file is not None:
        # Files made by an earlier version (or by hand) may be readable by others.
        for suffix in SQLITE_FILE_SUFFIXES:
            restrict_file(sqlite_file.with_name(sqlite_file.name + suffix))
    return engine


def _sqlite_file(backend: str, database: str | None) -> Path | None:
    if backend != "sqlite" or not database or database == ":memory:":
        return None
    return Path(database)


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let us issue BEGIN ourselves (the driver's implicit BEGIN is deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=FULL",
            "PRAGMA foreign_keys=ON",
            f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
        ):
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


async def migrate(engine: AsyncEngine) -> list[int]:
    """Apply every migration not yet recorded; return the versions applied."""
    applied_now: list[int] = []
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_ID})
        await conn.execute(
            text(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
        )
        done = set((await conn.execute(text("SELECT version FROM schema_migrations"))).scalars())
        for migration in MIGRATIONS:
            if migration.version in done:
                continue
            statements = migration.statements_for(conn.dialect.name)
            await _apply(conn, migration.version, migration.name, statements)
            applied_now.append(migration.version)
    if applied_now:
        log.info("schema migrated", extra={"versions": applied_now})
    return applied_now


async def _apply(
    conn: AsyncConnection, version: int, name: str, statements: tuple[str, ...]
) -> None:
    for statement in statements:
        await conn.execute(text(statement))
    await conn.execute(
        text("INSERT INTO schema_migrations (version, name, applied_at) VALUES (:v, :n, :t)"),
        {"v": version, "n": name, "t": datetime.now(UTC).isoformat()},
    )
