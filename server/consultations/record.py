"""The one cross-feature view of a consultation: the whole record (as read, and as answered
when a request is made) and the queue.

Every feature's handlers are below this module; it reads them to put the record together, so no
feature's handlers reach up into another's.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from server.auth import Role, require_role
from server.consultations.http import checklist_body
from server.consultations.lifecycle import OPEN_STATES, State
from server.consultations.model import (
    URGENCY_RANK,
    ClinicalContext,
    ConsultationRow,
    check_sendable,
    due_at,
    new_accession_number,
)
from server.consultations.views import participant_body, summary
from server.errors import BadRequest
from server.experts import http as experts_http
from server.experts.model import credentialed
from server.experts.store import Experts
from server.imaging import http as images_http
from server.messages import StrictModel, parse
from server.notify.staging import stage
from server.outcomes import http as outcomes_http
from server.reports import http as reports_http
from server.reports.model import ReportState
from server.store.times import iso
from server.web.edge import authenticate, consultation_of, facts, read_json
from server.web.keys import KEY_IMAGES, METRICS, NOTIFIER, REPORT_LOG, SETTINGS, STORE
from server.web.queue import queue_changed


def routes(table: web.RouteTableDef) -> None:
    table.post("/api/consultations")(create_consultation)
    table.get("/api/consultations")(list_queue)
    table.get("/api/consultations/{consultation_id}")(get_consultation)


class QueueQuery(StrictModel):
    # Comma-separated states; default: the open ones.
    state: str | None = None


async def full_record(request: web.Request, row: ConsultationRow) -> dict[str, Any]:
    """The whole record: context, checklist (key images' landmarks included), people, marks,
    key images, report and turnaround."""
    store = request.app[STORE]
    application = row.context.application.value if row.context.application else None
    report = ReportState(application, await request.app[REPORT_LOG].versions(row.id))
    key_images = await request.app[KEY_IMAGES].records.images(row.id)
    participants = await store.participants(row.id)
    return {
        **summary(row, datetime.now(UTC)),
        "context": row.context.model_dump(mode="json", exclude_none=True),
        "checklist": checklist_body(row, key_images),
        "participants": [participant_body(p) for p in participants],
        "marks": await store.related_rows("marks", row.id),
        "key_images": key_images,
        "pacs": await request.app[KEY_IMAGES].records.outbox_state(row.id),
        "priors": [
            images_http.prior_view(o)
            for o in await request.app[KEY_IMAGES].records.objects(row.id, "prior")
        ],
        "report": reports_http.report_view(request, row, report, key_images, participants),
        # What happened next (breast and DVT, once signed): the newest and every version.
        "outcome": await outcomes_http.record_outcome(request, row),
        "turnaround": {
            "requested_at": iso(row.requested_at),
            "first_joined_at": iso(row.first_joined_at) if row.first_joined_at else None,
            "reported_at": iso(row.reported_at) if row.reported_at else None,
            "signed_at": iso(row.signed_at) if row.signed_at else None,
        },
    }


async def list_queue(request: web.Request) -> web.Response:
    principal = authenticate(request)
    if principal.is_reading_room:
        return await experts_http.expert_queue(request, principal)
    require_role(principal, Role.COORDINATOR)
    query = parse(QueueQuery, dict(request.query))
    states: set[State] = set(OPEN_STATES)
    if query.state is not None:
        try:
            states = {State(s.strip()) for s in query.state.split(",")}
        except ValueError:
            allowed = ", ".join(s.value for s in State)
            raise BadRequest(
                f"'state' must be a comma-separated list of: {allowed}",
                code="invalid_field",
                field="state",
            ) from None
    rows = await request.app[STORE].list_consultations(states)
    rows.sort(key=lambda r: (URGENCY_RANK[r.urgency], r.due_at, r.id))
    now = datetime.now(UTC)
    active = [e for e in await Experts(request.app[STORE]).all() if e.active]
    attached = await request.app[STORE].attachments([r.id for r in rows])

    def row_body(row: ConsultationRow) -> dict[str, Any]:
        # Whom the coordinator may assign it to, by the server's own credentialing rule.
        application = row.context.application.value if row.context.application else None
        offered = [e.sub for e in active if credentialed(e.subspecialties, application)]
        return {**summary(row, now, attached.get(row.id)), "credentialed_experts": offered}

    return web.json_response({"consultations": [row_body(r) for r in rows]})


async def get_consultation(request: web.Request) -> web.Response:
    principal = authenticate(request)
    store = request.app[STORE]
    row = await consultation_of(request, principal)
    consultation_id = row.id
    record = await full_record(request, row)
    # Who read which clinical record; recorded before the record leaves the server.
    await store.record_audit(
        facts(request, principal, "consultation.read", "consultation", consultation_id)
    )
    return web.json_response(record)


async def create_consultation(request: web.Request) -> web.Response:
    principal = authenticate(request, Role.COORDINATOR)
    context = await read_json(request, ClinicalContext)
    check_sendable(context)
    now = datetime.now(UTC)
    row = ConsultationRow(
        id=uuid.uuid4().hex,
        state=State.REQUESTED,
        context=context,
        created_by=principal.sub,
        requested_at=now,
        due_at=due_at(context.urgency, now, request.app[SETTINGS].due_minutes()),
        updated_at=now,
        accession_number=new_accession_number(),
    )
    # Who is told of it (none when notifications are off), staged with the request itself.
    notifier = request.app.get(NOTIFIER)
    notices = await notifier.on_request(row) if notifier is not None else []
    stored = row.requested_at
    row = await request.app[STORE].create_consultation(
        row,
        facts(request, principal, "consultation.create", "consultation", row.id),
        also=lambda conn: stage(conn, notices, stored),
    )
    if notifier is not None:
        notifier.kick()
    request.app[METRICS].consultations_created.labels(context.urgency.value).inc()
    await queue_changed(request.app, [row.id])
    return web.json_response(await full_record(request, row), status=201)
