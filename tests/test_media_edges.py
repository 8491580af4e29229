"""What a buggy or hostile client cannot do to the relay (found in review)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from aiortc import RTCPeerConnection, VideoStreamTrack
from live_client import Participant
from media_bots import prefer_codec
from sqlalchemy import text

from server.web.keys import RELAY, STORE

Invite = Callable[[str], Awaitable[Participant]]


@pytest.fixture
async def room(
    client: TestClient[Any, Any], coordinator: dict[str, str]
) -> AsyncIterator[tuple[str, Invite]]:
    created = await client.post(
        "/api/consultations",
        json={"clinical_question": "q", "urgency": "urgent", "incomplete_reason": "test request"},
        headers=coordinator,
    )
    cid = (await created.json())["id"]
    joined: list[Participant] = []

    async def connect(role: str) -> Participant:
        response = await client.post(
            f"/api/consultations/{cid}/invites",
            json={"role": role, "name": role},
            headers=coordinator,
        )
        participant = await Participant(
            str(client.make_url("/")), (await response.json())["token"]
        ).connect()
        joined.append(participant)
        return participant

    yield cid, connect
    for participant in joined:
        await participant.close()


async def offer(pc: RTCPeerConnection) -> dict[str, str]:
    await pc.setLocalDescription(await pc.createOffer())
    return {"sdp": pc.localDescription.sdp, "type": "offer"}


def directions(sdp: str) -> list[str]:
    wanted = ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive")
    return [line[2:] for line in sdp.splitlines() if line in wanted]


async def test_the_relay_receives_only_what_it_forwards(room: tuple[str, Invite]) -> None:
    _, invite = room
    observer = await invite("observer")
    pc = RTCPeerConnection()
    pc.addTransceiver(VideoStreamTrack(), direction="sendrecv")  # an observer trying to publish
    pc.addTransceiver("audio", direction="sendrecv")  # and to talk
    pc.addTransceiver("audio", direction="sendonly")  # an m-line nobody reads
    try:
        answer = await observer.call("rtc_offer", await offer(pc))
        assert directions(answer["sdp"]) == ["sendonly", "sendonly", "inactive"]
    finally:
        await pc.close()


async def test_offers_with_too_many_media_sections_are_refused(
    room: tuple[str, Invite], client: TestClient[Any, Any]
) -> None:
    _, invite = room
    expert = await invite("expert")
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    for _ in range(12):
        pc.addTransceiver("audio", direction="recvonly")
    try:
        ack = await expert.call("rtc_offer", await offer(pc))
        assert ack["error"]["code"] == "invalid_sdp"
        assert client.app[RELAY].peer_connections() == 0
    finally:
        await pc.close()


async def test_the_first_negotiated_codec_is_the_rooms_whoever_negotiates_first(
    room: tuple[str, Invite],
) -> None:
    _, invite = room
    expert, operator = await invite("expert"), await invite("operator")
    expert_pc, operator_pc = RTCPeerConnection(), RTCPeerConnection()
    prefer_codec(expert_pc.addTransceiver("video", direction="recvonly"), "video/vp8")
    prefer_codec(operator_pc.addTransceiver(VideoStreamTrack(), direction="sendonly"), "video/h264")
    try:
        assert "sdp" in await expert.call("rtc_offer", await offer(expert_pc))
        refused = await operator.call("rtc_offer", await offer(operator_pc))
        assert refused["error"]["code"] == "codec_mismatch"
    finally:
        await expert_pc.close()
        await operator_pc.close()


async def test_a_closed_consultation_has_no_media_room(
    room: tuple[str, Invite], client: TestClient[Any, Any]
) -> None:
    cid, invite = room
    expert = await invite("expert")
    # Behind the server's back: cancelling through the API lets the expert's socket go first
    # (tests/test_revocation.py); this is the relay's own guard for a socket still connected.
    async with client.app[STORE].transaction() as conn:
        await conn.execute(
            text("UPDATE consultations SET state = 'cancelled' WHERE id = :id"), {"id": cid}
        )
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    try:
        ack = await expert.call("rtc_offer", await offer(pc))
        assert ack["error"]["code"] == "invalid_state"
    finally:
        await pc.close()


async def test_sync_with_an_absurd_sequence_number_is_a_clear_error(
    room: tuple[str, Invite],
) -> None:
    _, invite = room
    expert = await invite("expert")
    ack = await expert.call("sync", {"after_seq": 10**30})
    assert ack["error"]["code"] == "invalid_field" and ack["error"]["field"] == "after_seq"
