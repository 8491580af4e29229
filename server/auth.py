"""Tokens and grants: who may do what, in which consultation.

One algorithm is accepted (HS256); every token names its key (`kid`) and must
carry `exp`, `iat`, `iss`, `aud`, `sub` and `role`. Operators, experts and
observers are granted one consultation (`consultation` claim); coordinators are
global. An expert's token may also name no consultation: their reading-room
token, with which they see the requests they are credentialed for and accept
one (getting a join token for it), but which is granted no consultation itself.
Every refusal raises `Unauthorized` (401) or `Forbidden` (403) with a code
saying why. A join token's `sub` is its participant; whether a consultation's
token still opens it after it was issued is `server.consultations.access`'s rule.
"""

from __future__ import annotations

import enum
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt

from server.errors import Forbidden, Unauthorized
from server.keyring import KeyRing, KeyRingFile
from server.messages import NAME_MAX_CHARS

ALGORITHM = "HS256"
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "sub")
SUB_MAX_CHARS = 128


class Role(enum.StrEnum):
    """What a participant is, and so what they may do."""

    OPERATOR = "operator"
    EXPERT = "expert"
    OBSERVER = "observer"
    COORDINATOR = "coordinator"


SCOPED_ROLES = frozenset({Role.OPERATOR, Role.EXPERT, Role.OBSERVER})
# Scoped roles that also have a token without a consultation (the expert's reading room).
UNSCOPED_ALLOWED = frozenset({Role.EXPERT})


@dataclass(frozen=True)
class Principal:
    """The verified holder of a token."""

    # Opaque subject: a participant id or a staff account name; never a patient detail.
    sub: str
    role: Role
    # The one consultation a scoped role may act in; None for coordinators and for an
    # expert's reading-room token (see `is_reading_room`).
    consultation_id: str | None
    # Display name for the room, when the token carries one.
    name: str | None = None
    # Token id, for the audit log.
    jti: str | None = None

    @property
    def is_reading_room(self) -> bool:
        """An expert's own token: their queue, but no consultation until they accept one."""
        return self.role is Role.EXPERT and self.consultation_id is None


# Signing keys: a fixed ring (a configured secret) or the data directory's ring file.
Keys = KeyRing | KeyRingFile


@dataclass(frozen=True)
class TokenPolicy:
    """What a token must say to be accepted."""

    issuer: str
    audience: str
    leeway_seconds: int
    max_ttl_seconds: int


def issue_token(
    keys: Keys,
    policy: TokenPolicy,
    *,
    sub: str,
    role: Role,
    ttl_seconds: int,
    consultation_id: str | None = None,
    name: str | None = None,
    now: float | None = None,
) -> str:
    """Sign a token for `sub` acting as `role`."""
    if role in SCOPED_ROLES - UNSCOPED_ALLOWED and not consultation_id:
        raise ValueError(f"a {role} token needs a consultation")
    if role is Role.COORDINATOR and consultation_id:
        raise ValueError("a coordinator token is global; it takes no consultation")
    if not 0 < ttl_seconds <= policy.max_ttl_seconds:
        raise ValueError(f"ttl must be between 1 and {policy.max_ttl_seconds} seconds")
    issued = int(now if now is not None else time.time())
    claims: dict[str, Any] = {
        "iss": policy.issuer,
        "aud": policy.audience,
        "sub": sub,
        "role": role.value,
        "iat": issued,
        "exp": issued + ttl_seconds,
        "jti": secrets.token_urlsafe(12),
    }
    if consultation_id:
        claims["consultation"] = consultation_id
    if name:
        claims["name"] = name
    # Sign with the newest key, also when it was rotated after the server started.
    ring = keys.refresh() if isinstance(keys, KeyRingFile) else keys
    return jwt.encode(claims, ring.active_secret, algorithm=ALGORITHM, headers={"kid": ring.active})


def verify_token(token: str, keys: Keys, policy: TokenPolicy) -> Principal:
    """Check a token's signature and claims; raise `Unauthorized` saying why not."""
    malformed = Unauthorized("the token is not a well-formed JWT", code="token_malformed")
    # A JWT is ASCII; other text (e.g. raw header bytes) is refused before any decoding.
    if not isinstance(token, str) or not token.isascii():
        raise malformed
    try:
        header = jwt.get_unverified_header(token)
    except Exception:
        raise malformed from None
    if header.get("alg") != ALGORITHM:
        raise Unauthorized(
            f"the token's algorithm is not accepted (only {ALGORITHM})",
            code="token_algorithm_refused",
        )
    kid = header.get("kid")
    ring = keys.ring if isinstance(keys, KeyRingFile) else keys
    if isinstance(kid, str) and kid not in ring.keys and isinstance(keys, KeyRingFile):
        ring = keys.refresh_for_unknown_kid()  # `probelink rotate-key` may have run since
    if not isinstance(kid, str) or kid not in ring.keys:
        raise Unauthorized("the token was signed with an unknown key", code="token_unknown_key")
    try:
        claims = jwt.decode(
            token,
            ring.keys[kid],
            algorithms=[ALGORITHM],
            audience=policy.audience,
            issuer=policy.issuer,
            leeway=policy.leeway_seconds,
            # strict_aud: `aud` must be our audience as a string, not a list holding it.
            options={"require": list(REQUIRED_CLAIMS), "strict_aud": True},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("the token has expired", code="token_expired") from None
    except jwt.InvalidAudienceError:
        raise Unauthorized(
            "the token is for another audience", code="token_wrong_audience"
        ) from None
    except jwt.InvalidIssuerError:
        raise Unauthorized("the token is from another issuer", code="token_wrong_issuer") from None
    except jwt.InvalidSignatureError:
        raise Unauthorized("the token's signature is invalid", code="token_bad_signature") from None
    except jwt.MissingRequiredClaimError as exc:
        raise Unauthorized(
            f"the token lacks the '{exc.claim}' claim", code="token_missing_claim"
        ) from None
    except jwt.ImmatureSignatureError:
        raise Unauthorized("the token is not valid yet", code="token_not_yet_valid") from None
    except jwt.PyJWTError:
        raise Unauthorized("the token is invalid", code="token_invalid") from None
    return _principal(claims, policy)


def _principal(claims: dict[str, Any], policy: TokenPolicy) -> Principal:
    sub = claims["sub"]
    if not isinstance(sub, str) or not 0 < len(sub) <= SUB_MAX_CHARS:
        raise Unauthorized("the token's 'sub' claim is not valid", code="token_bad_claim")
    try:
        role = Role(str(claims.get("role")))
    except ValueError:
        raise Unauthorized(
            "the token's 'role' claim is not a known role", code="token_bad_claim"
        ) from None
    times = (claims["exp"], claims["iat"])
    # PyJWT accepts numeric strings; a NumericDate is a JSON number.
    if not all(isinstance(t, int | float) and not isinstance(t, bool) for t in times):
        raise Unauthorized("the token's 'exp' and 'iat' must be numbers", code="token_bad_claim")
    if claims["exp"] - claims["iat"] > policy.max_ttl_seconds:
        raise Unauthorized("the token's lifetime is longer than allowed", code="token_bad_claim")
    consultation = claims.get("consultation")
    if role in SCOPED_ROLES:
        reading_room = consultation is None and role in UNSCOPED_ALLOWED
        if not reading_room and (not isinstance(consultation, str) or not consultation):
            raise Unauthorized(
                f"a {role} token must name its consultation", code="token_missing_claim"
            )
    elif consultation is not None:
        raise Unauthorized("a coordinator token takes no consultation", code="token_bad_claim")
    name = claims.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > NAME_MAX_CHARS):
        raise Unauthorized("the token's 'name' claim is not valid", code="token_bad_claim")
    jti = claims.get("jti")
    return Principal(
        sub=sub,
        role=role,
        consultation_id=consultation,
        name=name,
        jti=jti if isinstance(jti, str) else None,
    )


def require_role(principal: Principal, *roles: Role) -> None:
    """Refuse unless the principal has one of `roles`."""
    if principal.role not in roles:
        allowed = ", ".join(r.value for r in roles)
        raise Forbidden(
            f"this needs the role {allowed}; the token's role is {principal.role}",
            code="role_not_allowed",
        )


def require_consultation(principal: Principal, consultation_id: str) -> None:
    """Refuse a scoped token that is not for this consultation (coordinators see all)."""
    if principal.role is Role.COORDINATOR:
        return
    if principal.consultation_id is None:
        raise Forbidden(
            "a reading-room token is granted no consultation: accept the consultation"
            " (POST /api/consultations/{id}/accept) and use the join token it gives",
            code="consultation_not_granted",
        )
    if principal.consultation_id != consultation_id:
        raise Forbidden("the token is for another consultation", code="consultation_not_granted")
