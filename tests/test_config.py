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


def test_the_longest_allowed_settings_are_accepted() -> None:
    settings = load_settings(
        token_max_ttl_seconds=12 * 3600,
        invite_ttl_seconds=12 * 3600,
        due_minutes_routine=DUE_MINUTES_MAX,
    )
    assert settings.due_minutes()["routine"] == DUE_MINUTES_MAX
