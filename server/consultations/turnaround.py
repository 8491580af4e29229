"""Turnaround of second opinions: request → first expert joined → report signed.

Plain Python: the figures a service reviews (median, 90th percentile, what is overdue), computed
from the consultations' times. No I/O; `GET /api/turnaround` and `/metrics` show them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from server.consultations.lifecycle import OPEN_STATES, State

# The stages a consultation's turnaround is split into, in order.
STAGES = ("request_to_first_join", "request_to_signed", "first_join_to_signed")


@dataclass(frozen=True)
class Times:
    """What turnaround needs of one consultation."""

    state: State
    requested_at: datetime
    due_at: datetime
    first_joined_at: datetime | None
    signed_at: datetime | None


@dataclass(frozen=True)
class StageSummary:
    """One stage over many consultations (seconds); None when no consultation reached it."""

    count: int
    median_seconds: float | None
    p90_seconds: float | None


@dataclass(frozen=True)
class Summary:
    stages: dict[str, StageSummary]
    # Open (not yet signed) and past their due time now.
    overdue_open: int
    # Signed, but after their due time.
    signed_late: int
    consultations: int


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (the value below which `fraction` of them lie); values sorted."""
    rank = max(1, math.ceil(fraction * len(values)))
    return values[rank - 1]


def stage_seconds(t: Times) -> dict[str, float]:
    """The stages this consultation has completed, in seconds."""
    done: dict[str, float] = {}
    if t.first_joined_at is not None:
        done["request_to_first_join"] = (t.first_joined_at - t.requested_at).total_seconds()
    if t.signed_at is not None:
        done["request_to_signed"] = (t.signed_at - t.requested_at).total_seconds()
        if t.first_joined_at is not None:
            done["first_join_to_signed"] = (t.signed_at - t.first_joined_at).total_seconds()
    return done


def summarise(consultations: Iterable[Times], now: datetime) -> Summary:
    """Median and p90 per stage, and what is overdue, over the given consultations."""
    samples: dict[str, list[float]] = {stage: [] for stage in STAGES}
    overdue_open = signed_late = total = 0
    for t in consultations:
        total += 1
        for stage, seconds in stage_seconds(t).items():
            samples[stage].append(seconds)
        if t.state in OPEN_STATES and now > t.due_at:
            overdue_open += 1
        if t.signed_at is not None and t.signed_at > t.due_at:
            signed_late += 1
    stages = {}
    for stage, values in samples.items():
        values.sort()
        stages[stage] = StageSummary(
            count=len(values),
            median_seconds=_median(values) if values else None,
            p90_seconds=percentile(values, 0.9) if values else None,
        )
    return Summary(stages, overdue_open, signed_late, total)


def _median(values: Sequence[float]) -> float:
    middle = len(values) // 2
    if len(values) % 2:
        return values[middle]
    return (values[middle - 1] + values[middle]) / 2
