"""Headless Chromium against a real `probelink serve`: the page, Socket.IO and the fake camera."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from browser import console_errors, coordinator_token, save_screenshot
from phantom import BANNER_HEIGHT
from servers import Server, post_json

if TYPE_CHECKING:
    from playwright.async_api import Browser

TIMEOUT_MS = 15_000


async def test_index_page_reports_the_server_health(live_server: Server, chromium: Browser) -> None:
    page = await chromium.new_page()
    errors = console_errors(page)
    await page.goto(f"{live_server.url}/")
    await page.wait_for_function(
        "document.getElementById('status').textContent.startsWith('Server ')", timeout=TIMEOUT_MS
    )
    status = await page.inner_text("#status")
    await save_screenshot(page, "web-smoke-index")
    assert re.fullmatch(r"Server ok, version \S+, records in sqlite\.", status), status
    listed = await page.evaluate(
        """async (token) => (await fetch("/api/consultations",
                                         { headers: { Authorization: `Bearer ${token}` } })).status""",
        coordinator_token(live_server),
    )
    assert listed == 200  # the CLI's token is signed by the server's own key ring
    assert errors == []


async def test_vendored_socketio_client_gets_the_refusal_of_a_bad_token(
    live_server: Server, chromium: Browser
) -> None:
    page = await chromium.new_page()
    errors = console_errors(page)
    await page.goto(f"{live_server.url}/")
    refusal = await page.evaluate(
        """async () => {
          const { io } = await import("/static/vendor/socket.io.esm.min.js");
          return await new Promise((resolve) => {
            const socket = io("/live", { auth: { token: "not-a-token" }, reconnection: false });
            socket.on("connect", () => { socket.disconnect(); resolve({ connected: true }); });
            socket.on("connect_error", (err) => {
              socket.disconnect();
              resolve({ message: err.message, data: err.data ?? null });
            });
          });
        }"""
    )
    assert "connected" not in refusal, refusal
    # The refusal's error object (docs/protocol.md) is the connect error's data.
    assert (refusal["data"] or {}).get("code") == "token_malformed", refusal
    assert errors == []


async def test_get_user_media_plays_the_phantom_file(
    live_server: Server, chromium: Browser
) -> None:
    """The fake camera is the Y4M phantom: 640x480, dark banner with white text, speckle below."""
    page = await chromium.new_page()
    await page.goto(f"{live_server.url}/")  # http://127.0.0.1 is a secure context
    seen = await page.evaluate(
        """async (bannerHeight) => {
          const stream = await navigator.mediaDevices.getUserMedia({ video: true });
          const [track] = stream.getVideoTracks();
          const { width, height } = track.getSettings();
          const video = document.createElement("video");
          video.muted = true;
          video.srcObject = stream;
          await video.play();
          await new Promise((resolve) => video.requestVideoFrameCallback(resolve));
          const canvas = document.createElement("canvas");
          canvas.width = width;
          canvas.height = height;
          const context = canvas.getContext("2d", { willReadFrequently: true });
          context.drawImage(video, 0, 0);
          const luma = (y0, y1) => {
            const { data } = context.getImageData(0, y0, width, y1 - y0);
            let sum = 0, max = 0;
            for (let i = 0; i < data.length; i += 4) {
              const value = (data[i] + data[i + 1] + data[i + 2]) / 3;
              sum += value;
              max = Math.max(max, value);
            }
            return { mean: sum / (data.length / 4), max };
          };
          const result = {
            width, height, banner: luma(2, bannerHeight - 2), body: luma(bannerHeight + 8, height),
          };
          track.stop();
          return result;
        }""",
        BANNER_HEIGHT,
    )
    assert (seen["width"], seen["height"]) == (640, 480), seen
    assert seen["banner"]["max"] > 200, seen  # white patient text
    assert seen["banner"]["mean"] < seen["body"]["mean"], seen  # on black
    assert 20 < seen["body"]["mean"] < 90, seen  # the speckled sector


async def test_ice_host_candidates_are_ip_addresses(live_server: Server, chromium: Browser) -> None:
    """mDNS is off, so aiortc can reach the browser's host candidates without resolving names."""
    page = await chromium.new_page()
    await page.goto(f"{live_server.url}/")
    candidates = await page.evaluate(
        """async () => {
          const pc = new RTCPeerConnection();
          pc.createDataChannel("probe");
          const found = [];
          const complete = new Promise((resolve) => {
            pc.onicecandidate = (event) => event.candidate ? found.push(event.candidate.candidate)
                                                           : resolve();
          });
          await pc.setLocalDescription(await pc.createOffer());
          await complete;
          pc.close();
          return found;
        }"""
    )
    hosts = [c for c in candidates if " typ host" in c]
    assert hosts, candidates
    assert not [c for c in hosts if ".local " in c], hosts


async def test_a_queue_refresh_keeps_unchanged_rows_and_the_focus(
    live_server: Server, chromium: Browser
) -> None:
    """The queue re-reads its list on every change; it used to rebuild every row, losing the
    focus."""
    token = coordinator_token(live_server)
    request = {"clinical_question": "q", "urgency": "routine", "incomplete_reason": "test request"}
    first = post_json(live_server, "/api/consultations", token, request)["id"]
    page = await chromium.new_page()
    errors = console_errors(page)
    await page.goto(f"{live_server.url}/queue#token={token}")
    row = page.locator(f"#queue tr[data-id='{first}']")
    await row.wait_for(timeout=TIMEOUT_MS)
    await row.evaluate("(node) => { node.dataset.kept = 'yes'; }")
    await row.get_by_role("button", name="Join link").focus()
    second = post_json(live_server, "/api/consultations", token, {**request, "urgency": "urgent"})
    # The next refresh brings the new, more urgent request above the first...
    await page.locator(f"#queue tr[data-id='{second['id']}']").wait_for(timeout=TIMEOUT_MS)
    # ...and leaves the first row as it was, focus included.
    assert await row.get_attribute("data-kept") == "yes"
    assert await page.evaluate("document.activeElement.textContent") == "Join link"
    assert errors == []
