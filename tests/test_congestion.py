"""Transport-wide congestion feedback and the publisher's REMB cap (server/media/congestion.py).

The feedback packets are read back with a parser written here from the draft
(draft-holmer-rmcat-transport-wide-cc-extensions-01, section 3.1), independent of the encoder: no
well-kept Python package parses them. The parser itself is checked against the draft's own
chunk examples.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.media.congestion import (
    ARRIVALS_KEPT,
    ESTIMATE_TIMEOUT_SECONDS,
    LIMIT_GROWTH,
    PACKET_BYTES_MAX,
    DownlinkLimit,
    LossWindow,
    TransportFeedback,
    encode_chunks,
    publisher_cap,
    rtcp_packet,
)

SENDER_SSRC = 0x11223344
MEDIA_SSRC = 0x55667788
TICK_US = 250  # receive deltas are multiples of 250 µs
REFERENCE_US = 64_000  # the reference time is a multiple of 64 ms
REFERENCE_WRAP_US = REFERENCE_US << 24  # ... in 24 bits
NOT_RECEIVED, SMALL, LARGE = 0, 1, 2


# --- The independent parser (draft section 3.1) -------------------------------------------------


@dataclass
class Feedback:
    base: int
    statuses: list[int]
    reference: int
    count: int
    # Arrival time of each received 16-bit sequence number, in µs, modulo REFERENCE_WRAP_US.
    times: dict[int, int] = field(default_factory=dict)
    sender_ssrc: int = 0
    media_ssrc: int = 0

    def seqs(self) -> list[int]:
        return [(self.base + i) & 0xFFFF for i in range(len(self.statuses))]


def decode_chunk(chunk: int) -> list[int]:
    """The symbols of one packet status chunk (the last one may carry filler past the count)."""
    if not chunk & 0x8000:  # run length: T=0, S (2 bits), run length (13 bits)
        run = chunk & 0x1FFF
        assert run > 0, "a run length chunk of no packets"
        return [(chunk >> 13) & 0x3] * run
    if not chunk & 0x4000:  # status vector, one-bit symbols: 14 of them
        return [(chunk >> (13 - i)) & 0x1 for i in range(14)]
    return [(chunk >> (12 - 2 * i)) & 0x3 for i in range(7)]  # two-bit symbols: 7 of them


def parse(packet: bytes) -> Feedback:
    """One RTCP transport feedback packet, checked field by field."""
    assert len(packet) % 4 == 0, "an RTCP packet is a whole number of 32-bit words"
    first, packet_type, length = struct.unpack_from("!BBH", packet)
    assert first >> 6 == 2, "RTP version 2"
    assert first & 0x1F == 15, "FMT 15: transport-wide congestion control"
    assert packet_type == 205, "RTPFB"
    assert (length + 1) * 4 == len(packet), "the length counts the words after the first"
    end = len(packet)
    if first & 0x20:
        padding = packet[-1]
        assert 1 <= padding <= 3, "padding only to the next 32-bit boundary"
        assert packet[end - padding : end - 1] == bytes(padding - 1)
        end -= padding
    sender, media, base, status_count, reference_and_count = struct.unpack_from("!IIHHI", packet, 4)
    assert status_count > 0, "libwebrtc rejects an empty feedback"
    position = 20
    statuses: list[int] = []
    while len(statuses) < status_count:
        assert position + 2 <= end, "status chunks run past the packet"
        (chunk,) = struct.unpack_from("!H", packet, position)
        position += 2
        symbols = decode_chunk(chunk)
        room = status_count - len(statuses)
        assert not any(symbols[room:]), "a vector's symbols past the count are filler"
        statuses += symbols[:room]
    assert 3 not in statuses, "symbol 3 is reserved"
    reference = reference_and_count >> 8
    feedback = Feedback(
        base=base,
        statuses=statuses,
        reference=reference,
        count=reference_and_count & 0xFF,
        sender_ssrc=sender,
        media_ssrc=media,
    )
    time = reference * REFERENCE_US
    for seq, status in zip(feedback.seqs(), statuses, strict=True):
        if status == SMALL:
            time += packet[position] * TICK_US
            position += 1
        elif status == LARGE:
            time += struct.unpack_from("!h", packet, position)[0] * TICK_US
            position += 2
        else:
            continue
        feedback.times[seq] = time % REFERENCE_WRAP_US
    assert position == end, "nothing but padding after the receive deltas"
    return feedback


def off_by(reported_us: int, true_us: int) -> int:
    """How far a reported arrival time is from the true one (times modulo the 24-bit wrap)."""
    error = (reported_us - true_us) % REFERENCE_WRAP_US
    return error - REFERENCE_WRAP_US if error >= REFERENCE_WRAP_US // 2 else error


def test_parser_reads_the_drafts_chunk_examples() -> None:
    # Section 3.1.3, example 1: a run of 221 packets not received.
    assert decode_chunk(0x00DD) == [NOT_RECEIVED] * 221
    # Section 3.1.4, example 1: a one-bit status vector.
    assert decode_chunk(0x9F1C) == [0, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0]
    # A two-bit status vector (T=1, S=1): 00 01 10 01 01 00 00.
    assert decode_chunk(0xC650) == [0, 1, 2, 1, 1, 0, 0]


def test_parser_reads_a_packet_assembled_by_hand() -> None:
    packet = bytes.fromhex(
        "af cd 0006"  # V=2, P, FMT=15; PT=205; 6 words follow
        "00000001 00000002"  # sender and media SSRC
        "fffe 0004"  # base sequence number 65534, 4 statuses
        "000010 07"  # reference 16 (1.024 s), feedback packet 7
        "d240"  # two-bit vector: small, not received, large, small
        "04 fffc 08"  # +1 ms, -1 ms, +2 ms
        "0002"  # padding: 2 octets
    )
    feedback = parse(packet)
    assert (feedback.base, feedback.reference, feedback.count) == (65534, 16, 7)
    assert feedback.statuses == [SMALL, NOT_RECEIVED, LARGE, SMALL]
    assert feedback.times == {65534: 1_025_000, 0: 1_024_000, 1: 1_026_000}


# --- The feedback packets -----------------------------------------------------------------------


def build(feedback: TransportFeedback) -> list[Feedback]:
    return [parse(packet) for packet in feedback.build(SENDER_SSRC, MEDIA_SSRC)]


def covered(packets: list[Feedback]) -> list[int]:
    return [seq for packet in packets for seq in packet.seqs()]


def received(packets: list[Feedback]) -> dict[int, int]:
    return {seq: time for packet in packets for seq, time in packet.times.items()}


@st.composite
def streams(draw: st.DrawFn) -> tuple[int, list[tuple[int, int]], set[int]]:
    """(first sequence number, arrivals (unwrapped sequence number, µs) in arrival order, the
    positions in that order after which the relay builds a report)."""
    first = draw(st.one_of(st.integers(0xFFFF - 200, 0xFFFF), st.integers(0, 0xFFFF)))
    count = draw(st.integers(1, 300))
    loss = draw(st.sampled_from([0.0, 0.05, 0.3, 0.9]))
    # Pacing: from bursts to 10 s silences (a receive delta holds at most 8.19 s).
    spacing = draw(st.sampled_from([100, 1_000, 5_000, 70_000, 10_000_000]))
    jitter = draw(st.sampled_from([0, 300, 20_000, 400_000]))  # reorders when above the spacing
    duplicates = draw(st.sampled_from([0.0, 0.1]))
    seed = draw(st.integers(0, 2**32 - 1))
    start_us = draw(st.one_of(st.integers(0, 2**40), st.just(REFERENCE_WRAP_US - 300_000)))
    rng = random.Random(seed)
    sent_us = start_us
    arrivals = []
    for seq in range(first, first + count):
        sent_us += rng.randint(0, spacing)
        if rng.random() < loss:
            continue
        arrival = sent_us + rng.randint(0, jitter)
        arrivals.append((seq, arrival))
        if rng.random() < duplicates:
            arrivals.append((seq, arrival + rng.randint(0, 50_000)))
    arrivals.sort(key=lambda arrival: arrival[1])
    reports = {i for i in range(len(arrivals)) if rng.random() < 0.1}
    return first, arrivals, reports


@settings(max_examples=300, deadline=None)
@given(streams())
def test_feedback_reports_every_packet_with_its_arrival_time(
    stream: tuple[int, list[tuple[int, int]], set[int]],
) -> None:
    """Each report starts where the last one ended, or earlier only at a packet that arrived
    late; it covers every sequence number up to the highest received, received ones with their
    first arrival time (within half a tick, without drift), the others as not received."""
    _, arrivals, report_after = stream
    feedback = TransportFeedback()
    first_arrival: dict[int, int] = {}  # unwrapped sequence number: first arrival time
    new_since_report: list[int] = []
    highest_reported: int | None = None
    expected_count = 0
    for i, (seq, arrival_us) in enumerate(arrivals):
        feedback.add(seq & 0xFFFF, arrival_us)
        if seq not in first_arrival:
            first_arrival[seq] = arrival_us
            new_since_report.append(seq)
        if i not in report_after and i != len(arrivals) - 1:
            continue
        packets = build(feedback)
        if not new_since_report:
            assert packets == [], "a report with nothing new (a duplicate is nothing new)"
            continue
        highest = max(first_arrival)
        start = min(new_since_report)
        if highest_reported is not None:
            start = min(start, highest_reported + 1)
        # Packets of one report follow each other, and the feedback packet count goes up by one.
        for packet in packets:
            assert packet.count == expected_count & 0xFF
            assert (packet.sender_ssrc, packet.media_ssrc) == (SENDER_SSRC, MEDIA_SSRC)
            expected_count += 1
        seqs = covered(packets)
        assert seqs == [s & 0xFFFF for s in range(start, highest + 1)]
        times = received(packets)
        for s in range(start, highest + 1):
            if s in first_arrival:
                assert abs(off_by(times[s & 0xFFFF], first_arrival[s])) <= TICK_US // 2
            else:
                assert s & 0xFFFF not in times
        highest_reported = highest
        new_since_report = []


def test_late_packet_is_reported_again_from_its_sequence_number() -> None:
    feedback = TransportFeedback()
    for seq in [*range(100, 105), *range(106, 110)]:
        feedback.add(seq, 1_000_000 + seq * 1_000)
    [first] = build(feedback)
    assert (first.base, first.statuses[5]) == (100, NOT_RECEIVED)
    assert covered([first]) == list(range(100, 110))

    feedback.add(105, 1_500_000)  # arrives after the report that found it missing
    feedback.add(110, 1_510_000)
    [again] = build(feedback)
    assert again.base == 105
    assert covered([again]) == list(range(105, 111))
    assert again.times[105] == 1_500_000
    assert again.times[107] == 1_107_000  # the others again, with their own times

    assert build(feedback) == []


def test_duplicate_is_not_reported_again() -> None:
    feedback = TransportFeedback()
    for seq in range(10):
        feedback.add(seq, 2_000_000 + seq * 1_000)
    assert covered(build(feedback)) == list(range(10))
    feedback.add(3, 2_900_000)  # the network delivered packet 3 twice
    assert build(feedback) == []
    feedback.add(10, 2_910_000)
    [packet] = build(feedback)
    assert covered([packet]) == [10]
    feedback.add(10, 2_920_000)
    feedback.add(11, 2_930_000)
    [packet] = build(feedback)
    assert covered([packet]) == [11]


def test_rounding_to_ticks_does_not_drift() -> None:
    # 1.496 ticks apart: rounding each gap on its own would lose half a tick per packet.
    feedback = TransportFeedback()
    arrivals = {seq: 64_000_000 + seq * 374 for seq in range(500)}
    for seq, arrival in arrivals.items():
        feedback.add(seq, arrival)
    times = received(build(feedback))
    assert times.keys() == arrivals.keys()
    assert all(abs(times[seq] - arrivals[seq]) <= TICK_US // 2 for seq in arrivals)


def test_sequence_numbers_wrap_around_16_bits() -> None:
    feedback = TransportFeedback()
    for i, seq in enumerate([65533, 65534, 65535, 0, 2]):
        feedback.add(seq, 5_000_000 + i * 1_000)
    [packet] = build(feedback)
    assert packet.base == 65533
    assert packet.statuses == [SMALL, SMALL, SMALL, SMALL, NOT_RECEIVED, SMALL]
    feedback.add(1, 5_100_000)  # late, across the wrap
    [packet] = build(feedback)
    assert packet.base == 1
    assert covered([packet]) == [1, 2]


def test_reference_time_wraps_at_24_bits() -> None:
    feedback = TransportFeedback()
    start = REFERENCE_WRAP_US - 70_000
    for seq in range(4):
        feedback.add(seq, start + seq * 40_000)  # crosses the wrap between packets 1 and 2
    [packet] = build(feedback)
    assert packet.reference == 0xFFFFFE
    assert [packet.times[seq] for seq in range(4)] == [
        (start + seq * 40_000) % REFERENCE_WRAP_US for seq in range(4)
    ]
    feedback.add(4, REFERENCE_WRAP_US + 100_000)
    [packet] = build(feedback)
    assert packet.reference == 1
    assert packet.times[4] == 100_000


def test_long_gap_splits_into_packets_with_their_own_reference() -> None:
    # A receive delta holds at most 32767 ticks (8.19 s); a 10 s silence starts a new packet.
    feedback = TransportFeedback()
    arrivals = {10: 3_000_000, 11: 3_001_000, 13: 13_002_000, 14: 13_003_000}
    for seq, arrival in arrivals.items():
        feedback.add(seq, arrival)
    first, second = build(feedback)
    assert (first.base, first.statuses) == (10, [SMALL, SMALL, NOT_RECEIVED])
    assert first.reference == 3_000_000 // REFERENCE_US
    assert (second.base, second.statuses) == (13, [SMALL, SMALL])
    assert second.reference == 13_002_000 // REFERENCE_US
    assert {**first.times, **second.times} == arrivals
    assert (first.count, second.count) == (0, 1)


def test_late_arrival_far_behind_in_time_uses_a_large_negative_delta() -> None:
    feedback = TransportFeedback()
    feedback.add(1, 9_000_000)
    feedback.add(0, 9_000_000 + 3_000_000)  # 3 s late: still in one packet
    feedback.add(2, 9_000_000 + 3_000_500)
    [packet] = build(feedback)
    assert packet.statuses == [SMALL, LARGE, LARGE]  # +3 s, then -3 s, then +3.0005 s
    assert packet.times == {0: 12_000_000, 1: 9_000_000, 2: 12_000_500}


def test_gap_longer_than_a_packet_holds_is_reported_missing_across_packets() -> None:
    feedback = TransportFeedback()
    feedback.add(0, 1_000_000)
    feedback.add(3000, 1_100_000)
    packets = build(feedback)
    assert covered(packets) == list(range(3001))
    assert received(packets) == {0: 1_000_000, 3000: 1_100_000}
    assert all(len(packet.statuses) <= 1024 for packet in packets)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 3000), st.sampled_from([0, 1_000, 70_000]), st.integers(0, 2**32 - 1))
def test_packets_stay_within_the_mtu(count: int, spacing: int, seed: int) -> None:
    """Even reordered arrivals (every delta a two-byte one) fit in one datagram each."""
    rng = random.Random(seed)
    feedback = TransportFeedback()
    arrivals = {seq: 1_000_000 + seq * spacing + rng.choice([0, 5_000_000]) for seq in range(count)}
    for seq, arrival in arrivals.items():
        feedback.add(seq, arrival)
    packets = feedback.build(SENDER_SSRC, MEDIA_SSRC)
    assert all(len(packet) <= PACKET_BYTES_MAX for packet in packets)
    parsed = [parse(packet) for packet in packets]
    assert covered(parsed) == list(range(count))
    assert received(parsed) == arrivals


@pytest.mark.parametrize("body_length", range(8))
def test_packets_are_padded_to_32_bits_with_the_padding_bit(body_length: int) -> None:
    body = bytes(range(1, body_length + 1))
    packet = rtcp_packet(205, 15, body)
    padding = -body_length % 4
    assert len(packet) == 4 + body_length + padding
    assert packet[0] == 0x80 | (0x20 if padding else 0) | 15
    assert packet[1] == 205
    assert struct.unpack_from("!H", packet, 2)[0] == len(packet) // 4 - 1
    assert packet[4 : 4 + body_length] == body
    if padding:
        assert packet[4 + body_length :] == bytes(padding - 1) + bytes([padding])


@pytest.mark.parametrize("received_count", range(1, 9))
def test_feedback_packets_are_padded(received_count: int) -> None:
    # 20 bytes of header, chunks and one byte per small delta: padding depends on the count.
    feedback = TransportFeedback()
    for seq in range(received_count):
        feedback.add(seq, 640_000 + seq * 1_000)
    [packet] = feedback.build(SENDER_SSRC, MEDIA_SSRC)
    unpadded = 20 + 2 * len(encode_chunks([SMALL] * received_count)) + received_count
    assert len(packet) == unpadded + (-unpadded % 4)
    assert bool(packet[0] & 0x20) == (unpadded % 4 != 0)
    assert parse(packet).times == {seq: 640_000 + seq * 1_000 for seq in range(received_count)}


runs = st.lists(
    st.tuples(st.sampled_from([NOT_RECEIVED, SMALL, LARGE]), st.integers(1, 20_000)),
    min_size=1,
    max_size=8,
)


@settings(deadline=None)
@given(st.one_of(st.lists(st.sampled_from([0, 1, 2]), min_size=1, max_size=60), runs))
def test_run_length_and_vector_chunks_decode_to_the_statuses(
    statuses_or_runs: list[int] | list[tuple[int, int]],
) -> None:
    statuses = [
        status
        for item in statuses_or_runs
        for status in ([item[0]] * item[1] if isinstance(item, tuple) else [item])
    ]
    chunks = encode_chunks(statuses)
    assert all(0 <= chunk <= 0xFFFF for chunk in chunks)
    decoded = [symbol for chunk in chunks for symbol in decode_chunk(chunk)]
    assert decoded[: len(statuses)] == statuses
    assert not any(decoded[len(statuses) :]), "only filler past the statuses"
    assert len(chunks) <= -(-len(statuses) // 7), "no chunk holds fewer than 7 statuses"


def test_chunk_bit_layout() -> None:
    assert encode_chunks([NOT_RECEIVED] * 221) == [0x00DD]
    assert encode_chunks([SMALL] * 24) == [0x2018]
    assert encode_chunks([LARGE] * 7) == [0x4007]
    assert encode_chunks([NOT_RECEIVED] * 9000) == [0x1FFF, 0x0329]  # 8191 + 809
    assert encode_chunks([0, 1, 2, 1, 1, 0, 0]) == [0xC650]
    assert encode_chunks([1, 2]) == [0xD800]  # filler: not received


def test_feedback_packet_count_wraps_at_8_bits() -> None:
    feedback = TransportFeedback()
    counts = []
    for seq in range(300):
        feedback.add(seq, seq * 10_000)
        counts += [packet.count for packet in build(feedback)]
    assert counts == [i & 0xFF for i in range(300)]


def test_sequence_jump_past_half_the_number_space_does_not_silence_feedback() -> None:
    # The sender's numbers moved on by 40000 while nothing reached the relay: read modulo 2^16,
    # the new ones look 25536 behind the highest received.
    feedback = TransportFeedback()
    for seq in range(100):
        feedback.add(seq, 1_000_000 + seq * 1_000)
    build(feedback)
    for seq in range(40_100, 40_200):
        feedback.add(seq, 60_000_000 + seq * 1_000)
    times = received(build(feedback))
    assert times == {seq: 60_000_000 + seq * 1_000 for seq in range(40_100, 40_200)}
    feedback.add(40_200, 100_300_000)
    assert covered(build(feedback)) == [40_200]


def test_jump_within_half_the_number_space_reports_the_kept_window() -> None:
    feedback = TransportFeedback()
    feedback.add(0, 1_000_000)
    build(feedback)
    feedback.add(10_000, 2_000_000)
    packets = build(feedback)
    assert covered(packets) == list(range(10_000 - ARRIVALS_KEPT + 1, 10_001))
    assert received(packets) == {10_000: 2_000_000}
    feedback.add(10_001, 2_001_000)
    assert covered(build(feedback)) == [10_001]


def test_memory_stays_bounded_over_a_long_stream() -> None:
    rng = random.Random(7)
    feedback = TransportFeedback()
    arrival = 0
    for seq in range(200_000):  # three wraps of the 16-bit numbers
        arrival += rng.randint(0, 3_000)
        if rng.random() < 0.05:
            continue
        feedback.add(seq & 0xFFFF, arrival)
        if seq % 100 == 0:
            packets = build(feedback)
            assert abs(received(packets)[seq & 0xFFFF] - arrival) <= TICK_US // 2
        assert len(feedback.arrivals) <= ARRIVALS_KEPT
    # A reordered packet within the kept window is still reported; the structure stays small.
    feedback.add((200_000 - 50) & 0xFFFF, arrival + 1_000)
    assert len(build(feedback)) >= 1
    assert len(feedback.arrivals) <= ARRIVALS_KEPT


# --- The publisher's REMB cap -------------------------------------------------------------------

FLOOR, CEILING = 1_000_000, 4_000_000


def cap(limits: list[DownlinkLimit], now: float = 0.0) -> int:
    return publisher_cap(limits, now, FLOOR, CEILING)


def test_cap_is_the_ceiling_while_no_subscriber_is_congested() -> None:
    assert cap([]) == CEILING
    keeping_up = DownlinkLimit()
    keeping_up.report(estimate_bps=2_800_000, sent_bps=3_000_000, now=0.0)  # above 0.9x sent
    idle = DownlinkLimit()
    idle.report(estimate_bps=100_000, sent_bps=0.0, now=0.0)  # nothing sent: nothing to judge
    assert cap([keeping_up, idle]) == CEILING


def congested(estimate_bps: int, sent_bps: float, now: float = 0.0) -> DownlinkLimit:
    """A subscriber that reported the same estimate twice in a row."""
    limit = DownlinkLimit()
    limit.report(estimate_bps, sent_bps, now)
    limit.report(estimate_bps, sent_bps, now)
    return limit


def test_one_report_below_what_is_sent_is_not_yet_congestion() -> None:
    once = DownlinkLimit()
    once.report(estimate_bps=2_000_000, sent_bps=3_000_000, now=0.0)  # a keyframe in the window?
    assert cap([once]) == CEILING
    once.report(estimate_bps=2_900_000, sent_bps=3_000_000, now=0.2)  # no: it keeps up
    once.report(estimate_bps=2_000_000, sent_bps=3_000_000, now=0.4)
    assert cap([once]) == CEILING
    once.report(estimate_bps=1_900_000, sent_bps=3_000_000, now=0.6)  # twice in a row: yes
    assert cap([once]) == 1_900_000


def test_congested_subscriber_lowers_the_cap_but_not_below_the_floor() -> None:
    slow = congested(2_500_000, 3_500_000)
    assert cap([slow]) == 2_500_000
    slower = congested(1_500_000, 3_500_000)
    assert cap([slow, slower]) == 1_500_000  # the most congested one
    hopeless = congested(300_000, 3_500_000)
    assert cap([slow, slower, hopeless]) == FLOOR
    # A congested downlink above the ceiling leaves the ceiling.
    assert cap([congested(5_000_000, 6_000_000)]) == CEILING


def test_a_congested_subscriber_lowers_the_cap_which_then_rises_8_percent_a_second() -> None:
    limit = congested(2_000_000, 3_000_000)
    assert cap([limit], 0.0) == 2_000_000
    assert cap([limit], 1.0) == int(2_000_000 * LIMIT_GROWTH)  # rises while nothing is said
    # Its estimate runs ahead (a receiver's may reach 1.5x what arrives): the cap does not jump.
    limit.report(estimate_bps=2_900_000, sent_bps=2_100_000, now=1.0)
    assert cap([limit], 1.0) == int(2_000_000 * LIMIT_GROWTH)
    # Its estimate holds at what arrives (as a receiver's does once it stops overusing): the cap
    # still rises, or one congested moment would hold the publisher down for the session.
    limit.report(estimate_bps=2_100_000, sent_bps=2_100_000, now=2.0)
    assert cap([limit], 2.0) == int(2_000_000 * LIMIT_GROWTH**2)
    # Congested again: down to its estimate at once.
    limit.report(estimate_bps=1_500_000, sent_bps=2_300_000, now=3.0)
    assert cap([limit], 3.0) == 1_500_000
    # Then released once the cap has grown past the ceiling: 1.5 x 1.08^t reaches 4 at t = 12.7.
    second = 3.0
    while limit.limit_bps is not None and second < 60:
        second += 0.2
        limit.report(estimate_bps=3_000_000, sent_bps=3_000_000, now=second)
        assert cap([limit], second) <= int(1_500_000 * LIMIT_GROWTH ** (second - 3.0)) + 1
    assert limit.limit_bps is None and cap([limit], second) == CEILING
    assert 3.0 + 12.0 < second < 3.0 + 13.5


def test_silent_subscriber_stops_limiting_after_the_timeout() -> None:
    limit = congested(1_500_000, 3_000_000, now=100.0)
    held = int(1_500_000 * LIMIT_GROWTH**ESTIMATE_TIMEOUT_SECONDS)
    assert cap([limit], 100.0 + ESTIMATE_TIMEOUT_SECONDS) == held
    assert cap([limit], 100.0 + ESTIMATE_TIMEOUT_SECONDS + 0.01) == CEILING
    limit = congested(1_500_000, 3_000_000, now=200.0)  # congested again
    limit.report(estimate_bps=1_200_000, sent_bps=1_500_000, now=204.0)  # and still reporting
    assert cap([limit], 208.0) == int(1_200_000 * LIMIT_GROWTH**4)


def test_a_subscriber_losing_what_it_is_sent_is_limited_to_what_arrives() -> None:
    """A full link that drops: its receiver's estimate (delay based) may run above it, its
    receiver reports say how much is lost."""
    limit = DownlinkLimit()
    limit.report_loss(0.05, sent_bps=2_000_000, now=0.0)  # random loss: retransmission's job
    limit.report(estimate_bps=2_700_000, sent_bps=2_000_000, now=0.1)
    assert cap([limit], 0.1) == CEILING
    limit.report_loss(0.25, sent_bps=2_000_000, now=1.0)  # a quarter lost: 1.5 Mbit/s arrives
    assert cap([limit], 1.0) == 1_500_000
    limit.report(estimate_bps=2_700_000, sent_bps=1_600_000, now=1.2)  # its estimate runs ahead
    assert cap([limit], 1.2) == int(1_500_000 * LIMIT_GROWTH**0.2)
    limit.report_loss(0.5, sent_bps=1_200_000, now=2.0)  # worse: the floor holds the others
    assert cap([limit], 2.0) == FLOOR


def test_a_subscribers_loss_is_read_over_a_second_from_its_cumulative_counts() -> None:
    """A browser sends a receiver report with every NACK, its `fraction_lost` over the few
    packets since the last one (one missing of three: 33 %); the window reads the cumulative
    counts over a second, where packets repaired late count as received."""
    window = LossWindow()
    assert window.report(lost=0, highest=1000, now=0.0) is None
    # NACK-driven reports within the second: not read.
    assert window.report(lost=1, highest=1003, now=0.1) is None
    assert window.report(lost=2, highest=1010, now=0.5) is None
    # A second later: 300 packets expected, 2 still missing (others repaired meanwhile).
    assert window.report(lost=2, highest=1300, now=1.0) == 2 / 300
    # A congested second: 90 of 300 lost.
    assert window.report(lost=92, highest=1600, now=2.0) == 90 / 300
    # Repairs that lower the cumulative count never read as negative loss.
    assert window.report(lost=80, highest=1900, now=3.0) == 0.0
