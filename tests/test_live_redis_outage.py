"""While Redis is down nothing acknowledged is lost: persistent events are refused, not half-done."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import require, unique_prefix
from live_client import Participant
from servers import RedisServer

from server.app import create_app
from server.config import Settings
from server.web.keys import ROOM_LOG


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    require("redis-server", shutil.which("redis-server") is not None, "not on PATH")
    server = RedisServer()
    server.start()
    yield server
    server.stop()


async def test_marks_are_refused_while_redis_is_down_and_flow_again_after(
    aiohttp_client: Callable[..., Any],
    settings: Settings,
    private_redis: RedisServer,
    coordinator: dict[str, str],
) -> None:
    settings = settings.model_copy(
        update={"redis_url": private_redis.url, "redis_prefix": unique_prefix()}
    )
    client = await aiohttp_client(create_app(settings))
    created = await client.post(
        "/api/consultations",
        json={"clinical_question": "q", "urgency": "urgent", "incomplete_reason": "test request"},
        headers=coordinator,
    )
    cid = (await created.json())["id"]
    tokens = {}
    for role in ("expert", "operator"):
        invited = await client.post(
            f"/api/consultations/{cid}/invites",
            json={"role": role, "name": role},
            headers=coordinator,
        )
        tokens[role] = (await invited.json())["token"]
    url = str(client.make_url("/"))
    expert = await Participant(url, tokens["expert"]).connect()
    operator = await Participant(url, tokens["operator"]).connect()
    arrow = {"kind": "arrow", "points": [[0.1, 0.1], [0.2, 0.2]]}
    try:
        assert (await expert.call("mark", arrow))["seq"] == 1
        private_redis.stop()
        refused = await expert.call("mark", arrow)
        assert refused["error"]["code"] == "bus_unavailable"
        assert (await client.app[ROOM_LOG].snapshot(cid)).last_seq == 1  # nothing half-stored

        private_redis.start()
        deadline = time.monotonic() + 15
        while "seq" not in (ack := await expert.call("mark", arrow)):
            assert time.monotonic() < deadline, ack
            await asyncio.sleep(0.2)
        await operator.wait_until(
            lambda r: any(m["seq"] == ack["seq"] for m in r["mark"]), within=15
        )
        stored = await client.app[ROOM_LOG].events_after(cid, 0, 10)
        assert [e.seq for e in stored] == list(range(1, ack["seq"] + 1))
    finally:
        await expert.close()
        await operator.close()
