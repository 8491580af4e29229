"""Only valid tokens get in: forged, expired, wrong-audience, alg=none tokens are refused."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
import socketio
from aiohttp.test_utils import TestClient

from server.app import load_keyring, token_policy
from server.auth import Principal, Role, issue_token, require_consultation, verify_token
from server.config import Settings, load_settings
from server.errors import Forbidden, Unauthorized
from server.keyring import (
    KEYS_KEPT_AFTER_ROTATION,
    RELOAD_MIN_INTERVAL_SECONDS,
    KeyRingFile,
    load_or_create,
    rotate,
)
from server.web.keys import STORE

KID_HEADER = "kid"


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def claims(settings: Settings, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": settings.token_issuer,
        "aud": settings.token_audience,
        "sub": "mallory",
        "role": "coordinator",
        "iat": now,
        "exp": now + 600,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def bad_tokens(settings: Settings) -> dict[str, tuple[str, str]]:
    """name -> (token, expected refusal code)."""
    ring = load_keyring(settings)
    secret = ring.active_secret
    kid = {KID_HEADER: ring.active}
    sign = lambda c, key=secret, h=kid: jwt.encode(c, key, algorithm="HS256", headers=h)  # noqa: E731
    alg_none = f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': ring.active})}.{b64(claims(settings))}."
    return {
        "forged": (sign(claims(settings), b"x" * 32), "token_bad_signature"),
        "expired": (
            sign(claims(settings, iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)),
            "token_expired",
        ),
        "wrong_audience": (sign(claims(settings, aud="someone-else")), "token_wrong_audience"),
        "wrong_issuer": (sign(claims(settings, iss="evil")), "token_wrong_issuer"),
        "alg_none": (alg_none, "token_algorithm_refused"),
        "alg_hs512": (
            jwt.encode(claims(settings), secret * 2, algorithm="HS512", headers=kid),
            "token_algorithm_refused",
        ),
        "unknown_kid": (sign(claims(settings), h={KID_HEADER: "nope"}), "token_unknown_key"),
        "no_kid": (sign(claims(settings), h={}), "token_unknown_key"),
        "no_role": (sign(claims(settings, role=None)), "token_bad_claim"),
        "unknown_role": (sign(claims(settings, role="admin")), "token_bad_claim"),
        "no_exp": (sign(claims(settings, exp=None)), "token_missing_claim"),
        "no_iat": (sign(claims(settings, iat=None)), "token_missing_claim"),
        "no_sub": (sign(claims(settings, sub=None)), "token_missing_claim"),
        "operator_without_consultation": (
            sign(claims(settings, role="operator")),
            "token_missing_claim",
        ),
        "too_long_lived": (
            sign(claims(settings, exp=int(time.time()) + 10 * settings.token_max_ttl_seconds)),
            "token_bad_claim",
        ),
        "future_iat": (sign(claims(settings, iat=int(time.time()) + 3600)), "token_not_yet_valid"),
        "garbage": ("not.a.jwt", "token_malformed"),
        # Raw bytes \xff\xfe.\xed\xa0\x80.a in a header, as the server decodes them.
        "non_ascii_bytes": ("\udcff\udcfe.\udced\udca0\udc80.a", "token_malformed"),
        "non_ascii_text": (sign(claims(settings)) + "é", "token_malformed"),
        "string_times": (
            sign(claims(settings, iat=str(int(time.time())), exp=str(int(time.time()) + 60))),
            "token_bad_claim",
        ),
        "audience_list": (
            sign(claims(settings, aud=[settings.token_audience])),
            "token_wrong_audience",
        ),
    }


def test_every_bad_token_is_refused_with_its_reason(settings: Settings) -> None:
    ring, policy = load_keyring(settings), token_policy(settings)
    for name, (token, code) in bad_tokens(settings).items():
        with pytest.raises(Unauthorized) as refused:
            verify_token(token, ring, policy)
        assert refused.value.code == code, name


def test_leeway_accepts_a_token_that_expired_a_moment_ago(settings: Settings) -> None:
    ring, policy = load_keyring(settings), token_policy(settings)
    token = issue_token(
        ring, policy, sub="c", role=Role.COORDINATOR, ttl_seconds=60, now=time.time() - 70
    )
    assert verify_token(token, ring, policy).sub == "c"


def test_scoped_token_reaches_only_its_consultation(settings: Settings) -> None:
    ring, policy = load_keyring(settings), token_policy(settings)
    token = issue_token(
        ring, policy, sub="p1", role=Role.OPERATOR, ttl_seconds=60, consultation_id="c1", name="Sam"
    )
    principal = verify_token(token, ring, policy)
    assert principal == Principal("p1", Role.OPERATOR, "c1", "Sam", principal.jti)
    require_consultation(principal, "c1")
    with pytest.raises(Forbidden):
        require_consultation(principal, "c2")
    with pytest.raises(ValueError):
        issue_token(ring, policy, sub="p", role=Role.OBSERVER, ttl_seconds=60)


def test_rotation_signs_with_the_new_key_and_still_accepts_the_old(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    policy = token_policy(settings)
    old_ring = load_or_create(tmp_path)
    old = issue_token(old_ring, policy, sub="c", role=Role.COORDINATOR, ttl_seconds=60)
    new_ring = rotate(tmp_path)
    assert new_ring.active != old_ring.active
    new = issue_token(new_ring, policy, sub="c", role=Role.COORDINATOR, ttl_seconds=60)
    assert jwt.get_unverified_header(new)["kid"] == new_ring.active
    reloaded = load_or_create(tmp_path)
    assert verify_token(old, reloaded, policy).sub == "c"
    assert verify_token(new, reloaded, policy).sub == "c"
    assert (tmp_path / "keys" / "jwt.json").stat().st_mode & 0o077 == 0


def test_rotation_keeps_the_newest_keys_only(tmp_path: Path) -> None:
    actives = [load_or_create(tmp_path).active]
    for _ in range(5):
        actives.append(rotate(tmp_path).active)
    ring = load_or_create(tmp_path)
    assert list(ring.keys) == actives[-KEYS_KEPT_AFTER_ROTATION:]
    assert ring.active == actives[-1]


def test_a_rotated_ring_file_is_reread_at_most_once_a_second(tmp_path: Path) -> None:
    policy = token_policy(load_settings(data_dir=tmp_path))
    load_or_create(tmp_path)
    ring_file = KeyRingFile(tmp_path / "keys" / "jwt.json")

    def token_from(ring: Any) -> str:
        return issue_token(ring, policy, sub="c", role=Role.COORDINATOR, ttl_seconds=60)

    first = token_from(rotate(tmp_path))
    assert verify_token(first, ring_file, policy).sub == "c"
    second = token_from(rotate(tmp_path))
    with pytest.raises(Unauthorized) as refused:
        verify_token(second, ring_file, policy)  # the file was looked at less than 1 s ago
    assert refused.value.code == "token_unknown_key"
    time.sleep(RELOAD_MIN_INTERVAL_SECONDS)
    assert verify_token(second, ring_file, policy).sub == "c"
    assert verify_token(first, ring_file, policy).sub == "c"


async def test_http_refusals_are_401_with_reason_and_audited(
    client: TestClient[Any, Any],
    settings: Settings,
    raw_request: Callable[..., Awaitable[tuple[int, Any]]],
) -> None:
    cases = bad_tokens(settings)
    for name, (token, code) in cases.items():
        # Sent as raw bytes: a client library would refuse to encode some of these.
        header = b"Bearer " + token.encode("utf-8", "surrogateescape")
        status, body = await raw_request(
            "GET", "/api/consultations", headers={"Authorization": header}
        )
        assert status == 401, name
        assert body["error"]["code"] == code, name
        assert "Traceback" not in body["error"]["message"]
    for header, code in (
        ({}, "token_missing"),
        ({"Authorization": "Basic abc"}, "token_malformed"),
    ):
        response = await client.get("/api/consultations", headers=header)
        assert (response.status, (await response.json())["error"]["code"]) == (401, code)
    entries = await client.app[STORE].audit_entries()
    refusals = [e for e in entries if e.facts.outcome.startswith("refused:")]
    # One entry per reason: repeats of a reason from one address are one burst (server.web.refusals).
    reasons = {code for _, code in cases.values()} | {"token_missing", "token_malformed"}
    assert sorted(e.facts.outcome for e in refusals) == sorted(f"refused:{c}" for c in reasons)
    assert refusals[0].facts.action == "GET /api/consultations"
    assert refusals[0].facts.source == "127.0.0.1"
    assert (await client.app[STORE].verify_audit()).ok


async def test_forbidden_is_403_and_audited_with_the_actor(
    client: TestClient[Any, Any], token_for: Callable[..., str]
) -> None:
    observer = token_for("observer", sub="obs-1", consultation="a" * 32)
    response = await client.post(
        "/api/consultations",
        json={"clinical_question": "q", "urgency": "routine", "incomplete_reason": "test request"},
        headers={"Authorization": f"Bearer {observer}"},
    )
    assert response.status == 403
    assert (await response.json())["error"]["code"] == "role_not_allowed"
    last = (await client.app[STORE].audit_entries())[-1]
    assert (last.facts.actor, last.facts.role, last.facts.outcome) == (
        "obs-1",
        "observer",
        "refused:role_not_allowed",
    )


async def test_live_socket_refuses_bad_tokens_and_accepts_a_join_token(
    client: TestClient[Any, Any],
    settings: Settings,
    token_for: Callable[..., str],
    coordinator: dict[str, str],
) -> None:
    created = await client.post(
        "/api/consultations",
        json={"clinical_question": "q", "urgency": "routine", "incomplete_reason": "test request"},
        headers=coordinator,
    )
    consultation = (await created.json())["id"]
    url = str(client.make_url("/"))
    refused_tokens = (
        bad_tokens(settings)["forged"][0],
        token_for("coordinator"),
        None,
        token_for("expert", consultation="b" * 32),
    )
    for token in refused_tokens:
        sio = socketio.AsyncClient(reconnection=False)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await sio.connect(url, namespaces=["/live"], auth={"token": token}, wait_timeout=5)
        await sio.disconnect()
    sio = socketio.AsyncClient(reconnection=False)
    await sio.connect(
        url,
        namespaces=["/live"],
        auth={"token": token_for("expert", consultation=consultation)},
        wait_timeout=5,
    )
    assert sio.connected
    await sio.disconnect()
    outcomes = [
        e.facts.outcome
        for e in await client.app[STORE].audit_entries()
        if e.facts.outcome.startswith("refused")
    ]
    assert outcomes == [
        "refused:token_bad_signature",
        "refused:consultation_not_granted",
        "refused:token_missing",
        "refused:consultation_not_found",
    ]
