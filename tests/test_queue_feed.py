"""The queue pages' live feed (Socket.IO `/queue`): two real server processes sharing PostgreSQL
and Redis; a change made on one node reaches the queue pages connected to the other, only those
that may list the consultation, and the event carries no patient data."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio
from conftest import unique_prefix
from live_client import Participant
from phantom import PHANTOM_DEVICE, phantom_png
from servers import Server, cli_env
from test_live_multinode import setup_room

from server.auth import Role, TokenPolicy, issue_token
from server.keyring import from_secret

QUEUE = "/queue"
POLICY = TokenPolicy("probelink", "probelink", 30, 30 * 86400)


@pytest.fixture
def shared_env(tmp_path: Path, postgres_url: str, redis_url: str) -> tuple[dict[str, str], ...]:
    common = {
        "PROBELINK_DATABASE_URL": postgres_url,
        "PROBELINK_REDIS_URL": redis_url,
        "PROBELINK_REDIS_PREFIX": unique_prefix(),
        "PROBELINK_SECRET_KEY": secrets.token_urlsafe(32),
        "PROBELINK_LOG_LEVEL": "WARNING",
    }
    return cli_env(tmp_path / "a", **common), cli_env(tmp_path / "b", **common)


def token(secret: str, role: Role, sub: str, consultation_id: str | None = None) -> str:
    return issue_token(
        from_secret(secret),
        POLICY,
        sub=sub,
        role=role,
        ttl_seconds=600,
        consultation_id=consultation_id,
    )


class QueuePage:
    """A queue page's connection: counts `queue_changed` and keeps what it carried."""

    def __init__(self, url: str, token: str):
        self.url = url
        self.token = token
        self.sio = socketio.AsyncClient(reconnection=False)
        self.changes: list[Any] = []
        self.refusal: Any = None
        self._arrived = asyncio.Condition()
        self.sio.on("queue_changed", self._changed, namespace=QUEUE)
        self.sio.on("connect_error", self._refused, namespace=QUEUE)

    async def _changed(self, data: Any = None) -> None:
        async with self._arrived:
            self.changes.append(data)
            self._arrived.notify_all()

    async def _refused(self, data: Any = None) -> None:
        self.refusal = data

    async def connect(self) -> QueuePage:
        await self.sio.connect(
            self.url,
            namespaces=[QUEUE],
            auth={"token": self.token},
            wait_timeout=10,
            transports=["websocket"],
        )
        return self

    async def wait_for(self, count: int) -> None:
        async with self._arrived:
            await asyncio.wait_for(
                self._arrived.wait_for(lambda: len(self.changes) >= count), timeout=10
            )

    async def close(self) -> None:
        await self.sio.disconnect()


async def test_a_change_on_one_node_reaches_the_queue_pages_it_concerns_on_the_other(
    shared_env: tuple[dict[str, str], dict[str, str]],
) -> None:
    env_a, env_b = shared_env
    secret = env_a["PROBELINK_SECRET_KEY"]
    desk = {"Authorization": f"Bearer {token(secret, Role.COORDINATOR, 'desk')}"}
    with Server(env_a) as node_a, Server(env_b) as node_b:
        async with aiohttp.ClientSession(headers=desk) as http:
            for sub, subspecialty in (("dr-vein", "dvt"), ("dr-breast", "breast")):
                body = {"name": sub, "subspecialties": [subspecialty]}
                async with http.put(f"{node_a.url}/api/experts/{sub}", json=body) as response:
                    assert response.status == 200
            coordinator = await QueuePage(node_b.url, desk["Authorization"][7:]).connect()
            vein = await QueuePage(node_b.url, token(secret, Role.EXPERT, "dr-vein")).connect()
            breast = await QueuePage(node_b.url, token(secret, Role.EXPERT, "dr-breast")).connect()
            try:
                request = {
                    "clinical_question": "Swollen calf: DVT?",
                    "application": "dvt",
                    "urgency": "urgent",
                    "patient_ref": "PSEUDO-7",
                    "incomplete_reason": "test",
                }
                async with http.post(f"{node_a.url}/api/consultations", json=request) as response:
                    assert response.status == 201
                    cid = (await response.json())["id"]
                await coordinator.wait_for(1)
                await vein.wait_for(1)
                # Nothing the page could show: it reads the list again over HTTP.
                assert coordinator.changes == [{}] and vein.changes == [{}]

                # Assigned, then cancelled: both queues that list it are told each time.
                assign = {"expert": "dr-vein"}
                async with http.post(
                    f"{node_a.url}/api/consultations/{cid}/assign", json=assign
                ) as response:
                    assert response.status == 200
                cancel = {"reason": "duplicate"}
                async with http.post(
                    f"{node_a.url}/api/consultations/{cid}/cancel", json=cancel
                ) as response:
                    assert response.status == 200
                await coordinator.wait_for(3)
                await vein.wait_for(3)

                # The breast expert is not credentialed for DVT: told nothing of it. Their own
                # credentials changing is the barrier: it arrives after everything sent before.
                body = {"name": "dr-breast", "subspecialties": ["breast", "thyroid"]}
                async with http.put(f"{node_a.url}/api/experts/dr-breast", json=body) as response:
                    assert response.status == 200
                await breast.wait_for(1)
                assert breast.changes == [{}]
            finally:
                for page in (coordinator, vein, breast):
                    await page.close()


async def test_a_join_link_or_a_bad_token_is_refused_with_the_reason(
    shared_env: tuple[dict[str, str], dict[str, str]],
) -> None:
    env_a, _env_b = shared_env
    secret = env_a["PROBELINK_SECRET_KEY"]
    with Server(env_a) as node:
        for bad, code in (
            (token(secret, Role.OPERATOR, "bedside", "c" * 32), "role_not_allowed"),
            (token(secret, Role.EXPERT, "nobody"), "not_credentialed"),
            ("not-a-token", "token_malformed"),
        ):
            page = QueuePage(node.url, bad)
            with pytest.raises(socketio.exceptions.ConnectionError):
                await page.connect()
            assert page.refusal["data"]["code"] == code, page.refusal
            await page.close()


async def test_the_first_expert_to_join_is_told_and_a_reconnect_is_not(
    shared_env: tuple[dict[str, str], dict[str, str]],
) -> None:
    """The first expert's join makes the request live (the queue shows it), a key image adds to
    what it holds; the same expert's page reloaded changes nothing a queue lists, so the queue
    pages are not told of that."""
    env_a, _env_b = shared_env
    secret = env_a["PROBELINK_SECRET_KEY"]
    desk = {"Authorization": f"Bearer {token(secret, Role.COORDINATOR, 'desk')}"}
    with Server(env_a) as node:
        room = await setup_room(node.url, secret, PHANTOM_DEVICE)
        coordinator = await QueuePage(node.url, desk["Authorization"][7:]).connect()
        try:
            for _ in range(2):  # the expert's page, then the same page reloaded
                expert = await Participant(node.url, room["expert"]).connect()
                await expert.close()
            await coordinator.wait_for(1)
            # A key image changes what the request holds for review (the queue counts them).
            base = f"{node.url}/api/consultations/{room['consultation']}"
            expert_auth = {"Authorization": f"Bearer {room['expert']}"}
            async with aiohttp.ClientSession(headers=expert_auth) as http:
                async with http.post(
                    f"{base}/captures", data=phantom_png(1), headers={"Content-Type": "image/png"}
                ) as response:
                    assert response.status == 201, await response.text()
            await coordinator.wait_for(2)
            # The cancellation is told after what the joins told: the barrier.
            async with aiohttp.ClientSession(headers=desk) as http:
                async with http.post(f"{base}/cancel", json={"reason": "duplicate"}) as response:
                    assert response.status == 200
            await coordinator.wait_for(3)
            assert coordinator.changes == [{}, {}, {}]
        finally:
            await coordinator.close()
