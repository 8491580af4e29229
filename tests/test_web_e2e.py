"""The web client end to end in real Chromium: a coordinator requests, a bedside page and an
expert page join one consultation through their links, the expert points, draws, guides and
captures, and the capture is a de-identified DICOM in the archive."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from browser import console_errors, coordinator_token, probelink, probelink_token, save_screenshot
from dicom_checks import dciodvfy_errors, ocr, read
from phantom import BANNER_HEIGHT, PATIENT_DOB, PATIENT_MRN, PATIENT_NAME, phantom_png
from servers import Server, cli_env

from server.consultations.lexicon import Compressibility, DvtSegment

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Page

TIMEOUT_MS = 20_000
VIEWPORT = {"width": 1280, "height": 860}


def http(server: Server, path: str, token: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        server.url + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        data = response.read()
        return (
            json.loads(data)
            if response.headers["Content-Type"].startswith("application/json")
            else data
        )


def upload_png(server: Server, cid: str, token: str, png: bytes) -> None:
    """The bedside's lossless still, as its page uploads it."""
    request = urllib.request.Request(
        f"{server.url}/api/consultations/{cid}/captures",
        data=png,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "image/png"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201


def local(server: Server, url: str) -> str:
    """A join link as printed (PROBELINK_PUBLIC_URL) made to point at this test's server."""
    return server.url + url[url.index("/join") :]


async def new_page(browser: Browser) -> tuple[BrowserContext, Page, list[str]]:
    context = await browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    page = await context.new_page()
    return context, page, console_errors(page)


async def frames_advance(page: Page) -> dict[str, Any]:
    """The video element's size once two new frames were presented."""
    result: dict[str, Any] = await page.evaluate(
        """async () => {
          const video = document.getElementById("video");
          for (let i = 0; i < 2; i++) await new Promise((r) => video.requestVideoFrameCallback(r));
          return { width: video.videoWidth, height: video.videoHeight, time: video.currentTime };
        }"""
    )
    return result


async def overlay_alpha(page: Page, x: float, y: float, radius: int = 4) -> int:
    """The most opaque overlay pixel near normalized (x, y) of the picture as this page shows it
    (letterboxing included): 0 where nothing is drawn."""
    alpha: int = await page.evaluate(
        """([x, y, radius]) => {
          const video = document.getElementById("video");
          const canvas = document.getElementById("overlay");
          const w = video.clientWidth, h = video.clientHeight;
          const scale = Math.min(w / video.videoWidth, h / video.videoHeight);
          const left = (w - video.videoWidth * scale) / 2, top = (h - video.videoHeight * scale) / 2;
          const ratio = canvas.width / canvas.clientWidth;
          const px = (left + x * video.videoWidth * scale) * ratio;
          const py = (top + y * video.videoHeight * scale) * ratio;
          const r = Math.ceil(radius * ratio);
          const data = canvas.getContext("2d").getImageData(px - r, py - r, 2 * r + 1, 2 * r + 1).data;
          let most = 0;
          for (let i = 3; i < data.length; i += 4) most = Math.max(most, data[i]);
          return most;
        }""",
        [x, y, radius],
    )
    return alpha


async def stage_point(page: Page, x: float, y: float) -> tuple[float, float]:
    """Client coordinates of normalized (x, y) on this page's picture."""
    point: list[float] = await page.evaluate(
        """([x, y]) => {
          const video = document.getElementById("video");
          const box = video.getBoundingClientRect();
          const scale = Math.min(box.width / video.videoWidth, box.height / video.videoHeight);
          const left = box.left + (box.width - video.videoWidth * scale) / 2;
          const top = box.top + (box.height - video.videoHeight * scale) / 2;
          return [left + x * video.videoWidth * scale, top + y * video.videoHeight * scale];
        }""",
        [x, y],
    )
    return point[0], point[1]


async def fill_and_sign_report(
    page: Page,
    *,
    category: str,
    findings: str,
    better: str,
    phrase: str,
    concordance: str | None = None,
) -> None:
    """The expert's report form: draft, the terminology advice taken, then signed."""
    await page.locator("#report-key-images input").first.wait_for(timeout=TIMEOUT_MS)
    await page.select_option("#report-category", category)
    await page.fill("#report-findings", findings)
    await page.fill("#report-recommendation", "Routine follow-up.")
    if concordance:
        await page.select_option("#report-concordance", concordance)
    await page.select_option("#report-quality", "limited")
    await page.check("#quality-reasons input[value='missing_landmarks']")
    await page.locator("#report-key-images input").first.check()
    await page.click("#report-save")
    await page.locator(f"#report-terminology li[data-phrase='{phrase}']").wait_for(
        timeout=TIMEOUT_MS
    )
    assert await page.locator("#report-missing li").count() == 0
    await page.fill("#report-findings", better)
    await page.click("#report-sign")
    assert await page.locator("#report-signed").is_hidden()  # the first click only arms it
    await page.click("#report-sign")
    await page.locator("#report-signed").wait_for(state="visible", timeout=TIMEOUT_MS)
    assert better in await page.locator("#report-document").inner_text()


async def request_from_start_page(server: Server, browser: Browser) -> tuple[str, str, str]:
    """The coordinator's story: the form, its live checklist, the request, two join links."""
    context, page, errors = await new_page(browser)
    await page.goto(f"{server.url}/#token={coordinator_token(server)}")
    checklist = page.locator("#checklist")
    # Empty form: the required items first, each optional one with why it matters.
    await checklist.locator("li[data-field='clinical_question']").wait_for(timeout=TIMEOUT_MS)
    assert await checklist.locator("li[data-field='device'] .why").inner_text()
    await page.fill(
        "#clinical_question", "Palpable lump left breast at 2 o'clock: solid or cystic?"
    )
    await page.select_option("#urgency", "urgent")
    # The DVT template offers the server's segments and grades (GET /api/vocabulary).
    await page.select_option("#application", "dvt")
    segments = page.locator("#dvt-segments input[name='dvt.segment']")
    assert await segments.count() == len(DvtSegment)
    assert await page.locator("#dvt-segments label").first.inner_text() == "Common femoral vein"
    grades = page.locator("#dvt-segments select").first.locator("option")
    assert await grades.count() == 1 + len(Compressibility)  # and "—", not graded
    await page.select_option("#application", "breast")
    await page.fill("#first_read", "Irregular hypoechoic mass, BI-RADS 4A")
    await page.click("#use-phantom")
    await checklist.locator("li[data-field='clinical_question']").wait_for(
        state="detached", timeout=TIMEOUT_MS
    )
    await checklist.locator("li[data-field='device']").wait_for(
        state="detached", timeout=TIMEOUT_MS
    )
    # A Doppler mode asks for its settings.
    await page.check("input[value='color_doppler']")
    await checklist.locator("li[data-field='doppler']").wait_for(timeout=TIMEOUT_MS)
    await page.uncheck("input[value='color_doppler']")
    # A bad value is named as the coordinator types it, before anything is sent.
    await page.fill("#transducer_frequency", "500")
    await page.wait_for_function(
        "() => document.getElementById('form-error').textContent.includes('transducer.frequency_mhz')",
        timeout=TIMEOUT_MS,
    )
    await page.fill("#transducer_frequency", "12")
    await page.wait_for_function(
        "() => document.getElementById('form-error').textContent === ''", timeout=TIMEOUT_MS
    )
    # The breast template: a BI-RADS 4 first read flags review before biopsy.
    await page.select_option("#first_read_birads", "4A")
    await page.locator("#flags li[data-flag='review_before_biopsy']").wait_for(timeout=TIMEOUT_MS)
    await checklist.locator("li[data-field='breast.lesion_clock']").wait_for(timeout=TIMEOUT_MS)
    # Sent incomplete only with a reason, which the expert will see.
    await page.click("#submit")
    await page.wait_for_function(
        "() => document.getElementById('form-error').textContent.includes('incomplete')",
        timeout=TIMEOUT_MS,
    )
    refusal = await page.locator("#form-error").inner_text()
    # The refusal stays until the user acts on it: a field filled and left refreshes the
    # checklist (the lesion's position leaves it), and the error is still there.
    await page.select_option("#lesion_clock", "2")
    await page.locator("#lesion_clock").blur()
    await checklist.locator("li[data-field='breast.lesion_clock']").wait_for(
        state="detached", timeout=TIMEOUT_MS
    )
    assert await page.locator("#form-error").inner_text() == refusal
    await page.fill("#incomplete_reason", "Scanning now; details follow")
    await page.click("#submit")
    await page.locator("#invites").wait_for(timeout=TIMEOUT_MS)
    await page.select_option("#invite-role", "operator")
    await page.fill("#invite-name", "Bedside")
    await page.click("#invite")
    operator = await page.locator("#links a[data-role='operator']").get_attribute("href")
    await page.select_option("#invite-role", "expert")
    await page.fill("#invite-name", "Dr Lee")
    await page.click("#invite")
    expert = await page.locator("#links a[data-role='expert']").get_attribute("href")
    await save_screenshot(page, "e2e-start")
    assert operator and expert
    queue = http(server, "/api/consultations", coordinator_token(server))["consultations"]
    assert len(queue) == 1 and queue[0]["application"] == "breast"
    # The browser itself logs the two refusals the story provoked (the draft with a bad
    # frequency, the request without a reason); nothing else.
    expected = ("/api/consultations/checklist)", "/api/consultations)")
    assert [e for e in errors if not ("400 (Bad Request)" in e and e.endswith(expected))] == []
    await context.close()
    return queue[0]["id"], local(server, operator), local(server, expert)


async def test_bedside_and_expert_run_a_session_in_two_browsers(
    live_server: Server, chromium: Browser, tmp_path: Path
) -> None:
    cid, operator_link, expert_link = await request_from_start_page(live_server, chromium)

    bed_context, bedside, bedside_errors = await new_page(chromium)
    await bedside.goto(operator_link)
    await bedside.wait_for_url("**/bedside#token=*")
    # The fake camera (the phantom file) is offered and previewed before going live.
    await bedside.wait_for_function(
        "() => document.getElementById('video').videoWidth === 640", timeout=TIMEOUT_MS
    )
    await bedside.click("#go-live")

    exp_context, expert, expert_errors = await new_page(chromium)
    await expert.goto(expert_link)
    await expert.wait_for_url("**/expert#token=*")
    # The request as the expert reads it: the context sent, and what is still missing.
    context = expert.locator("#request")
    await context.locator("dl.context").wait_for(timeout=TIMEOUT_MS)
    request_text = await context.inner_text()
    assert "Synthetic phantom" in request_text and "first read BI-RADS 4A" in request_text
    assert "Scanning now; details follow" in request_text and "Not given:" in request_text
    await expert.locator("#waiting").wait_for(state="hidden", timeout=TIMEOUT_MS)
    # The expert's video plays: frames advance, at the bedside's size and aspect ratio.
    first = await frames_advance(expert)
    later = await frames_advance(expert)
    assert later["time"] > first["time"]
    assert (later["width"], later["height"]) == (640, 480), later
    await expert.wait_for_function(
        "() => document.getElementById('connection').dataset.media === 'connected'",
        timeout=TIMEOUT_MS,
    )
    people = await bedside.locator("#participants li").all_inner_texts()
    assert any("Dr Lee" in p for p in people), people

    # Letterbox the bedside picture (a wide box around a 4:3 video): the expert's marks must
    # still land on the same spot of the picture, not of the box.
    # (Through the CSSOM: the page's Content-Security-Policy refuses inline style sheets.)
    await bedside.evaluate(
        "() => { document.getElementById('stage').style.aspectRatio = '16 / 9'; }"
    )

    # The pointer: the expert hovers at (0.25, 0.7); the bedside draws it there.
    await expert.mouse.move(*await stage_point(expert, 0.25, 0.7))
    await expert.mouse.move(*await stage_point(expert, 0.251, 0.701))
    await bedside.wait_for_function(
        """() => {
          const c = document.getElementById("overlay");
          return c.getContext("2d").getImageData(0, 0, c.width, c.height).data.some((v, i) => i % 4 === 3 && v);
        }""",
        timeout=TIMEOUT_MS,
    )
    assert await overlay_alpha(bedside, 0.251, 0.701, radius=8) > 0
    assert await overlay_alpha(bedside, 0.75, 0.3, radius=8) == 0

    # An arrow drawn from (0.3, 0.3) to (0.6, 0.6) appears at the same place on the bedside.
    await expert.keyboard.press("a")
    await expert.mouse.move(*await stage_point(expert, 0.3, 0.3))
    await expert.mouse.down()
    await expert.mouse.move(*await stage_point(expert, 0.6, 0.6), steps=6)
    await expert.mouse.up()
    await bedside.wait_for_function(
        "() => document.getElementById('marks-text').textContent === '1 mark on the picture'",
        timeout=TIMEOUT_MS,
    )
    await bedside.wait_for_timeout(300)  # the next animation frame draws it
    assert await overlay_alpha(bedside, 0.45, 0.45) > 0
    assert await overlay_alpha(bedside, 0.45, 0.2) == 0
    # Where a page that ignored the pillarbox bars would have put the middle of the arrow.
    shifted = await bedside.evaluate(
        """() => {
          const v = document.getElementById("video");
          const scale = Math.min(v.clientWidth / v.videoWidth, v.clientHeight / v.videoHeight);
          return (v.clientWidth - v.videoWidth * scale) / 2;
        }"""
    )
    assert shifted > 50, "the bedside picture is not pillarboxed; the check would prove nothing"

    # The same with the keyboard alone: a caliper measured with the arrow keys.
    await expert.focus("#stage")
    await expert.keyboard.press("l")
    await expert.keyboard.press("Enter")
    for _ in range(10):
        await expert.keyboard.press("ArrowRight")
    await expert.keyboard.press("Enter")
    await bedside.wait_for_function(
        "() => document.getElementById('marks-text').textContent === '2 marks on the picture'",
        timeout=TIMEOUT_MS,
    )
    await expert.keyboard.press("p")

    # Guidance from the palette reaches the bedside as a cue (drawn, and as text for readers).
    await expert.select_option("#cue", "rotate")
    await expert.select_option("#direction", "clockwise")
    await expert.click("#send-guidance")
    await bedside.wait_for_function(
        "() => document.getElementById('guidance-text').textContent === 'Guidance: rotate clockwise'",
        timeout=TIMEOUT_MS,
    )

    # A still from the expert page: a key image in both galleries, a clean DICOM in the archive.
    await expert.keyboard.press("s")
    for page in (expert, bedside):
        await page.locator("#gallery figure img").first.wait_for(timeout=TIMEOUT_MS)
        await page.wait_for_function(
            "() => document.querySelector('#gallery figure img').naturalWidth > 0",
            timeout=TIMEOUT_MS,
        )
    token = coordinator_token(live_server)
    images = http(live_server, f"/api/consultations/{cid}/key-images", token)["key_images"]
    assert [(i["kind"], i["detail"]["source"]) for i in images] == [("still", "relay")]
    assert [m["kind"] for m in images[0]["marks"]] == ["arrow", "caliper"]
    (x0, y0), (x1, y1) = images[0]["marks"][1]["points"]
    assert abs((x1 - x0) - 0.1) < 1e-6 and y1 == y0  # ten steps of the arrow key
    data = http(live_server, f"/api/key-images/{images[0]['id']}/dicom", token)
    assert dciodvfy_errors(data, tmp_path) == []
    pixels = read(data).pixel_array
    assert pixels.shape == (480, 640, 3)
    assert not pixels[:BANNER_HEIGHT].any(), "the banner is not blank"
    seen = ocr(pixels).lower()
    for text in (PATIENT_NAME, PATIENT_MRN.split()[1], PATIENT_DOB.split()[1]):
        assert text.lower() not in seen
        assert text.encode().lower() not in data.lower()

    # The bedside's own still: its full-size frame, lossless, uploaded.
    await bedside.keyboard.press("s")
    await bedside.wait_for_function(
        "() => document.querySelectorAll('#gallery figure').length === 2", timeout=TIMEOUT_MS
    )
    images = http(live_server, f"/api/consultations/{cid}/key-images", token)["key_images"]
    upload = [i for i in images if i["detail"]["source"] == "upload"]
    assert len(upload) == 1 and upload[0]["detail"]["width"] == 640

    # A clip of the last seconds from the bedside: every frame masked too.
    await bedside.fill("#clip-seconds", "2")
    await bedside.click("#capture-clip")
    await bedside.wait_for_function(
        "() => document.querySelectorAll('#gallery figure').length === 3", timeout=TIMEOUT_MS
    )
    images = http(live_server, f"/api/consultations/{cid}/key-images", token)["key_images"]
    clip = next(i for i in images if i["kind"] == "clip")
    frames = read(http(live_server, f"/api/key-images/{clip['id']}/dicom", token)).pixel_array
    # How many frames 2 s hold depends on the sender's frame rate (it drops under load).
    assert frames.ndim == 4 and frames.shape[0] >= 2 and frames.shape[1:] == (480, 640, 3)
    assert frames.shape[0] == clip["detail"]["frames"]
    assert not frames[:, :BANNER_HEIGHT].any()

    # The bedside hears the expert (Chromium's fake microphone beeps), through the relay.
    assert (
        await bedside.evaluate(
            """async () => {
          const context = new AudioContext();
          const analysers = [...document.querySelectorAll("#voices audio")].map((audio) => {
            const analyser = context.createAnalyser();
            context.createMediaStreamSource(audio.srcObject).connect(analyser);
            return analyser;
          });
          const samples = new Float32Array(2048);
          let loudest = 0;
          for (let i = 0; i < 40 && loudest < 0.05; i++) {
            await new Promise((r) => setTimeout(r, 100));
            for (const analyser of analysers) {
              analyser.getFloatTimeDomainData(samples);
              for (const v of samples) loudest = Math.max(loudest, Math.abs(v));
            }
          }
          await context.close();
          return loudest;
        }"""
        )
        >= 0.05
    )

    # The report: the breast categories, terminology advice, signing in two clicks, printable.
    await fill_and_sign_report(
        expert,
        category="2",
        findings="A complex cyst at 2 o'clock.",
        better="A complicated cyst at 2 o'clock.",
        phrase="complex cyst",
        concordance="major_discrepancy",
    )
    record = http(live_server, f"/api/consultations/{cid}", token)
    assert record["state"] == "signed"
    assert record["report"]["current"]["body"]["findings"] == "A complicated cyst at 2 o'clock."
    # Signed: the bedside is let go, says why, and its camera goes off.
    await bedside.wait_for_function(
        "() => document.getElementById('error').textContent.startsWith('This session has ended')",
        timeout=TIMEOUT_MS,
    )
    assert "signed" in await bedside.inner_text("#error")
    assert "Session ended" in await bedside.inner_text("#connection")
    assert await bedside.evaluate("() => document.getElementById('video').srcObject === null")
    assert await bedside.is_disabled("#go-live")
    await expert.emulate_media(media="print")
    await save_screenshot(expert, "e2e-report-print")
    await expert.emulate_media(media="screen")

    await save_screenshot(bedside, "e2e-bedside")
    await save_screenshot(expert, "e2e-expert")
    assert bedside_errors == [] and expert_errors == []
    await bed_context.close()
    await exp_context.close()


async def test_pages_recover_after_the_server_drops_and_returns(
    tmp_path: Path, chromium: Browser
) -> None:
    """A crash or network drop: both pages reconnect by themselves and the video flows again."""
    env = cli_env(tmp_path / "data")
    server = Server(env).__enter__()
    try:
        token = coordinator_token(server)
        record = http(
            server,
            "/api/consultations",
            token,
            {
                "clinical_question": "DVT left leg?",
                "urgency": "emergency",
                "incomplete_reason": "test request",
                "device": {"manufacturer": "probelink", "model": "Synthetic phantom"},
            },
        )
        links = [
            local(
                server,
                http(server, f"/api/consultations/{record['id']}/invites", token, body)["url"],
            )
            for body in (
                {"role": "operator", "name": "Bedside"},
                {"role": "expert", "name": "Dr Lee"},
            )
        ]
        bed_context, bedside, _ = await new_page(chromium)
        # The built-in phantom on request (no probe needed), going live at once.
        await bedside.goto(links[0].replace("#", "?live&source=phantom#"))
        await bedside.locator("#demo-badge").wait_for(state="visible", timeout=TIMEOUT_MS)
        exp_context, expert, _ = await new_page(chromium)
        await expert.goto(links[1])
        await expert.locator("#waiting").wait_for(state="hidden", timeout=TIMEOUT_MS)
        await frames_advance(expert)

        server.kill()  # SIGKILL: no goodbye to anyone
        for page in (bedside, expert):
            await page.wait_for_function(
                "() => document.getElementById('connection').dataset.level === 'offline'",
                timeout=TIMEOUT_MS,
            )
        server = Server(env, port=server.port).__enter__()
        for page in (bedside, expert):
            await page.wait_for_function(
                "() => document.getElementById('connection').dataset.media === 'connected'",
                timeout=TIMEOUT_MS * 2,
            )
        before = await frames_advance(expert)
        after = await frames_advance(expert)
        assert after["time"] > before["time"] and after["width"] == 640
        await save_screenshot(expert, "e2e-expert-after-reconnect")
        await bed_context.close()
        await exp_context.close()
    finally:
        server.__exit__(None, None, None)


async def test_credentialed_expert_accepts_from_the_queue_and_signs_a_dvt_report(
    live_server: Server, chromium: Browser
) -> None:
    """A vascular expert's own queue offers the DVT request only; accepting opens the expert
    page, which offers the DVT categories and signs with the key image cited."""
    probelink(
        live_server,
        "expert",
        "add",
        "--sub",
        "dr-vein",
        "--name",
        "Dr Vein",
        "--subspecialty",
        "dvt",
    )
    token = coordinator_token(live_server)
    request = {
        "urgency": "emergency",
        "device": {"manufacturer": "probelink", "model": "Synthetic phantom"},
        "incomplete_reason": "after hours",
    }
    http(
        live_server,
        "/api/consultations",
        token,
        {**request, "clinical_question": "Lump?", "application": "breast"},
    )
    record = http(
        live_server,
        "/api/consultations",
        token,
        {
            **request,
            "clinical_question": "Swollen left calf: DVT?",
            "application": "dvt",
            "dvt": {
                "segments_examined": ["popliteal"],
                "compressibility": {"popliteal": "non_compressible"},
            },
        },
    )
    cid = record["id"]
    operator = http(
        live_server,
        f"/api/consultations/{cid}/invites",
        token,
        {"role": "operator", "name": "Bedside"},
    )
    # A key image from the bedside (its lossless upload), before the expert opens the page.
    upload_png(live_server, cid, operator["token"], phantom_png(7))

    context, page, errors = await new_page(chromium)
    reading_room = probelink_token(live_server, "--role", "expert", "--sub", "dr-vein")
    await page.goto(f"{live_server.url}/queue#token={reading_room}")
    await page.locator(f"#queue tr[data-id='{cid}']").wait_for(timeout=TIMEOUT_MS)
    assert await page.locator("#queue tr").count() == 1  # not the breast request
    await save_screenshot(page, "e2e-expert-queue")
    await page.locator(f"#queue tr[data-id='{cid}'] button").click()
    await page.wait_for_url("**/expert#token=*", timeout=TIMEOUT_MS)
    assert http(live_server, f"/api/consultations/{cid}", token)["assigned_expert"] == "dr-vein"
    await page.locator("#report-category option[value='acute_dvt']").wait_for(
        state="attached", timeout=TIMEOUT_MS
    )
    assert await page.locator("#concordance-field").is_hidden()  # no first read to agree with
    # The request names the popliteal vein: the report is told, as it is written, to say it
    # covered it; ticking it answers the advice.
    advice = page.locator("#report-consistency li[data-field='segments_examined']")
    await page.fill("#report-findings", "Popliteal vein:")
    await advice.wait_for(timeout=TIMEOUT_MS)
    assert "popliteal vein" in await advice.inner_text()
    await page.check("#report-segments input[value='popliteal']")
    await advice.wait_for(state="detached", timeout=TIMEOUT_MS)
    await fill_and_sign_report(
        page,
        category="chronic_postthrombotic_change",
        findings="Popliteal vein: chronic thrombus, partially recanalised.",
        better="Popliteal vein: chronic postthrombotic change, partially recanalised.",
        phrase="chronic thrombus",
    )
    await save_screenshot(page, "e2e-dvt-report")
    signed = http(live_server, f"/api/consultations/{cid}", token)
    assert signed["state"] == "signed"
    assert signed["report"]["current"]["signed_by_name"] == "Dr Vein"
    assert errors == []
    await context.close()
