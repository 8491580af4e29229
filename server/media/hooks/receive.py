"""The receive and send path's hooks (1-5, 12 in the package's list): receivers yield encoded
packets, delivered inline; missing packets asked for again; keyframe requests routed upstream."""

from __future__ import annotations

import asyncio
import fractions
import threading
import time
from collections.abc import Callable
from typing import Any

import aiortc
import av
from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc import rtcrtpreceiver as _receiver_module
from aiortc import rtcrtpsender as _sender_module
from aiortc.codecs.base import Decoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import (
    RtpPacket,
)

from server.media.hooks.jitter import MarkerJitterBuffer
from server.media.hooks.transport import SENDER_HISTORY_PACKETS
from server.media.payloads import is_keyframe

AIORTC_VERSION = "1.16.0"
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
