"""Random events and payloads on /live: every one gets an ack, a refused one changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from live_client import Participant

from server.app import create_app
from server.config import Settings
from server.web.keys import ROOM_LOG

EVENTS = ["pointer", "mark", "mark_clear", "guidance", "sync"]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**40), max_value=2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["arrow", "circle", "freehand", "text", "caliper", "rotate", "hold", "left"])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=15,
)
points = st.lists(
    st.lists(st.floats(min_value=-0.5, max_value=1.5), min_size=1, max_size=3),
    min_size=0,
    max_size=6,
)
plausible = st.fixed_dictionaries(
    {},
    optional={
        "kind": st.sampled_from(["arrow", "circle", "freehand", "text", "caliper", "laser"]),
        "points": points | values,
        "text": st.text(max_size=30) | values,
        "media_ts": st.integers(min_value=-5, max_value=2**33) | values,
        "x": st.floats(min_value=-1, max_value=2) | values,
        "y": st.floats(min_value=-1, max_value=2),
        "cue": st.sampled_from(
            ["slide", "rotate", "tilt", "rock", "fan", "compress", "hold", "spin"]
        ),
        "direction": st.sampled_from(["left", "clockwise", "more", "sideways"]),
        "id": st.text(alphabet="0123456789abcdef", min_size=31, max_size=33),
        "after_seq": st.integers(min_value=-3, max_value=10**12) | values,
    },
)
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture
async def expert(
    aiohttp_client: Callable[..., Any], settings: Settings, coordinator: dict[str, str]
) -> AsyncIterator[tuple[Participant, Any, str]]:
    settings = settings.model_copy(
        update={"events_per_second": 100_000, "event_burst": 100_000, "pointer_hz": 100_000}
    )
    client = await aiohttp_client(create_app(settings))
    created = await client.post(
        "/api/consultations",
        json={"clinical_question": "q", "urgency": "routine", "incomplete_reason": "test request"},
        headers=coordinator,
    )
    cid = (await created.json())["id"]
    invited = await client.post(
        f"/api/consultations/{cid}/invites",
        json={"role": "expert", "name": "e"},
        headers=coordinator,
    )
    participant = await Participant(
        str(client.make_url("/")), (await invited.json())["token"]
    ).connect()
    yield participant, client, cid
    await participant.close()


@FUZZ
@given(event=st.sampled_from(EVENTS) | st.text(min_size=1, max_size=30), payload=plausible | values)
async def test_every_random_event_is_answered_and_refusals_change_nothing(
    expert: tuple[Participant, Any, str], event: str, payload: Any
) -> None:
    participant, client, cid = expert
    before = (await client.app[ROOM_LOG].snapshot(cid)).last_seq
    ack = await participant.call(event, payload)
    assert isinstance(ack, dict), ack
    after = (await client.app[ROOM_LOG].snapshot(cid)).last_seq
    if "error" in ack:
        error = ack["error"]
        assert set(error) == {"code", "message", "field"}
        assert error["code"] != "internal_error", (event, payload, ack)
        assert after == before
    elif "seq" in ack and ack["seq"] is not None:
        assert after == ack["seq"] == before + 1
    else:
        assert after == before
    assert participant.sio.connected
