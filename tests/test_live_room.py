"""The live room: presence, the expert's pointer, sequenced marks and guidance, roles, bad input."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from conftest import unique_prefix
from live_client import Participant
from sqlalchemy import text

from server.app import create_app
from server.config import Settings
from server.web.keys import ROOM_LOG, STORE

Join = Callable[[str], Awaitable[Participant]]


async def new_consultation(client: TestClient[Any, Any], coordinator: dict[str, str]) -> str:
    response = await client.post(
        "/api/consultations",
        json={
            "clinical_question": "Thrombus in the left femoral vein?",
            "urgency": "urgent",
            "incomplete_reason": "test request",
        },
        headers=coordinator,
    )
    return str((await response.json())["id"])


async def invite(
    client: TestClient[Any, Any], coordinator: dict[str, str], cid: str, role: str
) -> str:
    response = await client.post(
        f"/api/consultations/{cid}/invites",
        json={"role": role, "name": f"The {role}"},
        headers=coordinator,
    )
    assert response.status == 201
    return str((await response.json())["token"])


@pytest.fixture(params=["one-node", "redis"])
async def client(
    request: pytest.FixtureRequest, aiohttp_client: Callable[..., Any], settings: Settings
) -> TestClient[Any, Any]:
    """The app on one node (in-process presence and bus) and with Redis (the multi-node code)."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        settings = settings.model_copy(update={"redis_url": url, "redis_prefix": unique_prefix()})
    return await aiohttp_client(create_app(settings))  # type: ignore[no-any-return]


@pytest.fixture
async def join(
    client: TestClient[Any, Any], coordinator: dict[str, str]
) -> AsyncIterator[Callable[..., Awaitable[Participant]]]:
    """join(role, consultation=None) connects a freshly invited participant (default room)."""
    default = await new_consultation(client, coordinator)
    joined: list[Participant] = []

    async def connect(role: str, consultation: str | None = None) -> Participant:
        token = await invite(client, coordinator, consultation or default, role)
        participant = await Participant(str(client.make_url("/")), token).connect()
        joined.append(participant)
        return participant

    connect.consultation = default  # type: ignore[attr-defined]
    yield connect
    for participant in joined:
        await participant.close()


async def test_joining_gives_room_state_and_everyone_sees_presence(
    join: Any, client: TestClient[Any, Any]
) -> None:
    operator = await join("operator")
    assert operator.state["you"]["role"] == "operator"
    assert operator.state["last_seq"] == 0
    joins = [
        e.facts for e in await client.app[STORE].audit_entries() if e.facts.action == "room.join"
    ]
    assert [(f.actor, f.role, f.object_id) for f in joins] == [
        (operator.state["you"]["id"], "operator", join.consultation)
    ]
    assert operator.state["marks"] == [] and operator.state["guidance"] is None
    assert operator.state["ice"]["ice_servers"] == []  # no STUN/TURN configured here
    assert operator.state["consultation"]["urgency"] == "urgent"
    # The picture's floor the expert's page holds the video to (the defaults).
    assert operator.state["quality"] == {"fps": 15, "seconds": 2}

    expert = await join("expert")
    assert {p["role"] for p in expert.state["participants"]} == {"operator", "expert"}
    await operator.wait_until(
        lambda r: any(
            p["event"] == "join" and p["participant"]["role"] == "expert" for p in r["presence"]
        )
    )
    await expert.close()
    await operator.wait_until(
        lambda r: any(
            p["event"] == "leave" and p["participant"]["role"] == "expert" for p in r["presence"]
        )
    )
    assert [p["role"] for p in operator.received["presence"][-1]["participants"]] == ["operator"]


async def test_first_expert_to_join_makes_the_request_live(
    join: Any, client: TestClient[Any, Any], coordinator: dict[str, str]
) -> None:
    await join("operator")
    cid = join.consultation
    record = await (await client.get(f"/api/consultations/{cid}", headers=coordinator)).json()
    assert record["state"] == "requested" and record["turnaround"]["first_joined_at"] is None
    await join("expert")
    record = await (await client.get(f"/api/consultations/{cid}", headers=coordinator)).json()
    assert record["state"] == "live"
    assert record["turnaround"]["first_joined_at"] is not None
    assert all(p["joined_at"] for p in record["participants"])


async def test_expert_pointer_reaches_operator_in_order_and_is_never_stored(
    join: Any, client: TestClient[Any, Any]
) -> None:
    operator = await join("operator")
    expert = await join("expert")
    for i in range(20):
        ack = await expert.call("pointer", {"x": i / 20, "y": 0.5, "media_ts": 9000 * i})
        assert ack["ok"] is True
    await operator.wait_until(lambda r: any(p["media_ts"] == 9000 * 19 for p in r["pointer"]))
    stamps = [p["media_ts"] for p in operator.received["pointer"]]
    assert stamps == sorted(stamps)
    assert operator.received["pointer"][-1] == {
        "from": expert.state["you"]["id"],
        "x": 0.95,
        "y": 0.5,
        "media_ts": 171000,
    }
    assert expert.received["pointer"] == []  # not echoed to its sender
    async with client.app[STORE].engine.connect() as conn:
        stored = (await conn.execute(text("SELECT count(*) FROM room_events"))).scalar()
    assert stored == 0


async def test_marks_are_stored_before_ack_and_reach_everyone_in_sequence(
    join: Any, client: TestClient[Any, Any]
) -> None:
    operator = await join("operator")
    expert = await join("expert")
    observer = await join("observer")
    acks = await asyncio.gather(
        *(
            expert.call("mark", {"kind": "arrow", "points": [[0.1, 0.1], [0.2, 0.2 + i / 100]]})
            for i in range(25)
        )
    )
    assert sorted(a["seq"] for a in acks) == list(range(1, 26))
    for person in (operator, expert, observer):
        marks = await person.wait_for("mark", 25)
        assert [m["seq"] for m in marks] == list(range(1, 26))
    stored = await client.app[ROOM_LOG].events_after(join.consultation, 0, 100)
    assert [e.seq for e in stored] == list(range(1, 26))
    assert {a["id"] for a in acks} == {m["id"] for m in operator.received["mark"]}


async def test_caliper_carries_its_length_and_text_label_its_text(join: Any) -> None:
    operator = await join("operator")
    expert = await join("expert")
    await expert.call(
        "mark", {"kind": "caliper", "points": [[0.1, 0.1], [0.4, 0.5]], "media_ts": 42}
    )
    label = await operator.call("mark", {"kind": "text", "points": [[0.5, 0.5]], "text": "vein"})
    assert "seq" in label
    marks = await expert.wait_for("mark", 2)
    assert marks[0]["length"] == pytest.approx(0.5)
    assert marks[0]["media_ts"] == 42
    assert marks[1]["text"] == "vein" and marks[1]["author_role"] == "operator"


async def test_a_calibration_on_the_depth_scale_carries_its_millimetres(join: Any) -> None:
    expert = await join("expert")
    depth = {"kind": "calibration", "points": [[0.1, 0.2], [0.1, 0.6]], "mm": 40}
    assert "seq" in await expert.call("mark", depth)
    [mark] = await expert.wait_for("mark", 1)
    assert mark["mm"] == 40 and mark["length"] == pytest.approx(0.4)
    refusals = [
        {"kind": "calibration", "points": [[0.1, 0.2], [0.1, 0.6]]},  # no mm
        {"kind": "calibration", "points": [[0.1, 0.2], [0.1, 0.2]], "mm": 10},  # one point twice
        {"kind": "calibration", "points": [[0.1, 0.2], [0.1, 0.6]], "mm": -1},
        {"kind": "caliper", "points": [[0.1, 0.2], [0.1, 0.6]], "mm": 10},  # only calibrations
    ]
    for body in refusals:
        assert (await expert.call("mark", body))["error"]["code"] == "invalid_field", body


async def test_roles_decide_who_may_mark_guide_point_and_clear(join: Any) -> None:
    operator = await join("operator")
    expert = await join("expert")
    observer = await join("observer")
    arrow = {"kind": "arrow", "points": [[0.1, 0.1], [0.2, 0.2]]}

    assert (await operator.call("mark", arrow))["error"]["code"] == "not_allowed_mark"
    assert (await observer.call("mark", {"kind": "text", "points": [[0.1, 0.1]], "text": "x"}))[
        "error"
    ]["code"] == "not_allowed_mark"
    assert (await operator.call("guidance", {"cue": "hold"}))["error"][
        "code"
    ] == "not_allowed_guidance"
    assert (await observer.call("pointer", {"x": 0.1, "y": 0.1}))["error"][
        "code"
    ] == "not_allowed_pointer"
    assert (await observer.call("mark_clear", {}))["error"]["code"] == "not_allowed_clear"

    expert_mark = await expert.call("mark", arrow)
    own_label = await operator.call(
        "mark", {"kind": "text", "points": [[0.3, 0.3]], "text": "here"}
    )
    refused = await operator.call("mark_clear", {"id": expert_mark["id"]})
    assert refused["error"]["code"] == "not_allowed_clear"
    cleared = await operator.call("mark_clear", {})
    assert cleared["ids"] == [own_label["id"]]
    cleared = await expert.call("mark_clear", {})
    assert cleared["ids"] == [expert_mark["id"]]
    events = await observer.wait_for("mark_clear", 2)
    assert [e["ids"] for e in events] == [[own_label["id"]], [expert_mark["id"]]]

    guided = await expert.call(
        "guidance", {"cue": "rotate", "direction": "clockwise", "note": "to long axis"}
    )
    got = (await operator.wait_for("guidance"))[-1]
    assert (
        got["seq"] == guided["seq"] and got["cue"] == "rotate" and got["direction"] == "clockwise"
    )


async def test_reconnecting_participant_gets_state_and_everything_it_missed(join: Any) -> None:
    operator = await join("operator")
    expert = await join("expert")
    first = await expert.call("mark", {"kind": "circle", "points": [[0.5, 0.5], [0.6, 0.5]]})
    seen = first["seq"]
    await operator.close()
    await expert.call("guidance", {"cue": "slide", "direction": "cranial"})
    second = await expert.call("mark", {"kind": "arrow", "points": [[0.1, 0.1], [0.2, 0.2]]})
    await expert.call("mark_clear", {"id": first["id"]})

    back = await Participant(operator.url, operator.token).connect()
    try:
        assert [m["id"] for m in back.state["marks"]] == [second["id"]]
        assert back.state["guidance"]["direction"] == "cranial"
        assert back.state["last_seq"] == seen + 3
        missed = await back.call("sync", {"after_seq": seen})
        assert [e["type"] for e in missed["events"]] == ["guidance", "mark", "mark_clear"]
        assert [e["seq"] for e in missed["events"]] == [seen + 1, seen + 2, seen + 3]
        assert missed["more"] is False and missed["last_seq"] == seen + 3
    finally:
        await back.close()


@pytest.mark.parametrize(
    ("event", "data", "code", "field"),
    [
        (
            "mark",
            {"kind": "arrow", "points": [[0.1, 0.1], [1.5, 0.2]]},
            "invalid_field",
            "points.1.0",
        ),
        ("mark", {"kind": "arrow", "points": [[0.1, 0.1]]}, "invalid_field", None),
        ("mark", {"kind": "laser", "points": [[0.1, 0.1]]}, "invalid_field", "kind"),
        (
            "mark",
            {"kind": "text", "points": [[0.1, 0.1]], "text": "x" * 5000},
            "invalid_field",
            "text",
        ),
        ("mark", {"kind": "freehand", "points": [[0.1, 0.1]] * 501}, "invalid_field", "points"),
        (
            "mark",
            {"kind": "arrow", "points": [[0, 0], [1, 1]], "room": "other"},
            "unknown_field",
            "room",
        ),
        ("mark", "arrow", "invalid_field", None),
        ("mark", None, "invalid_event", None),
        ("pointer", {"x": "0.5", "y": 0.5}, "invalid_field", "x"),
        ("pointer", {"x": 0.5, "y": 0.5, "media_ts": -1}, "invalid_field", "media_ts"),
        ("pointer", {"x": True, "y": 0.5}, "invalid_field", "x"),
        ("guidance", {"cue": "hold", "direction": "left"}, "invalid_field", None),
        ("guidance", {"cue": "twist"}, "invalid_field", "cue"),
        ("mark_clear", {"id": "../../etc"}, "invalid_field", "id"),
        ("sync", {"after_seq": -5}, "invalid_field", "after_seq"),
        ("teleport", {}, "unknown_event", None),
        ("disconnect", {}, "unknown_event", None),
        ("connect", {"token": "x"}, "unknown_event", None),
    ],
)
async def test_bad_events_get_a_clear_error_ack_and_change_nothing(
    join: Any, client: TestClient[Any, Any], event: str, data: Any, code: str, field: str | None
) -> None:
    expert = await join("expert")
    ack = await expert.call(event, data)
    assert ack["error"]["code"] == code, ack
    assert ack["error"]["field"] == field, ack
    assert expert.sio.connected
    snapshot = await client.app[ROOM_LOG].snapshot(join.consultation)
    assert snapshot.last_seq == 0 and snapshot.marks == []
    assert (await expert.call("pointer", {"x": 0.5, "y": 0.5}))["ok"] is True  # still in the room


async def test_flooding_socket_is_rate_limited_and_other_rooms_keep_working(
    join: Any, client: TestClient[Any, Any], coordinator: dict[str, str]
) -> None:
    flooder = await join("expert")
    calm_room = await new_consultation(client, coordinator)
    calm_expert = await join("expert", calm_room)
    calm_operator = await join("operator", calm_room)

    mark = {"kind": "arrow", "points": [[0.1, 0.1], [0.2, 0.2]]}
    started = time.monotonic()
    flood = asyncio.gather(*(flooder.call("mark", mark) for _ in range(300)))
    for i in range(10):
        ack = await calm_expert.call(
            "mark", {"kind": "arrow", "points": [[0.1, 0.1], [0.3, i / 10]]}
        )
        assert "seq" in ack
    results = await flood
    elapsed = time.monotonic() - started
    limited = [r for r in results if "error" in r]
    accepted = [r for r in results if "seq" in r]
    assert limited and all(r["error"]["code"] == "rate_limited" for r in limited)
    assert (
        len(accepted) <= 40 + 20 * elapsed + 1
    )  # the burst, plus what the rate refilled meanwhile
    calm_marks = await calm_operator.wait_for("mark", 10)
    assert [m["seq"] for m in calm_marks] == list(range(1, 11))
    snapshot = await client.app[ROOM_LOG].snapshot(join.consultation)
    assert snapshot.last_seq == len(accepted)


async def test_huge_payloads_are_refused_and_a_giant_packet_only_drops_its_sender(
    join: Any,
) -> None:
    operator = await join("operator")
    expert = await join("expert")
    # Within the packet limit (PROBELINK_MAX_BODY_BYTES, 64 KiB): an error ack.
    big = await expert.call("mark", {"kind": "freehand", "points": [[0.5, 0.5]] * 4_000})
    assert big["error"]["code"] == "invalid_field" and big["error"]["field"] == "points"
    assert (
        await expert.call("mark", {"kind": "text", "points": [[0.1, 0.1]], "text": "x" * 60_000})
    )["error"]["field"] == "text"
    # Over it: the server closes the connection; no ack comes.
    with pytest.raises(Exception):  # noqa: B017
        await expert.sio.call("mark", {"blob": "x" * 70_000}, namespace="/live", timeout=3)
    await operator.wait_until(lambda r: any(p["event"] == "leave" for p in r["presence"]))
    assert operator.sio.connected
    ok = await operator.call("mark", {"kind": "text", "points": [[0.2, 0.2]], "text": "still here"})
    assert ok["seq"] == 1
