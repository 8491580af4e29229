"""The queue pages' live feed: Socket.IO `/queue` tells a queue page that its list changed.

A coordinator's token, or an expert's own (reading-room) token, connects; the page joins one room
for its audience (every coordinator; one room per expert) and gets `queue_changed` (an empty
object: no patient data, no ids) when a consultation it may list changes. It then reads the list
again over HTTP, where the usual visibility rules apply. Emitting goes through the Socket.IO
manager, so with Redis the pages on every node are told.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import socketio
from aiohttp import web

from server.auth import Principal, Role, verify_token
from server.consultations.store import Store
from server.errors import BadRequest, Forbidden, ProbelinkError, Unauthorized
from server.experts.model import credentialed
from server.experts.store import Experts
from server.live.admission import Admission, Seat
from server.web.keys import KEYRING, SETTINGS, SIO, STORE, TOKEN_POLICY

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


async def queue_changed(
    app: web.Application, consultation_ids: Iterable[str] = (), experts: Iterable[str] = ()
) -> None:
    """`announce` with the application's Socket.IO server and store (for the HTTP handlers)."""
    await announce(app[SIO], app[STORE], consultation_ids, experts)


class QueueNamespace(socketio.AsyncNamespace):
    """`/queue`: admission by token, one room per audience, nothing accepted from the client."""

    def __init__(self, app: web.Application):
        super().__init__(QUEUE_NAMESPACE)
        self.app = app
        settings = app[SETTINGS]
        self.admission = Admission(
            per_address=settings.live_sockets_per_address,
            total=settings.live_sockets_max,
            connects_per_second=settings.live_connects_per_second,
            connect_burst=settings.live_connect_burst,
        )

    async def trigger_event(self, event: str, *args: Any) -> Any:
        if event in ("connect", "disconnect") and not self.server.manager.is_connected(
            args[0] if args else None, self.namespace
        ):
            return await super().trigger_event(event, *args)
        return BadRequest("the queue feed takes no events", code="unknown_event").to_dict()

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        request = environ.get("aiohttp.request")
        source = getattr(request, "remote", None) or "unknown"
        try:
            refusal = self.admission.check(source, time.monotonic())
            if refusal is not None:
                raise refusal
            principal = self._authenticate(auth)
            room = await self._room(principal)
        except ProbelinkError as exc:
            error = exc.to_dict()["error"]
            raise socketio.exceptions.ConnectionRefusedError(error["message"], error) from None
        self.admission.seat(sid, Seat(source, "", principal.sub))
        await self.enter_room(sid, room)

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        self.admission.leave(sid)

    def _authenticate(self, auth: Any) -> Principal:
        if not isinstance(auth, dict) or not isinstance(auth.get("token"), str):
            raise Unauthorized("connect with auth={'token': '<JWT>'}", code="token_missing")
        return verify_token(auth["token"], self.app[KEYRING], self.app[TOKEN_POLICY])

    async def _room(self, principal: Principal) -> str:
        if principal.role is Role.COORDINATOR:
            return COORDINATORS_ROOM
        if principal.is_reading_room:
            expert = await Experts(self.app[STORE]).get(principal.sub)
            if expert is None or not expert.active:
                raise Forbidden(
                    "no active credentials are registered for this expert", code="not_credentialed"
                )
            return expert_room(principal.sub)
        raise Forbidden(
            "the queue is opened with a coordinator's or an expert's own link, not a join link",
            code="role_not_allowed",
        )
