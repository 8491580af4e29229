"""Contradictions inside a report, and between the report and its request (no I/O).

`check_consistency` reads the report body (its text and its structured findings: breast
`lesions`, DVT `segment_findings`) with what the request said (the first reader's BI-RADS
category, the DVT segments asked for) and what the key images measure, and returns `Advice`:
shown while the report is written and listed before it is signed. Advice is advice, like the
terminology check: the expert may know better. A rule is hard only where the report would
contradict itself in structured values, with no reading under which both can be true:
- concordance "agree" with a BI-RADS category other than the first reader's (4A and 4B are both
  4: a subcategory apart is advice);
- a lesion that is a simple cyst (benign by definition) with category 4 or 5 (3: advice);
- an overall category below a lesion's (the overall assessment is the most suspicious lesion's;
  a subcategory below is advice; 0 and 6 are not ranked);
- a DVT segment finding with acute thrombus under the category "no DVT".
Advice only, because the structured findings may be partial while written: every lesion a
simple cyst under an overall 4-5; a non-compressible segment or a chronic or indeterminate
thrombus under "no DVT"; "acute DVT" while every segment found is compressible without thrombus;
an extent with no thrombus; a lesion's size said to come from a key image whose calipers there
are uncalibrated, absent, none near the size, or not this consultation's.
`Conflict report_inconsistent` refuses signing while a hard rule holds.

Text rules look for what the recommendation says (a biopsy, anticoagulation, a follow-up) by
whole words, and skip a biopsy that is advised against ("no biopsy", "biopsy is not needed").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from server.consultations.applications import Application, DvtCategory
from server.consultations.lexicon import (
    BIOPSY_ADVISED,
    SEGMENT_LABELS,
    BiRads,
    Compressibility,
    DvtSegment,
    Lesion,
    SpecialCase,
    Thrombus,
)
from server.errors import Conflict
from server.reports.model import Concordance, ReportBody


@dataclass(frozen=True)
class Advice:
    """One contradiction: the report field it is about and what to check."""

    field: str
    message: str
    hard: bool = False


@dataclass(frozen=True)
class RequestFacts:
    """What the request said that the report is checked against."""

    first_read_birads: str | None = None
    segments_requested: tuple[str, ...] = ()


# Breast: where management changes (a biopsy or not).
_BENIGN = {BiRads.NEGATIVE, BiRads.BENIGN}
_BELOW_BIOPSY = {"1", "2", "3"}
_DVT_ACUTE = {DvtCategory.ACUTE_DVT, DvtCategory.ACUTE_ON_CHRONIC}

_BIOPSY = re.compile(
    r"\b(biops\w*|core[- ]needle|fine[- ]needle|FNA|FNAC|tissue (sampling|diagnosis)|"
    r"vacuum[- ]assisted)\b",
    re.IGNORECASE,
)
# A biopsy advised against: a negation shortly before it, or "not needed" shortly after.
_NEGATED_BEFORE = re.compile(
    r"\b(no|not|without|avoid\w*|instead of|unnecessary|spar\w+|defer\w*|rather than)\b"
    r"[^.;]{0,25}$",
    re.IGNORECASE,
)
_NEGATED_AFTER = re.compile(
    r"^[^.;]{0,25}\b(not (needed|required|indicated|necessary|recommended)|unnecessary|"
    r"can be avoided|is avoided)\b",
    re.IGNORECASE,
)
_TREATMENT_OR_FOLLOW_UP = re.compile(
    r"\b(anticoagula\w*|heparin|LMWH|DOACs?|apixaban|rivaroxaban|edoxaban|dabigatran|"
    r"warfarin|fondaparinux|treat\w*|follow[- ]?up|repeat (scan|ultrasound|study|duplex)|"
    r"re-?scan|refer\w*|vascular (team|surgeon|clinic)|haematolog\w*|hematolog\w*)\b",
    re.IGNORECASE,
)
# A lesion's size and the caliper it came from may differ by rounding.
SIZE_TOLERANCE_MM = 1.0
_SIZE = re.compile(r"\b\d+(?:[.,]\d+)?\s?(?:mm|cm)\b", re.IGNORECASE)


def recommends_biopsy(text: str | None) -> bool:
    """True when the text recommends a biopsy (a mention advised against does not count)."""
    for match in _BIOPSY.finditer(text or ""):
        before, after = text[: match.start()], text[match.end() :]  # type: ignore[index]
        if not (_NEGATED_BEFORE.search(before) or _NEGATED_AFTER.search(after)):
            return True
    return False


def _birads(value: str) -> str:
    return f"BI-RADS {value}"


def _main(category: str) -> str:
    return category[:1]  # 4A, 4B, 4C and 4 are all category 4


def _breast(body: ReportBody, facts: RequestFacts) -> list[Advice]:
    advice = []
    category, first = body.category, facts.first_read_birads
    if category is not None and first is not None and body.concordance is not None:
        if body.concordance == Concordance.AGREE and _main(category) != _main(first):
            advice.append(
                Advice(
                    "concordance",
                    f"Concordance is 'agree', but the first read is {_birads(first)} and this"
                    f" report {_birads(category)}: choose a minor or major discrepancy, or the"
                    " category that agrees.",
                    hard=True,
                )
            )
        elif body.concordance == Concordance.AGREE and category != first:
            advice.append(
                Advice(
                    "concordance",
                    f"Concordance is 'agree', but the first read is {_birads(first)} and this"
                    f" report {_birads(category)}: a different subcategory is a minor"
                    " discrepancy.",
                )
            )
        elif body.concordance != Concordance.AGREE and category == first:
            advice.append(
                Advice(
                    "concordance",
                    f"Both reads are {_birads(category)} but concordance says a discrepancy:"
                    " say in the findings what differs, or choose 'agree'.",
                )
            )
        crosses = {category, first} & BIOPSY_ADVISED and {category, first} & _BELOW_BIOPSY
        if body.concordance == Concordance.MINOR_DISCREPANCY and crosses:
            advice.append(
                Advice(
                    "concordance",
                    f"{_birads(first)} to {_birads(category)} changes whether the patient has a"
                    " biopsy: that is a major discrepancy.",
                )
            )
    advice += _lesions(category, body.lesions or [])
    biopsy = recommends_biopsy(body.recommendation)
    if category in _BENIGN and biopsy:
        advice.append(
            Advice(
                "recommendation",
                f"{_birads(category)} is negative or benign, but the recommendation advises a"
                " biopsy: check the category or the recommendation.",
            )
        )
    elif category == BiRads.PROBABLY_BENIGN and biopsy:
        advice.append(
            Advice(
                "recommendation",
                f"{_birads(category)} (probably benign) is followed up at a short interval, not"
                " biopsied: if a biopsy is needed the category is 4.",
            )
        )
    elif category in BIOPSY_ADVISED and body.recommendation is not None and not biopsy:
        advice.append(
            Advice(
                "recommendation",
                f"{_birads(category)} calls for a tissue diagnosis, but the recommendation does"
                " not advise a biopsy.",
            )
        )
    return advice


# Categories 1-5 in order of suspicion (0 and 6 say something else: not ranked).
_RANK = {"1": 1, "2": 2, "3": 3, "4": 4, "4A": 4.1, "4B": 4.2, "4C": 4.3, "5": 5}


def _lesions(category: str | None, lesions: Sequence[Lesion]) -> list[Advice]:
    """The lesions' own categories against their special case and the overall category."""
    advice = []
    for n, lesion in enumerate(lesions):
        where, said = f"lesions.{n}", f"Lesion {n + 1}"
        mine = lesion.category
        if lesion.special_case == SpecialCase.SIMPLE_CYST and mine in _RANK and _RANK[mine] > 2:
            advice.append(
                Advice(
                    f"{where}.category",
                    f"{said} is a simple cyst, which is benign (BI-RADS 2), but its category is"
                    f" {_birads(mine)}: check the special case or the category.",
                    hard=_RANK[mine] >= 4,
                )
            )
        if category in _RANK and mine in _RANK and _RANK[category] < _RANK[mine]:
            advice.append(
                Advice(
                    "category",
                    f"The overall category {_birads(category)} is below {said.lower()}'s"
                    f" {_birads(mine)}: the overall assessment is the most suspicious lesion's.",
                    hard=int(_RANK[category]) < int(_RANK[mine]),
                )
            )
    cysts = [lesion.special_case == SpecialCase.SIMPLE_CYST for lesion in lesions]
    # Said once: not again when a cyst's own category already contradicts it.
    if cysts and all(cysts) and category in BIOPSY_ADVISED and not advice:
        advice.append(
            Advice(
                "category",
                f"Every lesion is a simple cyst, which is benign, but the overall category is"
                f" {_birads(category)}: say which finding is suspicious, or check the category.",
            )
        )
    return advice


# How an older or undated thrombus is said (not "chronic thrombus": see terminology.toml).
_OLDER = {
    Thrombus.CHRONIC: "chronic postthrombotic change",
    Thrombus.INDETERMINATE: "thrombus of indeterminate age",
}


def _segment_findings(body: ReportBody) -> list[Advice]:
    """What each examined segment shows against the study's category."""
    advice = []
    category = body.category
    findings = body.segment_findings or []
    for n, finding in enumerate(findings):
        where, named = f"segment_findings.{n}", SEGMENT_LABELS[finding.segment]
        if category == DvtCategory.NO_DVT and finding.thrombus == Thrombus.ACUTE:
            advice.append(
                Advice(
                    f"{where}.thrombus",
                    f"The {named} has acute thrombus, but the category is no DVT.",
                    hard=True,
                )
            )
        elif category == DvtCategory.NO_DVT and finding.thrombus in (
            Thrombus.CHRONIC,
            Thrombus.INDETERMINATE,
        ):
            advice.append(
                Advice(
                    f"{where}.thrombus",
                    f"The {named} shows {_OLDER[finding.thrombus]}, but the category is no DVT:"
                    " choose chronic postthrombotic change or indeterminate.",
                )
            )
        elif category == DvtCategory.NO_DVT and (
            finding.compressibility == Compressibility.NON_COMPRESSIBLE
        ):
            advice.append(
                Advice(
                    f"{where}.compressibility",
                    f"The {named} is non-compressible, but the category is no DVT: a vein that"
                    " does not compress is thrombosed until shown otherwise.",
                )
            )
        if finding.extent is not None and finding.thrombus == Thrombus.NONE:
            advice.append(
                Advice(
                    f"{where}.extent",
                    f"The {named} has no thrombus, but an extent of thrombus is given.",
                )
            )
    normal = [
        f.compressibility == Compressibility.COMPRESSIBLE and f.thrombus in (None, Thrombus.NONE)
        for f in findings
    ]
    if category in _DVT_ACUTE and normal and all(normal):
        advice.append(
            Advice(
                "category",
                "The category is an acute DVT, but every segment found is compressible without"
                " thrombus: add the thrombosed segment, or check the category.",
            )
        )
    return advice


def _dvt(body: ReportBody, facts: RequestFacts) -> list[Advice]:
    advice = _segment_findings(body)
    if body.category in _DVT_ACUTE and body.recommendation is not None:
        if not _TREATMENT_OR_FOLLOW_UP.search(body.recommendation):
            advice.append(
                Advice(
                    "recommendation",
                    "An acute DVT, but the recommendation says nothing of anticoagulation,"
                    " referral or follow-up.",
                )
            )
    requested = [DvtSegment(s) for s in facts.segments_requested]
    # A segment with a finding was examined, whether or not it is ticked too.
    found = [f.segment for f in body.segment_findings or ()]
    examined = set(body.segments_examined or ()) | set(found)
    if requested and body.segments_examined is None and not found:
        advice.append(
            Advice(
                "segments_examined",
                "Say which venous segments the report covers: a negative scan excludes thrombus"
                " only where the veins were examined.",
            )
        )
    elif requested:
        left_out = [SEGMENT_LABELS[s] for s in dict.fromkeys(requested) if s not in examined]
        if left_out:
            advice.append(
                Advice(
                    "segments_examined",
                    f"The request covers the {', '.join(left_out)}, which the report does not"
                    " say were examined.",
                )
            )
    return advice


def _sizes(body: ReportBody, cited: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[Advice]:
    """A size in the text with only uncalibrated calipers on the cited images to back it."""
    texts = " ".join(t for t in (body.findings, body.recommendation) if t)
    sizes = _SIZE.findall(texts)
    calipers = [c for key in body.key_image_ids for c in cited.get(key, ())]
    uncalibrated = [c for c in calipers if c.get("mm") is None]
    if sizes and uncalibrated and len(uncalibrated) == len(calipers):
        return [
            Advice(
                "findings",
                f"The report gives a size ({sizes[0]}), but the calipers on the cited key images"
                " are uncalibrated: calibrate them on the depth scale, or do not cite the size.",
            )
        ]
    return []


def _lesion_sizes(
    body: ReportBody, cited: Mapping[str, Sequence[Mapping[str, Any]]]
) -> list[Advice]:
    """A lesion's size said to come from a key image that does not measure it."""
    advice = []
    for n, lesion in enumerate(body.lesions or ()):
        key, sizes = lesion.size_key_image_id, lesion.size_mm
        if key is None or not sizes:
            continue
        said = f"Lesion {n + 1}'s size"
        calipers = cited.get(key)
        lengths = [c["mm"] for c in calipers or () if c.get("mm") is not None]
        if calipers is None:
            why = "is said to come from a key image that is not this consultation's"
        elif not calipers:
            why = "is said to come from a key image with no calipers on it"
        elif not lengths:
            why = (
                "is said to come from a key image whose calipers are uncalibrated: calibrate"
                " them on the depth scale"
            )
        elif not any(abs(s - m) <= SIZE_TOLERANCE_MM for s in sizes for m in lengths):
            measured = ", ".join(f"{m:.1f} mm" for m in lengths)
            why = f"matches none of the lengths measured on its key image ({measured})"
        else:
            continue
        advice.append(Advice(f"lesions.{n}.size_mm", f"{said} {why}."))
    return advice


def check_consistency(
    application: str | None,
    body: ReportBody,
    facts: RequestFacts,
    cited: Mapping[str, Sequence[Mapping[str, Any]]] = {},
) -> list[Advice]:
    """Every contradiction found, in reading order. `cited`: this consultation's key image
    id -> its calipers (as `measurements.measure` stores them)."""
    advice: list[Advice] = []
    if application == Application.BREAST:
        advice += _breast(body, facts)
    if application == Application.DVT:
        advice += _dvt(body, facts)
    advice += _sizes(body, cited)
    advice += _lesion_sizes(body, cited)
    return advice


def refuse_hard(advice: Iterable[Advice]) -> None:
    """Signing is refused while a hard rule holds; the message says which."""
    hard = [a.message for a in advice if a.hard]
    if hard:
        raise Conflict(
            f"the report contradicts itself: {' '.join(hard)}", code="report_inconsistent"
        )
