"""Pictures from the forwarded stream, decoded only when someone captures.

`CineBuffer` keeps the publisher's recent encoded video frames, whole groups of
pictures (each starting at a keyframe), bounded in seconds and bytes, like the
cine memory of an ultrasound machine: "save the last N seconds" works after the
fact, and a still is the newest frame decoded from its keyframe on. A recording
(start .. stop) collects frames the same way, bounded too. Nothing is decoded
until a capture asks: `decode` runs in a worker thread on a copy of the frames.
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import av
import numpy as np
from av.packet import Packet
from av.video.codeccontext import VideoCodecContext

from server.errors import Conflict, PayloadTooLarge
from server.image_limits import SIDE_MAX_PIXELS, size_problem

RTP_VIDEO_CLOCK = 90_000
DECODERS = {"video/vp8": "vp8", "video/h264": "h264"}
# A group of pictures older than this asks the publisher for a keyframe, which bounds
# how many frames a still must decode (and how far back a clip may need to start).
KEYFRAME_EVERY_SECONDS_DEFAULT = 2.0
# On a poor link keyframes take a large share of what the bedside can send (a 720p keyframe is
# worth a second of video at 0.5 Mbit/s, and the frames behind it wait): below this bitrate the
# interval stretches in proportion, up to KEYFRAME_STRETCH_MAX times. Measured at 0.5 Mbit/s
# (load_tests/RESULTS.md): a keyframe every 8 s instead of 2 s cut the expert's freezes by half.
KEYFRAME_FULL_RATE_BPS = 1_500_000
KEYFRAME_STRETCH_MAX = 4.0


@dataclass(frozen=True)
class Frame:
    """One encoded video frame and when it arrived (monotonic seconds)."""

    packet: Packet[Any]
    arrived: float


class CineBuffer:
    """The recent encoded frames of one publisher's video, whole GOPs, bounded."""

    def __init__(
        self,
        codec: str,
        *,
        seconds: float,
        max_bytes: int,
        request_keyframe: Callable[[], None],
        keyframe_every: float = KEYFRAME_EVERY_SECONDS_DEFAULT,
        recording_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if codec not in DECODERS:
            raise ValueError(f"no decoder for {codec}")
        self.codec = codec
        self.seconds = seconds
        self.max_bytes = max_bytes
        self.request_keyframe = request_keyframe
        self.keyframe_every = keyframe_every
        self.clock = clock
        self.gops: collections.deque[list[Frame]] = collections.deque()
        self.bytes = 0
        # A prospective recording: its frames (from a keyframe) and when it started.
        self.recording: list[Frame] | None = None
        self.recording_started = 0.0
        self.recording_bytes = 0
        self.recording_max_bytes = max_bytes
        self.recording_seconds = recording_seconds
        self.recording_overflowed = False

    def add(self, packet: Packet[Any]) -> None:
        """Called for every frame the publisher's source reads (on the event loop: cheap)."""
        now = self.clock()
        frame = Frame(packet, now)
        size = packet.size
        if packet.is_keyframe:
            self.gops.append([frame])
        elif self.gops:
            self.gops[-1].append(frame)
        else:
            self.request_keyframe()  # nothing decodable yet
            return
        self.bytes += size
        self._trim(now)
        if not self.gops:
            return  # the one GOP outgrew the budget: dropped, a keyframe is on its way
        gop_start = self.gops[-1][0].arrived
        if now - gop_start >= self.keyframe_interval(now) and not packet.is_keyframe:
            self.request_keyframe()  # rate-limited by the room
        if self.recording is not None:
            self._record(frame, size)

    def keyframe_interval(self, now: float) -> float:
        """How long a group of pictures may grow: `keyframe_every`, longer on a poor link."""
        span = now - self.gops[0][0].arrived if self.gops else 0.0
        if span < 1.0:
            return self.keyframe_every
        rate = 8 * self.bytes / span
        stretch = min(KEYFRAME_STRETCH_MAX, max(1.0, KEYFRAME_FULL_RATE_BPS / max(rate, 1.0)))
        return self.keyframe_every * stretch

    def _trim(self, now: float) -> None:
        # Keep whole GOPs: drop the oldest while the rest still covers `seconds`.
        while len(self.gops) > 1 and now - self.gops[1][0].arrived >= self.seconds:
            self._drop_oldest()
        while self.bytes > self.max_bytes and len(self.gops) > 1:
            self._drop_oldest()
        if self.bytes > self.max_bytes:
            # One GOP larger than the budget: start again from the next keyframe.
            self._drop_oldest()
            self.request_keyframe()

    def _drop_oldest(self) -> None:
        gop = self.gops.popleft()
        self.bytes -= sum(f.packet.size for f in gop)

    def _record(self, frame: Frame, size: int) -> None:
        assert self.recording is not None
        if not self.recording and not frame.packet.is_keyframe:
            return
        too_long = frame.arrived - self.recording_started > self.recording_seconds
        if too_long or self.recording_bytes + size > self.recording_max_bytes:
            self.recording_overflowed = True
            return
        self.recording.append(frame)
        self.recording_bytes += size

    # What captures take

    def still_frames(self) -> list[Frame]:
        """The newest frame and the frames since its keyframe (decode them all, keep the last)."""
        if not self.gops:
            raise Conflict(
                "no decodable picture from the operator yet; try again in a moment",
                code="no_picture",
            )
        return list(self.gops[-1])

    def last_frames(self, seconds: float) -> tuple[list[Frame], float]:
        """Frames to decode for the last `seconds`, from a keyframe; and the first time to keep."""
        if not self.gops:
            raise Conflict(
                "no decodable picture from the operator yet; try again in a moment",
                code="no_picture",
            )
        newest = self.gops[-1][-1].arrived
        keep_from = newest - seconds
        start = len(self.gops) - 1
        while start > 0 and self.gops[start][0].arrived > keep_from:
            start -= 1
        frames = [f for gop in list(self.gops)[start:] for f in gop]
        return frames, keep_from

    def start_recording(self) -> None:
        if self.recording is not None:
            raise Conflict("a recording is already under way", code="recording_active")
        # Begin with the current GOP so the first frames can be decoded.
        current = list(self.gops[-1]) if self.gops else []
        self.recording = current
        self.recording_bytes = sum(f.packet.size for f in current)
        self.recording_started = self.clock()
        self.recording_overflowed = False

    def stop_recording(self) -> tuple[list[Frame], float, bool]:
        """The recorded frames, the time the recording started, and whether it hit its limit."""
        if self.recording is None:
            raise Conflict("no recording is under way", code="no_recording")
        frames, self.recording = self.recording, None
        self.recording_bytes = 0
        return frames, self.recording_started, self.recording_overflowed


def decode_pictures(
    codec: str, frames: Sequence[Frame], keep_from: float | None = None
) -> Iterator[tuple[np.ndarray, int]]:
    """Decode `frames` (from a keyframe) and yield (RGB picture, RTP timestamp) of those kept.

    `keep_from=None` keeps only the newest picture (a still); otherwise the pictures of
    frames that arrived at `keep_from` or later. A frame the decoder refuses (damaged in
    transit) is skipped; a picture larger than `image_limits` allows is refused. One picture
    at a time: the caller masks and encodes it before the next. Runs in a worker thread.
    """
    context = cast(VideoCodecContext, av.CodecContext.create(DECODERS[codec], "r"))
    # libavcodec refuses a larger picture before allocating it (a stream may say anything).
    context.options = {"max_pixels": str(SIDE_MAX_PIXELS * SIDE_MAX_PIXELS)}
    last = frames[-1].packet if frames else None
    for frame in frames:
        keep = frame.packet is last if keep_from is None else frame.arrived >= keep_from
        try:
            pictures = context.decode(av.Packet(bytes(frame.packet)))
        except av.FFmpegError:
            continue
        for picture in pictures:
            problem = size_problem(picture.width, picture.height)
            if problem is not None:  # within max_pixels, yet too wide or too tall
                raise PayloadTooLarge(f"the operator's video: {problem}", code="image_too_large")
            if keep:
                yield picture.to_ndarray(format="rgb24"), int(frame.packet.pts or 0)


def frame_rate(timestamps: list[int]) -> float:
    """Frames per second from RTP timestamps (median spacing); 30 when it cannot be told."""
    if len(timestamps) < 2:
        return 30.0
    deltas = sorted((b - a) % 2**32 for a, b in itertools.pairwise(timestamps))
    median = deltas[len(deltas) // 2]
    return RTP_VIDEO_CLOCK / median if median else 30.0
