"""Simulcast in real Chromium: with two experts watching, the bedside page sends its 1280x720 scan
at full, half and quarter size; the relay sends the expert whose downlink reports 400 kbit/s a
smaller layer while the other keeps 1280x720, and a still that expert captures is the 1280x720
picture all the same; with one expert left the bedside offers again with one encoding, and that
expert gets the full picture again. The experts are aiortc peers over loopback whose
REMB says what their downlink carries."""

from __future__ import annotations

import asyncio
import contextlib
import io
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
from browser import coordinator_token, open_page
from live_client import Participant
from media_bots import Bot, expert_bot
from phantom import BREAST_REQUEST, PHANTOM_DEVICE
from servers import Server, cli_env, live_session

from server.media.hooks.receive import report_estimate

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

TIMEOUT_MS = 30_000
POLLS = 120  # every 0.5 s
POOR_DOWNLINK_BPS = 400_000  # 400-500
GOOD_DOWNLINK_BPS = 20_000_000
FULL = (1280, 720)

# The bedside's video layers as its own statistics see them: rid -> [width, height, bytes sent]
# ("single" without simulcast).
BEDSIDE_LAYERS = """
async () => {
  const pc = window.__pcs[window.__pcs.length - 1];
  if (!pc || pc.connectionState !== "connected") return {};
  const out = {};
  (await pc.getStats()).forEach((s) => {
    if (s.type === "outbound-rtp" && s.kind === "video") {
      out[s.rid || "single"] = [s.frameWidth || 0, s.frameHeight || 0, s.bytesSent || 0];
    }
  });
  return out;
}
"""


def keyframe_sizes(bot: Bot, start: int = 0) -> list[tuple[int, int]]:
    """The sizes the VP8 key frames a bot received declare (RFC 6386 9.1), from `start` on."""
    sizes = []
    for packet in bot.received["video"][start:]:
        data = bytes(packet)
        if len(data) >= 10 and not data[0] & 1 and data[3:6] == b"\x9d\x01\x2a":
            width = int.from_bytes(data[6:8], "little") & 0x3FFF
            height = int.from_bytes(data[8:10], "little") & 0x3FFF
            sizes.append((width, height))
    return sizes


async def eventually(check: Any, what: str, within: float = 60) -> None:
    """Wait until `check()` holds (it may be a coroutine function), bounded."""
    for _ in range(int(within / 0.5)):
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"never: {what}")


async def layers_sending(bedside: Page, wait: float = 2.0) -> dict[str, tuple[int, int]]:
    """The bedside's layers that sent bytes over `wait` seconds, with their sizes."""
    before = await bedside.evaluate(BEDSIDE_LAYERS)
    await asyncio.sleep(wait)
    after = await bedside.evaluate(BEDSIDE_LAYERS)
    return {
        rid: (width, height)
        for rid, (width, height, sent) in after.items()
        if sent > before.get(rid, [0, 0, 0])[2]
    }


async def test_a_poor_downlink_gets_a_smaller_layer_while_the_other_expert_keeps_720p(
    tmp_path: Path, chromium_720p: Browser
) -> None:
    with Server(cli_env(tmp_path / "data")) as server:
        operator, *experts = live_session(
            server,
            coordinator_token(server),
            {**BREAST_REQUEST, "device": PHANTOM_DEVICE},
            experts=2,
        )
        bedside = await open_page(chromium_720p, f"{server.url}/bedside#token={operator}")
        await bedside.wait_for_function(
            "() => document.getElementById('video').videoWidth === 1280", timeout=TIMEOUT_MS
        )
        await bedside.click("#go-live")
        poor = await expert_bot(await Participant(server.url, experts[0]).connect(), voice=False)
        good = await expert_bot(await Participant(server.url, experts[1]).connect(), voice=False)
        reporting: asyncio.Task[None] | None = None
        try:
            assert "error" not in await poor.negotiate()
            assert "error" not in await good.negotiate()

            # Two experts watch: the bedside sends all three layers.
            sizes: dict[str, tuple[int, int]] = {}

            async def three_layers() -> bool:
                nonlocal sizes
                sizes = await layers_sending(bedside, 1.0)
                return len(sizes) == 3

            await eventually(three_layers, "the bedside sends three layers")
            assert sorted(sizes.values()) == [(320, 180), (640, 360), FULL], sizes

            # One downlink carries 400 kbit/s: that expert is switched to a smaller layer; the
            # other's carries 20 Mbit/s, and it is sent the full picture.
            def video(bot: Bot) -> Any:
                return next(t for t in bot.pc.getTransceivers() if t.kind == "video").receiver

            async def report() -> None:
                # A receiver's estimate on a link that carries 400-500 kbit/s: it rises until
                # it overuses the link, then drops (Google congestion control's AIMD).
                estimate = float(POOR_DOWNLINK_BPS)
                while True:
                    estimate *= 1.05
                    if estimate > 1.25 * POOR_DOWNLINK_BPS:
                        estimate = POOR_DOWNLINK_BPS
                    await report_estimate(video(poor), int(estimate))
                    await report_estimate(video(good), GOOD_DOWNLINK_BPS)
                    await asyncio.sleep(0.25)

            async def poor_reports() -> None:
                while True:
                    await report_estimate(video(poor), POOR_DOWNLINK_BPS)
                    await asyncio.sleep(0.25)

            reporting = asyncio.create_task(report())
            good_from = len(good.received["video"])
            poor_from = len(poor.received["video"])
            await eventually(
                lambda: any(size != FULL for size in keyframe_sizes(poor, poor_from)),
                "the poor downlink is sent a smaller layer",
            )

            # At the same time the other expert is sent the full picture (the latest key frame
            # each got: on a loaded machine the full layer may pause for a moment, and the good
            # expert follow it down and back up).
            def different_layers() -> bool:
                poor_sizes = keyframe_sizes(poor, poor_from)
                good_sizes = keyframe_sizes(good, good_from)
                return bool(poor_sizes and good_sizes) and (
                    poor_sizes[-1] != FULL and good_sizes[-1] == FULL
                )

            await eventually(different_layers, "the poor downlink small, the other full")

            # Captures take the largest layer, whichever the capturing expert is sent.
            ack = await poor.participant.call("capture", {"kind": "still"})
            assert "key_image_id" in ack, ack
            request = urllib.request.Request(
                f"{server.url}/api/key-images/{ack['key_image_id']}/dicom",
                headers={"Authorization": f"Bearer {experts[0]}"},
            )
            body = await asyncio.to_thread(
                lambda: urllib.request.urlopen(request, timeout=10).read()
            )
            still = pydicom.dcmread(io.BytesIO(body))
            assert (still.Columns, still.Rows) == FULL

            # One expert left: the bedside offers again with one encoding, and the expert whose
            # downlink is poor gets the full picture again (the bedside's rate capped for it).
            reporting.cancel()
            await good.close()
            reporting = asyncio.create_task(poor_reports())

            async def full_only() -> bool:
                return set((await layers_sending(bedside, 1.0)).values()) == {FULL}

            await eventually(full_only, "the bedside sends the full picture only")
            poor_from = len(poor.received["video"])
            await eventually(
                lambda: FULL in keyframe_sizes(poor, poor_from),
                "the remaining expert is sent the full picture",
            )
        finally:
            if reporting is not None:
                reporting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporting
            await poor.close()
            with contextlib.suppress(Exception):
                await good.close()
            await bedside.context.close()
