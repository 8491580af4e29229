"""The relay forwards the operator's encoded video and voice to experts, and experts' voices back."""

from __future__ import annotations

import asyncio
import collections
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import aiortc
import pytest
from aiohttp.test_utils import TestClient
from aioice.ice import get_host_addresses
from aiortc.mediastreams import AudioStreamTrack
from live_client import Participant
from media_bots import (
    Bot,
    CounterFrameTrack,
    CounterVideoTrack,
    decode_counters,
    decode_counters_with,
    expert_bot,
    operator_bot,
    prefer_codec,
)

from server.app import create_app
from server.auth import Role
from server.config import Settings
from server.web.keys import RELAY

Invite = Callable[[str], Awaitable[Participant]]


async def new_consultation(client: TestClient[Any, Any], coordinator: dict[str, str]) -> Invite:
    """A consultation on `client`'s server; joins a participant of a role to it."""
    created = await client.post(
        "/api/consultations",
        json={"clinical_question": "q", "urgency": "urgent", "incomplete_reason": "test request"},
        headers=coordinator,
    )
    cid = (await created.json())["id"]

    async def connect(role: str) -> Participant:
        response = await client.post(
            f"/api/consultations/{cid}/invites",
            json={"role": role, "name": role},
            headers=coordinator,
        )
        token = (await response.json())["token"]
        return await Participant(str(client.make_url("/")), token).connect()

    return connect


@pytest.fixture
async def invite(client: TestClient[Any, Any], coordinator: dict[str, str]) -> Invite:
    return await new_consultation(client, coordinator)


async def test_expert_receives_the_operators_frames_forwarded_unaltered_and_in_order(
    invite: Invite,
) -> None:
    track = CounterVideoTrack()
    operator = await operator_bot(await invite("operator"), track)
    expert = await expert_bot(await invite("expert"))
    try:
        assert "sdp" in await operator.negotiate()
        assert "sdp" in await expert.negotiate()
        packets = await expert.wait_packets("video", 45)
        counters = decode_counters(packets)
        assert len(counters) >= 30
        assert counters == list(range(counters[0], counters[0] + len(counters))), (
            "lost or reordered"
        )
        # Forwarded, not re-encoded: every frame's bytes are the operator encoder's own.
        first = counters[0]
        start = next(i for i, p in enumerate(packets) if p.is_keyframe)
        for offset, packet in enumerate(packets[start : start + len(counters)]):
            assert hashlib.sha256(bytes(packet)).hexdigest() == track.sent[first + offset]
        await expert.wait_packets("audio", 20)  # the operator's voice
        await operator.wait_packets("audio", 20)  # the expert's voice, back in the operator's slot
    finally:
        await expert.close()
        await operator.close()


async def test_late_expert_gets_a_keyframe_through_the_forwarded_request(invite: Invite) -> None:
    track = CounterVideoTrack(keyframe_interval=100_000)  # keyframes only when asked
    operator = await operator_bot(await invite("operator"), track)
    first = await expert_bot(await invite("expert"))
    try:
        await operator.negotiate()
        await first.negotiate()
        await first.wait_packets("video", 30)
        requests_before = track.keyframe_requests
        late = await expert_bot(await invite("expert"))
        try:
            await late.negotiate()
            packets = await late.wait_packets("video", 10)
            assert packets[0].is_keyframe  # the relay waits for a keyframe before forwarding
            assert len(decode_counters(packets)) >= 10
            assert track.keyframe_requests > requests_before
        finally:
            await late.close()
        # The first expert was not interrupted by the join or the leave.
        counters = decode_counters(
            await first.wait_packets("video", len(first.received["video"]) + 15)
        )
        assert counters == list(range(counters[0], counters[0] + len(counters)))
    finally:
        await first.close()
        await operator.close()


async def test_operator_reconnect_brings_video_back_without_experts_rejoining(
    invite: Invite,
) -> None:
    operator_socket = await invite("operator")
    track = CounterVideoTrack()
    operator = await operator_bot(operator_socket, track)
    expert = await expert_bot(await invite("expert"))
    try:
        await operator.negotiate()
        await expert.negotiate()
        await expert.wait_packets("video", 20)
        await operator.pc.close()  # the bedside connection drops

        # Each publication is announced to the others (their pages learn its size again).
        await expert.participant.wait_until(lambda r: len(r["publishing"]) == 1)
        second_track = CounterVideoTrack(start=2000)
        operator = await operator_bot(operator_socket, second_track)
        assert "sdp" in await operator.negotiate()
        await expert.participant.wait_until(lambda r: len(r["publishing"]) == 2)
        assert not operator_socket.received["publishing"]  # not to the publisher itself
        await asyncio.sleep(0)
        before = len(expert.received["video"])
        packets = await expert.wait_packets("video", before + 30)
        counters = decode_counters(packets[before:])
        assert counters and counters[-1] > 2000, "no frames from the new connection"
        pts = [p.pts for p in packets]
        assert pts == sorted(pts), "timestamps went back when the source changed"
    finally:
        await expert.close()
        await operator.close()


async def test_malformed_sdp_gets_a_clear_error(invite: Invite) -> None:
    expert = await invite("expert")
    try:
        for data, field in (
            ({"sdp": "v=0\r\nthis is not sdp", "type": "offer"}, "sdp"),
            ({"sdp": "x" * 40_000, "type": "offer"}, "sdp"),
            ({"sdp": "v=0", "type": "answer"}, "type"),
        ):
            ack = await expert.call("rtc_offer", data)
            assert ack["error"]["field"] == field, ack
            assert ack["error"]["code"] in ("invalid_sdp", "invalid_field"), ack
            assert "Traceback" not in ack["error"]["message"]
    finally:
        await expert.close()


def running_tasks() -> collections.Counter[str]:
    """Tasks by coroutine, less engine.io's ping tasks (each ends within its ping interval)."""
    names = (t.get_coro().__qualname__ for t in asyncio.all_tasks())  # type: ignore[union-attr]
    return collections.Counter(n for n in names if n != "AsyncSocket._send_ping")


async def test_peer_connections_and_tasks_are_released_after_many_joins_and_leaves(
    invite: Invite, client: TestClient[Any, Any]
) -> None:
    operator = await operator_bot(await invite("operator"), CounterVideoTrack())
    relay = client.app[RELAY]

    async def expert_visit() -> None:
        expert = await expert_bot(await invite("expert"))
        await expert.negotiate()
        await expert.wait_packets("video", 3)
        await expert.close()

    async def settled() -> collections.Counter[str]:
        """The running tasks once they stop changing (bounded wait)."""
        last = running_tasks()
        for _ in range(50):
            await asyncio.sleep(0.2)
            now = running_tasks()
            if now == last and relay.peer_connections() == 1:
                return now
            last = now
        return last

    try:
        await operator.negotiate()
        await expert_visit()  # warm: the operator's media tasks are all running now
        baseline = await settled()
        for _ in range(8):
            await expert_visit()
        leftover = await settled() - baseline
        assert relay.peer_connections() == 1  # only the operator's
        assert not leftover, leftover
    finally:
        await operator.close()


def test_the_forwarding_hook_still_fits_aiortc() -> None:
    """Fails when aiortc changes under the hooks (the numbered list in server/media/hooks/)."""
    from aioice import Connection
    from aioice.ice import StunProtocol
    from aiortc import (
        RTCDtlsTransport,
        RTCIceTransport,
        RTCRtpReceiver,
        RTCRtpSender,
        RTCRtpTransceiver,
        rtcrtpreceiver,
    )
    from aiortc.rtcdtlstransport import RtpRouter

    assert aiortc.__version__ == "1.16.0"
    receiver_fields = RTCRtpReceiver.__init__.__code__.co_names
    handled = RTCRtpReceiver._handle_rtp_packet.__code__.co_names
    # 1. The packet path in: the router calls the receiver's handler by name.
    assert "_handle_rtp_packet" in RtpRouter.route_rtp.__code__.co_names or (
        "_handle_rtp_packet" in RTCDtlsTransport._handle_rtp_data.__code__.co_names
    )
    for name in ("__active_ssrc", "__remote_streams", "__rtx_ssrc", "__codecs", "__nack_generator"):
        assert f"_RTCRtpReceiver{name}" in receiver_fields, name
        assert f"_RTCRtpReceiver{name}" in handled, name
    assert "_enabled" in handled and "unwrap_rtx" in handled
    # ... a simulcast layer's SSRC, named nowhere, reaches the receiver by its payload type;
    # the RIDs are parsed; NACKs are generated per SSRC.
    assert "payload_type_table" in RtpRouter.route_rtp.__code__.co_names
    assert {"rtp_stream_id", "repaired_rtp_stream_id"} <= set(
        aiortc.rtp.HeaderExtensions.__dataclass_fields__
    )
    assert callable(rtcrtpreceiver.NackGenerator().add)
    # 2-4. The packet path out: a parked sender, its reports' fields, NACKs answered.
    send = RTCRtpSender.send.__code__.co_names
    assert "_run_rtp" in send and "_RTCRtpSender__rtp_header_extensions_map" in send
    assert "_RTCRtpSender__rtx_payload_type" in send and "_RTCRtpSender__mid" in send
    stop = RTCRtpSender.stop.__code__.co_names
    assert "_RTCRtpSender__rtp_started" in stop
    sender_fields = RTCRtpSender.__init__.__code__.co_names
    for name in ("__rtp_exited", "__ntp_timestamp", "__rtp_timestamp", "__packet_count"):
        assert f"_RTCRtpSender{name}" in sender_fields, name
    assert "_RTCRtpSender__octet_count" in RTCRtpSender._run_rtcp.__code__.co_names
    assert "_retransmit" in RTCRtpSender._handle_rtcp_packet.__code__.co_names
    assert "_send_rtp" in RTCRtpSender._retransmit.__code__.co_names
    # 5-7. Keyframe requests and loss repair.
    assert callable(getattr(RTCRtpSender, "_send_keyframe", None))
    assert callable(getattr(RTCRtpReceiver, "_send_rtcp_pli", None))
    assert callable(getattr(RTCRtpReceiver, "_send_rtcp_nack", None))
    assert "_RTCRtpReceiver__rtcp_ssrc" in RTCRtpReceiver._send_rtcp_nack.__code__.co_names
    # 8. The bots' passthrough decoder.
    assert "get_decoder" in rtcrtpreceiver.decoder_worker.__code__.co_names
    assert hasattr(rtcrtpreceiver, "get_decoder")
    assert callable(getattr(RTCRtpReceiver, "_send_rtcp", None))
    # 9-13. Congestion feedback.
    assert callable(RtpRouter.route_rtp)
    assert "_rtp_router" in RTCDtlsTransport.__init__.__code__.co_names
    assert "route_rtp" in RTCDtlsTransport._handle_rtp_data.__code__.co_names
    assert "_RTCRtpReceiver__remote_bitrate_estimator" in receiver_fields
    assert callable(getattr(RTCRtpSender, "_handle_rtcp_packet", None))
    assert "_ssrc" in sender_fields
    transceiver_fields = RTCRtpTransceiver.__init__.__code__.co_names
    assert "_codecs" in transceiver_fields and "_headerExtensions" in transceiver_fields
    assert "_connection" in RTCIceTransport.__init__.__code__.co_names
    assert "_protocols" in Connection.__init__.__code__.co_names
    assert callable(StunProtocol.datagram_received)


async def test_statistics_reach_the_room_and_metrics(
    invite: Invite, client: TestClient[Any, Any]
) -> None:
    operator = await operator_bot(await invite("operator"), CounterVideoTrack())
    expert_socket = await invite("expert")
    expert = await expert_bot(expert_socket)
    try:
        await operator.negotiate()
        await expert.negotiate()
        await expert_socket.wait_until(
            lambda r: any(
                e["role"] == "expert" and e["frame_rate"] > 5 and e["bitrate_out_kbps"] > 10
                for m in r["media_stats"]
                for e in m["participants"]
            ),
            within=20,
        )
        operator_stats = [
            e
            for m in expert_socket.received["media_stats"]
            for e in m["participants"]
            if e["role"] == "operator"
        ]
        assert operator_stats and operator_stats[-1]["bitrate_in_kbps"] > 10
        assert {"packet_loss_percent", "rtt_ms"} <= set(operator_stats[-1])
        text = await (await client.get("/metrics")).text()
        assert "probelink_media_frame_rate{" in text
        assert "probelink_media_peer_connections 2.0" in text
    finally:
        await expert.close()
        await operator.close()


async def test_h264_publisher_is_forwarded_and_the_room_keeps_its_codec(invite: Invite) -> None:
    operator = Bot(await invite("operator"))
    video = operator.pc.addTransceiver(CounterFrameTrack(), direction="sendonly")
    prefer_codec(video, "video/h264")
    operator.pc.addTransceiver(AudioStreamTrack(), direction="sendrecv")
    expert = await expert_bot(await invite("expert"))  # offers VP8 and H.264
    vp8_only = Bot(await invite("expert"))
    prefer_codec(vp8_only.pc.addTransceiver("video", direction="recvonly"), "video/vp8")
    try:
        assert "sdp" in await operator.negotiate()
        answer = await expert.negotiate()
        assert "H264" in answer["sdp"] and "VP8" not in answer["sdp"]
        packets = await expert.wait_packets("video", 40)
        counters = decode_counters_with("h264", packets)
        assert len(counters) >= 20
        assert counters == sorted(counters)
        refused = await vp8_only.negotiate()
        assert refused["error"]["code"] == "codec_mismatch"
    finally:
        await vp8_only.close()
        await expert.close()
        await operator.close()


async def test_a_media_connection_its_peer_closed_is_released(
    invite: Invite, client: TestClient[Any, Any]
) -> None:
    """The page's connection ends while its socket stays (as when the socket is held by another
    node that died): the relay releases the peer by itself; the publisher carries on."""
    operator = await operator_bot(await invite("operator"), CounterVideoTrack())
    expert = await expert_bot(await invite("expert"))
    try:
        await operator.negotiate()
        await expert.negotiate()
        await expert.wait_packets("video", 10)
        (room,) = client.app[RELAY].rooms.values()
        assert len(room.peers) == 2
        await expert.pc.close()
        for _ in range(100):
            if len(room.peers) == 1:
                break
            await asyncio.sleep(0.05)
        assert [p.role for p in room.peers.values()] == [Role.OPERATOR]
        assert room.publisher is not None
    finally:
        await expert.close()
        await operator.close()


def host_addresses(sdp: str) -> set[str]:
    """The IPv4 addresses of an SDP's host candidates."""
    return {
        line.split()[4]
        for line in sdp.splitlines()
        if line.startswith("a=candidate:")
        and line.split()[7] == "host"
        and ":" not in line.split()[4]
    }


async def test_answers_give_the_nodes_media_address_and_media_still_flows(
    aiohttp_client: Callable[..., Any], settings: Settings, coordinator: dict[str, str]
) -> None:
    """PROBELINK_MEDIA_ADDRESS: the answers' host candidates carry it. An address of no
    interface here (documentation range) shows the rewrite; one of this machine's own
    non-loopback addresses shows the bots still reach the relay through it."""
    own = get_host_addresses(use_ipv4=True, use_ipv6=False)[0]
    for address, flows in (("203.0.113.7", False), (own, True)):
        client = await aiohttp_client(
            create_app(settings.model_copy(update={"media_address": address}))
        )
        join = await new_consultation(client, coordinator)
        operator = await operator_bot(await join("operator"), CounterVideoTrack())
        expert = await expert_bot(await join("expert"))
        try:
            for bot in (operator, expert):
                answer = await bot.negotiate()
                assert host_addresses(answer["sdp"]) == {address}, answer["sdp"]
            if flows:
                await expert.wait_packets("video", 10)
        finally:
            await expert.close()
            await operator.close()
