"""While Redis is down nothing acknowledged is lost: persistent events are refused, not half-done."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from conftest import require, unique_prefix
from live_client import Participant
from servers import free_port

from server.app import create_app
from server.appkeys import STORE
from server.config import Settings


class RedisServer:
    """A private redis-server on a free port, which a test can stop and start again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis.from_url(self.url, socket_timeout=0.5).ping()
                return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


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
        assert (await client.app[STORE].room.snapshot(cid)).last_seq == 1  # nothing half-stored

        private_redis.start()
        deadline = time.monotonic() + 15
        while "seq" not in (ack := await expert.call("mark", arrow)):
            assert time.monotonic() < deadline, ack
            await asyncio.sleep(0.2)
        await operator.wait_until(
            lambda r: any(m["seq"] == ack["seq"] for m in r["mark"]), within=15
        )
        stored = await client.app[STORE].room.events_after(cid, 0, 10)
        assert [e.seq for e in stored] == list(range(1, ack["seq"] + 1))
    finally:
        await expert.close()
        await operator.close()
