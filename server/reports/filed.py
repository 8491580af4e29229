"""The report as a filed document: the PDF for the pages (`report_pdf`) and the copy archived
with each signature and addendum as an Encapsulated PDF beside the SR (`archive_pdf`).

An adapter: reads the cited key images from the archive, draws their marks and measurements
(`pdf.picture`, in a worker thread, one image at a time), words the record (`document`, plain)
and hands it to `pdf.render`. The page's PDF names the patient reference, consultation and
accession; the archived one is de-identified like the SR: the study's pseudonym, reader
pseudonyms, no accession, no label text on the pictures.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pydicom
from PIL import Image

from server.consultations.applications import category_label
from server.consultations.lexicon import SEGMENT_LABELS, Lesion, SegmentFinding
from server.consultations.model import ConsultationRow
from server.dicom import deid, writer
from server.dicom.encapsulated import encapsulated_pdf
from server.dicom.incoming import first_frame
from server.errors import Unavailable
from server.imaging.captures import KeyImages
from server.imaging.identity import SOP_CLASS
from server.imaging.measurements import CALIBRATION_LABELS
from server.imaging.model import ArchivedObject
from server.reports import pdf
from server.reports.compare import lesion_summary, segment_summary
from server.reports.model import ReportState

PDF_KIND = "report_pdf"
APPLICATION_NAMES = {
    "breast": "Breast ultrasound",
    "dvt": "Lower-limb venous ultrasound (DVT)",
    "vascular": "Vascular ultrasound",
    "thyroid": "Thyroid ultrasound",
    "abdominal": "Abdominal ultrasound",
    "obstetric": "Obstetric ultrasound",
    "emergency": "Emergency ultrasound",
    "musculoskeletal": "Musculoskeletal ultrasound",
    "other": "Ultrasound",
}
CONCORDANCE = {
    "agree": "Agrees with the first read",
    "minor_discrepancy": "Minor discrepancy with the first read",
    "major_discrepancy": "Major discrepancy with the first read",
}
QUALITY = {"adequate": "Adequate", "limited": "Limited", "non_diagnostic": "Non-diagnostic"}
REASONS = {
    "missing_landmarks": "missing landmarks",
    "poor_image_quality": "poor image quality",
    "incomplete_protocol": "incomplete protocol",
}


@dataclass(frozen=True)
class Record:
    """What the document is made from: the consultation, its report and key images (as the
    API lists them), participants' display names, the newest SR's UID."""

    row: ConsultationRow
    report: ReportState
    images: list[dict[str, Any]]
    names: dict[str, str]
    sr_uid: str | None
    pseudonym: str  # the study's patient pseudonym
    readers: dict[str, str]  # a signer's or author's sub -> reader pseudonym


async def report_pdf(
    key_images: KeyImages, record: Record, now: datetime, *, deidentified: bool = False
) -> bytes:
    """The report's PDF: for the page, or (`deidentified`) the copy that is archived."""
    fonts = pdf.find_fonts(key_images.settings.report_fonts)
    pictures = []
    body = record.report.current
    cited = body.key_image_ids if body is not None else []
    known = {view["id"]: view for view in record.images}
    for n, key_image_id in enumerate(cited, 1):
        view = known.get(key_image_id)
        found = await key_images.records.image(key_image_id) if view is not None else None
        if view is None or found is None:
            continue  # a draft may cite an image that is not (or no longer) this one's
        try:
            data = await key_images.read(found[1], "a cited key image")
        except Unavailable as exc:
            # The document still lists it (a signature is not refused for want of a picture).
            pictures.append(await asyncio.to_thread(_unavailable, view, n, fonts, exc.message))
            continue
        pictures.append(
            await asyncio.to_thread(_picture, data, view, n, fonts, deidentified=deidentified)
        )
    made = document(record, tuple(pictures), now, deidentified=deidentified)
    return await asyncio.to_thread(pdf.render, made, fonts)


async def archive_pdf(key_images: KeyImages, record: Record, now: datetime) -> ArchivedObject:
    """The de-identified PDF as an Encapsulated PDF in the study, durably archived; the caller
    records it with the signature or addendum (and so queues it for the PACS)."""
    row, report = record.row, record.report
    data = await report_pdf(key_images, record, now, deidentified=True)
    sop = deid.derived_uid(key_images.key, PDF_KIND, row.id, str(len(report.versions)))
    inst = key_images.identity.instance_of(row, PDF_KIND, sop, now)
    study = key_images.identity.study_of(row)
    body = report.current
    known = {view["id"]: view for view in record.images}
    sources = [
        (SOP_CLASS[known[k]["object_kind"]], known[k]["sop_instance_uid"])
        for k in (body.key_image_ids if body is not None else [])
        if k in known and known[k]["object_kind"] in SOP_CLASS
    ]
    signed = report.signature
    encoded = await asyncio.to_thread(
        lambda: writer.to_bytes(
            encapsulated_pdf(
                data,
                study,
                inst,
                signed_at=signed.signed_at if signed else None,
                sources=sources,
            )
        )
    )
    where = await asyncio.to_thread(
        key_images.archive.store,
        encoded,
        study.study_uid,
        key_images.identity.series_uid(row.id, PDF_KIND),
    )
    return ArchivedObject(sop, PDF_KIND, where.path, where.sha256, where.size)


def document(
    record: Record, pictures: tuple[pdf.Picture, ...], now: datetime, *, deidentified: bool
) -> pdf.Document:
    """The record worded as the document states it (plain: no I/O)."""
    row, report = record.row, record.report
    ctx = row.context
    application = ctx.application.value if ctx.application else None
    body = report.current
    signed = report.signature
    latest = next((v for v in reversed(report.versions) if v.body is not None), None)

    def person(sub: str) -> str:
        if deidentified:
            return record.readers.get(sub, "reader")
        return record.names.get(sub) or sub

    exam = _exam_date(row, record.images)
    identity: list[tuple[str, str]] = []
    if deidentified:
        identity.append(("Patient (pseudonym)", record.pseudonym))
    else:
        identity += [
            ("Patient reference", ctx.patient_ref or "not given"),
            ("Consultation", row.id),
            ("Accession", row.accession_number or "none"),
        ]
    identity += [
        ("Requested", f"{pdf.when(row.requested_at)} ({ctx.urgency.value})"),
        ("Exam date", pdf.when(exam) if exam else "no images recorded"),
        ("Application", APPLICATION_NAMES.get(application or "", "not given")),
    ]
    first_read = ctx.first_read
    if ctx.breast is not None and ctx.breast.first_read_birads is not None:
        stated = category_label("breast", ctx.breast.first_read_birads.value)
        first_read = f"{first_read}; category stated: {stated}" if first_read else stated
    fields = [
        ("Clinical question", ctx.clinical_question),
        ("First read", first_read or "none given"),
    ]
    if body is not None:
        category = None
        if body.category is not None and application is not None:
            category = f"{body.category}: {category_label(application, body.category)}"
        quality = body.technical_quality
        fields += [
            ("Category", category or "—"),
            ("Findings", body.findings or "—"),
            ("Recommendation", body.recommendation or "—"),
            ("Concordance", CONCORDANCE[body.concordance.value] if body.concordance else "—"),
            (
                "Technical quality",
                ", ".join(
                    [QUALITY[quality.grade.value]]
                    + [REASONS[r.value] for r in quality.reasons]
                    + ([quality.note] if quality.note else [])
                )
                if quality
                else "—",
            ),
        ]
        if body.segments_examined is not None:
            covered = ", ".join(SEGMENT_LABELS[s] for s in body.segments_examined)
            fields.append(("Venous segments examined", covered or "none"))
        fields += findings_in_words(body.lesions, body.segment_findings, body.key_image_ids)
    if signed is not None and signed.signed_at is not None:
        signature = [
            ("Signed by", person(signed.author)),
            ("Signed at", pdf.when(signed.signed_at)),
        ]
    else:
        saved = f"{pdf.when(latest.created_at)} by {person(latest.author)}" if latest else "—"
        signature = [("Status", "Draft, not signed"), ("Last saved", saved)]
    signature.append(("Report SR (SOP Instance UID)", record.sr_uid or "none: written when signed"))
    addenda = tuple(
        pdf.Addendum(a.addendum or "", person(a.author), a.signed_at or a.created_at)
        for a in report.addenda
    )
    title = f"Second-opinion report — {APPLICATION_NAMES.get(application or '', 'Ultrasound')}"
    footer = (
        f"probelink second opinion · {record.pseudonym}"
        if deidentified
        else f"probelink second opinion · consultation {row.id} · accession "
        f"{row.accession_number or 'none'}"
    )
    return pdf.Document(
        title=title,
        draft=signed is None,
        identity=tuple(identity),
        fields=tuple(fields),
        pictures=pictures,
        signature=tuple(signature),
        addenda=addenda,
        footer=footer,
        made_at=now,
    )


def findings_in_words(
    lesions: Sequence[Lesion] | None,
    segment_findings: Sequence[SegmentFinding] | None,
    cited: Sequence[str] = (),
) -> list[tuple[str, str]]:
    """The structured findings as the document's rows: one per lesion, one per venous segment,
    in the lexicon's words (a lesion's size names the cited key image it was measured on)."""
    rows = []
    for n, lesion in enumerate(lesions or (), 1):
        text = lesion_summary(lesion)
        if lesion.size_mm and lesion.size_key_image_id in cited:
            text += f"; size measured on key image {cited.index(lesion.size_key_image_id) + 1}"
        if lesion.note:
            text += f"; note: {lesion.note}"
        rows.append((f"Lesion {n}", text))
    if lesions is not None and not lesions:
        rows.append(("Lesions", "none"))
    for finding in segment_findings or ():
        label = SEGMENT_LABELS[finding.segment]
        rows.append((label[:1].upper() + label[1:], segment_summary(finding)))
    return rows


def _exam_date(row: ConsultationRow, images: list[dict[str, Any]]) -> datetime | None:
    """When the patient was scanned: the first key image, else the first join."""
    times = [datetime.fromisoformat(view["created_at"]) for view in images]
    times += [row.first_joined_at] if row.first_joined_at else []
    return min((t if t.tzinfo else t.replace(tzinfo=UTC) for t in times), default=None)


def _picture(
    data: bytes, view: dict[str, Any], n: int, fonts: pdf.Fonts, *, deidentified: bool
) -> pdf.Picture:
    """A cited key image as printed: the frame its measurements are on (a still's only one),
    its marks on screen at capture, its calipers numbered as in the notes."""
    ds = pydicom.dcmread(io.BytesIO(data))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    calipers = (view.get("measurements") or {}).get("calipers") or []
    numbered = [{**c, "n": i} for i, c in enumerate(calipers, 1)]
    frame = next((c["frame"] for c in numbered if c.get("frame")), 1)
    frame = min(max(frame, 1), frames)
    drawn = [c for c in numbered if c.get("frame") in (None, frame)]
    # The marks on screen at capture go with a still only (as its presentation state).
    marks = view.get("marks") or [] if view["kind"] == "still" else []
    notes = []
    for c in numbered:
        size = f"{c['mm']:.1f} mm" if c.get("mm") is not None else "no length in mm"
        said = c.get("said") or CALIBRATION_LABELS[c.get("calibration")]
        where = f", frame {c['frame']}" if c.get("frame") else ""
        label = f" ({c['label']})" if c.get("label") else ""
        notes.append(f"M{c['n']}{label}: {size} — {said}{where}")
    created = pdf.when(datetime.fromisoformat(view["created_at"]))
    kind = "clip" if frames > 1 else "still"
    shown = f", frame {frame} of {frames}" if frames > 1 else ""
    ident = "" if deidentified else f" · id {view['id'][:8]}"
    caption = f"Key image {n}: {kind}{shown} · {created}{ident}"
    return pdf.picture(
        first_frame(ds, frame - 1),
        marks,
        drawn,
        caption,
        notes,
        fonts,
        mark_text=not deidentified,
    )


def _unavailable(view: dict[str, Any], n: int, fonts: pdf.Fonts, why: str) -> pdf.Picture:
    """A grey stand-in for a cited key image this node cannot read, saying so."""
    blank = Image.new("RGB", (640, 360), (90, 90, 90))
    created = pdf.when(datetime.fromisoformat(view["created_at"]))
    caption = f"Key image {n}: picture unavailable · {created}"
    return pdf.picture(blank, [], [], caption, [why], fonts)
