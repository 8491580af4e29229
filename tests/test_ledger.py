"""The second-opinion ledger's arithmetic against hand-worked examples, and the outcome rules."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import pytest

from server.consultations.lexicon import SegmentFinding
from server.errors import BadRequest, Conflict
from server.outcomes.ledger import (
    SecondOpinion,
    cohen_kappa,
    dvt_category_of_segments,
    ledger,
    proportion,
    wilson_interval,
)
from server.outcomes.model import OutcomeBody, check_outcome, may_follow

TODAY = date(2026, 12, 3)


def breast(
    first: str | None,
    second: str | None,
    concordance: str | None = "agree",
    pathology: str | None = None,
    reader: str = "R-AAAAAAAAAAAAAAAA",
) -> SecondOpinion:
    outcome = None
    if pathology is not None:
        outcome = OutcomeBody.model_validate(
            {"breast": {"result": "biopsy", "pathology": pathology, "date": "2026-11-02"}}
        )
    return SecondOpinion("breast", reader, True, first, second, concordance, outcome)


def dvt(first: str | None, second: str | None, repeat: str | None = None) -> SecondOpinion:
    outcome = None
    if repeat is not None:
        outcome = OutcomeBody.model_validate(
            {"dvt": {"anticoagulation": {"started": repeat == "dvt"}, "repeat_scan": repeat}}
        )
    return SecondOpinion("dvt", "R-BBBBBBBBBBBBBBBB", True, first, second, "agree", outcome)


def test_kappa_of_a_two_by_two_table_worked_by_hand() -> None:
    # first \ second   a    b   | rows
    #        a         20   5   | 25
    #        b         10   15  | 25
    #        cols      30   20  | 50
    # observed = (20 + 15) / 50 = 0.70
    # expected = (25*30 + 25*20) / 50^2 = (750 + 500) / 2500 = 0.50
    # kappa = (0.70 - 0.50) / (1 - 0.50) = 0.40
    pairs = [("a", "a")] * 20 + [("a", "b")] * 5 + [("b", "a")] * 10 + [("b", "b")] * 15
    assert cohen_kappa(pairs) == pytest.approx(0.40)


def test_breast_agreement_kappa_and_downgrades_on_a_three_by_three_table() -> None:
    # BI-RADS 4A, 4B and 4C count as 4. First read \ second opinion:
    #            2   3   4  | rows
    #      2     4   1   0  |  5
    #      3     2   3   0  |  5
    #      4     1   1   3  |  5   (4A->2, 4->3, 4A->4, 4A->4, 4B->4C)
    #      cols  7   5   3  | 15
    # observed = (4 + 3 + 3) / 15 = 2/3; expected = (5*7 + 5*5 + 5*3) / 15^2 = 75/225 = 1/3
    # kappa = (2/3 - 1/3) / (1 - 1/3) = 0.5; percent = 66.67
    # downgraded: of the 5 first reads at 4-5, 2 were put at 2-3 (4A->2, 4->3): 0.4
    opinions = (
        [breast("2", "2")] * 4
        + [breast("2", "3")]
        + [breast("3", "2")] * 2
        + [breast("3", "3")] * 3
        + [breast("4A", "2"), breast("4", "3"), breast("4A", "4"), breast("4A", "4")]
        + [breast("4B", "4C")]
    )
    figures = ledger(opinions)["applications"]["breast"]
    assert figures["second_opinions"] == 15
    assert figures["category_agreement"] == {
        "percent": 66.6667,
        "kappa": 0.5,
        "agreed": 10,
        "n": 15,
    }
    assert figures["downgraded"] == {
        "rate": 0.4,
        "count": 2,
        "n": 5,
        "biopsied": 0,
        "malignant": 0,
    }


def test_wilson_interval_of_three_in_ten_worked_by_hand() -> None:
    # p = 0.3, n = 10, z = 1.96, z^2 = 3.8415
    # centre = (0.3 + 3.8415/20) / (1 + 3.8415/10) = 0.49207 / 1.38415 = 0.35551
    # half = 1.96 * sqrt(0.3*0.7/10 + 3.8415/400) / 1.38415
    #      = 1.96 * sqrt(0.021 + 0.0096037) / 1.38415 = 1.96 * 0.17494 / 1.38415 = 0.24771
    # interval = [0.1078, 0.6032]
    low, high = wilson_interval(3, 10) or (0, 0)
    assert low == pytest.approx(0.1078, abs=1e-4)
    assert high == pytest.approx(0.6032, abs=1e-4)
    # The interval stays inside [0, 1] at the edges: 1/1 is [0.2065, 1].
    assert proportion(1, 1) == {"value": 1.0, "ci95": [0.2065, 1.0], "n": 1, "positives": 1}
    assert proportion(0, 0) == {"value": None, "ci95": None, "n": 0, "positives": 0}


def test_ppv_of_a_biopsy_recommendation_first_read_and_second_opinion() -> None:
    # Eleven first reads at BI-RADS 4-5, all biopsied: 3 malignant, 6 benign, 1 high-risk,
    # 1 non-diagnostic. High-risk counts as not malignant; non-diagnostic leaves the denominator:
    # first read: 3 / 10 = 0.3, Wilson [0.1078, 0.6032].
    # The second opinion kept 4-5 on the 3 malignant, 2 benign, the high-risk and the
    # non-diagnostic and put 4 benign at 2: 3 / 6 = 0.5, Wilson [0.1876, 0.8124].
    opinions = (
        [breast("4B", "4C", pathology="malignant")] * 2
        + [breast("5", "5", pathology="malignant")]
        + [breast("4A", "4A", pathology="benign")] * 2
        + [breast("4A", "2", "major_discrepancy", pathology="benign")] * 4
        + [breast("4", "4", pathology="high_risk")]
        + [breast("4", "4", pathology="non_diagnostic")]
    )
    figures = ledger(opinions)["applications"]["breast"]
    assert figures["ppv_biopsy"] == {
        "first_read": {"value": 0.3, "ci95": [0.1078, 0.6032], "n": 10, "positives": 3},
        "second_opinion": {"value": 0.5, "ci95": [0.1876, 0.8124], "n": 6, "positives": 3},
    }
    # The 4 downgraded were biopsied anyway: all benign.
    assert figures["downgraded"] == {
        "rate": round(4 / 11, 4),
        "count": 4,
        "n": 11,
        "biopsied": 4,
        "malignant": 0,
    }
    assert figures["outcomes_known"] == 11


def test_discordance_classes_count_over_the_reports_that_state_one() -> None:
    # 4 state a concordance (1 major, 2 minor, 1 agree); the fifth states none.
    opinions = [
        breast("4A", "2", "major_discrepancy"),
        breast("3", "2", "minor_discrepancy"),
        breast("4A", "4B", "minor_discrepancy"),
        breast("2", "2", "agree"),
        breast("2", "2", None),
    ]
    assert ledger(opinions)["applications"]["breast"]["discordance"] == {
        "major": {"rate": 0.25, "count": 1, "n": 4},
        "minor": {"rate": 0.5, "count": 2, "n": 4},
        "n": 4,
    }


def test_an_empty_period_gives_nulls_not_nan() -> None:
    figures = ledger([])
    text = json.dumps(figures, allow_nan=False)  # NaN would raise here
    breast_figures = figures["applications"]["breast"]
    assert breast_figures["second_opinions"] == 0
    assert breast_figures["category_agreement"] == {
        "percent": None,
        "kappa": None,
        "agreed": 0,
        "n": 0,
    }
    assert breast_figures["ppv_biopsy"]["first_read"]["value"] is None
    assert figures["readers"] == {}
    assert "NaN" not in text
    # One category only on both sides: agreement is 100 %, kappa undefined (None).
    same = ledger([breast("2", "2")] * 3)["applications"]["breast"]["category_agreement"]
    assert same == {"percent": 100.0, "kappa": None, "agreed": 3, "n": 3}


def test_per_reader_and_one_application() -> None:
    opinions = [
        breast("4A", "2", reader="R-1111111111111111"),
        breast("4A", "4A", reader="R-2222222222222222"),
        dvt("acute_dvt", "acute_dvt"),
        # No first read: signed, but not a second opinion.
        SecondOpinion("breast", "R-1111111111111111", False, None, "2", None),
    ]
    whole = ledger(opinions)
    assert whole["applications"]["breast"]["second_opinions"] == 2
    assert set(whole["readers"]) == {
        "R-1111111111111111",
        "R-2222222222222222",
        "R-BBBBBBBBBBBBBBBB",
    }
    assert set(whole["readers"]["R-1111111111111111"]) == {"breast"}
    one = ledger(opinions, application="breast", reader="R-1111111111111111")
    assert set(one["applications"]) == {"breast"}
    assert one["applications"]["breast"]["downgraded"]["count"] == 1


def test_dvt_category_from_segments_agreement_and_repeat_scans() -> None:
    def segments(*thrombi: str) -> list[SegmentFinding]:
        names = ("popliteal", "femoral_mid", "common_femoral")
        return [SegmentFinding(segment=n, thrombus=t) for n, t in zip(names, thrombi, strict=False)]  # type: ignore[arg-type]

    assert dvt_category_of_segments(segments("none", "none")) == "no_dvt"
    assert dvt_category_of_segments(segments("acute", "none")) == "acute_dvt"
    assert dvt_category_of_segments(segments("acute", "chronic")) == "acute_on_chronic"
    assert dvt_category_of_segments(segments("chronic", "none")) == "chronic_postthrombotic_change"
    assert dvt_category_of_segments(segments("indeterminate")) == "indeterminate"
    assert dvt_category_of_segments([SegmentFinding(segment="popliteal")]) is None  # type: ignore[arg-type]
    assert dvt_category_of_segments(None) is None
    # The request form sends a segment the first read only graded as its compressibility: full
    # compression excludes thrombus (no DVT there), a vein that does not compress is thrombosed
    # until shown otherwise (of an age not stated: indeterminate, no call).
    graded = [
        SegmentFinding(segment="popliteal", compressibility="compressible"),  # type: ignore[arg-type]
        SegmentFinding(segment="femoral_mid", compressibility="compressible"),  # type: ignore[arg-type]
    ]
    assert dvt_category_of_segments(graded) == "no_dvt"
    stiff = SegmentFinding(segment="common_femoral", compressibility="non_compressible")  # type: ignore[arg-type]
    assert dvt_category_of_segments([*graded, stiff]) == "indeterminate"
    stated = SegmentFinding(
        segment="common_femoral", compressibility="non_compressible", thrombus="acute"
    )  # type: ignore[arg-type]
    assert dvt_category_of_segments([*graded, stated]) == "acute_dvt"

    # Repeat scans (three done): the second opinion's calls were DVT, DVT, no DVT and the repeat
    # scans found DVT, no DVT, no DVT: 2 of 3 confirmed. The first read's (no DVT, no DVT, DVT):
    # 1 of 3.
    opinions = [
        dvt("no_dvt", "acute_dvt", repeat="dvt"),
        dvt("no_dvt", "acute_dvt", repeat="no_dvt"),
        dvt("acute_dvt", "no_dvt", repeat="no_dvt"),
        dvt("no_dvt", "no_dvt", repeat="not_done"),
    ]
    figures = ledger(opinions)["applications"]["dvt"]
    confirmed = figures["repeat_scan_confirmed"]
    assert (confirmed["second_opinion"]["positives"], confirmed["second_opinion"]["n"]) == (2, 3)
    assert (confirmed["first_read"]["positives"], confirmed["first_read"]["n"]) == (1, 3)
    # Agreement: 1 of 4 pairs. First read: no_dvt 3, acute 1; second: acute 2, no_dvt 2.
    # expected = (3*2 + 1*2) / 4^2 = 0.5; observed 0.25; kappa = (0.25 - 0.5) / 0.5 = -0.5.
    assert figures["category_agreement"] == {"percent": 25.0, "kappa": -0.5, "agreed": 1, "n": 4}
    assert figures["anticoagulation"] == {
        "after_dvt": {"started": 1, "n": 2},
        "after_no_dvt": {"started": 0, "n": 2},
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"breast": {"result": "biopsy", "date": "2026-11-02"}}, "breast.pathology"),
        ({"breast": {"result": "biopsy", "pathology": "benign"}}, "breast.date"),
        (
            {"breast": {"result": "none_known", "pathology": "benign"}},
            "breast.pathology",
        ),
        ({"breast": {"result": "clinical_follow_up"}}, "breast.note"),
        (
            {"breast": {"result": "follow_up_imaging", "imaging": "stable", "date": "2027-01-01"}},
            "breast.date",
        ),
        ({"dvt": {"anticoagulation": {"started": False}, "repeat_scan": "dvt"}}, "dvt"),
        ({}, "breast"),
    ],
)
def test_an_outcome_that_does_not_fit_names_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(BadRequest) as refused:
        check_outcome("breast", OutcomeBody.model_validate(body), TODAY)
    assert refused.value.field == field


def test_dvt_outcome_rules_and_what_may_be_followed() -> None:
    def check(anticoagulation: dict[str, Any], repeat: str, **more: Any) -> None:
        body = {"dvt": {"anticoagulation": anticoagulation, "repeat_scan": repeat, **more}}
        check_outcome("dvt", OutcomeBody.model_validate(body), TODAY)

    check({"started": True, "date": "2026-11-30"}, "no_dvt", repeat_scan_date="2026-12-01")
    with pytest.raises(BadRequest) as refused:
        check({"started": True}, "dvt")
    assert refused.value.field == "dvt.anticoagulation.date"
    with pytest.raises(BadRequest) as refused:
        check({"started": False}, "not_done", repeat_scan_date="2026-12-01")
    assert refused.value.field == "dvt.repeat_scan_date"
    assert may_follow("consultation", "dvt", True) == "dvt"
    for kind, application, signed, code in (
        ("consultation", "breast", False, "not_signed"),
        ("device_setup", None, False, "no_outcome_kind"),
        ("consultation", "thyroid", True, "no_outcome_kind"),
    ):
        with pytest.raises(Conflict) as conflict:
            may_follow(kind, application, signed)
        assert conflict.value.code == code


def test_the_readme_worked_example() -> None:
    """README, "The second-opinion ledger": ten breast second opinions by one reader."""

    def case(first: str, second: str, concordance: str, outcome: dict[str, Any] | None) -> Any:
        body = None if outcome is None else OutcomeBody.model_validate({"breast": outcome})
        return SecondOpinion("breast", "R-1111111111111111", True, first, second, concordance, body)

    def biopsied(pathology: str) -> dict[str, Any]:
        return {"result": "biopsy", "pathology": pathology, "date": "2026-11-20"}

    stable = {"result": "follow_up_imaging", "imaging": "stable", "date": "2026-11-20"}
    opinions = [
        case("4A", "2", "major_discrepancy", stable),
        case("4A", "2", "major_discrepancy", biopsied("benign")),
        case("4B", "4B", "agree", biopsied("malignant")),
        case("4C", "5", "minor_discrepancy", biopsied("malignant")),
        case("4A", "4A", "agree", biopsied("benign")),
        case("4A", "4A", "agree", biopsied("high_risk")),
        case("3", "3", "agree", stable),
        case("3", "2", "minor_discrepancy", {"result": "none_known"}),
        case("2", "2", "agree", None),
        case("5", "5", "agree", biopsied("malignant")),
    ]
    figures = ledger(opinions)["applications"]["breast"]
    # expected = (6*3 + 2*1 + 1*4 + 1*2) / 100 = 0.26; kappa = (0.6 - 0.26) / 0.74 = 0.4595
    assert figures["category_agreement"] == {"percent": 60.0, "kappa": 0.4595, "agreed": 6, "n": 10}
    assert figures["discordance"]["major"] == {"rate": 0.2, "count": 2, "n": 10}
    assert figures["discordance"]["minor"] == {"rate": 0.2, "count": 2, "n": 10}
    assert figures["downgraded"] == {
        "rate": 0.2857,
        "count": 2,
        "n": 7,
        "biopsied": 1,
        "malignant": 0,
    }
    assert figures["ppv_biopsy"] == {
        "first_read": {"value": 0.5, "ci95": [0.1876, 0.8124], "n": 6, "positives": 3},
        "second_opinion": {"value": 0.6, "ci95": [0.2307, 0.8824], "n": 5, "positives": 3},
    }
    assert figures["outcomes_known"] == 8
