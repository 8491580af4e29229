"""Loss repair on the relay's receive side (no network): a frame completed by a retransmission
releases the frames queued behind it at once; a frame that never completes is given up, a
keyframe is asked for, and nothing that may refer to the lost frame is forwarded."""

from __future__ import annotations

import asyncio
import fractions
from typing import Any

from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from server.media.hooks.jitter import GIVE_UP_SECONDS, MarkerJitterBuffer
from server.media.hooks.receive import NACK_RETRY_SECONDS, NACK_TRIES, InlineDelivery, NackRetry

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
# The start of a VP8 key frame (P bit clear, then the start code) and of an inter frame.
KEY, DELTA = b"\x10\x02\x00\x9d\x01\x2a", b"\x01\x00\x00"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Mapper:
    """aiortc's timestamp mapper, as the receiver applies it to the first frame."""

    def map(self, timestamp: int) -> int:
        return timestamp


def frames(*kinds: bytes, packets_per_frame: int = 3, first_seq: int = 1000) -> list[RtpPacket]:
    """Packets of consecutive frames (3 each, marker on the last). Payload: the kind, then two
    bytes (twice the frame number, the packet number): a frame tail begins with an even byte,
    which a loose check would read as a VP8 key frame's P bit."""
    packets = []
    seq = first_seq
    for n, kind in enumerate(kinds):
        for i in range(packets_per_frame):
            packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=3000 * n)
            packet.marker = int(i == packets_per_frame - 1)
            packet._data = (kind if i == 0 else b"") + bytes([2 * n, i])  # type: ignore[attr-defined]
            packets.append(packet)
            seq = (seq + 1) & 0xFFFF
    return packets


def test_a_retransmission_releases_the_frames_queued_behind_it() -> None:
    jitter = MarkerJitterBuffer(is_video=True)
    packets = frames(KEY, DELTA, DELTA)
    lost = packets.pop(1)  # the first frame's middle packet
    released = [jitter.add(p)[1] for p in packets]
    assert released == [None] * len(packets)
    pli, first = jitter.add(lost)  # the retransmission
    assert not pli and first is not None and first.timestamp == 0
    assert [f.timestamp for f in jitter.ready] == [3000, 6000]
    assert not any(getattr(f, "after_gap", False) for f in [first, *jitter.ready])


def test_a_frame_that_never_completes_is_given_up_with_a_keyframe_request() -> None:
    clock = Clock()
    jitter = MarkerJitterBuffer(is_video=True, clock=clock)
    packets = frames(KEY, DELTA, DELTA, DELTA)
    first = [jitter.add(p) for p in packets[:3]]
    assert first[-1][1] is not None  # the keyframe
    del packets[4]  # the second frame's middle packet never arrives
    for packet in packets[3:6]:
        assert jitter.add(packet) == (False, None)
    clock.now += GIVE_UP_SECONDS / 2
    assert jitter.add(packets[6]) == (False, None)  # still waiting for a retransmission
    clock.now += GIVE_UP_SECONDS
    pli, frame = jitter.add(packets[7])
    assert pli  # a keyframe is asked for
    assert frame is not None and frame.timestamp == 6000
    assert getattr(frame, "after_gap", False)  # it may refer to the lost frame


def test_after_a_gap_nothing_is_forwarded_until_a_keyframe() -> None:
    async def run() -> list[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        clock = Clock()
        jitter = MarkerJitterBuffer(is_video=True, clock=clock)
        delivery = InlineDelivery(queue, jitter, Mapper())
        packets = frames(KEY, DELTA, DELTA, DELTA, KEY, DELTA)
        del packets[4]  # frame 1 broken
        for packet in packets:
            if packet.timestamp == 6000 and packet.marker:
                clock.now += 2 * GIVE_UP_SECONDS
            _pli, frame = jitter.add(packet)
            if frame is not None:
                delivery.put((VP8, frame))
        out = []
        while not queue.empty():
            out.append(queue.get_nowait())
        assert delivery.frames_dropped == 2  # frames 2 and 3 refer to the lost frame 1
        return out

    delivered = asyncio.run(run())
    assert [p.pts for p in delivered] == [0, 12000, 15000]
    assert [p.is_keyframe for p in delivered] == [True, True, False]
    assert all(p.time_base == fractions.Fraction(1, 90000) for p in delivered)


def test_a_slow_frame_without_loss_is_never_given_up() -> None:
    """A 720p keyframe on a slow link: 100 packets over 2 s, none lost."""
    clock = Clock()
    jitter = MarkerJitterBuffer(is_video=True, clock=clock)
    packets = frames(KEY, packets_per_frame=100)
    for packet in packets[:-1]:
        clock.now += 0.02
        assert jitter.add(packet) == (False, None)
    pli, frame = jitter.add(packets[-1])
    assert not pli and frame is not None
    assert len(frame.data) == len(KEY) + 2 * 100 and not getattr(frame, "after_gap", True)


def test_a_loss_across_frames_resumes_at_a_real_frame_start() -> None:
    """The last packet of frame 0 and the first of frame 1 are lost: the tail of frame 1 must
    not pass for a frame (its first byte could read as a keyframe's); frame 2 starts after a
    marker, and nothing is forwarded until the keyframe 3."""

    async def run() -> list[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        clock = Clock()
        jitter = MarkerJitterBuffer(is_video=True, clock=clock)
        delivery = InlineDelivery(queue, jitter, Mapper())
        packets = frames(KEY, DELTA, DELTA, KEY)
        del packets[2:4]  # frame 0's marker packet and frame 1's first packet
        for packet in packets:
            clock.now += 0.3  # the hole ages past the give-up time while the rest arrives
            _pli, frame = jitter.add(packet)
            if frame is not None:
                delivery.put((VP8, frame))
        return [queue.get_nowait() for _ in range(queue.qsize())]

    delivered = asyncio.run(run())
    assert [(p.pts, p.is_keyframe) for p in delivered] == [(9000, True)]


def test_a_keyframe_behind_several_broken_frames_is_released_at_once() -> None:
    clock = Clock()
    jitter = MarkerJitterBuffer(is_video=True, clock=clock)
    packets = frames(DELTA, DELTA, DELTA, KEY, first_seq=65530)  # across the 16-bit wrap
    broken = [p for i, p in enumerate(packets) if i not in (1, 4, 7)]  # a hole in each delta
    for packet in broken[:-1]:
        assert jitter.add(packet) == (False, None)
    clock.now += 2 * GIVE_UP_SECONDS
    pli, frame = jitter.add(broken[-1])
    assert pli and frame is not None  # one pass: the three broken frames go, the keyframe comes
    assert frame.timestamp == 9000 and frame.data.startswith(KEY)
    assert getattr(frame, "after_gap", False) and jitter.ready == []


def test_missing_packets_are_asked_for_again_then_given_up_with_their_frame() -> None:
    clock = Clock()
    jitter = MarkerJitterBuffer(is_video=True, clock=clock)
    for packet in frames(KEY, DELTA)[:3]:
        jitter.add(packet)  # the keyframe: the origin is now 1003
    retry = NackRetry(None, jitter, clock=clock)  # type: ignore[arg-type]
    missing = {1004, 1005}
    assert retry.due(missing) == []  # just asked for (aiortc does when it sees the gap)
    step = NACK_RETRY_SECONDS * 1.01
    for _ in range(NACK_TRIES - 1):
        clock.now += step
        assert retry.due(missing) == [1004, 1005]
    clock.now += step
    assert retry.due(missing) == []  # asked NACK_TRIES times in all
    # A packet the buffer moved past (its frame given up) is asked for no more.
    jitter._origin = 1005
    missing.add(1004)
    clock.now += step
    assert retry.due(missing) == [] and missing == {1005}
