"""Per-participant media statistics: bitrate, frame rate, packet loss, round-trip time.

`sample` reads one peer connection's counters; `rates` turns two samples into
what the room is shown (plain arithmetic, tested without a network).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiortc import RTCPeerConnection


@dataclass(frozen=True)
class Sample:
    """Cumulative counters of one peer connection at one moment."""

    at: float
    bytes_received: int
    bytes_sent: int
    video_frames: int
    packets_received: int
    packets_lost: int
    # Latest round-trip time the peer reported (seconds), if any.
    rtt_seconds: float | None
    # Latest fraction of our packets the peer reported lost (0..1), if any.
    fraction_lost: float | None


async def sample(pc: RTCPeerConnection, video_frames: int, at: float) -> Sample:
    report = await pc.getStats()
    received = sent = packets = lost = 0
    rtt: float | None = None
    fraction: float | None = None
    for stats in report.values():
        kind = stats.type
        if kind == "transport":
            received += stats.bytesReceived
            sent += stats.bytesSent
        elif kind == "inbound-rtp":
            packets += stats.packetsReceived
            lost += max(0, stats.packetsLost)
        elif kind == "remote-inbound-rtp":
            if stats.roundTripTime is not None:
                rtt = stats.roundTripTime if rtt is None else max(rtt, stats.roundTripTime)
            fraction = stats.fractionLost if fraction is None else max(fraction, stats.fractionLost)
    return Sample(at, received, sent, video_frames, packets, lost, rtt, fraction)


def rates(before: Sample, after: Sample) -> dict[str, Any]:
    """What changed between two samples, in the units the expert reads."""
    seconds = max(1e-6, after.at - before.at)
    got = after.packets_received - before.packets_received
    lost = after.packets_lost - before.packets_lost
    inbound_loss = 100.0 * lost / (got + lost) if got + lost > 0 else 0.0
    outbound_loss = 100.0 * after.fraction_lost if after.fraction_lost is not None else 0.0
    return {
        "bitrate_in_kbps": round(
            8 * (after.bytes_received - before.bytes_received) / seconds / 1000, 1
        ),
        "bitrate_out_kbps": round(8 * (after.bytes_sent - before.bytes_sent) / seconds / 1000, 1),
        "frame_rate": round((after.video_frames - before.video_frames) / seconds, 1),
        "packet_loss_percent": round(max(inbound_loss, outbound_loss), 2),
        "rtt_ms": round(1000 * after.rtt_seconds, 1) if after.rtt_seconds is not None else None,
    }
