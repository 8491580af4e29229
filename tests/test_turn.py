"""Every participant gets ICE servers; TURN ones carry a credential coturn can check alone."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.config import Settings, load_settings
from server.errors import ConfigError
from server.media.ice import ice_servers_for, turn_credential, turn_user

SECRET = "s" * 40
NOW = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)
TURN_URLS = "stun:turn.example.org:3478, turn:turn.example.org:3478?transport=udp,turns:turn.example.org:443?transport=tcp"


def test_credential_is_the_turn_rest_api_hmac_of_expiry_and_user() -> None:
    credential = turn_credential("north", "3f2a9c", 1795449112)
    assert credential.username == "1795449112:3f2a9c"
    expected = hmac.new(b"north", b"1795449112:3f2a9c", hashlib.sha1).digest()
    assert base64.b64decode(credential.password) == expected
    assert credential.password == base64.b64encode(expected).decode()
    assert credential.expires_at == 1795449112


def test_credential_depends_on_secret_expiry_and_user() -> None:
    base = turn_credential(SECRET, "a", 100).password
    assert turn_credential(SECRET + "x", "a", 100).password != base
    assert turn_credential(SECRET, "a", 101).password != base
    assert turn_credential(SECRET, "b", 100).password != base


def test_no_ice_servers_without_configuration() -> None:
    assert ice_servers_for(load_settings(), "p1", NOW) == {"ice_servers": [], "expires_at": None}


def test_stun_only_needs_no_secret_and_expires_never() -> None:
    settings = load_settings(turn_urls="stun:stun.example.org")
    assert ice_servers_for(settings, "p1", NOW) == {
        "ice_servers": [{"urls": ["stun:stun.example.org"]}],
        "expires_at": None,
    }


def test_turn_urls_get_a_credential_for_the_participant_expiring_after_the_ttl() -> None:
    settings = load_settings(turn_urls=TURN_URLS, turn_secret=SECRET, turn_ttl_seconds=3600)
    body = ice_servers_for(settings, "3f2a9c", NOW)
    stun, turn = body["ice_servers"]
    assert stun == {"urls": ["stun:turn.example.org:3478"]}
    assert turn["urls"] == [
        "turn:turn.example.org:3478?transport=udp",
        "turns:turn.example.org:443?transport=tcp",
    ]
    expiry = int(NOW.timestamp()) + 3600
    assert turn["username"] == f"{expiry}:3f2a9c"
    assert turn["credential"] == turn_credential(SECRET, "3f2a9c", expiry).password
    assert body["expires_at"] == "2026-11-23T11:00:00.000000Z"


@pytest.mark.parametrize("sub", ["Dr Müller", "a:b", "x" * 129, "line\nbreak"])
def test_a_subject_that_is_not_plain_ascii_becomes_a_digest(sub: str) -> None:
    user = turn_user(sub)
    assert user.startswith("sub-")
    assert len(user) == 36
    assert user == turn_user(sub)
    settings = load_settings(turn_urls="turn:t.example.org", turn_secret=SECRET)
    assert ice_servers_for(settings, sub, NOW)["ice_servers"][0]["username"].endswith(":" + user)


def test_a_plain_subject_is_kept() -> None:
    assert turn_user("coord-1") == "coord-1"
    assert turn_user("4e1c0a7b9d2f4e6a8b0c1d2e3f405162") == "4e1c0a7b9d2f4e6a8b0c1d2e3f405162"


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"turn_urls": "turn:t.example.org"}, "PROBELINK_TURN_SECRET is required"),
        ({"turn_urls": "turns:t.example.org?transport=tcp"}, "PROBELINK_TURN_SECRET is required"),
        ({"turn_urls": "http://t.example.org"}, "PROBELINK_TURN_URLS"),
        ({"turn_urls": "stun:t.example.org?transport=udp"}, "only turn: and turns:"),
        ({"turn_urls": "turn:t.example.org:70000"}, "port"),
        ({"turn_urls": "turn:t.example.org?transport=sctp"}, "PROBELINK_TURN_URLS"),
        ({"turn_urls": "turn:t.example.org", "turn_secret": "short"}, "PROBELINK_TURN_SECRET"),
        ({"turn_ttl_seconds": 10}, "PROBELINK_TURN_TTL_SECONDS"),
        ({"turn_ttl_seconds": 2 * 86400}, "PROBELINK_TURN_TTL_SECONDS"),
    ],
)
def test_bad_turn_settings_stop_start_up(overrides: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(**overrides)
    assert named in refused.value.message
    assert "short" not in refused.value.message  # a secret is never echoed


def test_turn_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROBELINK_TURN_URLS", TURN_URLS)
    monkeypatch.setenv("PROBELINK_TURN_SECRET", SECRET)
    settings = load_settings()
    assert settings.turn_urls == tuple(u.strip() for u in TURN_URLS.split(","))
    assert settings.turn_ttl_seconds == 4 * 3600
    assert SECRET not in repr(settings)


def test_ipv6_turn_url_is_accepted() -> None:
    settings = load_settings(turn_urls="turn:[2001:db8::1]:3478", turn_secret=SECRET)
    assert settings.turn_urls == ("turn:[2001:db8::1]:3478",)


async def test_any_participant_fetches_ice_servers_with_its_own_turn_credential(
    aiohttp_client: Callable[..., Any],
    settings: Settings,
    token_for: Callable[..., str],
) -> None:
    turned = load_settings(
        data_dir=settings.data_dir, turn_urls="turn:127.0.0.1:3478", turn_secret=SECRET
    )
    client: TestClient[Any, Any] = await aiohttp_client(create_app(turned))
    before = int(time.time())
    for role, sub in [("operator", "4e1c0a7b"), ("expert", "9d2f4e6a"), ("coordinator", "desk-1")]:
        consultation = None if role == "coordinator" else "0" * 32
        token = token_for(role, sub=sub, consultation=consultation)
        response = await client.get(
            "/api/ice-servers", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status == 200
        assert response.headers["Cache-Control"] == "no-store"
        body = await response.json()
        (server,) = body["ice_servers"]
        assert server["urls"] == ["turn:127.0.0.1:3478"]
        expiry_text, user = server["username"].split(":")
        assert user == sub
        assert before + settings.turn_ttl_seconds <= int(expiry_text)
        assert int(expiry_text) <= int(time.time()) + settings.turn_ttl_seconds
        assert server["credential"] == turn_credential(SECRET, sub, int(expiry_text)).password
        assert body["expires_at"] == datetime.fromtimestamp(int(expiry_text), UTC).strftime(
            "%Y-%m-%dT%H:%M:%S.000000Z"
        )


async def test_ice_servers_need_a_valid_token(client: TestClient[Any, Any]) -> None:
    response = await client.get("/api/ice-servers")
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "token_missing"
    response = await client.get("/api/ice-servers", headers={"Authorization": "Bearer x.y.z"})
    assert response.status == 401


async def test_without_turn_the_ice_server_list_is_empty(
    client: TestClient[Any, Any], coordinator: dict[str, str]
) -> None:
    response = await client.get("/api/ice-servers", headers=coordinator)
    assert response.status == 200
    assert await response.json() == {"ice_servers": [], "expires_at": None}
