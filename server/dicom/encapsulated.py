"""The report's PDF as an Encapsulated PDF object (PS3.3 A.45.1) in the consultation's study.

Built from an allow-list like every object we write, then de-identified by `writer.finish`
exactly as the report's SR: the pseudonym for the patient, no accession, Annex E stamped.
The PDF it carries is the de-identified rendering (pseudonyms, no accession or patient
reference), so BurnedInAnnotation is NO. Its source instances are the cited key images.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pydicom.dataset import Dataset
from pydicom.valuerep import DA, TM

from server.dicom import writer

ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"
MIME_PDF = "application/pdf"
# LOINC 18748-4, the title the SR uses too.
DIAGNOSTIC_IMAGING_REPORT = ("18748-4", "LN", "Diagnostic imaging report")
DOCUMENT_TITLE = "Second-opinion report"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def encapsulated_pdf(
    pdf: bytes,
    study: writer.Study,
    inst: writer.Instance,
    *,
    signed_at: datetime | None,
    sources: Sequence[tuple[str, str]] = (),
) -> Dataset:
    """`pdf` as an Encapsulated PDF of `study`; `signed_at` None marks it unverified.
    `sources`: (SOP Class UID, SOP Instance UID) of the key images pictured in it."""
    if not pdf.startswith(b"%PDF-"):
        raise ValueError("not a PDF document")
    ds = Dataset()
    ds.SOPClassUID = ENCAPSULATED_PDF_STORAGE
    ds.SOPInstanceUID = inst.sop_uid
    ds.StudyInstanceUID = study.study_uid
    ds.StudyDate = DA(study.started_at.date())
    ds.StudyTime = TM(study.started_at.time())
    # Encapsulated Document Series and SC Equipment: a document made by a workstation.
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = inst.series_uid
    ds.SeriesNumber = inst.series_number
    ds.Manufacturer = writer.MANUFACTURER
    ds.ConversionType = "WSD"
    # Encapsulated Document.
    ds.InstanceNumber = inst.instance_number
    made = signed_at or inst.acquired_at
    ds.ContentDate, ds.ContentTime = DA(made.date()), TM(made.time())
    ds.AcquisitionDateTime = made.strftime("%Y%m%d%H%M%S.%f+0000")
    ds.DocumentTitle = DOCUMENT_TITLE
    ds.ConceptNameCodeSequence = [_code(*DIAGNOSTIC_IMAGING_REPORT)]
    ds.VerificationFlag = "VERIFIED" if signed_at is not None else "UNVERIFIED"
    ds.MIMETypeOfEncapsulatedDocument = MIME_PDF
    # An odd length is padded to even; the length attribute keeps the document's own.
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(pdf)
    if sources:
        ds.SourceInstanceSequence = [_reference(c, s) for c, s in sources]
    ds = writer.finish(ds, study, inst)
    # An image attribute `finish` drops; this module requires it. The pictures are masked
    # key images and the text names no one: NO, as for the key images themselves.
    ds.BurnedInAnnotation = "NO"
    ds.RecognizableVisualFeatures = "NO"
    return ds


def _reference(sop_class: str, sop: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop
    return item
