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
from server.reports.model import ReportBody, check_draft, check_terminology, load_terminology

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


CYST = {"side": "left", "clock": "2", "special_case": "simple_cyst"}


def test_a_simple_cyst_with_a_suspicious_category_contradicts_itself() -> None:
    # The case: "simple cyst" with BI-RADS 4, in the lesion's own structured values.
    report = body(category="4A", lesions=[{**CYST, "category": "4A"}])
    advice = check_consistency("breast", report, RequestFacts())
    assert [(a.field, a.hard) for a in advice] == [("lesions.0.category", True)]
    assert "simple cyst" in advice[0].message and "BI-RADS 4A" in advice[0].message
    with pytest.raises(Conflict):
        refuse_hard(advice)
    # Category 3 for a simple cyst is advice; 2 is what a simple cyst is.
    three = body(category="3", lesions=[{**CYST, "category": "3"}])
    assert said("breast", three, RequestFacts()) == [("lesions.0.category", False)]
    assert (
        said("breast", body(category="2", lesions=[{**CYST, "category": "2"}]), RequestFacts())
        == []
    )


def test_every_lesion_a_simple_cyst_under_a_suspicious_overall_category_is_advised() -> None:
    report = body(category="4B", lesions=[CYST, {**CYST, "clock": "10"}])
    assert said("breast", report, RequestFacts()) == [("category", False)]
    # Another, solid lesion may be what is suspicious.
    solid = {"side": "left", "clock": "4", "shape": "irregular"}
    assert said("breast", body(category="4B", lesions=[CYST, solid]), RequestFacts()) == []


def test_an_overall_category_below_a_lesions_is_a_contradiction() -> None:
    lesions = [{"shape": "oval", "category": "3"}, {"shape": "irregular", "category": "4C"}]
    advice = check_consistency("breast", body(category="3", lesions=lesions), RequestFacts())
    assert [(a.field, a.hard) for a in advice] == [("category", True)]
    assert "lesion 2" in advice[0].message and "BI-RADS 4C" in advice[0].message
    # A subcategory below is advice; the highest or above is fine; 0 and 6 are not ranked.
    assert said("breast", body(category="4A", lesions=lesions), RequestFacts()) == [
        ("category", False)
    ]
    for overall in ("4C", "5", "0", "6"):
        assert said("breast", body(category=overall, lesions=lesions), RequestFacts()) == []


def test_a_lesion_size_must_come_from_calibrated_calipers_on_its_key_image() -> None:
    other = "fedcba9876543210fedcba9876543210"
    sized = [{"size_mm": [12, 8], "size_key_image_id": IMAGE}]
    calibrated = {IMAGE: [{"mm": 12.3}, {"mm": 7.9}], other: []}
    report = body(lesions=sized)
    assert check_consistency("breast", report, RequestFacts(), calibrated) == []
    for cited, why in (
        ({IMAGE: [{"mm": None}]}, "uncalibrated"),
        ({IMAGE: []}, "no calipers"),
        ({other: [{"mm": 12.0}]}, "not this consultation's"),
        ({IMAGE: [{"mm": 20.4}]}, "20.4 mm"),
    ):
        advice = check_consistency("breast", report, RequestFacts(), cited)
        assert [(a.field, a.hard) for a in advice] == [("lesions.0.size_mm", False)], cited
        assert why in advice[0].message
    # A size that names no key image is the reader's own estimate: not checked.
    assert check_consistency("breast", body(lesions=[{"size_mm": [12]}]), RequestFacts()) == []


def test_dvt_segment_findings_must_fit_the_category() -> None:
    acute = {"segment": "popliteal", "compressibility": "non_compressible", "thrombus": "acute"}
    advice = check_consistency(
        "dvt", body(category="no_dvt", segment_findings=[acute]), RequestFacts()
    )
    assert [(a.field, a.hard) for a in advice] == [("segment_findings.0.thrombus", True)]
    assert "popliteal vein" in advice[0].message
    # Non-compressible, or an older thrombus, under "no DVT": advice.
    for finding, field in (
        ({"segment": "popliteal", "compressibility": "non_compressible"}, "compressibility"),
        ({"segment": "popliteal", "thrombus": "chronic"}, "thrombus"),
    ):
        report = body(category="no_dvt", segment_findings=[finding])
        assert said("dvt", report, RequestFacts()) == [(f"segment_findings.0.{field}", False)]
    # The reverse: an acute DVT where every segment found is normal.
    normal = [
        {"segment": "common_femoral", "compressibility": "compressible", "thrombus": "none"},
        {"segment": "popliteal", "compressibility": "compressible"},
    ]
    treat = "Start anticoagulation."
    report = body(category="acute_dvt", recommendation=treat, segment_findings=normal)
    assert said("dvt", report, RequestFacts()) == [("category", False)]
    calf = {**acute, "segment": "posterior_tibial"}
    report = body(category="acute_dvt", recommendation=treat, segment_findings=[*normal, calf])
    assert said("dvt", report, RequestFacts()) == []
    # An extent needs a thrombus.
    report = body(
        category="no_dvt",
        segment_findings=[{"segment": "popliteal", "thrombus": "none", "extent": "occlusive"}],
    )
    assert said("dvt", report, RequestFacts()) == [("segment_findings.0.extent", False)]


def test_segments_with_findings_count_as_examined() -> None:
    facts = RequestFacts(segments_requested=("common_femoral", "popliteal"))
    findings = [{"segment": "common_femoral", "compressibility": "compressible"}]
    advice = check_consistency("dvt", body(category="no_dvt", segment_findings=findings), facts)
    assert [a.field for a in advice] == ["segments_examined"]
    assert "popliteal vein" in advice[0].message and "common femoral" not in advice[0].message
    report = body(
        category="no_dvt",
        segments_examined=["popliteal"],
        segment_findings=findings,
    )
    assert check_consistency("dvt", report, facts) == []


def test_the_terminology_check_reads_each_lesions_note() -> None:
    terms = load_terminology()
    report = body(lesions=[{"note": "Looks like a complex cyst."}, {"note": "fine"}])
    flags = check_terminology(terms, report)
    assert [(f.field, f.phrase) for f in flags] == [("lesions.0.note", "complex cyst")]
