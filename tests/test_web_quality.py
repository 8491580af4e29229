"""The coordinator's ledger page in Chromium: reached from the queue, it shows a signed second
opinion's figures with their counts, records an outcome and shows the PPV it makes."""

from __future__ import annotations

import json
import urllib.request
from typing import TYPE_CHECKING, Any

from browser import console_errors, coordinator_token, probelink_token, save_screenshot
from phantom import BREAST_REQUEST, phantom_png
from servers import Server

if TYPE_CHECKING:
    from playwright.async_api import Browser

TIMEOUT_MS = 20_000


def call(server: Server, path: str, token: str, body: Any = None, method: str = "POST") -> Any:
    request = urllib.request.Request(
        server.url + path,
        data=body if isinstance(body, bytes) or body is None else json.dumps(body).encode(),
        method=method,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "image/png" if isinstance(body, bytes) else "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def signed_breast_opinion(server: Server, coordinator: str) -> str:
    """A first read of BI-RADS 4A that the second opinion keeps at 4B, signed."""
    cid = call(server, "/api/consultations", coordinator, BREAST_REQUEST)["id"]
    expert = probelink_token(server, "--role", "expert", "--sub", "reader-1", "--consultation", cid)
    image = call(server, f"/api/consultations/{cid}/captures", expert, phantom_png(2))
    report = {
        "findings": "Irregular hypoechoic mass with angular margins.",
        "category": "4B",
        "recommendation": "Ultrasound-guided core biopsy.",
        "concordance": "agree",
        "technical_quality": {"grade": "adequate"},
        "key_image_ids": [image["key_image_id"]],
    }
    call(server, f"/api/consultations/{cid}/report", expert, report, method="PUT")
    call(server, f"/api/consultations/{cid}/report/sign", expert, {})
    return cid


async def test_coordinator_reads_the_ledger_and_records_an_outcome(
    live_server: Server, chromium: Browser
) -> None:
    token = coordinator_token(live_server)
    cid = signed_breast_opinion(live_server, token)
    context = await chromium.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    errors = console_errors(page)

    # The queue links to the ledger, carrying the coordinator's token.
    await page.goto(f"{live_server.url}/queue#token={token}")
    await page.locator("#quality-link").click()
    await page.wait_for_url("**/quality#token=*", timeout=TIMEOUT_MS)
    breast = page.locator("#ledger-breast")
    await breast.wait_for(timeout=TIMEOUT_MS)
    assert "1 of 1" in await breast.locator("tr", has_text="Category agreement").inner_text()
    ppv = breast.locator("tr", has_text="PPV of a biopsy recommendation: second opinion")
    assert "no cases" in await ppv.inner_text()

    # The outcome: a core biopsy, malignant.
    await page.locator(f"#signed tr[data-id='{cid}'] button").click()
    await page.select_option("#breast-result", "biopsy")
    await page.select_option("#breast-pathology", "malignant")
    await page.fill("#breast-date", "2026-11-02")
    await page.locator("#outcome-form button[type=submit]").click()
    await page.locator(f"#signed tr[data-id='{cid}'] .recorded", has_text="version 1").wait_for(
        timeout=TIMEOUT_MS
    )
    await page.wait_for_function(
        "() => document.getElementById('ledger-breast').textContent.includes('100.0 % (95% CI')",
        timeout=TIMEOUT_MS,
    )
    text = await ppv.inner_text()
    assert "100.0 % (95% CI 20.6 %\u2013100.0 %), 1 of 1" in text, text
    reader = page.locator("#readers td.reader")
    assert (await reader.inner_text()).startswith("R-")
    await save_screenshot(page, "quality-ledger")
    record = call(live_server, f"/api/consultations/{cid}", token, method="GET")
    assert record["outcome"]["current"]["breast"]["pathology"] == "malignant"
    assert errors == []

    # An expert's link does not open it (a new document: only the fragment would differ).
    expert = probelink_token(live_server, "--role", "expert", "--sub", "reader-1")
    page = await context.new_page()
    await page.goto(f"{live_server.url}/quality#token={expert}")
    await page.locator("#refused").wait_for(timeout=TIMEOUT_MS)
    await context.close()
