"""Contradictions a report can hold: against its own category, the first read and the request."""

from __future__ import annotations

from typing import Any

import pytest

from server.errors import BadRequest, Conflict
from server.messages import parse
from server.reports.consistency import (
    RequestFacts,
    check_consistency,
    recommends_biopsy,
    refuse_hard,
)
from server.reports.model import ReportBody, check_draft

IMAGE = "0123456789abcdef0123456789abcdef"
FIRST_4A = RequestFacts(first_read_birads="4A")


def body(**fields: Any) -> ReportBody:
    return parse(ReportBody, fields)


def said(application: str, report: ReportBody, facts: RequestFacts = FIRST_4A, **kw: Any) -> list:
    return [(a.field, a.hard) for a in check_consistency(application, report, facts, **kw)]


def test_agree_with_another_bi_rads_category_is_a_hard_contradiction() -> None:
    # The case: BI-RADS 0 "agree" against a first read of 4A, recommending a biopsy.
    report = body(category="0", concordance="agree", recommendation="Core needle biopsy.")
    advice = check_consistency("breast", report, FIRST_4A)
    assert [(a.field, a.hard) for a in advice] == [("concordance", True)]
    assert "BI-RADS 4A" in advice[0].message and "BI-RADS 0" in advice[0].message
    with pytest.raises(Conflict) as refused:
        refuse_hard(advice)
    assert refused.value.code == "report_inconsistent"
    # The same categories agree; a subcategory apart is only advice.
    assert said("breast", body(category="4A", concordance="agree", recommendation="Biopsy.")) == []
    assert said("breast", body(category="4B", concordance="agree", recommendation="Biopsy.")) == [
        ("concordance", False)
    ]
    refuse_hard(check_consistency("breast", body(category="4B", concordance="agree"), FIRST_4A))


def test_concordance_that_does_not_fit_the_two_categories_is_advised() -> None:
    # A discrepancy where both reads say the same.
    same = body(category="4A", concordance="major_discrepancy", recommendation="Biopsy.")
    assert said("breast", same) == [("concordance", False)]
    # Across the biopsy threshold, "minor" understates it.
    down = body(category="2", concordance="minor_discrepancy", recommendation="Routine screening.")
    advice = check_consistency("breast", down, FIRST_4A)
    assert [a.field for a in advice] == ["concordance"] and "major" in advice[0].message
    assert said("breast", body(category="2", concordance="major_discrepancy")) == []
    # Without a first-read category nothing is compared.
    assert said("breast", body(category="2", concordance="agree"), RequestFacts()) == []


@pytest.mark.parametrize(
    ("category", "recommendation", "advised"),
    [
        ("2", "Ultrasound-guided core biopsy.", True),
        ("1", "Biopsy of the left breast.", True),
        ("2", "No biopsy needed; routine screening.", False),
        ("2", "Routine screening: a biopsy is not needed.", False),
        ("2", "Routine screening; the planned biopsy can be avoided.", False),
        ("3", "Short-interval follow-up in 6 months.", False),
        ("3", "Vacuum-assisted biopsy.", True),
        ("4B", "Short-interval follow-up in 6 months.", True),
        ("5", "Ultrasound-guided core needle biopsy.", False),
        ("4A", "Tissue sampling under ultrasound guidance.", False),
        ("4C", "Instead of biopsy, follow-up.", True),
    ],
)
def test_a_recommendation_must_fit_the_category(
    category: str, recommendation: str, advised: bool
) -> None:
    report = body(category=category, concordance="major_discrepancy", recommendation=recommendation)
    fields = [a.field for a in check_consistency("breast", report, RequestFacts())]
    assert ("recommendation" in fields) is advised


def test_biopsy_advised_against_is_not_a_biopsy_recommended() -> None:
    assert recommends_biopsy("FNA of the axillary node.")
    assert not recommends_biopsy("Spares the patient a biopsy.")
    assert not recommends_biopsy(None)
    # One recommended after one advised against still counts.
    assert recommends_biopsy("No biopsy of the cyst. Core biopsy of the solid mass.")


def test_acute_dvt_needs_treatment_or_follow_up_advice() -> None:
    acute = body(category="acute_dvt", recommendation="Clinical correlation.")
    assert said("dvt", acute, RequestFacts()) == [("recommendation", False)]
    for ok in ("Start anticoagulation.", "DOAC per protocol.", "Repeat scan in one week."):
        assert said("dvt", body(category="acute_dvt", recommendation=ok), RequestFacts()) == []
    assert said("dvt", body(category="no_dvt", recommendation="None."), RequestFacts()) == []


def test_dvt_report_must_cover_the_segments_the_request_names() -> None:
    facts = RequestFacts(segments_requested=("common_femoral", "femoral_mid", "popliteal"))
    silent = check_consistency("dvt", body(category="no_dvt"), facts)
    assert [a.field for a in silent] == ["segments_examined"]
    partial = body(category="no_dvt", segments_examined=["common_femoral", "femoral_mid"])
    advice = check_consistency("dvt", partial, facts)
    assert [a.field for a in advice] == ["segments_examined"]
    assert "popliteal vein" in advice[0].message and "common femoral" not in advice[0].message
    whole = body(
        category="no_dvt",
        segments_examined=["common_femoral", "femoral_mid", "popliteal", "posterior_tibial"],
    )
    assert check_consistency("dvt", whole, facts) == []
    # Segments belong to DVT reports only.
    with pytest.raises(BadRequest) as refused:
        check_draft("breast", body(segments_examined=["popliteal"]))
    assert refused.value.field == "segments_examined"
    check_draft("dvt", whole)


def test_a_size_backed_only_by_uncalibrated_calipers_is_advised() -> None:
    uncalibrated = {IMAGE: [{"mm": None, "calibration": None}]}
    calibrated = {IMAGE: [{"mm": 12.3, "calibration": "depth_scale"}]}
    sized = body(findings="Oval mass, 12 mm.", key_image_ids=[IMAGE])
    advice = check_consistency(None, sized, RequestFacts(), uncalibrated)
    assert [a.field for a in advice] == ["findings"] and "12 mm" in advice[0].message
    assert check_consistency(None, sized, RequestFacts(), calibrated) == []
    unsized = body(findings="Oval mass.", key_image_ids=[IMAGE])
    assert check_consistency(None, unsized, RequestFacts(), uncalibrated) == []
    # Calipers on an image the report does not cite are not its support.
    uncited = body(findings="Oval mass, 1.2 cm.")
    assert check_consistency(None, uncited, RequestFacts(), uncalibrated) == []
