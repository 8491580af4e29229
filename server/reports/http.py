"""REST handlers for the expert's structured report: draft, sign, addenda (thin adapters).

The rules are `server/reports/model.py`'s; this parses, asks it, archives the signed report as a
DICOM SR (queued for the PACS with the key images) and commits version, state and SR together.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from server.auth import Principal, Role
from server.consultations.applications import CATEGORIES, Application, category_label
from server.consultations.lexicon import SEGMENT_LABELS
from server.consultations.lifecycle import State, on_report_drafted, on_report_signed
from server.consultations.model import ConsultationRow, flags
from server.consultations.store import ParticipantRow
from server.dicom import deid
from server.errors import Conflict
from server.messages import LongText, StrictModel
from server.reports import filed
from server.reports.compare import lesion_differences, segment_differences
from server.reports.consistency import Advice, RequestFacts, check_consistency, refuse_hard
from server.reports.model import (
    ReportBody,
    ReportState,
    Version,
    check_draft,
    check_terminology,
    may_write,
    missing_for_signing,
)
from server.reports.sr_archive import SR_KIND, archive_report
from server.store.times import iso
from server.web.edge import authenticate, consultation_of, facts, read_json
from server.web.keys import KEY_IMAGES, LIVE, REPORT_LOG, STORE, TERMINOLOGY
from server.web.queue import queue_changed

log = logging.getLogger(__name__)


class AddendumRequest(StrictModel):
    text: LongText


def routes(table: web.RouteTableDef) -> None:
    path = "/api/consultations/{consultation_id}/report"
    table.get(path)(get_report)
    table.put(path)(put_report)
    table.post(f"{path}/check")(check_report)
    table.post(f"{path}/sign")(sign_report)
    table.post(f"{path}/addenda")(add_addendum)
    table.get(f"{path}/pdf")(get_report_pdf)


async def _state(request: web.Request, row: ConsultationRow) -> ReportState:
    application = row.context.application.value if row.context.application else None
    return ReportState(application, await request.app[REPORT_LOG].versions(row.id))


def _expert(request: web.Request) -> Principal:
    principal = authenticate(request, Role.EXPERT)
    return principal


async def _writer(
    request: web.Request,
) -> tuple[Principal, ConsultationRow, list[ParticipantRow]]:
    """The consultation's expert who may write its report: once it is assigned, only the
    assigned expert (a join link from before a reassignment no longer writes or signs).
    With the participants, read once for the whole request (names, readers)."""
    principal = _expert(request)
    row = await consultation_of(request, principal)
    participants = await request.app[STORE].participants(row.id)
    writer = None
    if row.assigned_expert is not None:
        mine = next((p for p in participants if p.id == principal.sub), None)
        writer = mine.expert_sub if mine is not None else None
    may_write(row.state is State.CANCELLED, row.assigned_expert, writer)
    return principal, row, participants


def report_view(
    request: web.Request,
    row: ConsultationRow,
    report: ReportState,
    images: list[dict[str, Any]],
    participants: list[ParticipantRow],
) -> dict[str, Any]:
    """The report as the expert page and the record show it, with what its rules say now."""
    application = row.context.application.value if row.context.application else None
    body = report.current
    latest = next((v for v in reversed(report.versions) if v.body is not None), None)
    names = {p.id: p.name for p in participants}
    rules = _rules(request, row, None if report.signed else body, images)
    categories = (
        [{"value": c, "label": category_label(application, c)} for c in CATEGORIES[application]]
        if application in CATEGORIES
        else []
    )
    return {
        "application": application,
        "categories": categories,
        # A DVT report says which venous segments it covers.
        "segments": (
            [{"value": s.value, "label": label} for s, label in SEGMENT_LABELS.items()]
            if application == Application.DVT
            else []
        ),
        "first_read": row.context.first_read,
        "flags": [{"code": f.code, "message": f.message} for f in flags(row.context)],
        "current": None if latest is None else _version_view(latest, names),
        "signed": report.signed,
        "addenda": [
            {
                "text": a.addendum,
                "author": a.author,
                "author_name": names.get(a.author),
                "signed_at": iso(a.signed_at or a.created_at),
            }
            for a in report.addenda
        ],
        **rules,
        # Where the second read differs from the first, also once signed.
        "differences": _differences(row, body),
    }


def _rules(
    request: web.Request,
    row: ConsultationRow,
    body: ReportBody | None,
    images: list[dict[str, Any]],
) -> dict[str, Any]:
    """What the report's rules say of `body` (None: nothing to check, e.g. once signed):
    what signing still needs, ambiguous terms and contradictions (`consistency`)."""
    if body is None:
        return {"missing_for_signing": [], "terminology": [], "consistency": []}
    application = row.context.application.value if row.context.application else None
    known = {i["id"] for i in images}
    missing = missing_for_signing(application, body, bool(row.context.first_read), known)
    terms = request.app[TERMINOLOGY]
    return {
        "missing_for_signing": [
            {"field": m.field, "label": m.label, "why": m.why} for m in missing
        ],
        "terminology": [
            {"field": t.field, "phrase": t.phrase, "preferred": t.preferred, "why": t.why}
            for t in check_terminology(terms, body)
        ],
        "consistency": [
            {"field": a.field, "message": a.message, "hard": a.hard}
            for a in _consistency(row, body, images)
        ],
    }


def _differences(row: ConsultationRow, body: ReportBody | None) -> list[dict[str, Any]]:
    """The report's structured findings against the request's structured first read."""
    if body is None:
        return []
    breast, dvt = row.context.breast, row.context.dvt
    found = lesion_differences(breast.first_read_lesions if breast else None, body.lesions)
    found += segment_differences(dvt.first_read_segments if dvt else None, body.segment_findings)
    return [asdict(d) for d in found]


def _consistency(
    row: ConsultationRow, body: ReportBody, images: list[dict[str, Any]]
) -> list[Advice]:
    context = row.context
    facts = RequestFacts(
        first_read_birads=context.breast.first_read_birads if context.breast else None,
        segments_requested=tuple(context.dvt.segments_examined or ()) if context.dvt else (),
    )
    cited = {i["id"]: (i.get("measurements") or {}).get("calipers", []) for i in images}
    application = context.application.value if context.application else None
    return check_consistency(application, body, facts, cited)


def _version_view(v: Version, names: dict[str, str]) -> dict[str, Any]:
    """One version; `*_name` is the participant's display name, when the author is one."""
    return {
        "version": v.version,
        "author": v.author,
        "author_name": names.get(v.author),
        "signed_by_name": names.get(v.signed_by or ""),
        "body": v.body.model_dump(mode="json") if v.body else None,
        "created_at": iso(v.created_at),
        "signed_at": iso(v.signed_at) if v.signed_at else None,
        "signed_by": v.signed_by,
    }


async def get_report(request: web.Request) -> web.Response:
    principal = authenticate(request)
    row = await consultation_of(request, principal)
    images = await request.app[KEY_IMAGES].records.images(row.id)
    participants = await request.app[STORE].participants(row.id)
    view = report_view(request, row, await _state(request, row), images, participants)
    # Who read which report, recorded before it leaves the server (as for the record).
    await request.app[STORE].record_audit(
        facts(request, principal, "report.read", "consultation", row.id)
    )
    return web.json_response(view)


async def get_report_pdf(request: web.Request) -> web.Response:
    """The report as a fileable PDF (a draft says it is one); read as the report is."""
    principal = authenticate(request)
    row = await consultation_of(request, principal)
    report = await _state(request, row)
    if report.current is None:
        raise Conflict("there is no report yet", code="no_report")
    images = await request.app[KEY_IMAGES].records.images(row.id)
    srs = await request.app[KEY_IMAGES].records.objects(row.id, SR_KIND)
    participants = await request.app[STORE].participants(row.id)
    record = _record(
        request, row, report, images, participants, srs[-1].sop_instance_uid if srs else None
    )
    data = await filed.report_pdf(request.app[KEY_IMAGES], record, datetime.now(UTC))
    await request.app[STORE].record_audit(
        facts(request, principal, "report.pdf", "consultation", row.id)
    )
    # Named by the accession (or the consultation id): nothing about the patient.
    name = f"report-{row.accession_number or row.id}.pdf"
    return web.Response(
        body=data,
        headers={
            "Content-Type": "application/pdf",
            "Content-Disposition": f'inline; filename="{name}"',
        },
    )


def _record(
    request: web.Request,
    row: ConsultationRow,
    report: ReportState,
    images: list[dict[str, Any]],
    participants: list[ParticipantRow],
    sr_uid: str | None,
) -> filed.Record:
    key_images = request.app[KEY_IMAGES]
    return filed.Record(
        row,
        report,
        images,
        {p.id: p.name for p in participants},
        sr_uid,
        key_images.identity.study_of(row).patient,
        _reader_pseudonyms(key_images.key, report, participants),
    )


def _reader_pseudonyms(
    key: bytes, report: ReportState, participants: list[ParticipantRow]
) -> dict[str, str]:
    """Each version's author by reader pseudonym: the expert behind a join link names the
    reader (as the ledger does), so one expert is one reader across consultations."""
    readers = {p.id: p.expert_sub or p.id for p in participants}
    return {
        v.author: deid.reader_pseudonym(key, readers.get(v.author, v.author))
        for v in report.versions
    }


async def put_report(request: web.Request) -> web.Response:
    """Save the draft (partial is fine); the consultation becomes `reported`."""
    principal, row, participants = await _writer(request)
    body = await read_json(request, ReportBody)
    report = await _state(request, row)
    version = report.draft(body, principal.sub, datetime.now(UTC))
    await request.app[REPORT_LOG].append(
        row.id,
        version,
        facts(request, principal, "report.draft", "consultation", row.id),
        state=on_report_drafted(row.state),
    )
    if on_report_drafted(row.state) is not row.state:
        await queue_changed(request.app, [row.id])
    images = await request.app[KEY_IMAGES].records.images(row.id)
    return web.json_response(report_view(request, row, report, images, participants))


async def check_report(request: web.Request) -> web.Response:
    """What the rules say of a body being written, before it is saved: nothing is stored."""
    _, row, _ = await _writer(request)
    body = await read_json(request, ReportBody)
    application = row.context.application.value if row.context.application else None
    check_draft(application, body)
    images = await request.app[KEY_IMAGES].records.images(row.id)
    # With where it differs from a structured first read.
    return web.json_response(
        {**_rules(request, row, body, images), "differences": _differences(row, body)}
    )


async def sign_report(request: web.Request) -> web.Response:
    """Sign: immutable from now on, archived as a DICOM SR and queued for the PACS."""
    principal, row, participants = await _writer(request)
    report = await _state(request, row)
    images = await request.app[KEY_IMAGES].records.images(row.id)
    version = report.sign(
        principal.sub,
        datetime.now(UTC),
        has_first_read=bool(row.context.first_read),
        known_key_images={i["id"] for i in images},
    )
    # Complete (sign refuses otherwise), it must not contradict itself either; nothing is
    # stored until the commit below.
    if version.body is not None:
        refuse_hard(_consistency(row, version.body, images))
    state = on_report_signed(row.state)
    await _commit_with_sr(request, principal, row, report, images, participants, version, state)
    # The bedside and observers are let go; the expert stays for addenda.
    await request.app[LIVE].end_access([row.id])
    await queue_changed(request.app, [row.id])
    return web.json_response(report_view(request, row, report, images, participants))


async def add_addendum(request: web.Request) -> web.Response:
    """A change after signing: its own signature and time, and a new SR version."""
    principal, row, participants = await _writer(request)
    addendum = await read_json(request, AddendumRequest)
    report = await _state(request, row)
    images = await request.app[KEY_IMAGES].records.images(row.id)
    version = report.addendum(addendum.text, principal.sub, datetime.now(UTC))
    await _commit_with_sr(request, principal, row, report, images, participants, version, None)
    return web.json_response(report_view(request, row, report, images, participants), status=201)


async def _commit_with_sr(
    request: web.Request,
    principal: Principal,
    row: ConsultationRow,
    report: ReportState,
    images: list[dict[str, Any]],
    participants: list[ParticipantRow],
    version: Version,
    state: State | None,
) -> None:
    """Archive the report as it now stands and record it with `version` (signature or addendum)."""
    key_images = request.app[KEY_IMAGES]
    record = _record(request, row, report, images, participants, None)
    sr = await archive_report(key_images, row, report, images, version.created_at, record.readers)
    # The report's PDF beside its SR, naming it (de-identified like it), for the PACS too.
    record = replace(record, sr_uid=sr.sop_instance_uid)
    pdf = await filed.archive_pdf(key_images, record, version.created_at)
    action = "report.addendum" if version.addendum is not None else "report.sign"
    await request.app[REPORT_LOG].append(
        row.id,
        version,
        facts(request, principal, action, "consultation", row.id),
        state=state,
        sr=sr,
        push=key_images.push,
        pdf=pdf,
    )
    log.info(
        "report signed" if version.addendum is None else "addendum signed",
        extra={"consultation": row.id, "participant": principal.sub, "version": version.version},
    )
    if key_images.push and key_images.on_outbox is not None:
        key_images.on_outbox()
