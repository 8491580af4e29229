"""REST handlers for outcomes and the second-opinion ledger (thin adapters).

`POST /api/consultations/{id}/outcome` records what happened next (coordinator; audited; each
recording a new version), `GET` on it gives the history; `GET /api/quality` is the ledger over a
period (`server/outcomes/ledger.py`), and `/metrics` shows its aggregate figures.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from aiohttp import web

from server.auth import Role
from server.consultations.model import ConsultationRow
from server.dicom import deid
from server.errors import BadRequest
from server.outcomes.ledger import FIGURES, SecondOpinion, dvt_category_of_segments, ledger
from server.outcomes.model import OutcomeBody, OutcomeVersion, check_outcome, may_follow
from server.outcomes.store import BASES, OutcomeLog, SignedReport
from server.reports.model import ReportState
from server.store.times import iso
from server.web.edge import authenticate, consultation_of, facts, read_json
from server.web.keys import KEY_IMAGES, METRICS, REPORT_LOG, STORE

log = logging.getLogger(__name__)

DATE_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}")
READER_PATTERN = re.compile(r"R-[0-9A-F]{16}")
# Without a period: the last year up to today (UTC) included.
DEFAULT_PERIOD_DAYS = 365
# No record is older; an earlier day would overflow the default period or, as stored times
# compare as text, not sort before them (a year under 1000 is written unpadded).
EARLIEST_DAY = date(2000, 1, 1)
QUALITY_PARAMETERS = ("from", "to", "basis", "application", "reader")
# /metrics shows the ledger over all signed reports, computed at most this often (on a scrape).
LEDGER_METRICS_MAX_AGE_SECONDS = 60.0


@dataclass
class LedgerClock:
    """When this node last computed the ledger's figures for /metrics (monotonic seconds)."""

    computed_at: float | None = None


LEDGER_CLOCK: web.AppKey[LedgerClock] = web.AppKey("ledger_clock")


def routes(table: web.RouteTableDef) -> None:
    path = "/api/consultations/{consultation_id}/outcome"
    table.get(path)(get_outcome)
    table.post(path)(post_outcome)
    table.get("/api/quality")(get_quality)


def _version_view(v: OutcomeVersion) -> dict[str, Any]:
    return {
        "version": v.version,
        **v.body.model_dump(mode="json", exclude_none=True),
        "recorded_by": v.recorded_by,
        "recorded_at": iso(v.recorded_at),
    }


def outcome_view(versions: list[OutcomeVersion]) -> dict[str, Any]:
    """The outcome in force (the newest) and every version before it, oldest first."""
    return {
        "current": _version_view(versions[-1]) if versions else None,
        "history": [_version_view(v) for v in versions],
    }


async def record_outcome(request: web.Request, row: ConsultationRow) -> dict[str, Any]:
    """The outcome as the record shows it."""
    return outcome_view(await OutcomeLog(request.app[STORE]).versions(row.id))


async def get_outcome(request: web.Request) -> web.Response:
    principal = authenticate(request)
    row = await consultation_of(request, principal)
    view = await record_outcome(request, row)
    await request.app[STORE].record_audit(
        facts(request, principal, "outcome.read", "consultation", row.id)
    )
    return web.json_response(view)


async def post_outcome(request: web.Request) -> web.Response:
    """Record what happened next; an earlier outcome stays in the history."""
    principal = authenticate(request, Role.COORDINATOR)
    row = await consultation_of(request, principal)
    body = await read_json(request, OutcomeBody)
    application = row.context.application.value if row.context.application else None
    report = ReportState(application, await request.app[REPORT_LOG].versions(row.id))
    followed = may_follow(row.context.kind.value, application, report.signed)
    now = datetime.now(UTC)
    check_outcome(followed, body, now.date())
    outcomes = OutcomeLog(request.app[STORE])
    versions = await outcomes.versions(row.id)
    version = OutcomeVersion(len(versions) + 1, body, principal.sub, now)
    await outcomes.append(
        row.id, version, facts(request, principal, "outcome.record", "consultation", row.id)
    )
    # Which consultation and version only: the outcome itself is clinical.
    log.info("outcome recorded", extra={"consultation": row.id, "version": version.version})
    return web.json_response(outcome_view([*versions, version]), status=201)


def _day(query: dict[str, str], name: str) -> date | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        if not DATE_PATTERN.fullmatch(value):
            raise ValueError
        day = date.fromisoformat(value)
    except ValueError:
        raise BadRequest(
            f"'{name}' must be a date, YYYY-MM-DD", code="invalid_field", field=name
        ) from None
    if day < EARLIEST_DAY:
        raise BadRequest(
            f"'{name}' must be {EARLIEST_DAY.isoformat()} or later",
            code="invalid_field",
            field=name,
        )
    return day


@dataclass(frozen=True)
class Period:
    start: date
    end: date
    basis: str


def parse_quality_query(
    query: dict[str, str], today: date
) -> tuple[Period, str | None, str | None]:
    """The period ([from, to), by `basis`), application and reader of `GET /api/quality`."""
    for name in query:
        if name not in QUALITY_PARAMETERS:
            raise BadRequest(
                f"unknown parameter; the parameters are: {', '.join(QUALITY_PARAMETERS)}",
                code="unknown_field",
                field=name if re.fullmatch(r"[a-z_]{1,40}", name) else None,
            )
    end = _day(query, "to") or today + timedelta(days=1)
    start = _day(query, "from") or end - timedelta(days=DEFAULT_PERIOD_DAYS)
    if start >= end:
        raise BadRequest("'to' must be after 'from'", code="invalid_field", field="to")
    basis = query.get("basis", BASES[0])
    if basis not in BASES:
        raise BadRequest(
            f"'basis' must be one of: {', '.join(BASES)}", code="invalid_field", field="basis"
        )
    application = query.get("application")
    if application is not None and application not in FIGURES:
        raise BadRequest(
            f"'application' must be one of: {', '.join(FIGURES)}",
            code="invalid_field",
            field="application",
        )
    reader = query.get("reader")
    if reader is not None and not READER_PATTERN.fullmatch(reader):
        raise BadRequest(
            "'reader' must be a reader's pseudonym, R- and 16 hexadecimal digits",
            code="invalid_field",
            field="reader",
        )
    return Period(start, end, basis), application, reader


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def second_opinion(key: bytes, report: SignedReport) -> SecondOpinion:
    """What the ledger reads of a signed report; the reader pseudonymised as in the SR."""
    context = report.context
    breast, dvt = context.breast, context.dvt
    if report.application == "breast":
        first = breast.first_read_birads.value if breast and breast.first_read_birads else None
        structured = bool(breast and (breast.first_read_birads or breast.first_read_lesions))
    else:
        first = dvt_category_of_segments(dvt.first_read_segments) if dvt else None
        structured = bool(dvt and dvt.first_read_segments)
    return SecondOpinion(
        application=report.application,
        reader=deid.reader_pseudonym(key, report.reader),
        has_first_read=bool(context.first_read) or structured,
        first_category=first,
        second_category=report.body.category,
        concordance=report.body.concordance.value if report.body.concordance else None,
        outcome=report.outcome,
    )


async def get_quality(request: web.Request) -> web.Response:
    authenticate(request, Role.COORDINATOR)
    today = datetime.now(UTC).date()
    period, application, reader = parse_quality_query(dict(request.query), today)
    reports = await OutcomeLog(request.app[STORE]).signed_reports(
        period.basis, _midnight(period.start), _midnight(period.end)
    )
    key = request.app[KEY_IMAGES].key
    figures = ledger([second_opinion(key, r) for r in reports], application, reader)
    return web.json_response(
        {
            "period": {
                "from": period.start.isoformat(),
                "to": period.end.isoformat(),
                "basis": period.basis,
            },
            **figures,
        }
    )


async def refresh_ledger_metrics(app: web.Application) -> None:
    """Set the ledger's gauges (every signed report, no reader) unless done recently."""
    clock = app[LEDGER_CLOCK]
    now = time.monotonic()
    if clock.computed_at is not None and now - clock.computed_at < LEDGER_METRICS_MAX_AGE_SECONDS:
        return
    reports = await OutcomeLog(app[STORE]).signed_reports(BASES[0], None, None)
    key = app[KEY_IMAGES].key
    figures = ledger([second_opinion(key, r) for r in reports])["applications"]
    app[METRICS].show_ledger(figures)
    clock.computed_at = now
