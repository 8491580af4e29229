"""The consultation domain: clinical context, life cycle, due time and the reviewer's checklist.

Plain Python: no network, no database. The HTTP and Socket.IO adapters parse
input into these types, ask this module what follows, then persist and emit.
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from pydantic import Field, StringConstraints

from server.consultations.applications import (
    Application,
    BreastContext,
    DvtContext,
    Flag,
    MissingItem,
    template_flags,
    template_items,
)
from server.consultations.lifecycle import OPEN_STATES, State
from server.errors import BadRequest, Conflict
from server.messages import LIST_MAX_ITEMS, Choice, LongText, ShortText, StrictModel

__all__ = ["Application", "Flag", "MissingItem"]  # re-exported: part of the request's vocabulary

PATIENT_REF_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# Accession numbers: short codes a person can read off a screen and type (no 0/O, 1/I/L, U).
ACCESSION_ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"
ACCESSION_LENGTH = 8


class Kind(enum.StrEnum):
    """A consultation about a patient, or a device setup session: a scanner's video (its demo
    or phantom mode) shown to the coordinator who measures its device profile; no patient, and
    nothing it shows is stored."""

    CONSULTATION = "consultation"
    DEVICE_SETUP = "device_setup"


class Urgency(enum.StrEnum):
    ROUTINE = "routine"
    URGENT = "urgent"
    EMERGENCY = "emergency"


# Queue order: most urgent first.
URGENCY_RANK = {Urgency.EMERGENCY: 0, Urgency.URGENT: 1, Urgency.ROUTINE: 2}


class ImagingMode(enum.StrEnum):
    B_MODE = "b_mode"
    M_MODE = "m_mode"
    COLOR_DOPPLER = "color_doppler"
    POWER_DOPPLER = "power_doppler"
    SPECTRAL_DOPPLER = "spectral_doppler"
    ELASTOGRAPHY = "elastography"
    CONTRAST = "contrast"


DOPPLER_MODES = frozenset(
    {ImagingMode.COLOR_DOPPLER, ImagingMode.POWER_DOPPLER, ImagingMode.SPECTRAL_DOPPLER}
)


class Laterality(enum.StrEnum):
    LEFT = "left"
    RIGHT = "right"
    BILATERAL = "bilateral"
    NOT_APPLICABLE = "not_applicable"


class TransducerType(enum.StrEnum):
    LINEAR = "linear"
    CURVILINEAR = "curvilinear"
    PHASED_ARRAY = "phased_array"
    ENDOCAVITARY = "endocavitary"
    OTHER = "other"


class Device(StrictModel):
    manufacturer: ShortText | None = None
    model: ShortText | None = None
    # False declares a video source with no burned-in text (captures are then not masked);
    # otherwise a device profile must say where the text is (server/dicom/device_profiles.toml).
    burned_in_text: bool | None = None


class Transducer(StrictModel):
    model: ShortText | None = None
    type: Choice[TransducerType] | None = None
    frequency_mhz: float | None = Field(None, gt=0, le=100)


class DopplerSettings(StrictModel):
    prf_hz: float | None = Field(None, gt=0, le=100_000)
    wall_filter_hz: float | None = Field(None, ge=0, le=10_000)
    angle_correction_deg: float | None = Field(None, ge=0, le=90)
    gain_db: float | None = Field(None, ge=-100, le=100)
    sample_volume_mm: float | None = Field(None, gt=0, le=100)


class ClinicalContext(StrictModel):
    """What the requesting clinician tells the expert; only question and urgency are required."""

    clinical_question: LongText
    urgency: Choice[Urgency]
    kind: Choice[Kind] = Kind.CONSULTATION
    exam_objective: LongText | None = None
    application: Choice[Application] | None = None
    # Pseudonymous reference chosen by the site (never a name or an MRN).
    patient_ref: Annotated[str, StringConstraints(pattern=PATIENT_REF_PATTERN)] | None = None
    first_read: LongText | None = None
    device: Device | None = None
    transducer: Transducer | None = None
    imaging_modes: list[Choice[ImagingMode]] | None = Field(None, max_length=LIST_MAX_ITEMS)
    doppler: DopplerSettings | None = None
    anatomy: list[ShortText] | None = Field(None, max_length=LIST_MAX_ITEMS)
    laterality: Choice[Laterality] | None = None
    patient_position: ShortText | None = None
    transducer_orientation: ShortText | None = None
    # Prior studies to compare with; an empty list states that there are none.
    comparison_studies: list[ShortText] | None = Field(None, max_length=LIST_MAX_ITEMS)
    # Whether the question is about change since an earlier study (then a prior is needed;
    # False: no comparison is asked for; unset: the checklist asks).
    about_change: bool | None = None
    # The application's own fields (applications.py beside this), for breast and DVT requests.
    breast: BreastContext | None = None
    dvt: DvtContext | None = None
    # Why the request is sent although the checklist is not complete; the expert sees it.
    incomplete_reason: LongText | None = None


@dataclass(frozen=True)
class Checklist:
    complete: bool
    missing: tuple[MissingItem, ...]


_CHECKS: tuple[tuple[str, str, str], ...] = (
    (
        "exam_objective",
        "Exam objective",
        "The expert needs to know what the scan must show to judge whether it answers it.",
    ),
    (
        "application",
        "Application",
        "The application (breast, DVT, ...) decides the protocol and the report's categories.",
    ),
    (
        "first_read",
        "First read",
        "The second opinion states its concordance with the bedside reader's first read.",
    ),
    (
        "device",
        "Ultrasound device (manufacturer and model)",
        "Image appearance, presets and burned-in annotation layout depend on the device.",
    ),
    (
        "transducer",
        "Transducer",
        "Resolution and depth depend on the transducer; the expert judges image quality with it.",
    ),
    (
        "imaging_modes",
        "Imaging modes",
        "The expert must know which modes (B-mode, Doppler, elastography) were used.",
    ),
    (
        "doppler",
        "Doppler settings",
        "PRF, wall filter and angle change what flow looks like; without them flow cannot be read.",
    ),
    (
        "anatomy",
        "Anatomy covered",
        "The expert must know which structures were scanned to judge completeness.",
    ),
    (
        "patient_position",
        "Patient position",
        "Findings (e.g. compressibility, lesion mobility) depend on position.",
    ),
    (
        "transducer_orientation",
        "Transducer orientation",
        "Orientation (transverse, longitudinal, radial) is needed to locate what is on screen.",
    ),
    (
        "comparison_studies",
        "Comparison studies",
        "Change over time can only be judged against prior studies; say 'none' with an empty list.",
    ),
)


# Without these a request cannot be sent at all (the draft checklist names them first).
REQUIRED_ITEMS: tuple[MissingItem, ...] = (
    MissingItem(
        "clinical_question",
        "Clinical question",
        "The second opinion answers this question; a request cannot be sent without it.",
    ),
    MissingItem(
        "urgency",
        "Urgency",
        "Urgency sets when the opinion is due and where the request stands in the queue.",
    ),
)


# The question is about change: "none" will not do, a prior study must be named.
CHANGE_NEEDS_PRIOR = MissingItem(
    "comparison_studies",
    "Comparison study",
    "The question is about change since an earlier study: the expert needs that study.",
)


def checklist(context: ClinicalContext) -> Checklist:
    """Name every item the second-opinion reviewer needs that the request lacks, the
    application template's own items last."""
    missing = []
    for field, label, why in _CHECKS:
        if field == "doppler" and not DOPPLER_MODES.intersection(context.imaging_modes or ()):
            continue
        if field == "comparison_studies" and context.about_change is not None:
            if context.about_change and not context.comparison_studies:
                missing.append(CHANGE_NEEDS_PRIOR)
            continue
        if not _given(context, field):
            missing.append(MissingItem(field, label, why))
    application = context.application.value if context.application else None
    missing.extend(template_items(application, context.breast, context.dvt))
    return Checklist(complete=not missing, missing=tuple(missing))


LANDMARKS_ITEM = MissingItem(
    "key_images.landmarks",
    "Labelled landmarks on the key images",
    "Without a label (side, site, orientation) the reviewer cannot tell where an image was taken.",
)


def landmarks_missing(key_image_marks: list[list[dict[str, object]]]) -> bool:
    """True when there are key images and none carries a text label (a landmark) on screen."""
    return bool(key_image_marks) and not any(
        mark.get("kind") == "text" for marks in key_image_marks for mark in marks
    )


def flags(context: ClinicalContext) -> tuple[Flag, ...]:
    """What the expert must see at once about this request (e.g. review before biopsy)."""
    application = context.application.value if context.application else None
    return template_flags(application, context.breast, context.dvt)


def check_sendable(context: ClinicalContext) -> Checklist:
    """A request is sent complete, or incomplete with a stated reason; otherwise `BadRequest`
    naming what is missing. A device setup session names its device and no patient."""
    if context.kind is Kind.DEVICE_SETUP:
        return _check_setup(context)
    check = checklist(context)
    if not check.complete and context.incomplete_reason is None:
        labels = ", ".join(item.label for item in check.missing)
        raise BadRequest(
            f"the request lacks: {labels}. Complete it, or say why it is sent incomplete",
            code="incomplete_request",
            field="incomplete_reason",
        )
    return check


def _check_setup(context: ClinicalContext) -> Checklist:
    if not _given(context, "device"):
        raise BadRequest(
            "a device setup session names the device (device.manufacturer and device.model)",
            code="invalid_field",
            field="device",
        )
    clinical = [
        name
        for name in ("patient_ref", "first_read", "application", "breast", "dvt")
        if getattr(context, name) is not None
    ]
    if clinical:
        raise BadRequest(
            f"a device setup session involves no patient: leave out '{clinical[0]}'",
            code="invalid_field",
            field=clinical[0],
        )
    return Checklist(True, ())


def _given(context: ClinicalContext, field: str) -> bool:
    value = getattr(context, field)
    if field == "comparison_studies":
        return value is not None
    if field == "device":
        return value is not None and bool(value.manufacturer and value.model)
    if field == "transducer":
        return value is not None and bool(value.model or value.type)
    if field == "doppler":
        return value is not None and any(v is not None for v in value.model_dump().values())
    if isinstance(value, list):
        return bool(value)
    return value is not None


def due_at(urgency: Urgency, requested_at: datetime, due_minutes: dict[str, int]) -> datetime:
    """When the second opinion is due, from the urgency's configured delay."""
    return requested_at + timedelta(minutes=due_minutes[urgency.value])


@dataclass(frozen=True)
class ConsultationRow:
    """A consultation: its state, clinical context, people and times (as stored)."""

    id: str
    state: State
    context: ClinicalContext
    created_by: str
    requested_at: datetime
    due_at: datetime
    updated_at: datetime
    first_joined_at: datetime | None = None
    reported_at: datetime | None = None
    signed_at: datetime | None = None
    # The expert (their sub) who accepted or was assigned the consultation.
    assigned_expert: str | None = None
    # Once cancelled: when, why (a `CancelReason` value) and the coordinator's note.
    cancelled_at: datetime | None = None
    cancel_reason: str | None = None
    cancel_note: str | None = None
    # The short code that ties a scanner's images to this consultation (the worklist's
    # AccessionNumber); assigned at request.
    accession_number: str | None = None

    @property
    def urgency(self) -> Urgency:
        return self.context.urgency


def new_accession_number() -> str:
    """A fresh accession number: 8 characters, about 6.6e11 codes (the store retries a clash)."""
    return "".join(secrets.choice(ACCESSION_ALPHABET) for _ in range(ACCESSION_LENGTH))


def require_open(row: ConsultationRow | None, doing: str) -> ConsultationRow:
    """The consultation, if it is open (requested, live or reported); else `Conflict` saying
    what cannot happen (`doing`, e.g. "nothing can be captured"). None is one that is gone."""
    if row is None or row.state not in OPEN_STATES:
        shown = row.state.value if row is not None else "gone"
        raise Conflict(f"the consultation is {shown}; {doing}", code="invalid_state")
    return row
