"""The second-opinion accuracy ledger: how second opinions compare with first reads and with
what happened next (no I/O).

Fed one `SecondOpinion` per signed report of a period, it gives per application the figures a
service reviews, each with the counts behind it; a figure with nothing to count is None (never
NaN). The rules, stated once here and in the README ("The second-opinion ledger"):

- A second opinion is a signed report whose request carried a first read.
- Category agreement compares the first read's category with the report's. BI-RADS 4A, 4B and
  4C count as 4 (the subdivision is ultrasound's own and a first read often states only 4);
  Cohen's kappa is over the categories either reader used. DVT: the first read's category is
  read from its segments (any acute thrombus: acute DVT, with chronic change beside it: acute on
  chronic; chronic only: chronic post-thrombotic change; indeterminate only: indeterminate; all
  free: no DVT); a segment stating no thrombus is read by its compressibility (compressible:
  free; partially or non-compressible: thrombus of indeterminate age); no structured first read,
  no pair.
- Major and minor discordance: the report's own concordance, over the reports that state it.
- Downgraded: of the first reads at BI-RADS 4-5 (4, 4A-4C, 5), those the second opinion put at
  2 or 3 (biopsies it advised against); of those, what was later found malignant.
- PPV of a biopsy recommendation (BI-RADS 4-5 advises biopsy): of the recommendations followed by
  a biopsy with a diagnostic result, the share malignant (PPV3, as the ACR BI-RADS audit counts:
  a high-risk lesion counts as not malignant; a non-diagnostic biopsy leaves the denominator),
  with a Wilson score 95% interval.
- DVT with outcomes: of the calls (DVT / no DVT) followed by a repeat scan, the share the repeat
  scan confirmed; whether anticoagulation was started after each call. A repeat scan is days
  later: a thrombus may have formed or resolved since, so this is agreement, not proof.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from server.consultations.applications import Application, DvtCategory
from server.consultations.lexicon import (
    BIOPSY_ADVISED,
    BIRADS_4,
    BiRads,
    Compressibility,
    SegmentFinding,
    Thrombus,
)
from server.outcomes.model import OutcomeBody, Pathology, RepeatScan
from server.reports.model import Concordance

# Two-sided 95%: the normal quantile of 0.975.
Z_95 = 1.959963984540054
ROUND_DIGITS = 4
DOWNGRADE_TO = frozenset({BiRads.BENIGN, BiRads.PROBABLY_BENIGN})
# Pathology that says something (non-diagnostic leaves the PPV's denominator).
DIAGNOSTIC = frozenset({Pathology.BENIGN, Pathology.HIGH_RISK, Pathology.MALIGNANT})
# A segment whose thrombus is not stated, by its compressibility (not visualized: nothing).
COMPRESSION_SAYS = {
    Compressibility.COMPRESSIBLE: Thrombus.NONE,
    Compressibility.PARTIALLY_COMPRESSIBLE: Thrombus.INDETERMINATE,
    Compressibility.NON_COMPRESSIBLE: Thrombus.INDETERMINATE,
}
# The DVT categories as a call: is there a thrombus to treat? (indeterminate: no call)
DVT_CALL: dict[str, str] = {
    DvtCategory.ACUTE_DVT: "dvt",
    DvtCategory.ACUTE_ON_CHRONIC: "dvt",
    DvtCategory.NO_DVT: "no_dvt",
    DvtCategory.CHRONIC_POSTTHROMBOTIC_CHANGE: "no_dvt",
}


@dataclass(frozen=True)
class SecondOpinion:
    """What the ledger needs of one signed report."""

    application: str
    # The reader's pseudonym (never a name).
    reader: str
    has_first_read: bool
    # The first read's category (breast: BI-RADS; DVT: as read from its segments) and the
    # report's; None where not stated.
    first_category: str | None
    second_category: str | None
    concordance: str | None
    # The latest recorded outcome, if any.
    outcome: OutcomeBody | None = None


def birads_for_agreement(category: str | None) -> str | None:
    """4A, 4B and 4C count as 4."""
    return BiRads.SUSPICIOUS.value if category in BIRADS_4 else category


def _thrombus(finding: SegmentFinding) -> Thrombus | None:
    """A segment's thrombus as stated or, unstated, as its compressibility says: full compression
    excludes thrombus; a vein that does not compress holds one of an age not stated."""
    if finding.thrombus is not None:
        return finding.thrombus
    return COMPRESSION_SAYS.get(finding.compressibility) if finding.compressibility else None


def dvt_category_of_segments(findings: Sequence[SegmentFinding] | None) -> str | None:
    """The DVT category a first read's segments state, or None when they state no thrombus."""
    seen = {t for f in findings or () if (t := _thrombus(f)) is not None}
    if not seen:
        return None
    if Thrombus.ACUTE in seen:
        return DvtCategory.ACUTE_ON_CHRONIC if Thrombus.CHRONIC in seen else DvtCategory.ACUTE_DVT
    if Thrombus.CHRONIC in seen:
        return DvtCategory.CHRONIC_POSTTHROMBOTIC_CHANGE
    if Thrombus.INDETERMINATE in seen:
        return DvtCategory.INDETERMINATE
    return DvtCategory.NO_DVT


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, ROUND_DIGITS)


def cohen_kappa(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Cohen's kappa of two readers' categories; None with no pairs or when chance agreement is
    certain (both readers used one and the same category only)."""
    n = len(pairs)
    if not n:
        return None
    observed = sum(1 for a, b in pairs if a == b) / n
    first, second = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    expected = sum(first[c] * second[c] for c in first.keys() | second.keys()) / (n * n)
    if math.isclose(expected, 1.0):
        return None
    return (observed - expected) / (1 - expected)


def wilson_interval(positives: int, n: int, z: float = Z_95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion positives/n; None when n is 0."""
    if n == 0:
        return None
    p = positives / n
    scale = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / scale
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / scale
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(positives: int, n: int) -> dict[str, Any]:
    """A proportion with its Wilson 95% interval and its counts (value None when n is 0)."""
    interval = wilson_interval(positives, n)
    return {
        "value": _round(positives / n) if n else None,
        "ci95": None if interval is None else [_round(interval[0]), _round(interval[1])],
        "n": n,
        "positives": positives,
    }


def rate(count: int, n: int) -> dict[str, Any]:
    """A share and its counts, without an interval."""
    return {"rate": _round(count / n) if n else None, "count": count, "n": n}


def agreement(pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    agreed = sum(1 for a, b in pairs if a == b)
    return {
        "percent": _round(100 * agreed / len(pairs)) if pairs else None,
        "kappa": _round(cohen_kappa(pairs)),
        "agreed": agreed,
        "n": len(pairs),
    }


def discordance(opinions: Sequence[SecondOpinion]) -> dict[str, Any]:
    stated = [o.concordance for o in opinions if o.concordance is not None]
    return {
        "major": rate(stated.count(Concordance.MAJOR_DISCREPANCY), len(stated)),
        "minor": rate(stated.count(Concordance.MINOR_DISCREPANCY), len(stated)),
        "n": len(stated),
    }


def _pathology(o: SecondOpinion) -> Pathology | None:
    breast = o.outcome.breast if o.outcome is not None else None
    return breast.pathology if breast is not None else None


def _ppv(opinions: Iterable[SecondOpinion], category_of: str) -> dict[str, Any]:
    biopsied = [
        p
        for o in opinions
        if getattr(o, category_of) in BIOPSY_ADVISED and (p := _pathology(o)) in DIAGNOSTIC
    ]
    return proportion(biopsied.count(Pathology.MALIGNANT), len(biopsied))


def breast_figures(opinions: Sequence[SecondOpinion]) -> dict[str, Any]:
    """The breast ledger over `opinions` (the second opinions: signed, with a first read)."""
    pairs = [
        (a, b)
        for o in opinions
        if (a := birads_for_agreement(o.first_category)) is not None
        and (b := birads_for_agreement(o.second_category)) is not None
    ]
    suspicious = [
        o for o in opinions if o.first_category in BIOPSY_ADVISED and o.second_category is not None
    ]
    downgraded = [o for o in suspicious if o.second_category in DOWNGRADE_TO]
    followed = [o for o in downgraded if _pathology(o) in DIAGNOSTIC]
    return {
        "second_opinions": len(opinions),
        "category_agreement": agreement(pairs),
        "discordance": discordance(opinions),
        "downgraded": {
            **rate(len(downgraded), len(suspicious)),
            # Of those, biopsied anyway with a diagnostic result, and malignant.
            "biopsied": len(followed),
            "malignant": sum(1 for o in followed if _pathology(o) is Pathology.MALIGNANT),
        },
        "outcomes_known": _outcomes_known(opinions),
        "ppv_biopsy": {
            "first_read": _ppv(opinions, "first_category"),
            "second_opinion": _ppv(opinions, "second_category"),
        },
    }


def _outcomes_known(opinions: Sequence[SecondOpinion]) -> int:
    known = 0
    for o in opinions:
        if o.outcome is None:
            continue
        if o.outcome.breast is not None and o.outcome.breast.result == "none_known":
            continue
        known += 1
    return known


def _confirmed(opinions: Sequence[SecondOpinion], category_of: str) -> dict[str, Any]:
    """Of the calls followed by a repeat scan, the share the repeat scan agreed with."""
    scanned = [
        (call, o.outcome.dvt.repeat_scan)
        for o in opinions
        if (call := DVT_CALL.get(getattr(o, category_of) or "")) is not None
        and o.outcome is not None
        and o.outcome.dvt is not None
        and o.outcome.dvt.repeat_scan is not RepeatScan.NOT_DONE
    ]
    return proportion(sum(1 for call, scan in scanned if call == scan), len(scanned))


def dvt_figures(opinions: Sequence[SecondOpinion]) -> dict[str, Any]:
    """The DVT ledger over `opinions` (the second opinions: signed, with a first read)."""
    pairs = [
        (o.first_category, o.second_category)
        for o in opinions
        if o.first_category is not None and o.second_category is not None
    ]
    anticoagulated: dict[str, dict[str, int]] = {}
    for call in ("dvt", "no_dvt"):
        told = [
            o.outcome.dvt
            for o in opinions
            if DVT_CALL.get(o.second_category or "") == call
            and o.outcome is not None
            and o.outcome.dvt is not None
        ]
        started = sum(1 for d in told if d.anticoagulation.started)
        anticoagulated[f"after_{call}"] = {"started": started, "n": len(told)}
    return {
        "second_opinions": len(opinions),
        "category_agreement": agreement(pairs),
        "discordance": discordance(opinions),
        "outcomes_known": sum(1 for o in opinions if o.outcome is not None),
        "repeat_scan_confirmed": {
            "first_read": _confirmed(opinions, "first_category"),
            "second_opinion": _confirmed(opinions, "second_category"),
        },
        "anticoagulation": anticoagulated,
    }


FIGURES = {Application.BREAST: breast_figures, Application.DVT: dvt_figures}


def ledger(
    signed: Iterable[SecondOpinion], application: str | None = None, reader: str | None = None
) -> dict[str, Any]:
    """Per application and per reader, over the signed reports with a first read (optionally
    one application's, one reader's)."""
    opinions = [
        o
        for o in signed
        if o.has_first_read
        and o.application in FIGURES
        and application in (None, o.application)
        and reader in (None, o.reader)
    ]
    wanted = [a for a in FIGURES if application in (None, a)]
    readers: dict[str, dict[str, Any]] = {}
    for name in sorted({o.reader for o in opinions}):
        mine = [o for o in opinions if o.reader == name]
        readers[name] = {
            str(a): FIGURES[a]([o for o in mine if o.application == a])
            for a in wanted
            if any(o.application == a for o in mine)
        }
    return {
        "applications": {
            str(a): FIGURES[a]([o for o in opinions if o.application == a]) for a in wanted
        },
        "readers": readers,
    }
