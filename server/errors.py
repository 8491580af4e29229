"""The one error hierarchy of probelink.

    ProbelinkError            code, message, field; never carries patient data
    ├── BadRequest            400  the input is malformed or breaks a rule
    │   ├── PayloadTooLarge   413  the body is bigger than allowed
    │   └── UnsupportedMediaType 415  a body of a type the endpoint does not take
    ├── Unauthorized          401  no token, or a token that is not valid
    ├── Forbidden             403  a valid token without the grant for this
    ├── NotFound              404  no such object (or not visible to the caller)
    ├── Conflict              409  the object's state forbids it
    ├── RateLimited           429  too many events
    ├── Unavailable           503  a component it needs is down; nothing was changed
    └── ConfigError                a setting is wrong; stops start-up

Each is mapped once to an HTTP response (`server.web.middleware`) and once to a
Socket.IO error acknowledgement (`server.live.signaling`).
"""

from __future__ import annotations

from typing import Any, ClassVar


class ProbelinkError(Exception):
    """Base of every error that is reported to a client."""

    status: ClassVar[int] = 500
    default_code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None):
        super().__init__(message)
        # Human-readable and safe to show: never holds patient data or internals.
        self.message = message
        # Stable machine-readable code, e.g. "invalid_field", "token_expired".
        self.code = code or self.default_code
        # Dotted path of the offending input field, when there is one.
        self.field = field

    def to_dict(self) -> dict[str, Any]:
        """The `{"error": {...}}` body of the wire contract."""
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


class BadRequest(ProbelinkError):
    status = 400
    default_code = "bad_request"


class PayloadTooLarge(BadRequest):
    status = 413
    default_code = "payload_too_large"


class UnsupportedMediaType(BadRequest):
    status = 415
    default_code = "unsupported_media_type"


class Unauthorized(ProbelinkError):
    status = 401
    default_code = "unauthorized"


class Forbidden(ProbelinkError):
    status = 403
    default_code = "forbidden"


class NotFound(ProbelinkError):
    status = 404
    default_code = "not_found"


class Conflict(ProbelinkError):
    status = 409
    default_code = "conflict"


class RateLimited(ProbelinkError):
    status = 429
    default_code = "rate_limited"


class Unavailable(ProbelinkError):
    status = 503
    default_code = "unavailable"


class ConfigError(ProbelinkError):
    default_code = "invalid_config"
