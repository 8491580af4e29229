"""Packet forwarding's hooks (1-4 in the package's list): a relay receiver hands on each RTP
packet as it arrives, and a subscriber's sender sends packets the relay has numbered itself.
See the package's list (1-4) for what each relies on.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import RTCRtpReceiver, RTCRtpSender, clock
from aiortc.codecs import is_rtx
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import NackGenerator, StreamStatistics
from aiortc.rtcrtpsender import random_sequence_number
from aiortc.rtp import RtpPacket, pack_header_extensions, unwrap_rtx

from server.media.hooks.receive import NackRetry
from server.media.rtp import HEADER, abs_send_time, ntp_now

# Packets a subscriber's sender keeps for retransmission: a 720p keyframe and more than a
# second of video at 2.5 Mbit/s (aiortc keeps 128). A power of two: a packet's slot is its
# sequence number's low bits.
SENDER_HISTORY_PACKETS = 512
RTP_VERSION_2 = 0x80
EXTENSION_BIT = 0x10
ONE_BYTE_PROFILE = 0xBEDE

# A source is marked active (a datetime, for `getSynchronizationSources`) at most this often.
ACTIVE_MARK_MS = 500

OnPacket = Callable[[RtpPacket, RTCRtpCodecParameters], Awaitable[None]]


def take_packets(receiver: RTCRtpReceiver, on_packet: OnPacket, repair: bool) -> None:
    """Hand every media packet `receiver` gets to `on_packet` (RTX unwrapped), after the
    statistics aiortc keeps for it and, with `repair`, the NACKs for what is missing (per SSRC:
    a simulcast publisher sends several); nothing else of aiortc's receive path runs."""
    codecs: dict[int, Any] = receiver._RTCRtpReceiver__codecs  # type: ignore[attr-defined]
    streams: dict[int, StreamStatistics] = receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]
    rtx_ssrc: dict[int, int] = receiver._RTCRtpReceiver__rtx_ssrc  # type: ignore[attr-defined]
    active: dict[int, Any] = receiver._RTCRtpReceiver__active_ssrc  # type: ignore[attr-defined]
    # A simulcast offer names no SSRCs: each layer's is learnt from its RID, and each RTX
    # stream's from the RID it repairs.
    rid_ssrc: dict[str, int] = {}
    nacks: dict[int, NackGenerator] = {}
    retries: dict[int, NackRetry] = {}
    # When each SSRC was last marked active (a datetime per packet cost 2 % of the relay's time;
    # aiortc counts a source active for 10 s after its last packet).
    marked: dict[int, float] = {}

    async def handle_rtp_packet(packet: RtpPacket, arrival_time_ms: int) -> None:
        if not receiver._enabled:
            return
        if arrival_time_ms - marked.get(packet.ssrc, -ACTIVE_MARK_MS) >= ACTIVE_MARK_MS:
            marked[packet.ssrc] = arrival_time_ms
            active[packet.ssrc] = clock.current_datetime()
        codec = codecs.get(packet.payload_type)
        if codec is None:
            return
        statistics = streams.get(packet.ssrc)
        if statistics is None:
            statistics = streams[packet.ssrc] = StreamStatistics(codec.clockRate)
        statistics.add(packet)
        if is_rtx(codec):
            media_ssrc = rtx_ssrc.get(packet.ssrc)
            if media_ssrc is None and packet.extensions.repaired_rtp_stream_id:
                media_ssrc = rid_ssrc.get(packet.extensions.repaired_rtp_stream_id)
                if media_ssrc is not None:
                    rtx_ssrc[packet.ssrc] = media_ssrc
            apt = codec.parameters.get("apt")
            if media_ssrc is None or len(packet.payload) < 2 or apt not in codecs:
                return  # RTX padding (bandwidth probes) carries no packet
            packet = unwrap_rtx(packet, payload_type=apt, ssrc=media_ssrc)
            codec = codecs[apt]
        elif packet.extensions.rtp_stream_id:
            rid_ssrc[packet.extensions.rtp_stream_id] = packet.ssrc
        if repair:
            ssrc = packet.ssrc
            generator = nacks.get(ssrc)
            if generator is None:
                generator = nacks[ssrc] = NackGenerator()
                retries[ssrc] = NackRetry()
            if generator.add(packet):
                await receiver._send_rtcp_nack(ssrc, sorted(generator.missing))
            retry = retries[ssrc]
            if generator.missing or retry.asked:
                lost = retry.due(generator.missing)
                if lost:
                    await receiver._send_rtcp_nack(ssrc, lost)
        await on_packet(packet, codec)

    receiver._handle_rtp_packet = handle_rtp_packet  # type: ignore[method-assign]


class PacketSender:
    """The RTP of one subscriber's `RTCRtpSender`, sent by the relay: packets it has numbered,
    with this subscriber's SSRC, payload type and header extensions (mid, abs-send-time), kept
    for NACKs. The sender itself keeps its RTCP: sender reports, keyframe requests, REMB and
    receiver reports."""

    def __init__(self, sender: RTCRtpSender, history: int = SENDER_HISTORY_PACKETS):
        self.sender = sender
        self.ssrc = sender._ssrc
        self.rtx_ssrc = sender._rtx_ssrc
        self.history: list[tuple[int, bytes] | None] = [None] * history
        self.mask = history - 1
        self.ready = False
        self.payload_type = 0
        self.clock_rate = 90_000
        self.rtx_payload_type: int | None = None
        self.rtx_sequence_number = random_sequence_number()
        # The header extension block before and after the abs-send-time value.
        self.extensions_before = b""
        self.extensions_after = b""
        self.has_abs_send_time = False
        self.sent_packets = 0
        self._parked: asyncio.Event | None = None
        sender._run_rtp = self._run_rtp  # type: ignore[method-assign]
        sender._retransmit = self._retransmit  # type: ignore[method-assign]

    async def _run_rtp(self, codec: Any) -> None:
        sender = self.sender
        sender._RTCRtpSender__rtp_started.set()  # type: ignore[attr-defined]
        self.payload_type = codec.payloadType
        self.clock_rate = codec.clockRate
        self.rtx_payload_type = sender._RTCRtpSender__rtx_payload_type  # type: ignore[attr-defined]
        ids = sender._RTCRtpSender__rtp_header_extensions_map._HeaderExtensionsMap__ids  # type: ignore[attr-defined]
        mid = sender._RTCRtpSender__mid  # type: ignore[attr-defined]
        self._extension_template(ids.abs_send_time, ids.mid, mid)
        self._parked = asyncio.Event()
        self.ready = True
        try:
            await self._parked.wait()
        except asyncio.CancelledError:
            pass
        finally:
            self.ready = False
            sender._RTCRtpSender__rtp_exited.set()  # type: ignore[attr-defined]

    def _extension_template(
        self, abs_send_time_id: int | None, mid_id: int | None, mid: Any
    ) -> None:
        extensions: list[tuple[int, bytes]] = []
        if abs_send_time_id:
            extensions.append((abs_send_time_id, b"\x00\x00\x00"))
        if mid_id and mid:
            extensions.append((mid_id, str(mid).encode()))
        if not extensions:
            return
        profile, value = pack_header_extensions(extensions)
        block = struct.pack("!HH", profile, len(value) // 4) + value
        if abs_send_time_id:
            at = 4 + (1 if profile == ONE_BYTE_PROFILE else 2)
            self.extensions_before, self.extensions_after = block[:at], block[at + 3 :]
            self.has_abs_send_time = True
        else:
            self.extensions_before = block

    async def send(self, marker: bool, seq: int, ts: int, payload: bytes) -> None:
        """Send one packet (dropped while the connection is not up)."""
        if not self.ready:
            return
        first = RTP_VERSION_2 | (EXTENSION_BIT if self.extensions_before else 0)
        parts = [HEADER.pack(first, (marker << 7) | self.payload_type, seq, ts, self.ssrc)]
        if self.has_abs_send_time:
            parts += (self.extensions_before, abs_send_time().to_bytes(3, "big"))
            parts.append(self.extensions_after)
        elif self.extensions_before:
            parts.append(self.extensions_before)
        parts.append(payload)
        data = b"".join(parts)
        self.history[seq & self.mask] = (seq, data)
        sender = self.sender
        sender._RTCRtpSender__ntp_timestamp = ntp_now()  # type: ignore[attr-defined]
        sender._RTCRtpSender__rtp_timestamp = ts  # type: ignore[attr-defined]
        sender._RTCRtpSender__octet_count += len(payload)  # type: ignore[attr-defined]
        sender._RTCRtpSender__packet_count += 1  # type: ignore[attr-defined]
        self.sent_packets += 1
        try:
            await sender.transport._send_rtp(data)
        except ConnectionError:
            pass

    async def _retransmit(self, sequence_number: int) -> None:
        seq = sequence_number
        kept = self.history[seq & self.mask]
        if kept is None or kept[0] != seq or not self.ready:
            return
        data = kept[1]
        if self.rtx_payload_type is not None:
            # RFC 4588: the original sequence number in front of the payload, on the RTX SSRC.
            header_end = 12 + 4 * (data[0] & 0x0F)
            if data[0] & EXTENSION_BIT:
                header_end += 4 + 4 * int.from_bytes(data[header_end + 2 : header_end + 4], "big")
            _, second, _, ts, _ = HEADER.unpack_from(data)
            header = HEADER.pack(
                data[0],
                (second & 0x80) | self.rtx_payload_type,
                self.rtx_sequence_number,
                ts,
                self.rtx_ssrc,
            )
            data = b"".join((header, data[12:header_end], data[2:4], data[header_end:]))
            self.rtx_sequence_number = (self.rtx_sequence_number + 1) & 0xFFFF
        try:
            await self.sender.transport._send_rtp(data)
        except ConnectionError:
            pass
