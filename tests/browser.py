"""Real headless Chromium for end-to-end tests of the web client, driven by Playwright.

Loaded as a pytest plugin (`pytest_plugins` in conftest.py), so its fixtures need no import:

- `phantom_y4m` (session): the phantom video as a Y4M file, Chromium's fake camera; `speckle_y4m`
  (session): a 1280x720 moving-speckle scan, as a real scanner's picture moves.
- `chromium`: a `playwright.async_api.Browser` on Debian's /usr/bin/chromium, whose
  getUserMedia returns that file (640x480, 30 fps, with the fake patient banner) and whose ICE
  host candidates are real IP addresses (no mDNS), so aiortc on this machine can reach them.
- `chromium_720p`: the same with the 1280x720 scan as its camera.
- `live_server`: a real `probelink serve` on a free port with its own data directory.

Helpers to import: `coordinator_token`, `probelink_token`, `console_errors`, `save_screenshot`,
`write_phantom_y4m`, `write_y4m`, `launched_chromium`, `require_chromium`. Playwright is
imported lazily: without it (or without Chromium) the browser tests skip, or fail with
PROBELINK_REQUIRE_ALL=1.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from conftest import require
from phantom import FPS, moving_speckle_frames, phantom_frame
from servers import Server, cli_env

if TYPE_CHECKING:
    from playwright.async_api import Browser, ConsoleMessage, Error, Page, Playwright

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"
# Chromium features switched off on top of Playwright's own list (see `_disabled_features`):
# mDNS would hide the host candidates' addresses behind random `.local` names.
EXTRA_DISABLED_FEATURES = ("WebRtcHideLocalIpsWithMdns",)
CHROMIUM_ARGS = (
    "--no-sandbox",  # tests run as root, where Chromium's sandbox refuses to start
    "--use-fake-ui-for-media-stream",  # grant camera and microphone without a prompt
    "--use-fake-device-for-media-stream",  # a fake camera (the Y4M file) and microphone (a beep)
    "--autoplay-policy=no-user-gesture-required",
    # Nothing but the test server: no background requests to the internet.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-breakpad",
    "--metrics-recording-only",
    "--no-first-run",
    "--no-default-browser-check",
    "--no-pings",
)
_playwright_disabled_features: list[str] | None = None


def write_phantom_y4m(
    path: Path, frames: int = 60, width: int = 640, height: int = 480, fps: int = FPS
) -> Path:
    """Phantom frames (fake patient banner included) as a Y4M file."""
    return write_y4m(
        path, (phantom_frame(n, width, height) for n in range(frames)), width, height, fps
    )


def write_y4m(
    path: Path, frames: Iterable[np.ndarray], width: int, height: int, fps: int = FPS
) -> Path:
    """RGB frames as YUV4MPEG2 4:2:0, BT.601 studio range: what Chromium's fake camera plays."""
    assert width % 2 == 0 and height % 2 == 0, "4:2:0 needs even dimensions"
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            out.write(b"FRAME\n")
            out.write(rgb_to_i420(frame))
    return path


def rgb_to_i420(rgb: np.ndarray) -> bytes:
    """RGB (h, w, 3) uint8 to planar I420 (Y, then U and V averaged over 2x2), BT.601."""
    r, g, b = (rgb[..., i].astype(np.float32) / 255 for i in range(3))
    y = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    u = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    v = 128 + 112.0 * r - 93.786 * g - 18.214 * b
    height, width = y.shape

    def subsample(plane: np.ndarray) -> np.ndarray:
        return plane.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))

    planes = (y, subsample(u), subsample(v))
    return b"".join(np.clip(np.rint(p), 0, 255).astype(np.uint8).tobytes() for p in planes)


@pytest.fixture(scope="session")
def phantom_y4m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The phantom video (2 s, looped by Chromium) that the fake camera plays."""
    return write_phantom_y4m(tmp_path_factory.mktemp("camera") / "phantom.y4m")


async def _disabled_features(playwright: Playwright) -> list[str]:
    """Playwright's own `--disable-features` list, read once from a Chromium it launched.

    Chromium honours only the last `--disable-features` switch and Playwright puts its own
    first, so ours must repeat Playwright's features or they would be switched back on.
    """
    global _playwright_disabled_features
    if _playwright_disabled_features is None:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            page = await browser.new_page()
            await page.goto("chrome://version")
            command_line = (await page.inner_text("#command_line")).split()
        finally:
            await browser.close()
        prefix = "--disable-features="
        found = [a.removeprefix(prefix) for a in command_line if a.startswith(prefix)]
        _playwright_disabled_features = [f for f in ",".join(found).split(",") if f]
    return _playwright_disabled_features


def require_chromium() -> None:
    """Skip (or fail, in CI) unless Playwright and Debian's Chromium are installed."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        require("Chromium", False, "the Python package playwright is not installed (.[test])")
    require("Chromium", CHROMIUM.is_file(), f"{CHROMIUM} is missing (Debian package chromium)")


@pytest.fixture(scope="session")
def speckle_y4m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1280x720 scan (3 s of moving speckle, looped by Chromium): what a real scanner sends."""
    path = tmp_path_factory.mktemp("camera-720p") / "speckle.y4m"
    return write_y4m(path, moving_speckle_frames(1280, 720, 90), 1280, 720)


@asynccontextmanager
async def launched_chromium(camera: Path, *args: str) -> AsyncIterator[Browser]:
    """Headless Chromium whose camera plays `camera` (a Y4M file); closed on exit."""
    require_chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        features = [*await _disabled_features(playwright), *EXTRA_DISABLED_FEATURES]
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                *CHROMIUM_ARGS,
                f"--use-file-for-fake-video-capture={camera}",
                f"--disable-features={','.join(dict.fromkeys(features))}",
                *args,
            ],
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def chromium(phantom_y4m: Path) -> AsyncIterator[Browser]:
    """Headless Chromium with the phantom (640x480) as its camera; closed after the test."""
    async with launched_chromium(phantom_y4m) as browser:
        yield browser


@pytest.fixture
async def chromium_720p(speckle_y4m: Path) -> AsyncIterator[Browser]:
    """Headless Chromium whose camera is a 1280x720 moving-speckle scan; closed after the test."""
    async with launched_chromium(speckle_y4m) as browser:
        yield browser


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[Server]:
    """`probelink serve` on a free port (data in tmp_path/data); `.url`, `.env`; stopped after."""
    with Server(cli_env(tmp_path / "data")) as server:
        yield server


def probelink(server_or_data_dir: Server | Path, *args: str) -> str:
    """`probelink ARGS...` against a server's (or a data directory's) data; its output."""
    env = (
        server_or_data_dir.env
        if isinstance(server_or_data_dir, Server)
        else cli_env(server_or_data_dir)
    )
    result = subprocess.run(
        [sys.executable, "-m", "server", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def probelink_token(server_or_data_dir: Server | Path, *args: str) -> str:
    """`probelink token ARGS...` against a server's (or a data directory's) key ring."""
    return probelink(server_or_data_dir, "token", *args)


def coordinator_token(server_or_data_dir: Server | Path, sub: str = "desk-1") -> str:
    """A coordinator's token, as `probelink token --role coordinator --sub desk-1` prints it."""
    return probelink_token(server_or_data_dir, "--role", "coordinator", "--sub", sub)


def console_errors(page: Page) -> list[str]:
    """Start collecting the page's console errors and uncaught exceptions; the live list.

    The 404 of /favicon.ico, which Chromium asks for on its own, is not the page's error.
    """
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        url = message.location.get("url", "")
        if message.type == "error" and not url.endswith("/favicon.ico"):
            errors.append(f"console error: {message.text} ({url})")

    def on_page_error(error: Error) -> None:
        errors.append(f"page error: {error.stack or error.message}")

    page.on("console", on_console)
    page.on("pageerror", on_page_error)
    return errors


async def save_screenshot(page: Page, name: str) -> Path:
    """A full-page PNG in tests/artifacts/ (kept by CI); returns its path."""
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    path = ARTIFACTS_DIR / f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', name).strip('-.') or 'page'}.png"
    await page.screenshot(path=path, full_page=True)
    return path


# Each page records its peer connections, so the test reads the browser's own statistics.
RECORD_PEER_CONNECTIONS = """
(() => {
  const Native = window.RTCPeerConnection;
  window.__pcs = [];
  window.RTCPeerConnection = class extends Native {
    constructor(...args) { super(...args); window.__pcs.push(this); }
  };
})();
"""


async def open_page(browser: Browser, url: str) -> Page:
    """A page in a context of its own that records its peer connections (`window.__pcs`)."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    await context.add_init_script(RECORD_PEER_CONNECTIONS)
    page = await context.new_page()
    await page.goto(url)
    return page
