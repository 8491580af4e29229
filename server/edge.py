"""The HTTP edge shared by the REST handlers: who is asking, which consultation, audit facts."""

from __future__ import annotations

import re

from aiohttp import web

from server.appkeys import KEYRING, PRINCIPAL, SETTINGS, TOKEN_POLICY
from server.audit import AuditFacts
from server.auth import Principal, verify_token
from server.errors import NotFound, Unauthorized

ID_PATTERN = re.compile(r"[0-9a-f]{32}")


def authenticate(request: web.Request) -> Principal:
    """The verified principal of the request's bearer token (verified once per request)."""
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


async def read_body(request: web.Request) -> bytes:
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    return await request.read()


def consultation_id_of(request: web.Request) -> str:
    value = request.match_info["consultation_id"]
    if not ID_PATTERN.fullmatch(value):
        raise NotFound("no such consultation", code="consultation_not_found", field="id")
    return value


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
