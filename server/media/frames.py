"""A publisher's video frames, put together from the packets the relay forwards, for captures.

The relay forwards packets, not frames; only the cine buffer (`capture.py`) needs whole frames,
and only once per publisher, not per subscriber. A frame is complete when every packet from the
one after the previous frame's last up to its own marker is in (and, for VP8, its first packet
starts a frame). A retransmitted packet may complete a frame late, so later frames wait behind
an incomplete one for up to GIVE_UP_SECONDS; then it is given up, and nothing reaches the cine
buffer until the next key frame (a frame referring to a lost one would not decode).
"""

from __future__ import annotations

import fractions
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
from aiortc.codecs import depayload
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av.packet import Packet

from server.media.rtp import SEQ_MOD, unwrap

GIVE_UP_SECONDS = 0.4
# Frames waiting at most (a key frame of 720p is some 60 packets, a frame of video a few).
PENDING_FRAMES_MAX = 64


@dataclass
class _Frame:
    timestamp: int
    since: float
    # Extended sequence number -> the frame's bytes in that packet (depayloaded).
    parts: dict[int, bytes] = field(default_factory=dict)
    first: int | None = None
    last: int | None = None
    keyframe: bool = False


class FrameAssembler:
    """Frames from one received video stream's packets, handed to `on_frame` in order."""

    def __init__(
        self,
        codec: RTCRtpCodecParameters,
        on_frame: Callable[[Packet[Any]], None],
        clock: Callable[[], float] = time.monotonic,
    ):
        self.codec = codec
        self.vp8 = codec.mimeType.lower() == "video/vp8"
        self.time_base = fractions.Fraction(1, codec.clockRate)
        self.on_frame = on_frame
        self.clock = clock
        self.pending: dict[int, _Frame] = {}  # by RTP timestamp, in arrival order
        self.highest: int | None = None  # extended sequence number
        # The last packet of the previous frame released or given up.
        self.boundary: int | None = None
        self.waiting_for_keyframe = True
        self.frames = 0
        self.frames_dropped = 0

    def add(
        self, seq: int, timestamp: int, marker: bool, payload: bytes, *, starts: bool, key: bool
    ) -> None:
        """One media packet: `starts` if it begins a frame, `key` if it begins a key frame."""
        ext = self._extend(seq)
        if self.boundary is not None and ext <= self.boundary:
            return  # a packet of a frame already released or given up
        now = self.clock()
        frame = self.pending.get(timestamp)
        if frame is None:
            frame = self.pending[timestamp] = _Frame(timestamp, now)
        try:
            frame.parts[ext] = depayload(self.codec, payload) if payload else b""
        except ValueError:
            frame.parts[ext] = b""  # not a frame's bytes; the frame will not decode: give it up
            frame.since = -GIVE_UP_SECONDS
        if starts:
            frame.first = ext
        if key:
            frame.keyframe = True
        if marker:
            frame.last = ext
        self._release(now)

    def _extend(self, seq: int) -> int:
        ext = SEQ_MOD + seq if self.highest is None else unwrap(seq, self.highest)
        self.highest = ext if self.highest is None else max(self.highest, ext)
        return ext

    def _complete(self, frame: _Frame) -> bool:
        if frame.last is None:
            return False
        start = frame.first if self.boundary is None else self.boundary + 1
        if start is None or (self.vp8 and frame.first != start):
            return False
        return all(seq in frame.parts for seq in range(start, frame.last + 1))

    def _release(self, now: float) -> None:
        while self.pending:
            timestamp, oldest = next(iter(self.pending.items()))
            if self._complete(oldest):
                del self.pending[timestamp]
                assert oldest.last is not None
                self.boundary = oldest.last
                self._deliver(oldest)
            elif len(self.pending) > PENDING_FRAMES_MAX or (
                len(self.pending) > 1 and now - oldest.since > GIVE_UP_SECONDS
            ):
                del self.pending[timestamp]
                self._give_up(oldest)
            else:
                return

    def _give_up(self, frame: _Frame) -> None:
        self.frames_dropped += 1
        self.waiting_for_keyframe = True
        if frame.last is not None:
            self.boundary = frame.last
        else:  # where it ended is not known: just before the next frame's first packet
            following = min(min(f.parts) for f in self.pending.values()) if self.pending else None
            if following is not None:
                self.boundary = following - 1

    def _deliver(self, frame: _Frame) -> None:
        if self.waiting_for_keyframe and not frame.keyframe:
            self.frames_dropped += 1
            return
        self.waiting_for_keyframe = False
        packet = av.Packet(b"".join(frame.parts[seq] for seq in sorted(frame.parts)))
        packet.pts = packet.dts = frame.timestamp
        packet.time_base = self.time_base
        packet.is_keyframe = frame.keyframe
        self.frames += 1
        self.on_frame(packet)
