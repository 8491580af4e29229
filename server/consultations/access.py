"""Whether a consultation's token still opens it (no I/O).

A join token's `sub` is its participant. Its access ends at once, on HTTP and in
the live room:

- for everyone, when the consultation is cancelled;
- for operators and observers, when its report is signed (the expert goes on to
  read it and add addenda);
- for an expert's link from `accept`, when the consultation is no longer assigned
  to that expert (reassigned or unassigned), or their credentials are inactive.

An expert invited by a coordinator belongs to no expert's assignment, and a token
that names no participant of the consultation (an administrator's `probelink
token`): both end with the consultation only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from server.auth import Role
from server.consultations.lifecycle import State
from server.errors import Forbidden


class Ended(enum.StrEnum):
    """Why a token's access has ended: the code of the refusal and of the `revoked` event."""

    CANCELLED = "consultation_cancelled"
    SIGNED = "consultation_signed"
    REASSIGNED = "expert_reassigned"
    DEACTIVATED = "expert_deactivated"


# Operators and observers are let go once the report is signed; the expert is not.
ENDS_WHEN_SIGNED = frozenset({Role.OPERATOR, Role.OBSERVER})


@dataclass(frozen=True)
class Standing:
    """What the records say of a token's consultation and participant, now."""

    state: State
    # The expert (their sub) the consultation is assigned to.
    assigned_expert: str | None
    # Why it was cancelled (a `CancelReason` value), once it is.
    cancel_reason: str | None = None
    # The expert whose `accept` made the token's participant; None for any other token.
    link_expert: str | None = None
    # Whether that expert's credentials are active.
    link_expert_active: bool = False


def access_ended(role: Role, standing: Standing) -> Forbidden | None:
    """Why a token of `role` no longer opens its consultation, or None while it does."""
    if standing.state is State.CANCELLED:
        reason = (standing.cancel_reason or "no reason given").replace("_", " ")
        return Forbidden(
            f"the consultation was cancelled ({reason}); this link no longer opens it",
            code=Ended.CANCELLED,
        )
    if standing.link_expert is not None:
        if not standing.link_expert_active:
            return Forbidden(
                "the expert's credentials are no longer active; this link no longer opens the"
                " consultation",
                code=Ended.DEACTIVATED,
            )
        if standing.assigned_expert != standing.link_expert:
            return Forbidden(
                "the consultation is no longer assigned to this link's expert (a coordinator"
                " reassigned it); this link no longer opens it",
                code=Ended.REASSIGNED,
            )
    if standing.state is State.SIGNED and role in ENDS_WHEN_SIGNED:
        return Forbidden(
            "the consultation's report is signed; this link no longer opens it",
            code=Ended.SIGNED,
        )
    return None


def check_access(role: Role, standing: Standing) -> None:
    """Raise `Forbidden` saying why, when a token of `role` no longer opens its consultation."""
    refusal = access_ended(role, standing)
    if refusal is not None:
        raise refusal
