"""A bedside device that can only go through TURN streams via coturn with probelink's credentials.

Real coturn, real aiortc peers over loopback; an expired credential is refused by coturn.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import av
import pytest
from aioice import Connection
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransport,
    RTCPeerConnection,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from turn_server import TurnServer

from server.config import Settings, load_settings
from server.media.ice import ice_servers_for

CONNECT_TIMEOUT_SECONDS = 20
FRAME_TIMEOUT_SECONDS = 10
# How long a test watches a peer that must not connect.
NEVER_CONNECTS_WINDOW_SECONDS = 5
FRAMES_TO_RECEIVE = 5


def turn_settings(coturn: TurnServer) -> Settings:
    return load_settings(turn_urls=coturn.url(), turn_secret=coturn.secret)


def relay_only(ice: dict[str, object]) -> RTCConfiguration:
    """What a device behind a firewall that lets nothing but TURN through would use."""
    servers = ice["ice_servers"]
    assert isinstance(servers, list)
    return RTCConfiguration(
        iceServers=[RTCIceServer(**server) for server in servers],
        iceTransportPolicy=RTCIceTransportPolicy.RELAY,
    )


def ice_connection(pc: RTCPeerConnection) -> Connection:
    """aioice's connection under the first transceiver (aiortc has no selected-pair API)."""
    transport: RTCIceTransport = pc.getTransceivers()[0].sender.transport.transport
    connection: Connection = transport._connection
    return connection


@pytest.fixture
async def peers() -> AsyncIterator[list[RTCPeerConnection]]:
    """Peer connections a test opens; all closed at the end."""
    opened: list[RTCPeerConnection] = []
    yield opened
    for pc in opened:
        await pc.close()


async def offer_answer(operator: RTCPeerConnection, expert: RTCPeerConnection) -> None:
    await operator.setLocalDescription(await operator.createOffer())
    await expert.setRemoteDescription(operator.localDescription)
    await expert.setLocalDescription(await expert.createAnswer())
    await operator.setRemoteDescription(expert.localDescription)


async def test_relay_only_operator_streams_video_to_the_expert_through_coturn(
    coturn: TurnServer, peers: list[RTCPeerConnection]
) -> None:
    ice = ice_servers_for(turn_settings(coturn), "4e1c0a7b", datetime.now(UTC))
    operator = RTCPeerConnection(relay_only(ice))
    expert = RTCPeerConnection()
    peers += [operator, expert]
    received: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()
    expert.on("track", lambda track: received.set_result(track))
    operator.addTrack(VideoStreamTrack())

    async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
        await offer_answer(operator, expert)
        track = await received
    # Only relayed candidates are offered: the device's own addresses never leave it.
    candidates = [
        line for line in operator.localDescription.sdp.splitlines() if "candidate:" in line
    ]
    assert candidates
    assert all(" typ relay " in line for line in candidates)

    for _ in range(FRAMES_TO_RECEIVE):
        # A decoded frame, or an encoded packet once the relay's forwarding hook is installed
        # in this process (it is process-wide; see server/media/hooks/).
        media = await asyncio.wait_for(track.recv(), FRAME_TIMEOUT_SECONDS)
        assert media.width > 0 if isinstance(media, av.VideoFrame) else len(bytes(media)) > 0
    assert operator.iceConnectionState == "completed"

    (pair,) = ice_connection(operator)._nominated.values()
    assert pair.local_candidate.type == "relay"
    assert pair.local_candidate.host == coturn.ip
    # The expert sees the operator at coturn's relayed address.
    (expert_pair,) = ice_connection(expert)._nominated.values()
    assert expert_pair.remote_candidate.host == coturn.ip
    assert expert_pair.remote_candidate.port == pair.local_candidate.port


async def test_expired_credential_is_refused_by_coturn(
    coturn: TurnServer, peers: list[RTCPeerConnection]
) -> None:
    settings = turn_settings(coturn)
    issued = datetime.now(UTC) - timedelta(seconds=settings.turn_ttl_seconds + 60)
    ice = ice_servers_for(settings, "4e1c0a7b", issued)
    (server,) = ice["ice_servers"]
    operator = RTCPeerConnection(relay_only(ice))
    expert = RTCPeerConnection()
    peers += [operator, expert]
    states: list[str] = []
    connected = asyncio.Event()

    @operator.on("iceconnectionstatechange")
    def _changed() -> None:
        states.append(operator.iceConnectionState)
        if operator.iceConnectionState in ("connected", "completed"):
            connected.set()

    operator.addTrack(VideoStreamTrack())
    async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
        await offer_answer(operator, expert)  # returns once candidates are gathered

    # coturn allocated no relay, and relay-only leaves the operator with no candidate at all.
    assert ice_connection(operator).local_candidates == []
    assert "a=candidate:" not in operator.localDescription.sdp
    # It was coturn that said no, to this username (not a network problem).
    assert f"Cannot find credentials of user <{server['username']}>" in coturn.log
    # And so the operator never connects (a bounded look: with a valid credential the same
    # peers connect over loopback in well under a second).
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(connected.wait(), NEVER_CONNECTS_WINDOW_SECONDS)
    assert "connected" not in states and "completed" not in states
