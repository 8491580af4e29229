"""The media a node carries, for sockets held by any node: an offer answered by this node's
relay, a media connection released, a capture made from this node's cine buffer.

Calls from the other nodes (`calls.py`) and this node's own sockets (`signaling.py`) come here
alike, so a consultation's media lives on one node whichever node each participant reached.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server.auth import Role
from server.consultations.model import require_open
from server.errors import Unavailable
from server.live import events
from server.live.calls import NodeCalls
from server.live.events import socket_of
from server.web.keys import LIVE, RELAY, STORE


def serve_media_calls(app: web.Application, calls: NodeCalls) -> None:
    """Answer the other nodes' calls about the media this node carries."""

    async def offer(args: dict[str, Any]) -> dict[str, Any]:
        return await offer_here(app, args)

    async def leave(args: dict[str, Any]) -> dict[str, Any]:
        await leave_media(app, str(args["consultation"]), str(args["sid"]))
        return {}

    async def capture(args: dict[str, Any]) -> dict[str, Any]:
        return await events.capture(app, socket_of(args), args.get("data"), forward=False)

    calls.handle("offer", offer)
    calls.handle("leave", leave)
    calls.handle("capture", capture)


async def offer_here(
    app: web.Application, args: dict[str, Any], *, claimed: bool = False
) -> dict[str, Any]:
    """Answer an offer with this node's relay; `claimed`: the caller has pinned the media here
    and checked the consultation is open (a call from another node checks again)."""
    cid = str(args["consultation"])
    if not claimed:
        require_open(await app[STORE].get_consultation(cid), "its media room is closed")
        if await app[LIVE].claim_media(cid) is not None:
            raise Unavailable(
                "this consultation's media has just moved to another node; try again",
                code="media_node_unavailable",
            )
    role = Role(str(args["role"]))
    answer = await app[RELAY].offer(cid, str(args["sid"]), str(args["sub"]), role, str(args["sdp"]))
    return {"sdp": answer.sdp, "type": answer.type}


async def leave_media(app: web.Application, consultation_id: str, sid: str) -> None:
    """Release a participant's media connection; the pin goes with the room's last one."""
    relay = app[RELAY]
    await relay.leave(consultation_id, sid)
    if consultation_id not in relay.rooms:
        await app[LIVE].release_media(consultation_id)
