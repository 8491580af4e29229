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
from media_bots import CounterVideoTrack, decode_counters, expert_bot, operator_bot
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


async def setup_room(
    base: str, secret: str, device: dict[str, Any] | None = None
) -> dict[str, str]:
    """A consultation with an expert's and an operator's join tokens (and its id)."""
    headers = {"Authorization": f"Bearer {coordinator_token(secret)}"}
    request: dict[str, Any] = {
        "clinical_question": "DVT?",
        "urgency": "emergency",
        "incomplete_reason": "test request",
    }
    if device is not None:
        request["device"] = device
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(f"{base}/api/consultations", json=request) as response:
            assert response.status == 201
            cid = (await response.json())["id"]
        tokens = {}
        for role in ("expert", "operator"):
            async with http.post(
                f"{base}/api/consultations/{cid}/invites", json={"role": role, "name": role}
            ) as response:
                tokens[role] = (await response.json())["token"]
    return {**tokens, "consultation": cid}


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


async def test_media_is_reached_from_any_node_behind_one_public_url(
    shared_env: tuple[dict[str, str], dict[str, str]],
) -> None:
    """Both nodes have the same public URL (one load-balanced hostname). The operator reaches
    node A, the expert node B: B forwards the expert's offer to A, which carries the media, and
    frames flow; a capture asked on B is made on A from the video A carries; when the expert
    leaves on B, A releases its peer, and the expert can join again through B."""
    env_a, env_b = ({**env, "PROBELINK_PUBLIC_URL": "http://127.0.0.1:8443"} for env in shared_env)
    with Server(env_a) as node_a, Server(env_b) as node_b:
        secret = env_a["PROBELINK_SECRET_KEY"]
        tokens = await setup_room(node_a.url, secret, device={"burned_in_text": False})
        operator = await operator_bot(
            await Participant(node_a.url, tokens["operator"]).connect(), CounterVideoTrack()
        )
        expert = await expert_bot(await Participant(node_b.url, tokens["expert"]).connect())
        try:
            assert "sdp" in await operator.negotiate()
            answer = await expert.negotiate()
            assert "sdp" in answer, answer
            counters = decode_counters(await expert.wait_packets("video", 30))
            assert len(counters) >= 20 and counters == sorted(counters)
            still = await expert.participant.call("capture", {"kind": "still"})
            assert "key_image_id" in still, still
            headers = {"Authorization": f"Bearer {coordinator_token(secret)}"}
            cid = tokens["consultation"]
            async with aiohttp.ClientSession(headers=headers) as http:
                url = f"{node_b.url}/api/consultations/{cid}/key-images"
                async with http.get(url) as response:
                    listed = (await response.json())["key_images"]
            assert [k["id"] for k in listed] == [still["key_image_id"]]
        finally:
            await expert.close()
        again = await expert_bot(await Participant(node_b.url, tokens["expert"]).connect())
        try:
            assert "sdp" in await again.negotiate()
            assert decode_counters(await again.wait_packets("video", 30))
        finally:
            await again.close()
            await operator.close()


async def test_an_offer_for_media_on_a_node_that_is_gone_is_taken_over(
    shared_env: tuple[dict[str, str], dict[str, str]],
) -> None:
    """The node that carried a consultation's media dies: the next offer, on the other node,
    re-homes the room there once the dead node's heartbeat has expired."""
    env_a, env_b = shared_env
    with Server(env_b) as node_b:
        secret = env_b["PROBELINK_SECRET_KEY"]
        tokens = await setup_room(node_b.url, secret)
        with Server(env_a) as node_a:
            first = await operator_bot(
                await Participant(node_a.url, tokens["operator"]).connect(), CounterVideoTrack()
            )
            assert "sdp" in await first.negotiate()
            node_a.process.kill()  # no clean shutdown: its pin and heartbeat are left behind
            await first.pc.close()
        await asyncio.sleep(PRESENCE_TTL_SECONDS + 1)
        operator = await operator_bot(
            await Participant(node_b.url, tokens["operator"]).connect(), CounterVideoTrack()
        )
        expert = await expert_bot(await Participant(node_b.url, tokens["expert"]).connect())
        try:
            assert "sdp" in await operator.negotiate()
            assert "sdp" in await expert.negotiate()
            assert decode_counters(await expert.wait_packets("video", 30))
        finally:
            await expert.close()
            await operator.close()
