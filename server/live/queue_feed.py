"""The queue pages' live feed: Socket.IO `/queue` tells a queue page that its list changed.

A coordinator's token, or an expert's own (reading-room) token, connects (`queue_namespace.py`);
the page joins one room for its audience (every coordinator; one room per expert) and gets
`queue_changed` (an empty object: no patient data, no ids) when a consultation it may list
changes. It then reads the list again over HTTP, where the usual visibility rules apply.
Emitting goes through the Socket.IO manager, so with Redis the pages on every node are told.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import socketio

from server.consultations.store import Store
from server.experts.model import credentialed
from server.experts.store import Experts

log = logging.getLogger(__name__)

QUEUE_NAMESPACE = "/queue"
QUEUE_CHANGED = "queue_changed"
COORDINATORS_ROOM = "queue:coordinators"


def expert_room(sub: str) -> str:
    return f"queue:expert:{sub}"


async def audience(store: Store, consultation_ids: Iterable[str]) -> set[str]:
    """The rooms whose queue lists (or listed) these consultations: the coordinators, and every
    active expert credentialed for one of their applications (an assignment to someone else
    takes it off the others' lists, so they are told too)."""
    rooms = {COORDINATORS_ROOM}
    applications = set()
    for consultation_id in consultation_ids:
        row = await store.get_consultation(consultation_id)
        if row is not None:
            applications.add(row.context.application)
    if not applications:  # (an expert's credentials changed: the caller adds their room)
        return rooms
    experts = [e for e in await Experts(store).all() if e.active]
    for application in applications:
        rooms.update(
            expert_room(e.sub) for e in experts if credentialed(e.subspecialties, application)
        )
    return rooms


async def announce(
    sio: socketio.AsyncServer,
    store: Store,
    consultation_ids: Iterable[str] = (),
    experts: Iterable[str] = (),
) -> None:
    """Tell the queue pages that may list these consultations (and these experts' pages).

    Called after the change is committed; a failure is logged, never raised: the change stands
    and the pages read the list again when they reconnect.
    """
    try:
        rooms = await audience(store, consultation_ids)
        rooms.update(expert_room(sub) for sub in experts)
        for room in sorted(rooms):
            await sio.emit(QUEUE_CHANGED, {}, room=room, namespace=QUEUE_NAMESPACE)
    except Exception:
        log.warning("could not tell the queue pages of a change", exc_info=True)
