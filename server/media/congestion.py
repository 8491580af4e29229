"""Congestion feedback for the publisher's encoder (no I/O).

The relay forwards the bedside's encoded video, so the bedside's encoder can follow only what the
relay tells it. Two signals, as production SFUs give them:

- Transport-wide congestion control feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01):
  the arrival time of every packet the publisher stamped with a transport-wide sequence number.
  The browser runs its own send-side estimator (Google congestion control) on it: it probes,
  ramps within seconds and backs off on delay or loss of its own uplink. `TransportFeedback`
  records arrivals and encodes the RTCP packets.
- A receiver-estimated maximum bitrate (REMB) that the relay composes: the deployment's ceiling,
  lowered while a subscriber's downlink is congested, but never below the deployment's floor, so
  that one expert on a poor link cannot drag the picture of the others below it (`DownlinkLimit`,
  `publisher_cap`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from server.media.rtp import unwrap

TRANSPORT_CC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
RTCP_RTPFB = 205
RTCP_RTPFB_TRANSPORT_CC = 15

# Status symbols of a packet in a feedback message.
NOT_RECEIVED, SMALL_DELTA, LARGE_DELTA = 0, 1, 2
DELTA_UNIT_US = 250
REFERENCE_UNIT_US = 64_000
RUN_LENGTH_MAX = 0x1FFF
TWO_BIT_SYMBOLS = 7
# One feedback packet reports at most this many sequence numbers, and fits in one datagram
# with room for SRTCP and a TURN channel (as Jitsi's, 1200 bytes with padding).
STATUSES_PER_PACKET_MAX = 1024
PACKET_BYTES_MAX = 1200
HEADER_BYTES = 20  # RTCP header, both SSRCs, base sequence number, count, reference time
# Arrivals kept to report again (when an older one arrives late): the last this many sequence
# numbers.
ARRIVALS_KEPT = 4096


class TransportFeedback:
    """Arrival times of transport-wide sequence numbers, reported as RTCP transport feedback.

    Each report covers every sequence number from the first not yet reported to the highest
    received; a packet arriving after its range was reported (reordered) makes the next report
    start again from it, as libwebrtc's receiver does. A duplicate changes nothing: its first
    arrival is the one reported.
    """

    def __init__(self) -> None:
        self.arrivals: dict[int, int] = {}
        self.oldest: int | None = None
        self.highest: int | None = None
        self.next_report: int | None = None
        self.feedback_count = 0

    def add(self, sequence_number: int, arrival_us: int) -> None:
        """A packet with this 16-bit transport-wide sequence number arrived at `arrival_us`."""
        seq = self._unwrap(sequence_number)
        if self.highest is not None and seq <= self.highest - ARRIVALS_KEPT:
            # Not a late packet (no network holds one while thousands pass it): the sender's
            # numbers moved on by more than half the 16-bit space while none reached us. Dropped
            # as late, it and all that follow would go unreported for tens of thousands of packets.
            seq += 0x10000
        if seq in self.arrivals:
            return
        self.arrivals[seq] = arrival_us
        if self.highest is None or seq > self.highest:
            self.highest = seq
        if self.next_report is None or seq < self.next_report:
            self.next_report = seq
        if self.oldest is None or seq < self.oldest:
            self.oldest = seq
        if self.oldest <= self.highest - 2 * ARRIVALS_KEPT:
            # A jump far ahead: keep what is still in range without walking every number.
            self.oldest = self.highest - ARRIVALS_KEPT + 1
            self.arrivals = {s: t for s, t in self.arrivals.items() if s >= self.oldest}
        while self.oldest <= self.highest - ARRIVALS_KEPT:
            self.arrivals.pop(self.oldest, None)
            self.oldest += 1
        self.next_report = max(self.next_report, self.oldest)

    def _unwrap(self, sequence_number: int) -> int:
        return sequence_number if self.highest is None else unwrap(sequence_number, self.highest)

    def build(self, sender_ssrc: int, media_ssrc: int) -> list[bytes]:
        """RTCP transport feedback packets for everything received since the last call."""
        if self.next_report is None or self.highest is None or self.next_report > self.highest:
            return []
        packets = []
        start = self.next_report
        while start <= self.highest:
            packet, start = self._packet(start, sender_ssrc, media_ssrc)
            if packet is not None:
                packets.append(packet)
        self.next_report = self.highest + 1
        return packets

    def _packet(self, start: int, sender_ssrc: int, media_ssrc: int) -> tuple[bytes | None, int]:
        """One feedback packet from `start`; the sequence number the next one starts at."""
        received = [s for s in range(start, self.highest + 1) if s in self.arrivals]  # type: ignore[operator]
        if not received:
            return None, self.highest + 1  # type: ignore[operator]
        reference = self.arrivals[received[0]] // REFERENCE_UNIT_US
        previous_us = reference * REFERENCE_UNIT_US
        symbols: list[int] = []
        deltas = bytearray()
        seq = start
        while seq <= received[-1] and len(symbols) < STATUSES_PER_PACKET_MAX:
            arrival = self.arrivals.get(seq)
            delta = 0
            if arrival is None:
                symbol, encoded = NOT_RECEIVED, b""
            else:
                delta = round((arrival - previous_us) / DELTA_UNIT_US)
                if 0 <= delta <= 0xFF:
                    symbol, encoded = SMALL_DELTA, bytes([delta])
                elif -0x8000 <= delta <= 0x7FFF:
                    symbol, encoded = LARGE_DELTA, struct.pack("!h", delta)
                else:
                    break  # does not fit: the next packet starts here, with its own reference
            if _packet_bytes_bound(len(symbols) + 1, len(deltas) + len(encoded)) > PACKET_BYTES_MAX:
                break
            symbols.append(symbol)
            deltas += encoded
            # The rounded time, as the sender adds the deltas up: rounding errors do not drift.
            previous_us += delta * DELTA_UNIT_US
            seq += 1
        body = struct.pack(
            "!IIHHI",
            sender_ssrc,
            media_ssrc,
            start & 0xFFFF,
            len(symbols),
            ((reference & 0xFFFFFF) << 8) | (self.feedback_count & 0xFF),
        )
        body += b"".join(struct.pack("!H", c) for c in encode_chunks(symbols)) + deltas
        self.feedback_count += 1
        return rtcp_packet(RTCP_RTPFB, RTCP_RTPFB_TRANSPORT_CC, body), seq


def _packet_bytes_bound(statuses: int, delta_bytes: int) -> int:
    """The most a feedback packet of this many statuses and delta bytes can take: each chunk
    but the last holds 7 statuses or more, and padding adds at most 3 bytes."""
    return HEADER_BYTES + 2 * -(-statuses // TWO_BIT_SYMBOLS) + delta_bytes + 3


def encode_chunks(symbols: list[int]) -> list[int]:
    """Packet status chunks: run lengths where a symbol repeats, else vectors of 7 two-bit ones."""
    chunks = []
    i = 0
    while i < len(symbols):
        run = 1
        while i + run < len(symbols) and symbols[i + run] == symbols[i] and run < RUN_LENGTH_MAX:
            run += 1
        if run >= TWO_BIT_SYMBOLS:
            chunks.append((symbols[i] << 13) | run)
            i += run
            continue
        vector = 0xC000  # status vector chunk, two-bit symbols
        for k, symbol in enumerate(symbols[i : i + TWO_BIT_SYMBOLS]):
            vector |= symbol << (2 * (TWO_BIT_SYMBOLS - 1 - k))
        chunks.append(vector)
        i += TWO_BIT_SYMBOLS
    return chunks


def rtcp_packet(packet_type: int, fmt: int, body: bytes) -> bytes:
    """An RTCP packet, padded to 32 bits (RFC 3550: P bit set, last octet the padding count)."""
    padding = -len(body) % 4
    if padding:
        body += bytes(padding - 1) + bytes([padding])
    first = 0x80 | (0x20 if padding else 0) | fmt
    # The length counts 32-bit words after the first one.
    return struct.pack("!BBH", first, packet_type, len(body) // 4) + body


# A subscriber whose own estimate falls below this share of what it is sent is congested, once
# it has said so this many times in a row (one report can catch a keyframe in what it is sent).
CONGESTED_SHARE = 0.9
CONGESTED_REPORTS = 2
# While limited, the limit drops to the subscriber's estimate each time it reports congestion
# (or to what reached it, each time it reports heavy loss), and otherwise rises LIMIT_GROWTH a
# second, whatever its estimate says (a receiver's estimate holds at what arrives, and would keep
# the limit where it once was for good); once it has grown past the ceiling it is released.
LIMIT_GROWTH = 1.08
# A subscriber losing more than this share of what it is sent is congested (Google congestion
# control's own threshold for cutting the rate; random loss below it is left to retransmission).
LOSS_CONGESTED = 0.1
# A subscriber that has not reported for this long no longer limits anyone.
ESTIMATE_TIMEOUT_SECONDS = 5.0


# A subscriber's loss is measured over at least this long, from its reports' cumulative counts.
LOSS_WINDOW_SECONDS = 1.0


@dataclass
class LossWindow:
    """A subscriber's loss over the last second or more, from its receiver reports' cumulative
    counts (packets lost, highest sequence number received).

    A report's own `fraction_lost` covers the time since the receiver's previous report, which a
    browser sends with every NACK: a few packets, one of them missing, read as 30 % lost. And
    packets that were late but arrived (repaired) lower the cumulative count again, so the
    window says what the subscriber really lacks."""

    started_at: float | None = None
    lost: int = 0
    highest: int = 0

    def report(self, lost: int, highest: int, now: float) -> float | None:
        """The share lost since the window started, once it is LOSS_WINDOW_SECONDS long."""
        if self.started_at is None:
            self.started_at, self.lost, self.highest = now, lost, highest
            return None
        if now - self.started_at < LOSS_WINDOW_SECONDS:
            return None
        expected = highest - self.highest
        fraction = max(0, lost - self.lost) / expected if expected > 0 else 0.0
        self.started_at, self.lost, self.highest = now, lost, highest
        return min(1.0, fraction)


def arrived_if_congested(fraction: float, sent_bps: float) -> float | None:
    """What reached a subscriber that lost `fraction` of the `sent_bps` it was sent (about the
    last second), if that loss says its link is congested (over LOSS_CONGESTED); else None.

    A receiver's delay-based estimate does not see a link that stays full and drops (its queue
    delay no longer grows), and may then sit at 1.5x what arrives: what arrives is the limit.
    """
    if fraction <= LOSS_CONGESTED or sent_bps <= 0:
        return None
    return sent_bps * (1 - fraction)


@dataclass
class GrowingLimit:
    """A limit on what a subscriber is sent: lowered to what its link says it carries each time
    it says so, and otherwise growing LIMIT_GROWTH a second (a receiver's estimate holds at what
    arrives once it stops overusing, and following it up would hold the limit down for good)."""

    limit_bps: float | None = None
    limit_at: float = 0.0  # when the limit was last set (it grows from there)

    def lower(self, bps: float, now: float) -> None:
        """The link carries `bps` now: the limit is that, or what it has grown to if less."""
        grown = self.grown(now)
        self.limit_bps = bps if grown is None else min(grown, bps)
        self.limit_at = now

    def grown(self, now: float) -> float | None:
        """The limit now (None: none)."""
        if self.limit_bps is None:
            return None
        growth: float = LIMIT_GROWTH ** max(0.0, now - self.limit_at)
        return self.limit_bps * growth


@dataclass
class DownlinkLimit(GrowingLimit):
    """What one subscriber's downlink carries, from its own REMB and receiver reports, while it
    is congested."""

    reported_at: float = 0.0
    congested_reports: int = 0

    def report(self, estimate_bps: int, sent_bps: float, now: float) -> None:
        """The subscriber's estimate, and the rate it was being sent when it reported."""
        self.reported_at = now
        congested = sent_bps > 0 and estimate_bps < CONGESTED_SHARE * sent_bps
        self.congested_reports = self.congested_reports + 1 if congested else 0
        if congested and (
            self.limit_bps is not None or self.congested_reports >= CONGESTED_REPORTS
        ):
            self.lower(estimate_bps, now)

    def report_loss(self, fraction: float, sent_bps: float, now: float) -> None:
        """A receiver report: it lost this share of what it was sent (about the last second)."""
        arrived = arrived_if_congested(fraction, sent_bps)
        if arrived is not None:
            self.reported_at = now
            self.lower(arrived, now)

    def current(self, now: float, ceiling_bps: int) -> int | None:
        grown = self.grown(now)
        if grown is None:
            return None
        if now - self.reported_at > ESTIMATE_TIMEOUT_SECONDS or grown >= ceiling_bps:
            self.limit_bps = None
            return None
        return int(grown)


def publisher_cap(limits: list[DownlinkLimit], now: float, floor_bps: int, ceiling_bps: int) -> int:
    """The REMB for the publisher: the ceiling, or the most congested subscriber's downlink,
    never below the floor (the publisher's own estimator still keeps it under its uplink)."""
    current = [c for c in (limit.current(now, ceiling_bps) for limit in limits) if c is not None]
    if not current:
        return ceiling_bps
    return max(floor_bps, min(ceiling_bps, *current))
