"""Access ends when it should: reassigning or deactivating an expert, signing and cancelling end a
join link's access at once, over HTTP and in the live room, on every node, with the reason shown."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import socketio
from aiohttp.test_utils import TestClient
from conftest import unique_prefix
from live_client import Participant
from phantom import BREAST_REQUEST, phantom_png
from test_report_api import SIGNABLE

from server.app import create_app
from server.auth import Role
from server.config import Settings
from server.consultations.access import Standing, check_access
from server.consultations.lifecycle import State
from server.errors import Forbidden
from server.web.keys import STORE

Client = TestClient[Any, Any]
Headers = dict[str, str]
# Free text of a cancellation: it must never come back in an error or a log line.
CANCEL_NOTE = "Patient transferred to St Elsewhere, MRN 0042"


def bearer(token: str) -> Headers:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(params=["one-node", "redis"])
async def client(
    request: pytest.FixtureRequest, aiohttp_client: Callable[..., Any], settings: Settings
) -> Client:
    """The app on one node (in-process presence and bus) and with Redis (the multi-node code)."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        settings = settings.model_copy(update={"redis_url": url, "redis_prefix": unique_prefix()})
    return await aiohttp_client(create_app(settings))  # type: ignore[no-any-return]


@pytest.fixture
async def people() -> AsyncIterator[list[Participant]]:
    """Live participants to close after the test."""
    joined: list[Participant] = []
    yield joined
    for participant in joined:
        await participant.close()


async def new_request(client: Client, coordinator: Headers, body: dict[str, Any]) -> str:
    response = await client.post("/api/consultations", json=body, headers=coordinator)
    assert response.status == 201, await response.text()
    return str((await response.json())["id"])


async def invite(client: Client, coordinator: Headers, cid: str, role: str) -> str:
    response = await client.post(
        f"/api/consultations/{cid}/invites",
        json={"role": role, "name": f"The {role}"},
        headers=coordinator,
    )
    assert response.status == 201, await response.text()
    return str((await response.json())["token"])


async def register(client: Client, coordinator: Headers, sub: str, **extra: Any) -> None:
    body = {"name": f"Dr {sub}", "subspecialties": ["breast"], **extra}
    response = await client.put(f"/api/experts/{sub}", json=body, headers=coordinator)
    assert response.status == 200, await response.text()


async def accept(client: Client, token_for: Callable[..., str], sub: str, cid: str) -> str:
    response = await client.post(
        f"/api/consultations/{cid}/accept", headers=bearer(token_for("expert", sub=sub))
    )
    assert response.status == 201, await response.text()
    return str((await response.json())["token"])


async def joined(client: Client, people: list[Participant], token: str) -> Participant:
    participant = await Participant(str(client.make_url("/")), token).connect()
    people.append(participant)
    return participant


async def ended(participant: Participant, code: str) -> dict[str, Any]:
    """Wait until the server told the participant why its access ended and disconnected it."""
    [revoked] = await participant.wait_for("revoked")
    await participant.wait_for("disconnect")
    assert not participant.sio.connected
    assert revoked["code"] == code, revoked
    assert isinstance(revoked["message"], str) and revoked["message"]
    return revoked  # type: ignore[no-any-return]


async def refused(client: Client, token: str, path: str, code: str) -> None:
    response = await client.get(path, headers=bearer(token))
    assert response.status == 403, (path, await response.text())
    assert (await response.json())["error"]["code"] == code


async def connect_refusal(client: Client, token: str) -> dict[str, Any]:
    sio = socketio.AsyncClient(reconnection=False)
    errors: list[Any] = []
    sio.on("connect_error", errors.append, namespace="/live")
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sio.connect(
            str(client.make_url("/")), namespaces=["/live"], auth={"token": token}, wait_timeout=5
        )
    await sio.disconnect()
    [error] = errors
    return error["data"]  # type: ignore[no-any-return]


# The rule, as a plain function


def standing(state: State = State.LIVE, **kw: Any) -> Standing:
    return Standing(state=state, assigned_expert=kw.pop("assigned_expert", None), **kw)


@pytest.mark.parametrize(
    ("role", "facts", "code"),
    [
        (Role.OPERATOR, standing(), None),
        (Role.OPERATOR, standing(State.REPORTED), None),
        (Role.OPERATOR, standing(State.SIGNED), "consultation_signed"),
        (Role.OBSERVER, standing(State.SIGNED), "consultation_signed"),
        (Role.EXPERT, standing(State.SIGNED), None),
        (Role.EXPERT, standing(State.CANCELLED, cancel_reason="duplicate"), "consultation_cancelled"),
        (Role.OPERATOR, standing(State.CANCELLED), "consultation_cancelled"),
        # An expert's link from `accept` lasts while they hold the assignment and are active.
        (Role.EXPERT, standing(assigned_expert="lee", link_expert="lee", link_expert_active=True), None),
        (Role.EXPERT, standing(assigned_expert="kim", link_expert="lee", link_expert_active=True), "expert_reassigned"),
        (Role.EXPERT, standing(link_expert="lee", link_expert_active=True), "expert_reassigned"),
        (Role.EXPERT, standing(link_expert="lee", link_expert_active=False), "expert_deactivated"),
        (Role.EXPERT, standing(State.SIGNED, assigned_expert="lee", link_expert="lee", link_expert_active=False), "expert_deactivated"),
        # A coordinator's invite of an expert belongs to no expert's assignment.
        (Role.EXPERT, standing(assigned_expert="kim"), None),
    ],
)  # fmt: skip
def test_access_ends_with_the_consultation_or_the_experts_assignment(
    role: Role, facts: Standing, code: str | None
) -> None:
    if code is None:
        check_access(role, facts)
        return
    with pytest.raises(Forbidden) as refusal:
        check_access(role, facts)
    assert refusal.value.code == code and refusal.value.status == 403


# Against the running server


async def test_reassigning_ends_the_previous_experts_link_at_once(
    client: Client,
    coordinator: Headers,
    token_for: Callable[..., str],
    people: list[Participant],
) -> None:
    lee, kim = f"dr-lee-{unique_prefix()[-6:]}", f"dr-kim-{unique_prefix()[-6:]}"
    for who in (lee, kim):
        await register(client, coordinator, who)
    cid = await new_request(client, coordinator, BREAST_REQUEST)
    first = await accept(client, token_for, lee, cid)
    expert = await joined(client, people, first)
    operator = await joined(client, people, await invite(client, coordinator, cid, "operator"))
    record = f"/api/consultations/{cid}"
    assert (await client.get(record, headers=bearer(first))).status == 200

    moved = await client.post(f"{record}/assign", json={"expert": kim}, headers=coordinator)
    assert moved.status == 200
    revoked = await ended(expert, "expert_reassigned")
    assert "no longer assigned" in revoked["message"]
    for path in (record, f"{record}/key-images", f"{record}/report", "/api/ice-servers"):
        await refused(client, first, path, "expert_reassigned")
    upload = await client.post(
        f"{record}/captures",
        data=phantom_png(1),
        headers={**bearer(first), "Content-Type": "image/png"},
    )
    assert upload.status == 403 and (await upload.json())["error"]["code"] == "expert_reassigned"
    assert (await connect_refusal(client, first))["code"] == "expert_reassigned"

    # The operator stays; the new expert's link opens the room and marks.
    assert operator.sio.connected and "revoked" not in operator.received
    second = await joined(client, people, await accept(client, token_for, kim, cid))
    assert "id" in await second.call("mark", {"kind": "arrow", "points": [[0.1, 0.1], [0.2, 0.2]]})
    # Unassigning ends the new link too.
    await client.post(f"{record}/assign", json={"expert": None}, headers=coordinator)
    await ended(second, "expert_reassigned")


async def test_deactivating_an_expert_ends_their_links(
    client: Client,
    coordinator: Headers,
    token_for: Callable[..., str],
    people: list[Participant],
) -> None:
    lee = f"dr-lee-{unique_prefix()[-6:]}"
    await register(client, coordinator, lee)
    cid = await new_request(client, coordinator, BREAST_REQUEST)
    link = await accept(client, token_for, lee, cid)
    expert = await joined(client, people, link)

    await register(client, coordinator, lee, active=False)
    await ended(expert, "expert_deactivated")
    await refused(client, link, f"/api/consultations/{cid}", "expert_deactivated")
    assert (await connect_refusal(client, link))["code"] == "expert_deactivated"
    # Active again, they are not given the consultation back: the link stays ended.
    await register(client, coordinator, lee, active=True)
    await refused(client, link, f"/api/consultations/{cid}", "expert_reassigned")


async def test_signing_ends_the_bedside_and_observers_access_but_not_the_experts(
    client: Client,
    coordinator: Headers,
    people: list[Participant],
) -> None:
    cid = await new_request(client, coordinator, BREAST_REQUEST)
    tokens = {
        r: await invite(client, coordinator, cid, r) for r in ("operator", "observer", "expert")
    }
    room = {r: await joined(client, people, t) for r, t in tokens.items()}
    expert = bearer(tokens["expert"])
    record = f"/api/consultations/{cid}"
    upload = await client.post(
        f"{record}/captures",
        data=phantom_png(2),
        headers={**expert, "Content-Type": "image/png"},
    )
    assert upload.status == 201, await upload.text()
    key_image = (await upload.json())["key_image_id"]
    draft = {**SIGNABLE, "key_image_ids": [key_image]}
    assert (await client.put(f"{record}/report", json=draft, headers=expert)).status == 200
    signed = await client.post(f"{record}/report/sign", headers=expert)
    assert signed.status == 200, await signed.text()

    for role in ("operator", "observer"):
        revoked = await ended(room[role], "consultation_signed")
        assert "signed" in revoked["message"]
        await refused(client, tokens[role], record, "consultation_signed")
        assert (await connect_refusal(client, tokens[role]))["code"] == "consultation_signed"
    # The expert still reads the record and amends the signed report.
    assert room["expert"].sio.connected and "revoked" not in room["expert"].received
    assert (await client.get(record, headers=expert)).status == 200
    addendum = await client.post(
        f"{record}/report/addenda", json={"text": "Compared with the prior."}, headers=expert
    )
    assert addendum.status == 201


async def test_coordinator_cancels_with_a_reason_and_every_participant_is_let_go(
    client: Client,
    coordinator: Headers,
    people: list[Participant],
    caplog: pytest.LogCaptureFixture,
) -> None:
    cid = await new_request(client, coordinator, BREAST_REQUEST)
    tokens = {
        r: await invite(client, coordinator, cid, r) for r in ("operator", "observer", "expert")
    }
    room = {r: await joined(client, people, t) for r, t in tokens.items()}
    record = f"/api/consultations/{cid}"

    response = await client.post(
        f"{record}/cancel",
        json={"reason": "patient_unavailable", "note": CANCEL_NOTE},
        headers=coordinator,
    )
    assert response.status == 200, await response.text()
    summary = await response.json()
    assert summary["state"] == "cancelled"
    assert summary["cancellation"]["reason"] == "patient_unavailable"
    assert summary["cancellation"]["note"] == CANCEL_NOTE and summary["cancellation"]["at"]

    for role, token in tokens.items():
        revoked = await ended(room[role], "consultation_cancelled")
        assert "patient unavailable" in revoked["message"]
        assert CANCEL_NOTE not in revoked["message"]
        await refused(client, token, record, "consultation_cancelled")
        assert (await connect_refusal(client, token))["code"] == "consultation_cancelled"
    shown = await (await client.get(record, headers=coordinator)).json()
    assert shown["state"] == "cancelled" and shown["cancellation"] == summary["cancellation"]
    listed = await client.get("/api/consultations?state=cancelled", headers=coordinator)
    assert cid in [c["id"] for c in (await listed.json())["consultations"]]

    [entry] = [e for e in await client.app[STORE].audit_entries() if e.facts.object_id == cid
               and e.facts.action == "consultation.cancel"]  # fmt: skip
    assert (entry.facts.actor, entry.facts.outcome) == ("coord-1", "ok")
    assert entry.facts.detail == {"reason": "patient_unavailable", "previous_state": "live"}
    assert CANCEL_NOTE not in caplog.text

    again = await client.post(f"{record}/cancel", json={"reason": "duplicate"}, headers=coordinator)
    assert again.status == 409 and (await again.json())["error"]["code"] == "invalid_state"
    invited = await client.post(
        f"{record}/invites", json={"role": "operator", "name": "Late"}, headers=coordinator
    )
    assert invited.status == 409


async def test_cancel_refuses_bad_input_other_roles_and_closed_consultations(
    client: Client, coordinator: Headers, token_for: Callable[..., str]
) -> None:
    cid = await new_request(client, coordinator, BREAST_REQUEST)
    url = f"/api/consultations/{cid}/cancel"
    for body, code, field in (
        ({}, "missing_field", "reason"),
        ({"reason": "bored"}, "invalid_field", "reason"),
        ({"reason": 3}, "invalid_field", "reason"),
        ({"reason": "other"}, "missing_field", "note"),
        ({"reason": "duplicate", "note": "line\x00break"}, "invalid_field", "note"),
        ({"reason": "duplicate", "note": "x" * 4001}, "invalid_field", "note"),
        ({"reason": "duplicate", "why": CANCEL_NOTE}, "unknown_field", "why"),
    ):
        response = await client.post(url, json=body, headers=coordinator)
        assert response.status == 400, (body, await response.text())
        error = (await response.json())["error"]
        assert (error["code"], error["field"]) == (code, field), body
        assert CANCEL_NOTE not in error["message"] and "bored" not in error["message"]
    empty = await client.post(url, data=b"", headers=coordinator)
    assert empty.status == 400 and (await empty.json())["error"]["code"] == "invalid_json"
    operator = bearer(await invite(client, coordinator, cid, "operator"))
    by_operator = await client.post(url, json={"reason": "duplicate"}, headers=operator)
    assert by_operator.status == 403
    assert (await by_operator.json())["error"]["code"] == "role_not_allowed"
    expert = bearer(token_for("expert", sub="dr-x"))
    assert (await client.post(url, json={"reason": "duplicate"}, headers=expert)).status == 403
    unknown = "f" * 32
    missing = await client.post(
        f"/api/consultations/{unknown}/cancel", json={"reason": "duplicate"}, headers=coordinator
    )
    assert missing.status == 404
    assert (await client.post("/api/consultations/x/cancel", headers=coordinator)).status == 404
    record = await (await client.get(f"/api/consultations/{cid}", headers=coordinator)).json()
    assert record["state"] == "requested" and record["cancellation"] is None

    # "other" with a note is a reason; the note is the record's, not the audit log's.
    other = await client.post(
        url, json={"reason": "other", "note": "  wrong site "}, headers=coordinator
    )
    assert other.status == 200
    assert (await other.json())["cancellation"]["note"] == "wrong site"


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_revocation_disconnects_the_participants_sockets_on_every_node(
    aiohttp_client: Callable[..., Awaitable[Client]],
    settings: Settings,
    redis_url: str,
    coordinator: Headers,
    people: list[Participant],
) -> None:
    shared = settings.model_copy(update={"redis_url": redis_url, "redis_prefix": unique_prefix()})
    node_a = await aiohttp_client(create_app(shared))
    node_b = await aiohttp_client(create_app(shared))
    cid = await new_request(node_a, coordinator, BREAST_REQUEST)
    on_b = await joined(node_b, people, await invite(node_a, coordinator, cid, "operator"))
    on_a = await joined(node_a, people, await invite(node_a, coordinator, cid, "observer"))
    # Cancelled through node A: node B's socket is told and let go too.
    response = await node_a.post(
        f"/api/consultations/{cid}/cancel", json={"reason": "duplicate"}, headers=coordinator
    )
    assert response.status == 200
    for participant in (on_a, on_b):
        await ended(participant, "consultation_cancelled")
