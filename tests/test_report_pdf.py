"""The fileable report: a PDF with the identifiers, dates, clinical fields, the cited key images
as pictures with their marks and measurements, the signature, addenda and the SR's UID; a
draft says so; archived with each signature and addendum as an Encapsulated PDF that reaches
the PACS."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pypdfium2 as pdfium
import pytest
from aiohttp.test_utils import TestClient
from browser import ARTIFACTS_DIR, coordinator_token, save_screenshot
from dicom_checks import dciodvfy_errors, every_value, ocr, read
from orthanc_server import OrthancServer
from phantom import BREAST_REQUEST, phantom_frame
from PIL import Image, ImageDraw
from servers import Server
from test_pacs import qido_instances, wado_instance
from test_web_e2e import TIMEOUT_MS, http, new_page, upload_png

from server.config import Settings, load_settings
from server.consultations.lexicon import SegmentFinding
from server.keyring import load_or_create
from server.messages import parse
from server.reports.filed import findings_in_words
from server.reports.pdf import CALIPER_COLOUR, ROLE_COLOURS, find_fonts, picture
from server.web.keys import KEY_IMAGES, STORE

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
PATIENT_REF = "PT-0042"
# The cited picture's own colour, found again on the rendered page.
MAGENTA = (235, 20, 200)
REQUEST = {**BREAST_REQUEST, "patient_ref": PATIENT_REF}
REPORT = {
    "findings": "Oval circumscribed anechoic lesion at 2 o'clock: a simple cyst, 20 mm.",
    "category": "2",
    "recommendation": "Routine screening in one year.",
    "concordance": "major_discrepancy",
    "technical_quality": {"grade": "limited", "reasons": ["missing_landmarks"]},
}
# A caliper 200 px long on a depth scale of 30 mm per 300 px: 20.0 mm.
MEASUREMENTS = {
    "calipers": [{"points": [[220, 240], [420, 240]], "label": "cyst"}],
    "calibration": {"points": [[20, 100], [20, 400]], "mm": 30},
}


def marked_png() -> bytes:
    """A phantom still with a block of a colour the phantom never has."""
    image = Image.fromarray(phantom_frame(3))
    ImageDraw.Draw(image).rectangle((80, 300, 260, 440), fill=MAGENTA)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def pdf_text(data: bytes) -> str:
    """Every page's text, whitespace made single spaces (wrapped lines join again)."""
    document = pdfium.PdfDocument(data)
    try:
        pages = []
        for page in document:
            textpage = page.get_textpage()
            pages.append(textpage.get_text_range())
            textpage.close()
            page.close()
        return " ".join(" ".join(pages).split())
    finally:
        document.close()


def first_page(data: bytes, scale: float = 2.0) -> np.ndarray:
    """The PDF's first page rendered as RGB pixels."""
    document = pdfium.PdfDocument(data)
    try:
        page = document[0]
        bitmap = page.render(scale=scale)
        pixels = np.array(bitmap.to_pil().convert("RGB"))
        bitmap.close()
        page.close()
        return pixels
    finally:
        document.close()


def coloured_share(pixels: np.ndarray, colour: tuple[int, int, int], tolerance: int = 40) -> float:
    """How much of the page is (near) `colour`."""
    near = np.abs(pixels.astype(int) - np.array(colour)).max(axis=-1) <= tolerance
    return float(near.mean())


async def consultation(
    client: TestClient[Any, Any], coordinator: dict[str, str], token_for: Any
) -> tuple[str, str, dict[str, str], str]:
    """A breast consultation with one measured key image: id, accession, expert, key image."""
    created = await client.post("/api/consultations", json=REQUEST, headers=coordinator)
    assert created.status == 201, await created.text()
    record = await created.json()
    cid = record["id"]
    expert = {"Authorization": f"Bearer {token_for('expert', sub='reader-1', consultation=cid)}"}
    upload = await client.post(
        f"/api/consultations/{cid}/captures",
        data=marked_png(),
        headers={**expert, "Content-Type": "image/png"},
    )
    assert upload.status == 201, await upload.text()
    key_image = (await upload.json())["key_image_id"]
    measured = await client.put(
        f"/api/key-images/{key_image}/measurements", json=MEASUREMENTS, headers=expert
    )
    assert measured.status == 200, await measured.text()
    assert (await measured.json())["calipers"][0]["mm"] == 20.0
    return cid, record["accession_number"], expert, key_image


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
async def test_the_report_pdf_carries_the_record_the_pictures_and_the_signature(
    client: TestClient[Any, Any], coordinator: dict[str, str], token_for: Any
) -> None:
    cid, accession, expert, key_image = await consultation(client, coordinator, token_for)
    url = f"/api/consultations/{cid}/report"
    # Nothing to file before a draft.
    none = await client.get(f"{url}/pdf", headers=expert)
    assert none.status == 409 and (await none.json())["error"]["code"] == "no_report"

    # A draft: all it has, and DRAFT on it.
    cyst = {
        "side": "left",
        "clock": "2",
        "size_mm": [20],
        "size_key_image_id": key_image,
        "echo_pattern": "anechoic",
        "special_case": "simple_cyst",
        "category": "2",
        "note": "thin septum",
    }
    body = {**REPORT, "key_image_ids": [key_image], "lesions": [cyst]}
    assert (await client.put(url, json=body, headers=expert)).status == 200
    draft = await client.get(f"{url}/pdf", headers=expert)
    assert draft.status == 200, await draft.text()
    assert draft.content_type == "application/pdf"
    # The file is named by the accession only.
    assert draft.headers["Content-Disposition"] == f'inline; filename="report-{accession}.pdf"'
    data = await draft.read()
    text = pdf_text(data)
    assert "DRAFT — NOT SIGNED" in text and "Draft, not signed" in text
    assert "none: written when signed" in text
    for expected in (PATIENT_REF, cid, accession, REQUEST["clinical_question"]):
        assert expected in text, expected
    # The cited picture is a picture on the page, not a count.
    assert coloured_share(first_page(data), MAGENTA) > 0.002

    # Signed: the signer, time and the SR's UID; no DRAFT.
    assert (await client.post(f"{url}/sign", headers=expert)).status == 200
    signed = await client.get(f"{url}/pdf", headers=coordinator)
    assert signed.status == 200
    data = await signed.read()
    text = pdf_text(data)
    [sr] = await client.app[KEY_IMAGES].records.objects(cid, "report")
    record = await (await client.get(f"/api/consultations/{cid}", headers=coordinator)).json()
    requested = record["requested_at"][:16].replace("T", " ")
    signed_at = record["report"]["current"]["signed_at"][:16].replace("T", " ")
    exam = record["key_images"][0]["created_at"][:16].replace("T", " ")
    assert "DRAFT" not in text and "Draft" not in text
    for expected in (
        f"Patient reference {PATIENT_REF}",
        f"Consultation {cid}",
        f"Accession {accession}",
        f"Requested {requested} UTC (urgent)",
        f"Exam date {exam} UTC",
        "Application Breast ultrasound",
        f"Clinical question {REQUEST['clinical_question']}",
        "First read Oval hypoechoic mass, BI-RADS 4A; category stated: BI-RADS 4A (low"
        " suspicion for malignancy)",
        "Category 2: BI-RADS 2 (benign)",
        f"Findings {REPORT['findings']}",
        f"Recommendation {REPORT['recommendation']}",
        "Concordance Major discrepancy with the first read",
        "Technical quality Limited, missing landmarks",
        # Each lesion in the lexicon's words.
        "Lesion 1 left breast, 2 o'clock, 20 mm; echo pattern anechoic; special case simple"
        " cyst; BI-RADS 2; size measured on key image 1; note: thin septum",
        "Key images cited (1)",
        "M1 (cyst): 20.0 mm — calibrated on the depth scale",
        "Signed by reader-1",
        f"Signed at {signed_at} UTC",
        f"Report SR (SOP Instance UID) {sr.sop_instance_uid}",
    ):
        assert expected in text, expected
    assert f"id {key_image[:8]}" in text
    page = first_page(data)
    assert coloured_share(page, MAGENTA) > 0.002
    # The caliper is drawn on the picture in its colour.
    assert coloured_share(page, CALIPER_COLOUR, tolerance=40) > 0.00003

    # An addendum appears after it, with its author and time.
    added = await client.post(
        f"{url}/addenda", json={"text": "Cyst aspirated: clear fluid."}, headers=expert
    )
    assert added.status == 201
    at = (await added.json())["addenda"][0]["signed_at"][:16].replace("T", " ")
    text = pdf_text(await (await client.get(f"{url}/pdf", headers=expert)).read())
    addendum = f"Addendum 1 — reader-1, {at} UTC Cyst aspirated: clear fluid."
    assert addendum in text
    assert text.index("Signed by reader-1") < text.index(addendum)
    newest = (await client.app[KEY_IMAGES].records.objects(cid, "report"))[-1]
    assert f"Report SR (SOP Instance UID) {newest.sop_instance_uid}" in text

    # Read like the report: each read audited, without a word of the report in the entry.
    entries = [
        e.facts for e in await client.app[STORE].audit_entries() if e.facts.action == "report.pdf"
    ]
    assert [(e.actor, e.object_id) for e in entries] == [
        ("reader-1", cid),
        ("coord-1", cid),
        ("reader-1", cid),
    ]


async def test_the_report_pdf_is_refused_to_other_consultations_and_unknown_ids(
    client: TestClient[Any, Any], coordinator: dict[str, str], token_for: Any, settings: Settings
) -> None:
    cid, _, expert, key_image = await consultation(client, coordinator, token_for)
    url = f"/api/consultations/{cid}/report"
    body = {**REPORT, "key_image_ids": [key_image]}
    assert (await client.put(url, json=body, headers=expert)).status == 200
    other = await client.post("/api/consultations", json=REQUEST, headers=coordinator)
    other_id = (await other.json())["id"]
    stranger = {
        "Authorization": f"Bearer {token_for('expert', sub='reader-2', consultation=other_id)}"
    }
    refused = await client.get(f"{url}/pdf", headers=stranger)
    assert refused.status == 403
    assert refused.content_type == "application/json" and "cyst" not in await refused.text()
    unknown = await client.get(
        "/api/consultations/0123456789abcdef0123456789abcdef/report/pdf", headers=coordinator
    )
    assert unknown.status == 404
    assert (await client.get(f"{url}/pdf")).status == 401

    # A cited picture this node cannot read is said so; the document is still made.
    found = await client.app[KEY_IMAGES].records.image(key_image)
    assert found is not None
    (settings.data_dir / "archive" / found[1].path).unlink()
    gone = await client.get(f"{url}/pdf", headers=expert)
    assert gone.status == 200
    assert "Key image 1: picture unavailable" in pdf_text(await gone.read())


@pytest.fixture
def pacs_settings(tmp_path: Path, orthanc: OrthancServer) -> Settings:
    load_or_create(tmp_path / "var")
    return load_settings(data_dir=tmp_path / "var", dicomweb_url=orthanc.dicomweb_url)


async def test_the_signed_report_is_archived_and_pushed_as_an_encapsulated_pdf(
    aiohttp_client: Any,
    pacs_settings: Settings,
    token_for: Any,
    coordinator: dict[str, str],
    orthanc: OrthancServer,
    tmp_path: Path,
) -> None:
    from server.app import create_app

    client = await aiohttp_client(create_app(pacs_settings))
    cid, accession, expert, key_image = await consultation(client, coordinator, token_for)
    url = f"/api/consultations/{cid}/report"
    body = {**REPORT, "key_image_ids": [key_image]}
    assert (await client.put(url, json=body, headers=expert)).status == 200
    assert (await client.post(f"{url}/sign", headers=expert)).status == 200

    records = client.app[KEY_IMAGES].records
    [pdf_object] = await records.objects(cid, "report_pdf")
    [sr_object] = await records.objects(cid, "report")
    data = (pacs_settings.data_dir / "archive" / pdf_object.path).read_bytes()
    assert dciodvfy_errors(data, tmp_path) == []
    ours = read(data)
    image = read(
        await (await client.get(f"/api/key-images/{key_image}/dicom", headers=expert)).read()
    )
    assert ours.SOPClassUID == ENCAPSULATED_PDF and ours.Modality == "DOC"
    assert ours.StudyInstanceUID == image.StudyInstanceUID
    assert ours.PatientID == image.PatientID and ours.PatientName == image.PatientName
    assert ours.AccessionNumber == "" and ours.PatientIdentityRemoved == "YES"
    assert ours.VerificationFlag == "VERIFIED" and ours.MIMETypeOfEncapsulatedDocument == (
        "application/pdf"
    )
    assert ours.SourceInstanceSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
    document = bytes(ours.EncapsulatedDocument)[: ours.EncapsulatedDocumentLength]
    text = pdf_text(document)
    # The SR's rules: its findings and UID, the study's pseudonym; no accession, no patient
    # reference, no consultation id, no reader's name or id.
    assert REPORT["findings"] in text and sr_object.sop_instance_uid in text
    assert f"Patient (pseudonym) {image.PatientID}" in text
    for secret in (accession, PATIENT_REF, cid, "reader-1"):
        assert secret not in text, secret
        assert not any(secret in str(v) for v in every_value(ours)), secret
    assert coloured_share(first_page(document), MAGENTA) > 0.002

    # Image, key object selection, presentation state, SR and PDF: all at the PACS.
    for _ in range(150):
        state = await records.outbox_state(cid)
        if state["sent"] == 5:
            break
        await asyncio.sleep(0.2)
    assert state == {"pending": 0, "sent": 5, "last_error": None}
    found = {i["00080018"]["Value"][0]: i for i in qido_instances(orthanc, ours.StudyInstanceUID)}
    theirs = found[ours.SOPInstanceUID]
    assert theirs["00080016"]["Value"][0] == ENCAPSULATED_PDF
    back = read(
        wado_instance(
            orthanc, ours.StudyInstanceUID, theirs["0020000E"]["Value"][0], ours.SOPInstanceUID
        )
    )
    assert bytes(back.EncapsulatedDocument) == bytes(ours.EncapsulatedDocument)
    assert re.search(rb"^%PDF-1\.\d", bytes(back.EncapsulatedDocument))

    # An addendum archives a new version of both, the PDF carrying the addendum.
    added = await client.post(f"{url}/addenda", json={"text": "Aspirated."}, headers=expert)
    assert added.status == 201
    pdfs = await records.objects(cid, "report_pdf")
    assert len(pdfs) == 2
    amended = read((pacs_settings.data_dir / "archive" / pdfs[-1].path).read_bytes())
    assert amended.SOPInstanceUID != ours.SOPInstanceUID
    amended_text = pdf_text(
        bytes(amended.EncapsulatedDocument)[: amended.EncapsulatedDocumentLength]
    )
    assert "Addendum 1" in amended_text and "Aspirated." in amended_text


async def download_pdf(page: Page, button: str) -> tuple[str, bytes]:
    """Click the page's PDF button; the file it saves: its name and bytes."""
    async with page.expect_download(timeout=TIMEOUT_MS) as info:
        await page.click(button)
    download = await info.value
    path = await download.path()
    return download.suggested_filename, await asyncio.to_thread(Path(path).read_bytes)


async def test_the_expert_page_gives_the_report_as_a_pdf_with_its_accession_and_pictures(
    live_server: Server, chromium: Browser
) -> None:
    token = coordinator_token(live_server)
    record = http(live_server, "/api/consultations", token, REQUEST)
    cid, accession = record["id"], record["accession_number"]
    operator = http(
        live_server, f"/api/consultations/{cid}/invites", token, {"role": "operator", "name": "Bed"}
    )
    expert = http(
        live_server,
        f"/api/consultations/{cid}/invites",
        token,
        {"role": "expert", "name": "Dr Breast"},
    )
    upload_png(live_server, cid, operator["token"], marked_png())

    context, page, errors = await new_page(chromium)
    await page.goto(f"{live_server.url}/expert#token={expert['token']}")
    await page.locator("#report-key-images input").first.wait_for(timeout=TIMEOUT_MS)
    await page.select_option("#report-category", "2")
    await page.fill("#report-findings", REPORT["findings"])
    await page.fill("#report-recommendation", REPORT["recommendation"])
    await page.select_option("#report-concordance", "major_discrepancy")
    await page.select_option("#report-quality", "limited")
    await page.check("#quality-reasons input[value='missing_landmarks']")
    await page.locator("#report-key-images input").first.check()
    await page.click("#report-save")
    await page.locator("#report-status", has_text="Draft saved").wait_for(timeout=TIMEOUT_MS)

    # The draft's PDF says what it is.
    name, data = await download_pdf(page, "#report-pdf-draft")
    assert name == f"report-{accession}.pdf"
    assert "DRAFT — NOT SIGNED" in pdf_text(data)

    await page.click("#report-sign")
    await page.click("#report-sign")
    await page.locator("#report-signed").wait_for(state="visible", timeout=TIMEOUT_MS)
    # The print view shows the cited picture and the identifiers, not a count.
    await page.wait_for_function(
        "() => { const img = document.querySelector('#report-document img[data-cited]');"
        " return img !== null && img.complete && img.naturalWidth > 0; }",
        timeout=TIMEOUT_MS,
    )
    document = await page.locator("#report-document").inner_text()
    assert cid in document and accession in document
    await page.emulate_media(media="print")
    await save_screenshot(page, "report-print-view")
    await page.emulate_media(media="screen")

    name, data = await download_pdf(page, "#report-pdf")
    assert name == f"report-{accession}.pdf"
    text = pdf_text(data)
    assert "DRAFT" not in text and "Signed by Dr Breast Signed at" in text
    # The first page, as a reader sees it: the accession is legible and the picture is there.
    pixels = first_page(data, scale=2.5)
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    Image.fromarray(pixels).save(ARTIFACTS_DIR / "report-pdf-first-page.png")
    # Read alike what tesseract confuses in this alphabet and font (2/Z, J/]).
    alike = str.maketrans({"Z": "2", "]": "J"})
    assert accession.translate(alike) in ocr(pixels).replace(" ", "").translate(alike)
    assert coloured_share(pixels, MAGENTA) > 0.002
    assert errors == []
    await context.close()


def test_marks_on_screen_and_calipers_are_drawn_on_the_picture() -> None:
    black = Image.new("RGB", (640, 480))
    fonts = find_fonts(None)
    arrow = {"kind": "arrow", "points": [[0.1, 0.1], [0.5, 0.5]], "author_role": "expert"}
    circle = {"kind": "circle", "points": [[0.7, 0.7], [0.8, 0.7]], "author_role": "operator"}
    label = {"kind": "text", "points": [[0.2, 0.8]], "text": "LT BREAST 2 OCLOCK"}
    caliper = {"points": [[300, 100], [600, 100]], "mm": 20.0, "n": 3}

    def drawn(**kw: Any) -> np.ndarray:
        made = picture(black, [arrow, circle, label], [caliper], "c", ["n"], fonts, **kw)
        return np.array(Image.open(io.BytesIO(made.jpeg)).convert("RGB"))

    pixels = drawn()
    expert, operator = ROLE_COLOURS["expert"], ROLE_COLOURS["operator"]
    assert coloured_share(pixels[48:240, 64:320], expert) > 0.01  # the arrow's box
    assert coloured_share(pixels[300:400, 420:540], operator) > 0.01  # the circle
    assert coloured_share(pixels[:480, 300:600], CALIPER_COLOUR) > 0.001
    text = ocr(pixels).replace(" ", "")
    assert "LTBREAST" in text and "M320.0mm" in text.replace(" ", "")
    # De-identified, a label is its anchor point only (as in the presentation state).
    assert "BREAST" not in ocr(drawn(mark_text=False))


def test_each_examined_venous_segment_is_a_row_in_words() -> None:
    findings = [
        parse(SegmentFinding, f)
        for f in (
            {"segment": "common_femoral", "compressibility": "compressible", "flow": ["phasic"]},
            {
                "segment": "popliteal",
                "compressibility": "non_compressible",
                "thrombus": "acute",
                "extent": "free_floating",
            },
        )
    ]
    assert findings_in_words(None, findings) == [
        ("Common femoral vein", "compressible; flow phasic"),
        ("Popliteal vein", "non-compressible; thrombus acute; extent free-floating"),
    ]
    # A breast report that says there is no lesion says so.
    assert findings_in_words([], None) == [("Lesions", "none")]
