"""The expert's signed second opinion as a DICOM Comprehensive SR (highdicom).

The report joins the consultation's study next to the key images it cites and is
de-identified exactly like the key object selection: highdicom copies the patient
and study modules from the evidence (our own de-identified key images), then
`writer.finish` rewrites the patient attributes and stamps PS3.15 Annex E.

The tree has the shape of TID 2000 (Basic Diagnostic Imaging Report) without
claiming it: a title from CID 7000, the signer as observer context, sections from
CID 7001 holding items named from CID 7002, study quality from CID 7036 (RadLex).
Concordance with the first read and quality limitations have no standard codes:
they use a local scheme ("99" prefix, PS3.16 8.2) declared in the header.
The structured findings are coded (`sr_codes`: PS3.16's breast and vascular codes where it has
them, the local scheme otherwise): each breast lesion is a container in the findings section
with its side (finding site), clock face, distance from the nipple (cm) and diameters (mm,
inferred from the cited key image that measured them), its lexicon descriptors and category;
each examined venous segment a container with the vein as finding site, compressibility,
thrombus, flow and extent.
Signers are pseudonymous reader ids; no person's name is ever written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.valuerep import DA, DT, TM

from server.dicom import sr_codes, writer
from server.dicom.sr_codes import LOCAL

ORGANIZATION = "probelink"
# A reader id, never a name: no spaces, nothing that would split a PN into components.
SIGNER_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")

CONCORDANCE = hd.sr.CodedConcept("CONCORDANCE", LOCAL, "Concordance with first read")
CONCORDANCE_VALUES = {
    "agree": hd.sr.CodedConcept("AGREE", LOCAL, "Agrees with first read"),
    "minor_discrepancy": hd.sr.CodedConcept("MINORDISC", LOCAL, "Minor discrepancy"),
    "major_discrepancy": hd.sr.CodedConcept("MAJORDISC", LOCAL, "Major discrepancy"),
}
QUALITY_VALUES = {
    "adequate": codes.RADLEX.DiagnosticQuality,
    "limited": codes.RADLEX.LimitedQuality,
    "non_diagnostic": codes.RADLEX.NonDiagnosticQuality,
}
QUALITY_REASON = hd.sr.CodedConcept("QUALITYREASON", LOCAL, "Image quality limitation")
MEASUREMENT_LABEL = hd.sr.CodedConcept("MEASLABEL", LOCAL, "Measurement label")
SEGMENTS_EXAMINED = hd.sr.CodedConcept("VENSEGEXAM", LOCAL, "Venous segments examined")

Concept = Code | hd.sr.CodedConcept
Relation = hd.sr.RelationshipTypeValues
CONTAINS = Relation.CONTAINS
PROPERTY = Relation.HAS_PROPERTIES
OBS_CONTEXT = Relation.HAS_OBS_CONTEXT
INFERRED_FROM = Relation.INFERRED_FROM
MODIFIER = Relation.HAS_CONCEPT_MOD


@dataclass(frozen=True)
class Measurement:
    """A caliper's length on a cited image, and how the image was calibrated for it."""

    sop_class: str
    sop: str
    mm: float
    calibration: str  # e.g. "calibrated on the depth scale"
    label: str | None = None
    frame: int | None = None  # the clip's frame it was measured on (1-based)


@dataclass(frozen=True)
class LesionContent:
    """One breast lesion in the lexicon's values (the keys of `sr_codes`' tables)."""

    side: str | None = None
    clock: str | None = None
    distance_from_nipple_cm: float | None = None
    size_mm: tuple[float, ...] = ()
    # The cited key image whose calipers gave the size: (SOP Class UID, SOP Instance UID).
    size_source: tuple[str, str] | None = None
    shape: str | None = None
    orientation: str | None = None
    margin: tuple[str, ...] = ()
    echo_pattern: str | None = None
    posterior_features: str | None = None
    calcifications: str | None = None
    associated_features: tuple[str, ...] = ()
    special_case: str | None = None
    category: str | None = None
    note: str | None = None

    def __post_init__(self) -> None:
        _known(
            (self.side, sr_codes.SIDES),
            (self.shape, sr_codes.SHAPES),
            (self.orientation, sr_codes.ORIENTATIONS),
            (self.echo_pattern, sr_codes.ECHO_PATTERNS),
            (self.posterior_features, sr_codes.POSTERIOR),
            (self.calcifications, sr_codes.CALCIFICATION_VALUES),
            (self.special_case, sr_codes.SPECIAL_CASES),
            (self.category, sr_codes.BIRADS),
            *((m, sr_codes.MARGINS) for m in self.margin),
            *((a, sr_codes.ASSOCIATED) for a in self.associated_features),
        )
        if self.clock is not None:
            sr_codes.clock(self.clock)


@dataclass(frozen=True)
class SegmentContent:
    """What one examined venous segment shows, in the lexicon's values."""

    segment: str
    compressibility: str | None = None
    thrombus: str | None = None
    flow: tuple[str, ...] = ()
    extent: str | None = None

    def __post_init__(self) -> None:
        _known(
            (self.segment, sr_codes.VEINS),
            (self.compressibility, sr_codes.COMPRESSIBILITY_VALUES),
            (self.thrombus, sr_codes.THROMBUS_VALUES),
            (self.extent, sr_codes.EXTENT_VALUES),
            *((f, sr_codes.FLOW_VALUES) for f in self.flow),
        )


def _known(*pairs: tuple[str | None, Mapping[str, object]]) -> None:
    for value, table in pairs:
        if value is not None and value not in table:
            raise ValueError(f"no code for {value!r}")


@dataclass(frozen=True)
class ReportContent:
    """What the expert signed. Texts are clinical content the expert wrote."""

    application_label: str
    findings: str
    category: tuple[str, str] | None  # (value, label), e.g. ("4A", "BI-RADS 4A")
    recommendation: str | None
    concordance: str | None  # a key of CONCORDANCE_VALUES
    quality_grade: str  # a key of QUALITY_VALUES
    quality_reasons: tuple[str, ...]
    quality_note: str | None
    key_images: tuple[tuple[str, str], ...]  # (SOP Class UID, SOP Instance UID), all in evidence
    signer: str  # pseudonymous reader id
    signed_at: datetime  # timezone-aware
    addenda: tuple[tuple[str, str, datetime], ...] = ()  # (text, signer, signed at)
    measurements: tuple[Measurement, ...] = ()  # on cited images only
    segments_examined: tuple[str, ...] = ()  # DVT: the venous segments covered, as labels
    lesions: tuple[LesionContent, ...] = ()  # breast, coded
    segment_findings: tuple[SegmentContent, ...] = ()  # DVT, coded

    def __post_init__(self) -> None:
        # Refuse bad content when it is made, not halfway through building the document.
        if not self.findings.strip():
            raise ValueError("a report needs findings")
        if self.quality_grade not in QUALITY_VALUES:
            raise ValueError(f"unknown quality grade {self.quality_grade!r}")
        if self.concordance not in (None, *CONCORDANCE_VALUES):
            raise ValueError(f"unknown concordance {self.concordance!r}")
        for _, signer, at in ((None, self.signer, self.signed_at), *self.addenda):
            _person(signer)
            _dt(at)


def _dt(when: datetime) -> DT:
    if when.tzinfo is None:
        raise ValueError("signing times must be timezone-aware")
    return DT(when.astimezone(UTC).strftime("%Y%m%d%H%M%S.%f+0000"))


def _person(signer: str) -> str:
    if not SIGNER_PATTERN.fullmatch(signer):
        raise ValueError(f"not a pseudonymous reader id: {signer!r}")
    # The id as the family name; the caret tells highdicom it is a PN on purpose.
    return f"{signer}^"


def _text(name: Concept, value: str, rel: Relation = CONTAINS) -> hd.sr.ContentItem:
    return hd.sr.TextContentItem(name=name, value=value, relationship_type=rel)


def _code(name: Concept, value: Concept) -> hd.sr.ContentItem:
    return hd.sr.CodeContentItem(name=name, value=value, relationship_type=CONTAINS)


def _section(name: Concept, items: Sequence[hd.sr.ContentItem]) -> hd.sr.ContainerContentItem:
    section = hd.sr.ContainerContentItem(
        name=name, is_content_continuous=False, relationship_type=CONTAINS
    )
    section.ContentSequence = hd.sr.ContentSequence(items)
    return section


def _observer(signer: str) -> list[hd.sr.ContentItem]:
    """TID 1002/1003 observer context: the signer is the person responsible below this item."""
    kind = hd.sr.CodeContentItem(codes.DCM.ObserverType, codes.DCM.Person, OBS_CONTEXT)
    name = hd.sr.PnameContentItem(codes.DCM.PersonObserverName, _person(signer), OBS_CONTEXT)
    return [kind, name]


def _measurement(m: Measurement) -> hd.sr.ContentItem:
    """A distance in mm (UCUM), inferred from its image, with its calibration as a property."""
    item = hd.sr.NumContentItem(
        name=codes.DCM.Distance, value=m.mm, unit=codes.UCUM.Millimeter, relationship_type=CONTAINS
    )
    children: list[hd.sr.ContentItem] = [
        hd.sr.ImageContentItem(
            codes.DCM.SourceOfMeasurement,
            m.sop_class,
            m.sop,
            referenced_frame_numbers=m.frame,
            relationship_type=INFERRED_FROM,
        ),
        _text(codes.DCM.Comment, m.calibration, PROPERTY),
    ]
    if m.label:
        children.append(_text(MEASUREMENT_LABEL, m.label, PROPERTY))
    item.ContentSequence = hd.sr.ContentSequence(children)
    return item


def _num(name: Concept, value: float, unit: Code) -> hd.sr.NumContentItem:
    return hd.sr.NumContentItem(name=name, value=value, unit=unit, relationship_type=CONTAINS)


def _lesion(n: int, lesion: LesionContent) -> hd.sr.ContainerContentItem:
    """A breast lesion: its location, diameters, descriptors and category, coded."""
    c = sr_codes
    items: list[hd.sr.ContentItem] = [_text(codes.DCM.LesionIdentifier, f"Lesion {n}")]
    if lesion.side is not None:
        items.append(hd.sr.CodeContentItem(c.SIDE, c.SIDES[lesion.side], MODIFIER))
    if lesion.clock is not None:
        items.append(_code(c.CLOCK, c.clock(lesion.clock)))
    if lesion.distance_from_nipple_cm is not None:
        items.append(_num(c.NIPPLE_DISTANCE, lesion.distance_from_nipple_cm, codes.UCUM.Centimeter))
    for size in lesion.size_mm:
        diameter = _num(c.DIAMETER, size, codes.UCUM.Millimeter)
        if lesion.size_source is not None:
            sop_class, sop = lesion.size_source
            source = hd.sr.ImageContentItem(
                codes.DCM.SourceOfMeasurement, sop_class, sop, relationship_type=INFERRED_FROM
            )
            diameter.ContentSequence = hd.sr.ContentSequence([source])
        items.append(diameter)
    for name, value, table in (
        (c.SHAPE, lesion.shape, c.SHAPES),
        (c.ORIENTATION, lesion.orientation, c.ORIENTATIONS),
        *((c.MARGIN, m, c.MARGINS) for m in lesion.margin),
        (c.ECHO_PATTERN, lesion.echo_pattern, c.ECHO_PATTERNS),
        (c.POSTERIOR_FEATURES, lesion.posterior_features, c.POSTERIOR),
        (c.CALCIFICATIONS, lesion.calcifications, c.CALCIFICATION_VALUES),
        (c.SPECIAL_CASE, lesion.special_case, c.SPECIAL_CASES),
    ):
        if value is not None:
            items.append(_code(name, table[value]))
    items += [_code(*c.ASSOCIATED[a]) for a in lesion.associated_features]
    if lesion.category is not None:
        items.append(_code(c.CATEGORY, c.BIRADS[lesion.category]))
    if lesion.note:
        items.append(_text(c.NOTE, lesion.note))
    return _section(c.LESION, items)


def _segment(finding: SegmentContent) -> hd.sr.ContainerContentItem:
    """An examined venous segment: the vein (finding site) and what compression and Doppler
    showed there, coded."""
    c = sr_codes
    vein, where = c.VEINS[finding.segment]
    site = hd.sr.CodeContentItem(c.VEIN, vein, MODIFIER)
    if where is not None:
        site.ContentSequence = hd.sr.ContentSequence(
            [hd.sr.CodeContentItem(c.TOPOGRAPHY, where, MODIFIER)]
        )
    items: list[hd.sr.ContentItem] = [site]
    if finding.compressibility is not None:
        items.append(_code(c.COMPRESSIBILITY, c.COMPRESSIBILITY_VALUES[finding.compressibility]))
    if finding.thrombus is not None:
        items.append(_code(c.THROMBUS, c.THROMBUS_VALUES[finding.thrombus]))
    items += [_code(c.FLOW, c.FLOW_VALUES[f]) for f in finding.flow]
    if finding.extent is not None:
        items.append(_code(c.EXTENT, c.EXTENT_VALUES[finding.extent]))
    return _section(c.SEGMENT_FINDING, items)


def _content(content: ReportContent) -> hd.sr.ContainerContentItem:
    findings = [_text(codes.DCM.Finding, content.findings)]
    findings += [_measurement(m) for m in content.measurements]
    findings += [_lesion(n, lesion) for n, lesion in enumerate(content.lesions, 1)]
    findings += [_segment(finding) for finding in content.segment_findings]
    sections = [_section(codes.LN.Findings, findings)]
    impressions = []
    if content.category is not None:
        impressions.append(_text(codes.DCM.AssessmentCategory, content.category[1]))
    if content.concordance is not None:
        impressions.append(_code(CONCORDANCE, CONCORDANCE_VALUES[content.concordance]))
    if impressions:
        sections.append(_section(codes.LN.Impressions, impressions))
    if content.recommendation:
        recommendation = _text(codes.DCM.Recommendation, content.recommendation)
        sections.append(_section(codes.LN.Recommendations, [recommendation]))
    # Study quality, with what limited it as properties of the grade.
    quality = _code(codes.DCM.ImagingStudyQuality, QUALITY_VALUES[content.quality_grade])
    properties = [_text(QUALITY_REASON, reason, PROPERTY) for reason in content.quality_reasons]
    if content.quality_note:
        properties.append(_text(codes.DCM.Comment, content.quality_note, PROPERTY))
    if properties:
        quality.ContentSequence = hd.sr.ContentSequence(properties)
    procedure = [_text(codes.DCM.ProcedureDescription, content.application_label), quality]
    if content.segments_examined:
        procedure.append(_text(SEGMENTS_EXAMINED, ", ".join(content.segments_examined)))
    sections.append(_section(codes.LN.CurrentProcedureDescriptions, procedure))
    if content.key_images:
        images = [
            hd.sr.ImageContentItem(
                codes.DCM.BestIllustrationOfFinding, sop_class, sop, relationship_type=CONTAINS
            )
            for sop_class, sop in content.key_images
        ]
        sections.append(_section(codes.LN.KeyImages, images))
    # Each addendum is its own section, observed by its own signer at its own time.
    for text, signer, at in content.addenda:
        addendum = _section(codes.LN.Addendum, [*_observer(signer), _text(codes.DCM.Comment, text)])
        addendum.add_new("ObservationDateTime", "DT", _dt(at))
        sections.append(addendum)
    root = hd.sr.ContainerContentItem(codes.LN.DiagnosticImagingReport, False)
    root.ContentSequence = hd.sr.ContentSequence([*_observer(content.signer), *sections])
    return root


def _verifier(signer: str, at: datetime) -> Dataset:
    item = Dataset()
    item.VerifyingObserverName = _person(signer)
    item.VerifyingObserverIdentificationCodeSequence = []  # Type 2: no identifying code
    item.VerifyingOrganization = ORGANIZATION
    item.VerificationDateTime = _dt(at)
    return item


def report_sr(
    content: ReportContent,
    evidence: Sequence[Dataset],
    study: writer.Study,
    inst: writer.Instance,
    previous: Dataset | None = None,
) -> Dataset:
    """The signed report as a Comprehensive SR in the consultation's study; an amended one
    names the version it replaces (`previous`) as its predecessor document.

    `evidence` are the key images (our de-identified objects); every `key_images`
    reference must be among them. `inst.acquired_at` is when this object is written.
    """
    # highdicom takes the study from the evidence: it must be this consultation's.
    if not evidence or any(
        e.StudyInstanceUID != study.study_uid or e.PatientID != study.patient for e in evidence
    ):
        raise ValueError("the evidence must be key images of this consultation's study")
    ds = hd.sr.ComprehensiveSR(
        evidence=list(evidence),
        content=_content(content),
        series_instance_uid=inst.series_uid,
        series_number=inst.series_number,
        sop_instance_uid=inst.sop_uid,
        instance_number=inst.instance_number,
        manufacturer=writer.MANUFACTURER,
        is_complete=True,
        is_final=True,
        is_verified=True,
        verifying_observer_name=_person(content.signer),
        verifying_organization=ORGANIZATION,
        previous_versions=[previous] if previous is not None else None,
    )
    signed = content.signed_at.astimezone(UTC)
    ds.ContentDate, ds.ContentTime = DA(signed.date()), TM(signed.time())
    # highdicom stamps verification with its local clock: every signature at its own time.
    ds.VerifyingObserverSequence = [
        _verifier(content.signer, content.signed_at),
        *(_verifier(signer, at) for _, signer, at in content.addenda),
    ]
    local = Dataset()
    local.CodingSchemeDesignator = LOCAL
    local.CodingSchemeName = "probelink local codes"
    local.CodingSchemeResponsibleOrganization = ORGANIZATION
    ds.CodingSchemeIdentificationSequence = [local]
    return writer.finish(ds, study, inst)
