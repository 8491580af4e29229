"""`GET /api/session`: whether a page's token opens it, before the page shows any of its tools.

The token is verified as for every route (401 with its code: expired, malformed, ...); a
consultation's token whose access has ended is refused by the access middleware (403 with the
reason: cancelled, signed, reassigned, ...); a consultation that is not there is 404; an expert's
own token needs active credentials. The answer says who the token is for: nothing else.
"""

from __future__ import annotations

from aiohttp import web

from server.errors import NotFound
from server.experts.store import Experts
from server.web.edge import authenticate, standing_of
from server.web.keys import STORE


def routes(table: web.RouteTableDef) -> None:
    table.get("/api/session")(get_session)


async def get_session(request: web.Request) -> web.Response:
    principal = authenticate(request)
    store = request.app[STORE]
    if principal.consultation_id is not None:
        if await standing_of(request, principal) is None:
            raise NotFound("the link's consultation does not exist", code="consultation_not_found")
    elif principal.is_reading_room:
        await Experts(store).active(principal.sub)
    return web.json_response(
        {
            "role": principal.role.value,
            "consultation_id": principal.consultation_id,
            "reading_room": principal.is_reading_room,
            "name": principal.name,
        }
    )
