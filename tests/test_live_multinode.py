"""Two real server processes sharing PostgreSQL and Redis: one room, participants on both nodes."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import RTCPeerConnection, VideoStreamTrack
from conftest import unique_prefix
from live_client import Participant
from servers import Server, cli_env

from server.auth import Role, TokenPolicy, issue_token
from server.keyring import from_secret

PRESENCE_TTL_SECONDS = 3


@pytest.fixture
def shared_env(tmp_path: Path, postgres_url: str, redis_url: str) -> tuple[dict[str, str], ...]:
    secret = secrets.token_urlsafe(32)
    common = {
        "PROBELINK_DATABASE_URL": postgres_url,
        "PROBELINK_REDIS_URL": redis_url,
        "PROBELINK_REDIS_PREFIX": unique_prefix(),
        "PROBELINK_SECRET_KEY": secret,
        "PROBELINK_PRESENCE_TTL_SECONDS": str(PRESENCE_TTL_SECONDS),
        "PROBELINK_LOG_LEVEL": "WARNING",
    }
    return cli_env(tmp_path / "a", **common), cli_env(tmp_path / "b", **common)


def coordinator_token(secret: str) -> str:
    policy = TokenPolicy("probelink", "probelink", 30, 30 * 86400)
    return issue_token(
        from_secret(secret), policy, sub="desk", role=Role.COORDINATOR, ttl_seconds=600
    )


async def setup_room(base: str, secret: str) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {coordinator_token(secret)}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(
            f"{base}/api/consultations",
            json={
                "clinical_question": "DVT?",
                "urgency": "emergency",
                "incomplete_reason": "test request",
            },
        ) as response:
            assert response.status == 201
            cid = (await response.json())["id"]
        tokens = {}
        for role in ("expert", "operator"):
            async with http.post(
                f"{base}/api/consultations/{cid}/invites", json={"role": role, "name": role}
            ) as response:
                tokens[role] = (await response.json())["token"]
    return tokens


def roles(presence: dict[str, Any]) -> set[str]:
    return {p["role"] for p in presence["participants"]}


async def test_expert_and_operator_on_two_nodes_see_presence_marks_and_guidance_in_order(
    shared_env: tuple[dict[str, str], dict[str, str]],
) -> None:
    env_a, env_b = shared_env
    with Server(env_a) as node_a, Server(env_b) as node_b:
        tokens = await setup_room(node_a.url, env_a["PROBELINK_SECRET_KEY"])
        expert = await Participant(node_a.url, tokens["expert"]).connect()
        operator = await Participant(node_b.url, tokens["operator"]).connect()
        try:
            assert roles({"participants": operator.state["participants"]}) == {"expert", "operator"}
            await expert.wait_until(
                lambda r: any(roles(p) == {"expert", "operator"} for p in r["presence"])
            )

            arrow = {"kind": "arrow", "points": [[0.2, 0.2], [0.4, 0.4]]}
            label = {"kind": "text", "points": [[0.5, 0.5]], "text": "here?"}
            acks = await asyncio.gather(
                *(expert.call("mark", arrow) for _ in range(15)),
                *(operator.call("mark", label) for _ in range(15)),
                expert.call("guidance", {"cue": "compress", "direction": "more"}),
            )
            assert sorted(a["seq"] for a in acks) == list(range(1, 32))
            for person in (expert, operator):
                await person.wait_until(lambda r: len(r["mark"]) + len(r["guidance"]) >= 31)
                seqs = sorted(
                    [(m["seq"], "mark") for m in person.received["mark"]]
                    + [(g["seq"], "guidance") for g in person.received["guidance"]]
                )
                assert [s for s, _ in seqs] == list(range(1, 32))
                arrival = [m["seq"] for m in person.received["mark"]]
                assert arrival == sorted(arrival), "marks arrived out of sequence"

            await expert.call("pointer", {"x": 0.25, "y": 0.75})
            pointer = (await operator.wait_for("pointer"))[-1]
            assert (pointer["x"], pointer["y"]) == (0.25, 0.75)

            node_b.kill()  # the operator's node dies without saying goodbye
            await expert.wait_until(
                lambda r: roles(r["presence"][-1]) == {"expert"}, within=PRESENCE_TTL_SECONDS * 4
            )
            assert expert.received["presence"][-1]["event"] == "leave"
        finally:
            await expert.close()
            await operator.close()


async def offer_sdp(role: str) -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection()
    if role == "operator":
        pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
    else:
        pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def test_a_consultations_media_stays_on_the_node_that_carries_it(
    shared_env: tuple[dict[str, str], dict[str, str]],
) -> None:
    env_a, env_b = shared_env
    with Server(env_a) as node_a, Server(env_b) as node_b:
        secret = env_a["PROBELINK_SECRET_KEY"]
        tokens = await setup_room(node_a.url, secret)
        headers = {"Authorization": f"Bearer {coordinator_token(secret)}"}
        operator = await Participant(node_a.url, tokens["operator"]).connect()
        expert_b = await Participant(node_b.url, tokens["expert"]).connect()
        peers = []
        try:
            pc, sdp = await offer_sdp("operator")
            peers.append(pc)
            assert "sdp" in await operator.call("rtc_offer", {"sdp": sdp, "type": "offer"})
            pc, sdp = await offer_sdp("expert")
            peers.append(pc)
            refused = await expert_b.call("rtc_offer", {"sdp": sdp, "type": "offer"})
            assert refused["error"]["code"] == "media_on_other_node"
            assert node_a.url in refused["error"]["message"]
            await expert_b.close()
            async with aiohttp.ClientSession(headers=headers) as http:
                assert (await http.get(f"{node_b.url}/healthz")).status == 200
            expert_a = await Participant(node_a.url, tokens["expert"]).connect()
            try:
                assert "sdp" in await expert_a.call("rtc_offer", {"sdp": sdp, "type": "offer"})
            finally:
                await expert_a.close()
        finally:
            for pc in peers:
                await pc.close()
            await operator.close()
