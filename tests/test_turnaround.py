"""Turnaround: request → first expert joined → report signed, summarised for the service."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp.test_utils import TestClient

from server.audit import AuditFacts
from server.consultations.lifecycle import State
from server.consultations.model import ClinicalContext, ConsultationRow
from server.consultations.turnaround import Times, percentile, summarise
from server.live.log import RoomLog
from server.web.keys import STORE

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def times(
    joined_min: float | None,
    signed_min: float | None,
    due_min: float = 60,
    state: State = State.SIGNED,
) -> Times:
    return Times(
        state=state,
        requested_at=T0,
        due_at=T0 + timedelta(minutes=due_min),
        first_joined_at=None if joined_min is None else T0 + timedelta(minutes=joined_min),
        signed_at=None if signed_min is None else T0 + timedelta(minutes=signed_min),
    )


def test_median_and_p90_per_stage_and_what_is_overdue() -> None:
    done = [times(m, m + 10) for m in range(1, 11)]  # joined after 1..10 min, signed 10 min later
    waiting = times(None, None, due_min=30, state=State.REQUESTED)
    late = times(50, 90, due_min=60)
    summary = summarise([*done, waiting, late], now=T0 + timedelta(minutes=45))
    first = summary.stages["request_to_first_join"]
    assert first.count == 11 and first.median_seconds == 6 * 60  # 1..10 and 50: middle is 6
    assert first.p90_seconds == 10 * 60
    signed = summary.stages["request_to_signed"]
    assert signed.count == 11 and signed.median_seconds == 16 * 60
    assert summary.stages["first_join_to_signed"].median_seconds == 10 * 60
    assert summary.overdue_open == 1  # the waiting one, due at 30 min, now 45
    assert summary.signed_late == 1 and summary.consultations == 12


def test_no_consultation_reached_a_stage_has_no_figures() -> None:
    summary = summarise([times(None, None, state=State.REQUESTED)], now=T0)
    assert summary.stages["request_to_signed"].count == 0
    assert summary.stages["request_to_signed"].median_seconds is None
    assert summary.overdue_open == 0


def test_percentile_is_nearest_rank() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.9) == 4.0
    assert percentile([5.0], 0.9) == 5.0
    assert percentile(list(map(float, range(1, 101))), 0.9) == 90.0


async def test_turnaround_endpoint_and_metrics_follow_the_records(
    client: TestClient[Any, Any], coordinator: dict[str, str], token_for: Any
) -> None:
    store = client.app[STORE]
    now = datetime.now(UTC)
    # One request two hours old, due an hour ago, that an expert joined 20 minutes in.
    old = ConsultationRow(
        id=uuid.uuid4().hex,
        state=State.REQUESTED,
        context=ClinicalContext.model_validate(
            {"clinical_question": "DVT?", "urgency": "urgent", "incomplete_reason": "test request"}
        ),
        created_by="desk",
        requested_at=now - timedelta(hours=2),
        due_at=now - timedelta(hours=1),
        updated_at=now - timedelta(hours=2),
    )
    facts = AuditFacts(
        "desk", "coordinator", "consultation.create", "consultation", old.id, "ok", "test", {}
    )
    await store.create_consultation(old, facts)
    body = {"role": "expert", "name": "Dr Lee"}
    invite = await client.post(
        f"/api/consultations/{old.id}/invites", json=body, headers=coordinator
    )
    participant = (await invite.json())["participant"]["id"]
    await RoomLog(store.engine).participant_joined(old.id, participant, is_expert=True)
    # A fresh one nobody joined yet.
    await client.post(
        "/api/consultations",
        json={"clinical_question": "q?", "urgency": "routine", "incomplete_reason": "test request"},
        headers=coordinator,
    )

    response = await client.get("/api/turnaround", headers=coordinator)
    assert response.status == 200
    summary = await response.json()
    assert summary["consultations"] == 2 and summary["overdue_open"] == 1
    first = summary["stages"]["request_to_first_join"]
    assert first["count"] == 1 and 2 * 3600 - 60 < first["median_seconds"] < 2 * 3600 + 60
    assert summary["stages"]["request_to_signed"] == {
        "count": 0,
        "median_seconds": None,
        "p90_seconds": None,
    }
    metrics = await (await client.get("/metrics")).text()
    assert 'probelink_consultations_overdue{kind="open"} 1.0' in metrics
    assert 'probelink_turnaround_seconds{quantile="0.5",stage="request_to_first_join"}' in metrics
    # For the service's coordinators only.
    expert = {"Authorization": f"Bearer {token_for('expert', consultation=old.id)}"}
    assert (await client.get("/api/turnaround", headers=expert)).status == 403
