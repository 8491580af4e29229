"""Experts are offered only what they are credentialed for, accept it, and can be reassigned."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import socketio
from aiohttp.test_utils import TestClient
from servers import Server, cli_env
from sqlalchemy import text

from server.app import load_keyring, token_policy
from server.auth import Role, issue_token, require_consultation, verify_token
from server.config import Settings
from server.consultations.model import Application
from server.errors import Forbidden, Unauthorized
from server.experts.model import credentialed, subspecialty_set
from server.web.keys import STORE

# The app runs on each records store.
both_backends = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)

Client = TestClient[Any, Any]
Headers = dict[str, str]


@pytest.fixture
def sub() -> Callable[[str], str]:
    """Expert subs of this test only (the PostgreSQL experts table outlives a test)."""
    suffix = secrets.token_hex(4)
    return lambda name: f"{name}-{suffix}"


def bearer(token: str) -> Headers:
    return {"Authorization": f"Bearer {token}"}


def reading_room(token_for: Callable[..., str], sub: str) -> Headers:
    """An expert's own token: role expert, no consultation."""
    return bearer(token_for("expert", sub=sub))


async def register(
    client: Client, coordinator: Headers, sub: str, *subspecialties: str, **extra: Any
) -> Any:
    body = {"name": f"Dr {sub}", "subspecialties": list(subspecialties), **extra}
    response = await client.put(f"/api/experts/{sub}", json=body, headers=coordinator)
    assert response.status == 200, await response.text()
    return await response.json()


async def request(
    client: Client, coordinator: Headers, application: str | None, urgency: str = "urgent"
) -> str:
    body: dict[str, Any] = {
        "clinical_question": "Is the finding what the bedside reader thinks it is?",
        "urgency": urgency,
        "incomplete_reason": "bedside point-of-care request",
    }
    if application is not None:
        body["application"] = application
    response = await client.post("/api/consultations", json=body, headers=coordinator)
    assert response.status == 201, await response.text()
    return str((await response.json())["id"])


async def queue(client: Client, headers: Headers) -> Any:
    response = await client.get("/api/consultations", headers=headers)
    assert response.status == 200, await response.text()
    return await response.json()


async def accept(client: Client, headers: Headers, cid: str) -> aiohttp.ClientResponse:
    return await client.post(f"/api/consultations/{cid}/accept", headers=headers)


async def assign(
    client: Client, coordinator: Headers, cid: str, expert: str | None
) -> aiohttp.ClientResponse:
    return await client.post(
        f"/api/consultations/{cid}/assign", json={"expert": expert}, headers=coordinator
    )


async def error_of(response: aiohttp.ClientResponse) -> dict[str, Any]:
    body: dict[str, Any] = (await response.json())["error"]
    return body


async def cancel(client: Client, coordinator: Headers, cid: str) -> None:
    response = await client.post(
        f"/api/consultations/{cid}/cancel", json={"reason": "duplicate"}, headers=coordinator
    )
    assert response.status == 200, await response.text()


async def set_state(client: Client, cid: str, state: str) -> None:
    async with client.app[STORE].transaction() as conn:
        await conn.execute(
            text("UPDATE consultations SET state = :s WHERE id = :id"), {"s": state, "id": cid}
        )


async def audit_actions(client: Client) -> list[tuple[str, str, str]]:
    return [
        (e.facts.actor, e.facts.action, e.facts.outcome)
        for e in await client.app[STORE].audit_entries()
    ]


# The rule, as plain functions


def test_credentials_cover_their_applications_and_unspecified_counts_as_other() -> None:
    assert credentialed(["breast", "vascular"], "breast")
    assert credentialed([Application.DVT], Application.DVT)
    assert not credentialed(["breast"], "dvt")
    assert not credentialed(["breast"], None)
    assert credentialed(["other"], None)
    assert not credentialed([], "breast")
    assert subspecialty_set(["vascular", "breast", "vascular"]) == (
        Application.BREAST,
        Application.VASCULAR,
    )


def test_only_an_expert_has_a_token_without_a_consultation(settings: Settings) -> None:
    ring, policy = load_keyring(settings), token_policy(settings)
    token = issue_token(ring, policy, sub="dr-lee", role=Role.EXPERT, ttl_seconds=60)
    principal = verify_token(token, ring, policy)
    assert principal.is_reading_room and principal.consultation_id is None
    # It is granted no consultation: not even through a missing claim compared with None.
    with pytest.raises(Forbidden) as refused:
        require_consultation(principal, "a" * 32)
    assert refused.value.code == "consultation_not_granted"
    for role in (Role.OPERATOR, Role.OBSERVER):
        with pytest.raises(ValueError, match="needs a consultation"):
            issue_token(ring, policy, sub="p", role=role, ttl_seconds=60)
    scoped = issue_token(
        ring, policy, sub="p1", role=Role.EXPERT, ttl_seconds=60, consultation_id="c" * 32
    )
    assert not verify_token(scoped, ring, policy).is_reading_room
    # A consultation claim that is there must name one, also for an expert; and an operator's
    # or observer's token without one is still refused.
    now = int(time.time())
    for role, consultation in (
        ("expert", ""),
        ("expert", 7),
        ("operator", None),
        ("observer", None),
    ):
        claims = {
            "iss": policy.issuer,
            "aud": policy.audience,
            "sub": "p2",
            "role": role,
            "iat": now,
            "exp": now + 60,
            "consultation": consultation,
        }
        claims = {k: v for k, v in claims.items() if v is not None}
        token = jwt.encode(
            claims, ring.active_secret, algorithm="HS256", headers={"kid": ring.active}
        )
        with pytest.raises(Unauthorized) as missing:
            verify_token(token, ring, policy)
        assert missing.value.code == "token_missing_claim", (role, consultation)


# Credentials (coordinator)


@both_backends
async def test_coordinator_registers_updates_and_lists_experts(
    client: Client, coordinator: Headers, token_for: Callable[..., str], sub: Callable[[str], str]
) -> None:
    lee, kim = sub("dr-lee"), sub("dr-kim")
    created = await register(client, coordinator, lee, "vascular", "breast", "breast")
    assert created["sub"] == lee and created["name"] == f"Dr {lee}" and created["active"] is True
    assert created["subspecialties"] == ["breast", "vascular"]
    await register(client, coordinator, kim, "dvt")
    updated = await register(client, coordinator, lee, "thyroid", name="Dr Lee", active=False)
    assert updated["subspecialties"] == ["thyroid"] and updated["active"] is False
    assert updated["created_at"] == created["created_at"]
    assert updated["updated_at"] > created["updated_at"]

    response = await client.get("/api/experts", headers=coordinator)
    assert response.status == 200
    listed = [e for e in (await response.json())["experts"] if e["sub"] in (lee, kim)]
    assert [e["sub"] for e in listed] == sorted([lee, kim])
    assert next(e for e in listed if e["sub"] == lee) == updated

    actions = [(a, what) for a, what, _ in await audit_actions(client)]
    assert ("coord-1", "expert.register") in actions and ("coord-1", "expert.update") in actions
    # Only coordinators manage credentials.
    expert = reading_room(token_for, kim)
    assert (await client.get("/api/experts", headers=expert)).status == 403
    put = await client.put(
        f"/api/experts/{kim}", json={"name": "Me", "subspecialties": ["breast"]}, headers=expert
    )
    assert put.status == 403 and (await error_of(put))["code"] == "role_not_allowed"


@both_backends
async def test_bad_credentials_are_refused_naming_the_field_without_echoing_it(
    client: Client, coordinator: Headers, sub: Callable[[str], str]
) -> None:
    lee = sub("dr-lee")
    cases: list[tuple[str, Any, str, str | None]] = [
        (lee, {"name": "Dr Lee", "subspecialties": []}, "invalid_field", "subspecialties"),
        (
            lee,
            {"name": "Dr Lee", "subspecialties": ["cardiacX"]},
            "invalid_field",
            "subspecialties.0",
        ),
        (lee, {"subspecialties": ["breast"]}, "missing_field", "name"),
        (lee, {"name": "Dr Lee", "subspecialties": "breast"}, "invalid_field", "subspecialties"),
        (
            lee,
            {"name": "Dr Lee", "subspecialties": ["breast"], "active": "yes"},
            "invalid_field",
            "active",
        ),
        (
            lee,
            {"name": "Dr Lee", "subspecialties": ["breast"], "pager": 1},
            "unknown_field",
            "pager",
        ),
        ("dr%20lee", {"name": "Dr Lee", "subspecialties": ["breast"]}, "invalid_field", "sub"),
        ("x" * 129, {"name": "Dr Lee", "subspecialties": ["breast"]}, "invalid_field", "sub"),
    ]
    for path_sub, body, code, field in cases:
        response = await client.put(f"/api/experts/{path_sub}", json=body, headers=coordinator)
        assert response.status == 400, (path_sub, body)
        error = await error_of(response)
        assert (error["code"], error["field"]) == (code, field), body
        assert "cardiacX" not in error["message"] and "dr lee" not in error["message"]
    listed = (await (await client.get("/api/experts", headers=coordinator)).json())["experts"]
    assert lee not in {e["sub"] for e in listed}


# The expert's queue


@both_backends
async def test_breast_expert_is_offered_breast_requests_and_not_dvt_ones(
    client: Client, coordinator: Headers, token_for: Callable[..., str], sub: Callable[[str], str]
) -> None:
    lee, other = sub("dr-lee"), sub("dr-ng")
    await register(client, coordinator, lee, "breast")
    await register(client, coordinator, other, "breast", "other")
    routine_breast = await request(client, coordinator, "breast", "routine")
    emergency_breast = await request(client, coordinator, "breast", "emergency")
    dvt = await request(client, coordinator, "dvt")
    unspecified = await request(client, coordinator, None)
    taken = await request(client, coordinator, "breast")
    assert (await assign(client, coordinator, taken, other)).status == 200
    signed = await request(client, coordinator, "breast")
    await set_state(client, signed, "signed")

    mine = await queue(client, reading_room(token_for, lee))
    assert [c["id"] for c in mine["consultations"]] == [emergency_breast, routine_breast]
    assert mine["expert"]["sub"] == lee and mine["expert"]["subspecialties"] == ["breast"]
    first = mine["consultations"][0]
    assert first["application"] == "breast" and first["assigned_expert"] is None
    assert first["time_left_seconds"] > 0 and first["overdue"] is False
    assert {"due_at", "urgency", "clinical_question", "checklist"} <= set(first)

    # The second expert sees what is assigned to them and unspecified requests ("other").
    theirs = await queue(client, reading_room(token_for, other))
    ids = [c["id"] for c in theirs["consultations"]]
    assert taken in ids and unspecified in ids and dvt not in ids and signed not in ids
    assert next(c for c in theirs["consultations"] if c["id"] == taken)["assigned_expert"] == other

    # The state filter keeps to open states.
    live_only = await client.get(
        "/api/consultations?state=live", headers=reading_room(token_for, lee)
    )
    assert live_only.status == 200 and (await live_only.json())["consultations"] == []
    closed = await client.get(
        "/api/consultations?state=signed", headers=reading_room(token_for, lee)
    )
    assert closed.status == 400 and (await error_of(closed))["field"] == "state"
    # The coordinator's queue shows everything open, with the assignment.
    everything = (await queue(client, coordinator))["consultations"]
    assert {c["id"]: c["assigned_expert"] for c in everything}[taken] == other


@both_backends
async def test_overdue_requests_show_in_the_expert_queue(
    client: Client, coordinator: Headers, token_for: Callable[..., str], sub: Callable[[str], str]
) -> None:
    lee = sub("dr-lee")
    await register(client, coordinator, lee, "dvt")
    cid = await request(client, coordinator, "dvt", "emergency")
    async with client.app[STORE].transaction() as conn:
        await conn.execute(
            text("UPDATE consultations SET due_at = :due WHERE id = :id"),
            {"due": "2000-01-01T00:00:00.000000Z", "id": cid},
        )
    [late] = (await queue(client, reading_room(token_for, lee)))["consultations"]
    assert late["id"] == cid and late["overdue"] is True and late["time_left_seconds"] < 0


@both_backends
async def test_unregistered_or_inactive_expert_is_refused_and_told_who_can_fix_it(
    client: Client, coordinator: Headers, token_for: Callable[..., str], sub: Callable[[str], str]
) -> None:
    cid = await request(client, coordinator, "breast")
    stranger, retired = sub("dr-who"), sub("dr-old")
    await register(client, coordinator, retired, "breast", active=False)
    for who in (stranger, retired):
        headers = reading_room(token_for, who)
        listed = await client.get("/api/consultations", headers=headers)
        assert listed.status == 403
        error = await error_of(listed)
        assert error["code"] == "not_credentialed" and "coordinator" in error["message"]
        refused = await accept(client, headers, cid)
        assert refused.status == 403 and (await error_of(refused))["code"] == "not_credentialed"
    record = await client.get(f"/api/consultations/{cid}", headers=coordinator)
    assert (await record.json())["assigned_expert"] is None
    outcomes = [o for a, _, o in await audit_actions(client) if a == stranger]
    assert "refused:not_credentialed" in outcomes


# Accepting


@both_backends
async def test_accept_assigns_the_request_and_gives_a_join_link_for_it(
    client: Client, coordinator: Headers, token_for: Callable[..., str], sub: Callable[[str], str]
) -> None:
    lee = sub("dr-lee")
    await register(client, coordinator, lee, "breast", name="Dr Lee")
    cid = await request(client, coordinator, "breast")
    response = await accept(client, reading_room(token_for, lee), cid)
    assert response.status == 201, await response.text()
    joined = await response.json()
    assert joined["participant"]["role"] == "expert" and joined["participant"]["name"] == "Dr Lee"
    assert joined["url"].endswith(f"/join#token={joined['token']}") and joined["expires_at"]

    # The join token is a normal token of this consultation: it reads the record.
    as_participant = await client.get(f"/api/consultations/{cid}", headers=bearer(joined["token"]))
    assert as_participant.status == 200
    record = await as_participant.json()
    assert record["assigned_expert"] == lee
    assert [p["name"] for p in record["participants"]] == ["Dr Lee"]
    url = str(client.make_url("/"))
    sio = socketio.AsyncClient(reconnection=False)
    await sio.connect(url, namespaces=["/live"], auth={"token": joined["token"]}, wait_timeout=5)
    assert sio.connected
    await sio.disconnect()
    # Accepting again (a lost link) gives a new link; the request stays theirs.
    again = await accept(client, reading_room(token_for, lee), cid)
    assert again.status == 201
    assert (lee, "consultation.accept", "ok") in await audit_actions(client)


@both_backends
async def test_accept_refuses_other_subspecialties_closed_and_unknown_requests(
    client: Client, coordinator: Headers, token_for: Callable[..., str], sub: Callable[[str], str]
) -> None:
    lee = sub("dr-lee")
    await register(client, coordinator, lee, "breast")
    headers = reading_room(token_for, lee)
    dvt = await request(client, coordinator, "dvt")
    refused = await accept(client, headers, dvt)
    assert refused.status == 403
    error = await error_of(refused)
    assert error["code"] == "not_credentialed" and "dvt" in error["message"]
    signed = await request(client, coordinator, "breast")
    cancelled = await request(client, coordinator, "breast")
    await set_state(client, signed, "signed")  # signing for real is the report tests' story
    await cancel(client, coordinator, cancelled)
    for closed in (signed, cancelled):
        response = await accept(client, headers, closed)
        assert response.status == 409 and (await error_of(response))["code"] == "invalid_state"
    unknown = await accept(client, headers, "f" * 32)
    assert unknown.status == 404 and (await error_of(unknown))["code"] == "consultation_not_found"
    assert (await accept(client, headers, "not-an-id")).status == 404
    # Only the expert's own token accepts: neither a coordinator nor a join token.
    breast = await request(client, coordinator, "breast")
    assert (await accept(client, coordinator, breast)).status == 403
    join = bearer(token_for("expert", sub=lee, consultation=breast))
    by_join_token = await accept(client, join, breast)
    assert by_join_token.status == 403
    assert (await error_of(by_join_token))["code"] == "reading_room_token_required"
    # Nothing was assigned and nobody was let in by any of these.
    for cid in (dvt, breast):
        record = await (await client.get(f"/api/consultations/{cid}", headers=coordinator)).json()
        assert record["assigned_expert"] is None and record["participants"] == []


@both_backends
async def test_a_second_expert_cannot_accept_an_assigned_request(
    client: Client, coordinator: Headers, token_for: Callable[..., str], sub: Callable[[str], str]
) -> None:
    lee, kim = sub("dr-lee"), sub("dr-kim")
    await register(client, coordinator, lee, "breast")
    await register(client, coordinator, kim, "breast")
    cid = await request(client, coordinator, "breast")
    assert (await accept(client, reading_room(token_for, lee), cid)).status == 201
    refused = await accept(client, reading_room(token_for, kim), cid)
    assert refused.status == 409
    assert (await error_of(refused))["code"] == "assigned_to_another"
    # It left the second expert's queue and stayed in the first's.
    assert cid not in [
        c["id"] for c in (await queue(client, reading_room(token_for, kim)))["consultations"]
    ]
    assert cid in [
        c["id"] for c in (await queue(client, reading_room(token_for, lee)))["consultations"]
    ]
    record = await (await client.get(f"/api/consultations/{cid}", headers=coordinator)).json()
    assert record["assigned_expert"] == lee and len(record["participants"]) == 1


@both_backends
async def test_two_experts_accepting_at_once_get_one_assignment(
    client: Client, coordinator: Headers, token_for: Callable[..., str], sub: Callable[[str], str]
) -> None:
    experts = [sub(f"dr-{i}") for i in range(4)]
    for expert in experts:
        await register(client, coordinator, expert, "vascular")
    cid = await request(client, coordinator, "vascular")
    responses = await asyncio.gather(
        *(accept(client, reading_room(token_for, e), cid) for e in experts)
    )
    statuses = sorted(r.status for r in responses)
    assert statuses == [201, 409, 409, 409]
    winner = experts[[r.status for r in responses].index(201)]
    record = await (await client.get(f"/api/consultations/{cid}", headers=coordinator)).json()
    assert record["assigned_expert"] == winner and len(record["participants"]) == 1


# Reassigning (coordinator)


@both_backends
async def test_coordinator_reassigns_only_to_an_active_credentialed_expert(
    client: Client, coordinator: Headers, token_for: Callable[..., str], sub: Callable[[str], str]
) -> None:
    lee, kim, vascular, retired = sub("dr-lee"), sub("dr-kim"), sub("dr-vas"), sub("dr-old")
    await register(client, coordinator, lee, "breast")
    await register(client, coordinator, kim, "breast")
    await register(client, coordinator, vascular, "vascular")
    await register(client, coordinator, retired, "breast", active=False)
    cid = await request(client, coordinator, "breast")
    assert (await accept(client, reading_room(token_for, lee), cid)).status == 201

    moved = await assign(client, coordinator, cid, kim)
    assert moved.status == 200 and (await moved.json())["assigned_expert"] == kim
    assert (await accept(client, reading_room(token_for, kim), cid)).status == 201
    assert (await accept(client, reading_room(token_for, lee), cid)).status == 409

    for who in (vascular, retired, sub("dr-nobody")):
        refused = await assign(client, coordinator, cid, who)
        assert refused.status == 409, who
        error = await error_of(refused)
        assert (error["code"], error["field"]) == ("not_credentialed", "expert")
    record = await (await client.get(f"/api/consultations/{cid}", headers=coordinator)).json()
    assert record["assigned_expert"] == kim

    unassigned = await assign(client, coordinator, cid, None)
    assert unassigned.status == 200 and (await unassigned.json())["assigned_expert"] is None
    assert cid in [
        c["id"] for c in (await queue(client, reading_room(token_for, lee)))["consultations"]
    ]

    actions = [(what, o) for a, what, o in await audit_actions(client) if a == "coord-1"]
    assert ("consultation.assign", "ok") in actions and ("consultation.unassign", "ok") in actions


@both_backends
async def test_requests_return_to_the_queue_when_their_expert_loses_the_credential(
    client: Client,
    coordinator: Headers,
    token_for: Callable[..., str],
    sub: Callable[[str], str],
) -> None:
    first, second = sub("first"), sub("second")
    await register(client, coordinator, first, "breast", "dvt")
    await register(client, coordinator, second, "breast", "dvt")
    breast = await request(client, coordinator, "breast")
    dvt = await request(client, coordinator, "dvt")
    for cid in (breast, dvt):
        assert (await accept(client, reading_room(token_for, first), cid)).status == 201
    others = {
        c["id"] for c in (await queue(client, reading_room(token_for, second)))["consultations"]
    }
    assert breast not in others and dvt not in others  # both taken
    # No longer credentialed for breast: the breast request is offered again, the DVT one kept.
    await register(client, coordinator, first, "dvt")
    record = await (await client.get(f"/api/consultations/{breast}", headers=coordinator)).json()
    assert record["assigned_expert"] is None
    others = {
        c["id"] for c in (await queue(client, reading_room(token_for, second)))["consultations"]
    }
    assert breast in others and dvt not in others
    # Deactivated: everything they held goes back.
    await register(client, coordinator, first, "dvt", active=False)
    others = {
        c["id"] for c in (await queue(client, reading_room(token_for, second)))["consultations"]
    }
    assert dvt in others
    entries = await client.app[STORE].audit_entries()
    assert ("consultation.unassign", dvt) in {(e.facts.action, e.facts.object_id) for e in entries}


@both_backends
async def test_assign_refuses_bad_input_closed_requests_and_non_coordinators(
    client: Client, coordinator: Headers, token_for: Callable[..., str], sub: Callable[[str], str]
) -> None:
    lee = sub("dr-lee")
    await register(client, coordinator, lee, "breast")
    cid = await request(client, coordinator, "breast")
    for body, code, field in (
        ({}, "missing_field", "expert"),
        ({"expert": "dr lee"}, "invalid_field", "expert"),
        ({"expert": 7}, "invalid_field", "expert"),
        ({"expert": lee, "note": "x"}, "unknown_field", "note"),
    ):
        response = await client.post(
            f"/api/consultations/{cid}/assign", json=body, headers=coordinator
        )
        assert response.status == 400, body
        error = await error_of(response)
        assert (error["code"], error["field"]) == (code, field)
        assert "dr lee" not in error["message"]
    expert = reading_room(token_for, lee)
    by_expert = await client.post(
        f"/api/consultations/{cid}/assign", json={"expert": lee}, headers=expert
    )
    assert by_expert.status == 403
    assert (await assign(client, coordinator, "e" * 32, lee)).status == 404
    await cancel(client, coordinator, cid)
    closed = await assign(client, coordinator, cid, lee)
    assert closed.status == 409 and (await error_of(closed))["code"] == "invalid_state"


# What a reading-room token is not granted


@both_backends
async def test_reading_room_token_neither_reads_a_record_nor_joins_the_live_room(
    client: Client, coordinator: Headers, token_for: Callable[..., str], sub: Callable[[str], str]
) -> None:
    lee = sub("dr-lee")
    await register(client, coordinator, lee, "breast")
    cid = await request(client, coordinator, "breast")
    headers = reading_room(token_for, lee)
    for path in (f"/api/consultations/{cid}", f"/api/consultations/{cid}/key-images"):
        response = await client.get(path, headers=headers)
        assert response.status == 403, path
        assert (await error_of(response))["code"] == "consultation_not_granted"
    # Nor after accepting: the record is read with the join token it gave.
    assert (await accept(client, headers, cid)).status == 201
    assert (await client.get(f"/api/consultations/{cid}", headers=headers)).status == 403

    sio = socketio.AsyncClient(reconnection=False)
    errors: list[Any] = []
    sio.on("connect_error", errors.append, namespace="/live")
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sio.connect(
            str(client.make_url("/")),
            namespaces=["/live"],
            auth={"token": token_for("expert", sub=lee)},
            wait_timeout=5,
        )
    await sio.disconnect()
    [error] = errors
    assert error["data"]["code"] == "consultation_not_granted"
    assert "reading-room" in error["message"]
    live_refusals = [
        (a, o) for a, what, o in await audit_actions(client) if what == "socketio connect /live"
    ]
    assert live_refusals == [(lee, "refused:consultation_not_granted")]


# The command line


def probelink(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args], env=env, capture_output=True, text=True, timeout=60
    )


async def test_cli_expert_add_then_their_token_lists_and_accepts_requests(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "var")

    def cli(*args: str) -> str:
        result = probelink(*args, env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout

    with Server(env) as server:
        added = await asyncio.to_thread(
            cli,
            "expert", "add", "--sub", "dr-lee", "--name", "Dr Lee",
            "--subspecialty", "breast", "--subspecialty", "vascular",
        )  # fmt: skip
        assert "dr-lee registered" in added and "breast, vascular" in added
        listed = await asyncio.to_thread(cli, "expert", "list")
        assert listed.splitlines() == ["dr-lee\tactive\tbreast,vascular\tDr Lee"]
        expert = bearer(
            (await asyncio.to_thread(cli, "token", "--role", "expert", "--sub", "dr-lee")).strip()
        )
        desk = bearer(
            (
                await asyncio.to_thread(cli, "token", "--role", "coordinator", "--sub", "desk")
            ).strip()
        )
        async with aiohttp.ClientSession(server.url) as http:
            ids = []
            for application in ("vascular", "dvt"):
                async with http.post(
                    "/api/consultations",
                    json={
                        "clinical_question": "Stenosis?",
                        "urgency": "urgent",
                        "application": application,
                        "incomplete_reason": "bedside request",
                    },
                    headers=desk,
                ) as response:
                    assert response.status == 201, await response.text()
                    ids.append((await response.json())["id"])
            async with http.get("/api/consultations", headers=expert) as response:
                assert response.status == 200, await response.text()
                assert [c["id"] for c in (await response.json())["consultations"]] == ids[:1]
            async with http.post(f"/api/consultations/{ids[0]}/accept", headers=expert) as response:
                assert response.status == 201, await response.text()
                assert (await response.json())["participant"]["name"] == "Dr Lee"
        # Updating from the command line takes effect at once.
        updated = await asyncio.to_thread(
            cli,
            "expert",
            "add",
            "--sub",
            "dr-lee",
            "--name",
            "Dr Lee",
            "--subspecialty",
            "dvt",
            "--inactive",
        )
        assert "dr-lee updated (inactive)" in updated
        async with aiohttp.ClientSession(server.url) as http:
            async with http.get("/api/consultations", headers=expert) as response:
                assert response.status == 403


def test_cli_expert_commands_refuse_bad_input_and_a_data_directory_without_records(
    tmp_path: Path,
) -> None:
    elsewhere = cli_env(tmp_path / "elsewhere")
    for command in (
        ("expert", "list"),
        ("expert", "add", "--sub", "dr", "--name", "Dr", "--subspecialty", "breast"),
    ):
        result = probelink(*command, env=elsewhere)
        assert result.returncode == 2, command
        assert "no records store" in result.stderr and "probelink serve" in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "elsewhere").exists()
    env = cli_env(tmp_path / "var")
    bad = [
        ("--sub", "dr lee", "--name", "Dr", "--subspecialty", "breast"),
        ("--sub", "dr", "--name", " ", "--subspecialty", "breast"),
        ("--sub", "dr", "--name", "Dr", "--subspecialty", "cardiac"),
        ("--sub", "dr", "--name", "Dr"),
    ]
    for args in bad:
        result = probelink("expert", "add", *args, env=env)
        assert result.returncode == 2, args
        assert "Traceback" not in result.stderr and result.stdout == ""
    # Operators and observers still need their consultation; an expert does not.
    with Server(env):
        pass  # creates the data directory, its key ring and records
    for role in ("operator", "observer"):
        refused = probelink("token", "--role", role, "--sub", "p", env=env)
        assert refused.returncode == 2 and "needs a consultation" in refused.stderr
    assert probelink("token", "--role", "expert", "--sub", "dr", env=env).returncode == 0


async def test_the_coordinators_queue_names_whom_each_request_may_be_assigned_to(
    client: Client, coordinator: Headers, sub: Callable[[str], str]
) -> None:
    """The queue page used to apply its own copy of the credentialing rule."""
    await register(client, coordinator, sub("breast-a"), "breast")
    await register(client, coordinator, sub("vascular"), "dvt")
    await register(client, coordinator, sub("breast-off"), "breast", active=False)
    await register(client, coordinator, sub("generalist"), "other", "breast")
    breast = await request(client, coordinator, "breast")
    unnamed = await request(client, coordinator, None)
    queue = await (await client.get("/api/consultations", headers=coordinator)).json()
    offered = {c["id"]: set(c["credentialed_experts"]) for c in queue["consultations"]}
    assert offered[breast] == {sub("breast-a"), sub("generalist")}
    assert offered[unnamed] == {sub("generalist")}  # no application: "other"
