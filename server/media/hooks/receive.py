"""Keyframe requests routed upstream, missing packets asked for again (5-7 in the package's
list), and the bots' passthrough decoder (8)."""

from __future__ import annotations

import fractions
import time
from collections.abc import Callable
from typing import Any

import aiortc
import av
from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc import rtcrtpreceiver as _receiver_module
from aiortc.codecs.base import Decoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, pack_remb_fci

from server.media.payloads import is_keyframe

AIORTC_VERSION = "1.16.0"
# A missing packet is asked for again this long after the last time, this many times in all
# (within the give-up time: later, its frame is gone).
NACK_RETRY_SECONDS = 0.1
NACK_TRIES = 4


class PassthroughDecoder(Decoder):
    """A 'decoder' that hands the encoded frame on as an `av.Packet`."""

    def __init__(self, codec: RTCRtpCodecParameters):
        self.mime_type = codec.mimeType.lower()
        self.time_base = fractions.Fraction(1, codec.clockRate)

    def decode(self, encoded_frame: JitterFrame) -> list[Any]:
        packet = av.Packet(encoded_frame.data)
        packet.pts = encoded_frame.timestamp
        packet.dts = encoded_frame.timestamp
        packet.time_base = self.time_base
        packet.is_keyframe = is_keyframe(self.mime_type, encoded_frame.data)
        return [packet]


def _passthrough_get_decoder(codec: RTCRtpCodecParameters) -> Decoder:
    return PassthroughDecoder(codec)


def check_version() -> None:
    """Refuse to run on an aiortc these hooks were not written for."""
    if aiortc.__version__ != AIORTC_VERSION:
        raise RuntimeError(
            f"probelink's forwarding hook is written for aiortc {AIORTC_VERSION}, "
            f"not {aiortc.__version__}"
        )


def install() -> None:
    """Make every aiortc receiver in this process yield encoded frames as `av.Packet`s
    (idempotent): for the test and benchmark bots, which count frames without decoding them.
    The relay's own receivers hand on packets (`packets.take_packets`) and decode nothing."""
    check_version()
    _receiver_module.get_decoder = _passthrough_get_decoder  # type: ignore[attr-defined]


class NackRetry:
    """Asks again for each packet still missing NACK_RETRY_SECONDS after it was last asked for,
    up to NACK_TRIES times in all, then gives it up: it leaves the set of missing packets aiortc
    lists in every NACK it sends.

    aiortc's receiver asks again only when a new gap appears, so on a steady link a lost
    retransmission stalled its frame; and it went on listing packets long given up.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        # Sequence number -> (times asked, when last asked).
        self.asked: dict[int, tuple[int, float]] = {}

    def due(self, missing: set[int]) -> list[int]:
        """The sequence numbers to ask for again now (updates `missing` and the counts)."""
        now = self.clock()
        # A number seen missing for the first time has just been asked for by aiortc.
        self.asked = {seq: self.asked.get(seq, (1, now)) for seq in missing}
        lost = sorted(
            seq
            for seq, (tries, at) in self.asked.items()
            if tries < NACK_TRIES and now - at >= NACK_RETRY_SECONDS
        )
        for seq in lost:
            self.asked[seq] = (self.asked[seq][0] + 1, now)
        given_up = [
            seq
            for seq, (tries, at) in self.asked.items()
            if tries >= NACK_TRIES and now - at >= NACK_RETRY_SECONDS
        ]
        missing.difference_update(given_up)
        for seq in given_up:
            del self.asked[seq]
        return lost


def on_keyframe_request(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Call `callback` instead of the sender's own encoder when its peer asks for a keyframe."""
    sender._send_keyframe = callback  # type: ignore[method-assign]


async def request_keyframe(receiver: RTCRtpReceiver, ssrc: int | None = None) -> None:
    """Send a PLI for `ssrc`, or for every source the receiver has heard from lately."""
    if ssrc is not None:
        await receiver._send_rtcp_pli(ssrc)
        return
    for source in receiver.getSynchronizationSources():
        await receiver._send_rtcp_pli(source.source)


async def report_estimate(receiver: RTCRtpReceiver, bitrate_bps: int) -> None:
    """For the test and benchmark bots only: send a REMB of `bitrate_bps` for the sources the
    receiver hears, as a subscriber whose downlink carries that much would, in place of its
    own estimator's (switched off: `__remote_bitrate_estimator`, `__rtcp_ssrc`, `_send_rtcp`)."""
    receiver._RTCRtpReceiver__remote_bitrate_estimator = None  # type: ignore[attr-defined]
    rtcp_ssrc = receiver._RTCRtpReceiver__rtcp_ssrc  # type: ignore[attr-defined]
    ssrcs = [source.source for source in receiver.getSynchronizationSources()]
    if rtcp_ssrc is None or not ssrcs:
        return
    fci = pack_remb_fci(bitrate_bps, ssrcs)
    packet = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0, fci=fci)
    await receiver._send_rtcp(packet)
