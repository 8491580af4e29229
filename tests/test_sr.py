"""The signed second-opinion report as a Comprehensive SR: valid, de-identified, readable back."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest
from dicom_checks import dciodvfy_errors, every_value, read
from highdicom._standard_utils import (
    get_iod_module_map,
    get_module_attribute_map,
    get_sop_class_iod_map,
)
from phantom import PATIENT_DOB, PATIENT_MRN, PATIENT_NAME
from pydicom.dataset import Dataset
from pydicom.uid import UltrasoundImageStorage

from server.dicom import deid, sr, writer

KEY = b"k" * 32
NOW = datetime(2026, 11, 23, 10, 30, tzinfo=UTC)
SIGNED = NOW + timedelta(hours=2)
ADDENDA = (
    ("Lesion also seen on the second clip.", "reader-b7", SIGNED + timedelta(hours=1)),
    ("Follow-up booked by the site.", "reader-a1", SIGNED + timedelta(days=1, minutes=5)),
)
# What the SR document itself states (SOP common, series, SR document modules, Annex E).
SR_OWN = {
    "SOPClassUID",
    "SOPInstanceUID",
    "Manufacturer",
    "InstanceCreationDate",
    "InstanceCreationTime",
    "Modality",
    "SeriesInstanceUID",
    "SeriesNumber",
    "InstanceNumber",
    "ReferencedPerformedProcedureStepSequence",
    "ContentDate",
    "ContentTime",
    "CompletionFlag",
    "VerificationFlag",
    "PreliminaryFlag",
    "VerifyingObserverSequence",
    "PerformedProcedureCodeSequence",
    "CurrentRequestedProcedureEvidenceSequence",
    "CodingSchemeIdentificationSequence",
    "ValueType",
    "ConceptNameCodeSequence",
    "ContinuityOfContent",
    "ContentSequence",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "ContributingEquipmentSequence",
}


def study() -> writer.Study:
    return writer.Study(
        patient=deid.pseudonym(KEY, "c1"),
        study_uid=deid.derived_uid(KEY, "study", "c1"),
        started_at=NOW,
        manufacturer="Acme",  # the scanner's; the SR's equipment is probelink
        model="US-1",
        transducer="L12-5",
        application="breast",
        laterality="left",
    )


def instance(kind: str, when: datetime = NOW) -> writer.Instance:
    return writer.Instance(
        series_uid=deid.derived_uid(KEY, "series", "c1", kind),
        series_number=1 if kind == "still" else 90,
        sop_uid=deid.derived_uid(KEY, kind, "1"),
        instance_number=1,
        acquired_at=when,
    )


def key_image() -> Dataset:
    pixels = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    return writer.still(pixels, study(), instance("still"))


def content(image: Dataset, **more: Any) -> sr.ReportContent:
    base = sr.ReportContent(
        application_label="Breast ultrasound",
        findings="Irregular hypoechoic mass at 2 o'clock, 14 mm.",
        category=("4A", "BI-RADS 4A"),
        recommendation="Ultrasound-guided core biopsy.",
        concordance="minor_discrepancy",
        quality_grade="limited",
        quality_reasons=("depth too shallow", "no Doppler"),
        quality_note="Posterior margin not shown.",
        key_images=((UltrasoundImageStorage, image.SOPInstanceUID),),
        signer="reader-a1",
        signed_at=SIGNED,
        addenda=ADDENDA,
    )
    return replace(base, **more)


def report(image: Dataset, **more: Any) -> Dataset:
    return sr.report_sr(content(image, **more), [image], study(), instance("report", SIGNED))


def items(ds: Dataset) -> list[Dataset]:
    """Every content item of the tree, depth first."""
    found: list[Dataset] = []

    def walk(seq: Any) -> None:
        for item in seq:
            found.append(item)
            walk(item.get("ContentSequence", []))

    walk(ds.ContentSequence)
    return found


def name(item: Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeMeaning)


def test_the_signed_report_passes_dciodvfy_and_reads_back(tmp_path: Path) -> None:
    image = key_image()
    data = writer.to_bytes(report(image))
    assert dciodvfy_errors(data, tmp_path) == []
    back = read(data)
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
    assert back.file_meta.MediaStorageSOPClassUID == back.SOPClassUID
    assert back.StudyInstanceUID == image.StudyInstanceUID == study().study_uid
    assert back.PatientID == image.PatientID and back.PatientName == image.PatientName
    assert back.PatientIdentityRemoved == "YES"
    assert back.Manufacturer == "probelink" and "ManufacturerModelName" not in back
    assert back.DeidentificationMethod and back.DeidentificationMethodCodeSequence
    assert back.ConceptNameCodeSequence[0].CodeValue == "18748-4"
    assert (back.CompletionFlag, back.VerificationFlag, back.PreliminaryFlag) == (
        "COMPLETE",
        "VERIFIED",
        "FINAL",
    )
    signer = back.VerifyingObserverSequence[0]
    assert str(signer.VerifyingObserverName) == "reader-a1^"
    assert signer.VerifyingOrganization == "probelink"
    assert signer.VerificationDateTime == "20261123123000.000000+0000"
    assert back.ContentDate == "20261123" and back.ContentTime.startswith("123000")

    tree = items(back)
    texts = {(name(i), i.TextValue) for i in tree if i.ValueType == "TEXT"}
    assert ("Finding", "Irregular hypoechoic mass at 2 o'clock, 14 mm.") in texts
    assert ("Recommendation", "Ultrasound-guided core biopsy.") in texts
    assert ("Assessment Category", "BI-RADS 4A") in texts
    assert ("Image quality limitation", "no Doppler") in texts
    coded = {name(i): i.ConceptCodeSequence[0].CodeValue for i in tree if i.ValueType == "CODE"}
    assert coded["Concordance with first read"] == "MINORDISC"
    assert coded["Imaging Study Quality"] == "RID13"
    assert coded["Observer Type"] == "121006"
    # The local coding scheme is declared, so a reader can tell where its codes come from.
    assert [i.CodingSchemeDesignator for i in back.CodingSchemeIdentificationSequence] == [
        "99PROBELINK"
    ]
    images = [i for i in tree if i.ValueType == "IMAGE"]
    assert [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in images] == [
        image.SOPInstanceUID
    ]
    evidence = back.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == image.StudyInstanceUID
    assert (
        evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        == image.SOPInstanceUID
    )

    # Addenda: each its own section, observer and time, and a signature of its own.
    addenda = [i for i in tree if i.ValueType == "CONTAINER" and name(i) == "Addendum"]
    assert [
        (
            a.ContentSequence[-1].TextValue,
            str(a.ContentSequence[1].PersonName),
            a.ObservationDateTime,
        )
        for a in addenda
    ] == [
        ("Lesion also seen on the second clip.", "reader-b7^", "20261123133000.000000+0000"),
        ("Follow-up booked by the site.", "reader-a1^", "20261124123500.000000+0000"),
    ]
    assert [
        (str(v.VerifyingObserverName), v.VerificationDateTime)
        for v in back.VerifyingObserverSequence[1:]
    ] == [
        ("reader-b7^", "20261123133000.000000+0000"),
        ("reader-a1^", "20261124123500.000000+0000"),
    ]
    # highdicom reads it back as a Comprehensive SR.
    assert isinstance(hd.sr.ComprehensiveSR.from_dataset(back), hd.sr.ComprehensiveSR)


def test_the_report_is_de_identified_like_the_key_object_selection() -> None:
    image = key_image()
    back = read(writer.to_bytes(report(image)))
    kos = read(
        writer.to_bytes(writer.key_object_selection([image], study(), instance("kos", SIGNED)))
    )
    for keyword in (
        "PatientIdentityRemoved",
        "DeidentificationMethod",
        "DeidentificationMethodCodeSequence",
        "ContributingEquipmentSequence",
        "SpecificCharacterSet",
        "TimezoneOffsetFromUTC",
    ):
        assert back[keyword] == kos[keyword], keyword
    assert "BurnedInAnnotation" not in back
    assert not any(e.tag.is_private for e in back.iterall())
    # Nothing from the patient and study modules that the key image does not hold, as it is.
    iod = get_iod_module_map()[get_sop_class_iod_map()[back.SOPClassUID]]
    modules = [m["key"] for m in iod if m["ie"] in ("Patient", "Study")]
    keywords = {
        str(a["keyword"]) for m in modules for a in get_module_attribute_map()[m] if not a["path"]
    }
    held = keywords.intersection(back.dir())
    assert {"PatientName", "PatientIdentityRemoved", "StudyInstanceUID", "StudyDate"} <= held
    # And beyond those modules: every attribute is the SR's own, or the key image's as it is.
    for keyword in set(back.dir()) - SR_OWN:
        assert keyword in image and back[keyword].value == image[keyword].value, keyword
    # No person or institution named anywhere, no element keeps the phantom's identity.
    for keyword in ("InstitutionName", "OperatorsName", "PerformingPhysicianName", "StationName"):
        assert keyword not in back
    values = [str(v) for v in every_value(back)]
    for secret in (PATIENT_NAME, PATIENT_MRN, PATIENT_DOB, "ZEBULON", "48213977", "1957"):
        assert not any(secret.lower() in v.lower() for v in values), secret


def test_non_ascii_text_round_trips_in_utf8(tmp_path: Path) -> None:
    text = "≥ 5 mm, hypoechoic — Größe"
    image = key_image()
    data = writer.to_bytes(report(image, findings=text, quality_note="Schallschatten ±"))
    assert text.encode("utf-8") in data
    assert dciodvfy_errors(data, tmp_path) == []
    back = read(data)
    assert back.SpecificCharacterSet == "ISO_IR 192"
    texts = {i.TextValue for i in items(back) if i.ValueType == "TEXT"}
    assert {text, "Schallschatten ±"} <= texts


def test_optional_parts_are_left_out_and_the_grade_is_coded(tmp_path: Path) -> None:
    image = key_image()
    ds = report(
        image,
        category=None,
        recommendation=None,
        concordance=None,
        quality_grade="adequate",
        quality_reasons=(),
        quality_note=None,
        addenda=(),
    )
    data = writer.to_bytes(ds)
    assert dciodvfy_errors(data, tmp_path) == []
    tree = items(read(data))
    sections = [name(i) for i in tree if i.ValueType == "CONTAINER"]
    assert sections == ["Findings", "Current Procedure Descriptions", "Key Images"]
    quality = next(i for i in tree if i.ValueType == "CODE" and name(i) == "Imaging Study Quality")
    assert quality.ConceptCodeSequence[0].CodeValue == "RID12"
    assert "ContentSequence" not in quality
    assert len(read(data).VerifyingObserverSequence) == 1


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"signer": "Zebulon Quixote"}, "reader id"),  # a name with a space is not a reader id
        ({"signer": "reader^x"}, "reader id"),
        ({"signed_at": datetime(2026, 11, 23, 12, 0)}, "timezone"),  # naive: when was that?
        ({"findings": "  "}, "findings"),
        ({"addenda": (("text", "Dr Who", SIGNED),)}, "reader id"),
        ({"addenda": (("text", "reader-b7", datetime(2026, 11, 24)),)}, "timezone"),
        ({"quality_grade": "excellent"}, "quality grade"),
        ({"concordance": "maybe"}, "concordance"),
        ({"key_images": ((UltrasoundImageStorage, "2.25.1"),)}, "No evidence"),
    ],
)
def test_bad_content_is_refused(change: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        report(key_image(), **change)


def test_evidence_from_another_study_is_refused() -> None:
    other = replace(study(), study_uid=deid.derived_uid(KEY, "study", "c2"))
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    foreign = writer.still(pixels, other, instance("still"))
    with pytest.raises(ValueError, match="consultation's study"):
        sr.report_sr(content(foreign), [foreign], study(), instance("report", SIGNED))
    with pytest.raises(ValueError):
        sr.report_sr(content(foreign), [], study(), instance("report", SIGNED))


def test_a_dvt_report_names_the_venous_segments_it_covers(tmp_path: Path) -> None:
    covered = ("common femoral vein", "popliteal vein")
    data = writer.to_bytes(report(key_image(), segments_examined=covered))
    assert dciodvfy_errors(data, tmp_path) == []
    texts = {(name(i), i.TextValue) for i in items(read(data)) if i.ValueType == "TEXT"}
    assert ("Venous segments examined", "common femoral vein, popliteal vein") in texts
    # A report that names none has no such item.
    plain = items(read(writer.to_bytes(report(key_image()))))
    assert not [i for i in plain if name(i) == "Venous segments examined"]


LESIONS = (
    sr.LesionContent(
        side="left",
        clock="2",
        distance_from_nipple_cm=3.5,
        size_mm=(14.0, 9.5, 11.0),
        shape="irregular",
        orientation="not_parallel",
        margin=("angular", "spiculated"),
        echo_pattern="hypoechoic",
        posterior_features="shadowing",
        calcifications="in_mass",
        associated_features=("architectural_distortion", "vascularity_internal", "elasticity_hard"),
        category="4C",
        note="Abuts the pectoral fascia.",
    ),
    sr.LesionContent(side="right", clock="10:30", special_case="simple_cyst", category="2"),
)
SEGMENTS = (
    sr.SegmentContent("common_femoral", "compressible", "none", ("spontaneous", "phasic")),
    sr.SegmentContent("femoral_mid", "non_compressible", "acute", (), "occlusive"),
    sr.SegmentContent("calf_muscular", "partially_compressible", "chronic"),
)


def codes_of(item: Dataset) -> tuple[str, str, str]:
    """(concept name's code, value's scheme, value's code) of a CODE item."""
    value = item.ConceptCodeSequence[0]
    return (
        item.ConceptNameCodeSequence[0].CodeValue,
        value.CodingSchemeDesignator,
        value.CodeValue,
    )


def test_breast_lesions_are_coded_containers(tmp_path: Path) -> None:
    image = key_image()
    source = (UltrasoundImageStorage, image.SOPInstanceUID)
    lesions = (replace(LESIONS[0], size_source=source), LESIONS[1])
    data = writer.to_bytes(report(image, lesions=lesions))
    assert dciodvfy_errors(data, tmp_path) == []
    tree = read(data)
    containers = [i for i in items(tree) if i.ValueType == "CONTAINER" and name(i) == "Lesion"]
    assert len(containers) == 2
    first = containers[0].ContentSequence
    coded = {codes_of(i) for i in first if i.ValueType == "CODE"}
    assert coded >= {
        ("363698007", "SCT", "80248007"),  # finding site: left breast
        ("111014", "SCT", "129773009"),  # clock face: 2 o'clock
        ("300842002", "SCT", "49608001"),  # shape: irregular
        ("111354", "DCM", "111356"),  # orientation: not parallel
        ("111037", "DCM", "111343"),  # margins: angular
        ("111037", "SCT", "129742005"),  # ... and spiculated
        ("111360", "DCM", "111364"),  # echo pattern: hypoechoic
        ("111366", "DCM", "111369"),  # posterior shadowing
        ("111008", "DCM", "111346"),  # calcifications within a mass
        ("246090004", "SCT", "129792006"),  # architectural distortion
        ("111372", "DCM", "111375"),  # vascularity present in lesion
        ("110830", "99PROBELINK", "ELASTHARD"),
        ("111005", "99PROBELINK", "BIRADS4C"),
    }
    side = next(i for i in first if i.ValueType == "CODE" and name(i) == "Finding Site")
    assert side.RelationshipType == "HAS CONCEPT MOD"
    numbers = [
        (
            i.ConceptNameCodeSequence[0].CodeValue,
            float(i.MeasuredValueSequence[0].NumericValue),
            i.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue,
        )
        for i in first
        if i.ValueType == "NUM"
    ]
    assert numbers == [
        ("121242", 3.5, "cm"),
        ("81827009", 14.0, "mm"),
        ("81827009", 9.5, "mm"),
        ("81827009", 11.0, "mm"),
    ]
    # Each diameter names the key image it was measured on.
    diameter = next(i for i in first if i.ValueType == "NUM" and name(i) == "Diameter")
    assert diameter.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        image.SOPInstanceUID
    )
    texts = {(name(i), i.TextValue) for i in first if i.ValueType == "TEXT"}
    assert ("Comment", "Abuts the pectoral fascia.") in texts
    second = {codes_of(i) for i in containers[1].ContentSequence if i.ValueType == "CODE"}
    assert second == {
        ("363698007", "SCT", "73056007"),  # right breast
        ("111014", "99PROBELINK", "CLOCK1030"),  # half hours are local
        ("121071", "SCT", "399294002"),  # finding: cyst of breast
        ("111005", "99PROBELINK", "BIRADS2"),
    }


def test_venous_segment_findings_are_coded_containers(tmp_path: Path) -> None:
    data = writer.to_bytes(report(key_image(), segment_findings=SEGMENTS))
    assert dciodvfy_errors(data, tmp_path) == []
    containers = [
        i for i in items(read(data)) if i.ValueType == "CONTAINER" and name(i) == "Finding"
    ]
    found = [{codes_of(i) for i in c.ContentSequence if i.ValueType == "CODE"} for c in containers]
    assert found == [
        {
            ("363698007", "SCT", "397363009"),  # common femoral vein
            ("COMPRESSIBILITY", "99PROBELINK", "COMPRESSIBLE"),
            ("396339007", "SCT", "272519000"),  # thrombus: absent
            ("VENFLOW", "99PROBELINK", "SPONTFLOW"),
            ("VENFLOW", "99PROBELINK", "PHASICFLOW"),
        },
        {
            ("363698007", "SCT", "83419000"),  # femoral vein ...
            ("COMPRESSIBILITY", "99PROBELINK", "NONCOMPRESSIBLE"),
            ("396339007", "SCT", "385315009"),  # acute
            ("THROMBEXTENT", "99PROBELINK", "OCCLUSIVE"),
        },
        {
            ("363698007", "99PROBELINK", "CALFMUSCVEIN"),
            ("COMPRESSIBILITY", "99PROBELINK", "PARTCOMPRESSIBLE"),
            ("396339007", "SCT", "90734009"),  # chronic
        },
    ]
    # ... its middle third, as a modifier of the site.
    site = containers[1].ContentSequence[0]
    assert codes_of(site.ContentSequence[0]) == ("106233006", "NCIt", "C25569")


def test_every_lexicon_value_has_a_code() -> None:
    from server.consultations import lexicon
    from server.dicom import sr_codes

    tables = {
        lexicon.Side: sr_codes.SIDES,
        lexicon.Shape: sr_codes.SHAPES,
        lexicon.Orientation: sr_codes.ORIENTATIONS,
        lexicon.Margin: sr_codes.MARGINS,
        lexicon.EchoPattern: sr_codes.ECHO_PATTERNS,
        lexicon.PosteriorFeatures: sr_codes.POSTERIOR,
        lexicon.Calcifications: sr_codes.CALCIFICATION_VALUES,
        lexicon.AssociatedFeature: sr_codes.ASSOCIATED,
        lexicon.SpecialCase: sr_codes.SPECIAL_CASES,
        lexicon.BiRads: sr_codes.BIRADS,
        lexicon.DvtSegment: sr_codes.VEINS,
        lexicon.Compressibility: sr_codes.COMPRESSIBILITY_VALUES,
        lexicon.Thrombus: sr_codes.THROMBUS_VALUES,
        lexicon.Flow: sr_codes.FLOW_VALUES,
        lexicon.Extent: sr_codes.EXTENT_VALUES,
    }
    for kind, table in tables.items():
        assert set(table) == {member.value for member in kind}, kind
    for hour in range(1, 13):
        for minutes in ("", ":00", ":30"):
            assert sr_codes.clock(f"{hour}{minutes}").meaning.startswith(f"{hour}")
    # A value without a code is refused when the content is made.
    with pytest.raises(ValueError, match="no code"):
        sr.LesionContent(shape="lobulated")
    with pytest.raises(ValueError, match="no code"):
        sr.SegmentContent("great_saphenous")
