"""Forwarding one packet at a time: what a packet says about its frame, and one subscriber's
numbering across a change of source (server/media/rtp.py)."""

from __future__ import annotations

import fractions
import itertools
import random

import av
import numpy as np
from aiortc.codecs.vpx import Vp8Encoder

from server.media.rtp import (
    SEQ_MOD,
    Mapped,
    Rewriter,
    h264_starts_keyframe,
    rewrite_vp8,
    starts_keyframe,
    vp8_descriptor,
)

CLOCK = 90_000


def vp8_payloads(frames: int, *, keyframe_every: int = 0) -> list[list[bytes]]:
    """Real VP8 packets from libvpx through aiortc's packetizer: one list per frame."""
    encoder = Vp8Encoder()
    out = []
    for index in range(frames):
        picture = np.random.default_rng(index).integers(0, 255, (240, 320, 3), dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
        frame.pts = index * 3000
        frame.time_base = fractions.Fraction(1, CLOCK)
        force = keyframe_every > 0 and index % keyframe_every == 0
        payloads, _ = encoder.encode(frame, force_keyframe=force)
        out.append(payloads)
    return out


def test_the_vp8_descriptor_of_real_packets_finds_key_frames_and_picture_ids() -> None:
    frames = vp8_payloads(4, keyframe_every=3)
    starts = [vp8_descriptor(f[0]) for f in frames]
    assert all(d is not None and d.starts_frame for d in starts)
    assert [d.keyframe for d in starts if d] == [True, False, False, True]
    ids = [d.picture_id for d in starts if d]
    assert [(b - a) % (1 << 15) for a, b in itertools.pairwise(ids)] == [1, 1, 1]
    # Later packets of a frame start no frame and are no key frame.
    later = [vp8_descriptor(p) for f in frames for p in f[1:]]
    assert later and all(d is not None and not d.starts_frame and not d.keyframe for d in later)
    assert starts_keyframe("video/vp8", frames[0][0])
    assert not starts_keyframe("video/vp8", frames[1][0])
    assert starts_keyframe("audio/opus", b"\x01")


def test_a_short_or_cut_descriptor_is_no_descriptor_and_no_key_frame() -> None:
    assert vp8_descriptor(b"") is None
    assert vp8_descriptor(b"\x90") is None  # X set, no extension byte
    assert vp8_descriptor(b"\x90\x80\x80") is None  # a 15-bit picture id cut short
    # S and partition 0 but the frame tag's P bit set: an inter frame.
    assert not starts_keyframe("video/vp8", b"\x10\x01\x02\x00\x9d\x01\x2a\x00")
    assert starts_keyframe("video/vp8", b"\x10\x10\x02\x00\x9d\x01\x2a\x00")
    # The tail of a frame whose bytes look like a key frame's but S is clear.
    assert not starts_keyframe("video/vp8", b"\x00\x10\x02\x00\x9d\x01\x2a\x00")


def test_h264_key_frames_start_where_the_parameter_sets_are() -> None:
    sps, pps, idr, slice_ = b"\x67\x42", b"\x68\xce", b"\x65\x88", b"\x41\x9a"
    assert h264_starts_keyframe(sps)
    assert not h264_starts_keyframe(slice_) and not h264_starts_keyframe(pps)
    stap = b"\x78" + b"".join(len(n).to_bytes(2, "big") + n for n in (sps, pps))
    assert h264_starts_keyframe(stap)
    assert not h264_starts_keyframe(b"\x78" + len(pps).to_bytes(2, "big") + pps)
    # An IDR slice after its parameter sets: a subscriber starting there could decode nothing.
    assert not h264_starts_keyframe(idr)
    assert not h264_starts_keyframe(b"\x7c\x85")  # FU-A, start of an IDR slice
    assert not h264_starts_keyframe(b"\x7c\x81")  # FU-A, start of a non-IDR slice


class Stream:
    """A source's packets: ssrc, sequence numbers from `seq`, timestamps from `ts`."""

    def __init__(self, ssrc: int, seq: int, ts: int):
        self.ssrc, self.seq, self.ts = ssrc, seq, ts

    def next(self, rewriter: Rewriter, now: float, **kw: bool) -> Mapped | None:
        mapped = self.send(rewriter, self.seq, now, **kw)
        self.seq = (self.seq + 1) % SEQ_MOD
        return mapped

    def send(self, rewriter: Rewriter, seq: int, now: float, **kw: bool) -> Mapped | None:
        return rewriter.map(
            self.ssrc,
            seq,
            self.ts,
            marker=kw.get("marker", True),
            padding_only=kw.get("padding", False),
            keyframe_start=kw.get("key", False),
            now=now,
        )


def test_a_video_subscriber_starts_at_a_key_frame_and_numbers_on_from_there() -> None:
    rewriter = Rewriter(CLOCK, video=True, rng=random.Random(1))
    source = Stream(0x1111, seq=65_530, ts=4_000_000_000)
    assert source.next(rewriter, 0.0) is None  # no key frame yet: nothing
    assert rewriter.waiting
    first = source.next(rewriter, 0.0, key=True, marker=False)
    assert first is not None and not rewriter.waiting
    sent = [first]
    for _ in range(10):  # across the sequence numbers' wrap
        mapped = source.next(rewriter, 0.0)
        assert mapped is not None
        sent.append(mapped)
    seqs = [m.sequence_number for m in sent]
    assert [(b - a) % SEQ_MOD for a, b in itertools.pairwise(seqs)] == [1] * 10
    assert first.sequence_number < SEQ_MOD // 2  # starts low, as aiortc's own senders do
    # Another source's packets (the old bedside's stragglers) are not sent.
    assert Stream(0x2222, 7, 9).next(rewriter, 0.0, key=True) is None


def test_a_new_source_continues_the_numbers_from_its_first_key_frame() -> None:
    rewriter = Rewriter(CLOCK, video=True, rng=random.Random(2))
    old = Stream(0xAAAA, seq=100, ts=1_000)
    last = None
    for index in range(5):
        last = old.next(rewriter, 1.0, key=index == 0)
    assert last is not None
    rewriter.new_source()
    # The old source is forwarded until the new one has a key frame.
    assert old.next(rewriter, 1.01) is not None
    last = old.next(rewriter, 1.02)
    assert last is not None
    new = Stream(0xBBBB, seq=40_000, ts=77)
    assert new.next(rewriter, 1.5) is None  # not a key frame
    switched = new.next(rewriter, 1.5, key=True)
    assert switched is not None
    assert switched.sequence_number == (last.sequence_number + 1) % SEQ_MOD
    # The timestamp moves on by the time that passed (0.48 s at 90 kHz), never back.
    assert (switched.timestamp - last.timestamp) % (1 << 32) == round(0.48 * CLOCK)
    assert old.next(rewriter, 1.6) is None  # the old source is done


def test_a_frame_cut_short_by_the_switch_leaves_a_hole() -> None:
    rewriter = Rewriter(CLOCK, video=True, rng=random.Random(3))
    old = Stream(1, seq=10, ts=0)
    old.next(rewriter, 0.0, key=True)
    cut = old.next(rewriter, 0.0, marker=False)  # the frame's end never comes
    assert cut is not None
    rewriter.new_source(2)
    switched = Stream(2, seq=500, ts=0).next(rewriter, 0.1, key=True)
    assert switched is not None
    assert switched.sequence_number == (cut.sequence_number + 2) % SEQ_MOD


def test_padding_is_not_sent_and_leaves_no_hole_and_late_packets_map_where_they_belong() -> None:
    rewriter = Rewriter(CLOCK, video=True, rng=random.Random(4))
    source = Stream(9, seq=65_000, ts=0)
    out = {}
    for index in range(8):
        seq = source.seq
        padding = index in (3, 4)
        mapped = source.next(rewriter, 0.0, key=index == 0, padding=padding)
        if padding:
            assert mapped is None
        elif index != 5:  # 5 is lost on the way in, to arrive late
            assert mapped is not None
            out[seq] = mapped.sequence_number
        if index == 5:
            late_seq = seq
    numbers = sorted(out.values())
    late = source.send(rewriter, late_seq, 0.1)
    assert late is not None
    # The late packet takes the place it would have had: no number is used twice or skipped.
    assert sorted([*numbers, late.sequence_number]) == list(
        range(numbers[0], numbers[0] + len(numbers) + 1)
    )
    # A duplicate maps to the same number again (the subscriber drops it); late padding: nothing.
    again = source.send(rewriter, late_seq, 0.2)
    assert again is not None and again.sequence_number == late.sequence_number
    assert source.send(rewriter, late_seq, 0.2, padding=True) is None


def test_long_runs_of_padding_are_forgotten_without_renumbering_later_packets() -> None:
    rewriter = Rewriter(CLOCK, video=True, rng=random.Random(5))
    source = Stream(3, seq=0, ts=0)
    first = source.next(rewriter, 0.0, key=True)
    assert first is not None
    for _ in range(10_000):  # well past the window that remembers drops
        assert source.next(rewriter, 0.0, padding=True) is None
    after = source.next(rewriter, 0.0)
    assert after is not None and after.sequence_number == (first.sequence_number + 1) % SEQ_MOD


def test_audio_switches_at_the_first_packet_of_the_new_source() -> None:
    rewriter = Rewriter(48_000, video=False, rng=random.Random(6))
    first = Stream(5, seq=1, ts=0).next(rewriter, 0.0)
    assert first is not None
    rewriter.new_source()
    second = Stream(6, seq=999, ts=123).next(rewriter, 0.02)
    assert second is not None
    assert second.sequence_number == (first.sequence_number + 1) % SEQ_MOD
    assert (second.timestamp - first.timestamp) % (1 << 32) == 960


def test_picture_ids_carry_on_across_a_switch_and_the_rewrite_touches_only_them() -> None:
    frames_a = vp8_payloads(3, keyframe_every=3)
    frames_b = vp8_payloads(2, keyframe_every=2)
    rewriter = Rewriter(CLOCK, video=True, rng=random.Random(7))
    sent_ids = []
    seq = 1
    for ssrc, frames in ((0xA, frames_a), (0xB, frames_b)):
        if ssrc == 0xB:
            rewriter.new_source(0xB)
        for index, frame in enumerate(frames):
            for at, payload in enumerate(frame):
                descriptor = vp8_descriptor(payload)
                assert descriptor is not None
                mapped = rewriter.map(
                    ssrc,
                    seq,
                    index * 3000,
                    marker=at == len(frame) - 1,
                    padding_only=False,
                    keyframe_start=descriptor.keyframe,
                    now=index / 30,
                    descriptor=descriptor,
                )
                seq += 1
                assert mapped is not None
                out = rewrite_vp8(payload, descriptor, mapped.picture_id, mapped.tl0)
                assert len(out) == len(payload)
                assert out[descriptor.length :] == payload[descriptor.length :]
                rewritten = vp8_descriptor(out)
                assert rewritten is not None
                assert rewritten.keyframe == descriptor.keyframe
                if at == 0:
                    sent_ids.append(rewritten.picture_id)
    steps = [(b - a) % (1 << 15) for a, b in itertools.pairwise(sent_ids)]
    assert steps == [1, 1, 1, 1]  # continuous, although source B numbers its own
