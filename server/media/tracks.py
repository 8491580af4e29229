"""Encoded-frame fan-out: one reader per received track, a bounded queue per subscriber.

A `Source` reads one received track (which yields encoded `Packet`s, see
`hooks/receive.py`) and offers every packet to each attached `ForwardedTrack`. A
forwarded track is what a subscriber's `RTCRtpSender` sends: a bounded queue
that, when it overflows, drops to the next keyframe and asks for one, so a slow
subscriber never grows memory and never gets a broken chain of frames. A
forwarded track outlives its source: when the operator reconnects, the new
source is attached and the track's timestamps carry on monotonically.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.packet import Packet

from server.media.capture import CineBuffer

log = logging.getLogger(__name__)

FORWARD_QUEUE_FRAMES = 60
# What a subscriber was sent is measured over this window (its REMB is compared with it; long
# enough that one keyframe does not make a healthy link look congested).
SENT_RATE_WINDOW_SECONDS = 2.0
# Timestamp step used to bridge a change of source (one frame at 30 fps; one 20 ms Opus frame).
SOURCE_SWITCH_STEP = {"video": 3000, "audio": 960}


class ForwardedTrack(MediaStreamTrack):
    """The encoded frames one subscriber is sent, from whichever source is current."""

    def __init__(self, kind: str, request_keyframe: Callable[[], None]):
        super().__init__()
        self.kind = kind
        # Asks the current source's publisher for a keyframe (rate-limited by the caller).
        self.request_keyframe = request_keyframe
        self.queue: collections.deque[Packet[Any]] = collections.deque()
        self.ready = asyncio.Event()
        # Video after an overflow or a new source: drop until a keyframe arrives.
        self.waiting_for_keyframe = kind == "video"
        # pts offset applied to the current source, and the last pts sent.
        self.offset = 0
        self.last_pts: int | None = None
        self.rebase = False
        # Counters for statistics and tests.
        self.frames_in = 0
        self.frames_dropped = 0
        self.frames_out = 0
        # (time, bytes) of the frames sent in the last SENT_RATE_WINDOW_SECONDS.
        self.sent: collections.deque[tuple[float, int]] = collections.deque()
        self.sent_bytes = 0

    def sent_bps(self, now: float) -> float:
        """Bits per second sent over the last SENT_RATE_WINDOW_SECONDS."""
        while self.sent and self.sent[0][0] < now - SENT_RATE_WINDOW_SECONDS:
            self.sent_bytes -= self.sent.popleft()[1]
        return 8 * self.sent_bytes / SENT_RATE_WINDOW_SECONDS

    def new_source(self) -> None:
        """A different source will feed this track: rebase timestamps, wait for a keyframe."""
        self.rebase = True
        if self.kind == "video":
            self.waiting_for_keyframe = True
            self.request_keyframe()

    def offer(self, packet: Packet[Any]) -> None:
        """Queue a packet from the source (called by the source's reader)."""
        self.frames_in += 1
        if self.waiting_for_keyframe:
            if not packet.is_keyframe:
                self.frames_dropped += 1
                return
            self.waiting_for_keyframe = False
        if len(self.queue) >= FORWARD_QUEUE_FRAMES:
            self.frames_dropped += len(self.queue)
            self.queue.clear()
            if self.kind == "video" and not packet.is_keyframe:
                self.waiting_for_keyframe = True
                self.frames_dropped += 1
                if self.frames_out:
                    # Only a subscriber that reads deserves a keyframe; one whose connection
                    # never came up would otherwise force keyframes on everyone forever.
                    self.request_keyframe()
                return
        self.queue.append(packet)
        self.ready.set()

    async def recv(self) -> Packet[Any]:
        while not self.queue:
            if self.readyState != "live":
                raise MediaStreamError
            self.ready.clear()
            await self.ready.wait()
        packet = self.queue.popleft()
        assert packet.pts is not None
        if self.rebase:
            self.rebase = False
            if self.last_pts is not None:
                self.offset = self.last_pts + SOURCE_SWITCH_STEP[self.kind] - packet.pts
        if self.offset:
            # The packet is shared by every subscriber of the source: shift a copy.
            shifted = av.Packet(bytes(packet))
            shifted.pts = packet.pts + self.offset
            shifted.time_base = packet.time_base
            shifted.is_keyframe = packet.is_keyframe
            packet = shifted
        self.last_pts = packet.pts
        self.frames_out += 1
        now = time.monotonic()
        self.sent.append((now, packet.size))
        self.sent_bytes += packet.size
        self.sent_bps(now)  # keeps the window bounded
        return packet

    def stop(self) -> None:
        super().stop()
        self.ready.set()


class Source:
    """One received track, read by one task and fanned out to the attached forwarded tracks."""

    def __init__(self, kind: str, track: MediaStreamTrack):
        self.kind = kind
        self.track = track
        self.targets: set[ForwardedTrack] = set()
        self.task: asyncio.Task[None] | None = None
        self.frames = 0
        # The publisher's video keeps its recent frames for captures.
        self.cine: CineBuffer | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._read(), name=f"source-{self.kind}")

    def attach(self, target: ForwardedTrack) -> None:
        self.targets.add(target)
        target.new_source()

    def detach(self, target: ForwardedTrack) -> None:
        self.targets.discard(target)

    async def _read(self) -> None:
        try:
            while True:
                packet = await self.track.recv()
                if not isinstance(packet, Packet):
                    continue  # a decoded frame: the forwarding hook is not installed
                self.frames += 1
                if self.cine is not None:
                    try:
                        self.cine.add(packet)
                    except Exception:
                        # Captures may suffer; forwarding to the room must not.
                        log.exception("cine buffer failed; captures are off for this stream")
                        self.cine = None
                for target in list(self.targets):
                    target.offer(packet)
        except MediaStreamError:
            return

    async def stop(self) -> None:
        self.targets.clear()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
