"""Socket.IO `/queue`: a queue page's connection (the handler of `queue_feed.py`'s feed).

Admission by token, one room per audience, nothing accepted from the client.
"""

from __future__ import annotations

import time
from typing import Any

import socketio
from aiohttp import web

from server.auth import Principal, Role, verify_token
from server.errors import BadRequest, Forbidden, ProbelinkError, Unauthorized
from server.experts.store import Experts
from server.live.admission import Admission, Seat
from server.live.queue_feed import COORDINATORS_ROOM, QUEUE_NAMESPACE, expert_room
from server.web.keys import KEYRING, SETTINGS, STORE, TOKEN_POLICY


class QueueNamespace(socketio.AsyncNamespace):
    """`/queue`: admission by token, one room per audience, nothing accepted from the client."""

    def __init__(self, app: web.Application):
        super().__init__(QUEUE_NAMESPACE)
        self.app = app
        self.admission = Admission.of(app[SETTINGS])

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
            await Experts(self.app[STORE]).active(principal.sub)
            return expert_room(principal.sub)
        raise Forbidden(
            "the queue is opened with a coordinator's or an expert's own link, not a join link",
            code="role_not_allowed",
        )
