"""Experts' credentials: which consultations an expert is offered and may accept (no I/O).

An expert is credentialed for subspecialties, named like the consultations'
applications (`server.consultations.model.Application`). A consultation without an
application counts as `other`. An expert is offered an open consultation they
are credentialed for when it is unassigned or assigned to them; a coordinator
may assign it to any active expert credentialed for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

from pydantic import Field, StringConstraints

from server.consultations.model import Application
from server.email_address import EmailAddress
from server.messages import Choice, Name, StrictModel

# An expert's `sub` (their tokens' subject): the characters a TURN username keeps as they are.
SUB_PATTERN = r"^[A-Za-z0-9._@-]{1,128}$"
ExpertSub = Annotated[str, StringConstraints(pattern=SUB_PATTERN)]


class ExpertProfile(StrictModel):
    """What a coordinator registers for an expert (`PUT /api/experts/{sub}`)."""

    name: Name
    subspecialties: list[Choice[Application]] = Field(min_length=1, max_length=len(Application))
    active: bool = True
    # Where notifications reach them (a request they may read arrives, or comes due); none: not
    # told by e-mail.
    email: EmailAddress | None = None


def subspecialty_set(subspecialties: Iterable[str]) -> tuple[Application, ...]:
    """Subspecialties without repeats, in the applications' order (as stored and shown)."""
    given = {Application(s) for s in subspecialties}
    return tuple(a for a in Application if a in given)


def application_of(application: str | None) -> Application:
    """The application a consultation counts as: `other` when the request names none."""
    return Application(application) if application else Application.OTHER


def credentialed(subspecialties: Iterable[str], application: str | None) -> bool:
    """Whether an expert with these subspecialties may read a consultation of `application`."""
    return application_of(application) in {Application(s) for s in subspecialties}
