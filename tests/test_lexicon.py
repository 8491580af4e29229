"""The shared lexicon: a breast lesion and a venous segment as both readers describe them."""

from __future__ import annotations

from typing import Any

import pytest

from server.consultations.applications import BreastContext, DvtContext
from server.errors import BadRequest
from server.messages import parse
from server.reports.model import ReportBody, check_draft

LESION = {
    "side": "left",
    "clock": "2:30",
    "distance_from_nipple_cm": 3,
    "size_mm": [12, 8, 9],
    "shape": "oval",
    "orientation": "parallel",
    "margin": ["circumscribed"],
    "echo_pattern": "anechoic",
    "posterior_features": "enhancement",
    "calcifications": "none",
    "associated_features": [],
    "special_case": "simple_cyst",
    "category": "2",
}


def test_a_lesion_in_the_lexicon_is_taken_whole_and_partly() -> None:
    body = parse(ReportBody, {"lesions": [LESION, {"side": "right"}]})
    assert body.lesions is not None and body.lesions[0].margin == ["circumscribed"]
    check_draft("breast", body)
    # The first read in the same words, at request time.
    context = parse(BreastContext, {"first_read_lesions": [LESION]})
    assert context.first_read_lesions is not None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"margin": ["circumscribed", "spiculated"]}, "lesions.0.margin"),
        ({"margin": ["angular", "angular"]}, "lesions.0.margin"),
        ({"shape": "lobulated"}, "lesions.0.shape"),
        ({"size_mm": [1, 2, 3, 4]}, "lesions.0.size_mm"),
        ({"size_mm": [0]}, "lesions.0.size_mm.0"),
        ({"clock": "13"}, "lesions.0.clock"),
        ({"category": "7"}, "lesions.0.category"),
        ({"associated_features": ["edema", "edema"]}, "lesions.0.associated_features"),
    ],
)
def test_a_bad_lesion_is_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(BadRequest) as refused:
        parse(ReportBody, {"lesions": [{**LESION, **change}]})
    assert refused.value.field == field


def test_segment_findings_name_each_segment_once_and_belong_to_dvt() -> None:
    finding = {
        "segment": "popliteal",
        "compressibility": "non_compressible",
        "thrombus": "acute",
        "flow": ["augmentation"],
        "extent": "occlusive",
    }
    body = parse(ReportBody, {"segment_findings": [finding]})
    check_draft("dvt", body)
    with pytest.raises(BadRequest) as refused:
        check_draft("breast", body)
    assert refused.value.field == "segment_findings"
    with pytest.raises(BadRequest) as twice:
        parse(ReportBody, {"segment_findings": [finding, finding]})
    assert twice.value.field == "segment_findings"
    with pytest.raises(BadRequest):
        parse(DvtContext, {"first_read_segments": [finding, finding]})
    with pytest.raises(BadRequest) as lesions:
        check_draft("dvt", parse(ReportBody, {"lesions": [LESION]}))
    assert lesions.value.field == "lesions"
    # A flow feature is present or not: listed twice is refused (the SR would code it twice).
    with pytest.raises(BadRequest) as flow:
        parse(ReportBody, {"segment_findings": [{**finding, "flow": ["phasic", "phasic"]}]})
    assert flow.value.field == "segment_findings.0.flow"
