"""Attacks and faults from the hardening review (issue 14), reproduced against the real server.

Socket.IO is spoken raw here (Engine.IO over a WebSocket), as an attacker would, not through a
client library that would refuse to send what these tests send.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import socketio
from aiohttp.test_utils import TestClient
from conftest import POSTGRES_ADMIN_URL, require, unique_prefix
from live_client import Participant
from servers import RedisServer
from sqlalchemy import text

from server.app import create_app, load_keyring, token_policy
from server.audit import AuditFacts
from server.auth import Role, issue_token
from server.config import Settings, load_settings, parse_networks
from server.keyring import load_or_create
from server.live import admission
from server.live.server import LivePacket, LiveServer
from server.store import database
from server.web.edge import client_address
from server.web.keys import SETTINGS, SIO, STORE
from server.web.refusal_audit import flush_refusals
from server.web.refusals import RefusalBursts

WS_PATH = "/socket.io/?EIO=4&transport=websocket"


async def engineio(client: TestClient[Any, Any]) -> aiohttp.ClientWebSocketResponse:
    """An Engine.IO session over a WebSocket, past its open packet; no namespace joined."""
    ws = await client.ws_connect(WS_PATH)
    opened = await ws.receive_str(timeout=5)
    assert opened.startswith("0{"), opened
    return ws


async def closed_by_server(ws: aiohttp.ClientWebSocketResponse) -> bool:
    """True once the server closes the connection (pings and other packets are skipped)."""
    while True:
        message = await ws.receive(timeout=5)
        if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            return True
        if message.type is aiohttp.WSMsgType.TEXT and message.data == "1":
            return True  # Engine.IO's close packet
        if message.type is aiohttp.WSMsgType.TEXT and message.data.startswith("4"):
            continue  # a Socket.IO packet (e.g. the refusal itself)
        if message.type is aiohttp.WSMsgType.TEXT and message.data == "2":
            await ws.send_str("3")
            continue
        return False


async def test_only_the_live_namespace_exists(client: TestClient[Any, Any]) -> None:
    ws = await engineio(client)
    await ws.send_str("40")  # CONNECT to the default namespace "/"
    reply = await ws.receive_str(timeout=5)
    assert reply.startswith("44"), reply  # CONNECT_ERROR
    await ws.send_str("40/admin,")
    reply = await ws.receive_str(timeout=5)
    assert reply.startswith("44/admin,"), reply
    await ws.close()


async def test_binary_packets_close_the_connection_before_anything_is_buffered(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Review: a tokenless client sent a binary event announcing attachments, then 1 MiB frames;
    the server buffered them (+300 MiB in 4 s)."""
    sio = client.app[SIO]
    for announce in ('451-["mark",{"_placeholder":true,"num":0}]', '461-/live,1[{"x":1}]'):
        ws = await engineio(client)
        await ws.send_str(announce)
        assert await closed_by_server(ws)
        assert not sio._binary_packet  # nothing held for attachments that never come
    ws = await engineio(client)
    await ws.send_bytes(b"\x04" + b"\0" * 1024)  # a bare binary frame
    assert await closed_by_server(ws)
    refusals = [r for r in caplog.records if r.getMessage().startswith("refused Socket.IO")]
    assert refusals and all(r.exc_info is None for r in caplog.records)


async def test_a_packet_over_the_body_limit_closes_the_connection(
    client: TestClient[Any, Any],
) -> None:
    limit = client.app[SETTINGS].max_body_bytes
    ws = await engineio(client)
    await ws.send_str("42/live," + json.dumps(["mark", {"text": "x" * limit}]))
    assert await closed_by_server(ws)


async def test_malformed_packets_are_one_log_line_without_a_traceback_or_their_text(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    secret = "Jane Doe 1970-01-01"
    for _ in range(20):
        ws = await engineio(client)
        await ws.send_str(f'42/live,["mark", {{"text": "{secret}"')  # cut-off JSON
        assert await closed_by_server(ws)
    lines = [r for r in caplog.records if r.name.startswith(("server", "socketio", "engineio"))]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert lines[0].exc_info is None
    assert secret not in caplog.text


def test_the_packet_hook_is_the_one_python_socketio_calls() -> None:
    """LiveServer overrides a private method: pin that python-socketio still dispatches to it."""
    server = LiveServer(async_mode="aiohttp")
    handler = server.eio.handlers["message"]
    assert handler.__func__ is LiveServer._handle_eio_message
    assert server.packet_class.decode is LivePacket.decode


# Headers and text


async def test_api_responses_are_never_cached_or_sniffed(
    client: TestClient[Any, Any], coordinator: dict[str, str]
) -> None:
    """Review: record, report, DICOM and preview responses carried no Cache-Control."""
    for path, headers in (
        ("/api/consultations", coordinator),
        ("/api/consultations", {}),  # refused
        ("/api/no-such-thing", coordinator),  # aiohttp's own 404
    ):
        response = await client.get(path, headers=headers)
        assert response.headers["Cache-Control"] == "no-store", path
        assert response.headers["X-Content-Type-Options"] == "nosniff", path
    polling = await client.get("/socket.io/?EIO=4&transport=polling")
    assert polling.headers["Cache-Control"] == "no-store"
    csp = (await client.get("/")).headers["Content-Security-Policy"]
    assert "connect-src 'self';" in csp and "ws:" not in csp


async def test_mark_text_refuses_controls_and_bidirectional_overrides(
    client: TestClient[Any, Any], coordinator: dict[str, str], token_for: Any
) -> None:
    cid = await consultation(client, coordinator)
    expert = Participant(str(client.make_url("/")), token_for("expert", consultation=cid))
    await expert.connect()
    try:
        for text in ("left\u202etfel", "a\u2066b\u2069", "bell\u0007", "nel\u0085"):
            ack = await expert.call("mark", {"kind": "text", "points": [[0.5, 0.5]], "text": text})
            assert ack["error"]["code"] == "invalid_field" and ack["error"]["field"] == "text"
            assert text not in ack["error"]["message"]
        ok = await expert.call("mark", {"kind": "text", "points": [[0.5, 0.5]], "text": "cyst"})
        assert "error" not in ok
    finally:
        await expert.sio.disconnect()


# Refusals audited in bursts


async def test_a_flood_of_bad_tokens_is_one_audit_entry_per_burst(
    client: TestClient[Any, Any],
) -> None:
    """Review: 20 clients sending garbage tokens made every refusal an fsynced audit row."""
    store = client.app[STORE]
    before = len(await store.audit_entries())
    for _ in range(50):
        response = await client.get("/api/consultations", headers={"Authorization": "Bearer x"})
        assert response.status == 401
    entries = (await store.audit_entries())[before:]
    assert [e.facts.outcome for e in entries] == ["refused:token_malformed"]
    await flush_refusals(client.app, drain=True)  # as at shutdown, or once the burst is over
    summary = (await store.audit_entries())[-1].facts
    assert (summary.action, summary.outcome, summary.source) == (
        "refusals repeated",
        "refused:token_malformed",
        "127.0.0.1",
    )
    assert summary.detail["repeats"] == 49
    assert (await store.verify_audit()).ok


def test_refusal_bursts_end_after_their_window_and_stay_bounded() -> None:
    bursts = RefusalBursts(window_seconds=60, bursts_max=3)

    def refusal(actor: str, source: str = "10.0.0.1") -> AuditFacts:
        return AuditFacts(
            actor, "none", "GET /api/x", "http", "", "refused:token_invalid", source, {}
        )

    assert bursts.refuse(refusal("a"), now=0) is not None  # the first is audited at once
    assert bursts.refuse(refusal("a"), now=10) is None
    assert bursts.refuse(refusal("a"), now=20) is None
    assert bursts.ended(now=59) == []
    (summary,) = bursts.ended(now=60)
    assert summary.detail == {"repeats": 2, "over_seconds": 20.0}
    assert bursts.refuse(refusal("a"), now=61) is not None  # a new burst
    for actor in "bc":
        assert bursts.refuse(refusal(actor), now=62) is not None
    # Past the bound, new actors share one burst per reason, with no actor or address named.
    shared = bursts.refuse(refusal("e", "10.0.0.9"), now=63)
    assert shared is not None and (shared.actor, shared.source) == ("*", "*")
    assert bursts.refuse(refusal("f", "10.0.0.8"), now=64) is None
    assert len(bursts.bursts) == 4


# Admission to /live


async def test_one_socket_per_participant_a_new_one_replaces_the_old(
    client: TestClient[Any, Any], coordinator: dict[str, str], token_for: Any
) -> None:
    """Review: 300 sockets with one observer token starved the room and the store."""
    cid = await consultation(client, coordinator)
    url, token = str(client.make_url("/")), token_for("observer", sub="obs-1", consultation=cid)
    first = await Participant(url, token).connect()
    second = await Participant(url, token).connect()
    (ended,) = await first.wait_for("ended")
    assert ended["error"]["code"] == "opened_elsewhere"
    for _ in range(50):
        if not first.sio.connected:
            break
        await asyncio.sleep(0.05)
    assert not first.sio.connected and second.sio.connected
    namespace = client.app[SIO].namespace_handlers["/live"]
    assert len(namespace.sockets) == 1
    await second.sio.disconnect()


async def test_live_connections_are_capped_per_address_and_in_all(
    aiohttp_client: Any, settings: Settings, coordinator: dict[str, str], token_for: Any
) -> None:
    # Five connects at once, then (practically) none: the counts below do not depend on how
    # fast the machine connects.
    settings = settings.model_copy(
        update={
            "live_sockets_per_address": 3,
            "live_sockets_max": 100,
            "live_connect_burst": 5,
            "live_connects_per_second": 0.001,
        }
    )
    client = await aiohttp_client(create_app(settings))
    cid = await consultation(client, coordinator)
    url = str(client.make_url("/"))
    people = [
        await Participant(url, token_for("observer", sub=f"obs-{n}", consultation=cid)).connect()
        for n in range(3)
    ]
    fourth = Participant(url, token_for("observer", sub="obs-4", consultation=cid))
    with pytest.raises(socketio.exceptions.ConnectionError):
        await fourth.connect()  # the address's fourth connection (a fourth connect, too)
    await people[0].sio.disconnect()
    await asyncio.sleep(0.1)
    again = await Participant(url, token_for("observer", sub="obs-5", consultation=cid)).connect()
    sixth = Participant(url, token_for("observer", sub="obs-6", consultation=cid))
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sixth.connect()  # a sixth connect: the burst is spent
    await again.sio.disconnect()
    metrics = await (await client.get("/metrics")).text()
    assert 'probelink_live_refusals_total{code="too_many_connections"} 1.0' in metrics
    assert 'probelink_live_refusals_total{code="connecting_too_fast"} 1.0' in metrics
    for p in people[1:]:
        await p.sio.disconnect()


async def consultation(client: TestClient[Any, Any], coordinator: dict[str, str]) -> str:
    created = await client.post(
        "/api/consultations",
        json={"clinical_question": "q", "urgency": "routine", "incomplete_reason": "test request"},
        headers=coordinator,
    )
    assert created.status == 201
    return str((await created.json())["id"])


# Outages: 503 with a code and Retry-After; /healthz per component


@pytest.fixture
async def own_postgres(postgres_url: str) -> AsyncIterator[tuple[str, Any]]:
    """A database of this test's own, which it can close to connections; dropped after."""
    name = f"probelink_outage_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(POSTGRES_ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')

    async def allow(yes: bool) -> None:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(yes).lower()}')
        if not yes:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )

    try:
        yield f"{postgres_url.rsplit('/', 1)[0]}/{name}", allow
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_a_database_outage_is_503_store_unavailable_then_recovers(
    aiohttp_client: Any,
    settings: Settings,
    own_postgres: tuple[str, Any],
    coordinator: dict[str, str],
) -> None:
    url, allow = own_postgres
    client = await aiohttp_client(create_app(settings.model_copy(update={"database_url": url})))
    assert (await client.get("/api/consultations", headers=coordinator)).status == 200
    await allow(False)
    response = await client.get("/api/consultations", headers=coordinator)
    assert response.status == 503
    assert (await response.json())["error"]["code"] == "store_unavailable"
    assert int(response.headers["Retry-After"]) > 0
    health = await client.get("/healthz")
    assert health.status == 503
    assert (await health.json())["components"]["store"]["ok"] is False
    await allow(True)
    assert (await client.get("/api/consultations", headers=coordinator)).status == 200
    assert (await client.get("/healthz")).status == 200


async def test_redis_down_makes_the_node_unready(
    aiohttp_client: Any, settings: Settings, redis_url: str
) -> None:
    own = RedisServer()
    own.start()
    try:
        client = await aiohttp_client(
            create_app(
                settings.model_copy(update={"redis_url": own.url, "redis_prefix": unique_prefix()})
            )
        )
        health = await (await client.get("/healthz")).json()
        assert health["status"] == "ok" and health["components"]["redis"]["ok"] is True
        own.stop()
        response = await client.get("/healthz")
        assert response.status == 503
        assert (await response.json())["components"]["redis"]["ok"] is False
    finally:
        own.stop()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a disk that really fills up (root only, as CI runs)."""
    require("a tmpfs mount (root)", os.geteuid() == 0, "mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_a_full_disk_is_503_storage_full_and_changes_nothing(
    aiohttp_client: Any, small_disk: Path
) -> None:
    load_or_create(small_disk / "var")
    settings = load_settings(data_dir=small_disk / "var", archive_min_free_mib=1)
    client = await aiohttp_client(create_app(settings))
    token = issue_token(
        load_keyring(settings),
        token_policy(settings),
        sub="c",
        role=Role.COORDINATOR,
        ttl_seconds=600,
    )
    headers = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/healthz")).status == 200
    ballast = small_disk / "ballast"
    with ballast.open("wb") as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
    body = {"clinical_question": "q" * 3000, "urgency": "routine", "incomplete_reason": "r" * 3000}
    statuses = set()
    for _ in range(20):  # until SQLite needs a page it cannot have
        response = await client.post("/api/consultations", json=body, headers=headers)
        statuses.add(response.status)
        if response.status == 503:
            assert (await response.json())["error"]["code"] == "storage_full"
            assert response.headers["Retry-After"]
            break
    assert 503 in statuses, statuses
    health = await client.get("/healthz")
    assert health.status == 503 and (await health.json())["components"]["archive"]["ok"] is False
    ballast.unlink()
    assert (await client.post("/api/consultations", json=body, headers=headers)).status == 201


# Behind a reverse proxy


def test_the_client_is_the_nearest_forwarded_address_that_is_not_a_trusted_proxy() -> None:
    proxies = parse_networks("127.0.0.1, 10.0.0.0/8")
    assert client_address("127.0.0.1", ["203.0.113.7"], proxies) == "203.0.113.7"
    # A client may send its own X-Forwarded-For: only the hops the proxies added are believed.
    assert client_address("127.0.0.1", ["1.2.3.4, 203.0.113.7"], proxies) == "203.0.113.7"
    assert client_address("127.0.0.1", ["203.0.113.7, 10.1.2.3"], proxies) == "203.0.113.7"
    assert client_address("192.0.2.1", ["203.0.113.7"], proxies) == "192.0.2.1"  # not a proxy
    assert client_address("127.0.0.1", ["not-an-address"], proxies) == "127.0.0.1"
    assert client_address("127.0.0.1", [], proxies) == "127.0.0.1"


async def test_behind_a_trusted_proxy_audit_and_admission_see_the_client(
    aiohttp_client: Any, settings: Settings, coordinator: dict[str, str], token_for: Any
) -> None:
    settings = settings.model_copy(
        update={"trusted_proxies": "127.0.0.1", "live_sockets_per_address": 1}
    )
    client = await aiohttp_client(create_app(settings))
    refused = await client.get(
        "/api/consultations", headers={"X-Forwarded-For": "203.0.113.7", "Authorization": "x"}
    )
    assert refused.status == 401
    assert (await client.app[STORE].audit_entries())[-1].facts.source == "203.0.113.7"
    cid = await consultation(client, coordinator)
    clients = []
    for n, address in enumerate(("203.0.113.7", "203.0.113.8", "203.0.113.8")):
        sio = socketio.AsyncClient(reconnection=False)
        try:
            await sio.connect(
                str(client.make_url("/")),
                namespaces=["/live"],
                auth={"token": token_for("observer", sub=f"obs-{n}", consultation=cid)},
                headers={"X-Forwarded-For": address},
                transports=["websocket"],
                wait_timeout=5,
            )
            clients.append(sio)
        except socketio.exceptions.ConnectionError:
            assert n == 2  # the second from the same address, over its cap of one
    assert len(clients) == 2
    for sio in clients:
        await sio.disconnect()


async def test_a_store_with_no_connection_free_answers_503_store_busy_at_once(
    aiohttp_client: Any,
    settings: Settings,
    coordinator: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review: with SQLite's one connection held by a flood, a coordinator's read waited 40 s
    and got a 500. Now a request waits a bounded time for a connection, then is told to retry."""
    monkeypatch.setattr(database, "POOL_WAIT_SECONDS", 0.5)
    client = await aiohttp_client(create_app(settings))
    store = client.app[STORE]
    assert store.dialect == "sqlite"
    async with store.engine.connect() as held:  # the one connection, taken
        await held.execute(text("SELECT 1"))
        response = await client.get("/api/consultations", headers=coordinator)
        assert response.status == 503
        assert (await response.json())["error"]["code"] == "store_busy"
        assert response.headers["Retry-After"]
    assert (await client.get("/api/consultations", headers=coordinator)).status == 200


def test_connect_buckets_stay_bounded_when_addresses_are_sprayed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(admission, "BUCKETS_MAX", 3)
    gate = admission.Admission(per_address=10, total=100, connects_per_second=1, connect_burst=5)
    for n in range(50):  # each address connects once, at the same instant: none is idle
        assert gate.check(f"2001:db8::{n}", now=0.0) is None
    assert len(gate.buckets) == 3
