"""The live room's events, once a socket is in the room: the pointer, marks, guidance, captures and
catching up (`sync`). Parse → rule → store → emit.

Persistent events (mark, mark_clear, guidance) are sequenced and stored before they are
acknowledged and reach the room through the room bus in sequence order; the pointer is relayed at
once and coalesced per sender while a relay is in flight. The connection itself (join, leave, the
media offer) is `signaling.py`'s.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from server.auth import Principal, Role
from server.consultations.model import require_open
from server.errors import Conflict, RateLimited
from server.imaging.captures import room_commit
from server.live.hub import NAMESPACE, room_of
from server.live.room import (
    SYNC_EVENTS_MAX,
    CaptureKind,
    CaptureRequest,
    Guidance,
    Mark,
    MarkClear,
    Pointer,
    Sync,
    guidance_body,
    mark_body,
    marks_to_clear,
    may_capture,
    may_clear_any,
    may_guide,
    may_mark,
    may_point,
)
from server.messages import parse
from server.ratelimit import TokenBucket
from server.web.keys import KEY_IMAGES, LIVE, RELAY, ROOM_LOG, SETTINGS, SIO, STORE

# A clip is decoded, masked and archived before the answer: allow for the longest.
CAPTURE_CALL_SECONDS = 60.0


@dataclass
class LiveSocket:
    """One connected socket: who it is, its room, its rate limits and pointer relay state."""

    sid: str
    principal: Principal
    consultation_id: str
    pointer_bucket: TokenBucket
    event_bucket: TokenBucket
    # The newest pointer not yet relayed, while a relay is in flight.
    pending_pointer: dict[str, Any] | None = None
    pointer_relaying: bool = False
    # The client's address, for the audit log.
    source: str = "unknown"
    # The other node that carries this socket's media connection, if one does.
    media_node: str | None = None


def remote_socket(socket: LiveSocket) -> dict[str, Any]:
    """Who asks, for a call to the node that carries the media (which trusts the asking node's
    check of the token: nodes share the signing keys and Redis)."""
    principal = socket.principal
    return {
        "consultation": socket.consultation_id,
        "sid": socket.sid,
        "sub": principal.sub,
        "role": principal.role.value,
        "name": principal.name,
        "source": socket.source,
    }


def socket_of(args: dict[str, Any]) -> LiveSocket:
    """The stand-in, on the node that carries the media, for a socket held by another node."""
    cid = str(args["consultation"])
    principal = Principal(str(args["sub"]), Role(str(args["role"])), cid, args.get("name"))
    unlimited = TokenBucket.full(1e9, 1e9, 0.0)  # the asking node has limited the socket
    return LiveSocket(
        str(args["sid"]), principal, cid, unlimited, unlimited, source=str(args["source"])
    )


async def pointer(app: web.Application, socket: LiveSocket, data: Any) -> dict[str, Any]:
    may_point(socket.principal.role)
    if not socket.pointer_bucket.allow(time.monotonic()):
        raise RateLimited("pointer faster than allowed; dropped", code="rate_limited")
    pointer = parse(Pointer, data)
    socket.pending_pointer = {
        "from": socket.principal.sub,
        **pointer.model_dump(exclude_none=True),
    }
    if socket.pointer_relaying:
        return {"ok": True, "coalesced": True}
    socket.pointer_relaying = True
    try:
        while socket.pending_pointer is not None:
            message, socket.pending_pointer = socket.pending_pointer, None
            await app[SIO].emit(
                "pointer",
                message,
                room=room_of(socket.consultation_id),
                skip_sid=socket.sid,
                namespace=NAMESPACE,
            )
    finally:
        socket.pointer_relaying = False
    return {"ok": True}


async def mark(app: web.Application, socket: LiveSocket, data: Any) -> dict[str, Any]:
    mark = parse(Mark, data)
    may_mark(socket.principal.role, mark)
    body = mark_body(
        mark,
        mark_id=uuid.uuid4().hex,
        author=socket.principal.sub,
        author_role=socket.principal.role,
    )
    cid = socket.consultation_id
    live = app[LIVE]
    async with live.bus.sequenced(cid):
        event = await app[ROOM_LOG].add_mark(
            cid, body, kind=mark.kind.value, media_ts=mark.media_ts
        )
        await live.publish(cid, event)
    return {"id": body["id"], "seq": event.seq}


async def mark_clear(app: web.Application, socket: LiveSocket, data: Any) -> dict[str, Any]:
    request = parse(MarkClear, data)
    role, sub = socket.principal.role, socket.principal.sub
    may_clear_any(role)
    cid = socket.consultation_id
    live = app[LIVE]
    room_log = app[ROOM_LOG]
    async with live.bus.sequenced(cid):
        ids = marks_to_clear(role, sub, await room_log.open_marks(cid), request.id)
        if not ids:
            return {"ids": [], "seq": None}
        event = await room_log.clear_marks(cid, ids, sub)
        await live.publish(cid, event)
    return {"ids": event.body["ids"], "seq": event.seq}


async def guidance(app: web.Application, socket: LiveSocket, data: Any) -> dict[str, Any]:
    guidance = parse(Guidance, data)
    may_guide(socket.principal.role)
    body = guidance_body(guidance, author=socket.principal.sub, author_role=socket.principal.role)
    cid = socket.consultation_id
    live = app[LIVE]
    async with live.bus.sequenced(cid):
        event = await app[ROOM_LOG].add_guidance(cid, body)
        await live.publish(cid, event)
    return {"seq": event.seq}


async def capture(
    app: web.Application, socket: LiveSocket, data: Any, *, forward: bool = True
) -> dict[str, Any]:
    """A still or clip of the operator's video, acknowledged once durable and recorded; made
    by the node that carries the media (asked by this one when it is another, `forward`)."""
    request = parse(CaptureRequest, data)
    may_capture(socket.principal.role)
    cid = socket.consultation_id
    store = app[STORE]
    row = await store.get_consultation(cid)
    row = require_open(row, "nothing can be captured")
    key_images = app[KEY_IMAGES]
    key_images.masks.check_device(row, socket.principal.role)
    room = app[RELAY].rooms.get(cid)
    live = app[LIVE]
    if room is None and forward and live.calls is not None:
        node = await live.media_node(cid)
        if node is not None:  # the video is on the node that carries the media: capture there
            args = {**remote_socket(socket), "data": data}
            return await live.calls.call(node, "capture", args, within=CAPTURE_CALL_SECONDS)
    cine = room.cine if room is not None else None
    if cine is None:
        raise Conflict("there is no video from the operator here to capture", code="no_video")
    settings = app[SETTINGS]
    keep_from: float | None = None
    detail: dict[str, Any] = {}
    if request.kind is CaptureKind.STILL:
        frames = cine.still_frames()
    elif request.record == "start":
        cine.start_recording()
        return {"recording": True}
    elif request.record == "stop":
        frames, keep_from, overflowed = cine.stop_recording()
        detail["truncated"] = overflowed
    else:
        seconds = min(request.seconds or settings.clip_seconds_default, settings.clip_seconds_max)
        frames, keep_from = cine.last_frames(seconds)
    capture = await key_images.capture(row, request.kind, socket.principal, socket.source)
    event = await key_images.from_stream(
        capture,
        cine.codec,
        frames,
        keep_from,
        room_commit(app[LIVE], key_images, cid),
        detail,
    )
    return {"key_image_id": event.body["id"], "seq": event.seq, **detail}


async def sync(app: web.Application, socket: LiveSocket, data: Any) -> dict[str, Any]:
    request = parse(Sync, data)
    events = await app[ROOM_LOG].events_after(
        socket.consultation_id, request.after_seq, SYNC_EVENTS_MAX + 1
    )
    more = len(events) > SYNC_EVENTS_MAX
    events = events[:SYNC_EVENTS_MAX]
    last = events[-1].seq if events else request.after_seq
    return {
        "events": [{"type": e.type, "seq": e.seq, "data": e.body} for e in events],
        "last_seq": last,
        "more": more,
    }
