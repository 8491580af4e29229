"""The publisher's congestion feedback, sent by the relay (the adapter around `congestion.py`).

While a room has a publisher whose offer negotiated transport-wide congestion control, the relay
reports the arrival of its packets every 100 ms (the browser's own estimator does the rest) and
sends a REMB with the room's cap: the deployment's ceiling, lowered to a congested subscriber's
downlink but never below the deployment's floor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiortc import RTCRtpReceiver

from server.media.congestion import DownlinkLimit, TransportFeedback, publisher_cap
from server.media.hooks.transport import on_transport_sequence, remb, rtcp_sender_ssrc, send_rtcp

log = logging.getLogger(__name__)

FEEDBACK_INTERVAL_SECONDS = 0.1
REMB_INTERVAL_SECONDS = 1.0
# A lower cap is sent at once; a higher one waits for the next REMB interval.
REMB_DECREASE_SHARE = 0.95


@dataclass(frozen=True)
class BitratePolicy:
    """A deployment's limits on the publisher's video bitrate (kbit/s)."""

    floor_kbps: int = 1000
    ceiling_kbps: int = 4000
    start_kbps: int = 1000


DEFAULT_POLICY = BitratePolicy()


class PublisherFeedback:
    """Transport feedback and the room's REMB for one publisher's receiver."""

    def __init__(
        self,
        receiver: RTCRtpReceiver,
        policy: BitratePolicy,
        limits: Callable[[], list[DownlinkLimit]],
    ):
        self.receiver = receiver
        self.policy = policy
        self.arrivals = TransportFeedback()
        self.media_ssrc: int | None = None
        # The subscribers' downlinks that limit the publisher now (the room says which).
        self.limits = limits
        self.cap_bps: int | None = None
        self._remb_at = 0.0
        self._task: asyncio.Task[None] | None = None

    def _arrived(self, sequence_number: int, ssrc: int, arrival_us: int) -> None:
        if self.media_ssrc is None:
            self.media_ssrc = ssrc
        self.arrivals.add(sequence_number, arrival_us)

    def start(self) -> None:
        """Once the answer is set: read arrivals, send feedback."""
        on_transport_sequence(self.receiver, self._arrived)
        self._task = asyncio.create_task(self._run(), name="publisher-feedback")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FEEDBACK_INTERVAL_SECONDS)
            try:
                await self._tick(time.monotonic())
            except Exception:
                # Feedback may suffer; the media must not.
                log.exception("congestion feedback failed")

    async def _tick(self, now: float) -> None:
        sender_ssrc = rtcp_sender_ssrc(self.receiver)
        if sender_ssrc is None or self.media_ssrc is None:
            return
        for packet in self.arrivals.build(sender_ssrc, self.media_ssrc):
            await send_rtcp(self.receiver, packet)
        cap = publisher_cap(
            self.limits(),
            now,
            self.policy.floor_kbps * 1000,
            self.policy.ceiling_kbps * 1000,
        )
        lower = self.cap_bps is not None and cap < REMB_DECREASE_SHARE * self.cap_bps
        if lower or now >= self._remb_at + REMB_INTERVAL_SECONDS:
            if cap != self.cap_bps:
                log.debug("publisher video capped at %d kbit/s", cap // 1000)
            self.cap_bps = cap
            self._remb_at = now
            await send_rtcp(self.receiver, remb(sender_ssrc, self.media_ssrc, cap))
