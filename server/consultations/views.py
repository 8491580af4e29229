"""How a consultation and its participants are written in HTTP answers.

The queue's summary of a consultation, a participant, and a join link (its token is signed
here). The consultation handlers (`http.py`, `record.py`) and the expert handlers
(`server/experts/http.py`) both answer with them, so they sit below both.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from server.auth import issue_token
from server.consultations.lifecycle import OPEN_STATES
from server.consultations.model import ConsultationRow, checklist, flags
from server.consultations.store import ParticipantRow
from server.store.times import iso
from server.web.keys import KEYRING, SETTINGS, TOKEN_POLICY
from server.web.qr import qr_svg


def summary(
    row: ConsultationRow, now: datetime, attached: dict[str, int] | None = None
) -> dict[str, Any]:
    """What the queue shows of a consultation; `attached`: its archived images by kind."""
    check = checklist(row.context)
    counts = attached or {}
    return {
        "attached": {
            "stills": counts.get("still", 0),
            "clips": counts.get("clip", 0),
            "scanner_images": counts.get("scanner_still", 0) + counts.get("scanner_clip", 0),
            "priors": counts.get("prior", 0),
        },
        "device": row.context.device.model_dump(exclude_none=True) if row.context.device else None,
        "id": row.id,
        "kind": row.context.kind.value,
        "accession_number": row.accession_number,
        "patient_ref": row.context.patient_ref,
        "state": row.state.value,
        "urgency": row.urgency.value,
        "application": row.context.application,
        "clinical_question": row.context.clinical_question,
        "requested_at": iso(row.requested_at),
        "due_at": iso(row.due_at),
        "time_left_seconds": int((row.due_at - now).total_seconds()),
        "overdue": row.state in OPEN_STATES and now > row.due_at,
        "checklist": {"complete": check.complete, "missing_count": len(check.missing)},
        "assigned_expert": row.assigned_expert,
        "incomplete_reason": row.context.incomplete_reason,
        "flags": [{"code": f.code, "message": f.message} for f in flags(row.context)],
        "cancellation": None
        if row.cancelled_at is None
        else {"reason": row.cancel_reason, "note": row.cancel_note, "at": iso(row.cancelled_at)},
    }


def participant_body(p: ParticipantRow) -> dict[str, Any]:
    return {
        "id": p.id,
        "role": p.role.value,
        "name": p.name,
        "invited_at": iso(p.invited_at),
        "joined_at": iso(p.joined_at) if p.joined_at else None,
        "left_at": iso(p.left_at) if p.left_at else None,
    }


def join_body(request: web.Request, participant: ParticipantRow) -> dict[str, Any]:
    """A participant's join token and link (an invite's answer); sign it before storing them."""
    settings = request.app[SETTINGS]
    token = issue_token(
        request.app[KEYRING],
        request.app[TOKEN_POLICY],
        sub=participant.id,
        role=participant.role,
        ttl_seconds=settings.invite_ttl_seconds,
        consultation_id=participant.consultation_id,
        name=participant.name,
    )
    expires = participant.invited_at + timedelta(seconds=settings.invite_ttl_seconds)
    # The token travels in the fragment, which browsers never send to servers or logs.
    url = f"{settings.base_url}/join#token={token}"
    return {
        "participant": participant_body(participant),
        "token": token,
        "url": url,
        # The same link as a QR code (SVG), for a phone or tablet at the bedside to scan.
        "qr_svg": qr_svg(url),
        "expires_at": iso(expires),
    }
