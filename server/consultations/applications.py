"""Application templates: the fields and rules a breast or DVT request adds (no I/O).

A request for a templated application carries its own context (`BreastContext`,
`DvtContext`); `template_items` names what the expert needs that it lacks (the
same `MissingItem` as the consultation checklist, with dotted fields such as
`dvt.compressibility.popliteal`), `template_flags` what the expert must see at
once. Other applications use the generic template: no extra items, no flags.
`CATEGORIES` lists the report categories per application (none for generic ones).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, Field, StringConstraints, field_validator

from server.consultations.lexicon import (
    BIRADS_4,
    LESION_CLOCK_PATTERN,
    LESIONS_MAX,
    NIPPLE_DISTANCE_MAX_CM,
    SEGMENT_LABELS,
    SEGMENT_VALUES,
    BiRads,
    Compressibility,
    DvtSegment,
    Lesion,
    SegmentFinding,
    unique_segments,
)
from server.messages import LIST_MAX_ITEMS, Choice, ShortText, StrictModel


class Application(enum.StrEnum):
    """The clinical application: breast and DVT have templates, the others the generic one."""

    BREAST = "breast"
    DVT = "dvt"
    VASCULAR = "vascular"
    THYROID = "thyroid"
    ABDOMINAL = "abdominal"
    OBSTETRIC = "obstetric"
    EMERGENCY = "emergency"
    MUSCULOSKELETAL = "musculoskeletal"
    OTHER = "other"


@dataclass(frozen=True)
class MissingItem:
    """One thing the reviewer needs that the request (or report) does not give, and why."""

    field: str
    label: str
    why: str


class DvtCategory(enum.StrEnum):
    """The conclusion of a lower-limb venous study."""

    NO_DVT = "no_dvt"
    ACUTE_DVT = "acute_dvt"
    CHRONIC_POSTTHROMBOTIC_CHANGE = "chronic_postthrombotic_change"
    ACUTE_ON_CHRONIC = "acute_on_chronic"
    INDETERMINATE = "indeterminate"


class BreastContext(StrictModel):
    """What a breast request adds: where the lesion is and the first reader's category."""

    lesion_clock: Annotated[str, StringConstraints(pattern=LESION_CLOCK_PATTERN)] | None = None
    distance_from_nipple_cm: float | None = Field(None, gt=0, le=NIPPLE_DISTANCE_MAX_CM)
    first_read_birads: Choice[BiRads] | None = None
    # What further imaging a category 0 first read asks for (e.g. "diagnostic mammography").
    additional_imaging: ShortText | None = None
    # The first read in the lexicon (optional): compared field by field with the second opinion.
    first_read_lesions: list[Lesion] | None = Field(None, max_length=LESIONS_MAX)


class DvtContext(StrictModel):
    """What a lower-limb DVT request adds: segments, compressibility, persistence, prior scan."""

    segments_examined: list[Choice[DvtSegment]] | None = Field(None, max_length=LIST_MAX_ITEMS)
    compressibility: dict[Choice[DvtSegment], Choice[Compressibility]] | None = None
    symptoms_persist_after_negative: bool | None = None
    # The earlier scan to compare with (date, place); never a patient identifier.
    prior_scan: ShortText | None = None
    # The first read per segment in the lexicon (optional): compared with the second opinion.
    first_read_segments: Annotated[list[SegmentFinding] | None, AfterValidator(unique_segments)] = (
        Field(None, max_length=len(DvtSegment))
    )

    @field_validator("compressibility", mode="before")
    @classmethod
    def _known_segments(cls, value: Any) -> Any:
        # Checked here so that an unknown key is refused without echoing it in the error's field.
        if isinstance(value, dict) and not all(key in SEGMENT_VALUES for key in value):
            raise ValueError(f"keys must be segments: {', '.join(DvtSegment)}")
        return value


@dataclass(frozen=True)
class Flag:
    """Something the expert must see at once (not missing data)."""

    code: str
    message: str


_BREAST_ITEMS = {
    "lesion_clock": MissingItem(
        "breast.lesion_clock",
        "Lesion position (clock face)",
        "The clock-face position lets the expert find the same lesion and match it to prior "
        "imaging.",
    ),
    "distance_from_nipple_cm": MissingItem(
        "breast.distance_from_nipple_cm",
        "Lesion distance from the nipple",
        "With the clock face, the distance from the nipple locates the lesion for follow-up and "
        "biopsy.",
    ),
    "first_read_birads": MissingItem(
        "breast.first_read_birads",
        "First-read BI-RADS category",
        "The second opinion states its concordance with the first reader's BI-RADS category.",
    ),
    "additional_imaging": MissingItem(
        "breast.additional_imaging",
        "Additional imaging asked for",
        "Category 0 means the first read needs more imaging: which?",
    ),
}
_DVT_SEGMENTS_ITEM = MissingItem(
    "dvt.segments_examined",
    "Venous segments examined",
    "A negative scan excludes thrombus only in the segments that were examined.",
)
_DVT_PERSIST_ITEM = MissingItem(
    "dvt.symptoms_persist_after_negative",
    "Whether symptoms persist after a negative scan",
    "Symptoms that persist after a negative scan call for a repeat scan compared with it.",
)
_DVT_PRIOR_ITEM = MissingItem(
    "dvt.prior_scan",
    "Prior negative scan to compare with",
    "Symptoms persist after a negative scan: the expert compares with that scan.",
)
REVIEW_BEFORE_BIOPSY = Flag(
    "review_before_biopsy", "First read is BI-RADS 4: the second opinion is needed before biopsy"
)
REPEAT_SCAN = Flag("repeat_scan", "Symptoms persist after a negative scan")


def template_items(
    application: str | None, breast: BreastContext | None, dvt: DvtContext | None
) -> tuple[MissingItem, ...]:
    """What the application's template needs that the request lacks, in the reviewer's order."""
    if application == Application.BREAST:
        return _breast_items(breast or BreastContext())
    if application == Application.DVT:
        return _dvt_items(dvt or DvtContext())
    return ()


def template_flags(
    application: str | None, breast: BreastContext | None, dvt: DvtContext | None
) -> tuple[Flag, ...]:
    """What the expert must see at once for this request (e.g. review before biopsy)."""
    if application == Application.BREAST and breast is not None:
        if breast.first_read_birads in BIRADS_4:
            return (REVIEW_BEFORE_BIOPSY,)
    if application == Application.DVT and dvt is not None:
        if dvt.symptoms_persist_after_negative:
            return (REPEAT_SCAN,)
    return ()


def _breast_items(breast: BreastContext) -> tuple[MissingItem, ...]:
    missing = [item for key, item in _BREAST_ITEMS.items() if getattr(breast, key) is None]
    if breast.first_read_birads != BiRads.INCOMPLETE:
        # Only a category 0 first read asks for additional imaging.
        missing = [m for m in missing if m is not _BREAST_ITEMS["additional_imaging"]]
    return tuple(missing)


def _dvt_items(dvt: DvtContext) -> tuple[MissingItem, ...]:
    missing = []
    if not dvt.segments_examined:
        missing.append(_DVT_SEGMENTS_ITEM)
    graded = dvt.compressibility or {}
    for segment in dict.fromkeys(dvt.segments_examined or ()):
        if segment not in graded:
            missing.append(
                MissingItem(
                    f"dvt.compressibility.{segment}",
                    f"Compressibility of the {SEGMENT_LABELS[segment]}",
                    "Full compression of the vein is what excludes thrombus in a segment.",
                )
            )
    if dvt.symptoms_persist_after_negative is None:
        missing.append(_DVT_PERSIST_ITEM)
    elif dvt.symptoms_persist_after_negative and dvt.prior_scan is None:
        missing.append(_DVT_PRIOR_ITEM)
    return tuple(missing)


_CATEGORY_LABELS: dict[str, dict[str, str]] = {
    Application.BREAST: {
        BiRads.INCOMPLETE: "BI-RADS 0 (incomplete: needs additional imaging)",
        BiRads.NEGATIVE: "BI-RADS 1 (negative)",
        BiRads.BENIGN: "BI-RADS 2 (benign)",
        BiRads.PROBABLY_BENIGN: "BI-RADS 3 (probably benign)",
        BiRads.SUSPICIOUS: "BI-RADS 4 (suspicious)",
        BiRads.LOW_SUSPICION: "BI-RADS 4A (low suspicion for malignancy)",
        BiRads.MODERATE_SUSPICION: "BI-RADS 4B (moderate suspicion for malignancy)",
        BiRads.HIGH_SUSPICION: "BI-RADS 4C (high suspicion for malignancy)",
        BiRads.HIGHLY_SUGGESTIVE: "BI-RADS 5 (highly suggestive of malignancy)",
        BiRads.KNOWN_MALIGNANCY: "BI-RADS 6 (known biopsy-proven malignancy)",
    },
    Application.DVT: {
        DvtCategory.NO_DVT: "No deep vein thrombosis",
        DvtCategory.ACUTE_DVT: "Acute deep vein thrombosis",
        DvtCategory.CHRONIC_POSTTHROMBOTIC_CHANGE: "Chronic postthrombotic change",
        DvtCategory.ACUTE_ON_CHRONIC: "Acute thrombosis on chronic postthrombotic change",
        DvtCategory.INDETERMINATE: "Thrombus of indeterminate age",
    },
}

# The report categories per application; an application not listed has none.
CATEGORIES: dict[str, tuple[str, ...]] = {
    str(app): tuple(str(value) for value in labels) for app, labels in _CATEGORY_LABELS.items()
}


def category_label(application: str, value: str) -> str:
    """The human label of a report category, e.g. "BI-RADS 4A (...)"; `KeyError` if unknown."""
    return _CATEGORY_LABELS[application][value]
