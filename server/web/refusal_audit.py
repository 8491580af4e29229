"""Refused requests, from the HTTP edge or the live room, counted and audited.

The adapter around `refusals.py`'s bursts: the first refusal of a burst is audited at once, the
repeats as one entry when the burst ends (`flush_refusals`). The HTTP middleware and the live
room's connect both record here, so the live room does not import the HTTP layer.
"""

from __future__ import annotations

import logging
import re
import time

from aiohttp import web

from server.audit import AuditFacts
from server.auth import Principal
from server.errors import ProbelinkError
from server.web.keys import METRICS, REFUSALS, STORE

log = logging.getLogger(__name__)

# A refused request's object id comes from its path: the audit log keeps a short, safe form.
AUDIT_OBJECT_ID_MAX_CHARS = 64
UNSAFE_ID_CHARS_PATTERN = re.compile(r"[^0-9a-zA-Z_-]")


async def record_refusal(
    app: web.Application,
    exc: ProbelinkError,
    *,
    principal: Principal | None,
    action: str,
    object_type: str,
    object_id: str,
    source: str,
) -> None:
    """Count and audit a refused request (HTTP or Socket.IO); the refusal stands regardless.

    Refusals are audited in bursts (`server.web.refusals`): the first at once, the repeats as one
    entry when the burst ends (`flush_refusals`).
    """
    app[METRICS].auth_refusals.labels(exc.code).inc()
    facts = AuditFacts(
        actor=principal.sub if principal else "anonymous",
        role=principal.role.value if principal else "none",
        action=action,
        object_type=object_type,
        object_id=audit_object_id(object_id),
        outcome=f"refused:{exc.code}",
        source=source,
        detail={"status": exc.status},
    )
    first = app[REFUSALS].refuse(facts, time.monotonic())
    if first is not None:
        await _audit(app, [first])


async def flush_refusals(app: web.Application, *, drain: bool = False) -> None:
    """Audit the bursts of refusals that have ended (all of them when draining)."""
    bursts = app[REFUSALS]
    await _audit(app, bursts.drain() if drain else bursts.ended(time.monotonic()))


async def _audit(app: web.Application, entries: list[AuditFacts]) -> None:
    for facts in entries:
        try:
            await app[STORE].record_audit(facts)
        except Exception as exc:
            log.warning("could not audit a refusal", extra={"error": type(exc).__name__})


def audit_object_id(raw: str) -> str:
    """An untrusted id as the audit log keeps it: capped, with only [0-9a-zA-Z_-] left."""
    return UNSAFE_ID_CHARS_PATTERN.sub("_", raw[:AUDIT_OBJECT_ID_MAX_CHARS])
