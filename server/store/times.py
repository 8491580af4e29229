"""The one stored and wire form of a time: ISO-8601 UTC with microseconds (sorts as it reads)."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def from_iso(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)
