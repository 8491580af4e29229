"""The device setup page in Chromium, with a scanner no bundled profile knows (issue 18).

The fake camera plays a 1280x720 scan whose patient annotation sits in the lower right corner
(no profile has a rectangle there) above a depth scale. In a setup session the page proposes a
box around every line of text the server reads on the live frame; a profile that misses the
name line lets the safety net refuse a real capture; drawing the missing rectangle and saving
again makes the next capture succeed, masked and clean (OCR, dciodvfy, no patient bytes).
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from browser import coordinator_token, launched_chromium, save_screenshot, write_y4m
from dicom_checks import dciodvfy_errors, every_value, ocr, read
from live_client import Participant
from phantom import BANNER_HEIGHT, moving_speckle_frames
from PIL import Image, ImageDraw, ImageFont
from servers import Server
from test_web_e2e import TIMEOUT_MS, http, local, new_page

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

WIDTH, HEIGHT = 1280, 720
# The annotation: where this scanner writes the patient, as (x, y) of each line's text.
NAME, NAME_AT = "ROSALIND PEABODY", (830, 600)
IDENT, IDENT_AT = "ID 7730461  1962-11-05", (830, 648)
SECRETS = ("ROSALIND", "PEABODY", "7730461", "1962")
# The name line's area (text and a margin), in frame pixels.
NAME_BOX = (NAME_AT[0] - 6, NAME_AT[1] - 6, 380, 46)


def scanner_frames(count: int) -> Iterator[np.ndarray]:
    """Moving speckle (no banner at the top) with the annotation in the lower right."""
    font = ImageFont.load_default(size=30)
    for frame in islice(moving_speckle_frames(WIDTH, HEIGHT, count), count):
        frame = frame.copy()
        frame[:BANNER_HEIGHT] = 0
        image = Image.fromarray(frame)
        draw = ImageDraw.Draw(image)
        draw.rectangle((800, 580, WIDTH, HEIGHT), fill=(0, 0, 0))
        draw.text(NAME_AT, NAME, fill=(255, 255, 255), font=font)
        draw.text(IDENT_AT, IDENT, fill=(255, 255, 255), font=font)
        yield np.array(image)


@pytest.fixture
async def scanner_chromium(tmp_path: Path) -> AsyncIterator[Browser]:
    camera = write_y4m(tmp_path / "scanner.y4m", scanner_frames(60), WIDTH, HEIGHT)
    async with launched_chromium(camera) as browser:
        yield browser


async def go_live(browser: Browser, link: str) -> Page:
    _, bedside, _ = await new_page(browser)
    await bedside.goto(link)
    await bedside.wait_for_url("**/bedside#token=*")
    await bedside.wait_for_function(
        "() => document.getElementById('video').videoWidth === 1280", timeout=TIMEOUT_MS
    )
    await bedside.click("#go-live")
    return bedside


async def look_until_read(setup: Page) -> None:
    """Look at the frame until the server reads the annotation (the video takes a moment to
    arrive and to reach a legible quality)."""
    for _ in range(40):
        await setup.click("#look")
        await setup.wait_for_function(
            "() => /lines of text read|no video|no decodable|could not be decoded/"
            ".test(document.getElementById('status').textContent"
            " + document.getElementById('error').textContent)",
            timeout=TIMEOUT_MS,
        )
        if await setup.locator("#read li.found").count() >= 2:
            return
        await setup.evaluate("() => { document.getElementById('status').textContent = ''; }")
        await asyncio.sleep(1)
    raise AssertionError(await setup.locator("#read").inner_text())


async def click_frame(setup: Page, x: float, y: float) -> tuple[float, float]:
    """The page position of a frame pixel on the setup canvas."""
    box = await setup.locator("#frame").bounding_box()
    assert box is not None
    return box["x"] + x * box["width"] / WIDTH, box["y"] + y * box["height"] / HEIGHT


async def preview(setup: Page) -> str:
    await setup.evaluate("() => { document.getElementById('status').textContent = ''; }")
    await setup.click("#preview")
    status = setup.locator("#status")
    await setup.wait_for_function(
        "() => /Still read|Nothing that looks/.test(document.getElementById('status').textContent)",
        timeout=TIMEOUT_MS,
    )
    return await status.inner_text()


async def save(setup: Page) -> None:
    await setup.click("#save")
    await setup.locator("#status").filter(has_text="Profile saved").wait_for(timeout=TIMEOUT_MS)


def uncovered_text(rects: list[list[int]]) -> int:
    """How many of the annotation's text pixels the rectangles leave uncovered."""
    text = np.zeros((HEIGHT, WIDTH), dtype=bool)
    text[580:, 800:] = next(scanner_frames(1))[580:, 800:].min(axis=2) > 128
    for x, y, w, h in rects:
        text[y : y + h, x : x + w] = False
    return int(text.sum())


async def capture(server: Server, cid: str, expert: str) -> dict[str, Any]:
    participant = await Participant(server.url, expert).connect()
    try:
        for _ in range(100):
            ack: dict[str, Any] = await participant.call("capture", {"kind": "still"})
            if ack.get("error", {}).get("code") not in ("no_picture", "no_video"):
                return ack
            await asyncio.sleep(0.2)
        return ack
    finally:
        await participant.close()


async def test_a_scanner_is_set_up_in_the_browser_and_its_captures_are_clean(
    live_server: Server, scanner_chromium: Browser, tmp_path: Path
) -> None:
    token = coordinator_token(live_server)
    model = f"Sonix {uuid.uuid4().hex[:6]}"
    device = {"manufacturer": "Acme Medical", "model": model}
    context, setup, errors = await new_page(scanner_chromium)
    await setup.goto(f"{live_server.url}/setup#token={token}&manufacturer=Acme%20Medical")
    await setup.locator("#model").fill(model)
    await setup.click("#start")
    await setup.locator("#bedside-link[href]").wait_for(timeout=TIMEOUT_MS)
    link = await setup.locator("#bedside-link").get_attribute("href")
    assert link is not None
    bedside = await go_live(scanner_chromium, local(live_server, link))
    await look_until_read(setup)

    # The proposals cover both annotation lines; the page marks both as patient data.
    found = await setup.locator("#read li.found").all_inner_texts()
    assert any("name" in line for line in found), found
    assert any("identifier" in line or "date" in line for line in found), found

    # A profile missing the name line: the preview says captures would be refused.
    await setup.mouse.click(*await click_frame(setup, NAME_AT[0] + 60, NAME_AT[1] + 14))
    await setup.keyboard.press("Delete")
    assert "Captures would be refused" in await preview(setup)
    assert "name" in " ".join(await setup.locator("#read li.found").all_inner_texts())
    await save(setup)

    # A real consultation with that device: the safety net refuses its capture.
    made = http(
        live_server,
        "/api/consultations",
        token,
        {
            "clinical_question": "q",
            "urgency": "urgent",
            "device": device,
            "incomplete_reason": "test",
        },
    )
    cid = made["id"]
    operator = http(
        live_server, f"/api/consultations/{cid}/invites", token, {"role": "operator", "name": "Op"}
    )
    expert = http(
        live_server, f"/api/consultations/{cid}/invites", token, {"role": "expert", "name": "Ex"}
    )
    await go_live(scanner_chromium, local(live_server, operator["url"]))
    refused = await capture(live_server, cid, expert["token"])
    assert refused.get("error", {}).get("code") == "burned_in_text", refused
    assert http(live_server, f"/api/consultations/{cid}/key-images", token)["key_images"] == []

    # The missing rectangle drawn by hand: nothing is read any more; saved as a new version.
    x0, y0 = await click_frame(setup, NAME_BOX[0], NAME_BOX[1])
    x1, y1 = await click_frame(setup, NAME_BOX[0] + NAME_BOX[2], NAME_BOX[1] + NAME_BOX[3])
    await setup.mouse.move(x0, y0)
    await setup.mouse.down()
    await setup.mouse.move((x0 + x1) / 2, (y0 + y1) / 2)
    await setup.mouse.move(x1, y1)
    await setup.mouse.up()
    assert "Nothing that looks like patient data" in await preview(setup)
    await save(setup)
    await save_screenshot(setup, "device-setup")
    profiles = http(live_server, "/api/device-profiles", token)["profiles"]
    [saved] = [p for p in profiles if p["model"] == model]
    assert saved["version"] == 2 and (saved["width"], saved["height"]) == (WIDTH, HEIGHT)
    assert uncovered_text(saved["mask"]) == 0  # both lines of the annotation

    # Now the capture succeeds, masked and clean.
    ack = await capture(live_server, cid, expert["token"])
    assert "key_image_id" in ack, ack
    data = http(live_server, f"/api/key-images/{ack['key_image_id']}/dicom", token)
    assert dciodvfy_errors(data, tmp_path) == []
    for secret in SECRETS:
        assert secret.encode() not in data
        assert all(secret not in str(v) for v in every_value(read(data)))
    pixels = read(data).pixel_array
    assert pixels[600:700, 830:1160].max() < 40  # the annotation is masked
    seen = ocr(pixels)
    assert not any(secret in seen for secret in SECRETS), seen

    # The setup session stores nothing and ends from the page.
    await setup.click("#end")
    await setup.locator("#status").filter(has_text="ended").wait_for(timeout=TIMEOUT_MS)
    # Only the looks before the bedside's video arrived were refused (409 no_video/no_picture).
    assert [e for e in errors if "/setup/frame" not in e] == []
    await bedside.close()
    await context.close()


def test_a_setup_session_takes_no_captures_and_names_no_patient(live_server: Server) -> None:
    token = coordinator_token(live_server)
    session = {
        "kind": "device_setup",
        "clinical_question": "setup",
        "urgency": "routine",
        "device": {"manufacturer": "Acme Medical", "model": "Sonix"},
    }
    with pytest.raises(urllib.error.HTTPError) as refused:
        http(live_server, "/api/consultations", token, {**session, "patient_ref": "P-1"})
    assert refused.value.code == 400
    assert "involves no patient" in refused.value.read().decode()
    refused.value.close()
    made = http(live_server, "/api/consultations", token, session)
    assert made["kind"] == "device_setup"
    operator = http(
        live_server,
        f"/api/consultations/{made['id']}/invites",
        token,
        {"role": "operator", "name": "Op"},
    )
    request = urllib.request.Request(
        f"{live_server.url}/api/consultations/{made['id']}/captures",
        data=b"\x89PNG\r\n\x1a\n",
        headers={"Authorization": f"Bearer {operator['token']}", "Content-Type": "image/png"},
    )
    with pytest.raises(urllib.error.HTTPError) as stored:
        urllib.request.urlopen(request, timeout=10)
    assert stored.value.code == 409
    assert "device_setup_session" in stored.value.read().decode()
    stored.value.close()
    # A patient's consultation shows no setup frames.
    patient = http(
        live_server,
        "/api/consultations",
        token,
        {"clinical_question": "q", "urgency": "urgent", "incomplete_reason": "t"},
    )
    with pytest.raises(urllib.error.HTTPError) as other:
        http(live_server, f"/api/consultations/{patient['id']}/setup/frame", token, {})
    assert other.value.code == 409
    assert "not_a_setup_session" in other.value.read().decode()
    other.value.close()
