"""HTTP edge: every error becomes `{"error": {code, message, field}}`, every refusal is audited.

No stack trace or exception text ever reaches a client: an unexpected failure
is logged with a reference id and answered with a 500 that carries only that id.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from server.consultations.access import check_access
from server.errors import Forbidden, ProbelinkError, Unauthorized
from server.web.edge import authenticate, standing_of
from server.web.keys import METRICS, PRINCIPAL
from server.web.outages import as_outage, retry_after
from server.web.refusal_audit import record_refusal

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Responses under these paths may hold patient data or tokens.
NO_STORE_PATHS = ("/api/", "/socket.io/")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_response(status: int, code: str, message: str, field: str | None = None) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message, "field": field}}, status=status
    )


def error_body(exc: ProbelinkError) -> web.Response:
    """A refusal's response; an outage also says when to try again."""
    response = web.json_response(exc.to_dict(), status=exc.status)
    if exc.status == 503:
        response.headers["Retry-After"] = str(retry_after(exc))
    return response


async def api_headers(request: web.Request, response: web.StreamResponse) -> None:
    """API and Socket.IO responses carry records and tokens: never cached, never sniffed."""
    if request.path.startswith(NO_STORE_PATHS):
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"


def route_name(request: web.Request) -> str:
    """The route's pattern (never the concrete path, which holds ids)."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except ProbelinkError as exc:
        status = exc.status
        if isinstance(exc, Unauthorized | Forbidden):
            await _audit_refusal(request, exc)
        return error_body(exc)
    except web.HTTPException as exc:
        status = exc.status
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        return error_response(exc.status, code, exc.reason)
    except Exception as exc:
        outage = as_outage(exc)
        if outage is not None:
            status = outage.status
            log.warning(
                "component unavailable",
                extra={
                    "code": outage.code,
                    "error": type(exc).__name__,
                    "route": route_name(request),
                },
            )
            return error_body(outage)
        reference = secrets.token_hex(6)
        log.exception(
            "unhandled error", extra={"reference": reference, "route": route_name(request)}
        )
        return error_response(500, "internal_error", f"internal error (reference {reference})")
    except asyncio.CancelledError:
        # Handlers are cancelled only when the server stops and its grace period is over.
        log.warning("request cut short by shutdown", extra={"route": route_name(request)})
        raise
    finally:
        metrics = request.app[METRICS]
        route = route_name(request)
        metrics.http_requests.labels(request.method, route, str(status)).inc()
        metrics.http_latency.labels(route).observe(time.perf_counter() - started)


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A token whose access has ended (`consultations.access`) opens no /api route."""
    if request.path.startswith("/api/") and "Authorization" in request.headers:
        principal = authenticate(request)
        if principal.consultation_id is not None:
            standing = await standing_of(request, principal)
            if standing is not None:  # no such consultation: the route says so
                check_access(principal.role, standing)
    return await handler(request)


async def _audit_refusal(request: web.Request, exc: Unauthorized | Forbidden) -> None:
    await record_refusal(
        request.app,
        exc,
        principal=request.get(PRINCIPAL),
        action=f"{request.method} {route_name(request)}",
        object_type="http",
        object_id=request.match_info.get("consultation_id", ""),
        source=request.remote or "unknown",
    )
