"""Where the second opinion differs from the first read, field by field (no I/O).

Both reads may be stated in the lexicon (`server/consultations/lexicon.py`): the request's
`breast.first_read_lesions` / `dvt.first_read_segments`, the report's `lesions` /
`segment_findings`. Lesions are compared by index (lesion n of the first read with lesion n of
the report), venous segments by segment. Only what both reads can state is compared (not the
report's key image or a lesion's note). Values are said as a reader says them (lists joined with
", ", in the lexicon's order); a side that does not state a value is None, a lesion or segment
only one read has is one difference for the whole of it. Nothing is compared until both reads are
structured: a report with `lesions` None has not said yet, `[]` says there is no lesion.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from server.consultations.lexicon import (
    COMPRESSIBILITY_LABELS,
    SEGMENT_LABELS,
    Lesion,
    SegmentFinding,
    said,
)

# The lesion's fields both reads state, in reading order, and how each is named.
LESION_FIELDS = {
    "side": "side",
    "clock": "clock face",
    "distance_from_nipple_cm": "distance from the nipple",
    "size_mm": "size",
    "shape": "shape",
    "orientation": "orientation",
    "margin": "margin",
    "echo_pattern": "echo pattern",
    "posterior_features": "posterior features",
    "calcifications": "calcifications",
    "associated_features": "associated features",
    "special_case": "special case",
    "category": "category",
}
SEGMENT_FIELDS = {
    "compressibility": "compressibility",
    "thrombus": "thrombus",
    "flow": "flow",
    "extent": "extent",
}


@dataclass(frozen=True)
class Difference:
    """One field the two reads state differently (`first`, `second`: said; None: not stated)."""

    field: str
    label: str
    first: str | None
    second: str | None


def _number(value: float) -> str:
    return f"{value:g}"


def _say(name: str, value: Any) -> str | None:
    """A lesion's or segment's value as the pages show it; None for nothing stated."""
    if value is None or value == []:
        return None
    if name == "clock":
        return f"{value} o'clock"
    if name == "distance_from_nipple_cm":
        return f"{_number(value)} cm"
    if name == "size_mm":
        return " x ".join(_number(v) for v in value) + " mm"
    if name == "category":
        return f"BI-RADS {value}"
    if name == "compressibility":
        return COMPRESSIBILITY_LABELS[value]
    if isinstance(value, list):
        # The lexicon's order, so that the same set is said the same way by both reads.
        return ", ".join(said(v) for v in type(value[0]) if v in value)
    return said(value)


def _same(first: Any, second: Any) -> bool:
    if first in (None, []) or second in (None, []):
        return first in (None, []) and second in (None, [])
    if isinstance(first, list) and isinstance(first[0], enum.Enum):
        return set(first) == set(second)
    return bool(first == second)


# Said before the descriptors, unnamed: where the lesion is and how big.
_WHERE = ("side", "clock", "distance_from_nipple_cm", "size_mm")


def lesion_summary(lesion: Lesion) -> str:
    """One lesion in a line, e.g. "left breast, 2 o'clock, 3 cm from the nipple, 12 x 8 mm;
    shape oval; margin circumscribed; ...; BI-RADS 2" (its note is not part of it)."""
    where = [_say(name, getattr(lesion, name)) for name in _WHERE]
    if where[0]:
        where[0] += " breast"
    if where[2]:
        where[2] += " from the nipple"
    described = [
        value if name == "category" else f"{named} {value}"
        for name, named in LESION_FIELDS.items()
        if name not in _WHERE and (value := _say(name, getattr(lesion, name)))
    ]
    parts = [", ".join(w for w in where if w), *described]
    return "; ".join(p for p in parts if p) or "no descriptor stated"


def segment_summary(finding: SegmentFinding) -> str:
    """One segment's finding in a line, e.g. "non-compressible; thrombus acute; flow phasic"."""
    parts = [
        value if name == "compressibility" else f"{named} {value}"
        for name, named in SEGMENT_FIELDS.items()
        if (value := _say(name, getattr(finding, name)))
    ]
    return "; ".join(parts) or "examined, nothing stated"


def _fields(
    path: str, label: str, first: object, second: object, names: dict[str, str]
) -> list[Difference]:
    found = []
    for name, named in names.items():
        a, b = getattr(first, name), getattr(second, name)
        if not _same(a, b):
            found.append(
                Difference(f"{path}.{name}", f"{label}: {named}", _say(name, a), _say(name, b))
            )
    return found


def lesion_differences(
    first: Sequence[Lesion] | None, second: Sequence[Lesion] | None
) -> list[Difference]:
    """The report's lesions against the first read's, lesion n with lesion n."""
    if not first or second is None:
        return []
    found: list[Difference] = []
    for n in range(max(len(first), len(second))):
        path, label = f"lesions.{n}", f"Lesion {n + 1}"
        a = first[n] if n < len(first) else None
        b = second[n] if n < len(second) else None
        if a is not None and b is not None:
            found += _fields(path, label, a, b, LESION_FIELDS)
        else:
            found.append(
                Difference(
                    path,
                    label,
                    lesion_summary(a) if a is not None else None,
                    lesion_summary(b) if b is not None else None,
                )
            )
    return found


def segment_differences(
    first: Sequence[SegmentFinding] | None, second: Sequence[SegmentFinding] | None
) -> list[Difference]:
    """The report's segment findings against the first read's, segment by segment (in the
    lexicon's order of the segments)."""
    if not first or second is None:
        return []
    firsts = {f.segment: f for f in first}
    seconds = {f.segment: f for f in second}
    found: list[Difference] = []
    for segment, named in SEGMENT_LABELS.items():
        a, b = firsts.get(segment), seconds.get(segment)
        path, label = f"segment_findings.{segment.value}", named[:1].upper() + named[1:]
        if a is not None and b is not None:
            found += _fields(path, label, a, b, SEGMENT_FIELDS)
        elif a is not None or b is not None:
            found.append(
                Difference(
                    path,
                    label,
                    segment_summary(a) if a is not None else None,
                    segment_summary(b) if b is not None else None,
                )
            )
    return found
