"""The shared reporting lexicon: what both readers say in the same words (no I/O).

The vocabulary of the first read (at request time) and of the second opinion: BI-RADS
categories and the ACR BI-RADS ultrasound lexicon for a breast lesion (`Lesion`), the deep
venous segments and what compression ultrasound finds in each (`SegmentFinding`). Each enum
has a label dict (`LABELS`) for the pages (GET /api/vocabulary) and the printed report; the SR
codes them in `server/dicom/sr.py`. The free text of a report stays for what the lexicon
cannot say.
"""

from __future__ import annotations

import enum
from typing import Annotated, TypeVar

from pydantic import Field, StringConstraints, field_validator

from server.messages import Choice, ShortText, StrictModel

# Clock-face position seen facing the patient: hours 1-12, optionally on the half hour.
LESION_CLOCK_PATTERN = r"^(1[0-2]|[1-9])(:(00|30))?$"
NIPPLE_DISTANCE_MAX_CM = 30.0
_Value = TypeVar("_Value")


class BiRads(enum.StrEnum):
    """BI-RADS assessment categories (ACR, 5th edition), 4 subdivided as on ultrasound."""

    INCOMPLETE = "0"
    NEGATIVE = "1"
    BENIGN = "2"
    PROBABLY_BENIGN = "3"
    SUSPICIOUS = "4"
    LOW_SUSPICION = "4A"
    MODERATE_SUSPICION = "4B"
    HIGH_SUSPICION = "4C"
    HIGHLY_SUGGESTIVE = "5"
    KNOWN_MALIGNANCY = "6"


BIRADS_4 = frozenset(
    {BiRads.SUSPICIOUS, BiRads.LOW_SUSPICION, BiRads.MODERATE_SUSPICION, BiRads.HIGH_SUSPICION}
)
# BI-RADS 4-5: the categories that advise a biopsy.
BIOPSY_ADVISED = frozenset({*BIRADS_4, BiRads.HIGHLY_SUGGESTIVE})


class DvtSegment(enum.StrEnum):
    """Deep venous segments of the lower limb examined by compression ultrasound."""

    COMMON_FEMORAL = "common_femoral"
    SAPHENOFEMORAL_JUNCTION = "saphenofemoral_junction"
    FEMORAL_PROXIMAL = "femoral_proximal"
    FEMORAL_MID = "femoral_mid"
    FEMORAL_DISTAL = "femoral_distal"
    POPLITEAL = "popliteal"
    POSTERIOR_TIBIAL = "posterior_tibial"
    PERONEAL = "peroneal"
    CALF_MUSCULAR = "calf_muscular"


SEGMENT_VALUES = frozenset(DvtSegment)

SEGMENT_LABELS: dict[DvtSegment, str] = {
    DvtSegment.COMMON_FEMORAL: "common femoral vein",
    DvtSegment.SAPHENOFEMORAL_JUNCTION: "saphenofemoral junction",
    DvtSegment.FEMORAL_PROXIMAL: "proximal femoral vein",
    DvtSegment.FEMORAL_MID: "mid femoral vein",
    DvtSegment.FEMORAL_DISTAL: "distal femoral vein",
    DvtSegment.POPLITEAL: "popliteal vein",
    DvtSegment.POSTERIOR_TIBIAL: "posterior tibial veins",
    DvtSegment.PERONEAL: "peroneal veins",
    DvtSegment.CALF_MUSCULAR: "calf muscular veins",
}


class Compressibility(enum.StrEnum):
    """How a venous segment responds to transducer pressure (full compression excludes thrombus)."""

    COMPRESSIBLE = "compressible"
    PARTIALLY_COMPRESSIBLE = "partially_compressible"
    NON_COMPRESSIBLE = "non_compressible"
    NOT_VISUALIZED = "not_visualized"


COMPRESSIBILITY_LABELS: dict[Compressibility, str] = {
    Compressibility.COMPRESSIBLE: "compressible",
    Compressibility.PARTIALLY_COMPRESSIBLE: "partially compressible",
    Compressibility.NON_COMPRESSIBLE: "non-compressible",
    Compressibility.NOT_VISUALIZED: "not visualized",
}


# The ACR BI-RADS ultrasound lexicon (5th edition): a mass and what goes with it.


class Side(enum.StrEnum):
    LEFT = "left"
    RIGHT = "right"


class Shape(enum.StrEnum):
    OVAL = "oval"
    ROUND = "round"
    IRREGULAR = "irregular"


class Orientation(enum.StrEnum):
    PARALLEL = "parallel"
    NOT_PARALLEL = "not_parallel"


class Margin(enum.StrEnum):
    """Circumscribed, or not circumscribed with one or more of the others."""

    CIRCUMSCRIBED = "circumscribed"
    INDISTINCT = "indistinct"
    ANGULAR = "angular"
    MICROLOBULATED = "microlobulated"
    SPICULATED = "spiculated"


class EchoPattern(enum.StrEnum):
    ANECHOIC = "anechoic"
    HYPERECHOIC = "hyperechoic"
    COMPLEX_CYSTIC_SOLID = "complex_cystic_solid"
    HYPOECHOIC = "hypoechoic"
    ISOECHOIC = "isoechoic"
    HETEROGENEOUS = "heterogeneous"


class PosteriorFeatures(enum.StrEnum):
    NONE = "none"
    ENHANCEMENT = "enhancement"
    SHADOWING = "shadowing"
    COMBINED = "combined"


class Calcifications(enum.StrEnum):
    NONE = "none"
    IN_MASS = "in_mass"
    OUTSIDE_MASS = "outside_mass"
    INTRADUCTAL = "intraductal"


class AssociatedFeature(enum.StrEnum):
    ARCHITECTURAL_DISTORTION = "architectural_distortion"
    DUCT_CHANGES = "duct_changes"
    SKIN_THICKENING = "skin_thickening"
    SKIN_RETRACTION = "skin_retraction"
    EDEMA = "edema"
    VASCULARITY_ABSENT = "vascularity_absent"
    VASCULARITY_INTERNAL = "vascularity_internal"
    VASCULARITY_RIM = "vascularity_rim"
    ELASTICITY_SOFT = "elasticity_soft"
    ELASTICITY_INTERMEDIATE = "elasticity_intermediate"
    ELASTICITY_HARD = "elasticity_hard"


class SpecialCase(enum.StrEnum):
    SIMPLE_CYST = "simple_cyst"
    CLUSTERED_MICROCYSTS = "clustered_microcysts"
    COMPLICATED_CYST = "complicated_cyst"
    MASS_IN_OR_ON_SKIN = "mass_in_or_on_skin"
    FOREIGN_BODY = "foreign_body"
    INTRAMAMMARY_LYMPH_NODE = "intramammary_lymph_node"
    AXILLARY_LYMPH_NODE = "axillary_lymph_node"


SIZE_MM_MAX = 300.0
LESIONS_MAX = 10


class Lesion(StrictModel):
    """One breast lesion: where, how big (up to three diameters, mm), its descriptors and its
    category. Every descriptor is optional in a draft; `margin` is either circumscribed alone or
    one or more of the not-circumscribed kinds."""

    side: Choice[Side] | None = None
    clock: Annotated[str, StringConstraints(pattern=LESION_CLOCK_PATTERN)] | None = None
    distance_from_nipple_cm: float | None = Field(None, gt=0, le=NIPPLE_DISTANCE_MAX_CM)
    size_mm: list[Annotated[float, Field(gt=0, le=SIZE_MM_MAX)]] | None = Field(
        None, min_length=1, max_length=3
    )
    # The key image whose calibrated caliper gave the size, when one did.
    size_key_image_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")] | None = None
    shape: Choice[Shape] | None = None
    orientation: Choice[Orientation] | None = None
    margin: list[Choice[Margin]] | None = Field(None, min_length=1, max_length=len(Margin))
    echo_pattern: Choice[EchoPattern] | None = None
    posterior_features: Choice[PosteriorFeatures] | None = None
    calcifications: Choice[Calcifications] | None = None
    associated_features: list[Choice[AssociatedFeature]] = Field(
        default_factory=list, max_length=len(AssociatedFeature)
    )
    special_case: Choice[SpecialCase] | None = None
    category: Choice[BiRads] | None = None
    note: ShortText | None = None

    @field_validator("margin")
    @classmethod
    def _margin(cls, margin: list[Margin] | None) -> list[Margin] | None:
        if margin and Margin.CIRCUMSCRIBED in margin and len(margin) > 1:
            raise ValueError("circumscribed alone, or one or more kinds of not circumscribed")
        return _once(margin)

    @field_validator("associated_features")
    @classmethod
    def _associated(cls, features: list[AssociatedFeature]) -> list[AssociatedFeature]:
        return _once(features) or []


def _once(values: list[_Value] | None) -> list[_Value] | None:
    """Refuse a value listed twice (ValueError, for a validator)."""
    if values is not None and len(set(values)) != len(values):
        raise ValueError("a kind is listed twice")
    return values


# Compression ultrasound of the deep veins: what each examined segment shows.


class Thrombus(enum.StrEnum):
    NONE = "none"
    ACUTE = "acute"
    CHRONIC = "chronic"
    INDETERMINATE = "indeterminate"


class Flow(enum.StrEnum):
    """Doppler flow features present in the segment (absent ones are left out)."""

    SPONTANEOUS = "spontaneous"
    PHASIC = "phasic"
    AUGMENTATION = "augmentation"


class Extent(enum.StrEnum):
    """How much of the lumen a thrombus fills."""

    OCCLUSIVE = "occlusive"
    NON_OCCLUSIVE = "non_occlusive"
    FREE_FLOATING = "free_floating"


class SegmentFinding(StrictModel):
    """One examined venous segment."""

    segment: Choice[DvtSegment]
    compressibility: Choice[Compressibility] | None = None
    thrombus: Choice[Thrombus] | None = None
    flow: list[Choice[Flow]] = Field(default_factory=list, max_length=len(Flow))
    extent: Choice[Extent] | None = None

    @field_validator("flow")
    @classmethod
    def _flow(cls, flow: list[Flow]) -> list[Flow]:
        return _once(flow) or []


def unique_segments(value: list[SegmentFinding] | None) -> list[SegmentFinding] | None:
    """Refuse a segment listed twice (ValueError, for a validator)."""
    if value is not None and len({f.segment for f in value}) != len(value):
        raise ValueError("a segment is listed twice")
    return value


# How a value is said on the pages and in the printed report, where "_" for " " is not enough.
_SAID = {
    "not_parallel": "not parallel",
    "complex_cystic_solid": "complex cystic and solid",
    "in_mass": "in a mass",
    "outside_mass": "outside a mass",
    "mass_in_or_on_skin": "mass in or on skin",
    "vascularity_absent": "vascularity absent",
    "vascularity_internal": "internal vascularity",
    "vascularity_rim": "vessels in rim",
    "elasticity_soft": "elasticity: soft",
    "elasticity_intermediate": "elasticity: intermediate",
    "elasticity_hard": "elasticity: hard",
    "non_occlusive": "non-occlusive",
    "free_floating": "free-floating",
}
LESION_CHOICES: dict[str, type[enum.StrEnum]] = {
    "side": Side,
    "shape": Shape,
    "orientation": Orientation,
    "margin": Margin,
    "echo_pattern": EchoPattern,
    "posterior_features": PosteriorFeatures,
    "calcifications": Calcifications,
    "associated_features": AssociatedFeature,
    "special_case": SpecialCase,
}
SEGMENT_CHOICES: dict[str, type[enum.StrEnum]] = {
    "thrombus": Thrombus,
    "flow": Flow,
    "extent": Extent,
}


def said(value: enum.StrEnum | str) -> str:
    """A lexicon value as a reader says it ("not_parallel" -> "not parallel")."""
    text = str(value)
    return _SAID.get(text, text.replace("_", " "))


def choices(kind: type[enum.StrEnum]) -> list[dict[str, str]]:
    """A lexicon enum as the pages offer it: value and label, in the lexicon's order."""
    return [{"value": member.value, "label": said(member)} for member in kind]
