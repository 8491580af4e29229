"""Simulcast layers: the encodings of the publisher's video, and which one each subscriber is
sent (no I/O).

A bedside page in a room with more than one subscriber sends its video as three encodings of one
picture (simulcast, RFC 8853): full size, half and a quarter, each with its own SSRC, named by a
RID (the rtp-stream-id header extension on their first packets). The relay ranks them by the
picture size their key frames declare (by bitrate where none does: H.264) and measures each
one's bitrate. Each subscriber is sent one (`LayerChoice`): the largest whose bitrate its
downlink carries (from that subscriber's own REMB and losses), switched at a key frame of the new
layer (`Rewriter`). A downlink never congested, or whose limit has grown back
past the ceiling, gets the largest; captures always take the largest.

Switching up is how the relay finds out whether a downlink has room again: the limit grows 8 %
a second while the subscriber reports no congestion, and once it passes the next layer's
bitrate the subscriber is switched up. If the link cannot carry it, its reports say so within a
couple of seconds and it goes back down; each such failed attempt doubles the wait before the
next (from UP_HOLD_START_SECONDS to UP_HOLD_MAX_SECONDS). mediasoup and pion probe with padding
instead; the relay sends none.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.media.congestion import CONGESTED_SHARE, GrowingLimit, arrived_if_congested

# A layer with no packet for this long is not offered: the browser paused it (too little
# uplink, or the page turned it off).
LAYER_IDLE_SECONDS = 1.0
# Each layer's bitrate is measured over windows this long; a layer is offered once one is done
# and it has been sending for LAYER_STEADY_SECONDS (a browser whose uplink barely carries a
# layer starts and stops it every few seconds: subscribers would follow it, freezing each time).
RATE_WINDOW_SECONDS = 1.0
LAYER_STEADY_SECONDS = 3.0
# A subscriber's REMB is not read for this long after it starts or steps up; one this much
# below the previous one is falling (see LayerChoice).
ESTIMATE_SETTLE_SECONDS = 2.0
ESTIMATE_FALL_SHARE = 0.97
# Going down this soon after the REMB is read again means the step up failed.
UP_FAILED_SECONDS = ESTIMATE_SETTLE_SECONDS + 3.0
# A limit grown past this share of the largest layer's bitrate is released.
LIMIT_RELEASE_SHARE = 1.2
UP_HOLD_START_SECONDS = 8.0
UP_HOLD_MAX_SECONDS = 64.0


@dataclass(slots=True)
class Layer:
    """One encoding of the publisher's video."""

    ssrc: int
    rid: str | None
    width: int = 0
    height: int = 0
    bytes: int = 0
    last_at: float = 0.0
    active_since: float = 0.0
    # How long the layer was silent before its latest packet (0 for its first).
    silence: float = 0.0
    window_at: float = 0.0
    window_bytes: int = 0
    bps: float = -1.0  # -1: not measured yet

    @property
    def area(self) -> int:
        return self.width * self.height

    def steady(self, now: float) -> bool:
        """Sending now, and for LAYER_STEADY_SECONDS."""
        return now - self.last_at <= LAYER_IDLE_SECONDS and (
            now - self.active_since >= LAYER_STEADY_SECONDS
        )


class Layers:
    """The layers of one received video, by SSRC."""

    def __init__(self) -> None:
        self.by_ssrc: dict[int, Layer] = {}

    def packet(self, ssrc: int, rid: str | None, size: int, now: float) -> Layer:
        """A packet of `size` payload bytes arrived on `ssrc` (its RID, where it carries one)."""
        layer = self.by_ssrc.get(ssrc)
        if layer is None:
            layer = self.by_ssrc[ssrc] = Layer(ssrc, rid, window_at=now, active_since=now)
        else:
            layer.silence = now - layer.last_at
            if layer.silence > LAYER_IDLE_SECONDS:
                layer.active_since = now  # it resumed
        if rid and layer.rid is None:
            layer.rid = rid
        layer.bytes += size
        layer.last_at = now
        return layer

    def ranked(self, now: float) -> list[Layer]:
        """The layers sending now whose bitrate is measured, smallest picture first (lowest
        bitrate first where sizes are equal or unknown)."""
        live = []
        for ssrc, layer in list(self.by_ssrc.items()):
            if now - layer.last_at > LAYER_IDLE_SECONDS:
                if now - layer.last_at > 60:
                    del self.by_ssrc[ssrc]  # a source gone for good (the browser's SSRCs change)
                continue
            elapsed = now - layer.window_at
            if elapsed >= RATE_WINDOW_SECONDS:
                layer.bps = 8 * (layer.bytes - layer.window_bytes) / elapsed
                layer.window_at, layer.window_bytes = now, layer.bytes
            if layer.bps >= 0 and now - layer.active_since >= LAYER_STEADY_SECONDS:
                live.append(layer)
        live.sort(key=lambda layer: (layer.area, layer.bps))
        return live

    def top(self, now: float) -> Layer | None:
        """The largest layer sending now (measured or not)."""
        live = [
            layer for layer in self.by_ssrc.values() if now - layer.last_at <= LAYER_IDLE_SECONDS
        ]
        return max(live, key=lambda layer: (layer.area, layer.bytes), default=None)


class LayerChoice:
    """Which layer one subscriber is sent, from what its downlink reports.

    Its own REMB and receiver reports set a limit when the layer it is sent does not fit: more
    than LOSS_CONGESTED of what it was sent lost (the limit is what arrived), or its estimate
    falling, below CONGESTED_SHARE of the layer's bitrate (the limit is that estimate). Only a
    falling estimate says so: a receiver's estimator (Chromium's, for a sender without
    transport-wide feedback) starts low and ramps by 8 % a second up to 1.5x what arrives, so a
    low but rising REMB is an estimator catching up, while on overuse it drops at once to 85 % of
    what arrives. It is not read for ESTIMATE_SETTLE_SECONDS after the subscriber starts or is
    sent a larger layer (the key frame's burst); loss is read throughout. The limit grows
    LIMIT_GROWTH a second and is released once it has grown past the largest layer.
    """

    def __init__(self) -> None:
        self.ssrc: int | None = None
        self.layer_bps = 0.0
        self.limit = GrowingLimit()
        self.estimate_bps = 0.0
        # When its REMB stopped being read (it started, or stepped up), and when it last stepped up.
        self.went_up_at = float("-inf")
        self.stepped_up_at = float("-inf")
        self.hold_until = float("-inf")
        self.hold = UP_HOLD_START_SECONDS

    def report(self, estimate_bps: float, now: float) -> None:
        """The subscriber's REMB."""
        falling = estimate_bps < ESTIMATE_FALL_SHARE * self.estimate_bps
        self.estimate_bps = estimate_bps
        if now - self.went_up_at < ESTIMATE_SETTLE_SECONDS or self.layer_bps <= 0:
            return
        if falling and estimate_bps < CONGESTED_SHARE * self.layer_bps:
            self.limit.lower(estimate_bps, now)

    def report_loss(self, fraction: float, sent_bps: float, now: float) -> None:
        """The share of what it was sent (`sent_bps`, about the same time) that the subscriber
        lost (about the last second)."""
        arrived = arrived_if_congested(fraction, sent_bps)
        if arrived is not None:
            self.limit.lower(arrived, now)

    def choose(self, layers: list[Layer], now: float) -> Layer | None:
        """The layer to send, from `layers` (as `Layers.ranked` gives them)."""
        if not layers:
            return None
        limit = self.limit.grown(now)
        if limit is not None and limit > LIMIT_RELEASE_SHARE * layers[-1].bps:
            self.limit.limit_bps = limit = None
        target = len(layers) - 1
        if limit is not None:
            fitting = [i for i, layer in enumerate(layers) if layer.bps <= limit]
            target = fitting[-1] if fitting else 0
        current = next((i for i, layer in enumerate(layers) if layer.ssrc == self.ssrc), None)
        if current is None:
            self.went_up_at = now
        elif target > current:
            if now < self.hold_until:
                target = current
            else:
                self.went_up_at = self.stepped_up_at = now
        elif target < current:
            if now - self.stepped_up_at < UP_FAILED_SECONDS:
                self.hold_until = now + self.hold
                self.hold = min(2 * self.hold, UP_HOLD_MAX_SECONDS)
            elif now - self.stepped_up_at > UP_HOLD_MAX_SECONDS:
                self.hold = UP_HOLD_START_SECONDS
        self.ssrc = layers[target].ssrc
        self.layer_bps = layers[target].bps
        return layers[target]
