"""The fileable report: a PDF with the identifiers, dates, clinical fields, the cited key images
as pictures with their marks and measurements, the signature, addenda and the SR's UID; a
draft says so; archived with each signature and addendum as an Encapsulated PDF that reaches
the PACS."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pypdfium2 as pdfium
import pytest
from aiohttp.test_utils import TestClient
from dicom_checks import dciodvfy_errors, every_value, read
from orthanc_server import OrthancServer
from phantom import BREAST_REQUEST, phantom_frame
from PIL import Image, ImageDraw
from test_pacs import qido_instances, wado_instance

from server.config import Settings, load_settings
from server.keyring import load_or_create
from server.web.keys import KEY_IMAGES, STORE

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
    body = {**REPORT, "key_image_ids": [key_image]}
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
        "First read Oval hypoechoic mass, BI-RADS 4A (BI-RADS 4A (low suspicion",
        "Category 2: BI-RADS 2 (benign)",
        f"Findings {REPORT['findings']}",
        f"Recommendation {REPORT['recommendation']}",
        "Concordance Major discrepancy with the first read",
        "Technical quality Limited, missing landmarks",
        "Key images cited (1)",
        "M1 (cyst): 20.0 mm — calibrated on the depth scale",
        "Signed by reader-1",
        f"Signed at {signed_at} UTC",
        f"Report SR (SOP Instance UID) {sr.sop_instance_uid}",
    ):
        assert expected in text, expected
    assert f"id {key_image[:8]}" in text
    assert coloured_share(first_page(data), MAGENTA) > 0.002

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
    client: TestClient[Any, Any], coordinator: dict[str, str], token_for: Any
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
