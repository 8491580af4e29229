"""The live room's domain: typed events, who may send them, and what is stored and relayed.

Plain Python: no Socket.IO, no database. Coordinates are normalized to [0, 1]
of the video frame (x right, y down); `media_ts` is the 90 kHz RTP timestamp
of the frame the sender was looking at.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from server.auth import Role
from server.errors import BadRequest, Forbidden, NotFound
from server.messages import Choice, NoControlChars, ShortText, StrictModel

MEDIA_TS_MAX = 2**32 - 1
MARK_POINTS_MAX = 500
TEXT_LABEL_MAX_CHARS = 200
SYNC_EVENTS_MAX = 500

Coordinate = Annotated[float, Field(ge=0.0, le=1.0)]
Point = Annotated[tuple[Coordinate, Coordinate], Field(strict=False)]
MediaTs = Annotated[int, Field(ge=0, le=MEDIA_TS_MAX)]
Id = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]


@dataclass(frozen=True)
class RoomEvent:
    """One sequenced event as relayed to the room: `type` is the Socket.IO event name."""

    seq: int
    type: str
    body: dict[str, Any]


@dataclass(frozen=True)
class RoomSnapshot:
    """What a (re)connecting participant needs: open marks, current guidance, last seq."""

    marks: list[dict[str, Any]]
    guidance: dict[str, Any] | None
    last_seq: int


class MarkKind(enum.StrEnum):
    ARROW = "arrow"
    CIRCLE = "circle"
    FREEHAND = "freehand"
    TEXT = "text"
    CALIPER = "caliper"
    # Two marks of the picture's depth scale and the distance between them (`mm`): calipers
    # drawn after it read in millimetres ("calibrated on the depth scale").
    CALIBRATION = "calibration"


# How many points each kind takes: (fewest, most).
MARK_POINTS = {
    MarkKind.ARROW: (2, 2),  # tail, head
    MarkKind.CIRCLE: (2, 2),  # centre, a point on the circle
    MarkKind.FREEHAND: (2, MARK_POINTS_MAX),
    MarkKind.TEXT: (1, 1),  # anchor
    MarkKind.CALIPER: (2, 2),  # the two ends
    MarkKind.CALIBRATION: (2, 2),  # two marks of the depth scale
}


class Cue(enum.StrEnum):
    """Probe guidance cues, in sonographers' words."""

    SLIDE = "slide"
    ROTATE = "rotate"
    TILT = "tilt"
    ROCK = "rock"
    FAN = "fan"
    COMPRESS = "compress"
    HOLD = "hold"


# The directions that make sense for each cue (HOLD takes none), in the order pages offer them.
CUE_DIRECTIONS: dict[Cue, tuple[str, ...]] = {
    Cue.SLIDE: ("left", "right", "up", "down", "cranial", "caudal", "medial", "lateral"),
    Cue.ROTATE: ("clockwise", "counterclockwise"),
    Cue.TILT: ("cranial", "caudal", "medial", "lateral", "left", "right"),
    Cue.ROCK: ("toward_marker", "away_from_marker"),
    Cue.FAN: ("left", "right", "up", "down", "cranial", "caudal", "medial", "lateral"),
    Cue.COMPRESS: ("more", "less", "release"),
    Cue.HOLD: (),
}


class Pointer(StrictModel):
    """The expert's live cursor: relayed, never stored."""

    x: Coordinate
    y: Coordinate
    media_ts: MediaTs | None = None


class Mark(StrictModel):
    """A persistent annotation on the live image."""

    kind: Choice[MarkKind]
    points: list[Point] = Field(min_length=1, max_length=MARK_POINTS_MAX)
    text: (
        Annotated[str, Field(min_length=1, max_length=TEXT_LABEL_MAX_CHARS), NoControlChars] | None
    ) = None
    media_ts: MediaTs | None = None
    # A calibration's distance between its two points, in mm.
    mm: float | None = Field(None, gt=0, le=1000)

    @model_validator(mode="after")
    def _fits_kind(self) -> Mark:
        fewest, most = MARK_POINTS[self.kind]
        if not fewest <= len(self.points) <= most:
            count = str(fewest) if fewest == most else f"{fewest} to {most}"
            raise ValueError(f"a {self.kind} mark takes {count} points")
        if self.kind is MarkKind.TEXT and not (self.text and self.text.strip()):
            raise ValueError("a text mark needs its text")
        if self.kind is not MarkKind.TEXT and self.text is not None:
            raise ValueError("only a text mark carries text")
        if (self.kind is MarkKind.CALIBRATION) != (self.mm is not None):
            raise ValueError("a calibration mark, and only it, carries mm")
        if self.kind is MarkKind.CALIBRATION and self.length() == 0:
            raise ValueError("a calibration's two points must be apart")
        return self

    def length(self) -> float | None:
        """A caliper's (or calibration's) length in normalized units (straight distance
        between its ends)."""
        if self.kind not in (MarkKind.CALIPER, MarkKind.CALIBRATION):
            return None
        (x0, y0), (x1, y1) = self.points
        return math.hypot(x1 - x0, y1 - y0)


class MarkClear(StrictModel):
    """Clear one mark, or (without id) every mark the sender may clear."""

    id: Id | None = None


class Guidance(StrictModel):
    cue: Choice[Cue]
    direction: ShortText | None = None
    note: ShortText | None = None

    @model_validator(mode="after")
    def _direction_fits_cue(self) -> Guidance:
        allowed = CUE_DIRECTIONS[self.cue]
        if self.direction is not None and self.direction not in allowed:
            if not allowed:
                raise ValueError(f"'{self.cue}' takes no direction")
            choices = ", ".join(sorted(allowed))
            raise ValueError(f"direction for '{self.cue}' must be one of {choices}")
        return self


# A browser's offer is 5 to 15 KB; the limit stays well inside the Socket.IO packet limit
# (PROBELINK_MAX_BODY_BYTES, 64 KiB by default): a longer one gets an error, not a closed socket.
SDP_MAX_CHARS = 32 * 1024


class RtcOffer(StrictModel):
    """A WebRTC offer: the operator's publishes, an expert's or observer's subscribes."""

    sdp: Annotated[str, Field(min_length=1, max_length=SDP_MAX_CHARS)]
    type: Literal["offer"]


class CaptureKind(enum.StrEnum):
    STILL = "still"
    CLIP = "clip"


class CaptureRequest(StrictModel):
    """Capture a still, save the last `seconds` as a clip, or start/stop recording a clip."""

    kind: Choice[CaptureKind]
    seconds: float | None = Field(None, gt=0, le=120)
    record: Literal["start", "stop"] | None = None

    @model_validator(mode="after")
    def _fits_kind(self) -> CaptureRequest:
        if self.kind is CaptureKind.STILL and (self.seconds is not None or self.record):
            raise ValueError("a still takes neither seconds nor record")
        if self.record is not None and self.seconds is not None:
            raise ValueError("a recording takes no seconds: it lasts from start to stop")
        return self


class Sync(StrictModel):
    """Ask for every persistent event after a sequence number (after a reconnect)."""

    after_seq: int = Field(ge=0, le=2**63 - 1)


# Rules: who may send what.


def may_point(role: Role) -> None:
    if role is not Role.EXPERT:
        raise Forbidden("only an expert's pointer is shared", code="not_allowed_pointer")


def may_mark(role: Role, mark: Mark) -> None:
    if role is Role.EXPERT:
        return
    if role is Role.OPERATOR and mark.kind is MarkKind.TEXT:
        return
    if role is Role.OPERATOR:
        raise Forbidden("an operator may add text labels only", code="not_allowed_mark")
    raise Forbidden("observers only watch", code="not_allowed_mark")


def may_clear(role: Role, sub: str, mark_author: str) -> bool:
    """Experts clear any mark; operators clear their own; observers none."""
    return role is Role.EXPERT or (role is Role.OPERATOR and sub == mark_author)


def marks_to_clear(
    role: Role, sub: str, open_marks: list[tuple[str, str]], mark_id: str | None
) -> list[str]:
    """Which open marks (id, author) a clear removes: the one named, or every one this person
    may clear; refused when the named one is not open or not theirs to clear."""
    if mark_id is not None:
        author = dict(open_marks).get(mark_id)
        if author is None:
            raise NotFound("no such open mark", code="mark_not_found", field="id")
        if not may_clear(role, sub, author):
            raise Forbidden("an operator may clear only their own marks", code="not_allowed_clear")
        return [mark_id]
    return [i for i, author in open_marks if may_clear(role, sub, author)]


def may_clear_any(role: Role) -> None:
    if role not in (Role.EXPERT, Role.OPERATOR):
        raise Forbidden("observers only watch", code="not_allowed_clear")


def may_capture(role: Role) -> None:
    if role not in (Role.EXPERT, Role.OPERATOR):
        raise Forbidden("observers only watch", code="not_allowed_capture")


def may_guide(role: Role) -> None:
    if role is not Role.EXPERT:
        raise Forbidden("only an expert gives probe guidance", code="not_allowed_guidance")


def mark_body(mark: Mark, *, mark_id: str, author: str, author_role: Role) -> dict[str, Any]:
    """What is stored and relayed for a mark (its `seq` is added when it is sequenced)."""
    body: dict[str, Any] = {
        "id": mark_id,
        "kind": mark.kind.value,
        "points": [list(p) for p in mark.points],
        "author": author,
        "author_role": author_role.value,
    }
    if mark.text is not None:
        body["text"] = mark.text
    if mark.media_ts is not None:
        body["media_ts"] = mark.media_ts
    if mark.mm is not None:
        body["mm"] = mark.mm
    length = mark.length()
    if length is not None:
        body["length"] = round(length, 6)
    return body


def guidance_body(guidance: Guidance, *, author: str, author_role: Role) -> dict[str, Any]:
    body: dict[str, Any] = {
        "cue": guidance.cue.value,
        "author": author,
        "author_role": author_role.value,
    }
    if guidance.direction is not None:
        body["direction"] = guidance.direction
    if guidance.note is not None:
        body["note"] = guidance.note
    return body


def refuse_unknown_event(event: str) -> BadRequest:
    shown = event if event.isidentifier() and len(event) <= 40 else "(unprintable)"
    return BadRequest(f"unknown event '{shown}'", code="unknown_event")
