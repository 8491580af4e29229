"""Loss repair on the relay's receive side (no network): a frame completed by a retransmission
releases the frames queued behind it at once; a frame that never completes is given up, a
keyframe is asked for, and nothing that may refer to the lost frame is forwarded."""

from __future__ import annotations

import asyncio
import fractions
from typing import Any

from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from server.media.forwarding import GIVE_UP_SECONDS, InlineDelivery, MarkerJitterBuffer

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
KEY, DELTA = b"\x00", b"\x01"  # first byte of a VP8 frame: P bit clear on a key frame


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Mapper:
    """aiortc's timestamp mapper, as the receiver applies it to the first frame."""

    def map(self, timestamp: int) -> int:
        return timestamp


def frames(*kinds: bytes, packets_per_frame: int = 3) -> list[RtpPacket]:
    """Packets of consecutive frames (3 each, marker on the last); payload: kind + frame + seq."""
    packets = []
    seq = 1000
    for n, kind in enumerate(kinds):
        for i in range(packets_per_frame):
            packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=3000 * n)
            packet.marker = int(i == packets_per_frame - 1)
            packet._data = (kind if i == 0 else b"") + bytes([n, i])  # type: ignore[attr-defined]
            packets.append(packet)
            seq += 1
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
