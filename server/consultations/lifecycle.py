"""The consultation's life cycle (no I/O): its states, the transitions between them, and the steps
that move it, which handlers and stores ask instead of picking a state themselves.

requested → live (an expert joined) → reported (a draft) → signed; cancelled from any open state.
"""

from __future__ import annotations

import enum

from server.errors import BadRequest, Conflict
from server.messages import Choice, LongText, StrictModel


class State(enum.StrEnum):
    """Life of a consultation: requested → live → reported → signed (or cancelled)."""

    REQUESTED = "requested"
    LIVE = "live"
    REPORTED = "reported"
    SIGNED = "signed"
    CANCELLED = "cancelled"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.REQUESTED: frozenset({State.LIVE, State.REPORTED, State.CANCELLED}),
    State.LIVE: frozenset({State.REPORTED, State.CANCELLED}),
    State.REPORTED: frozenset({State.SIGNED, State.LIVE, State.CANCELLED}),
    State.SIGNED: frozenset(),
    State.CANCELLED: frozenset(),
}
OPEN_STATES = frozenset({State.REQUESTED, State.LIVE, State.REPORTED})


class CancelReason(enum.StrEnum):
    """Why a coordinator cancelled a consultation (coded: it is audited and shown to the room)."""

    DUPLICATE = "duplicate"
    NO_LONGER_NEEDED = "no_longer_needed"
    PATIENT_UNAVAILABLE = "patient_unavailable"
    ENTERED_IN_ERROR = "entered_in_error"
    OTHER = "other"


class Cancellation(StrictModel):
    """`POST /api/consultations/{id}/cancel`: the reason, and a note the record keeps."""

    reason: Choice[CancelReason]
    # Free text: kept with the record only, never in the audit log or a message to the room.
    note: LongText | None = None


def check_cancellation(cancellation: Cancellation) -> None:
    """`other` says nothing by itself: it needs the note."""
    if cancellation.reason is CancelReason.OTHER and cancellation.note is None:
        raise BadRequest(
            "a cancellation for reason 'other' needs a 'note' saying why",
            code="missing_field",
            field="note",
        )


def transition(current: State, target: State) -> State:
    """Move to `target` if the life cycle allows it; otherwise `Conflict` naming both states."""
    if target not in TRANSITIONS[current]:
        raise Conflict(
            f"a consultation that is {current} cannot become {target}", code="invalid_state"
        )
    return target


# The life cycle's steps: the state each leaves a consultation in, by the rules above. Handlers
# and stores ask these; none picks a state itself.


def on_expert_joined(current: State) -> State:
    """The first expert to join makes a requested consultation live; nothing else moves."""
    return State.LIVE if current is State.REQUESTED else current


def on_report_drafted(current: State) -> State:
    """A draft makes the consultation reported (a later draft keeps it so)."""
    return current if current is State.REPORTED else transition(current, State.REPORTED)


def on_report_signed(current: State) -> State:
    return transition(current, State.SIGNED)


def on_cancelled(current: State) -> State:
    return transition(current, State.CANCELLED)


def accepts_participants(state: State) -> bool:
    """Invitations are possible until the consultation is signed or cancelled."""
    return state in OPEN_STATES
