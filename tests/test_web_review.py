"""The asynchronous review in real Chromium: files sent from the bedside page, read in the
expert's viewer (cine playback, frame step) and measured in millimetres.

The bedside uploads a recorded clip (MP4) and a scanner's DICOM file (no type, recognized by its
content) through the upload panel; a file of another kind is refused on its own line. The expert
opens the clip in the viewer, plays it and steps it frame by frame; on the scanner's image a
caliper reads its length from the ultrasound region (0.1 mm a pixel); on the clip, which has no
region, a two-point calibration on the depth scale gives the caliper its millimetres.
"""

from __future__ import annotations

import urllib.request
from typing import TYPE_CHECKING

from browser import coordinator_token, save_screenshot
from live_client import Participant
from phantom import PHANTOM_DEVICE, phantom_png
from pydicom.uid import ExplicitVRLittleEndian
from scanner_files import recorded_clip, scanner_file
from servers import Server
from test_web_e2e import TIMEOUT_MS, http, new_page, upload_png

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page


async def click_at(page: Page, x: float, y: float) -> None:
    """Click the viewer's picture at (x, y) in the picture's own pixels (scrolled into view)."""
    canvas = page.locator("#viewer-canvas")
    box = await canvas.bounding_box()
    size = await page.evaluate(
        "() => { const c = document.getElementById('viewer-canvas'); return [c.width, c.height]; }"
    )
    assert box is not None
    await canvas.click(position={"x": x * box["width"] / size[0], "y": y * box["height"] / size[1]})


def attach_prior(server: Server, cid: str, token: str, data: bytes) -> None:
    request = urllib.request.Request(
        f"{server.url}/api/consultations/{cid}/priors",
        data=data,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/dicom"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 201


async def counter_is(page: Page, text: str) -> None:
    await page.wait_for_function(
        "(t) => document.getElementById('viewer-counter').textContent === t",
        arg=text,
        timeout=TIMEOUT_MS,
    )


async def open_in_viewer(page: Page, key_image_id: str, frames: int) -> None:
    await page.locator(f"figure[data-key-image='{key_image_id}'] button.open").click()
    await counter_is(page, f"Frame 1 / {frames}")


async def test_files_sent_from_the_bedside_are_played_and_measured_in_the_viewer(
    live_server: Server, chromium: Browser
) -> None:
    token = coordinator_token(live_server)
    record = http(
        live_server,
        "/api/consultations",
        token,
        {
            "clinical_question": "Lump?",
            "urgency": "urgent",
            "application": "breast",
            "device": PHANTOM_DEVICE,
            "incomplete_reason": "sent for review",
        },
    )
    cid, accession = record["id"], record["accession_number"]
    invite = {"role": "operator", "name": "Bedside"}
    operator = http(live_server, f"/api/consultations/{cid}/invites", token, invite)
    expert = http(
        live_server,
        f"/api/consultations/{cid}/invites",
        token,
        {"role": "expert", "name": "Reader"},
    )

    context, page, errors = await new_page(chromium)
    await page.goto(f"{live_server.url}/bedside#token={operator['token']}")
    await page.wait_for_function(
        "(a) => document.getElementById('accession').textContent.includes(a)",
        arg=accession,
        timeout=TIMEOUT_MS,
    )
    clip = recorded_clip("mp4", frames=30, width=640, height=480)
    scan = scanner_file(accession, frames=4)
    await page.set_input_files(
        "#upload-input",
        files=[
            {"name": "sweep.mp4", "mimeType": "video/mp4", "buffer": clip},
            {"name": "IM0001", "mimeType": "", "buffer": scan},
            {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image"},
        ],
    )
    for name in ("sweep.mp4", "IM0001"):
        await page.locator(f"#uploads li[data-upload='{name}'][data-outcome='stored']").wait_for(
            timeout=TIMEOUT_MS * 3
        )
    refused = page.locator("#uploads li[data-upload='notes.txt'][data-outcome='refused']")
    await refused.wait_for(timeout=TIMEOUT_MS)
    assert "not a DICOM file" in await refused.inner_text()
    await save_screenshot(page, "review-bedside-uploads")
    listed = http(live_server, f"/api/consultations/{cid}/key-images", token)["key_images"]
    by_source = {k["detail"]["source"]: k for k in listed}
    assert set(by_source) == {"video_upload", "scanner"}

    # A prior study's image, attached for comparison.
    prior = scanner_file(
        "OLD12345", width=640, height=480, syntax=ExplicitVRLittleEndian, StudyDate="20250102"
    )
    attach_prior(live_server, cid, token, prior)

    # The expert, with no live picture, reads the files in the viewer.
    expert_context, reader, reader_errors = await new_page(chromium)
    await reader.goto(f"{live_server.url}/expert#token={expert['token']}")
    # With no live picture, the page opens on the first key image.
    await reader.locator("#viewer").wait_for(state="visible", timeout=TIMEOUT_MS)
    await reader.locator("#viewer-counter", has_text="Frame 1 /").wait_for(timeout=TIMEOUT_MS)
    await open_in_viewer(reader, by_source["video_upload"]["id"], 30)
    await reader.locator("#viewer-play").click()
    await reader.wait_for_function(
        "() => !document.getElementById('viewer-counter').textContent.startsWith('Frame 1 /')",
        timeout=TIMEOUT_MS,
    )
    await reader.locator("#viewer-play").click()  # pause
    shown = await reader.locator("#viewer-counter").inner_text()
    frame = int(shown.split()[1])
    await reader.locator("#viewer-next").click()
    await counter_is(reader, f"Frame {frame % 30 + 1} / 30")
    # Beside it, the prior (its first frame, at its own size).
    await reader.locator("#viewer-compare-select option", has_text="Prior 1").wait_for(
        state="attached", timeout=TIMEOUT_MS
    )
    await reader.locator("#viewer-compare-select").select_option(label="Prior 1")
    await reader.locator("#viewer-compare-caption", has_text="Prior 1").wait_for(timeout=TIMEOUT_MS)
    size = await reader.evaluate(
        "() => { const c = document.getElementById('viewer-compare-canvas'); return [c.width, c.height]; }"
    )
    assert size == [640, 480]
    assert await reader.locator("#viewer-panes.comparing").count() == 1
    await reader.locator("#viewer-compare-select").select_option(value="")

    # No region on a recorded clip: uncalibrated, until calibrated on the depth scale.
    await click_at(reader, 100, 200)
    await click_at(reader, 300, 200)
    readout = reader.locator("#viewer-readout li")
    assert "uncalibrated" in await readout.first.inner_text()
    await reader.locator("#viewer-calibrate").click()
    await click_at(reader, 100, 100)
    await click_at(reader, 100, 300)  # 200 pixels of the depth scale...
    await reader.locator("#viewer-mm").fill("20")  # ...are 20 mm
    await reader.locator("#viewer-calibrate-set").click()
    text = await readout.first.inner_text()
    assert "20.0 mm" in text and "calibrated on the depth scale" in text, text

    # The scanner's own image: millimetres from its ultrasound region (0.1 mm a pixel).
    await open_in_viewer(reader, by_source["scanner"]["id"], 4)
    assert "ultrasound region" in await reader.locator("#viewer-calibration").inner_text()
    await click_at(reader, 400, 300)
    await click_at(reader, 400, 450)
    text = await readout.first.inner_text()
    assert text.startswith("1: 15.0 mm") and "ultrasound region" in text, text
    await click_at(reader, 400, 10)  # in the banner, outside the region
    await click_at(reader, 500, 10)
    assert "outside the calibrated region" in await readout.nth(1).inner_text()
    await reader.locator("#viewer-save").click()
    await (
        reader.locator("#viewer-saved")
        .filter(has_text="Saved (2 calipers)")
        .wait_for(timeout=TIMEOUT_MS)
    )
    listed = http(live_server, f"/api/consultations/{cid}/key-images", token)["key_images"]
    [scanned] = [k for k in listed if k["id"] == by_source["scanner"]["id"]]
    assert [c["mm"] for c in scanned["measurements"]["calipers"]] == [15.0, None]

    # A live calibration on the depth scale (another expert, over Socket.IO) is on screen when
    # the bedside captures a still: the still carries it, and the viewer reads mm from it.
    second = http(
        live_server, f"/api/consultations/{cid}/invites", token, {"role": "expert", "name": "B"}
    )
    colleague = await Participant(live_server.url, second["token"]).connect()
    depth = {"kind": "calibration", "points": [[0.1, 0.2], [0.1, 0.6]], "mm": 40}
    assert "seq" in await colleague.call("mark", depth)
    upload_png(live_server, cid, operator["token"], phantom_png(3))  # 640x480: 192 px = 40 mm
    await colleague.close()
    listed = http(live_server, f"/api/consultations/{cid}/key-images", token)["key_images"]
    [still] = [k for k in listed if k["kind"] == "still"]
    await reader.locator(f"figure[data-key-image='{still['id']}'] button.open").wait_for(
        timeout=TIMEOUT_MS
    )
    await open_in_viewer(reader, still["id"], 1)
    assert "on the depth scale" in await reader.locator("#viewer-calibration").inner_text()
    await click_at(reader, 300, 200)
    await click_at(reader, 300, 296)
    assert (await readout.first.inner_text()).startswith("1: 20.0 mm (calibrated on the depth")
    await save_screenshot(reader, "review-expert-viewer")
    assert errors == [] and reader_errors == []
    await context.close()
    await expert_context.close()


async def test_the_request_form_warns_of_a_device_without_a_profile(
    live_server: Server, chromium: Browser
) -> None:
    """Named as a new user would, "GE Healthcare / LOGIQ e" has no profile: the form says so at
    once; the phantom has one; a profile saved over the API silences the warning."""
    context, page, errors = await new_page(chromium)
    token = coordinator_token(live_server)
    await page.goto(f"{live_server.url}/#token={token}")
    warning = page.locator("#device-warning")
    await page.locator("#device_manufacturer").fill("GE Healthcare")
    await page.locator("#device_model").fill("LOGIQ e")
    await warning.filter(has_text="no de-identification profile").wait_for(timeout=TIMEOUT_MS)
    # ... with a link to the device setup page, the device filled in.
    setup = await warning.locator("a").get_attribute("href")
    assert setup is not None and setup.startswith("/setup#") and "model=LOGIQ+e" in setup
    await page.locator("#use-phantom").click()
    assert await warning.is_hidden()
    profile = {"manufacturer": "GE Healthcare", "model": "LOGIQ e", "width": 640, "height": 480}
    http(live_server, "/api/device-profiles", token, {**profile, "mask": [[0, 0, 640, 40]]})
    await page.reload()
    await page.locator("#device_manufacturer").fill("ge healthcare ")
    await page.locator("#device_model").fill("LOGIQ P9")  # another model: still warned
    await warning.filter(has_text="no de-identification profile").wait_for(timeout=TIMEOUT_MS)
    await page.locator("#device_model").fill("LOGIQ  e")  # compared as the server compares
    await warning.wait_for(state="hidden", timeout=TIMEOUT_MS)
    assert errors == []
    await context.close()
