"""Simulcast's parts without a network: the offer's RIDs and the answer's lines, a key frame's
declared size, the layers ranked and measured, and which layer a subscriber is sent; and the
answer's candidates given a node's media address."""

from __future__ import annotations

import pytest

from server.errors import BadRequest
from server.media.layers import (
    ESTIMATE_SETTLE_SECONDS,
    LAYER_IDLE_SECONDS,
    LAYER_STEADY_SECONDS,
    UP_HOLD_START_SECONDS,
    Layer,
    LayerChoice,
    Layers,
)
from server.media.rtp import vp8_descriptor, vp8_keyframe_size
from server.media.sdp import announce, answer_simulcast, simulcast_rids

# The video section of a Chromium offer with three encodings (trimmed).
CHROMIUM_OFFER = (
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\n"
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"
    "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n"
    "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n"
    "a=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n"
    "a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\na=simulcast:send q;h;f\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=sendrecv\r\n"
    "a=rtpmap:111 opus/48000/2\r\n"
)


def test_the_offer_s_rids_are_read_and_the_answer_receives_them() -> None:
    assert simulcast_rids(CHROMIUM_OFFER, "0") == ["q", "h", "f"]
    assert simulcast_rids(CHROMIUM_OFFER, "1") == []
    answer = CHROMIUM_OFFER.replace("a=sendonly", "a=recvonly").replace(" send", " recv")
    answer = answer.split("a=rid:")[0] + "m=audio" + CHROMIUM_OFFER.split("m=audio")[1]
    written = answer_simulcast(answer, "0", ["q", "h", "f"])
    video, audio = written.split("m=audio")
    assert "a=rid:q recv\r\na=rid:h recv\r\na=rid:f recv\r\na=simulcast:recv q;h;f\r\n" in video
    assert "simulcast" not in audio and "a=rid" not in audio
    # Paused layers (~) and alternatives (,) are layers too.
    paused = CHROMIUM_OFFER.replace("send q;h;f", "send ~q;h,f")
    assert simulcast_rids(paused, "0") == ["q", "h", "f"]


@pytest.mark.parametrize(
    "line",
    [
        "a=simulcast:recv q;h;f",  # a publisher sends
        "a=simulcast:send q;h;f;x",  # more layers than a room uses, one not an a=rid
        "a=simulcast:send q;q",  # twice
        "a=simulcast:send q;h;z",  # not sent as a=rid
    ],
)
def test_a_simulcast_line_the_relay_cannot_use_is_refused_by_name(line: str) -> None:
    offer = CHROMIUM_OFFER.replace("a=simulcast:send q;h;f", line)
    with pytest.raises(BadRequest) as refused:
        simulcast_rids(offer, "0")
    assert refused.value.code == "invalid_sdp" and "simulcast" in str(refused.value)


def test_a_key_frame_declares_its_size() -> None:
    # Descriptor (X, I with a 15-bit picture id), frame tag (key, shown), start code, 640x360.
    payload = bytes([0x90, 0x80, 0x81, 0x23, 0x50, 0x12, 0x00, 0x9D, 0x01, 0x2A])
    payload += (640).to_bytes(2, "little") + (360 | 0x4000).to_bytes(2, "little") + b"\x00" * 8
    descriptor = vp8_descriptor(payload)
    assert descriptor is not None and descriptor.keyframe
    assert vp8_keyframe_size(payload, descriptor) == (640, 360)  # the scale bits are not size
    delta = bytes([0x90, 0x80, 0x81, 0x24, 0x51]) + b"\x00" * 12
    delta_descriptor = vp8_descriptor(delta)
    assert delta_descriptor is not None
    assert vp8_keyframe_size(delta, delta_descriptor) is None


def sending(layers: Layers, ssrc: int, bps: int, start: float, end: float) -> None:
    """Packets of `ssrc` every half second from `start` to `end`, at `bps`."""
    steps = round((end - start) / 0.5)
    layers.packet(ssrc, None, 0, start)
    for step in range(1, steps + 1):
        layers.packet(ssrc, None, bps // 16, start + 0.5 * step)


def three_layers(now: float, rates: tuple[int, int, int] = (150_000, 450_000, 2_000_000)) -> Layers:
    """Layers q, h, f sending steadily for 4 s up to `now`, their sizes known."""
    layers = Layers()
    for ssrc, (rid, size, bps) in enumerate(
        zip("qhf", [(320, 180), (640, 360), (1280, 720)], rates, strict=True), start=1
    ):
        layer = layers.packet(ssrc, rid, 0, now - 4)
        layer.width, layer.height = size
        sending(layers, ssrc, bps, now - 4, now)
    return layers


def test_layers_are_ranked_by_picture_size_and_measured() -> None:
    layers = three_layers(10.0)
    ranked = layers.ranked(10.0)
    assert [layer.rid for layer in ranked] == ["q", "h", "f"]
    assert [round(layer.bps, -3) for layer in ranked] == [150_000, 450_000, 2_000_000]
    assert layers.top(10.0) is ranked[-1]
    # A layer the browser stops sending is no longer offered ...
    later = 10.0 + LAYER_IDLE_SECONDS + 0.5
    sending(layers, 1, 150_000, 10.0, later)
    sending(layers, 2, 450_000, 10.0, later)
    assert [layer.rid for layer in layers.ranked(later)] == ["q", "h"]
    # ... nor again until it has been sending for a while (it may stop again at once).
    sending(layers, 3, 2_000_000, later, later + LAYER_STEADY_SECONDS - 0.5)
    sending(layers, 1, 150_000, later, later + LAYER_STEADY_SECONDS - 0.5)
    sending(layers, 2, 450_000, later, later + LAYER_STEADY_SECONDS - 0.5)
    ranked = layers.ranked(later + LAYER_STEADY_SECONDS - 0.5)
    assert [layer.rid for layer in ranked] == ["q", "h"]
    assert layers.top(later) is not None and not layers.by_ssrc[3].steady(later + 1)
    # Without sizes (H.264), by bitrate.
    unsized = Layers()
    for ssrc, bps in ((7, 900_000), (8, 100_000)):
        sending(unsized, ssrc, bps, 0.0, 4.0)
    assert [layer.ssrc for layer in unsized.ranked(4.0)] == [8, 7]


def rid(layer: Layer | None) -> str | None:
    return layer.rid if layer is not None else None


def congested(choice: LayerChoice, estimate_bps: int, now: float) -> None:
    """A REMB that falls to `estimate_bps` (an overusing receiver's estimator's drop)."""
    choice.report(2 * estimate_bps, now)
    choice.report(estimate_bps, now + 0.05)


def test_a_subscriber_is_sent_the_largest_layer_its_downlink_carries() -> None:
    now = 100.0
    ranked = three_layers(now).ranked(now)
    choice = LayerChoice()
    assert choice.choose([], now) is None
    assert rid(choice.choose(ranked, now)) == "f"  # not limited: the largest
    # Its REMB is not read while its estimator settles after the start ...
    congested(choice, 300_000, now + 1)
    assert rid(choice.choose(ranked, now + 1.1)) == "f"
    # ... and a low REMB that rises is an estimator catching up, not a congested link ...
    choice.report(300_000, now + ESTIMATE_SETTLE_SECONDS + 0.1)
    choice.report(320_000, now + ESTIMATE_SETTLE_SECONDS + 0.15)
    assert rid(choice.choose(ranked, now + ESTIMATE_SETTLE_SECONDS + 0.2)) == "f"
    # ... but one that falls below the layer's bitrate is: the largest layer that fits.
    congested(choice, 300_000, now + ESTIMATE_SETTLE_SECONDS + 0.1)
    assert rid(choice.choose(ranked, now + ESTIMATE_SETTLE_SECONDS + 0.2)) == "q"
    # The limit grows 8 % a second: past h's 450 kbit/s after about 5.3 s.
    later = now + ESTIMATE_SETTLE_SECONDS + 0.1
    assert rid(choice.choose(ranked, later + 5.0)) == "q"
    assert rid(choice.choose(ranked, later + 5.6)) == "h"
    # Heavy loss: what arrived is the limit.
    choice.report_loss(0.5, 600_000, later + 6)
    assert rid(choice.choose(ranked, later + 6.1)) == "q"
    # Once grown past the largest layer, the limit is gone.
    assert rid(choice.choose(ranked, later + 60)) == "f"


def test_a_failed_step_up_waits_longer_each_time() -> None:
    start = 100.0
    ranked = three_layers(start).ranked(start)
    choice = LayerChoice()
    choice.choose(ranked, start)
    settled = start + ESTIMATE_SETTLE_SECONDS + 0.1
    congested(choice, 400_000, settled)  # below 90 % of f, and h does not fit either
    assert rid(choice.choose(ranked, settled + 0.1)) == "q"
    # The limit grows past h within 2 s: up, and straight back down once the REMB is read.
    up = settled + 2
    assert rid(choice.choose(ranked, up)) == "h"
    down = up + ESTIMATE_SETTLE_SECONDS + 0.1
    congested(choice, 400_000, down)
    assert rid(choice.choose(ranked, down + 0.1)) == "q"
    # Held down while the hold lasts, though the limit has grown past h again.
    assert rid(choice.choose(ranked, down + UP_HOLD_START_SECONDS - 0.5)) == "q"
    again = down + UP_HOLD_START_SECONDS + 0.2
    assert rid(choice.choose(ranked, again)) == "h"
    # Failing again holds twice as long.
    down = again + ESTIMATE_SETTLE_SECONDS + 0.1
    congested(choice, 400_000, down)
    assert rid(choice.choose(ranked, down + 0.1)) == "q"
    assert rid(choice.choose(ranked, down + 2 * UP_HOLD_START_SECONDS - 0.5)) == "q"
    assert rid(choice.choose(ranked, down + 2 * UP_HOLD_START_SECONDS + 0.2)) == "h"


def test_an_announced_media_address_replaces_the_host_candidates_of_its_family() -> None:
    answer = (
        "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n"
        "a=candidate:1 1 udp 2130706431 192.0.2.2 40000 typ host\r\n"
        "a=candidate:2 1 udp 2130706431 10.0.0.5 40001 typ host\r\n"
        "a=candidate:3 1 udp 2130706431 192.0.2.2 40000 typ host\r\n"
        "a=candidate:4 1 udp 2130706431 fd00::2 40002 typ host\r\n"
        "a=candidate:5 1 udp 1694498815 198.51.100.1 50000 typ srflx raddr 0.0.0.0 rport 0\r\n"
    )
    lines = announce(answer, "203.0.113.7").split("\r\n")
    candidates = [line.split()[4:6] for line in lines if line.startswith("a=candidate:")]
    assert candidates == [
        ["203.0.113.7", "40000"],
        ["203.0.113.7", "40001"],
        ["fd00::2", "40002"],  # another family: left alone
        ["198.51.100.1", "50000"],  # not a host candidate
    ]
