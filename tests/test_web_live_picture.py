"""The live picture at the size ultrasound needs, in real Chromium: a 1280x720 moving-speckle scan
from the bedside reaches the expert at 1280x720, the bedside's encoder follows the relay's
congestion feedback past 1 Mbit/s (from the browser's 300 kbit/s start), a picture that stops is
shown frozen and one that slows below the floor is said to be below diagnostic quality (never
under a "good" badge), and a reloaded bedside goes live again by itself."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from browser import coordinator_token, open_page
from phantom import BREAST_REQUEST
from servers import Server, cli_env, live_session

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

TIMEOUT_MS = 30_000
STATS_POLLS = 120  # every 0.5 s
# The relay's cap for this test's publisher: the bedside's estimate must settle exactly there.
CEILING_KBPS = 1500

# The bedside's video sender as its own statistics see it.
BEDSIDE_VIDEO = """
async () => {
  const pc = window.__pcs[window.__pcs.length - 1];
  if (!pc || pc.connectionState !== "connected") return null;
  const out = {};
  (await pc.getStats()).forEach((s) => {
    if (s.type === "outbound-rtp" && s.kind === "video") {
      Object.assign(out, { target: s.targetBitrate, width: s.frameWidth, height: s.frameHeight });
    }
    if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") {
      out.estimate = s.availableOutgoingBitrate;
    }
  });
  return out;
}
"""


async def bedside_reaches(bedside: Page, condition: Callable[[dict[str, Any]], bool]) -> None:
    """Poll the bedside's own video statistics until `condition` holds (bounded)."""
    seen: dict[str, Any] = {}
    for _ in range(STATS_POLLS):
        seen = await bedside.evaluate(BEDSIDE_VIDEO) or {}
        if condition(seen):
            return
        await bedside.wait_for_timeout(500)
    raise AssertionError(f"the bedside's video never got there; last seen {seen}")


async def expert_sees_frames(expert: Page, width: int, height: int) -> None:
    """Two new frames presented at the expert, at this size."""
    size = await expert.evaluate(
        """async () => {
          const video = document.getElementById("video");
          for (let i = 0; i < 2; i++) await new Promise((r) => video.requestVideoFrameCallback(r));
          return [video.videoWidth, video.videoHeight];
        }"""
    )
    assert size == [width, height], size


async def bedside_sender(bedside: Page, on: bool) -> None:
    """The bedside's video sender stops (or resumes) sending, its connection left up."""
    await bedside.evaluate(
        """async (on) => {
          const pc = window.__pcs[window.__pcs.length - 1];
          const sender = pc.getTransceivers().find((t) => t.receiver.track.kind === "video").sender;
          if (!on) { window.__track = sender.track; await sender.replaceTrack(null); }
          else await sender.replaceTrack(window.__track);
        }""",
        on,
    )


async def bedside_frame_rate(bedside: Page, fps: int) -> None:
    """The bedside's camera delivers at most `fps` frames per second from now on."""
    await bedside.evaluate(
        """(fps) => document.getElementById("video").srcObject.getVideoTracks()[0]
            .applyConstraints({ frameRate: { max: fps } })""",
        fps,
    )


async def test_expert_watches_720p_as_the_bedside_ramps_up_stops_and_reloads(
    tmp_path: Path, chromium_720p: Browser
) -> None:
    env = cli_env(
        tmp_path / "data",
        PROBELINK_VIDEO_BITRATE_START_KBPS="300",  # what a browser starts at by itself
        PROBELINK_VIDEO_BITRATE_CEILING_KBPS=str(CEILING_KBPS),
    )
    with Server(env) as server:
        operator, expert_token = live_session(server, coordinator_token(server), BREAST_REQUEST)
        expert = await open_page(chromium_720p, f"{server.url}/expert#token={expert_token}")
        # Before the bedside is live the expert is told what it waits for.
        await expert.wait_for_function(
            "() => document.getElementById('waiting').textContent.includes('not joined')",
            timeout=TIMEOUT_MS,
        )
        bedside = await open_page(chromium_720p, f"{server.url}/bedside#token={operator}")
        await bedside.wait_for_function(
            "() => document.getElementById('video').videoWidth === 1280", timeout=TIMEOUT_MS
        )
        source = await bedside.input_value("#source")
        await bedside.click("#go-live")

        # The scan reaches the expert at its own size.
        await expert.locator("#waiting").wait_for(state="hidden", timeout=TIMEOUT_MS)
        await expert_sees_frames(expert, 1280, 720)
        assert await expert.locator("#frozen").is_hidden()

        # The relay's feedback lifts the encoder from the browser's 300 kbit/s start past
        # 1 Mbit/s, and its REMB holds the estimate at the deployment's ceiling.
        await bedside_reaches(bedside, lambda v: (v.get("target") or 0) > 1_000_000)
        await bedside_reaches(bedside, lambda v: v.get("estimate") == CEILING_KBPS * 1000)
        sent = await bedside.evaluate(BEDSIDE_VIDEO)
        assert (sent["width"], sent["height"]) == (1280, 720), sent

        # The bedside stops sending: the expert's picture is shown frozen, the badge is not good.
        await bedside_sender(bedside, on=False)
        await expert.locator("#frozen").wait_for(state="visible", timeout=TIMEOUT_MS)
        assert (
            "no video is arriving from the bedside" in await expert.locator("#frozen").inner_text()
        )
        await expert.wait_for_function(
            "() => document.getElementById('connection').dataset.level === 'poor'",
            timeout=TIMEOUT_MS,
        )
        # ... and live again when it resumes.
        await bedside_sender(bedside, on=True)
        await expert.locator("#frozen").wait_for(state="hidden", timeout=TIMEOUT_MS)
        await expert_sees_frames(expert, 1280, 720)

        # The scanner slows to 5 frames/s: under the floor (15) for more than 2 s, the expert is
        # told the picture is below diagnostic quality, and the badge is not "good" under it.
        await bedside_frame_rate(bedside, 5)
        banner = expert.locator("#quality-banner")
        await banner.wait_for(state="visible", timeout=TIMEOUT_MS)
        text = await banner.inner_text()
        assert text.startswith("Below diagnostic quality (") and "fps, 1280\u00d7720" in text, text
        assert (
            await expert.evaluate("document.getElementById('connection').dataset.level") != "good"
        )
        await bedside_frame_rate(bedside, 30)
        await banner.wait_for(state="hidden", timeout=TIMEOUT_MS)

        # A reloaded bedside goes live again by itself (no ?live in its URL), with the same source.
        await bedside.reload()
        await bedside.wait_for_function(
            "() => document.getElementById('go-live').disabled"
            " && window.__pcs.at(-1)?.connectionState === 'connected'",
            timeout=TIMEOUT_MS,
        )
        assert await bedside.input_value("#source") == source
        assert "?live" not in bedside.url
        await expert.locator("#frozen").wait_for(state="hidden", timeout=TIMEOUT_MS)
        await expert_sees_frames(expert, 1280, 720)
        await bedside.context.close()
        await expert.context.close()
