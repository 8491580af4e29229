"""The HTTP edge shared by the REST handlers: who is asking, which consultation, audit facts."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Awaitable, Callable

from aiohttp import web

from server.audit import AuditFacts
from server.auth import Principal, Role, require_consultation, require_role, verify_token
from server.config import IPNetwork
from server.consultations.access import Standing
from server.consultations.model import ConsultationRow
from server.errors import NotFound, Unauthorized
from server.messages import M, parse_json
from server.web.keys import KEYRING, PRINCIPAL, SETTINGS, STANDING, STORE, TOKEN_POLICY

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ID_PATTERN = re.compile(r"[0-9a-f]{32}")


def client_address(remote: str, forwarded_for: list[str], proxies: tuple[IPNetwork, ...]) -> str:
    """Who is asking: the connection's address, or, behind trusted proxies, the nearest address
    in `X-Forwarded-For` that is not one of them (the ones before it could be made up)."""
    hops = [h.strip() for header in forwarded_for for h in header.split(",") if h.strip()]
    address = remote
    for hop in [remote, *reversed(hops)]:
        try:
            ip = ipaddress.ip_address(hop)
        except ValueError:
            return address  # not an address: stop at the last one that was
        address = hop
        if not any(ip in network for network in proxies):
            return hop
    return address


@web.middleware
async def client_address_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Behind `PROBELINK_TRUSTED_PROXIES`, `request.remote` is the client's address."""
    proxies = request.app[SETTINGS].trusted_proxy_networks
    if proxies and request.remote:
        forwarded = request.headers.getall("X-Forwarded-For", [])
        client = client_address(request.remote, forwarded, proxies)
        if client != request.remote:
            request = request.clone(remote=client)
    return await handler(request)


def authenticate(request: web.Request, *roles: Role) -> Principal:
    """The verified principal of the request's bearer token (verified once per request); with
    `roles`, 403 unless it holds one of them."""
    principal = _principal(request)
    if roles:
        require_role(principal, *roles)
    return principal


def _principal(request: web.Request) -> Principal:
    if PRINCIPAL in request:
        return request[PRINCIPAL]
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthorized(
            "an 'Authorization: Bearer <token>' header is required", code="token_missing"
        )
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "the Authorization header must be 'Bearer <token>'", code="token_malformed"
        )
    principal = verify_token(token.strip(), request.app[KEYRING], request.app[TOKEN_POLICY])
    request[PRINCIPAL] = principal
    return principal


async def standing_of(request: web.Request, principal: Principal) -> Standing | None:
    """The standing of the consultation a consultation token is for (read once per request:
    the access middleware and the handler share it); None when there is no such consultation."""
    assert principal.consultation_id is not None
    if STANDING not in request:
        store = request.app[STORE]
        request[STANDING] = await store.standing(principal.consultation_id, principal.sub)
    return request[STANDING]


async def read_body(request: web.Request) -> bytes:
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    return await request.read()


async def read_json(request: web.Request, model: type[M]) -> M:
    """The request's JSON body, validated into `model` (bounded by PROBELINK_MAX_BODY_BYTES)."""
    body = await read_body(request)
    return parse_json(model, body, max_bytes=request.app[SETTINGS].max_body_bytes)


def consultation_id_of(request: web.Request) -> str:
    value = request.match_info["consultation_id"]
    if not ID_PATTERN.fullmatch(value):
        raise NotFound("no such consultation", code="consultation_not_found", field="id")
    return value


async def consultation_of(request: web.Request, principal: Principal) -> ConsultationRow:
    """The path's consultation, which the principal's token must grant; 404 if there is none."""
    consultation_id = consultation_id_of(request)
    require_consultation(principal, consultation_id)
    row = await request.app[STORE].get_consultation(consultation_id)
    if row is None:
        raise NotFound("no such consultation", code="consultation_not_found", field="id")
    return row


def facts(
    request: web.Request, principal: Principal, action: str, obj: str, oid: str
) -> AuditFacts:
    return AuditFacts(
        actor=principal.sub,
        role=principal.role.value,
        action=action,
        object_type=obj,
        object_id=oid,
        outcome="ok",
        source=request.remote or "unknown",
        detail={},
    )
