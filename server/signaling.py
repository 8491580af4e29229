"""Socket.IO on `/live`: the live room's signaling adapter.

Partial (foundation): a client connects with `auth={"token": JWT}`, the token is
verified and the socket joins its consultation's room; refusals are audited.
The room events (presence, pointer, marks, guidance, capture, rtc_offer) are
added on top of this by the live-room work.
"""

from __future__ import annotations

from typing import Any

import socketio

from server.appkeys import KEYRING, TOKEN_POLICY
from server.auth import Principal, verify_token
from server.config import Settings
from server.errors import Forbidden, ProbelinkError, Unauthorized
from server.middleware import record_refusal

NAMESPACE = "/live"


def create_sio(settings: Settings) -> socketio.AsyncServer:
    """The Socket.IO server; with a Redis URL it fans out across nodes."""
    manager = socketio.AsyncRedisManager(settings.redis_url) if settings.redis_url else None
    return socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=manager,
        logger=False,
        engineio_logger=False,
        max_http_buffer_size=settings.max_body_bytes,
    )


def room_of(consultation_id: str) -> str:
    return f"consultation:{consultation_id}"


class LiveNamespace(socketio.AsyncNamespace):
    """Handlers for `/live`; `app` gives access to the store, keys and metrics."""

    def __init__(self, app: Any):
        super().__init__(NAMESPACE)
        # The aiohttp application, for its AppKeys.
        self.app = app

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        try:
            principal = self._authenticate(auth)
            if principal.consultation_id is None:
                raise Forbidden(
                    "a live room is joined with a consultation's token, not a coordinator's",
                    code="consultation_not_granted",
                )
        except (Unauthorized, Forbidden) as exc:
            await self._audit_refusal(environ, exc)
            raise socketio.exceptions.ConnectionRefusedError(exc.to_dict()["error"]) from None
        await self.save_session(sid, {"principal": principal})
        await self.enter_room(sid, room_of(principal.consultation_id))

    def _authenticate(self, auth: Any) -> Principal:
        if not isinstance(auth, dict) or not isinstance(auth.get("token"), str):
            raise Unauthorized("connect with auth={'token': '<JWT>'}", code="token_missing")
        return verify_token(auth["token"], self.app[KEYRING], self.app[TOKEN_POLICY])

    async def _audit_refusal(self, environ: dict[str, Any], exc: ProbelinkError) -> None:
        request = environ.get("aiohttp.request")
        await record_refusal(
            self.app,
            exc,
            principal=None,
            action="socketio connect /live",
            object_type="socketio",
            object_id="",
            source=getattr(request, "remote", None) or "unknown",
        )
