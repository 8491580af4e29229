"""Application templates on their own: breast and DVT fields, items and flags (no server)."""

from __future__ import annotations

import json

import pytest

from server.consultations.applications import (
    CATEGORIES,
    BiRads,
    BreastContext,
    Compressibility,
    DvtContext,
    DvtSegment,
    category_label,
    template_flags,
    template_items,
)
from server.errors import BadRequest
from server.messages import parse

LOCATED = {"lesion_clock": "2:30", "distance_from_nipple_cm": 3}


def breast(**fields: object) -> BreastContext:
    return parse(BreastContext, fields)


def dvt(**fields: object) -> DvtContext:
    return parse(DvtContext, fields)


def fields_of(application: str, b: BreastContext | None, d: DvtContext | None) -> list[str]:
    return [item.field for item in template_items(application, b, d)]


def test_breast_request_without_context_asks_for_location_and_first_read() -> None:
    assert fields_of("breast", None, None) == [
        "breast.lesion_clock",
        "breast.distance_from_nipple_cm",
        "breast.first_read_birads",
    ]


def test_lesion_location_needs_both_clock_face_and_distance() -> None:
    only_clock = breast(lesion_clock="11", first_read_birads="3")
    assert fields_of("breast", only_clock, None) == ["breast.distance_from_nipple_cm"]
    only_distance = breast(distance_from_nipple_cm=4.5, first_read_birads="3")
    assert fields_of("breast", only_distance, None) == ["breast.lesion_clock"]
    assert fields_of("breast", breast(**LOCATED, first_read_birads="2"), None) == []


def test_birads_0_asks_what_additional_imaging() -> None:
    items = template_items("breast", breast(**LOCATED, first_read_birads="0"), None)
    assert [i.field for i in items] == ["breast.additional_imaging"]
    assert items[0].why == "Category 0 means the first read needs more imaging: which?"
    answered = breast(**LOCATED, first_read_birads="0", additional_imaging="Diagnostic mammogram")
    assert template_items("breast", answered, None) == ()


@pytest.mark.parametrize("category", ["4", "4A", "4B", "4C"])
def test_birads_4_flags_review_before_biopsy(category: str) -> None:
    flags = template_flags("breast", breast(first_read_birads=category), None)
    assert [f.code for f in flags] == ["review_before_biopsy"]
    assert "before biopsy" in flags[0].message


@pytest.mark.parametrize("category", ["0", "3", "5", None])
def test_other_birads_categories_raise_no_flag(category: str | None) -> None:
    assert template_flags("breast", breast(first_read_birads=category), None) == ()


@pytest.mark.parametrize("clock", ["0", "13", "2:15", "02", "12:60", "two"])
def test_clock_face_position_must_be_an_hour_or_half_hour(clock: str) -> None:
    with pytest.raises(BadRequest) as refused:
        breast(lesion_clock=clock)
    assert refused.value.field == "lesion_clock"


@pytest.mark.parametrize("cm", [0, -1.0, 30.5])
def test_distance_from_nipple_is_positive_and_plausible(cm: float) -> None:
    with pytest.raises(BadRequest):
        breast(distance_from_nipple_cm=cm)


def test_dvt_request_without_segments_asks_for_them() -> None:
    assert fields_of("dvt", None, None) == [
        "dvt.segments_examined",
        "dvt.symptoms_persist_after_negative",
    ]


def test_each_examined_dvt_segment_needs_its_compressibility() -> None:
    context = dvt(
        segments_examined=["common_femoral", "femoral_mid", "popliteal", "popliteal"],
        compressibility={"femoral_mid": "compressible"},
        symptoms_persist_after_negative=False,
    )
    items = template_items("dvt", None, context)
    assert [i.field for i in items] == [
        "dvt.compressibility.common_femoral",
        "dvt.compressibility.popliteal",
    ]
    assert items[1].label == "Compressibility of the popliteal vein"


def test_persistent_symptoms_need_the_prior_scan_and_flag_a_repeat_scan() -> None:
    segments = {
        "segments_examined": ["popliteal"],
        "compressibility": {"popliteal": "compressible"},
    }
    persisting = dvt(**segments, symptoms_persist_after_negative=True)
    items = template_items("dvt", None, persisting)
    assert [i.field for i in items] == ["dvt.prior_scan"]
    assert "compares with that scan" in items[0].why
    assert [f.code for f in template_flags("dvt", None, persisting)] == ["repeat_scan"]
    with_prior = dvt(**segments, symptoms_persist_after_negative=True, prior_scan="2026-01-03, ED")
    assert template_items("dvt", None, with_prior) == ()
    assert template_flags("dvt", None, dvt(symptoms_persist_after_negative=False)) == ()


def test_dvt_context_parses_from_json_with_segment_keys() -> None:
    raw = '{"segments_examined": ["popliteal", "peroneal"], "compressibility": {"popliteal": "non_compressible", "peroneal": "not_visualized"}}'
    context = parse(DvtContext, json.loads(raw))
    assert context.segments_examined == [DvtSegment.POPLITEAL, DvtSegment.PERONEAL]
    assert context.compressibility == {
        DvtSegment.POPLITEAL: Compressibility.NON_COMPRESSIBLE,
        DvtSegment.PERONEAL: Compressibility.NOT_VISUALIZED,
    }
    assert parse(BreastContext, json.loads('{"first_read_birads": "4A"}')).first_read_birads == (
        BiRads.LOW_SUSPICION
    )


def test_unknown_segment_key_is_refused_without_echoing_it() -> None:
    with pytest.raises(BadRequest) as refused:
        dvt(compressibility={"Jane Doe": "compressible"})
    assert refused.value.field == "compressibility"
    assert "Jane" not in refused.value.message
    with pytest.raises(BadRequest) as refused:
        dvt(compressibility={"popliteal": "squashy"})
    assert refused.value.field == "compressibility.popliteal"


@pytest.mark.parametrize("application", ["thyroid", "other", None])
def test_generic_applications_add_nothing(application: str | None) -> None:
    full_breast = breast(first_read_birads="4")
    assert template_items(application, full_breast, dvt()) == ()
    assert template_flags(application, full_breast, dvt()) == ()


def test_report_categories_per_application_with_labels() -> None:
    assert CATEGORIES["breast"] == ("0", "1", "2", "3", "4", "4A", "4B", "4C", "5", "6")
    assert "chronic_postthrombotic_change" in CATEGORIES["dvt"]
    assert "thyroid" not in CATEGORIES
    assert category_label("breast", "4A").startswith("BI-RADS 4A")
    assert category_label("dvt", "chronic_postthrombotic_change") == "Chronic postthrombotic change"
    with pytest.raises(KeyError):
        category_label("breast", "7")
