"""A coordinator requests a consultation, sees the queue and invites the people who will join."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.config import Settings
from server.consultations.lexicon import Compressibility, DvtSegment
from server.consultations.lifecycle import State
from server.live.room import Cue, Guidance
from server.web.keys import STORE

# The app runs on each records store.
pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)

FULL_CONTEXT: dict[str, Any] = {
    "clinical_question": "Palpable lump left breast at 2 o'clock: solid or cystic?",
    "urgency": "urgent",
    "exam_objective": "Characterise the palpable lump",
    "application": "breast",
    "patient_ref": "PSN-0042",
    "first_read": "Oval circumscribed hypoechoic mass, BI-RADS 3",
    "device": {"manufacturer": "Acme Ultrasound", "model": "Sono 9"},
    "transducer": {"model": "L12-5", "type": "linear", "frequency_mhz": 12},
    "imaging_modes": ["b_mode", "color_doppler"],
    "doppler": {"prf_hz": 1200, "wall_filter_hz": 50},
    "anatomy": ["left breast upper outer quadrant", "left axilla"],
    "laterality": "left",
    "patient_position": "supine oblique",
    "transducer_orientation": "radial and antiradial",
    "comparison_studies": [],
    "breast": {"lesion_clock": "2", "distance_from_nipple_cm": 4, "first_read_birads": "3"},
}


async def create(
    client: TestClient[Any, Any], headers: dict[str, str], body: dict[str, Any]
) -> Any:
    response = await client.post("/api/consultations", json=body, headers=headers)
    assert response.status == 201, await response.text()
    return await response.json()


async def test_minimal_request_is_accepted_and_checklist_names_what_is_missing(
    client: TestClient[Any, Any], coordinator: dict[str, str]
) -> None:
    record = await create(
        client,
        coordinator,
        {
            "clinical_question": "DVT left leg?",
            "urgency": "emergency",
            "incomplete_reason": "test request",
        },
    )
    assert record["state"] == "requested"
    assert record["urgency"] == "emergency"
    assert record["checklist"]["complete"] is False
    missing = {m["field"]: m for m in record["checklist"]["missing"]}
    assert {"exam_objective", "device", "transducer", "anatomy", "comparison_studies"} <= set(
        missing
    )
    assert "doppler" not in missing  # only asked for when a Doppler mode was used
    assert all(m["why"] and m["label"] for m in missing.values())
    assert (
        record["participants"] == []
        and record["marks"] == []
        and record["report"]["current"] is None
    )


async def test_draft_checklist_follows_the_form_and_stores_nothing(
    client: TestClient[Any, Any], coordinator: dict[str, str]
) -> None:
    async def check(body: dict[str, Any]) -> Any:
        response = await client.post("/api/consultations/checklist", json=body, headers=coordinator)
        assert response.status == 200, await response.text()
        return await response.json()

    empty = await check({})
    assert [m["field"] for m in empty["required_missing"]] == ["clinical_question", "urgency"]
    assert empty["complete"] is False and "device" in {m["field"] for m in empty["missing"]}
    blank = await check(
        {"clinical_question": "   ", "urgency": "urgent", "incomplete_reason": "test request"}
    )
    assert [m["field"] for m in blank["required_missing"]] == ["clinical_question"]
    assert await check(FULL_CONTEXT) == {
        "complete": True,
        "required_missing": [],
        "missing": [],
        "flags": [],
    }
    # Choosing a Doppler mode adds its settings to what is missing.
    doppler = await check({"imaging_modes": ["power_doppler"]})
    assert "doppler" in {m["field"] for m in doppler["missing"]}
    # Every other field is validated as for a real request, naming the field.
    bad = await client.post(
        "/api/consultations/checklist",
        json={"transducer": {"frequency_mhz": 500}},
        headers=coordinator,
    )
    assert bad.status == 400
    assert (await bad.json())["error"]["field"] == "transducer.frequency_mhz"
    not_object = await client.post("/api/consultations/checklist", data=b"[]", headers=coordinator)
    assert (await not_object.json())["error"]["code"] == "invalid_json"
    queue = await (await client.get("/api/consultations", headers=coordinator)).json()
    assert queue["consultations"] == []


async def test_incomplete_request_is_sent_only_with_a_reason_the_expert_sees(
    client: TestClient[Any, Any], coordinator: dict[str, str], token_for: Any
) -> None:
    bare = {"clinical_question": "DVT left leg?", "urgency": "emergency"}
    refused = await client.post("/api/consultations", json=bare, headers=coordinator)
    assert refused.status == 400
    error = (await refused.json())["error"]
    assert error["code"] == "incomplete_request" and error["field"] == "incomplete_reason"
    assert "Exam objective" in error["message"]
    queue = await (await client.get("/api/consultations", headers=coordinator)).json()
    assert queue["consultations"] == []  # nothing stored
    reason = "Patient is unstable; scanning what we can now"
    record = await create(client, coordinator, {**bare, "incomplete_reason": reason})
    assert record["incomplete_reason"] == reason
    expert = {"Authorization": f"Bearer {token_for('expert', consultation=record['id'])}"}
    seen = await (await client.get(f"/api/consultations/{record['id']}", headers=expert)).json()
    assert seen["incomplete_reason"] == reason
    # A complete request needs no reason.
    assert (await create(client, coordinator, FULL_CONTEXT))["incomplete_reason"] is None


async def test_breast_and_dvt_templates_add_their_items_and_flags(
    client: TestClient[Any, Any], coordinator: dict[str, str]
) -> None:
    breast = {
        **FULL_CONTEXT,
        "breast": {"lesion_clock": "2:30", "distance_from_nipple_cm": 3, "first_read_birads": "4B"},
    }
    record = await create(client, coordinator, breast)
    assert record["checklist"]["complete"] is True
    assert [f["code"] for f in record["flags"]] == ["review_before_biopsy"]
    # Category 0 asks what additional imaging: not complete, so a reason is needed to send it.
    zero = {
        **FULL_CONTEXT,
        "breast": {"lesion_clock": "2", "distance_from_nipple_cm": 3, "first_read_birads": "0"},
    }
    refused = await client.post("/api/consultations", json=zero, headers=coordinator)
    assert (await refused.json())["error"]["code"] == "incomplete_request"
    check = await client.post("/api/consultations/checklist", json=zero, headers=coordinator)
    assert [m["field"] for m in (await check.json())["missing"]] == ["breast.additional_imaging"]
    dvt = {
        **FULL_CONTEXT,
        "application": "dvt",
        "dvt": {
            "segments_examined": ["common_femoral", "popliteal"],
            "compressibility": {"common_femoral": "compressible"},
            "symptoms_persist_after_negative": True,
        },
    }
    check = await client.post("/api/consultations/checklist", json=dvt, headers=coordinator)
    answer = await check.json()
    assert [m["field"] for m in answer["missing"]] == [
        "dvt.compressibility.popliteal",
        "dvt.prior_scan",
    ]
    assert [f["code"] for f in answer["flags"]] == ["repeat_scan"]
    bad_segment = {**dvt, "dvt": {"segments_examined": ["left_ear"]}}
    bad = await client.post("/api/consultations", json=bad_segment, headers=coordinator)
    assert bad.status == 400 and (await bad.json())["error"]["field"].startswith(
        "dvt.segments_examined"
    )


async def test_draft_checklist_is_for_coordinators(
    client: TestClient[Any, Any], coordinator: dict[str, str], token_for: Any
) -> None:
    record = await create(
        client,
        coordinator,
        {"clinical_question": "q?", "urgency": "routine", "incomplete_reason": "test request"},
    )
    expert = {"Authorization": f"Bearer {token_for('expert', consultation=record['id'])}"}
    response = await client.post("/api/consultations/checklist", json={}, headers=expert)
    assert response.status == 403


async def test_complete_request_has_a_complete_checklist_and_round_trips(
    client: TestClient[Any, Any], coordinator: dict[str, str]
) -> None:
    record = await create(client, coordinator, FULL_CONTEXT)
    assert record["checklist"] == {"complete": True, "missing": []}
    again = await client.get(f"/api/consultations/{record['id']}", headers=coordinator)
    assert again.status == 200
    body = await again.json()
    assert body["context"]["device"] == FULL_CONTEXT["device"]
    assert body["context"]["comparison_studies"] == []
    assert body["due_at"] > body["requested_at"]


async def test_doppler_mode_without_settings_is_flagged(
    client: TestClient[Any, Any], coordinator: dict[str, str]
) -> None:
    body = {**FULL_CONTEXT, "incomplete_reason": "settings not shown on this scanner"}
    del body["doppler"]
    record = await create(client, coordinator, body)
    assert [m["field"] for m in record["checklist"]["missing"]] == ["doppler"]


async def test_queue_puts_emergencies_first_then_earliest_due(
    client: TestClient[Any, Any], coordinator: dict[str, str]
) -> None:
    routine = await create(
        client,
        coordinator,
        {"clinical_question": "q1", "urgency": "routine", "incomplete_reason": "test request"},
    )
    emergency = await create(
        client,
        coordinator,
        {"clinical_question": "q2", "urgency": "emergency", "incomplete_reason": "test request"},
    )
    urgent = await create(
        client,
        coordinator,
        {"clinical_question": "q3", "urgency": "urgent", "incomplete_reason": "test request"},
    )
    response = await client.get("/api/consultations", headers=coordinator)
    assert response.status == 200
    queue = (await response.json())["consultations"]
    assert [c["id"] for c in queue] == [emergency["id"], urgent["id"], routine["id"]]
    assert all(c["time_left_seconds"] > 0 and c["overdue"] is False for c in queue)

    signed_only = await client.get("/api/consultations?state=signed", headers=coordinator)
    assert (await signed_only.json())["consultations"] == []
    bad = await client.get("/api/consultations?state=bogus", headers=coordinator)
    assert bad.status == 400
    assert (await bad.json())["error"]["field"] == "state"


async def test_invite_gives_a_scoped_join_link_that_opens_only_its_consultation(
    client: TestClient[Any, Any], coordinator: dict[str, str]
) -> None:
    mine = await create(client, coordinator, FULL_CONTEXT)
    other = await create(
        client,
        coordinator,
        {"clinical_question": "q", "urgency": "routine", "incomplete_reason": "test request"},
    )
    response = await client.post(
        f"/api/consultations/{mine['id']}/invites",
        json={"role": "expert", "name": "Dr Breast Expert"},
        headers=coordinator,
    )
    assert response.status == 201, await response.text()
    invite = await response.json()
    assert invite["url"].endswith(f"/join#token={invite['token']}")
    claims = jwt.decode(invite["token"], options={"verify_signature": False})
    assert claims["role"] == "expert" and claims["consultation"] == mine["id"]

    expert = {"Authorization": f"Bearer {invite['token']}"}
    record = await (await client.get(f"/api/consultations/{mine['id']}", headers=expert)).json()
    assert [(p["role"], p["name"]) for p in record["participants"]] == [
        ("expert", "Dr Breast Expert")
    ]

    refused = await client.get(f"/api/consultations/{other['id']}", headers=expert)
    assert refused.status == 403
    assert (await refused.json())["error"]["code"] == "consultation_not_granted"
    queue = await client.get("/api/consultations", headers=expert)
    assert queue.status == 403
    assert (await queue.json())["error"]["code"] == "role_not_allowed"
    invite_more = await client.post(
        f"/api/consultations/{mine['id']}/invites",
        json={"role": "expert", "name": "x"},
        headers=expert,
    )
    assert invite_more.status == 403


async def test_invite_refuses_coordinator_role_and_unknown_consultation(
    client: TestClient[Any, Any], coordinator: dict[str, str]
) -> None:
    record = await create(
        client,
        coordinator,
        {"clinical_question": "q", "urgency": "routine", "incomplete_reason": "test request"},
    )
    bad_role = await client.post(
        f"/api/consultations/{record['id']}/invites",
        json={"role": "coordinator", "name": "x"},
        headers=coordinator,
    )
    assert bad_role.status == 400
    assert (await bad_role.json())["error"]["field"] == "role"
    missing = await client.post(
        f"/api/consultations/{'0' * 32}/invites",
        json={"role": "expert", "name": "x"},
        headers=coordinator,
    )
    assert missing.status == 404
    malformed = await client.get("/api/consultations/..%2Fetc", headers=coordinator)
    assert malformed.status == 404


async def test_bad_bodies_get_a_clear_error_naming_the_field_and_change_nothing(
    client: TestClient[Any, Any], coordinator: dict[str, str]
) -> None:
    cases: list[tuple[Any, int, str, str | None]] = [
        ({"urgency": "routine"}, 400, "missing_field", "clinical_question"),
        ({"clinical_question": "q", "urgency": "soon"}, 400, "invalid_field", "urgency"),
        (
            {"clinical_question": 5, "urgency": "routine", "incomplete_reason": "test request"},
            400,
            "invalid_field",
            "clinical_question",
        ),
        (
            {
                "clinical_question": "q",
                "urgency": "routine",
                "incomplete_reason": "test request",
                "mrn": "1",
            },
            400,
            "unknown_field",
            "mrn",
        ),
        (
            {
                "clinical_question": "q",
                "urgency": "routine",
                "incomplete_reason": "test request",
                "patient_ref": "Jane Doe",
            },
            400,
            "invalid_field",
            "patient_ref",
        ),
        (
            {
                "clinical_question": "q",
                "urgency": "routine",
                "incomplete_reason": "test request",
                "transducer": {"frequency_mhz": -1},
            },
            400,
            "invalid_field",
            "transducer.frequency_mhz",
        ),
        (
            {"clinical_question": "   ", "urgency": "routine", "incomplete_reason": "test request"},
            400,
            "invalid_field",
            "clinical_question",
        ),
        ([1, 2], 400, "invalid_json", None),
    ]
    for body, status, code, field in cases:
        response = await client.post("/api/consultations", json=body, headers=coordinator)
        assert response.status == status, body
        error = (await response.json())["error"]
        assert (error["code"], error["field"]) == (code, field), body
        assert "Jane" not in error["message"]
    for raw in (
        b"",
        b"{",
        b"\xff\xfe",
        b'{"clinical_question": NaN, "urgency": "routine", "incomplete_reason": "test request"}',
    ):
        response = await client.post("/api/consultations", data=raw, headers=coordinator)
        assert response.status == 400, raw
    big = {
        "clinical_question": "x" * 70_000,
        "urgency": "routine",
        "incomplete_reason": "test request",
    }
    response = await client.post("/api/consultations", json=big, headers=coordinator)
    assert response.status == 413
    assert (await response.json())["error"]["code"] == "payload_too_large"
    assert await client.app[STORE].list_consultations(set(State)) == []


async def test_unknown_route_and_method_answer_in_the_error_format(
    client: TestClient[Any, Any], coordinator: dict[str, str]
) -> None:
    response = await client.get("/api/nothing-here", headers=coordinator)
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"
    response = await client.delete("/api/consultations", headers=coordinator)
    assert response.status == 405
    assert (await response.json())["error"]["code"] == "method_not_allowed"


async def test_health_and_metrics(
    client: TestClient[Any, Any], coordinator: dict[str, str]
) -> None:
    health = await client.get("/healthz")
    assert health.status == 200
    assert (await health.json())["status"] == "ok"
    await create(
        client,
        coordinator,
        {"clinical_question": "q", "urgency": "urgent", "incomplete_reason": "test request"},
    )
    await client.get("/api/consultations")  # refused: no token
    text = await (await client.get("/metrics")).text()
    assert 'probelink_consultations_created_total{urgency="urgent"} 1.0' in text
    assert 'probelink_auth_refusals_total{code="token_missing"} 1.0' in text
    assert 'route="/api/consultations"' in text
    assert "probelink_build_info" in text


async def test_text_with_control_characters_is_refused_naming_the_field(
    client: TestClient[Any, Any], coordinator: dict[str, str]
) -> None:
    record = await create(
        client,
        coordinator,
        {"clinical_question": "q", "urgency": "routine", "incomplete_reason": "test request"},
    )
    invites = f"/api/consultations/{record['id']}/invites"
    # C0 and C1 controls, DEL, and the bidirectional overrides and isolates that make a name read
    # differently from what it holds.
    names = ("a\u0000", "Dr\u0007Lee", "\u001bLee", "x\u000by", "a\u007f", "Le\u0085e")
    for name in (*names, "Dr \u202eeeL", "Dr \u2066Lee\u2069"):
        response = await client.post(
            invites, json={"role": "expert", "name": name}, headers=coordinator
        )
        assert response.status == 400, name
        error = (await response.json())["error"]
        assert (error["code"], error["field"]) == ("invalid_field", "name")
        assert "control character" in error["message"]
    response = await client.post(
        "/api/consultations",
        json={
            "clinical_question": "lump\u0000?",
            "urgency": "routine",
            "incomplete_reason": "test request",
            "anatomy": ["a\u202e"],
        },
        headers=coordinator,
    )
    assert response.status == 400
    assert (await response.json())["error"]["field"] == "clinical_question"
    # Tabs and line breaks are text, not control.
    multiline = {
        "clinical_question": "Lump?\r\n\tSolid or cystic?",
        "urgency": "routine",
        "incomplete_reason": "test request",
    }
    assert (await create(client, coordinator, multiline))["clinical_question"] == (
        multiline["clinical_question"]
    )
    assert len(await client.app[STORE].participants(record["id"])) == 0


async def test_unknown_field_is_named_only_when_it_looks_like_a_field_name(
    client: TestClient[Any, Any], coordinator: dict[str, str]
) -> None:
    for key, field in (
        ("mrn", "mrn"),
        ("Jane Doe 1970-01-01", None),
        ("x" * 200, None),
        ("mrn\u0000", None),
    ):
        response = await client.post(
            "/api/consultations",
            json={
                "clinical_question": "q",
                "urgency": "routine",
                "incomplete_reason": "test request",
                key: "1",
            },
            headers=coordinator,
        )
        error = (await response.json())["error"]
        assert (response.status, error["code"], error["field"]) == (400, "unknown_field", field)
        if field is None:
            assert error["message"] == "unknown field"
    response = await client.post(
        "/api/consultations",
        json={
            "clinical_question": "q",
            "urgency": "routine",
            "incomplete_reason": "test request",
            "device": {"Jane Doe": 1},
        },
        headers=coordinator,
    )
    error = (await response.json())["error"]
    assert (error["field"], error["message"]) == ("device", "unknown field in 'device'")


async def test_consultation_id_with_a_trailing_newline_is_not_found(
    client: TestClient[Any, Any], coordinator: dict[str, str], token_for: Any
) -> None:
    record = await create(
        client,
        coordinator,
        {"clinical_question": "q", "urgency": "routine", "incomplete_reason": "test request"},
    )
    expert = {"Authorization": f"Bearer {token_for('expert', consultation=record['id'])}"}
    response = await client.get(f"/api/consultations/{record['id']}%0A", headers=expert)
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "consultation_not_found"


async def test_refusal_audit_keeps_a_short_safe_object_id(client: TestClient[Any, Any]) -> None:
    # Two reasons, so two bursts of refusals (server.web.refusals): each is audited at once.
    for path_id, stored, header, code in (
        ("%00" + "a" * 5000, "_" + "a" * 63, {}, "token_missing"),
        ("abc%0Adef..%2F", "abc_def___", {"Authorization": "Basic x"}, "token_malformed"),
    ):
        response = await client.get(f"/api/consultations/{path_id}", headers=header)
        assert response.status == 401
        last = (await client.app[STORE].audit_entries())[-1]
        assert (last.facts.outcome, last.facts.object_id) == (f"refused:{code}", stored)
    assert (await client.app[STORE].verify_audit()).entries == 2


async def test_invite_name_fits_the_join_token(
    client: TestClient[Any, Any], coordinator: dict[str, str]
) -> None:
    record = await create(
        client,
        coordinator,
        {"clinical_question": "q", "urgency": "routine", "incomplete_reason": "test request"},
    )
    invites = f"/api/consultations/{record['id']}/invites"
    too_long = await client.post(
        invites, json={"role": "expert", "name": "n" * 129}, headers=coordinator
    )
    assert too_long.status == 400
    assert (await too_long.json())["error"]["field"] == "name"
    longest = await client.post(
        invites, json={"role": "expert", "name": "n" * 128}, headers=coordinator
    )
    assert longest.status == 201
    token = (await longest.json())["token"]
    joined = await client.get(
        f"/api/consultations/{record['id']}", headers={"Authorization": f"Bearer {token}"}
    )
    assert joined.status == 200


async def test_an_invite_that_cannot_be_signed_leaves_no_participant(
    aiohttp_client: Callable[..., Any], settings: Settings, coordinator: dict[str, str]
) -> None:
    # A configuration that load_settings refuses, as if it had slipped through.
    unsigned = settings.model_copy(update={"token_max_ttl_seconds": 3600})
    client = await aiohttp_client(create_app(unsigned))
    record = await create(
        client,
        coordinator,
        {"clinical_question": "q", "urgency": "routine", "incomplete_reason": "test request"},
    )
    response = await client.post(
        f"/api/consultations/{record['id']}/invites",
        json={"role": "expert", "name": "Dr Lee"},
        headers=coordinator,
    )
    assert response.status == 500
    store = client.app[STORE]
    assert await store.participants(record["id"]) == []
    assert [e.facts.action for e in await store.audit_entries()] == ["consultation.create"]


async def test_reading_a_record_is_audited_with_who_read_it(
    client: TestClient[Any, Any], coordinator: dict[str, str], token_for: Callable[..., str]
) -> None:
    record = await create(
        client,
        coordinator,
        {"clinical_question": "q", "urgency": "routine", "incomplete_reason": "test request"},
    )
    expert = {"Authorization": f"Bearer {token_for('expert', 'dr-lee', record['id'])}"}
    assert (await client.get(f"/api/consultations/{record['id']}", headers=expert)).status == 200
    missing = await client.get(f"/api/consultations/{'0' * 32}", headers=coordinator)
    assert missing.status == 404
    entries = await client.app[STORE].audit_entries()
    reads = [e.facts for e in entries if e.facts.action == "consultation.read"]
    assert [(f.actor, f.role, f.object_type, f.object_id, f.outcome) for f in reads] == [
        ("dr-lee", "expert", "consultation", record["id"], "ok")
    ]
    assert (await client.app[STORE].verify_audit()).ok


async def test_the_vocabulary_is_the_one_the_server_checks(
    client: TestClient[Any, Any], coordinator: dict[str, str]
) -> None:
    assert (await client.get("/api/vocabulary")).status == 401
    vocabulary = await (await client.get("/api/vocabulary", headers=coordinator)).json()
    assert set(vocabulary["guidance"]) == {c.value for c in Cue}
    for cue, directions in vocabulary["guidance"].items():
        for direction in directions:  # each one offered is accepted
            Guidance.model_validate({"cue": cue, "direction": direction})
    assert [s["value"] for s in vocabulary["dvt"]["segments"]] == [s.value for s in DvtSegment]
    grades = [c["value"] for c in vocabulary["dvt"]["compressibility"]]
    assert grades == [c.value for c in Compressibility]
