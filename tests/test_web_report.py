"""The expert writes the report beside the live picture and is told of contradictions as they
are written, in real Chromium."""

from __future__ import annotations

from typing import TYPE_CHECKING

from browser import coordinator_token, save_screenshot
from phantom import BREAST_REQUEST, phantom_png
from servers import Server
from test_web_e2e import TIMEOUT_MS, http, local, new_page, upload_png

if TYPE_CHECKING:
    from playwright.async_api import Browser, Locator, Page

WIDE = {"width": 1680, "height": 950}
LAPTOP = {"width": 1280, "height": 800}


async def box(locator: Locator) -> dict[str, float]:
    found = await locator.bounding_box()
    assert found is not None
    return found  # type: ignore[return-value]


async def picture_in_view(page: Page) -> bool:
    stage = await box(page.locator("#stage"))
    size = page.viewport_size
    assert size is not None
    return stage["y"] >= 0 and stage["y"] + stage["height"] <= size["height"]


async def test_contradictions_are_shown_while_writing_beside_the_live_picture(
    live_server: Server, chromium_720p: Browser
) -> None:
    token = coordinator_token(live_server)
    cid = http(live_server, "/api/consultations", token, BREAST_REQUEST)["id"]

    def invite(role: str, name: str) -> dict[str, str]:
        made: dict[str, str] = http(
            live_server, f"/api/consultations/{cid}/invites", token, {"role": role, "name": name}
        )
        return made

    expert, operator = invite("expert", "Dr A"), invite("operator", "Bedside")
    # The bedside streams its 1280x720 scan.
    bed_context, bedside, _ = await new_page(chromium_720p)
    await bedside.goto(local(live_server, operator["url"]))
    await bedside.wait_for_function(
        "() => document.getElementById('video').videoWidth === 1280", timeout=TIMEOUT_MS
    )
    await bedside.click("#go-live")

    context, page, errors = await new_page(chromium_720p)
    await page.set_viewport_size(WIDE)  # type: ignore[arg-type]
    await page.goto(local(live_server, expert["url"]))
    await page.locator("#waiting").wait_for(state="hidden", timeout=TIMEOUT_MS)
    await page.wait_for_function(
        "() => document.getElementById('video').videoWidth > 0", timeout=TIMEOUT_MS
    )
    upload_png(live_server, cid, operator["token"], phantom_png(4, 1280, 720))
    await page.locator("#report-key-images input").first.wait_for(timeout=TIMEOUT_MS)

    # On a wide screen the report is beside the picture, and typing keeps the picture in view.
    await page.click("#report-findings")
    await page.keyboard.type("Oval circumscribed hypoechoic mass, no posterior features.")
    stage, report = await box(page.locator("#stage")), await box(page.locator("#report"))
    assert report["x"] >= stage["x"] + stage["width"], (stage, report)
    assert await picture_in_view(page)

    # The case: BI-RADS 0 "agree" against a first read of 4A. Said before any save.
    await page.select_option("#report-category", "0")
    await page.select_option("#report-concordance", "agree")
    hard = page.locator("#report-consistency li.hard[data-field='concordance']")
    await hard.wait_for(timeout=TIMEOUT_MS)
    assert "BI-RADS 4A" in await hard.inner_text()
    assert http(live_server, f"/api/consultations/{cid}/report", token)["current"] is None
    # A recommendation that does not fit the category is advice (not blocking).
    await page.select_option("#report-category", "2")
    await page.select_option("#report-concordance", "major_discrepancy")
    await page.fill("#report-recommendation", "Ultrasound-guided core biopsy.")
    soft = page.locator("#report-consistency li[data-field='recommendation']")
    await soft.wait_for(timeout=TIMEOUT_MS)
    await hard.wait_for(state="detached", timeout=TIMEOUT_MS)
    assert "biopsy" in await soft.inner_text() and await picture_in_view(page)
    await save_screenshot(page, "report-beside-picture")

    # Signing with the hard contradiction is refused, and the reason stays on the page.
    await page.select_option("#report-category", "0")
    await page.select_option("#report-concordance", "agree")
    await page.fill("#report-recommendation", "Diagnostic mammography.")
    await page.select_option("#report-quality", "adequate")
    await page.locator("#report-key-images input").first.check()
    await hard.wait_for(timeout=TIMEOUT_MS)
    await page.click("#report-sign")
    await page.click("#report-sign")
    await page.wait_for_function(
        "() => document.getElementById('report-status').textContent.includes('contradicts')",
        timeout=TIMEOUT_MS,
    )
    assert "contradicts" in await page.locator("#error").inner_text()
    assert await page.locator("#report-signed").is_hidden()
    # Made consistent, it signs.
    await page.select_option("#report-concordance", "major_discrepancy")
    await hard.wait_for(state="detached", timeout=TIMEOUT_MS)
    await page.click("#report-sign")
    await page.click("#report-sign")
    await page.locator("#report-signed").wait_for(state="visible", timeout=TIMEOUT_MS)

    # On a laptop the report is under the picture.
    await page.set_viewport_size(LAPTOP)  # type: ignore[arg-type]
    stage, report = await box(page.locator("#stage")), await box(page.locator("#report"))
    assert report["y"] >= stage["y"] + stage["height"]
    # The refused signature is the browser's only error.
    assert [e for e in errors if "409 (Conflict)" not in e] == []
    await context.close()
    await bed_context.close()
