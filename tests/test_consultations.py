"""The consultation domain on its own: checklist, due time, life cycle (no server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from server.consultations.lifecycle import (
    State,
    accepts_participants,
    on_cancelled,
    on_expert_joined,
    on_report_drafted,
    on_report_signed,
    transition,
)
from server.consultations.model import (
    ClinicalContext,
    Urgency,
    checklist,
    due_at,
    landmarks_missing,
)
from server.errors import BadRequest, Conflict
from server.messages import parse


def context(**fields: object) -> ClinicalContext:
    return parse(
        ClinicalContext,
        {
            "clinical_question": "Thrombus?",
            "urgency": "urgent",
            "incomplete_reason": "test request",
            **fields,
        },
    )


def test_checklist_names_each_missing_item_in_the_reviewers_order() -> None:
    missing = [m.field for m in checklist(context()).missing]
    assert missing == [
        "exam_objective",
        "application",
        "first_read",
        "device",
        "transducer",
        "imaging_modes",
        "anatomy",
        "patient_position",
        "transducer_orientation",
        "comparison_studies",
    ]


def test_device_needs_both_manufacturer_and_model() -> None:
    half = context(device={"manufacturer": "Acme"})
    assert "device" in [m.field for m in checklist(half).missing]
    whole = context(device={"manufacturer": "Acme", "model": "S9"})
    assert "device" not in [m.field for m in checklist(whole).missing]


def test_doppler_settings_are_asked_for_only_when_doppler_was_used() -> None:
    b_mode = context(imaging_modes=["b_mode"])
    assert "doppler" not in [m.field for m in checklist(b_mode).missing]
    spectral = context(imaging_modes=["b_mode", "spectral_doppler"])
    assert "doppler" in [m.field for m in checklist(spectral).missing]
    empty_settings = context(imaging_modes=["color_doppler"], doppler={})
    assert "doppler" in [m.field for m in checklist(empty_settings).missing]
    given = context(imaging_modes=["color_doppler"], doppler={"prf_hz": 1500.0})
    assert "doppler" not in [m.field for m in checklist(given).missing]


def test_an_empty_comparison_list_states_there_are_none() -> None:
    assert "comparison_studies" not in [
        m.field for m in checklist(context(comparison_studies=[])).missing
    ]


def test_comparison_is_asked_for_when_the_question_is_about_change() -> None:
    def missing(**fields: object) -> list[str]:
        return [m.field for m in checklist(context(**fields)).missing]

    # About change: "none" will not do; a prior study must be named.
    assert "comparison_studies" in missing(about_change=True, comparison_studies=[])
    assert "comparison_studies" not in missing(about_change=True, comparison_studies=["US 2025-03"])
    # Not about change: nothing to compare with is asked for.
    assert "comparison_studies" not in missing(about_change=False)
    # Unsaid: the checklist asks, as before.
    assert "comparison_studies" in missing()


def test_due_time_follows_urgency() -> None:
    start = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    minutes = {"emergency": 60, "urgent": 240, "routine": 2880}
    assert due_at(Urgency.EMERGENCY, start, minutes) == start + timedelta(hours=1)
    assert due_at(Urgency.ROUTINE, start, minutes) == start + timedelta(days=2)


def test_life_cycle_allows_only_its_transitions() -> None:
    assert transition(State.REQUESTED, State.LIVE) is State.LIVE
    assert transition(State.REPORTED, State.SIGNED) is State.SIGNED
    # Until it is signed, a coordinator can cancel it (a draft report or not).
    for open_state in (State.REQUESTED, State.LIVE, State.REPORTED):
        assert transition(open_state, State.CANCELLED) is State.CANCELLED
    for frozen in (State.SIGNED, State.CANCELLED):
        with pytest.raises(Conflict):
            transition(frozen, State.LIVE)
        assert not accepts_participants(frozen)
    with pytest.raises(Conflict):
        transition(State.REQUESTED, State.SIGNED)


def test_each_step_of_the_life_cycle_picks_its_state_by_the_transitions() -> None:
    """Handlers and stores ask these; a step where the life cycle has none is refused."""
    assert on_expert_joined(State.REQUESTED) is State.LIVE
    for later in (State.LIVE, State.REPORTED, State.SIGNED, State.CANCELLED):
        assert on_expert_joined(later) is later  # only the first join of a request moves it
    for drafting in (State.REQUESTED, State.LIVE, State.REPORTED):
        assert on_report_drafted(drafting) is State.REPORTED
    assert on_report_signed(State.REPORTED) is State.SIGNED
    for open_state in (State.REQUESTED, State.LIVE, State.REPORTED):
        assert on_cancelled(open_state) is State.CANCELLED
    refused = [
        (on_report_drafted, State.SIGNED),
        (on_report_drafted, State.CANCELLED),
        (on_report_signed, State.LIVE),
        (on_report_signed, State.CANCELLED),
        (on_cancelled, State.SIGNED),
        (on_cancelled, State.CANCELLED),
    ]
    for step, state in refused:
        with pytest.raises(Conflict) as refusal:
            step(state)
        assert refusal.value.code == "invalid_state"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"patient_ref": "John Smith"}, "patient_ref"),
        ({"anatomy": ["x"] * 51}, "anatomy"),
        ({"imaging_modes": ["x_ray"]}, "imaging_modes.0"),
        ({"transducer": {"type": "linear", "serial": "1"}}, "transducer.serial"),
        ({"doppler": {"angle_correction_deg": 120.0}}, "doppler.angle_correction_deg"),
        ({"first_read": True}, "first_read"),
    ],
)
def test_bad_context_is_refused_naming_the_field(fields: dict[str, object], field: str) -> None:
    with pytest.raises(BadRequest) as refused:
        context(**fields)
    assert refused.value.field == field


def test_landmarks_are_asked_for_only_once_there_are_key_images() -> None:
    assert landmarks_missing([]) is False
    assert landmarks_missing([[], [{"kind": "arrow"}]]) is True
    assert landmarks_missing([[], [{"kind": "text", "text": "RT CFV"}]]) is False
