"""What to send to whom, and what it says (no I/O).

Two events are notified: a request arrived, and an open request is about to be due. Who is
told: the active experts credentialed for the request's application who have an e-mail
address (for a due-soon notice of an assigned request, only the expert holding it), the
coordinators' addresses, and the webhook. Each (event, channel, recipient) is one delivery,
sent and retried on its own, so an SMTP outage does not hold back the webhook.

What is said: the event, urgency, application, accession number, due time, time left and the
queue link. Never the patient reference, the clinical question or any clinical text: a
notification leaves the hospital's control (a mailbox, a pager, a chat).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from server.consultations.model import ConsultationRow, Kind
from server.experts.model import credentialed
from server.store.times import iso

SIGNATURE_HEADER = "X-Probelink-Signature"
SUBJECT_PREFIX = "[probelink]"


class DeliveryFailed(Exception):
    """Not delivered this time (the server is down, busy or refused for now): retried later.
    The message says why, with no address, body or patient data in it."""


class DeliveryRefused(DeliveryFailed):
    """Never deliverable as it stands (the mail server refused the recipient for good)."""


class Event(enum.StrEnum):
    """What a notice is about."""

    REQUESTED = "consultation.requested"
    DUE_SOON = "consultation.due_soon"


class Channel(enum.StrEnum):
    EMAIL = "email"
    WEBHOOK = "webhook"


HEADLINES = {Event.REQUESTED: "New request", Event.DUE_SOON: "Request due soon"}


@dataclass(frozen=True)
class Routing:
    """Where notices go, from the settings."""

    email: bool
    webhook: bool
    coordinators: tuple[str, ...]


@dataclass(frozen=True)
class Expert:
    """What routing needs of a registered expert."""

    sub: str
    email: str | None
    subspecialties: tuple[str, ...]
    active: bool


@dataclass(frozen=True)
class Delivery:
    """One notice to one recipient over one channel (the webhook's recipient is "")."""

    id: str
    consultation_id: str
    event: Event
    channel: Channel
    recipient: str


@dataclass(frozen=True)
class Notice:
    """A delivery as it is sent: the consultation's non-clinical facts, read at sending time."""

    id: str
    event: Event
    channel: Channel
    recipient: str
    urgency: str
    application: str | None
    accession_number: str | None
    due_at: datetime


def notified(row: ConsultationRow) -> bool:
    """Device setup sessions have no patient and no expert to read them: never notified."""
    return row.context.kind is not Kind.DEVICE_SETUP


def deliveries(
    event: Event, row: ConsultationRow, experts: Iterable[Expert], routing: Routing
) -> list[Delivery]:
    """Every delivery of `event` about `row`, one per channel and recipient, no repeats."""
    if not notified(row):
        return []
    application = row.context.application.value if row.context.application else None
    told = [
        e
        for e in experts
        if e.active
        and e.email
        and credentialed(e.subspecialties, application)
        # Once an expert holds the request, a reminder is theirs alone.
        and (event is Event.REQUESTED or row.assigned_expert in (None, e.sub))
    ]
    # One e-mail per mailbox, however many roles it has (compared case-insensitively).
    addresses: dict[str, str] = {}
    if routing.email:
        for address in [e.email for e in told if e.email] + list(routing.coordinators):
            addresses.setdefault(address.lower(), address)
    out = [
        Delivery(uuid.uuid4().hex, row.id, event, Channel.EMAIL, address)
        for address in addresses.values()
    ]
    if routing.webhook:
        out.append(Delivery(uuid.uuid4().hex, row.id, event, Channel.WEBHOOK, ""))
    return out


def time_left(due_at: datetime, now: datetime) -> str:
    """ "2 h 5 min left", "overdue by 3 min": whole minutes, rounded towards the due time."""
    seconds = (due_at - now).total_seconds()
    minutes = int(abs(seconds) // 60)
    hours, rest = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [f"{days} d"] * bool(days) + [f"{hours} h"] * bool(hours) + [f"{rest} min"]
    span = " ".join(parts if days == 0 else parts[:2])
    return f"{span} left" if seconds >= 0 else f"overdue by {span}"


def facts(notice: Notice, queue_url: str, now: datetime) -> dict[str, object]:
    """Everything a notice says, as the webhook's JSON carries it."""
    return {
        "event": notice.event.value,
        "notice_id": notice.id,
        "urgency": notice.urgency,
        "application": notice.application,
        "accession_number": notice.accession_number,
        "due_at": iso(notice.due_at),
        "seconds_left": int((notice.due_at - now).total_seconds()),
        "queue_url": queue_url,
        "sent_at": iso(now),
    }


def webhook_body(notice: Notice, queue_url: str, now: datetime) -> bytes:
    """The webhook's body: compact JSON, keys sorted (the signature covers these bytes)."""
    return json.dumps(facts(notice, queue_url, now), sort_keys=True, separators=(",", ":")).encode()


def signature(secret: bytes, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of the body>`: the X-Probelink-Signature header's value."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def email_message(notice: Notice, sender: str, queue_url: str, now: datetime) -> EmailMessage:
    """The notice as a short plain-text e-mail to its recipient."""
    application = notice.application or "no application given"
    accession = notice.accession_number or "(none)"
    left = time_left(notice.due_at, now)
    message = EmailMessage()
    message["Subject"] = (
        f"{SUBJECT_PREFIX} {HEADLINES[notice.event]}: {notice.urgency}, {application}, "
        f"accession {accession}, {left}"
    )
    message["From"] = sender
    message["To"] = notice.recipient
    message["Date"] = format_datetime(now)
    message["Message-ID"] = make_msgid("probelink", domain=sender.rpartition("@")[2])
    # RFC 3834: an automatic message; out-of-office replies are not sent back to it.
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(
        "\n".join(
            (
                f"{HEADLINES[notice.event]} for a second opinion.",
                "",
                f"Urgency:     {notice.urgency}",
                f"Application: {application}",
                f"Accession:   {accession}",
                f"Due:         {iso(notice.due_at)} ({left})",
                "",
                f"Open the queue: {queue_url}",
                "",
                "This notice carries no patient data; the request is in the queue.",
            )
        )
    )
    return message
