"""RTP packets as the relay forwards them, one at a time (no I/O).

What a packet says about its frame (the VP8 payload descriptor, RFC 7741; H.264 NAL types,
RFC 6184), and `Rewriter`: one subscriber's view of a stream whose source may change (the
bedside reconnects; later, a simulcast layer switch). Its sequence numbers, timestamps and VP8
picture ids stay continuous across a change, which happens only at a keyframe of the new
source, as Janus (`janus_rtp_header_update`, `janus_vp8_simulcast_descriptor_update`) and
mediasoup (`SeqManager`, `SimulcastConsumer`) do it: a linear offset per field, re-based at the
switch. Padding-only packets are never forwarded and leave no hole: later packets are numbered
as if they had not been sent (mediasoup's `SeqManager::Drop`), and late packets map where they
belong.
"""

from __future__ import annotations

import bisect
import random
import struct
import time
from dataclasses import dataclass

HEADER = struct.Struct("!BBHII")
HEADER_BYTES = 12
SEQ_MOD = 1 << 16
TS_MOD = 1 << 32
PICTURE_ID_MOD = 1 << 15
TL0_MOD = 1 << 8
VP8_START_CODE = b"\x9d\x01\x2a"
# Sequence numbers dropped (padding) are remembered this far behind the newest one.
DROPPED_WINDOW = 1 << 12
# Seconds since 1900 (NTP) at the Unix epoch.
NTP_UNIX_OFFSET_NS = 2_208_988_800 * 1_000_000_000


@dataclass(frozen=True, slots=True)
class Vp8Descriptor:
    """Where the VP8 payload descriptor's fields are in a packet's payload."""

    length: int
    # Offset of a 15-bit picture id (M bit set), or -1 (none, or a 7-bit one: not rewritten).
    picture_id_at: int
    picture_id: int
    # Offset of TL0PICIDX, or -1.
    tl0_at: int
    tl0: int
    # The first packet of a frame (S bit, partition 0), and of a key frame.
    starts_frame: bool
    keyframe: bool


def vp8_descriptor(payload: bytes) -> Vp8Descriptor | None:
    """The payload descriptor of a VP8 packet, or None if the payload is too short for one."""
    size = len(payload)
    if size < 1:
        return None
    first = payload[0]
    at = 1
    picture_id_at = tl0_at = -1
    picture_id = tl0 = 0
    if first & 0x80:
        if size < 2:
            return None
        extension = payload[1]
        at = 2
        if extension & 0x80:
            if size < at + 1:
                return None
            if payload[at] & 0x80:
                if size < at + 2:
                    return None
                picture_id_at = at
                picture_id = ((payload[at] & 0x7F) << 8) | payload[at + 1]
                at += 2
            else:
                at += 1
        if extension & 0x40:
            if size < at + 1:
                return None
            tl0_at = at
            tl0 = payload[at]
            at += 1
        if extension & 0x30:
            at += 1
        if size < at:
            return None
    starts_frame = bool(first & 0x10) and first & 0x07 == 0
    # The frame tag's P bit clear, then the key frame start code (RFC 6386 9.1).
    keyframe = (
        starts_frame
        and size >= at + 6
        and not payload[at] & 0x01
        and payload[at + 3 : at + 6] == VP8_START_CODE
    )
    return Vp8Descriptor(at, picture_id_at, picture_id, tl0_at, tl0, starts_frame, keyframe)


def vp8_keyframe_size(payload: bytes, descriptor: Vp8Descriptor) -> tuple[int, int] | None:
    """The picture size a VP8 key frame's first packet declares (RFC 6386 9.1: 14 bits each of
    width and height after the start code), or None for any other packet."""
    at = descriptor.length + 6
    if not descriptor.keyframe or len(payload) < at + 4:
        return None
    width = int.from_bytes(payload[at : at + 2], "little") & 0x3FFF
    height = int.from_bytes(payload[at + 2 : at + 4], "little") & 0x3FFF
    return width, height


def h264_starts_keyframe(payload: bytes) -> bool:
    """Whether an H.264 packet begins a key frame a new decoder can start from: it carries the
    sequence parameter set (alone, or in a STAP-A), which WebRTC encoders send before every IDR
    picture. An IDR slice's own first packet is not enough: without the parameter sets before
    it nothing decodes."""
    if not payload:
        return False
    nal = payload[0] & 0x1F
    if nal == 7:
        return True
    if nal == 24:  # STAP-A: 2-byte sizes, each NAL's type in its first byte
        at = 1
        while at + 2 < len(payload):
            size = (payload[at] << 8) | payload[at + 1]
            if payload[at + 2] & 0x1F == 7:
                return True
            at += 2 + size
    return False


def starts_keyframe(mime_type: str, payload: bytes) -> bool:
    """Whether this packet is the first of a key frame (audio: every packet stands alone)."""
    if mime_type == "video/vp8":
        descriptor = vp8_descriptor(payload)
        return descriptor is not None and descriptor.keyframe
    if mime_type == "video/h264":
        return h264_starts_keyframe(payload)
    return not mime_type.startswith("video/")


def unwrap(seq: int, highest: int) -> int:
    """A 16-bit sequence number as an unbounded one: the nearest to `highest` (the highest
    unbounded number seen) that it can be, ahead or behind by less than half the range."""
    delta = (seq - highest) % SEQ_MOD
    if delta >= SEQ_MOD // 2:
        delta -= SEQ_MOD
    return highest + delta


def ntp_now() -> int:
    """Now as a 64-bit NTP timestamp (what a sender report carries)."""
    return ((time.time_ns() + NTP_UNIX_OFFSET_NS) << 32) // 1_000_000_000


def abs_send_time() -> int:
    """Now as the abs-send-time header extension's 6.18 fixed-point seconds (24 bits)."""
    return ((time.time_ns() << 18) // 1_000_000_000) & 0xFFFFFF


@dataclass(frozen=True, slots=True)
class Mapped:
    """A packet as one subscriber is sent it."""

    sequence_number: int
    timestamp: int
    # The VP8 picture id and TL0PICIDX to write (-1: leave the payload as it is).
    picture_id: int = -1
    tl0: int = -1


class Rewriter:
    """One subscriber's sequence numbers, timestamps and picture ids, from whichever source is
    current. A video subscriber waits for a key frame of a new source before it is sent any of
    it; audio switches at once."""

    def __init__(self, clock_rate: int, *, video: bool, rng: random.Random | None = None):
        self.clock_rate = clock_rate
        self.video = video
        chance = rng or random.Random()
        # The last sequence number, timestamp and picture id sent, and when (monotonic).
        self.out_seq = chance.randrange(SEQ_MOD // 2) - 1
        self.out_ts = chance.randrange(TS_MOD)
        self.out_picture_id: int | None = None
        self.out_tl0: int | None = None
        self.sent_at: float | None = None
        self.last_marker = True
        # The source being forwarded (its SSRC); whether another is wanted, and which (None:
        # whichever other source sends a key frame first).
        self.ssrc: int | None = None
        self.pending = True
        self.wanted: int | None = None
        # Extended (unwrapped) input sequence numbers: the highest seen, and padding dropped.
        self.max_ext = 0
        self.dropped: list[int] = []
        self.seq_base = 0
        self.ts_offset = 0
        self.picture_id_offset = 0
        self.tl0_offset = 0

    @property
    def waiting(self) -> bool:
        """Whether this subscriber waits for a key frame (or packet) of another source."""
        return self.pending

    def new_source(self, ssrc: int | None = None) -> None:
        """Forward another source from its next key frame (video) or packet (audio): `ssrc`,
        or whichever source other than the current one sends first. The current one is
        forwarded until then."""
        self.pending = True
        self.wanted = ssrc

    def map(
        self,
        ssrc: int,
        seq: int,
        ts: int,
        *,
        marker: bool,
        padding_only: bool,
        keyframe_start: bool,
        now: float,
        descriptor: Vp8Descriptor | None = None,
    ) -> Mapped | None:
        """What to send for this packet, or None to send nothing."""
        if self.pending and self._switches_to(ssrc, padding_only, keyframe_start):
            self._switch(ssrc, seq, ts, now, descriptor)
        elif ssrc != self.ssrc:
            return None
        ext = unwrap(seq, self.max_ext)
        if ext > self.max_ext:
            self.max_ext = ext
            if padding_only:
                self.dropped.append(ext)
                self._forget_old_drops()
                return None
        elif padding_only or ext < self.max_ext - DROPPED_WINDOW:
            return None  # a late padding packet, or one too late to number
        out_seq = (ext - bisect.bisect_left(self.dropped, ext) + self.seq_base) % SEQ_MOD
        out_ts = (ts + self.ts_offset) % TS_MOD
        picture_id = tl0 = -1
        if descriptor is not None and descriptor.picture_id_at >= 0:
            picture_id = (descriptor.picture_id + self.picture_id_offset) % PICTURE_ID_MOD
        if descriptor is not None and descriptor.tl0_at >= 0:
            tl0 = (descriptor.tl0 + self.tl0_offset) % TL0_MOD
        if (out_seq - self.out_seq) % SEQ_MOD < SEQ_MOD // 2:  # the newest sent so far
            self.out_seq, self.out_ts, self.sent_at = out_seq, out_ts, now
            self.last_marker = marker
            if picture_id >= 0:
                self.out_picture_id = picture_id
            if tl0 >= 0:
                self.out_tl0 = tl0
        # Unchanged fields are not rewritten: -1.
        return Mapped(
            out_seq,
            out_ts,
            picture_id if self.picture_id_offset else -1,
            tl0 if self.tl0_offset else -1,
        )

    def _switches_to(self, ssrc: int, padding_only: bool, keyframe_start: bool) -> bool:
        if padding_only or (self.video and not keyframe_start):
            return False
        if self.wanted is None:
            return ssrc != self.ssrc
        if ssrc == self.ssrc:  # the wanted source is already the one forwarded
            self.pending = False
            return False
        return ssrc == self.wanted

    def _switch(
        self, ssrc: int, seq: int, ts: int, now: float, descriptor: Vp8Descriptor | None
    ) -> None:
        # A frame cut short leaves a hole, so the receiver does not take it for complete.
        gap = 1 if self.last_marker else 2
        self.ssrc = ssrc
        self.pending = False
        self.wanted = None
        self.max_ext = SEQ_MOD + seq - 1  # the packet before this one, well above zero
        self.dropped = []
        self.seq_base = (self.out_seq + gap - (self.max_ext + 1)) % SEQ_MOD
        elapsed = 1
        if self.sent_at is not None:
            elapsed = max(1, round((now - self.sent_at) * self.clock_rate))
        self.ts_offset = (self.out_ts + elapsed - ts) % TS_MOD
        if descriptor is not None and descriptor.picture_id_at >= 0:
            last = self.out_picture_id
            after = 0 if last is None else (last + 1 - descriptor.picture_id)
            self.picture_id_offset = after % PICTURE_ID_MOD
        if descriptor is not None and descriptor.tl0_at >= 0:
            last = self.out_tl0
            self.tl0_offset = (0 if last is None else last + 1 - descriptor.tl0) % TL0_MOD

    def _forget_old_drops(self) -> None:
        oldest = self.max_ext - DROPPED_WINDOW
        if self.dropped[0] < oldest:
            keep = bisect.bisect_left(self.dropped, oldest)
            # The forgotten drops still shift every later packet down: fold them into the base.
            self.seq_base = (self.seq_base - keep) % SEQ_MOD
            del self.dropped[:keep]


def rewrite_vp8(payload: bytes, descriptor: Vp8Descriptor, picture_id: int, tl0: int) -> bytes:
    """The payload with its descriptor's picture id and TL0PICIDX set (a copy; the packet
    shared by every subscriber is not changed)."""
    head = bytearray(payload[: descriptor.length])
    if picture_id >= 0 and descriptor.picture_id_at >= 0:
        head[descriptor.picture_id_at] = 0x80 | (picture_id >> 8)
        head[descriptor.picture_id_at + 1] = picture_id & 0xFF
    if tl0 >= 0 and descriptor.tl0_at >= 0:
        head[descriptor.tl0_at] = tl0
    return bytes(head) + payload[descriptor.length :]
