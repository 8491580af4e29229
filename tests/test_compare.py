"""The second opinion against the first read, field by field, in the lexicon's words."""

from __future__ import annotations

from typing import Any

from server.consultations.lexicon import Lesion, SegmentFinding
from server.messages import parse
from server.reports.compare import (
    Difference,
    lesion_differences,
    lesion_summary,
    segment_differences,
)

FIRST = {
    "side": "left",
    "clock": "2",
    "distance_from_nipple_cm": 3,
    "size_mm": [12, 8],
    "shape": "oval",
    "orientation": "parallel",
    "margin": ["circumscribed"],
    "echo_pattern": "hypoechoic",
    "associated_features": ["vascularity_internal", "edema"],
    "category": "4A",
    "note": "first reader's words",
}


def lesions(*fields: dict[str, Any]) -> list[Lesion]:
    return [parse(Lesion, f) for f in fields]


def segments(*fields: dict[str, Any]) -> list[SegmentFinding]:
    return [parse(SegmentFinding, f) for f in fields]


def test_the_same_lesion_said_alike_has_no_difference() -> None:
    # Lists compare as sets, and the note and the key image are not the first reader's to state.
    same = {
        **FIRST,
        "associated_features": ["edema", "vascularity_internal"],
        "note": "other words",
        "size_key_image_id": "0" * 32,
    }
    assert lesion_differences(lesions(FIRST), lesions(same)) == []


def test_each_changed_field_is_said_in_both_reads_words() -> None:
    second = {
        **FIRST,
        "clock": "2:30",
        "size_mm": [14, 9, 10],
        "shape": "irregular",
        "orientation": "not_parallel",
        "margin": ["spiculated", "angular"],
        "associated_features": [],
        "posterior_features": "shadowing",
        "category": "5",
    }
    assert lesion_differences(lesions(FIRST), lesions(second)) == [
        Difference("lesions.0.clock", "Lesion 1: clock face", "2 o'clock", "2:30 o'clock"),
        Difference("lesions.0.size_mm", "Lesion 1: size", "12 x 8 mm", "14 x 9 x 10 mm"),
        Difference("lesions.0.shape", "Lesion 1: shape", "oval", "irregular"),
        Difference("lesions.0.orientation", "Lesion 1: orientation", "parallel", "not parallel"),
        # In the lexicon's order, whatever order the reader ticked them in.
        Difference("lesions.0.margin", "Lesion 1: margin", "circumscribed", "angular, spiculated"),
        Difference(
            "lesions.0.posterior_features", "Lesion 1: posterior features", None, "shadowing"
        ),
        Difference(
            "lesions.0.associated_features",
            "Lesion 1: associated features",
            "edema, internal vascularity",
            None,
        ),
        Difference("lesions.0.category", "Lesion 1: category", "BI-RADS 4A", "BI-RADS 5"),
    ]


def test_lesions_are_compared_by_index_and_a_lesion_only_one_read_has_is_one_difference() -> None:
    second = {"side": "right", "clock": "10", "special_case": "simple_cyst", "category": "2"}
    found = lesion_differences(lesions(FIRST), lesions(FIRST, second))
    assert found == [
        Difference(
            "lesions.1",
            "Lesion 2",
            None,
            "right breast, 10 o'clock; special case simple cyst; BI-RADS 2",
        )
    ]
    # The second opinion finds no lesion at all: the first read's lesion is said whole.
    (gone,) = lesion_differences(lesions(FIRST), [])
    assert (gone.field, gone.second) == ("lesions.0", None)
    assert gone.first == lesion_summary(lesions(FIRST)[0])
    assert gone.first == (
        "left breast, 2 o'clock, 3 cm from the nipple, 12 x 8 mm; shape oval; orientation"
        " parallel; margin circumscribed; echo pattern hypoechoic; associated features edema,"
        " internal vascularity; BI-RADS 4A"
    )


def test_nothing_is_compared_until_both_reads_are_structured() -> None:
    assert lesion_differences(None, lesions(FIRST)) == []
    assert lesion_differences([], lesions(FIRST)) == []
    assert lesion_differences(lesions(FIRST), None) == []  # the report has not said yet
    assert segment_differences(None, segments({"segment": "popliteal"})) == []


def test_dvt_segments_are_compared_segment_by_segment() -> None:
    first = segments(
        {
            "segment": "popliteal",
            "compressibility": "compressible",
            "thrombus": "none",
            "flow": ["spontaneous", "phasic"],
        },
        {"segment": "common_femoral", "compressibility": "compressible"},
    )
    second = segments(
        {"segment": "common_femoral", "compressibility": "compressible"},
        {
            "segment": "popliteal",
            "compressibility": "non_compressible",
            "thrombus": "acute",
            "flow": ["phasic"],
            "extent": "occlusive",
        },
        {
            "segment": "posterior_tibial",
            "compressibility": "partially_compressible",
            "thrombus": "indeterminate",
        },
    )
    assert segment_differences(first, second) == [
        Difference(
            "segment_findings.popliteal.compressibility",
            "Popliteal vein: compressibility",
            "compressible",
            "non-compressible",
        ),
        Difference(
            "segment_findings.popliteal.thrombus", "Popliteal vein: thrombus", "none", "acute"
        ),
        Difference(
            "segment_findings.popliteal.flow",
            "Popliteal vein: flow",
            "spontaneous, phasic",
            "phasic",
        ),
        Difference(
            "segment_findings.popliteal.extent", "Popliteal vein: extent", None, "occlusive"
        ),
        Difference(
            "segment_findings.posterior_tibial",
            "Posterior tibial veins",
            None,
            "partially compressible; thrombus indeterminate",
        ),
    ]
    assert segment_differences(first, first) == []
