"""Loss repair on the relay's receive side (no network): missing packets are asked for again,
then given up; the cine buffer's frames are put together from the forwarded packets, a frame a
retransmission completes releases those behind it, and after a frame is given up nothing
reaches the cine buffer until a key frame; a video source back after a gap asks for a keyframe."""

from __future__ import annotations

import asyncio
from typing import Any

from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from server.media.fanout import RESUME_GAP_SECONDS, Source
from server.media.frames import GIVE_UP_SECONDS, FrameAssembler
from server.media.hooks.receive import NACK_RETRY_SECONDS, NACK_TRIES, NackRetry

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
# VP8 payload descriptors: S bit and partition 0 (a frame's first packet), or neither; then the
# start of a key frame (P bit clear, the start code) or of an inter frame.
FIRST, MORE = b"\x10", b"\x00"
KEY, DELTA = b"\x10\x02\x00\x9d\x01\x2a", b"\x01\x00\x00"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


Packet = tuple[int, int, bool, bytes, bool, bool]  # seq, timestamp, marker, payload, starts, key


def frames(*kinds: bytes, packets_per_frame: int = 3, first_seq: int = 65_530) -> list[Packet]:
    """Packets of consecutive frames (3 each, marker on the last, across the sequence wrap)."""
    packets = []
    seq = first_seq
    for n, kind in enumerate(kinds):
        for i in range(packets_per_frame):
            start = i == 0
            payload = (FIRST + kind if start else MORE) + bytes([n, i])
            packets.append(
                (seq, 3000 * n, i == packets_per_frame - 1, payload, start, start and kind == KEY)
            )
            seq = (seq + 1) & 0xFFFF
    return packets


def assembler(clock: Clock) -> tuple[FrameAssembler, list[Any]]:
    out: list[Any] = []
    return FrameAssembler(VP8, out.append, clock=clock), out


def feed(target: FrameAssembler, packets: list[Packet]) -> None:
    for seq, ts, marker, payload, starts, key in packets:
        target.add(seq, ts, marker, payload, starts=starts, key=key)


def test_frames_are_put_together_at_their_marker_with_the_descriptors_stripped() -> None:
    target, out = assembler(Clock())
    feed(target, frames(KEY, DELTA, DELTA))
    assert [p.pts for p in out] == [0, 3000, 6000]
    assert [p.is_keyframe for p in out] == [True, False, False]
    assert bytes(out[0]) == KEY + b"\x00\x00" + b"\x00\x01" + b"\x00\x02"


def test_a_retransmission_releases_the_frames_waiting_behind_it() -> None:
    clock = Clock()
    target, out = assembler(clock)
    packets = frames(KEY, DELTA, DELTA)
    lost = packets.pop(1)  # the key frame's middle packet
    feed(target, packets)
    assert out == []
    clock.now += GIVE_UP_SECONDS / 2
    feed(target, [lost])  # the retransmission
    assert [p.pts for p in out] == [0, 3000, 6000]


def test_a_frame_that_never_completes_is_given_up_and_nothing_follows_until_a_key_frame() -> None:
    clock = Clock()
    target, out = assembler(clock)
    packets = frames(KEY, DELTA, DELTA, DELTA, KEY, DELTA)
    del packets[4]  # the first inter frame's middle packet: never comes
    feed(target, packets[:8])  # through the third frame
    assert [p.pts for p in out] == [0]
    clock.now += 2 * GIVE_UP_SECONDS
    feed(target, packets[8:])
    # The broken frame is given up; the complete inter frames after it refer to it: not kept.
    assert [p.pts for p in out] == [0, 12_000, 15_000]
    assert out[1].is_keyframe and target.frames_dropped == 3


def test_a_slow_frame_without_loss_is_never_given_up() -> None:
    clock = Clock()
    target, out = assembler(clock)
    packets = frames(KEY, DELTA)
    feed(target, packets[:2])
    clock.now += 10 * GIVE_UP_SECONDS  # a large key frame on a poor link
    feed(target, packets[2:])
    assert [p.pts for p in out] == [0, 3000]


def test_the_first_frame_must_begin_at_its_first_packet() -> None:
    clock = Clock()
    target, out = assembler(clock)
    packets = frames(KEY, DELTA, KEY)[1:]  # joined in the middle of the key frame
    feed(target, packets[:5])
    assert out == []
    clock.now += 2 * GIVE_UP_SECONDS
    feed(target, packets[5:])
    assert [p.pts for p in out] == [6000]  # the inter frame refers to the missed key frame


def test_late_packets_of_frames_already_released_are_ignored() -> None:
    target, out = assembler(Clock())
    packets = frames(KEY, DELTA)
    feed(target, packets)
    feed(target, packets[:2])  # duplicates, as a retransmission that crossed the original
    assert [p.pts for p in out] == [0, 3000]


def test_missing_packets_are_asked_for_again_then_given_up() -> None:
    clock = Clock()
    retry = NackRetry(clock=clock)
    missing = {1004, 1005}
    assert retry.due(missing) == []  # just asked for (aiortc does when it sees the gap)
    step = NACK_RETRY_SECONDS * 1.01
    for _ in range(NACK_TRIES - 1):
        clock.now += step
        assert retry.due(missing) == [1004, 1005]
    clock.now += step
    # Asked NACK_TRIES times in all: given up, and no longer listed in aiortc's NACKs.
    assert retry.due(missing) == [] and missing == set()
    missing.add(1010)  # a new loss is asked for as before
    assert retry.due(missing) == []
    clock.now += step
    assert retry.due(missing) == [1010]


async def test_a_video_source_back_after_a_gap_asks_for_a_keyframe_at_once() -> None:
    """After an outage every subscriber needs a keyframe: the relay asks the publisher as soon
    as its packets resume, not after each subscriber's NACKs for the gap have timed out."""
    source = Source("video")
    asked: list[int] = []
    source.on_resume = asked.append

    async def send(seq: int) -> None:
        packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=seq * 3000, ssrc=7)
        packet.payload = FIRST + DELTA + b"\x00" * 20
        await source.on_packet(packet, VP8)

    await send(1)
    await send(2)
    assert asked == []  # a steady stream asks for nothing
    await asyncio.sleep(RESUME_GAP_SECONDS + 0.1)
    await send(40)
    assert asked == [7]
    await send(41)
    assert asked == [7]
