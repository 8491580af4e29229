"""Packet fan-out: one `Source` per received track, one `Forwarder` per subscriber's section.

The relay's receivers hand over each RTP packet as it arrives (`hooks/packets.py`). Its `Source`
works out once what the packet says about its frame (`rtp.py`), gives the publisher's video to
the cine buffer as frames (`frames.py`), and offers the packet to each attached `Forwarder`,
which numbers it for its subscriber (`Rewriter`) and sends it at once (`PacketSender`): no
queue, no task, no frame reassembly or re-packetizing per subscriber. A simulcast publisher's
layers all arrive at one source; each forwarder sends its subscriber one of them (`layers.py`;
the room chooses which) and the cine buffer takes the largest. A subscriber never grows
memory: what the network cannot take is lost as any UDP is, and repaired or skipped by its own
NACKs and keyframe requests. A forwarder outlives its source: when the operator reconnects, the
new source is attached and the subscriber's numbering carries on from its first key frame.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from server.media.capture import CineBuffer
from server.media.congestion import DownlinkLimit
from server.media.frames import FrameAssembler
from server.media.hooks.packets import PacketSender
from server.media.layers import LAYER_IDLE_SECONDS, LayerChoice, Layers
from server.media.rtp import (
    Rewriter,
    Vp8Descriptor,
    h264_starts_keyframe,
    rewrite_vp8,
    vp8_descriptor,
    vp8_keyframe_size,
)

log = logging.getLogger(__name__)

# What a subscriber was sent is measured over this window (its REMB is compared with it; long
# enough that one keyframe does not make a healthy link look congested).
SENT_RATE_WINDOW_SECONDS = 2.0
# A video subscriber waiting for a key frame asks again this often (the room rate-limits).
KEYFRAME_ASK_AGAIN_SECONDS = 1.0
CLOCK_RATES = {"video": 90_000, "audio": 48_000}
# A video source silent this long and back asks for a keyframe at once.
RESUME_GAP_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class Arrival:
    """A received packet and what it says about its frame, worked out once for all."""

    packet: RtpPacket
    descriptor: Vp8Descriptor | None
    keyframe_start: bool
    starts_frame: bool
    padding_only: bool


class Forwarder:
    """The packets one subscriber is sent on one of its sections, from whichever source is
    current."""

    def __init__(
        self,
        kind: str,
        sender: PacketSender,
        request_keyframe: Callable[[int | None], None],
        *,
        limits_publisher: bool = False,
    ):
        self.kind = kind
        self.video = kind == "video"
        self.sender = sender
        # Asks the current source's publisher for a keyframe of one SSRC (None: of every one),
        # rate-limited by the caller.
        self.request_keyframe = request_keyframe
        # What this subscriber's downlink carries, and which simulcast layer it is sent; an
        # expert's congested downlink may lower the publisher's own rate (`feedback.py`).
        self.downlink = DownlinkLimit()
        self.layer = LayerChoice()
        self.limits_publisher = limits_publisher
        self.rewriter = Rewriter(CLOCK_RATES[kind], video=self.video)
        self.asked_at = 0.0
        # Counters for statistics and tests.
        self.packets_in = 0
        self.packets_out = 0
        self.frames_out = 0
        # (time, bytes) sent in the last SENT_RATE_WINDOW_SECONDS.
        self.sent: collections.deque[tuple[float, int]] = collections.deque()
        self.sent_bytes = 0

    def sent_bps(self, now: float) -> float:
        """Bits per second sent over the last SENT_RATE_WINDOW_SECONDS."""
        while self.sent and self.sent[0][0] < now - SENT_RATE_WINDOW_SECONDS:
            self.sent_bytes -= self.sent.popleft()[1]
        return 8 * self.sent_bytes / SENT_RATE_WINDOW_SECONDS

    def new_source(self, ssrc: int | None = None) -> None:
        """Another source (`ssrc`, or any other) will feed this subscriber: from its first key
        frame (video)."""
        self.rewriter.new_source(ssrc)
        if self.video and self.rewriter.waiting:
            self.asked_at = time.monotonic()
            self.request_keyframe(ssrc)

    def switch_to(self, ssrc: int) -> None:
        """Send this simulcast layer from its next key frame (unless it is already under way)."""
        rewriter = self.rewriter
        if rewriter.waiting:
            if rewriter.wanted == ssrc:
                return
        elif rewriter.ssrc == ssrc:
            return
        self.new_source(ssrc)

    def ask_keyframe(self) -> None:
        """The subscriber asked for a keyframe: of the layer it is sent, or waits for."""
        rewriter = self.rewriter
        self.request_keyframe(rewriter.wanted if rewriter.waiting else rewriter.ssrc)

    async def forward(self, arrival: Arrival, now: float) -> None:
        self.packets_in += 1
        if not self.sender.ready:
            return  # its connection is not up yet
        packet = arrival.packet
        rewriter = self.rewriter
        rewriter.clock_rate = self.sender.clock_rate
        mapped = rewriter.map(
            packet.ssrc,
            packet.sequence_number,
            packet.timestamp,
            marker=bool(packet.marker),
            padding_only=arrival.padding_only,
            keyframe_start=arrival.keyframe_start,
            now=now,
            descriptor=arrival.descriptor,
        )
        if mapped is None:
            if rewriter.waiting and self.video and now - self.asked_at > KEYFRAME_ASK_AGAIN_SECONDS:
                self.asked_at = now
                self.request_keyframe(rewriter.wanted)
            return
        payload = packet.payload
        descriptor = arrival.descriptor
        if descriptor is not None and (mapped.picture_id >= 0 or mapped.tl0 >= 0):
            payload = rewrite_vp8(payload, descriptor, mapped.picture_id, mapped.tl0)
        await self.sender.send(
            bool(packet.marker), mapped.sequence_number, mapped.timestamp, payload
        )
        self.packets_out += 1
        if packet.marker or not self.video:
            self.frames_out += 1
        size = len(payload)
        self.sent.append((now, size))
        self.sent_bytes += size
        if self.sent[0][0] < now - SENT_RATE_WINDOW_SECONDS:
            self.sent_bps(now)  # keeps the window bounded


class Source:
    """One received track's packets, offered to the attached forwarders as they arrive."""

    def __init__(self, kind: str):
        self.kind = kind
        self.targets: tuple[Forwarder, ...] = ()
        self.frames = 0
        # The publisher's video keeps its recent frames for captures.
        self.cine: CineBuffer | None = None
        self.assembler: FrameAssembler | None = None
        # Video: its simulcast layers (one, without simulcast), and the largest, which the cine
        # takes and whose frames are counted.
        self.layers = Layers() if kind == "video" else None
        self.top_ssrc: int | None = None
        # Asks the publisher for a keyframe of an SSRC whose packets resume after a gap (set by
        # the room for the publisher's video).
        self.on_resume: Callable[[int], None] | None = None
        self.stopped = False

    def attach(self, target: Forwarder) -> None:
        if target not in self.targets:
            self.targets = (*self.targets, target)
        top = self.layers.top(time.monotonic()) if self.layers is not None else None
        target.new_source(top.ssrc if top is not None else None)

    def detach(self, target: Forwarder) -> None:
        self.targets = tuple(t for t in self.targets if t is not target)

    async def on_packet(self, packet: RtpPacket, codec: RTCRtpCodecParameters) -> None:
        """Called by the receiver for every media packet (RTX unwrapped), in arrival order."""
        if self.stopped:
            return
        payload = packet.payload
        mime = codec.mimeType.lower()
        descriptor = vp8_descriptor(payload) if mime == "video/vp8" else None
        if descriptor is not None:
            starts, key = descriptor.starts_frame, descriptor.keyframe
        elif mime == "video/h264":
            key = h264_starts_keyframe(payload)
            starts = key
        else:
            starts = key = self.kind == "audio"
        now = time.monotonic()
        layers = self.layers
        if layers is not None:
            layer = layers.packet(packet.ssrc, packet.extensions.rtp_stream_id, len(payload), now)
            if layer.silence > RESUME_GAP_SECONDS and self.on_resume is not None:
                # The link came back (or the layer resumed): whatever each subscriber missed,
                # it will need a keyframe; ask now rather than after its own NACKs time out.
                self.on_resume(packet.ssrc)
            if key and descriptor is not None:
                size = vp8_keyframe_size(payload, descriptor)
                if size is not None:
                    layer.width, layer.height = size
        top = layers is None or self._is_top(packet.ssrc, now)
        if top and (packet.marker or self.kind == "audio"):
            self.frames += 1
        if top and self.cine is not None and payload:
            self._to_cine(packet, codec, starts, key)
        arrival = Arrival(packet, descriptor, key, starts, not payload)
        for target in self.targets:
            try:
                await target.forward(arrival, now)
            except Exception:
                # One subscriber's failure must not stop the others, nor the publisher's stream.
                log.exception("forwarding to a subscriber failed; it is detached")
                self.detach(target)

    def _is_top(self, ssrc: int, now: float) -> bool:
        """Whether this SSRC is the largest layer's: the first one seen, until a larger one has
        said its size (in a key frame) and been sending steadily, or while it is idle."""
        if ssrc == self.top_ssrc:
            return True
        assert self.layers is not None
        layers = self.layers.by_ssrc
        current = layers.get(self.top_ssrc) if self.top_ssrc is not None else None
        if (
            current is None
            or now - current.last_at > LAYER_IDLE_SECONDS
            or (layers[ssrc].area > current.area and layers[ssrc].steady(now))
        ):
            # The cine buffer takes this layer from its next key frame: its assembler starts again.
            self.top_ssrc = ssrc
            self.assembler = None
            return True
        return False

    def _to_cine(
        self, packet: RtpPacket, codec: RTCRtpCodecParameters, starts: bool, key: bool
    ) -> None:
        cine = self.cine
        assert cine is not None
        try:
            if self.assembler is None:
                self.assembler = FrameAssembler(codec, cine.add)
            self.assembler.add(
                packet.sequence_number,
                packet.timestamp,
                bool(packet.marker),
                packet.payload,
                starts=starts,
                key=key,
            )
        except Exception:
            # Captures may suffer; forwarding to the room must not.
            log.exception("cine buffer failed; captures are off for this stream")
            self.cine = None

    def stop(self) -> None:
        self.stopped = True
        self.targets = ()
