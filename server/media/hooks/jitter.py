"""The jitter buffer swapped into the relay's receivers (hook 2): a video frame released at its
marker bit, audio at once, a frame with a hole given up after GIVE_UP_SECONDS."""

from __future__ import annotations

import time
from collections.abc import Callable

from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import (
    RtpPacket,
)

VIDEO_JITTER_CAPACITY_PACKETS = 512
AUDIO_JITTER_CAPACITY_PACKETS = 16
# A video frame still incomplete this long after later packets arrived is given up.
GIVE_UP_SECONDS = 0.4


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
