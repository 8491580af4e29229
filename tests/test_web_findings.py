"""The structured findings on the pages, in real Chromium: a first read entered in the lexicon on
the request form, the expert's lesions and venous segments in the report editor, where the two
reads differ, the consistency advice on a lesion, and the findings saved, restored and signed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from browser import coordinator_token, save_screenshot
from phantom import PHANTOM_DEVICE, phantom_png
from servers import Server
from test_web_e2e import TIMEOUT_MS, http, local, new_page, upload_png

from server.consultations.lexicon import (
    LESION_CHOICES,
    SEGMENT_CHOICES,
    BiRads,
    DvtSegment,
    choices,
)

if TYPE_CHECKING:
    from playwright.async_api import Browser, Locator, Page

WIDE = {"width": 1680, "height": 950}
LAPTOP = {"width": 1280, "height": 800}

FIRST_READ_LESION = {
    "side": "left",
    "clock": "2",
    "size_mm": [12, 8],
    "shape": "oval",
    "orientation": "parallel",
    "margin": ["circumscribed"],
    "echo_pattern": "hypoechoic",
    "associated_features": [],
    "category": "4A",
}
SECOND_READ_LESION = {
    "side": "left",
    "clock": "2",
    "distance_from_nipple_cm": 3,
    "size_mm": [14, 11, 9],
    "shape": "irregular",
    "orientation": "not_parallel",
    "margin": ["angular", "spiculated"],
    "echo_pattern": "hypoechoic",
    "posterior_features": "shadowing",
    "associated_features": ["architectural_distortion"],
    "category": "4C",
    "note": "Abuts the pectoral fascia",
}


def stated(lesions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Lesions as stored (every field, None where not stated) as entered: what is stated."""
    return [{k: v for k, v in lesion.items() if v is not None} for lesion in lesions]


def test_the_vocabulary_offers_the_lexicon(live_server: Server) -> None:
    vocabulary = http(live_server, "/api/vocabulary", coordinator_token(live_server))
    assert vocabulary["breast"]["lesion"] == {
        name: choices(kind) for name, kind in LESION_CHOICES.items()
    }
    assert [c["value"] for c in vocabulary["breast"]["categories"]] == list(BiRads)
    assert vocabulary["breast"]["categories"][7]["label"].startswith("BI-RADS 4C")
    assert vocabulary["dvt"]["findings"] == {
        name: choices(kind) for name, kind in SEGMENT_CHOICES.items()
    }
    assert [s["value"] for s in vocabulary["dvt"]["segments"]] == list(DvtSegment)


async def set_lesion(lesion: Locator, values: dict[str, Any]) -> None:
    """Fill one lesion of the editor as a reader does, control by control."""
    for name in ("side", "clock", "shape", "orientation", "echo_pattern", "posterior_features",
                 "category"):  # fmt: skip
        if name in values:
            await lesion.locator(f"select[data-field='{name}']").select_option(values[name])
    if "distance_from_nipple_cm" in values:
        await lesion.locator("[data-field='distance_from_nipple_cm']").fill(
            str(values["distance_from_nipple_cm"])
        )
    for n, size in enumerate(values.get("size_mm", [])):
        await lesion.locator(f"input[data-size='{n}']").fill(str(size))
    for margin in values.get("margin", []):
        await lesion.locator(f"input[data-margin='{margin}']").check()
    for feature in values.get("associated_features", []):
        await lesion.locator(f"input[data-associated_features='{feature}']").check()
    if "note" in values:
        await lesion.locator("[data-field='note']").fill(values["note"])


async def request_with_a_first_read_lesion(server: Server, browser: Browser) -> str:
    """The coordinator's request form with a structured first read: one lesion."""
    context, page, errors = await new_page(browser)
    await page.goto(f"{server.url}/#token={coordinator_token(server)}")
    await page.locator("#checklist li").first.wait_for(timeout=TIMEOUT_MS)
    await page.fill("#clinical_question", "Palpable lump left breast: solid or cystic?")
    await page.select_option("#urgency", "urgent")
    await page.select_option("#application", "breast")
    await page.click("#use-phantom")
    await page.fill("#first_read", "Oval circumscribed hypoechoic mass, BI-RADS 4A")
    await page.select_option("#first_read_birads", "4A")
    await page.click("#first-read-lesions .add-lesion")
    lesion = page.locator("#first-read-lesions [data-lesion]")
    assert await lesion.count() == 1
    # Adding puts the keyboard in the new lesion, which starts with the first read's category.
    assert await page.evaluate("() => document.activeElement.dataset.field") == "side"
    assert await lesion.locator("select[data-field='category']").input_value() == "4A"
    await set_lesion(lesion, FIRST_READ_LESION)
    # A second lesion added and removed again leaves the first as it was.
    await page.click("#first-read-lesions .add-lesion")
    await page.click("#first-read-lesions [data-lesion]:nth-child(2) .remove")
    assert await lesion.count() == 1
    await page.fill("#incomplete_reason", "Scanning now")
    await page.click("#submit")
    await page.locator("#invites").wait_for(timeout=TIMEOUT_MS)
    await save_screenshot(page, "findings-first-read")
    assert errors == []
    await context.close()
    queue = http(server, "/api/consultations", coordinator_token(server))["consultations"]
    cid: str = queue[0]["id"]
    return cid


async def expert_page(server: Server, browser: Browser, cid: str) -> tuple[Any, Page, list[str]]:
    link = http(
        server,
        f"/api/consultations/{cid}/invites",
        coordinator_token(server),
        {"role": "expert", "name": "Dr A"},
    )
    context, page, errors = await new_page(browser)
    await page.set_viewport_size(WIDE)  # type: ignore[arg-type]
    await page.goto(local(server, link["url"]))
    return context, page, errors


async def field_of(page: Page, selector: str, name: str) -> str:
    value: str = await page.locator(f"{selector} [data-field='{name}']").input_value()
    return value


async def test_breast_lesions_are_compared_checked_saved_and_signed(
    live_server: Server, chromium: Browser
) -> None:
    cid = await request_with_a_first_read_lesion(live_server, chromium)
    token = coordinator_token(live_server)
    record = http(live_server, f"/api/consultations/{cid}", token)
    assert stated(record["context"]["breast"]["first_read_lesions"]) == [FIRST_READ_LESION]
    operator = http(
        live_server,
        f"/api/consultations/{cid}/invites",
        token,
        {"role": "operator", "name": "Bedside"},
    )
    upload_png(live_server, cid, operator["token"], phantom_png(4))

    context, page, errors = await expert_page(live_server, chromium, cid)
    # The request as the expert reads it says the first read's lesion in the lexicon's words.
    await page.locator("#request dl.context").wait_for(timeout=TIMEOUT_MS)
    assert "circumscribed" in await page.locator("#request").inner_text()
    await page.locator("#report-lesions-field").wait_for(timeout=TIMEOUT_MS)
    assert await page.locator("#report-segments-field").is_hidden()
    await page.locator("#report-key-images input").first.wait_for(timeout=TIMEOUT_MS)
    key_image = await page.locator("#report-key-images input").first.get_attribute("value")
    await page.locator("#report-key-images input").first.check()

    await page.click("#report-lesions .add-lesion")
    lesion = page.locator("#report-lesions [data-lesion]")
    await set_lesion(lesion, {**SECOND_READ_LESION, "margin": []})
    # Margin: circumscribed alone, or one or more kinds of not circumscribed.
    circumscribed = lesion.locator("input[data-margin='circumscribed']")
    await circumscribed.check()
    await lesion.locator("input[data-margin='angular']").check()
    assert not await circumscribed.is_checked()
    await lesion.locator("input[data-margin='spiculated']").check()
    await circumscribed.check()
    assert await lesion.locator("input[data-margin]:checked").count() == 1
    await lesion.locator("input[data-margin='angular']").check()
    await lesion.locator("input[data-margin='spiculated']").check()
    assert not await circumscribed.is_checked()
    # The size was measured on the cited key image.
    await lesion.locator("select[data-field='size_key_image_id']").select_option(key_image)
    await page.select_option("#report-category", "4C")

    # Where the second read differs from the first, as it is written (nothing saved yet).
    differences = page.locator("#report-differences")
    for name in ("margin", "shape", "category", "orientation"):
        await differences.locator(f"li[data-field='lesions.0.{name}']").wait_for(timeout=TIMEOUT_MS)
    margin = await differences.locator("li[data-field='lesions.0.margin']").inner_text()
    assert "circumscribed" in margin and "angular, spiculated" in margin, margin
    assert await differences.locator("li[data-field='lesions.0.side']").count() == 0
    assert http(live_server, f"/api/consultations/{cid}/report", token)["current"] is None

    # A simple cyst with category 4C contradicts itself: said, and blocking signing.
    await lesion.locator("select[data-field='special_case']").select_option("simple_cyst")
    advice = page.locator("#report-consistency li[data-field='lesions.0.category']")
    await advice.wait_for(timeout=TIMEOUT_MS)
    assert "simple cyst" in await advice.inner_text()
    await save_screenshot(page, "findings-lesion-editor")
    await lesion.locator("select[data-field='special_case']").select_option("")
    await advice.wait_for(state="detached", timeout=TIMEOUT_MS)

    # On a laptop the editor is still usable: under the picture, nothing overflowing it.
    await page.set_viewport_size(LAPTOP)  # type: ignore[arg-type]
    wide = await page.evaluate(
        "() => document.getElementById('report-lesions').scrollWidth"
        " <= document.getElementById('report-lesions').clientWidth"
    )
    assert wide
    await save_screenshot(page, "findings-lesion-editor-laptop")
    await page.set_viewport_size(WIDE)  # type: ignore[arg-type]
    sheet = await page.evaluate(
        "() => document.getElementById('report-lesions').scrollWidth"
        " <= document.getElementById('report-lesions').clientWidth"
    )
    assert sheet

    # Saved: the report body carries the lesion as entered.
    await page.fill("#report-findings", "Irregular spiculated mass; see the lesion.")
    await page.fill("#report-recommendation", "Ultrasound-guided core biopsy.")
    await page.select_option("#report-concordance", "major_discrepancy")
    await page.select_option("#report-quality", "adequate")
    await page.click("#report-save")
    await page.wait_for_function(
        "() => document.getElementById('report-status').textContent === 'Draft saved'",
        timeout=TIMEOUT_MS,
    )
    expected = {**SECOND_READ_LESION, "size_key_image_id": key_image}
    body = http(live_server, f"/api/consultations/{cid}/report", token)["current"]["body"]
    assert stated(body["lesions"]) == [expected]

    # Reloaded, the editor shows the lesion as it was saved, differences included.
    await page.reload()
    await lesion.wait_for(timeout=TIMEOUT_MS)
    assert await field_of(page, "#report-lesions", "shape") == "irregular"
    assert await field_of(page, "#report-lesions", "category") == "4C"
    assert await field_of(page, "#report-lesions", "size_key_image_id") == key_image
    assert await field_of(page, "#report-lesions", "note") == SECOND_READ_LESION["note"]
    sizes = [await lesion.locator(f"input[data-size='{n}']").input_value() for n in range(3)]
    assert sizes == ["14", "11", "9"]
    checked = lesion.locator("input[data-margin]:checked")
    assert [await checked.nth(n).get_attribute("value") for n in range(2)] == [
        "angular",
        "spiculated",
    ]
    assert await lesion.locator("input[data-associated_features]:checked").count() == 1
    await differences.locator("li[data-field='lesions.0.margin']").wait_for(timeout=TIMEOUT_MS)

    # Signed, the document says the lesion.
    await page.click("#report-sign")
    await page.click("#report-sign")
    await page.locator("#report-signed").wait_for(state="visible", timeout=TIMEOUT_MS)
    document = await page.locator("#report-document").inner_text()
    assert "Lesions" in document and "angular, spiculated" in document, document
    await save_screenshot(page, "findings-signed")
    signed = http(live_server, f"/api/consultations/{cid}/report", token)
    assert signed["signed"] and stated(signed["current"]["body"]["lesions"]) == [expected]
    assert errors == []
    await context.close()


async def test_dvt_segment_findings_are_saved_and_restored(
    live_server: Server, chromium: Browser
) -> None:
    token = coordinator_token(live_server)
    cid = http(
        live_server,
        "/api/consultations",
        token,
        {
            "clinical_question": "Swollen left calf: DVT?",
            "urgency": "urgent",
            "application": "dvt",
            "device": PHANTOM_DEVICE,
            "incomplete_reason": "after hours",
            "dvt": {
                "segments_examined": ["femoral_mid", "popliteal"],
                "compressibility": {"popliteal": "compressible"},
                "first_read_segments": [
                    {"segment": "popliteal", "compressibility": "compressible", "thrombus": "none"}
                ],
            },
        },
    )["id"]
    context, page, errors = await expert_page(live_server, chromium, cid)
    await page.locator("#report-segments-field").wait_for(timeout=TIMEOUT_MS)
    assert await page.locator("#report-lesions-field").is_hidden()
    popliteal = page.locator("#report-segments [data-segment='popliteal']")
    thrombus = popliteal.locator("select[data-field='thrombus']")
    assert await thrombus.is_hidden()  # not examined: its findings are closed
    await page.check("#report-segments input[value='popliteal']")
    await popliteal.locator("select[data-field='compressibility']").select_option(
        "non_compressible"
    )
    await thrombus.select_option("acute")
    await popliteal.locator("select[data-field='extent']").select_option("occlusive")
    femoral = page.locator("#report-segments [data-segment='femoral_mid']")
    await femoral.locator("input[data-examined]").check()
    await femoral.locator("select[data-field='compressibility']").select_option("compressible")
    await femoral.locator("input[data-flow='spontaneous']").check()
    await femoral.locator("input[data-flow='phasic']").check()
    # Examined with nothing found beyond it: covered, without findings.
    await page.check("#report-segments input[value='common_femoral']")
    differences = page.locator("#report-differences")
    for field in (
        "segment_findings.popliteal.thrombus",
        "segment_findings.popliteal.compressibility",
    ):
        await differences.locator(f"li[data-field='{field}']").wait_for(timeout=TIMEOUT_MS)
    await page.select_option("#report-category", "acute_dvt")
    await page.fill("#report-findings", "Occlusive acute thrombus in the popliteal vein.")
    await page.click("#report-save")
    await page.wait_for_function(
        "() => document.getElementById('report-status').textContent === 'Draft saved'",
        timeout=TIMEOUT_MS,
    )
    await save_screenshot(page, "findings-dvt-segments")
    body = http(live_server, f"/api/consultations/{cid}/report", token)["current"]["body"]
    assert body["segments_examined"] == ["common_femoral", "femoral_mid", "popliteal"]
    assert body["segment_findings"] == [
        {
            "segment": "femoral_mid",
            "compressibility": "compressible",
            "thrombus": None,
            "flow": ["spontaneous", "phasic"],
            "extent": None,
        },
        {
            "segment": "popliteal",
            "compressibility": "non_compressible",
            "thrombus": "acute",
            "flow": [],
            "extent": "occlusive",
        },
    ]

    await page.reload()
    await thrombus.wait_for(timeout=TIMEOUT_MS)
    assert await thrombus.input_value() == "acute"
    assert await popliteal.locator("select[data-field='extent']").input_value() == "occlusive"
    flows = femoral.locator("input[data-flow]:checked")
    assert [await flows.nth(n).get_attribute("value") for n in range(await flows.count())] == [
        "spontaneous",
        "phasic",
    ]
    assert await page.locator("#report-segments input[value='common_femoral']").is_checked()
    common = page.locator("#report-segments [data-segment='common_femoral']")
    assert await common.locator("select[data-field='thrombus']").input_value() == ""
    # A segment not examined keeps its findings closed.
    assert await page.locator(
        "#report-segments [data-segment='peroneal'] select[data-field='thrombus']"
    ).is_hidden()
    assert await page.locator("#report-segments input[data-examined]:checked").count() == 3
    assert errors == []
    await context.close()


async def test_a_dvt_first_read_is_entered_per_segment_on_the_request_form(
    live_server: Server, chromium: Browser
) -> None:
    context, page, errors = await new_page(chromium)
    await page.goto(f"{live_server.url}/#token={coordinator_token(live_server)}")
    await page.locator("#checklist li").first.wait_for(timeout=TIMEOUT_MS)
    await page.fill("#clinical_question", "Swollen left calf: DVT?")
    await page.select_option("#urgency", "urgent")
    await page.select_option("#application", "dvt")
    await page.click("#use-phantom")
    assert await page.locator("#first-read-lesions-field").is_hidden()  # breast only
    popliteal = page.locator("#dvt-segments tr[data-segment='popliteal']")
    await popliteal.locator("input[name='dvt.segment']").check()
    await popliteal.locator("select[name='dvt.compressibility.popliteal']").select_option(
        "non_compressible"
    )
    await popliteal.locator("select[data-field='thrombus']").select_option("acute")
    await popliteal.locator("select[data-field='extent']").select_option("non_occlusive")
    femoral = page.locator("#dvt-segments tr[data-segment='femoral_mid']")
    await femoral.locator("input[name='dvt.segment']").check()
    await femoral.locator("select[name='dvt.compressibility.femoral_mid']").select_option(
        "compressible"
    )
    await femoral.locator("input[data-flow='phasic']").check()
    # Examined with nothing said of it: covered, without a finding.
    common = page.locator("#dvt-segments tr[data-segment='common_femoral']")
    await common.locator("input[name='dvt.segment']").check()
    # Findings of a segment not examined are not sent.
    await page.locator(
        "#dvt-segments tr[data-segment='peroneal'] select[data-field='thrombus']"
    ).select_option("chronic")
    await page.fill("#incomplete_reason", "after hours")
    await page.click("#submit")
    await page.locator("#invites").wait_for(timeout=TIMEOUT_MS)
    token = coordinator_token(live_server)
    cid = http(live_server, "/api/consultations", token)["consultations"][0]["id"]
    dvt = http(live_server, f"/api/consultations/{cid}", token)["context"]["dvt"]
    assert dvt["segments_examined"] == ["common_femoral", "femoral_mid", "popliteal"]
    assert [{k: v for k, v in f.items() if v} for f in dvt["first_read_segments"]] == [
        {"segment": "femoral_mid", "compressibility": "compressible", "flow": ["phasic"]},
        {
            "segment": "popliteal",
            "compressibility": "non_compressible",
            "thrombus": "acute",
            "extent": "non_occlusive",
        },
    ]
    assert errors == []
    await context.close()
