"""REST handlers for experts: credentials (coordinator), the expert's queue, accept and assign.

An expert's reading-room token (role `expert`, no consultation) lists the open
requests the expert is credentialed for and accepts one, which assigns it to
them and gives them a join token for it, as an invite would.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime

from aiohttp import web

from server.auth import Principal, Role
from server.consultations.lifecycle import OPEN_STATES, State
from server.consultations.model import URGENCY_RANK, ConsultationRow
from server.consultations.store import ParticipantRow
from server.consultations.views import join_body, summary
from server.errors import BadRequest, Conflict, Forbidden, NotFound
from server.experts.model import (
    SUB_PATTERN,
    ExpertProfile,
    ExpertSub,
    application_of,
    credentialed,
    subspecialty_set,
)
from server.experts.store import ExpertRow, Experts
from server.messages import StrictModel, parse
from server.store.times import iso
from server.web.edge import authenticate, consultation_id_of, facts, read_json
from server.web.keys import LIVE, STORE
from server.web.queue import queue_changed

EXPERT_SUB = re.compile(SUB_PATTERN)


class AssignRequest(StrictModel):
    # The expert's sub; null leaves the consultation unassigned.
    expert: ExpertSub | None


class ExpertQueueQuery(StrictModel):
    # Comma-separated open states; default: all of them.
    state: str | None = None


def routes(table: web.RouteTableDef) -> None:
    table.get("/api/experts")(list_experts)
    table.put("/api/experts/{sub}")(put_expert)
    table.post("/api/consultations/{consultation_id}/accept")(accept_consultation)
    table.post("/api/consultations/{consultation_id}/assign")(assign_consultation)


def expert_body(row: ExpertRow) -> dict[str, object]:
    return {
        "sub": row.sub,
        "name": row.name,
        "subspecialties": [s.value for s in row.subspecialties],
        "active": row.active,
        "email": row.email,
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
    }


def _sub_of(request: web.Request) -> str:
    sub = request.match_info["sub"]
    if not EXPERT_SUB.fullmatch(sub):
        raise BadRequest(
            "'sub' must be 1 to 128 of A-Z a-z 0-9 . _ @ -", code="invalid_field", field="sub"
        )
    return sub


def _require_reading_room(principal: Principal) -> None:
    if not principal.is_reading_room:
        raise Forbidden(
            "this needs an expert's own (reading-room) token, not a join or coordinator token",
            code="reading_room_token_required",
        )


async def _credentials(request: web.Request, principal: Principal) -> ExpertRow:
    """The active credentials of the reading-room token's expert, or 403 `not_credentialed`."""
    return await Experts(request.app[STORE]).active(principal.sub)


async def _consultation(request: web.Request, consultation_id: str) -> ConsultationRow:
    row = await request.app[STORE].get_consultation(consultation_id)
    if row is None:
        raise NotFound("no such consultation", code="consultation_not_found", field="id")
    return row


# Coordinator: credentials


async def list_experts(request: web.Request) -> web.Response:
    authenticate(request, Role.COORDINATOR)
    experts = await Experts(request.app[STORE]).all()
    return web.json_response({"experts": [expert_body(e) for e in experts]})


async def put_expert(request: web.Request) -> web.Response:
    """Register an expert's credentials, or replace them (name, subspecialties, active, e-mail
    address)."""
    principal = authenticate(request, Role.COORDINATOR)
    sub = _sub_of(request)
    profile = await read_json(request, ExpertProfile)
    subspecialties = subspecialty_set(profile.subspecialties)
    audit = replace(
        facts(request, principal, "expert.register", "expert", sub),
        detail={"subspecialties": [s.value for s in subspecialties], "active": profile.active},
    )
    experts = Experts(request.app[STORE])
    row, _created = await experts.put(
        sub,
        profile.name,
        subspecialties,
        profile.active,
        datetime.now(UTC),
        audit,
        email=profile.email,
    )
    # Deactivated, or no longer credentialed for what they held: their links end.
    await request.app[LIVE].end_access(await experts.linked_consultations(sub))
    await queue_changed(request.app, experts=[sub])
    return web.json_response(expert_body(row))


# Expert: the queue and accepting


async def expert_queue(request: web.Request, principal: Principal) -> web.Response:
    """`GET /api/consultations` for a reading-room token: what this expert is offered."""
    _require_reading_room(principal)
    query = parse(ExpertQueueQuery, dict(request.query))
    expert = await _credentials(request, principal)
    states: set[State] = set(OPEN_STATES)
    if query.state is not None:
        try:
            states = {State(s.strip()) for s in query.state.split(",")}
        except ValueError:
            states = set()
        if not states or not states <= OPEN_STATES:
            allowed = ", ".join(s.value for s in State if s in OPEN_STATES)
            raise BadRequest(
                f"'state' must be a comma-separated list of: {allowed}",
                code="invalid_field",
                field="state",
            )
    rows = [
        r
        for r in await Experts(request.app[STORE]).open_for(principal.sub)
        if r.state in states and credentialed(expert.subspecialties, r.context.application)
    ]
    rows.sort(key=lambda r: (URGENCY_RANK[r.urgency], r.due_at, r.id))
    now = datetime.now(UTC)
    attached = await request.app[STORE].attachments([r.id for r in rows])
    return web.json_response(
        {
            "expert": expert_body(expert),
            "consultations": [summary(r, now, attached.get(r.id)) for r in rows],
        }
    )


async def accept_consultation(request: web.Request) -> web.Response:
    """The expert takes the request: it is assigned to them and they get its join link."""
    principal = authenticate(request)
    _require_reading_room(principal)
    consultation_id = consultation_id_of(request)
    expert = await _credentials(request, principal)
    row = await _consultation(request, consultation_id)
    if not credentialed(expert.subspecialties, row.context.application):
        raise Forbidden(
            f"the expert is not credentialed for {application_of(row.context.application)}",
            code="not_credentialed",
        )
    participant = ParticipantRow.invited(consultation_id, Role.EXPERT, expert.name, principal.sub)
    # Signed before anything is stored: an acceptance that cannot be signed changes nothing.
    body = join_body(request, participant)
    await Experts(request.app[STORE]).accept(
        consultation_id,
        participant,
        facts(request, principal, "consultation.accept", "consultation", consultation_id),
    )
    await queue_changed(request.app, [consultation_id])
    return web.json_response(body, status=201)


# Coordinator: assignment


async def assign_consultation(request: web.Request) -> web.Response:
    """Assign (or reassign, or with `null` unassign) a consultation to an expert."""
    principal = authenticate(request, Role.COORDINATOR)
    consultation_id = consultation_id_of(request)
    body = await read_json(request, AssignRequest)
    row = await _consultation(request, consultation_id)
    if body.expert is not None:
        await _check_assignable(request, body.expert, row)
    action = "consultation.assign" if body.expert else "consultation.unassign"
    await Experts(request.app[STORE]).assign(
        consultation_id,
        body.expert,
        datetime.now(UTC),
        facts(request, principal, action, "consultation", consultation_id),
    )
    await request.app[LIVE].end_access([consultation_id])
    await queue_changed(request.app, [consultation_id])
    assigned = await _consultation(request, consultation_id)
    return web.json_response(summary(assigned, datetime.now(UTC)))


async def _check_assignable(request: web.Request, sub: str, row: ConsultationRow) -> None:
    expert = await Experts(request.app[STORE]).get(sub)
    if expert is None:
        why = "no expert is registered under this 'expert'"
    elif not expert.active:
        why = "the expert's credentials are inactive"
    elif not credentialed(expert.subspecialties, row.context.application):
        why = f"the expert is not credentialed for {application_of(row.context.application)}"
    else:
        return
    raise Conflict(why, code="not_credentialed", field="expert")
