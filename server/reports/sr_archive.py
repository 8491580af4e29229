"""The signed report archived as a DICOM Comprehensive SR in the consultation's study.

An adapter: the report's domain (`server/reports/model.py`) in, `server/dicom/sr.py` builds the
object, the archive makes it durable; the caller records it with the signature (or addendum)
in one transaction. Each signature or addendum is a new SR instance; the newest is the report.
"""

from __future__ import annotations

import asyncio
import enum
import io
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pydicom

from server.consultations.applications import category_label
from server.consultations.lexicon import SEGMENT_LABELS, Lesion
from server.consultations.model import ConsultationRow
from server.dicom import deid, sr, writer
from server.errors import Conflict
from server.imaging.captures import KeyImages
from server.imaging.model import ArchivedObject
from server.reports.model import ReportState

SR_KIND = "report"


async def archive_report(
    key_images: KeyImages,
    row: ConsultationRow,
    report: ReportState,
    images: list[dict[str, Any]],
    now: datetime,
    readers: Mapping[str, str],
) -> ArchivedObject:
    """Write the report as it stands (signed body and addenda) durably; its archived object.
    `readers`: each author's reader pseudonym (the printed record's too), which the SR names."""
    body = report.current
    signed = report.signature
    if body is None or signed is None:
        raise Conflict("only a signed report is archived", code="report_not_signed")
    key = key_images.key
    study = key_images.identity.study_of(row)
    known = {image["id"]: image for image in images}
    evidence = []
    for key_image_id in body.key_image_ids:
        view = known.get(key_image_id)
        if view is None:
            raise Conflict(
                "a cited key image is not in this consultation", code="report_incomplete"
            )
        evidence.append(
            key_images.identity.evidence_of(
                study, row.id, view["sop_instance_uid"], view["object_kind"]
            )
        )
    # The cited key images, as the SR's evidence names them.
    cited = {
        key_image_id: (ds.SOPClassUID, ds.SOPInstanceUID)
        for key_image_id, ds in zip(body.key_image_ids, evidence, strict=True)
    }
    application = row.context.application.value if row.context.application else None
    category = None
    if body.category is not None and application is not None:
        category = (body.category, category_label(application, body.category))
    quality = body.technical_quality
    assert quality is not None and body.findings is not None  # signing required them
    content = sr.ReportContent(
        application_label=application or "general",
        findings=body.findings,
        category=category,
        recommendation=body.recommendation,
        concordance=body.concordance.value if body.concordance else None,
        quality_grade=quality.grade.value,
        quality_reasons=tuple(r.value for r in quality.reasons),
        quality_note=quality.note,
        key_images=tuple((ds.SOPClassUID, ds.SOPInstanceUID) for ds in evidence),
        signer=readers[signed.author],
        signed_at=signed.signed_at or now,
        measurements=tuple(
            sr.Measurement(
                ds.SOPClassUID, ds.SOPInstanceUID, c["mm"], c["said"], c["label"], c.get("frame")
            )
            for ds, key_image_id in zip(evidence, body.key_image_ids, strict=True)
            for c in (known[key_image_id].get("measurements") or {}).get("calipers", [])
            if c["mm"] is not None
        ),
        segments_examined=tuple(SEGMENT_LABELS[s] for s in body.segments_examined or ()),
        lesions=tuple(
            _lesion(lesion, cited.get(lesion.size_key_image_id or ""))
            for lesion in body.lesions or ()
        ),
        segment_findings=tuple(
            sr.SegmentContent(
                f.segment.value,
                _value(f.compressibility),
                _value(f.thrombus),
                tuple(v.value for v in f.flow),
                _value(f.extent),
            )
            for f in body.segment_findings or ()
        ),
        addenda=tuple(
            (a.addendum or "", readers[a.author], a.signed_at or now) for a in report.addenda
        ),
    )
    # An amended report names the version it replaces (the newest archived one).
    earlier = await key_images.records.objects(row.id, SR_KIND)
    previous = None
    if earlier:
        newest = earlier[-1]
        data = await key_images.read(newest, "the report's previous version")
        previous = pydicom.dcmread(io.BytesIO(data))
    sop = deid.derived_uid(key, "report_sr", row.id, str(len(report.versions)))
    inst = key_images.identity.instance_of(row, SR_KIND, sop, now)
    data = await asyncio.to_thread(
        lambda: writer.to_bytes(sr.report_sr(content, evidence, study, inst, previous))
    )
    where = await asyncio.to_thread(
        key_images.archive.store,
        data,
        study.study_uid,
        key_images.identity.series_uid(row.id, SR_KIND),
    )
    return ArchivedObject(sop, SR_KIND, where.path, where.sha256, where.size)


def _value(choice: enum.StrEnum | None) -> str | None:
    return choice.value if choice is not None else None


def _lesion(lesion: Lesion, size_source: tuple[str, str] | None) -> sr.LesionContent:
    """A lesion for the SR; its size names its key image only when the report cites it."""
    return sr.LesionContent(
        side=_value(lesion.side),
        clock=lesion.clock,
        distance_from_nipple_cm=lesion.distance_from_nipple_cm,
        size_mm=tuple(lesion.size_mm or ()),
        size_source=size_source if lesion.size_mm else None,
        shape=_value(lesion.shape),
        orientation=_value(lesion.orientation),
        margin=tuple(m.value for m in lesion.margin or ()),
        echo_pattern=_value(lesion.echo_pattern),
        posterior_features=_value(lesion.posterior_features),
        calcifications=_value(lesion.calcifications),
        associated_features=tuple(a.value for a in lesion.associated_features),
        special_case=_value(lesion.special_case),
        category=_value(lesion.category),
        note=lesion.note,
    )
