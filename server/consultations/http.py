"""Consultations over HTTP: request, checklist, invites, cancel, audit check, turnaround.

parse → domain → store → respond. Thin by design. The whole record and the queue, which read
every feature, are in record.py.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from server.auth import Role
from server.consultations.lifecycle import Cancellation, check_cancellation
from server.consultations.model import (
    LANDMARKS_ITEM,
    REQUIRED_ITEMS,
    ClinicalContext,
    ConsultationRow,
    MissingItem,
    checklist,
    flags,
    landmarks_missing,
)
from server.consultations.store import ParticipantRow
from server.consultations.turnaround import Summary, summarise
from server.consultations.views import join_body, summary
from server.errors import BadRequest
from server.media.ice import ice_servers_for
from server.messages import Choice, Name, StrictModel, decode_json, parse
from server.web.edge import authenticate, consultation_id_of, facts, read_body, read_json
from server.web.keys import LIVE, METRICS, SETTINGS, STORE
from server.web.queue import queue_changed

INVITABLE_ROLES = (Role.OPERATOR, Role.EXPERT, Role.OBSERVER)


class InviteRequest(StrictModel):
    role: Choice[Role]
    # Carried in the join token too, so the same limit as verify_token's.
    name: Name


def routes(table: web.RouteTableDef) -> None:
    table.post("/api/consultations/checklist")(draft_checklist)
    table.post("/api/consultations/{consultation_id}/invites")(create_invite)
    table.post("/api/consultations/{consultation_id}/cancel")(cancel_consultation)
    table.get("/api/audit/verify")(verify_audit)
    table.get("/api/ice-servers")(get_ice_servers)
    table.get("/api/turnaround")(get_turnaround)


# Representations


def item_body(item: MissingItem) -> dict[str, str]:
    return {"field": item.field, "label": item.label, "why": item.why}


def checklist_body(
    row: ConsultationRow, key_images: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The request's checklist; with the key images, also whether any is labelled."""
    missing = list(checklist(row.context).missing)
    if key_images is not None and landmarks_missing([k["marks"] for k in key_images]):
        missing.append(LANDMARKS_ITEM)
    return {"complete": not missing, "missing": [item_body(m) for m in missing]}


# Handlers


async def draft_checklist(request: web.Request) -> web.Response:
    """The checklist of a request being written: nothing is stored.

    The required items may still be missing (they are named first); every other field is
    validated as for `POST /api/consultations`, so the form can show field errors as it goes.
    """
    authenticate(request, Role.COORDINATOR)
    draft = decode_json(await read_body(request), max_bytes=request.app[SETTINGS].max_body_bytes)
    # Absent, null or blank is missing; any other value is validated below like a real request's.
    required = [item for item in REQUIRED_ITEMS if _blank(draft.get(item.field))]
    # Stand-ins for what is still missing, so the rest can be checked now.
    placeholders = {"clinical_question": "(draft)", "urgency": "routine"}
    context = parse(
        ClinicalContext, {**draft, **{i.field: placeholders[i.field] for i in required}}
    )
    check = checklist(context)
    return web.json_response(
        {
            "flags": [{"code": f.code, "message": f.message} for f in flags(context)],
            "complete": check.complete and not required,
            "required_missing": [item_body(m) for m in required],
            "missing": [item_body(m) for m in check.missing],
        }
    )


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


async def create_invite(request: web.Request) -> web.Response:
    principal = authenticate(request, Role.COORDINATOR)
    consultation_id = consultation_id_of(request)
    invite = await read_json(request, InviteRequest)
    if invite.role not in INVITABLE_ROLES:
        raise BadRequest(
            "'role' must be operator, expert or observer", code="invalid_field", field="role"
        )
    participant = ParticipantRow.invited(consultation_id, invite.role, invite.name, principal.sub)
    # Signed before the participant is committed: an invite that cannot be signed leaves nothing.
    body = join_body(request, participant)
    await request.app[STORE].add_participant(
        participant, facts(request, principal, "invite.create", "participant", participant.id)
    )
    request.app[METRICS].invites_created.labels(invite.role.value).inc()
    return web.json_response(body, status=201)


async def cancel_consultation(request: web.Request) -> web.Response:
    """The coordinator cancels the request: every participant's access ends at once."""
    principal = authenticate(request, Role.COORDINATOR)
    consultation_id = consultation_id_of(request)
    cancellation = await read_json(request, Cancellation)
    check_cancellation(cancellation)
    now = datetime.now(UTC)
    row = await request.app[STORE].cancel(
        consultation_id,
        cancellation,
        now,
        facts(request, principal, "consultation.cancel", "consultation", consultation_id),
    )
    await request.app[LIVE].end_access([consultation_id])
    await queue_changed(request.app, [consultation_id])
    return web.json_response(summary(row, now))


async def verify_audit(request: web.Request) -> web.Response:
    authenticate(request, Role.COORDINATOR)
    check = await request.app[STORE].verify_audit()
    return web.json_response(
        {
            "ok": check.ok,
            "entries": check.entries,
            "head_hash": check.head_hash,
            "broken_seq": check.broken_seq,
            "reason": check.reason,
        }
    )


async def get_ice_servers(request: web.Request) -> web.Response:
    """The STUN/TURN servers (with a fresh TURN credential) of the token's holder."""
    principal = authenticate(request)
    body = ice_servers_for(request.app[SETTINGS], principal.sub, datetime.now(UTC))
    # A credential: never kept by a cache along the way.
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def turnaround_summary(app: web.Application) -> Summary:
    """Turnaround over every consultation not cancelled; also refreshes the /metrics gauges."""
    summary = summarise(await app[STORE].turnaround_times(), datetime.now(UTC))
    metrics = app[METRICS]
    for stage, figures in summary.stages.items():
        for quantile, value in (("0.5", figures.median_seconds), ("0.9", figures.p90_seconds)):
            if value is not None:
                metrics.turnaround.labels(stage, quantile).set(value)
    metrics.overdue.labels("open").set(summary.overdue_open)
    metrics.overdue.labels("signed_late").set(summary.signed_late)
    return summary


async def get_turnaround(request: web.Request) -> web.Response:
    authenticate(request, Role.COORDINATOR)
    summary = await turnaround_summary(request.app)
    return web.json_response(
        {
            "consultations": summary.consultations,
            "overdue_open": summary.overdue_open,
            "signed_late": summary.signed_late,
            "stages": {
                stage: {
                    "count": s.count,
                    "median_seconds": s.median_seconds,
                    "p90_seconds": s.p90_seconds,
                }
                for stage, s in summary.stages.items()
            },
        }
    )
