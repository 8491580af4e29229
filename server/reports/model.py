"""The structured report: its body, what signing needs, terminology, and its life (no I/O).

A report is a list of stored versions, append-only: each draft, the signature
and each addendum is a new `Version`. `ReportState` is built from them and
decides the next one (h11-style: data in, decisions out); the caller stores it.

Error codes (stable):
    BadRequest  invalid_field      a category the application lacks ("category"); no text ("text")
    Conflict    report_signed      the report is signed: changes go in an addendum
    Conflict    report_incomplete  signing refused; the message lists what is missing
    Conflict    no_report          signing refused: there is no draft to sign
    Conflict    report_not_signed  an addendum before the report is signed
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints

from server.consultations.applications import CATEGORIES, Application, MissingItem
from server.consultations.lexicon import (
    LESIONS_MAX,
    BiRads,
    DvtSegment,
    Lesion,
    SegmentFinding,
    unique_segments,
)
from server.datafiles import norm, read_tables
from server.errors import BadRequest, ConfigError, Conflict, Forbidden
from server.messages import LIST_MAX_ITEMS, Choice, LongText, ShortText, StrictModel

BUNDLED_TERMINOLOGY = Path(__file__).with_name("terminology.toml")
KEY_IMAGE_ID_PATTERN = r"^[0-9a-f]{32}$"
TERM_MAX_CHARS = 200


class Concordance(enum.StrEnum):
    """How the second opinion compares with the first read."""

    AGREE = "agree"
    MINOR_DISCREPANCY = "minor_discrepancy"
    MAJOR_DISCREPANCY = "major_discrepancy"


class QualityGrade(enum.StrEnum):
    """Whether the study could answer the clinical question."""

    ADEQUATE = "adequate"
    LIMITED = "limited"
    NON_DIAGNOSTIC = "non_diagnostic"


class QualityReason(enum.StrEnum):
    """Why a study is limited or non-diagnostic."""

    MISSING_LANDMARKS = "missing_landmarks"
    POOR_IMAGE_QUALITY = "poor_image_quality"
    INCOMPLETE_PROTOCOL = "incomplete_protocol"


KeyImageId = Annotated[str, StringConstraints(pattern=KEY_IMAGE_ID_PATTERN)]


class TechnicalQuality(StrictModel):
    """The technical quality of the study, with reasons when it is not adequate."""

    grade: Choice[QualityGrade]
    reasons: list[Choice[QualityReason]] = Field(default_factory=list, max_length=LIST_MAX_ITEMS)
    note: ShortText | None = None


class ReportBody(StrictModel):
    """What the expert writes; a draft may be partial, signing needs `missing_for_signing` empty."""

    findings: LongText | None = None
    category: ShortText | None = None
    recommendation: LongText | None = None
    concordance: Choice[Concordance] | None = None
    technical_quality: TechnicalQuality | None = None
    key_image_ids: list[KeyImageId] = Field(default_factory=list, max_length=LIST_MAX_ITEMS)
    # DVT: the venous segments the report covers (a negative scan excludes thrombus only there).
    segments_examined: list[Choice[DvtSegment]] | None = Field(None, max_length=LIST_MAX_ITEMS)
    # The lexicon (server/consultations/lexicon.py): breast lesions; DVT findings per segment
    # (their segments count as examined too). The free text stays for what it cannot say.
    lesions: list[Lesion] | None = Field(None, max_length=LESIONS_MAX)
    segment_findings: Annotated[list[SegmentFinding] | None, AfterValidator(unique_segments)] = (
        Field(None, max_length=len(DvtSegment))
    )


def may_write(cancelled: bool, assigned_expert: str | None, writer: str | None) -> None:
    """Who writes a consultation's report: no one once it is cancelled; once it is assigned,
    only the assigned expert (`writer`: the expert whose join link is used, if it names one),
    so a join link from before a reassignment no longer writes or signs."""
    if cancelled:
        raise Conflict("the consultation is cancelled; it takes no report", code="invalid_state")
    if assigned_expert is not None and writer != assigned_expert:
        raise Forbidden(
            "the consultation is assigned to another expert; only they write its report",
            code="assigned_to_another",
        )


def check_draft(application: str | None, body: ReportBody) -> None:
    """Refuse (`BadRequest` on the field) a category the application does not have, and
    segments in a report that is not a DVT one."""
    allowed = CATEGORIES.get(application or "", ())
    if body.category is not None and body.category not in allowed:
        which = f"one of: {', '.join(allowed)}" if allowed else "absent: the application has none"
        raise BadRequest(f"'category' must be {which}", code="invalid_field", field="category")
    for name, only in (
        ("segments_examined", Application.DVT),
        ("segment_findings", Application.DVT),
        ("lesions", Application.BREAST),
    ):
        if getattr(body, name) is not None and application != only:
            raise BadRequest(
                f"'{name}' is for {only.value} reports only", code="invalid_field", field=name
            )


def missing_for_signing(
    application: str | None, body: ReportBody, has_first_read: bool, known_key_images: set[str]
) -> list[MissingItem]:
    """Everything the report must have before it is signed, in reading order; empty when ready."""
    allowed = CATEGORIES.get(application or "", ())
    birads_0 = application == Application.BREAST and body.category == BiRads.INCOMPLETE
    quality = body.technical_quality
    rules = (
        (body.findings is None, "findings", "Findings", "The opinion rests on the findings."),
        (
            bool(allowed) and body.category not in allowed,
            "category",
            "Category",
            "The application's category states the conclusion in terms that set management.",
        ),
        (
            body.recommendation is None,
            "recommendation",
            "Recommendation",
            "Category 0 means the study is incomplete: the recommendation says which imaging."
            if birads_0
            else "The requesting clinician needs to know what to do next.",
        ),
        (
            has_first_read and body.concordance is None,
            "concordance",
            "Concordance with the first read",
            "A discrepancy with the first read may change what was already done for the patient.",
        ),
        (
            quality is None,
            "technical_quality",
            "Technical quality",
            "The reader must know whether the study could answer the question at all.",
        ),
        (
            quality is not None and quality.grade != QualityGrade.ADEQUATE and not quality.reasons,
            "technical_quality.reasons",
            "Reasons the study is limited",
            "A limited study is repeated or completed only if its shortfall is named.",
        ),
        (
            not body.key_image_ids,
            "key_image_ids",
            "Key images",
            "The signed report cites the key images that show its findings and joins them in"
            " the study.",
        ),
        (
            not known_key_images.issuperset(body.key_image_ids),
            "key_image_ids",
            "Key images from this consultation",
            "A key image must be one of this consultation's, or the report points at nothing.",
        ),
    )
    return [MissingItem(field, label, why) for lacking, field, label, why in rules if lacking]


@dataclass(frozen=True)
class Term:
    """An ambiguous phrase, the term to write instead, and why."""

    phrase: str
    preferred: str
    why: str


@dataclass(frozen=True)
class TermFlag:
    """One ambiguous phrase found in one field of a report."""

    field: str
    phrase: str
    preferred: str
    why: str


def load_terminology(extra: Path | None = None) -> tuple[Term, ...]:
    """The site's terms (if any) first, then the bundled ones it does not override."""
    terms: dict[str, Term] = {}
    for path in ([extra] if extra is not None else []) + [BUNDLED_TERMINOLOGY]:
        for term in _read_terms(path):
            terms.setdefault(norm(term.phrase), term)
    return tuple(terms.values())


def _read_terms(path: Path) -> list[Term]:
    entries = read_tables(path, "term", "terminology file")
    terms, seen = [], set()
    for n, entry in enumerate(entries, 1):
        where = f"the terminology file {path}, term {n}"
        if not isinstance(entry, dict) or set(entry) != {"phrase", "preferred", "why"}:
            raise ConfigError(f"{where}: must have exactly the keys phrase, preferred and why")
        for key, value in entry.items():
            if not isinstance(value, str) or not value.strip() or len(value) > TERM_MAX_CHARS:
                raise ConfigError(f"{where}: '{key}' must be text of 1-{TERM_MAX_CHARS} characters")
        if not re.search(r"\w", entry["phrase"]):
            raise ConfigError(f"{where}: 'phrase' must contain a word")
        if norm(entry["phrase"]) in seen:
            raise ConfigError(f"{where}: the phrase is listed twice")
        seen.add(norm(entry["phrase"]))
        terms.append(Term(**{key: " ".join(value.split()) for key, value in entry.items()}))
    return terms


@lru_cache(maxsize=4096)
def _pattern(text: str) -> re.Pattern[str]:
    # Whole words only; any whitespace matches a space, and a hyphen a space or nothing.
    words = (re.escape(word).replace(r"\-", r"[-\s]?") for word in text.split())
    return re.compile(r"(?<!\w)" + r"\s+".join(words) + r"(?!\w)", re.IGNORECASE)


def check_terminology(terms: Iterable[Term], body: ReportBody) -> list[TermFlag]:
    """Flag each listed phrase found in the findings, recommendation, quality note and each
    lesion's note (the lexicon's own values need no check: they are the preferred terms)."""
    quality_note = body.technical_quality.note if body.technical_quality else None
    fields = (
        ("findings", body.findings),
        ("recommendation", body.recommendation),
        ("technical_quality.note", quality_note),
        *((f"lesions.{n}.note", lesion.note) for n, lesion in enumerate(body.lesions or ())),
    )
    terms = tuple(terms)
    flags: list[TermFlag] = []
    for field, text in fields:
        if text is None:
            continue
        hits: list[tuple[int, int, Term]] = []
        for term in terms:
            # The preferred term itself may contain the phrase ("BI-RADS 3 (probably benign)").
            preferred = [m.span() for m in _pattern(term.preferred).finditer(text)]
            for match in _pattern(term.phrase).finditer(text):
                start, end = match.span()
                if not any(s <= start and end <= e for s, e in preferred):
                    hits.append((start, end, term))
        # The longest phrase wins where phrases overlap ("old clot", not also "clot").
        taken: list[tuple[int, int, Term]] = []
        for start, end, term in sorted(hits, key=lambda h: (h[0] - h[1], h[0])):
            if all(end <= s or e <= start for s, e, _ in taken):
                taken.append((start, end, term))
        for _, _, term in sorted(taken, key=lambda h: h[0]):
            flag = TermFlag(field, term.phrase, term.preferred, term.why)
            if flag not in flags:
                flags.append(flag)
    return flags


@dataclass(frozen=True)
class Version:
    """One stored version: a draft or the signed body (`body`), or a signed addendum."""

    version: int
    author: str
    body: ReportBody | None
    addendum: str | None
    created_at: datetime
    signed_at: datetime | None
    signed_by: str | None


class ReportState:
    """A consultation's report, built from its stored versions (oldest first).

    Each method checks the rules and returns the next `Version` to store, or raises;
    the state advances with it, so `draft` then `sign` work in one go.
    """

    def __init__(self, application: str | None, versions: Sequence[Version] = ()):
        if [v.version for v in versions] != list(range(1, len(versions) + 1)):
            raise ValueError("report versions must be numbered 1, 2, ... in order")
        self.application = application
        self.versions: list[Version] = list(versions)

    @property
    def current(self) -> ReportBody | None:
        """The latest body (the signed one once signed); None before the first draft."""
        bodies = [v.body for v in self.versions if v.body is not None]
        return bodies[-1] if bodies else None

    @property
    def signature(self) -> Version | None:
        """The signed body's version (its author signed it); None before signing."""
        return next(
            (v for v in self.versions if v.body is not None and v.signed_at is not None), None
        )

    @property
    def signed(self) -> bool:
        """True once the body is signed; it never changes after that."""
        return self.signature is not None

    @property
    def addenda(self) -> list[Version]:
        """The addenda, oldest first, each signed by its author at its own time."""
        return [v for v in self.versions if v.addendum is not None]

    def draft(self, body: ReportBody, author: str, now: datetime) -> Version:
        """Save a (possibly partial) body; refused once signed."""
        if self.signed:
            raise Conflict("the report is signed: write an addendum", code="report_signed")
        check_draft(self.application, body)
        return self._append(Version(0, author, body, None, now, None, None))

    def sign(
        self, signer: str, now: datetime, *, has_first_read: bool, known_key_images: set[str]
    ) -> Version:
        """Sign the current body, making it immutable; refused while anything is missing."""
        if self.signed:
            raise Conflict("the report is already signed", code="report_signed")
        body = self.current
        if body is None:
            raise Conflict("there is no report to sign", code="no_report")
        missing = missing_for_signing(self.application, body, has_first_read, known_key_images)
        if missing:
            labels = ", ".join(item.label for item in missing)
            message = f"the report cannot be signed without: {labels}"
            raise Conflict(message, code="report_incomplete")
        return self._append(Version(0, signer, body, None, now, now, signer))

    def addendum(self, text: str, author: str, now: datetime) -> Version:
        """Add a change to a signed report, signed by its author at `now`."""
        if not self.signed:
            raise Conflict("the report is not signed: change the draft", code="report_not_signed")
        if not text.strip():
            raise BadRequest("an addendum needs text", code="invalid_field", field="text")
        return self._append(Version(0, author, None, text.strip(), now, now, author))

    def _append(self, version: Version) -> Version:
        version = replace(version, version=len(self.versions) + 1)
        self.versions.append(version)
        return version
