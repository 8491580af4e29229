"""What happened after a second opinion: the outcome a coordinator records (no I/O).

An outcome follows a signed report; each recording is a new version (an amendment keeps the
earlier ones), and the ledger (`server/outcomes/ledger.py`) reads the latest. Breast: a biopsy
with its pathology and date, follow-up imaging and its result, clinical follow-up (a short note),
or nothing known. DVT: whether anticoagulation was started (and when) and the repeat scan's result.

Error codes (stable):
    BadRequest  invalid_field     a field that does not fit the outcome (named), a date ahead
    BadRequest  missing_field     a field the outcome needs (named)
    Conflict    not_signed        no signed second opinion yet: nothing to follow
    Conflict    no_outcome_kind   a device setup session, or an application without outcomes
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import date, datetime
from typing import Annotated

from pydantic import Strict

from server.consultations.applications import Application
from server.errors import BadRequest, Conflict
from server.messages import Choice, ShortText, StrictModel

# Dates come as "YYYY-MM-DD" in JSON: parsed, not demanded as date objects.
Day = Annotated[date, Strict(False)]
# The applications whose outcomes the ledger knows.
OUTCOME_APPLICATIONS = (Application.BREAST, Application.DVT)


class BreastResult(enum.StrEnum):
    """What is known of a breast lesion after the second opinion."""

    BIOPSY = "biopsy"
    FOLLOW_UP_IMAGING = "follow_up_imaging"
    CLINICAL_FOLLOW_UP = "clinical_follow_up"
    NONE_KNOWN = "none_known"


class Pathology(enum.StrEnum):
    """A biopsy's result. high_risk: e.g. atypical ductal hyperplasia, LCIS, papilloma with
    atypia (not cancer, but excised or watched); non_diagnostic: the sample could not say."""

    BENIGN = "benign"
    HIGH_RISK = "high_risk"
    MALIGNANT = "malignant"
    NON_DIAGNOSTIC = "non_diagnostic"


class FollowUpImaging(enum.StrEnum):
    """What follow-up imaging showed of the lesion."""

    STABLE = "stable"
    RESOLVED = "resolved"
    CHANGED = "changed"
    # Changed enough to raise its category (biopsy advised).
    UPGRADED = "upgraded"


class RepeatScan(enum.StrEnum):
    """A DVT patient's repeat compression scan."""

    NO_DVT = "no_dvt"
    DVT = "dvt"
    NOT_DONE = "not_done"


class BreastOutcome(StrictModel):
    result: Choice[BreastResult]
    pathology: Choice[Pathology] | None = None
    imaging: Choice[FollowUpImaging] | None = None
    # When the biopsy or the follow-up imaging was done.
    date: Day | None = None
    # Clinical follow-up: what is known, briefly (kept with the record only).
    note: ShortText | None = None


class Anticoagulation(StrictModel):
    started: bool
    date: Day | None = None


class DvtOutcome(StrictModel):
    anticoagulation: Anticoagulation
    repeat_scan: Choice[RepeatScan]
    repeat_scan_date: Day | None = None


class OutcomeBody(StrictModel):
    """`POST /api/consultations/{id}/outcome`: the part for the consultation's application."""

    breast: BreastOutcome | None = None
    dvt: DvtOutcome | None = None


@dataclass(frozen=True)
class OutcomeVersion:
    """One recorded outcome; the newest is the one in force."""

    version: int
    body: OutcomeBody
    recorded_by: str
    recorded_at: datetime


# What each breast result needs (True) or refuses (False); absent: optional.
_BREAST_FIELDS: dict[BreastResult, dict[str, bool]] = {
    BreastResult.BIOPSY: {"pathology": True, "date": True, "imaging": False, "note": False},
    BreastResult.FOLLOW_UP_IMAGING: {"imaging": True, "date": True, "pathology": False},
    BreastResult.CLINICAL_FOLLOW_UP: {"note": True, "pathology": False, "imaging": False},
    BreastResult.NONE_KNOWN: {"pathology": False, "imaging": False, "date": False},
}


def may_follow(kind: str, application: str | None, signed: bool) -> str:
    """The application an outcome is recorded for, or `Conflict`: only a signed second opinion
    on a breast or DVT consultation is followed (never a device setup session)."""
    if kind != "consultation":
        raise Conflict("a device setup session has no outcome", code="no_outcome_kind")
    if application not in OUTCOME_APPLICATIONS:
        raise Conflict(
            "outcomes are recorded for breast and DVT consultations", code="no_outcome_kind"
        )
    if not signed:
        raise Conflict(
            "an outcome follows a signed second opinion; this report is not signed",
            code="not_signed",
        )
    return application


def check_outcome(application: str, body: OutcomeBody, today: date) -> None:
    """Refuse (`BadRequest` naming the field) an outcome that does not fit `application`, lacks
    what its result needs, holds what it refuses, or is dated after `today`."""
    other = "dvt" if application == Application.BREAST else "breast"
    if getattr(body, other) is not None:
        raise BadRequest(
            f"'{other}' is not an outcome of a {application} consultation",
            code="invalid_field",
            field=other,
        )
    if application == Application.BREAST:
        if body.breast is None:
            raise BadRequest("'breast' is required", code="missing_field", field="breast")
        _check_breast(body.breast)
        _not_ahead(body.breast.date, "breast.date", today)
        return
    if body.dvt is None:
        raise BadRequest("'dvt' is required", code="missing_field", field="dvt")
    _check_dvt(body.dvt)
    _not_ahead(body.dvt.anticoagulation.date, "dvt.anticoagulation.date", today)
    _not_ahead(body.dvt.repeat_scan_date, "dvt.repeat_scan_date", today)


def _check_breast(breast: BreastOutcome) -> None:
    for name, needed in _BREAST_FIELDS[breast.result].items():
        given = getattr(breast, name) is not None
        if needed and not given:
            raise BadRequest(
                f"'breast.{name}' is required when the result is {breast.result.value}",
                code="missing_field",
                field=f"breast.{name}",
            )
        if given and not needed:
            raise BadRequest(
                f"'breast.{name}' does not fit the result {breast.result.value}",
                code="invalid_field",
                field=f"breast.{name}",
            )


def _check_dvt(dvt: DvtOutcome) -> None:
    anticoagulation = dvt.anticoagulation
    if anticoagulation.started and anticoagulation.date is None:
        raise BadRequest(
            "'dvt.anticoagulation.date' is required when anticoagulation was started",
            code="missing_field",
            field="dvt.anticoagulation.date",
        )
    if not anticoagulation.started and anticoagulation.date is not None:
        raise BadRequest(
            "'dvt.anticoagulation.date' is only for anticoagulation that was started",
            code="invalid_field",
            field="dvt.anticoagulation.date",
        )
    if dvt.repeat_scan is RepeatScan.NOT_DONE and dvt.repeat_scan_date is not None:
        raise BadRequest(
            "'dvt.repeat_scan_date' is only for a repeat scan that was done",
            code="invalid_field",
            field="dvt.repeat_scan_date",
        )


def _not_ahead(day: date | None, field: str, today: date) -> None:
    if day is not None and day > today:
        raise BadRequest(f"'{field}' is after today", code="invalid_field", field=field)
