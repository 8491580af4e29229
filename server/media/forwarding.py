"""The aiortc hook: received tracks yield encoded frames, so they are forwarded, not transcoded.

This module reaches into aiortc internals; it is the only one that does. It
depends on aiortc == 1.16.0 (pinned in pyproject), and
`test_the_forwarding_hook_still_fits_aiortc` (tests/test_media_relay.py) fails if any of
these assumptions stops holding:

1. `aiortc.rtcrtpreceiver.decoder_worker` builds its decoder through the module
   global `get_decoder(codec)` and passes what `decoder.decode(jitter_frame)`
   returns to the track's queue. We replace that global with a factory whose
   decoder returns the jitter buffer's encoded frame as an `av.Packet`
   (pts = RTP timestamp, time base 1/clock rate): the received track then yields
   packets, and `RTCRtpSender` packs packets without encoding them.
2. The receiver's jitter buffer is `RTCRtpReceiver._RTCRtpReceiver__jitter_buffer`.
   The stock one releases a frame only when the next frame's first packet
   arrives (a frame time of delay per hop) and prefetches 4 audio packets
   (80 ms). We swap in one that releases a video frame at its marker bit and
   every audio packet at once.
3. A sender asks its own encoder for a keyframe through `RTCRtpSender._send_keyframe()`
   when a subscriber sends PLI/FIR; we route that to the publisher instead.
4. `RTCRtpReceiver._send_rtcp_pli(media_ssrc)` sends a PLI upstream.
5. The receiver hands complete frames to its decoder thread with
   `self._RTCRtpReceiver__decoder_queue.put((codec, frame))` from the event loop,
   `put(None)` to stop, and the thread reads that queue with `get()`. For the
   relay's own receivers we replace that queue with one that puts the packet
   straight on the track's queue: no thread hop per frame (the idle thread stays
   parked until the receiver stops).

The decoder factory is process-wide: in this process every aiortc receiver yields
packets. Code that needs pictures (captures, tests) decodes packets itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import fractions
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import aiortc
import av
from aiortc import RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc import rtcrtpreceiver as _receiver_module
from aiortc import rtcrtpsender as _sender_module
from aiortc.codecs.base import Decoder
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpparameters import RTCRtcpFeedback, RTCRtpCodecParameters
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpSrPacket,
    RtpPacket,
    pack_remb_fci,
    unpack_remb_fci,
)
from aiortc.sdp import MediaDescription

from server.media.congestion import TRANSPORT_CC_URI

AIORTC_VERSION = "1.16.0"
VIDEO_JITTER_CAPACITY_PACKETS = 512
AUDIO_JITTER_CAPACITY_PACKETS = 16
# A video frame still incomplete this long after later packets arrived is given up.
GIVE_UP_SECONDS = 0.4
# A missing packet is asked for again this long after the last time, this many times in all
# (within the give-up time: later, its frame is gone).
NACK_RETRY_SECONDS = 0.1
NACK_TRIES = 4


class PassthroughDecoder(Decoder):
    """A 'decoder' that hands the encoded frame on as an `av.Packet`."""

    def __init__(self, codec: RTCRtpCodecParameters):
        self.mime_type = codec.mimeType.lower()
        self.time_base = fractions.Fraction(1, codec.clockRate)

    def decode(self, encoded_frame: JitterFrame) -> list[Any]:
        packet = av.Packet(encoded_frame.data)
        packet.pts = encoded_frame.timestamp
        packet.dts = encoded_frame.timestamp
        packet.time_base = self.time_base
        packet.is_keyframe = is_keyframe(self.mime_type, encoded_frame.data)
        return [packet]


def _passthrough_get_decoder(codec: RTCRtpCodecParameters) -> Decoder:
    return PassthroughDecoder(codec)


def install() -> None:
    """Make every aiortc receiver in this process yield encoded packets (idempotent)."""
    if aiortc.__version__ != AIORTC_VERSION:
        raise RuntimeError(
            f"probelink's forwarding hook is written for aiortc {AIORTC_VERSION}, "
            f"not {aiortc.__version__}"
        )
    _receiver_module.get_decoder = _passthrough_get_decoder  # type: ignore[attr-defined]
    _sender_module.RTP_HISTORY_SIZE = SENDER_HISTORY_PACKETS  # type: ignore[attr-defined]


VP8_START_CODE = b"\x9d\x01\x2a"


def is_keyframe(mime_type: str, data: bytes) -> bool:
    """Whether an encoded frame can be decoded on its own: a VP8 key frame (P bit clear and the
    start code that follows its frame tag, RFC 6386 9.1), an H.264 IDR with its parameter set.

    Strict, so that the tail of a frame whose start was lost is not taken for a keyframe.
    """
    if not data:
        return False
    if mime_type == "video/vp8":
        return data[0] & 0x01 == 0 and data[3:6] == VP8_START_CODE
    if mime_type == "video/h264":
        types = _h264_nal_types(data)
        return 5 in types and 7 in types
    return True  # audio frames stand alone


def _h264_nal_types(data: bytes) -> list[int]:
    types = []
    start = data.find(b"\x00\x00\x01")
    while start != -1 and start + 3 < len(data):
        types.append(data[start + 3] & 0x1F)
        start = data.find(b"\x00\x00\x01", start + 3)
    return types


class MarkerJitterBuffer(JitterBuffer):
    """Releases a video frame as soon as its last (marker) packet is in, audio at once.

    A video frame with a hole (a packet missing while a later one has arrived) is given up once
    that packet has been missing for `GIVE_UP_SECONDS`: its packets are dropped up to the next
    packet known to start a frame (the one after a marker), a keyframe is asked for (PLI), and
    the next frame released is marked `after_gap` (frames may refer to the lost one: nothing is
    forwarded until a keyframe). A frame that is only slow (no hole) is never given up. Broken
    frames queued behind it are given up in the same pass once their own holes are as old. When
    a retransmission completes a frame, the complete frames queued behind it are released
    together (`add` returns the first, `ready` holds the others).
    """

    def __init__(self, *, is_video: bool, clock: Callable[[], float] = time.monotonic):
        capacity = VIDEO_JITTER_CAPACITY_PACKETS if is_video else AUDIO_JITTER_CAPACITY_PACKETS
        super().__init__(capacity=capacity, prefetch=0, is_video=is_video)
        self.clock = clock
        self.ready: list[JitterFrame] = []
        self.gap = False
        self.highest: int | None = None
        # Sequence number -> when it was first known to be missing (a later one arrived).
        self.missing_since: dict[int, float] = {}

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        now = self.clock()
        if self._is_video:
            self._note_missing(packet.sequence_number, now)
        pli_flag, frame = super().add(packet)  # a reset or an overflow drops whole frames
        if pli_flag and self._is_video:
            self.gap = True
            if self._origin == packet.sequence_number:  # reset: the sender's numbers jumped back
                self.highest = packet.sequence_number
                self.missing_since.clear()
            self._forget_missing_before(self._origin)
        frames = [frame] if frame is not None else []
        while (complete := self._complete_frame()) is not None:
            frames.append(complete)
        while self._is_video and (hole := self._first_hole()) is not None:
            if now - self.missing_since[hole] <= GIVE_UP_SECONDS:
                break
            self._drop_broken_frame()
            self.gap = pli_flag = True
            while (complete := self._complete_frame()) is not None:
                frames.append(complete)
        for f in frames:
            f.after_gap = self.gap  # type: ignore[attr-defined]
            self.gap = False
        self.ready.extend(frames[1:])
        return pli_flag, frames[0] if frames else None

    def _note_missing(self, seq: int, now: float) -> None:
        if self.highest is None:
            self.highest = seq
            return
        ahead = (seq - self.highest) & 0xFFFF
        if 0 < ahead < 0x8000:
            for skipped in range(1, min(ahead, self.capacity)):
                self.missing_since.setdefault((self.highest + skipped) & 0xFFFF, now)
            self.highest = seq
        else:
            self.missing_since.pop(seq, None)
        if len(self.missing_since) > self.capacity:
            self._forget_missing_before(self._origin)

    def _first_hole(self) -> int | None:
        """The first missing sequence number of the frames waiting, if a later one is in."""
        if self._origin is None:
            return None
        for count in range(self.capacity):
            seq = (self._origin + count) & 0xFFFF
            if self._packets[seq % self.capacity] is None:
                return seq if seq in self.missing_since else None
        return None

    def _complete_frame(self) -> JitterFrame | None:
        """The frame at the origin, if all its packets are in and the last has the marker."""
        if self._origin is None:
            return None
        packets: list[RtpPacket] = []
        for count in range(self.capacity):
            packet = self._packets[(self._origin + count) % self.capacity]
            if packet is None or (packets and packet.timestamp != packets[0].timestamp):
                return None
            packets.append(packet)
            if packet.marker or not self._is_video:
                self.remove(count + 1)
                data = b"".join(p._data for p in packets)  # type: ignore[attr-defined]
                return JitterFrame(data=data, timestamp=packets[0].timestamp)
        return None

    def _drop_broken_frame(self) -> None:
        """Drop packets from the origin through its first hole, and on until a packet that is
        known to start a frame (its predecessor is in and carries the marker) or the end of what
        arrived."""
        assert self._origin is not None
        previous_ends_frame = False
        past_hole = False
        for _ in range(self.capacity):
            packet = self._packets[self._origin % self.capacity]
            if packet is None:
                if self._origin not in self.missing_since:
                    break  # nothing after this has arrived
                past_hole = True
                previous_ends_frame = False
            elif past_hole and previous_ends_frame:
                break
            else:
                previous_ends_frame = bool(packet.marker)
            self.remove(1)
        self._forget_missing_before(self._origin)

    def _forget_missing_before(self, origin: int | None) -> None:
        """Stop waiting for sequence numbers the buffer has moved past."""
        if origin is None:
            return
        for seq in list(self.missing_since):
            if 0 < (origin - seq) & 0xFFFF < 0x8000:
                del self.missing_since[seq]


def use_low_latency_jitter_buffer(receiver: RTCRtpReceiver, kind: str) -> MarkerJitterBuffer:
    """Swap the receiver's jitter buffer for one that adds no frame of delay."""
    jitter = MarkerJitterBuffer(is_video=kind == "video")
    receiver._RTCRtpReceiver__jitter_buffer = jitter  # type: ignore[attr-defined]
    return jitter


class InlineDelivery:
    """Stands in for a receiver's decoder queue: frames go straight to the track as packets.

    After a gap (a frame given up), video frames are dropped until a keyframe: forwarding a
    frame that refers to a lost one would corrupt every subscriber's picture until the next.
    """

    def __init__(
        self, track_queue: asyncio.Queue[Any], jitter: MarkerJitterBuffer, mapper: Any
    ) -> None:
        self.track_queue = track_queue
        self.jitter = jitter
        self.mapper = mapper
        self.stopped = threading.Event()
        self.decoders: dict[str, PassthroughDecoder] = {}
        self.waiting_for_keyframe = False
        self.frames_dropped = 0

    def put(self, item: tuple[RTCRtpCodecParameters, JitterFrame] | None) -> None:
        if item is None:
            self.stopped.set()  # the parked thread wakes, ends the track and exits
            return
        codec, frame = item
        self._deliver(codec, frame)
        # Frames completed together with it (the receiver has mapped the first one's timestamp).
        ready, self.jitter.ready = self.jitter.ready, []
        for more in ready:
            more.timestamp = self.mapper.map(more.timestamp)
            self._deliver(codec, more)

    def _deliver(self, codec: RTCRtpCodecParameters, frame: JitterFrame) -> None:
        decoder = self.decoders.get(codec.mimeType)
        if decoder is None:
            decoder = self.decoders[codec.mimeType] = PassthroughDecoder(codec)
        for packet in decoder.decode(frame):
            if getattr(frame, "after_gap", False) and decoder.mime_type.startswith("video/"):
                self.waiting_for_keyframe = True
            if self.waiting_for_keyframe:
                if not packet.is_keyframe:
                    self.frames_dropped += 1
                    continue
                self.waiting_for_keyframe = False
            self.track_queue.put_nowait(packet)

    def get(self) -> None:
        self.stopped.wait()
        return None


class NackRetry:
    """Asks again for each packet still missing NACK_RETRY_SECONDS after it was last asked for,
    up to NACK_TRIES times in all, and stops asking for those the jitter buffer gave up.

    aiortc's receiver asks again only when a new gap appears, so on a steady link a lost
    retransmission stalled its frame until it was given up; and it went on asking for packets
    already given up, whose late retransmission then reset the buffer.
    """

    def __init__(
        self,
        receiver: RTCRtpReceiver,
        jitter: MarkerJitterBuffer,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.receiver = receiver
        self.jitter = jitter
        self.clock = clock
        # Sequence number -> (times asked, when last asked).
        self.asked: dict[int, tuple[int, float]] = {}

    def due(self, missing: set[int]) -> list[int]:
        """The sequence numbers to ask for again now (updates `missing` and the counts)."""
        origin = self.jitter._origin
        if origin is not None:
            missing.difference_update(
                [seq for seq in missing if 0 < (origin - seq) & 0xFFFF < 0x8000]
            )
        now = self.clock()
        # A number seen missing for the first time has just been asked for by aiortc.
        self.asked = {seq: self.asked.get(seq, (1, now)) for seq in missing}
        lost = sorted(
            seq
            for seq, (tries, at) in self.asked.items()
            if tries < NACK_TRIES and now - at >= NACK_RETRY_SECONDS
        )
        for seq in lost:
            self.asked[seq] = (self.asked[seq][0] + 1, now)
        return lost

    async def after_packet(self, packet: RtpPacket) -> None:
        generator = self.receiver._RTCRtpReceiver__nack_generator  # type: ignore[attr-defined]
        if generator is None or not (generator.missing or self.asked):
            return
        lost = self.due(generator.missing)
        if lost:
            rtx = self.receiver._RTCRtpReceiver__rtx_ssrc  # type: ignore[attr-defined]
            ssrc = rtx.get(packet.ssrc, packet.ssrc)
            await self.receiver._send_rtcp_nack(ssrc, lost)


def prepare_receiver(receiver: RTCRtpReceiver, kind: str) -> None:
    """Low-latency jitter buffer, inline delivery of encoded frames and NACK retries for a
    relay receiver."""
    jitter = use_low_latency_jitter_buffer(receiver, kind)
    track = receiver.track
    mapper = receiver._RTCRtpReceiver__timestamp_mapper  # type: ignore[attr-defined]
    receiver._RTCRtpReceiver__decoder_queue = InlineDelivery(track._queue, jitter, mapper)  # type: ignore[attr-defined]
    if kind == "video":
        retry = NackRetry(receiver, jitter)
        handle = receiver._handle_rtp_packet

        async def handle_rtp_packet(packet: RtpPacket, arrival_time_ms: int) -> None:
            await handle(packet, arrival_time_ms)
            await retry.after_packet(packet)

        receiver._handle_rtp_packet = handle_rtp_packet  # type: ignore[method-assign]


def on_keyframe_request(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Call `callback` instead of the sender's own encoder when its peer asks for a keyframe."""
    sender._send_keyframe = callback  # type: ignore[method-assign]


async def request_keyframe(receiver: RTCRtpReceiver) -> None:
    """Send a PLI for every source the receiver has heard from."""
    for source in receiver.getSynchronizationSources():
        await receiver._send_rtcp_pli(source.source)


# Congestion feedback (see congestion.py): the hooks it needs from aiortc.
#
# 6. The answer's header extensions and codecs are `transceiver._headerExtensions` and
#    `transceiver._codecs`, set by `setRemoteDescription` and read by `createAnswer` (and by the
#    receiver's parameters when the connection starts). aiortc offers no transport-wide
#    congestion control, so the publisher's answer gets it here, from what its offer proposed.
# 7. Every received RTP packet of a DTLS transport passes through
#    `transport._rtp_router.route_rtp(packet)`, parsed with that transport's header extension
#    map, which knows the transport-wide sequence number once it is negotiated (aiortc's `rtp.py`
#    parses it). Padding-only probes pass there too, even when no receiver takes them.
# 8. A video receiver feeds `RTCRtpReceiver._RTCRtpReceiver__remote_bitrate_estimator` and sends
#    its REMB; set to None, it sends none (the relay sends its own).
# 9. `RTCRtpSender._handle_rtcp_packet(packet)` gets each RTCP packet for the sender: a
#    subscriber's REMB (`RtcpPsfbPacket`, fmt 15) and receiver reports (`reports`, by `ssrc`,
#    with `fraction_lost`; the sender's own SSRC is `_ssrc`) are read there.
# 10. A sender keeps its last `rtcrtpsender.RTP_HISTORY_SIZE` packets to answer NACKs (keyed by
#     sequence number modulo that size).
# 11. The ICE connection (`receiver.transport.transport._connection`, aioice) reads datagrams in
#     its `_protocols`' `datagram_received(data, addr)`, one per socket read, through an asyncio
#     datagram transport whose socket the kernel timestamps (SIOCGSTAMPNS).
# 12. Loss repair: the receiver's `_RTCRtpReceiver__nack_generator.missing` holds the sequence
#     numbers still missing, `_send_rtcp_nack(ssrc, lost)` asks for them, `__rtx_ssrc` maps an RTX
#     SSRC to its media SSRC, and `__timestamp_mapper.map` is applied to each frame's timestamp
#     before the decoder queue (`InlineDelivery` applies it to the frames it releases itself).

ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
# Packets a subscriber's sender keeps for retransmission: a 720p keyframe and more than a
# second of video at 2.5 Mbit/s (aiortc keeps 128).
SENDER_HISTORY_PACKETS = 512


def negotiate_transport_cc(
    transceiver: RTCRtpTransceiver, offered: MediaDescription, start_kbps: int
) -> bool:
    """Answer an offer of transport-wide congestion feedback (False: the offer had none).

    The answer also asks the browser to start its encoder at `start_kbps` (Chromium's
    `x-google-start-bitrate`) rather than 300 kbit/s, too little for an ultrasound picture.
    """
    extension = next((x for x in offered.rtp.headerExtensions if x.uri == TRANSPORT_CC_URI), None)
    if extension is None:
        return False
    # The relay reads arrival times from transport-wide sequence numbers, not abs-send-time.
    transceiver._headerExtensions = [
        x
        for x in transceiver._headerExtensions
        if x.uri not in (TRANSPORT_CC_URI, ABS_SEND_TIME_URI)
    ] + [extension]
    feedback = RTCRtcpFeedback(type="transport-cc")
    offered_feedback = {c.payloadType for c in offered.rtp.codecs if feedback in c.rtcpFeedback}
    for codec in transceiver._codecs:
        if codec.mimeType.lower() == "video/rtx":
            continue
        if codec.payloadType in offered_feedback and feedback not in codec.rtcpFeedback:
            codec.rtcpFeedback.append(feedback)
        codec.parameters["x-google-start-bitrate"] = start_kbps
    return True


def on_transport_sequence(
    receiver: RTCRtpReceiver, callback: Callable[[int, int, int], None]
) -> None:
    """Call `callback(transport_sequence_number, ssrc, arrival_us)` for every RTP packet that
    reaches the receiver's transport carrying one; the receiver's own REMB is switched off.

    Call it once the answer is set (the ICE sockets exist then). The arrival time is the
    kernel's receive timestamp of the datagram (`SIOCGSTAMPNS`, wall clock, microseconds), so
    that the time a busy event loop takes to read it is not mistaken for queueing on the link:
    the sender's estimator reads growing delay as congestion. Where the kernel gives none, the
    time the datagram was read.
    """
    receiver._RTCRtpReceiver__remote_bitrate_estimator = None  # type: ignore[attr-defined]
    arrivals: dict[int, int] = {}
    connection = receiver.transport.transport._connection
    for protocol in getattr(connection, "_protocols", []):
        _stamp_datagrams(protocol, arrivals)
    router = receiver.transport._rtp_router
    route = router.route_rtp

    def route_rtp(packet: RtpPacket) -> Any:
        arrival = arrivals.pop((packet.ssrc << 16) | packet.sequence_number, None)
        seq = packet.extensions.transport_sequence_number
        if seq is not None:
            callback(seq, packet.ssrc, arrival or time.time_ns() // 1000)
        return route(packet)

    router.route_rtp = route_rtp  # type: ignore[method-assign]


SIOCGSTAMPNS = 0x8907  # linux/sockios.h: timestamp of the last datagram read (timespec)
STAMPED_DATAGRAMS_MAX = 4096


def _stamp_datagrams(protocol: Any, arrivals: dict[int, int]) -> None:
    """Record the kernel's arrival time of each RTP datagram the ICE protocol reads, by SSRC and
    sequence number (both in clear in SRTP)."""
    sock = getattr(getattr(protocol, "transport", None), "get_extra_info", lambda _: None)("socket")
    if sock is None:
        return
    fd = sock.fileno()
    received = protocol.datagram_received

    def datagram_received(data: bytes, addr: Any) -> None:
        # RTP, not RTCP (packet types 192-223) nor STUN or DTLS.
        if len(data) >= 12 and 128 <= data[0] < 192 and not 192 <= data[1] <= 223:
            if len(arrivals) >= STAMPED_DATAGRAMS_MAX:
                arrivals.clear()  # never routed (not SRTP we can read): forget them
            try:
                sec, nsec = struct.unpack("qq", fcntl.ioctl(fd, SIOCGSTAMPNS, bytes(16)))
                arrival = sec * 1_000_000 + nsec // 1000
            except OSError:
                arrival = time.time_ns() // 1000
            ssrc = int.from_bytes(data[8:12], "big")
            arrivals[(ssrc << 16) | int.from_bytes(data[2:4], "big")] = arrival
        received(data, addr)

    protocol.datagram_received = datagram_received


def rtcp_sender_ssrc(receiver: RTCRtpReceiver) -> int | None:
    """The SSRC the receiver's RTCP is sent from (None before the connection starts)."""
    ssrc: int | None = receiver._RTCRtpReceiver__rtcp_ssrc  # type: ignore[attr-defined]
    return ssrc


async def send_rtcp(receiver: RTCRtpReceiver, data: bytes) -> None:
    """Send an RTCP packet (already serialized) on the receiver's transport."""
    with contextlib.suppress(ConnectionError):
        await receiver.transport._send_rtp(data)


def remb(sender_ssrc: int, media_ssrc: int, bitrate_bps: int) -> bytes:
    """A receiver-estimated maximum bitrate packet for the publisher's stream."""
    return bytes(
        RtcpPsfbPacket(
            fmt=RTCP_PSFB_APP,
            ssrc=sender_ssrc,
            media_ssrc=0,
            fci=pack_remb_fci(bitrate_bps, [media_ssrc]),
        )
    )


def on_receiver_reports(
    sender: RTCRtpSender,
    on_estimate: Callable[[int], None],
    on_loss: Callable[[float], None],
) -> None:
    """Call `on_estimate(bitrate_bps)` with each REMB the sender's peer (a subscriber) reports,
    and `on_loss(fraction)` with each receiver report's fraction lost of what the sender sent."""
    handle = sender._handle_rtcp_packet

    async def handle_rtcp_packet(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            with contextlib.suppress(ValueError):
                on_estimate(unpack_remb_fci(packet.fci)[0])
        elif isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            for report in packet.reports:
                if report.ssrc == sender._ssrc:
                    on_loss(report.fraction_lost / 256)
        await handle(packet)

    sender._handle_rtcp_packet = handle_rtcp_packet  # type: ignore[method-assign]
