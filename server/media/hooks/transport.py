"""The congestion feedback's hooks (6-11 in the package's list; see server/media/congestion.py):
transport-wide congestion control negotiated in the publisher's answer, every packet's
transport-wide sequence number and kernel arrival time, the relay's own REMB, subscribers'
receiver reports, and a longer retransmission history."""

from __future__ import annotations

import contextlib
import fcntl
import struct
import time
from collections.abc import Callable
from typing import Any

from aiortc import RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc.rtcrtpparameters import RTCRtcpFeedback
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpSrPacket,
    RtpPacket,
    pack_remb_fci,
    unpack_remb_fci,
)
from aiortc.sdp import MediaDescription

from server.media.congestion import TRANSPORT_CC_URI, LossWindow

ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"


def negotiate_transport_cc(
    transceiver: RTCRtpTransceiver, offered: MediaDescription, start_kbps: int
) -> bool:
    """Answer an offer of transport-wide congestion feedback (False: the offer had none).

    The answer also asks the browser to start its encoder at `start_kbps` (Chromium's
    `x-google-start-bitrate`) rather than 300 kbit/s, too little for an ultrasound picture.
    """
    extension = next((x for x in offered.rtp.headerExtensions if x.uri == TRANSPORT_CC_URI), None)
    if extension is None:
        return False
    # The relay reads arrival times from transport-wide sequence numbers, not abs-send-time.
    transceiver._headerExtensions = [
        x
        for x in transceiver._headerExtensions
        if x.uri not in (TRANSPORT_CC_URI, ABS_SEND_TIME_URI)
    ] + [extension]
    feedback = RTCRtcpFeedback(type="transport-cc")
    offered_feedback = {c.payloadType for c in offered.rtp.codecs if feedback in c.rtcpFeedback}
    for codec in transceiver._codecs:
        if codec.mimeType.lower() == "video/rtx":
            continue
        if codec.payloadType in offered_feedback and feedback not in codec.rtcpFeedback:
            codec.rtcpFeedback.append(feedback)
        codec.parameters["x-google-start-bitrate"] = start_kbps
    return True


def on_transport_sequence(
    receiver: RTCRtpReceiver, callback: Callable[[int, int, int], None]
) -> None:
    """Call `callback(transport_sequence_number, ssrc, arrival_us)` for every RTP packet that
    reaches the receiver's transport carrying one; the receiver's own REMB is switched off.

    Call it once the answer is set (the ICE sockets exist then). The arrival time is the
    kernel's receive timestamp of the datagram (`SIOCGSTAMPNS`, wall clock, microseconds), so
    that the time a busy event loop takes to read it is not mistaken for queueing on the link:
    the sender's estimator reads growing delay as congestion. Where the kernel gives none, the
    time the datagram was read.
    """
    receiver._RTCRtpReceiver__remote_bitrate_estimator = None  # type: ignore[attr-defined]
    arrivals: dict[int, int] = {}
    connection = receiver.transport.transport._connection
    for protocol in getattr(connection, "_protocols", []):
        _stamp_datagrams(protocol, arrivals)
    router = receiver.transport._rtp_router
    route = router.route_rtp

    def route_rtp(packet: RtpPacket) -> Any:
        arrival = arrivals.pop((packet.ssrc << 16) | packet.sequence_number, None)
        seq = packet.extensions.transport_sequence_number
        if seq is not None:
            callback(seq, packet.ssrc, arrival or time.time_ns() // 1000)
        return route(packet)

    router.route_rtp = route_rtp  # type: ignore[method-assign]


SIOCGSTAMPNS = 0x8907  # linux/sockios.h: timestamp of the last datagram read (timespec)
STAMPED_DATAGRAMS_MAX = 4096


def _stamp_datagrams(protocol: Any, arrivals: dict[int, int]) -> None:
    """Record the kernel's arrival time of each RTP datagram the ICE protocol reads, by SSRC and
    sequence number (both in clear in SRTP)."""
    sock = getattr(getattr(protocol, "transport", None), "get_extra_info", lambda _: None)("socket")
    if sock is None:
        return
    fd = sock.fileno()
    received = protocol.datagram_received

    def datagram_received(data: bytes, addr: Any) -> None:
        # RTP, not RTCP (packet types 192-223) nor STUN or DTLS.
        if len(data) >= 12 and 128 <= data[0] < 192 and not 192 <= data[1] <= 223:
            if len(arrivals) >= STAMPED_DATAGRAMS_MAX:
                arrivals.clear()  # never routed (not SRTP we can read): forget them
            try:
                sec, nsec = struct.unpack("qq", fcntl.ioctl(fd, SIOCGSTAMPNS, bytes(16)))
                arrival = sec * 1_000_000 + nsec // 1000
            except OSError:
                arrival = time.time_ns() // 1000
            ssrc = int.from_bytes(data[8:12], "big")
            arrivals[(ssrc << 16) | int.from_bytes(data[2:4], "big")] = arrival
        received(data, addr)

    protocol.datagram_received = datagram_received


def rtcp_sender_ssrc(receiver: RTCRtpReceiver) -> int | None:
    """The SSRC the receiver's RTCP is sent from (None before the connection starts)."""
    ssrc: int | None = receiver._RTCRtpReceiver__rtcp_ssrc  # type: ignore[attr-defined]
    return ssrc


async def send_rtcp(receiver: RTCRtpReceiver, data: bytes) -> None:
    """Send an RTCP packet (already serialized) on the receiver's transport."""
    with contextlib.suppress(ConnectionError):
        await receiver.transport._send_rtp(data)


def remb(sender_ssrc: int, media_ssrc: int, bitrate_bps: int) -> bytes:
    """A receiver-estimated maximum bitrate packet for the publisher's stream."""
    return bytes(
        RtcpPsfbPacket(
            fmt=RTCP_PSFB_APP,
            ssrc=sender_ssrc,
            media_ssrc=0,
            fci=pack_remb_fci(bitrate_bps, [media_ssrc]),
        )
    )


def on_receiver_reports(
    sender: RTCRtpSender,
    on_estimate: Callable[[int], None],
    on_loss: Callable[[float], None],
) -> None:
    """Call `on_estimate(bitrate_bps)` with each REMB the sender's peer (a subscriber) reports,
    and `on_loss(fraction)` with the share of what the sender sent that it lost over the last
    second or more (`LossWindow`, from the reports' cumulative counts)."""
    handle = sender._handle_rtcp_packet
    window = LossWindow()

    async def handle_rtcp_packet(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            with contextlib.suppress(ValueError):
                on_estimate(unpack_remb_fci(packet.fci)[0])
        elif isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            for report in packet.reports:
                if report.ssrc == sender._ssrc:
                    now = time.monotonic()
                    fraction = window.report(report.packets_lost, report.highest_sequence, now)
                    if fraction is not None:
                        on_loss(fraction)
        await handle(packet)

    sender._handle_rtcp_packet = handle_rtcp_packet  # type: ignore[method-assign]


RID_URIS = (
    "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
)


def accept_stream_ids(transceiver: RTCRtpTransceiver, offered: MediaDescription) -> None:
    """Answer the RID header extensions a simulcast offer proposes: each layer's packets, and
    each retransmission stream's, say which layer they are (aiortc parses both once
    negotiated)."""
    extensions = [x for x in offered.rtp.headerExtensions if x.uri in RID_URIS]
    transceiver._headerExtensions = [
        x for x in transceiver._headerExtensions if x.uri not in RID_URIS
    ] + extensions
