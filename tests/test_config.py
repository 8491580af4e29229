"""Settings that contradict each other stop start-up with a message naming the variables."""

from __future__ import annotations

from typing import Any

import pytest

from server.config import DUE_MINUTES_MAX, load_settings
from server.errors import ConfigError


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"token_max_ttl_seconds": 3600}, "PROBELINK_INVITE_TTL_SECONDS"),
        (
            {"token_max_ttl_seconds": 7200, "invite_ttl_seconds": 3600},
            "12 h",  # the coordinator link `probelink serve` prints
        ),
        ({"due_minutes_emergency": DUE_MINUTES_MAX + 1}, "PROBELINK_DUE_MINUTES_EMERGENCY"),
        ({"due_minutes_urgent": 10**12}, "PROBELINK_DUE_MINUTES_URGENT"),
        ({"due_minutes_routine": 10**12}, "PROBELINK_DUE_MINUTES_ROUTINE"),
    ],
)
def test_conflicting_or_huge_settings_are_refused(overrides: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(**overrides)
    assert named in refused.value.message
    assert "PROBELINK_TOKEN_MAX_TTL_SECONDS" in refused.value.message or "DUE" in named
    assert "PROBELINK_:" not in refused.value.message


def test_a_media_address_must_be_an_ip_address() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(media_address="media.example.org")
    assert refused.value.message == (
        "invalid configuration: PROBELINK_MEDIA_ADDRESS: value is not a valid IPv4 or IPv6 address"
    )
    assert str(load_settings(media_address="2001:db8::7").media_address) == "2001:db8::7"


def test_the_longest_allowed_settings_are_accepted() -> None:
    settings = load_settings(
        token_max_ttl_seconds=12 * 3600,
        invite_ttl_seconds=12 * 3600,
        due_minutes_routine=DUE_MINUTES_MAX,
    )
    assert settings.due_minutes()["routine"] == DUE_MINUTES_MAX


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"public_url": "http://probelink.example.org"}, "PROBELINK_PUBLIC_URL"),
        ({"public_url": "http://192.168.1.20:8080"}, "PROBELINK_PUBLIC_URL"),
        ({"host": "0.0.0.0"}, "PROBELINK_HOST"),
        ({"host": "192.168.1.20", "public_url": "http://192.168.1.20:8080"}, "PUBLIC_URL"),
    ],
)
def test_join_links_in_clear_on_the_network_are_refused(
    overrides: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(**overrides)
    # The message says what is wrong, where the fix is, and the override's name.
    assert named in refused.value.message
    assert "docs/deployment.md" in refused.value.message
    assert "PROBELINK_ALLOW_INSECURE_PUBLIC_URL=1" in refused.value.message
    # The explicit override (a LAN demo) is taken.
    insecure = load_settings(**overrides, allow_insecure_public_url=True)
    assert insecure.base_url.startswith("http://")


@pytest.mark.parametrize(
    ("overrides", "base_url"),
    [
        ({}, "http://127.0.0.1:8080"),
        ({"public_url": "http://localhost:8080/"}, "http://localhost:8080"),
        ({"public_url": "http://127.0.0.2:9000"}, "http://127.0.0.2:9000"),
        ({"public_url": "http://[::1]:8080"}, "http://[::1]:8080"),
        ({"host": "::1", "public_url": "http://[::1]:8080"}, "http://[::1]:8080"),
        # Behind a TLS proxy: the node listens on the network, its links are https.
        (
            {"host": "10.0.0.5", "public_url": "https://probelink.example.org"},
            "https://probelink.example.org",
        ),
    ],
)
def test_loopback_or_https_public_urls_are_accepted(
    overrides: dict[str, Any], base_url: str
) -> None:
    assert load_settings(**overrides).base_url == base_url


@pytest.mark.parametrize(
    "url",
    [
        "probelink.example.org",
        "ftp://probelink.example.org",
        "https://",
        "https://probelink.example.org:99999",
        "https://user:secret@probelink.example.org",
        "https://probelink.example.org/?x=1",
    ],
)
def test_a_public_url_that_is_not_a_web_address_is_refused(url: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(public_url=url)
    assert "PROBELINK_PUBLIC_URL:" in refused.value.message
    assert "secret" not in refused.value.message
