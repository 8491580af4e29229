"""Ephemeral TURN credentials and the ICE servers each participant is given.

The credentials follow the "TURN REST API" scheme that coturn checks with
`use-auth-secret`: username = "<expiry unix time>:<user>", password =
base64(HMAC-SHA1(shared secret, username)). coturn refuses a username whose
expiry has passed when a relay is allocated; an allocation made before its
expiry goes on being refreshed (coturn 4.6).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from server.store.times import iso

if TYPE_CHECKING:
    from server.config import Settings

TURN_SCHEMES = frozenset({"turn", "turns"})
# A user part that goes into the TURN username as it is: plain ASCII, so that the HMAC the
# browser's username is checked against never depends on how text is normalized, and coturn's
# log shows an opaque id. Any other `sub` is replaced by a digest of it.
PLAIN_USER_PATTERN = re.compile(r"[A-Za-z0-9._@-]{1,128}")
USER_DIGEST_HEX_CHARS = 32


@dataclass(frozen=True)
class TurnCredential:
    """A TURN username and password that the TURN server accepts until `expires_at`."""

    username: str
    password: str
    # Unix time, seconds: the TURN server allocates no relay with the credential after it.
    expires_at: int


def turn_credential(secret: str, user: str, expires_at: int) -> TurnCredential:
    """The TURN REST API credential of `user`, valid until `expires_at` (unix seconds)."""
    username = f"{expires_at}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return TurnCredential(username, base64.b64encode(digest).decode("ascii"), expires_at)


def turn_user(sub: str) -> str:
    """The user part of a TURN username for a token subject."""
    if PLAIN_USER_PATTERN.fullmatch(sub):
        return sub
    return "sub-" + hashlib.sha256(sub.encode()).hexdigest()[:USER_DIGEST_HEX_CHARS]


def is_turn_url(url: str) -> bool:
    """Whether a (validated) ICE server URL is a TURN one, which needs a credential."""
    return url.partition(":")[0] in TURN_SCHEMES


def ice_servers_for(settings: Settings, sub: str, now: datetime) -> dict[str, Any]:
    """The ICE servers of a participant, as sent on the wire (HTTP and the live room).

    `{"ice_servers": [{"urls", "username"?, "credential"?}], "expires_at": ISO time | None}`:
    STUN URLs without credentials, TURN URLs with a credential for `sub` that expires
    `turn_ttl_seconds` after `now`. No URLs configured: an empty list (host candidates only).
    """
    stun = [u for u in settings.turn_urls if not is_turn_url(u)]
    turn = [u for u in settings.turn_urls if is_turn_url(u)]
    servers: list[dict[str, Any]] = []
    if stun:
        servers.append({"urls": stun})
    expires_at = None
    if turn:
        assert settings.turn_secret is not None  # the settings refuse TURN URLs without one
        expiry = int(now.timestamp()) + settings.turn_ttl_seconds
        credential = turn_credential(
            settings.turn_secret.get_secret_value(), turn_user(sub), expiry
        )
        servers.append(
            {"urls": turn, "username": credential.username, "credential": credential.password}
        )
        expires_at = iso(datetime.fromtimestamp(expiry, UTC))
    return {"ice_servers": servers, "expires_at": expires_at}
