"""The pages a clinician meets around the live room, in real Chromium: the live queue, join links
as copy buttons and QR codes, and a page opened with a refused token."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from browser import coordinator_token, probelink
from servers import Server
from test_web_e2e import TIMEOUT_MS, http, new_page

if TYPE_CHECKING:
    from playwright.async_api import Browser

WEB_CLIENT = Path(__file__).resolve().parents[1] / "web_client"
DVT_REQUEST = {
    "clinical_question": "Swollen left calf: DVT?",
    "application": "dvt",
    "urgency": "urgent",
    "patient_ref": "PSEUDO-4711",
    "device": {"manufacturer": "Acme", "model": "U1"},
    "incomplete_reason": "after hours",
}


def test_the_queue_page_does_not_poll() -> None:
    """Its only timer counts the time left down on the page; the list is read on events."""
    source = (WEB_CLIENT / "queue.js").read_text()
    assert re.findall(r"setInterval\(([^,]+),", source) == ["countDown"]
    assert re.search(r"function countDown\(\) \{[^}]*\}", source)
    assert "api(" not in re.search(r"function countDown\(\) \{[^}]*\}", source).group(0)
    assert 'feed.on("queue_changed"' in source


async def test_a_request_appears_on_an_open_queue_page_without_a_reload(
    live_server: Server, chromium: Browser
) -> None:
    token = coordinator_token(live_server)
    probelink(live_server, "expert", "add", "--sub", "dr-vein", "--name", "Dr Vein",
              "--subspecialty", "dvt")  # fmt: skip
    context, page, errors = await new_page(chromium)
    await page.goto(f"{live_server.url}/queue#token={token}")
    await page.wait_for_function(
        "() => document.getElementById('status').textContent.startsWith('0 open')",
        timeout=TIMEOUT_MS,
    )
    loads = []
    page.on("framenavigated", lambda frame: loads.append(frame.url))

    cid = http(live_server, "/api/consultations", token, DVT_REQUEST)["id"]
    row = page.locator(f"#queue tr[data-id='{cid}']")
    await row.wait_for(timeout=TIMEOUT_MS)
    text = await row.inner_text()
    for shown in ("PSEUDO-4711", "Acme U1", "dvt", "nothing yet"):
        assert shown in text, text
    accession = http(live_server, f"/api/consultations/{cid}", token)["accession_number"]
    assert f"Accession {accession}" in text
    assert re.search(r"^in (\d+ h )?\d+ min$", await row.locator("td").nth(1).inner_text())

    # Assigned through the API: the row says so without a reload.
    http(live_server, f"/api/consultations/{cid}/assign", token, {"expert": "dr-vein"})
    await page.wait_for_function(
        f"() => document.querySelector(\"#queue tr[data-id='{cid}'] select\").value === 'dr-vein'",
        timeout=TIMEOUT_MS,
    )
    # Cancelled: the row leaves.
    http(live_server, f"/api/consultations/{cid}/cancel", token, {"reason": "duplicate"})
    await row.wait_for(state="detached", timeout=TIMEOUT_MS)
    assert loads == []
    assert errors == []
    await context.close()
