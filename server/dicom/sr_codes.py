"""The codes of the report's structured findings in its SR: the lexicon's values -> DICOM codes.

Keys are the lexicon's values (`server/consultations/lexicon.py`; this module is below it and
does not import it: `tests/test_sr.py` checks that every value has a code). Codes come
from PS3.16 where it has them: the breast imaging context groups (CID 6004 shape, 6006 margin,
6012 calcification distribution, 6018 clock face, 6022 side, 6054/6064 breast findings, 6152
orientation, 6154 echo pattern, 6155 posterior acoustic features, 6157 vascularity, 6165 linear
measurements) and SNOMED CT's veins of the lower limb (CID 3827, 12103). Where PS3.16 has none
(BI-RADS categories: CID 6027 lists no codes, the ACR holds them; compressibility, venous flow,
thrombus extent, duct changes, elasticity grades, half-hour clock positions, the calf muscular
veins as one group, ...) the local scheme `LOCAL` ("99PROBELINK", declared in the SR) is used.
docs/sr-coding.md is the table for the PACS side.
"""

from __future__ import annotations

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

LOCAL = "99PROBELINK"


def local(value: str, meaning: str) -> Code:
    """A code of the local scheme (PS3.16 8.2: a "99" prefix is private to its maker)."""
    return Code(value, LOCAL, meaning)


# Concept names: what each content item is.
LESION = codes.SCT.Lesion
SIDE = codes.SCT.FindingSite  # the breast, CID 6022
CLOCK = codes.DCM.ClockfaceOrRegion
NIPPLE_DISTANCE = codes.DCM.DistanceFromNipple
DIAMETER = codes.SCT.Diameter
SHAPE = codes.SCT.Shape
ORIENTATION = codes.DCM.Orientation
MARGIN = codes.DCM.Margins
ECHO_PATTERN = codes.DCM.EchoPattern
POSTERIOR_FEATURES = codes.DCM.PosteriorAcousticFeatures
CALCIFICATIONS = codes.DCM.CalcificationDistribution
ASSOCIATED_FINDING = codes.SCT.AssociatedFinding
VASCULARITY = codes.DCM.Vascularity
ELASTICITY = codes.DCM.Elasticity
SPECIAL_CASE = codes.DCM.Finding  # CID 6064, ultrasound finding for breast
CATEGORY = codes.DCM.AssessmentCategory
NOTE = codes.DCM.Comment

SEGMENT_FINDING = codes.DCM.Finding
VEIN = codes.SCT.FindingSite
TOPOGRAPHY = codes.SCT.TopographicalModifier
COMPRESSIBILITY = local("COMPRESSIBILITY", "Compressibility")
THROMBUS = codes.SCT.Thrombus
FLOW = local("VENFLOW", "Venous flow")
EXTENT = local("THROMBEXTENT", "Thrombus extent")

SIDES = {"left": codes.SCT.LeftBreast, "right": codes.SCT.RightBreast}
# CID 6018's whole hours; the half hours are local (`clock`).
HOURS: dict[str, Code] = {str(h): getattr(codes.SCT, f"_{h}OClockPosition") for h in range(1, 13)}
SHAPES = {
    "oval": codes.SCT.OvoidShapeOval,
    "round": codes.SCT.RoundShape,
    "irregular": codes.SCT.Irregular,
}
ORIENTATIONS = {"parallel": codes.DCM.Parallel, "not_parallel": codes.DCM.NotParallel}
MARGINS = {
    "circumscribed": codes.SCT.CircumscribedLesion,
    "indistinct": codes.SCT.IndistinctLesion,
    "angular": codes.DCM.AngularMargins,
    "microlobulated": codes.SCT.MicrolobulatedLesion,
    "spiculated": codes.SCT.SpiculatedLesion,
}
ECHO_PATTERNS = {
    "anechoic": codes.DCM.Anechoic,
    "hyperechoic": codes.DCM.Hyperechoic,
    "complex_cystic_solid": codes.DCM.Complex,
    "hypoechoic": codes.DCM.Hypoechoic,
    "isoechoic": codes.DCM.Isoechoic,
    # BI-RADS 5th edition's; not in CID 6154: RadLex's term.
    "heterogeneous": codes.RADLEX.Heterogeneous,
}
POSTERIOR = {
    "none": codes.DCM.NoPosteriorAcousticFeatures,
    "enhancement": codes.DCM.PosteriorEnhancement,
    "shadowing": codes.DCM.PosteriorShadowing,
    "combined": codes.DCM.CombinedPosteriorEnhancementAndShadowing,
}
CALCIFICATION_VALUES = {
    "none": codes.SCT.None_,
    "in_mass": codes.DCM.CalcificationsWithinAMass,
    "outside_mass": codes.DCM.CalcificationsOutsideOfAMass,
    "intraductal": local("CALCINTRADUCT", "Intraductal calcifications"),
}
# An associated feature: (concept name, value).
ASSOCIATED = {
    "architectural_distortion": (ASSOCIATED_FINDING, codes.SCT.ArchitecturalDistortionOfBreast),
    "duct_changes": (ASSOCIATED_FINDING, local("DUCTCHANGES", "Duct changes")),
    "skin_thickening": (ASSOCIATED_FINDING, codes.SCT.SkinThickeningOfBreast),
    "skin_retraction": (ASSOCIATED_FINDING, codes.SCT.SkinRetractionOfBreast),
    "edema": (ASSOCIATED_FINDING, codes.SCT.Edema),
    "vascularity_absent": (VASCULARITY, codes.DCM.VascularityNotPresent),
    "vascularity_internal": (VASCULARITY, codes.DCM.VascularityPresentInLesion),
    "vascularity_rim": (VASCULARITY, codes.DCM.VascularityPresentImmediatelyAdjacentToLesion),
    "elasticity_soft": (ELASTICITY, local("ELASTSOFT", "Soft")),
    "elasticity_intermediate": (ELASTICITY, local("ELASTINTERMED", "Intermediate")),
    "elasticity_hard": (ELASTICITY, local("ELASTHARD", "Hard")),
}
SPECIAL_CASES = {
    "simple_cyst": codes.SCT.CystOfBreast,
    "clustered_microcysts": codes.DCM.ClusteredMicrocysts,
    "complicated_cyst": codes.DCM.ComplicatedCyst,
    # PS3.16 has "in" and "on" the skin apart; the lexicon says them together.
    "mass_in_or_on_skin": local("MASSINONSKIN", "Mass in or on skin"),
    "foreign_body": codes.SCT.ForeignBody,
    "intramammary_lymph_node": codes.SCT.IntramammaryLymphNode,
    "axillary_lymph_node": codes.SCT.AxillaryLymphNode,
}
BIRADS = {
    value: local(f"BIRADS{value}", f"BI-RADS {value}")
    for value in ("0", "1", "2", "3", "4", "4A", "4B", "4C", "5", "6")
}

# A venous segment: the vein and, for the femoral vein's thirds, where along it.
VEINS: dict[str, tuple[Code, Code | None]] = {
    "common_femoral": (codes.SCT.CommonFemoralVein, None),
    "saphenofemoral_junction": (codes.SCT.SaphenofemoralJunction, None),
    "femoral_proximal": (codes.SCT.FemoralVein, codes.SCT.Proximal),
    "femoral_mid": (codes.SCT.FemoralVein, codes.NCIt.Middle),
    "femoral_distal": (codes.SCT.FemoralVein, codes.SCT.Distal),
    "popliteal": (codes.SCT.PoplitealVein, None),
    "posterior_tibial": (codes.SCT.PosteriorTibialVein, None),
    "peroneal": (codes.SCT.PeronealVein, None),
    # Gastrocnemius and soleal veins together, as compression ultrasound examines them.
    "calf_muscular": (local("CALFMUSCVEIN", "Calf muscular veins"), None),
}
COMPRESSIBILITY_VALUES = {
    "compressible": local("COMPRESSIBLE", "Compressible"),
    "partially_compressible": local("PARTCOMPRESSIBLE", "Partially compressible"),
    "non_compressible": local("NONCOMPRESSIBLE", "Non-compressible"),
    "not_visualized": local("NOTVISUALIZED", "Not visualized"),
}
THROMBUS_VALUES = {
    "none": codes.SCT.Absent,
    "acute": codes.SCT.SuddenOnset,  # CID 6130's "Acute onset"
    "chronic": codes.SCT.Chronic,
    "indeterminate": codes.SCT.Indeterminate,
}
FLOW_VALUES = {
    "spontaneous": local("SPONTFLOW", "Spontaneous flow"),
    "phasic": local("PHASICFLOW", "Phasic flow"),
    "augmentation": local("AUGMENTATION", "Flow augmentation"),
}
EXTENT_VALUES = {
    "occlusive": local("OCCLUSIVE", "Occlusive"),
    "non_occlusive": local("NONOCCLUSIVE", "Non-occlusive"),
    "free_floating": local("FREEFLOATING", "Free-floating"),
}


def clock(value: str) -> Code:
    """A clock-face position: CID 6018 for the whole hours, local for the half hours."""
    hour, _, minutes = value.partition(":")
    if minutes in ("", "00"):
        return HOURS[hour]
    return local(f"CLOCK{int(hour):02d}{minutes}", f"{hour}:{minutes} o'clock position")
