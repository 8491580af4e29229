"""The pages a clinician meets around the live room, in real Chromium: the live queue, join links
as copy buttons and QR codes, and a page opened with a refused token."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from browser import coordinator_token, probelink, probelink_token, save_screenshot
from conftest import require
from phantom import PHANTOM_DEVICE, phantom_png
from scanner_files import scanner_file
from servers import Server
from test_web_e2e import TIMEOUT_MS, VIEWPORT, http, new_page

from server.auth import Role, TokenPolicy, issue_token
from server.keyring import load

if TYPE_CHECKING:
    from playwright.async_api import Browser, Locator

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


def put_json(server: Server, path: str, token: str, body: Any) -> None:
    request = urllib.request.Request(
        f"{server.url}{path}",
        data=json.dumps(body).encode(),
        method="PUT",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


async def test_an_experts_open_queue_follows_their_credentials(
    live_server: Server, chromium: Browser
) -> None:
    """An expert's queue gets the requests they are credentialed for, live, and is told at once
    when a coordinator deactivates them."""
    token = coordinator_token(live_server)
    probelink(live_server, "expert", "add", "--sub", "dr-vein", "--name", "Dr Vein",
              "--subspecialty", "dvt")  # fmt: skip
    reading_room = probelink_token(live_server, "--role", "expert", "--sub", "dr-vein")
    context, page, errors = await new_page(chromium)
    await page.goto(f"{live_server.url}/queue#token={reading_room}")
    await page.wait_for_function(
        "() => document.getElementById('status').textContent.startsWith('0 open')",
        timeout=TIMEOUT_MS,
    )
    http(live_server, "/api/consultations", token, {**DVT_REQUEST, "application": "breast"})
    cid = http(live_server, "/api/consultations", token, DVT_REQUEST)["id"]
    await page.locator(f"#queue tr[data-id='{cid}']").wait_for(timeout=TIMEOUT_MS)
    assert await page.locator("#queue tr").count() == 1  # not the breast request
    body = {"name": "Dr Vein", "subspecialties": ["dvt"], "active": False}
    put_json(live_server, "/api/experts/dr-vein", token, body)
    await page.wait_for_function(
        "() => document.getElementById('error').textContent.includes('no active credentials')",
        timeout=TIMEOUT_MS,
    )
    # The browser logs the refused re-read; nothing else.
    assert [e for e in errors if "403 (Forbidden)" not in e] == []
    await context.close()


ZBARIMG = shutil.which("zbarimg")


def zbar(png: bytes, tmp_path: Path) -> str:
    require("zbarimg", ZBARIMG is not None, "install the Debian package zbar-tools")
    assert ZBARIMG is not None
    path = tmp_path / f"qr-{len(list(tmp_path.glob('qr-*')))}.png"
    path.write_bytes(png)
    result = subprocess.run(
        [ZBARIMG, "--quiet", "--raw", str(path)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


async def decoded_qr(image: Locator, tmp_path: Path) -> str:
    """The QR code on the page as a phone's camera would read it: a screenshot, decoded."""
    return await asyncio.to_thread(zbar, await image.screenshot(), tmp_path)


async def test_a_join_link_is_a_copy_button_and_a_qr_code_that_decodes_to_it(
    live_server: Server, chromium: Browser, tmp_path: Path
) -> None:
    """The start page's links after a request, and the queue's invite links: a short label, a
    Copy button that puts the exact link in the clipboard, and a QR code that decodes to it."""
    token = coordinator_token(live_server)
    context = await chromium.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    page = await context.new_page()
    await page.goto(f"{live_server.url}/#token={token}")
    await page.fill("#clinical_question", "Swollen left calf: DVT?")
    await page.select_option("#urgency", "urgent")
    await page.click("#use-phantom")
    await page.fill("#incomplete_reason", "Scanning now")
    await page.click("#submit")
    await page.locator("#invites").wait_for(timeout=TIMEOUT_MS)
    await page.select_option("#invite-role", "operator")
    await page.fill("#invite-name", "Bedside")
    await page.click("#invite")
    made = page.locator("#links .join-link[data-role='operator']")
    await made.wait_for(timeout=TIMEOUT_MS)
    url = await made.locator("a").get_attribute("href")
    assert url and "/join#token=" in url
    # Short: the label and "Open", never the 400-character link as the visible text.
    assert url not in await made.locator(".join-head").inner_text()
    assert await made.locator(".join-url").input_value() == url
    assert await decoded_qr(made.locator("img.join-qr"), tmp_path) == url
    await made.locator("button.join-copy").click()
    await page.wait_for_function(
        "() => document.querySelector('#links .join-copy').textContent === 'Copied'",
        timeout=TIMEOUT_MS,
    )
    assert await page.evaluate("() => navigator.clipboard.readText()") == url
    await save_screenshot(page, "pages-join-link")
    # The decoded link opens the consultation with its token.
    join_token = url.split("#token=", 1)[1]
    cid = http(live_server, "/api/consultations", token)["consultations"][0]["id"]
    assert http(live_server, f"/api/consultations/{cid}", join_token)["id"] == cid

    # The coordinator's queue: a row's "Join link" gives an expert link the same way.
    await page.goto(f"{live_server.url}/queue#token={token}")
    await page.locator(f"#queue tr[data-id='{cid}'] button", has_text="Join link").click()
    made = page.locator("#links .join-link[data-role='expert']")
    await made.wait_for(timeout=TIMEOUT_MS)
    url = await made.locator("a").get_attribute("href")
    assert url and await decoded_qr(made.locator("img.join-qr"), tmp_path) == url
    await made.locator("button.join-copy").click()
    await page.wait_for_function(
        "() => document.querySelector('#links .join-copy').textContent === 'Copied'",
        timeout=TIMEOUT_MS,
    )
    assert await page.evaluate("() => navigator.clipboard.readText()") == url
    await context.close()


def signed(live_server: Server, role: Role, consultation: str | None, *, age: int = 0) -> str:
    """A token signed with the server's own keys; `age` seconds old (past its 600 s: expired)."""
    keys = load(Path(live_server.env["PROBELINK_DATA_DIR"]))
    policy = TokenPolicy("probelink", "probelink", 30, 30 * 86400)
    return issue_token(
        keys,
        policy,
        sub=f"{role.value}-1",
        role=role,
        ttl_seconds=600,
        consultation_id=consultation,
        now=time.time() - age,
    )


async def test_a_page_opened_with_a_refused_link_shows_only_why_and_what_to_do(
    live_server: Server, chromium: Browser
) -> None:
    token = coordinator_token(live_server)
    cid = http(live_server, "/api/consultations", token, DVT_REQUEST)["id"]
    expert = http(
        live_server, f"/api/consultations/{cid}/invites", token, {"role": "expert", "name": "E"}
    )["token"]
    cancelled = http(live_server, "/api/consultations", token, DVT_REQUEST)["id"]
    revoked = http(
        live_server,
        f"/api/consultations/{cancelled}/invites",
        token,
        {"role": "operator", "name": "Bedside"},
    )["token"]
    http(live_server, f"/api/consultations/{cancelled}/cancel", token, {"reason": "duplicate"})
    expired = signed(live_server, Role.OPERATOR, cid, age=3600)
    cases = [
        ("/bedside", expired, "This link has expired.", "Ask the coordinator for a new link."),
        ("/bedside", revoked, "The consultation was cancelled.", "Nothing more can be done"),
        ("/bedside", expert, "This is an expert's link", "It opens the expert page"),
        ("/bedside", "", "This page opens from a link", "Open the link you were sent"),
        ("/expert", "not.a-token", "This link is not valid", "scan its QR code again"),
        ("/expert", signed(live_server, Role.EXPERT, cid, age=3600), "This link has expired.", ""),
        ("/queue", expired, "This is an operator's link", "It opens the bedside page"),
        ("/queue", signed(live_server, Role.COORDINATOR, None, age=3600), "has expired", ""),
        ("/", expert, "This is an expert's link", ""),
        ("/setup", signed(live_server, Role.COORDINATOR, None, age=3600), "has expired", ""),
        ("/join", revoked, "The consultation was cancelled.", ""),
        ("/join", "eyJhbGciOiJFZERTQSJ9.e30.c2ln", "This link is not valid", ""),
    ]
    for path, bad, reason, todo in cases:
        context, page, errors = await new_page(chromium)
        await page.goto(f"{live_server.url}{path}#token={bad}")
        await page.locator("#refused").wait_for(timeout=TIMEOUT_MS)
        assert reason in await page.locator("#refusal-reason").inner_text(), (path, reason)
        assert todo in await page.locator("#refusal-todo").inner_text(), (path, todo)
        # Only that: none of the page's tools, no picture, no camera, no room.
        assert await page.locator("main").count() == 1
        for tool in ("video", "button", "form", "select", "canvas", "#go-live", "#queue"):
            assert await page.locator(tool).count() == 0, (path, tool)
        live = await page.evaluate(
            "() => performance.getEntriesByType('resource').map((e) => e.name)"
        )
        assert not [u for u in live if "/socket.io/" in u], (path, live)
        # The browser logs the refused /api/session; nothing else.
        assert [e for e in errors if "/api/session" not in e] == [], (path, errors)
        await context.close()

    # The bedside's expired link started nothing: the page is not live and made no stream.
    context, page, _errors = await new_page(chromium)
    await page.goto(f"{live_server.url}/bedside?live=1#token={expired}")
    await page.locator("#refused").wait_for(timeout=TIMEOUT_MS)
    assert await page.evaluate("() => document.querySelectorAll('video, canvas').length") == 0
    await context.close()


async def test_the_same_link_in_a_second_tab_takes_over_and_the_first_says_so(
    live_server: Server, chromium: Browser
) -> None:
    token = coordinator_token(live_server)
    cid = http(live_server, "/api/consultations", token, DVT_REQUEST)["id"]
    expert = http(
        live_server, f"/api/consultations/{cid}/invites", token, {"role": "expert", "name": "Dr E"}
    )["token"]
    first_context, first, _ = await new_page(chromium)
    await first.goto(f"{live_server.url}/expert#token={expert}")
    await first.locator("#participants li").first.wait_for(timeout=TIMEOUT_MS)
    second_context, second, errors = await new_page(chromium)
    await second.goto(f"{live_server.url}/expert#token={expert}")
    await first.wait_for_function(
        "() => document.getElementById('error').textContent.includes('no longer connected')",
        timeout=TIMEOUT_MS,
    )
    assert "another tab or on another device" in await first.inner_text("#error")
    assert await first.inner_text("#connection") == "Session ended"
    await second.locator("#participants li").first.wait_for(timeout=TIMEOUT_MS)
    assert await second.inner_text("#error") == ""
    assert errors == []
    await first_context.close()
    await second_context.close()


def upload(server: Server, cid: str, token: str, body: bytes, content_type: str) -> None:
    """A capture as the bedside's page (PNG) or a scanner's file (DICOM) is uploaded."""
    request = urllib.request.Request(
        f"{server.url}/api/consultations/{cid}/captures",
        data=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 201


async def test_the_gallery_shows_capture_times_and_opens_items_large_where_clips_play(
    live_server: Server, chromium: Browser
) -> None:
    token = coordinator_token(live_server)
    cid = http(live_server, "/api/consultations", token, {**DVT_REQUEST, "device": PHANTOM_DEVICE})[
        "id"
    ]
    invite = f"/api/consultations/{cid}/invites"
    operator = http(live_server, invite, token, {"role": "operator", "name": "Bedside"})["token"]
    expert = http(live_server, invite, token, {"role": "expert", "name": "Dr E"})["token"]
    upload(live_server, cid, operator, phantom_png(3), "image/png")
    upload(live_server, cid, operator, scanner_file(frames=12), "application/dicom")
    images = http(live_server, f"/api/consultations/{cid}/key-images", expert)["key_images"]
    clip = next(i for i in images if i["kind"] == "clip")

    context, page, errors = await new_page(chromium)
    await page.goto(f"{live_server.url}/expert#token={expert}")
    thumbnails = page.locator("#gallery figure")
    await page.wait_for_function(
        "() => document.querySelectorAll('#gallery figure time').length === 2",
        timeout=TIMEOUT_MS,
    )
    # Each thumbnail says when it was captured.
    for image in images:
        time_element = page.locator(f"#gallery figure[data-key-image='{image['id']}'] time")
        assert await time_element.get_attribute("datetime") == image["created_at"]
        assert re.fullmatch(r"\d\d:\d\d:\d\d( [AP]M)?", await time_element.inner_text())
    assert await thumbnails.count() == 2

    # The clip opens large, with its capture time, and plays.
    await page.locator(f"#gallery figure[data-key-image='{clip['id']}'] button.open").click()
    viewer = page.locator("#viewer")
    await viewer.wait_for(state="visible", timeout=TIMEOUT_MS)
    await page.wait_for_function(
        "() => document.getElementById('viewer-counter').textContent === 'Frame 1 / 12'",
        timeout=TIMEOUT_MS,
    )
    title = await page.inner_text("#viewer-title")
    shown = await page.inner_text(f"#gallery figure[data-key-image='{clip['id']}'] time")
    assert title == f"Scanner clip · captured {shown}", title
    box = await page.locator("#viewer-canvas").bounding_box()
    assert box and box["width"] >= 600  # large: not a thumbnail
    await page.click("#viewer-play")
    await page.wait_for_function(
        "() => /^Frame ([2-9]|1[0-2]) \\/ 12$/.test(document.getElementById('viewer-counter').textContent)",
        timeout=TIMEOUT_MS,
    )
    await save_screenshot(page, "pages-gallery-viewer")
    assert errors == []
    await context.close()
