"""Socket.IO on `/live`: joining and leaving the live room, the media offer, and the dispatch of
every other event (`events.py`).

A client connects with `auth={"token": JWT}`; the token's consultation is the
room and no event can name another. Every client event is answered through its
acknowledgement with the result or `{"error": {...}}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import socketio
from aiohttp import web

from server.audit import AuditFacts
from server.auth import Principal, Role, verify_token
from server.consultations.access import check_access
from server.consultations.model import flags, require_open
from server.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    ProbelinkError,
    RateLimited,
    Unauthorized,
)
from server.live import events
from server.live.admission import Admission, Seat
from server.live.calls import quietly
from server.live.events import LiveSocket, remote_socket
from server.live.hub import NAMESPACE, let_go, room_of
from server.live.media_calls import leave_media, offer_here
from server.live.presence import Attendee, participant_view
from server.live.queue_feed import announce
from server.live.room import (
    RtcOffer,
    refuse_unknown_event,
)
from server.media.ice import ice_servers_for
from server.messages import parse
from server.ratelimit import TokenBucket
from server.web.keys import (
    KEYRING,
    LIVE,
    METRICS,
    ROOM_LOG,
    SETTINGS,
    STORE,
    TOKEN_POLICY,
)
from server.web.outages import as_outage
from server.web.refusal_audit import record_refusal

log = logging.getLogger(__name__)

CONNECT_SETTLE_TRIES = 50
# How long a call to the node that carries the media may take (an offer's answer).
CALL_SECONDS = 10.0
Handler = Callable[["LiveSocket", Any], Awaitable[dict[str, Any]]]


def unexpected(exc: Exception, event: str) -> ProbelinkError:
    """An exception no handler expected: an outage (503, its code) or a logged internal error."""
    outage = as_outage(exc)
    if outage is not None:
        log.warning(
            "component unavailable", extra={"code": outage.code, "error": type(exc).__name__}
        )
        return outage
    reference = secrets.token_hex(6)
    log.exception("live event failed", extra={"reference": reference, "event": event})
    return ProbelinkError(f"internal error (reference {reference})")


def opened_elsewhere() -> Conflict:
    """Why a participant's older connection is closed: their link was opened again."""
    return Conflict(
        "this join link was opened in another window or on another device;"
        " the room is shown there now, and this one is no longer connected",
        code="opened_elsewhere",
    )


class LiveNamespace(socketio.AsyncNamespace):
    """Handlers for `/live`."""

    def __init__(self, app: web.Application):
        super().__init__(NAMESPACE)
        # The aiohttp application, for its AppKeys.
        self.app = app
        # Sockets connected to this node, by sid.
        self.sockets: dict[str, LiveSocket] = {}
        self.admission = Admission.of(app[SETTINGS])
        self.events: dict[str, Handler] = {
            "pointer": partial(events.pointer, app),
            "mark": partial(events.mark, app),
            "mark_clear": partial(events.mark_clear, app),
            "guidance": partial(events.guidance, app),
            "sync": partial(events.sync, app),
            "rtc_offer": self._rtc_offer,
            "capture": partial(events.capture, app),
        }

    # Dispatch

    async def trigger_event(self, event: str, *args: Any) -> Any:
        sid = args[0] if args else None
        if event in ("connect", "disconnect"):
            # A client may send an event with a reserved name; the real ones arrive
            # while the socket is not (yet, or any more) connected.
            if self.server.manager.is_connected(sid, self.namespace):
                return BadRequest(f"'{event}' is reserved", code="unknown_event").to_dict()
            return await super().trigger_event(event, *args)
        socket = self.sockets.get(sid) if isinstance(sid, str) else None
        if socket is None:
            return Unauthorized("not connected", code="not_connected").to_dict()
        try:
            if event != "pointer" and not socket.event_bucket.allow(time.monotonic()):
                raise RateLimited("too many events; slow down", code="rate_limited")
            handler = self.events.get(event)
            if handler is None:
                raise refuse_unknown_event(event)
            if len(args) != 2:
                raise BadRequest(f"'{event}' takes one object", code="invalid_event")
            return await handler(socket, args[1])
        except ProbelinkError as exc:
            return exc.to_dict()
        except Exception as exc:
            return unexpected(exc, event).to_dict()

    # Connection

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        try:
            await self._connect(sid, environ, auth)
        except socketio.exceptions.ConnectionRefusedError:
            raise
        except Exception as exc:
            # Every connection gets room_state or an error it can show.
            error = exc if isinstance(exc, ProbelinkError) else unexpected(exc, "connect")
            if sid in self.sockets:
                # Half-joined: leave presence and the relay; the client is told the first failure.
                with contextlib.suppress(Exception):
                    await self.on_disconnect(sid)
            body = error.to_dict()["error"]
            raise socketio.exceptions.ConnectionRefusedError(body["message"], body) from None

    async def _connect(self, sid: str, environ: dict[str, Any], auth: Any) -> None:
        request = environ.get("aiohttp.request")
        source = getattr(request, "remote", None) or "unknown"
        refusal = self.admission.check(source, time.monotonic())
        if refusal is not None:
            self.app[METRICS].live_refusals.labels(refusal.code).inc()
            raise refusal
        known: Principal | None = None  # who was refused, once the token is verified
        try:
            principal = known = self._authenticate(auth)
            if principal.is_reading_room:
                raise Forbidden(
                    "an expert's reading-room token joins no live room: accept the consultation"
                    " and join with the token it gives",
                    code="consultation_not_granted",
                )
            if principal.consultation_id is None:
                raise Forbidden(
                    "a live room is joined with a consultation's token, not a coordinator's",
                    code="consultation_not_granted",
                )
            standing = await self.app[STORE].standing(principal.consultation_id, principal.sub)
            if standing is None:
                raise Forbidden(
                    "the token's consultation does not exist", code="consultation_not_found"
                )
            check_access(principal.role, standing)
        except (Unauthorized, Forbidden) as exc:
            await record_refusal(
                self.app,
                exc,
                principal=known,
                action="socketio connect /live",
                object_type="socketio",
                object_id="",
                source=source,
            )
            # Message first, then the error object: python-socketio sends a single argument as
            # {"message": str(arg)}, and two as {"message": first, "data": second}.
            error = exc.to_dict()["error"]
            raise socketio.exceptions.ConnectionRefusedError(error["message"], error) from None
        settings = self.app[SETTINGS]
        now = time.monotonic()
        cid = principal.consultation_id
        socket = LiveSocket(
            sid=sid,
            principal=principal,
            consultation_id=cid,
            pointer_bucket=TokenBucket.full(settings.pointer_hz, settings.pointer_hz, now),
            event_bucket=TokenBucket.full(settings.events_per_second, settings.event_burst, now),
            source=source,
        )
        self.sockets[sid] = socket
        for old in self.admission.seat(sid, Seat(source, cid, principal.sub)):
            await self.end(old, opened_elsewhere())
        live = self.app[LIVE]
        attendee = Attendee(sid, principal.sub, principal.role.value, principal.name, live.node)
        await live.presence.join(cid, attendee)
        # The same link open on another node (a laptop, then a tablet behind the balancer): the
        # new connection replaces that one too, through the Socket.IO manager.
        for other in await live.presence.members(cid):
            if other.sub == principal.sub and other.node != live.node:
                await self.end(other.sid, opened_elsewhere())
        store = self.app[STORE]
        first_expert = await self.app[ROOM_LOG].participant_joined(
            cid, principal.sub, is_expert=principal.role is Role.EXPERT
        )
        if first_expert:
            # The first expert to join makes the request live: the queue pages read it again
            # (not on every expert's reconnect: nothing they list changed).
            live.spawn(announce(self.server, store, [cid]))
        # Joining shows the record's summary and marks: a read, so it is audited like one.
        await store.record_audit(
            AuditFacts(
                principal.sub,
                principal.role.value,
                "room.join",
                "consultation",
                cid,
                "ok",
                source,
                {},
            )
        )
        if not self._transport_alive(sid):
            # The client closed while we were connecting it; python-socketio will not call
            # on_disconnect for a socket that never finished connecting.
            await self.on_disconnect(sid)
            raise socketio.exceptions.ConnectionRefusedError("closed while connecting")
        live.spawn(self._welcome(socket, attendee))
        log.info("joined", extra=_who(socket))

    def _transport_alive(self, sid: str) -> bool:
        eio_sid = self.server.manager.eio_sid_from_sid(sid, self.namespace)
        return eio_sid is not None and eio_sid in self.server.eio.sockets

    async def _welcome(self, socket: LiveSocket, attendee: Attendee) -> None:
        """Once the connection is confirmed: join the room, send room_state, announce the arrival.

        The room is entered before the state is read, so nothing is missed; an event that
        arrives just before room_state and has `seq <= last_seq` is already in it.
        """
        for _ in range(CONNECT_SETTLE_TRIES):
            if self.server.manager.is_connected(socket.sid, self.namespace):
                break
            await asyncio.sleep(0.01)
        if socket.sid not in self.sockets:
            return  # gone already
        # Access may have ended since on_connect checked it, before this socket was listed in
        # presence where `end_access` looks for it: checked again now that it is.
        principal = socket.principal
        refusal = await self.app[LIVE].ended_for(
            socket.consultation_id, principal.sub, principal.role
        )
        if refusal is not None:
            await let_go(self.server, socket.sid, refusal)
            return
        await self.enter_room(socket.sid, room_of(socket.consultation_id))
        try:
            state = await self._room_state(socket)
        except Exception as exc:
            # Every connection gets room_state or an error it can show.
            error = exc if isinstance(exc, ProbelinkError) else unexpected(exc, "room_state")
            await self.emit("room_error", error.to_dict(), to=socket.sid)
            await self.disconnect(socket.sid)
            return
        await self.emit("room_state", state, to=socket.sid)
        await self._announce("join", socket.consultation_id, attendee)

    async def _room_state(self, socket: LiveSocket) -> dict[str, Any]:
        cid = socket.consultation_id
        store = self.app[STORE]
        row = await store.get_consultation(cid)
        if row is None:
            raise NotFound("no such consultation", code="consultation_not_found")
        snapshot = await self.app[ROOM_LOG].snapshot(cid)
        members = await self.app[LIVE].presence.members(cid)
        return {
            "consultation": {
                "id": row.id,
                # What the scanner's worklist shows, and its images are sent with.
                "accession_number": row.accession_number,
                "state": row.state.value,
                "urgency": row.urgency.value,
                "application": row.context.application,
                "clinical_question": row.context.clinical_question,
                # Sent incomplete: why (the expert sees it before the first picture).
                "incomplete_reason": row.context.incomplete_reason,
                "flags": [{"code": f.code, "message": f.message} for f in flags(row.context)],
            },
            "you": {
                "id": socket.principal.sub,
                "role": socket.principal.role.value,
                "name": socket.principal.name,
            },
            "participants": participant_view(members),
            # STUN/TURN servers for this participant's peer connection (ephemeral credentials).
            "ice": ice_servers_for(self.app[SETTINGS], socket.principal.sub, datetime.now(UTC)),
            # Below this the expert's page says the picture is not of diagnostic quality.
            "quality": {
                "fps": self.app[SETTINGS].quality_floor_fps,
                "seconds": self.app[SETTINGS].quality_floor_seconds,
            },
            "marks": snapshot.marks,
            "guidance": snapshot.guidance,
            "last_seq": snapshot.last_seq,
        }

    async def _announce(self, change: str, consultation_id: str, attendee: Attendee) -> None:
        members = await self.app[LIVE].presence.members(consultation_id)
        await self.emit(
            "presence",
            {
                "event": change,
                "participant": {"id": attendee.sub, "role": attendee.role, "name": attendee.name},
                "participants": participant_view(members),
            },
            room=room_of(consultation_id),
        )

    async def end(self, sid: str, why: ProbelinkError) -> None:
        """Close a socket from the server, telling its page why (event `ended`)."""
        await self.emit("ended", why.to_dict(), to=sid)
        await self.disconnect(sid)

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        self.admission.leave(sid)
        socket = self.sockets.pop(sid, None)
        if socket is None:
            return
        log.info("left", extra=_who(socket))
        await self.leave_room(sid, room_of(socket.consultation_id))
        live = self.app[LIVE]
        if socket.media_node is not None and live.calls is not None:
            # Its media connection is on another node: that node releases it.
            leave = live.calls.call(
                socket.media_node, "leave", remote_socket(socket), within=CALL_SECONDS
            )
            live.spawn(quietly(leave))
        else:
            await leave_media(self.app, socket.consultation_id, sid)
        gone = await live.presence.leave(socket.consultation_id, sid)
        if gone is not None:
            await self._announce("leave", socket.consultation_id, gone)

    async def reap(self) -> None:
        """Announce the departure of participants whose node has died (Redis presence)."""
        live = self.app[LIVE]
        for cid in {s.consultation_id for s in self.sockets.values()}:
            for gone in await live.presence.reap(cid):
                await self._announce("leave", cid, gone)

    def _authenticate(self, auth: Any) -> Principal:
        if not isinstance(auth, dict) or not isinstance(auth.get("token"), str):
            raise Unauthorized("connect with auth={'token': '<JWT>'}", code="token_missing")
        return verify_token(auth["token"], self.app[KEYRING], self.app[TOKEN_POLICY])

    async def _rtc_offer(self, socket: LiveSocket, data: Any) -> dict[str, Any]:
        offer = parse(RtcOffer, data)
        row = await self.app[STORE].get_consultation(socket.consultation_id)
        row = require_open(row, "its media room is closed")
        live = self.app[LIVE]
        elsewhere = await live.claim_media(socket.consultation_id)
        if elsewhere is not None and live.calls is not None:
            # Another node carries this consultation's media: it answers, its candidates in it.
            args = {**remote_socket(socket), "sdp": offer.sdp}
            answer = await live.calls.call(elsewhere, "offer", args, within=CALL_SECONDS)
            socket.media_node = elsewhere
            if socket.sid not in self.sockets:
                live.spawn(quietly(live.calls.call(elsewhere, "leave", args, within=CALL_SECONDS)))
        else:
            here = {**remote_socket(socket), "sdp": offer.sdp}
            answer = await offer_here(self.app, here, claimed=True)
            socket.media_node = None
            if socket.sid not in self.sockets:
                # The socket went away while the offer was being answered: release what it made.
                await leave_media(self.app, socket.consultation_id, socket.sid)
        if socket.sid in self.sockets and socket.principal.role is Role.OPERATOR:
            # A new publication, perhaps from another source: the experts' pages learn its size
            # again rather than take a smaller native picture for a degraded one.
            await self.emit(
                "publishing",
                {"id": socket.principal.sub},
                room=room_of(socket.consultation_id),
                skip_sid=socket.sid,
            )
        return answer


def _who(socket: LiveSocket) -> dict[str, str]:
    """A log line's facts about a participant: opaque ids and the role, never the name."""
    return {
        "consultation": socket.consultation_id,
        "participant": socket.principal.sub,
        "role": socket.principal.role.value,
    }
