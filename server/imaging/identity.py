"""A consultation's DICOM identity: pseudonym, study, series and instance UIDs and numbers.

All derived from the de-identification key (plain Python): nodes sharing the key agree on every
identifier without talking to each other, and nothing in them can be traced back without it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UltrasoundImageStorage, UltrasoundMultiFrameImageStorage

from server.config import Settings
from server.consultations.model import ConsultationRow
from server.dicom import deid, writer
from server.files import write_durably

DEID_KEY_RELATIVE_PATH = "keys/deid.key"
SERIES = {
    "still": 1,
    "clip": 2,
    "presentation_state": 3,
    "key_object_selection": 4,
    "report": 5,
    # A scanner's own images (C-STORE or uploaded DICOM), in series of their own.
    "scanner_still": 6,
    "scanner_clip": 7,
    # The report's PDF (Encapsulated PDF), archived beside each version of its SR.
    "report_pdf": 8,
}
SOP_CLASS = {
    "still": UltrasoundImageStorage,
    "clip": UltrasoundMultiFrameImageStorage,
    "scanner_still": UltrasoundImageStorage,
    "scanner_clip": UltrasoundMultiFrameImageStorage,
}
# The kinds of archived object a key image is (the key object selection lists them all).
KEY_IMAGE_KINDS = tuple(SOP_CLASS)
# Instance numbers: tenths of a second since the request (ordered, no shared counter needed).
INSTANCE_NUMBER_MAX = 2**31 - 1


def load_deid_key(settings: Settings) -> bytes:
    """The HMAC key for pseudonyms and UIDs: configured, or generated once in the data dir."""
    if settings.deid_secret is not None:
        return settings.deid_secret.get_secret_value().encode()
    path = settings.data_dir / DEID_KEY_RELATIVE_PATH
    if not path.exists():
        write_durably(path, secrets.token_hex(32).encode(), replace=False)
    key = path.read_bytes().strip()
    if len(key) < 32:
        raise ValueError(f"{path} holds no usable key: remove it to generate a new one")
    return key


@dataclass(frozen=True)
class StudyIdentity:
    key: bytes

    def study_uid(self, consultation_id: str) -> str:
        return deid.derived_uid(self.key, "study", consultation_id)

    def series_uid(self, consultation_id: str, kind: str) -> str:
        return deid.derived_uid(self.key, "series", consultation_id, kind)

    def study_of(self, row: ConsultationRow) -> writer.Study:
        ctx = row.context
        return writer.Study(
            patient=deid.pseudonym(self.key, row.id),
            study_uid=self.study_uid(row.id),
            started_at=row.requested_at,
            manufacturer=ctx.device.manufacturer if ctx.device else None,
            model=ctx.device.model if ctx.device else None,
            transducer=ctx.transducer.model if ctx.transducer else None,
            application=ctx.application.value if ctx.application else None,
            laterality=ctx.laterality.value if ctx.laterality else None,
        )

    def instance_of(
        self, row: ConsultationRow, kind: str, sop: str, now: datetime, **more: Any
    ) -> writer.Instance:
        tenths = int((now - row.requested_at).total_seconds() * 10)
        return writer.Instance(
            series_uid=self.series_uid(row.id, kind),
            series_number=SERIES[kind],
            sop_uid=sop,
            instance_number=min(max(tenths, 1), INSTANCE_NUMBER_MAX),
            acquired_at=now,
            **more,
        )

    def evidence_of(
        self, study: writer.Study, consultation_id: str, sop: str, kind: str
    ) -> Dataset:
        """What the key object selection needs of an earlier key image: its identity."""
        ds = Dataset()
        ds.SOPClassUID = SOP_CLASS[kind]
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID = study.study_uid
        ds.SeriesInstanceUID = self.series_uid(consultation_id, kind)
        ds.PatientName = f"{study.patient}^"
        ds.PatientID = study.patient
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.StudyDate = study.started_at.strftime("%Y%m%d")
        ds.StudyTime = study.started_at.strftime("%H%M%S")
        ds.StudyID = ""
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.Modality = "US"
        return ds
