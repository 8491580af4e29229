"""Fixtures that start the real things: the app on a free port, SQLite files, a PostgreSQL database.

A test that needs a component which is missing skips with the reason on a
developer's machine; with PROBELINK_REQUIRE_ALL=1 (as in CI) it fails instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from orthanc_server import OrthancServer
from orthanc_server import available as orthanc_available
from turn_server import TURNSERVER, TurnServer

from server.app import create_app, load_keyring, token_policy
from server.auth import Role, issue_token
from server.config import Settings, load_settings
from server.keyring import load_or_create

pytest_plugins = ["browser"]  # tests/browser.py: Chromium, live server and the phantom camera
REDIS_URL = os.environ.get("PROBELINK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_ADMIN_URL = os.environ.get(
    "PROBELINK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
DATA_TABLES = (
    "pacs_outbox",
    "dicom_objects",
    "audit_log",
    "room_events",
    "reports",
    "key_images",
    "marks",
    "participants",
    "consultations",
    "experts",  # referenced by consultations.assigned_expert
)


def require(component: str, available: bool, why: str) -> None:
    """Skip (developer machine) or fail (CI) when a real component is missing."""
    if available:
        return
    message = f"{component} is not available: {why}"
    if os.environ.get("PROBELINK_REQUIRE_ALL") == "1":
        pytest.fail(f"PROBELINK_REQUIRE_ALL=1 but {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str | None]:
    """A throwaway PostgreSQL database for this test run, dropped at the end; None if absent."""
    name = f"probelink_test_{secrets.token_hex(4)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        pytest.postgres_error = f"{type(exc).__name__}: {exc}"  # type: ignore[attr-defined]
        yield None
        return
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def postgres_url(postgres_database: str | None) -> str:
    """The run's PostgreSQL database, emptied of records for this test."""
    require(
        "PostgreSQL",
        postgres_database is not None,
        getattr(pytest, "postgres_error", f"cannot reach {POSTGRES_ADMIN_URL}"),
    )
    assert postgres_database is not None
    conn = await asyncpg.connect(postgres_database)
    try:
        existing = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")
        }
        tables = [t for t in DATA_TABLES if t in existing]
        if tables:
            # Replica mode skips triggers, among them the audit log's append-only guard.
            await conn.execute("SET session_replication_role = replica")
            await conn.execute(f"TRUNCATE {', '.join(tables)} CASCADE")
    finally:
        await conn.close()
    return postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The records store URL, once per backend: the store suite runs on both."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'records.sqlite3'}"
    url: str = request.getfixturevalue("postgres_url")
    return url.replace("postgresql://", "postgresql+asyncpg://", 1)


@pytest.fixture(scope="session")
def redis_available() -> str | None:
    """None when the local Redis answers PING, else why not."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except redis.RedisError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.fixture
def redis_url(redis_available: str | None) -> str:
    require("Redis", redis_available is None, redis_available or "")
    return REDIS_URL


def require_coturn() -> None:
    """Skip (or fail, in CI) unless coturn's `turnserver` is installed."""
    require(
        "coturn", TURNSERVER is not None, "`turnserver` is not installed (Debian package coturn)"
    )


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[TurnServer]:
    """A real coturn on 127.0.0.1 (free port, test-only config, random secret), stopped after."""
    require_coturn()
    directory = tmp_path / "coturn"
    directory.mkdir()
    with TurnServer(directory) as server:
        yield server


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    """A real Orthanc with DICOMweb on loopback (free ports, storage in tmp_path), stopped after."""
    require(
        "Orthanc", orthanc_available(), "install the Debian packages orthanc and orthanc-dicomweb"
    )
    directory = tmp_path / "orthanc"
    directory.mkdir()
    server = OrthancServer(directory)
    server.start()
    yield server
    server.stop()


def unique_prefix() -> str:
    """A Redis key prefix of its own, so tests never see each other's keys or messages."""
    return f"probelink-test-{secrets.token_hex(6)}"


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The app's records store: SQLite unless a module parametrizes it (indirect=True)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> Settings:
    """A server's settings; its data directory has its key ring, as after a first `serve`."""
    load_or_create(tmp_path / "var")
    if backend == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
        return load_settings(data_dir=tmp_path / "var", database_url=url)
    return load_settings(data_dir=tmp_path / "var")


@pytest.fixture
async def client(
    aiohttp_client: Callable[..., Any], settings: Settings
) -> AsyncIterator[TestClient[Any, Any]]:
    yield await aiohttp_client(create_app(settings))


@pytest.fixture
def raw_request(
    client: TestClient[Any, Any],
) -> Callable[..., Awaitable[tuple[int, Any]]]:
    """Send a request byte for byte (headers no HTTP client would encode); get status and JSON."""

    async def send(
        method: str, path: str, headers: dict[str, bytes], body: bytes = b""
    ) -> tuple[int, Any]:
        lines = [f"{method} {path} HTTP/1.1".encode(), f"Host: {client.host}".encode()]
        lines += [name.encode() + b": " + value for name, value in headers.items()]
        lines += [f"Content-Length: {len(body)}".encode(), b"Connection: close", b"", b""]
        reader, writer = await asyncio.open_connection(client.host, client.port)
        try:
            writer.write(b"\r\n".join(lines) + body)
            response = await reader.read()
        finally:
            writer.close()
            await writer.wait_closed()
        head, _, payload = response.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), json.loads(payload)

    return send


@pytest.fixture
def token_for(settings: Settings) -> Callable[..., str]:
    """Sign a token the way `probelink token` does, for this test's data directory."""

    def make(role: str, sub: str = "tester", consultation: str | None = None, **kw: Any) -> str:
        return issue_token(
            load_keyring(settings),
            token_policy(settings),
            sub=sub,
            role=Role(role),
            ttl_seconds=kw.pop("ttl_seconds", 3600),
            consultation_id=consultation,
            **kw,
        )

    return make


@pytest.fixture
def coordinator(token_for: Callable[..., str]) -> dict[str, str]:
    """Headers of a coordinator."""
    return {"Authorization": f"Bearer {token_for('coordinator', sub='coord-1')}"}
