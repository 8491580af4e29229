"""What the imaging feature works on: a capture as asked for, a key image as recorded, and the
archived objects that make it up."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from server.consultations.model import ConsultationRow
from server.live.room import CaptureKind


@dataclass(frozen=True)
class Capture:
    """What was asked for and what was on screen."""

    consultation: ConsultationRow
    kind: CaptureKind
    author: str
    author_role: str
    source: str  # the address it came from, for the audit log
    marks: list[dict[str, Any]]
    guidance: dict[str, Any] | None


@dataclass(frozen=True)
class ArchivedObject:
    sop_instance_uid: str
    kind: str  # still, clip, presentation_state, key_object_selection, prior
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class NewKeyImage:
    id: str
    consultation_id: str
    kind: str  # still or clip
    sop_instance_uid: str
    media_ts: int | None
    marks: list[dict[str, Any]]
    guidance: dict[str, Any] | None
    detail: dict[str, Any]
    created_by: str
    # The image first, then what goes with it (presentation state, key object selection).
    objects: list[ArchivedObject] = field(default_factory=list)


@dataclass(frozen=True)
class OutboxItem:
    sop_instance_uid: str
    consultation_id: str
    path: str
    sha256: str
    attempts: int
