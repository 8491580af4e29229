"""The notifier: stages notices with their events and delivers them in the background.

Two tasks per node, owned here: the sender claims due deliveries (a lease, so nodes sharing a
database never send the same one at once), sends each by e-mail or webhook, and retries a
failure with the PACS outbox's exponential back-off; the scanner looks every
PROBELINK_NOTIFY_SCAN_SECONDS for open requests coming due and stages their due-soon notice
(once per consultation, whichever node sees it first). A mail server or receiver that is down
delays notices; a request never waits for one. A notice whose request was signed or cancelled
before it went out is dropped, not sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

from server.config_notify import NotifySettings
from server.consultations.lifecycle import OPEN_STATES
from server.consultations.model import ConsultationRow
from server.consultations.store import Store
from server.experts.store import Experts
from server.metrics import Metrics
from server.notify.model import (
    Channel,
    Delivery,
    DeliveryFailed,
    DeliveryRefused,
    Event,
    Expert,
    Routing,
    deliveries,
    email_message,
    webhook_body,
)
from server.notify.smtp import Mailer
from server.notify.store import DROPPED, REFUSED, SENT, Claim, Outbox
from server.notify.webhook import Webhook
from server.store.outbox import retry_delay

log = logging.getLogger(__name__)

BATCH = 8
IDLE_POLL_SECONDS = 2.0
# Longer than a batch of slow deliveries (they run side by side, each bounded by its timeout).
LEASE_SECONDS = 300.0
# Leases given back on stop, if the store answers by then.
RELEASE_TIMEOUT_SECONDS = 1.0


class Notifier:
    """Notices of one node: what a request stages, and the two background tasks."""

    def __init__(self, settings: NotifySettings, base_url: str, store: Store, metrics: Metrics):
        self.store = store
        self.outbox = Outbox(store)
        self.metrics = metrics
        self.routing = Routing(
            email=settings.smtp_host is not None,
            webhook=settings.notify_webhook_url is not None,
            coordinators=settings.coordinator_emails,
        )
        self.mailer = Mailer(settings) if settings.smtp_host is not None else None
        self.webhook: Webhook | None = None
        if settings.notify_webhook_url is not None and settings.notify_webhook_secret is not None:
            secret = settings.notify_webhook_secret.get_secret_value().encode()
            self.webhook = Webhook(settings.notify_webhook_url, secret)
        # The queue page, without a token: the reader opens it with their own link.
        self.queue_url = f"{base_url}/queue"
        self.lead = timedelta(minutes=settings.notify_before_due_minutes)
        self.scan_seconds = float(settings.notify_scan_seconds)
        self.wake = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        # Deliveries claimed and not yet settled: given back on stop.
        self.held: set[str] = set()

    # Staging

    async def on_request(self, row: ConsultationRow) -> list[Delivery]:
        """The notices of a new request, to be staged in the transaction that stores it."""
        return deliveries(Event.REQUESTED, row, await self._experts(), self.routing)

    async def scan(self) -> int:
        """Stage the due-soon notices of open requests coming due; how many were new."""
        rows = await self.outbox.coming_due(datetime.now(UTC), self.lead)
        if not rows:
            return 0
        experts = await self._experts()
        staged = 0
        for row in rows:
            staged += await self.outbox.stage(
                deliveries(Event.DUE_SOON, row, experts, self.routing)
            )
        if staged:
            self.kick()
        return staged

    async def _experts(self) -> list[Expert]:
        return [
            Expert(e.sub, e.email, tuple(s.value for s in e.subspecialties), e.active)
            for e in await Experts(self.store).all()
        ]

    async def count_pending(self) -> None:
        """Set the backlog gauge (when /metrics is read, not on every poll of the sender)."""
        self.metrics.notifications_pending.set(await self.outbox.backlog())

    # The background tasks

    def start(self) -> None:
        if self.webhook is not None:
            self.webhook.open()
        self.tasks = [
            asyncio.create_task(self._send_forever(), name="notify-sender"),
            asyncio.create_task(self._scan_forever(), name="notify-scanner"),
        ]

    def kick(self) -> None:
        """Something new is in the outbox: look now rather than at the next poll."""
        self.wake.set()

    async def stop(self) -> None:
        """Cancel both tasks (a delivery under way is cut short and sent again later)."""
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.held:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(RELEASE_TIMEOUT_SECONDS):
                    await self.outbox.release(sorted(self.held))
            log.info("notifications cut short by the stop", extra={"notices": sorted(self.held)})
        if self.webhook is not None:
            await self.webhook.close()

    async def _scan_forever(self) -> None:
        while True:
            try:
                await self.scan()
            except Exception as exc:
                log.warning("due-soon scan failed", extra={"why": type(exc).__name__})
            await asyncio.sleep(self.scan_seconds)

    async def _send_forever(self) -> None:
        while True:
            try:
                claims = await self.outbox.claim_due(BATCH, LEASE_SECONDS)
            except Exception as exc:
                log.warning("notification outbox unreadable", extra={"why": type(exc).__name__})
                claims = []
            self.held.update(c.notice.id for c in claims)
            await asyncio.gather(*(self._settle(c) for c in claims))
            if len(claims) < BATCH:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), IDLE_POLL_SECONDS)
                self.wake.clear()

    async def _settle(self, claim: Claim) -> None:
        """Deliver one claim and record the outcome; never raises (the sender keeps going)."""
        notice = claim.notice
        outcome = "failed"
        try:
            try:
                outcome = await self._deliver(claim)
            except DeliveryRefused as exc:
                await self.outbox.done(notice.id, REFUSED, str(exc))
                outcome = REFUSED
            except DeliveryFailed as exc:
                delay = retry_delay(claim.attempts)
                log.warning(
                    "notification not delivered; will retry",
                    extra={
                        "notice": notice.id,
                        "channel": notice.channel.value,
                        "attempts": claim.attempts + 1,
                        "retry_in": round(delay, 1),
                        "why": str(exc),
                    },
                )
                await self.outbox.failed(notice.id, str(exc), delay)
        except Exception as exc:
            # The store did not answer, or a bug: the lease runs out and the notice is retried.
            log.warning(
                "notification outcome not recorded",
                extra={"notice": notice.id, "why": type(exc).__name__},
            )
        # Cut short by a stop (CancelledError), the lease stays held, for stop() to give back.
        self.held.discard(notice.id)
        self.metrics.notifications.labels(notice.channel.value, outcome).inc()
        if outcome != "failed":
            log.info(
                "notification settled",
                extra={
                    "notice": notice.id,
                    "event": notice.event.value,
                    "channel": notice.channel.value,
                    "outcome": outcome,
                },
            )

    async def _deliver(self, claim: Claim) -> str:
        """Send the notice (or drop it); the outcome, recorded. Raises `DeliveryFailed`."""
        notice = claim.notice
        if claim.state not in OPEN_STATES:
            await self.outbox.done(notice.id, DROPPED, f"the consultation is {claim.state}")
            return DROPPED
        now = datetime.now(UTC)
        if notice.channel is Channel.EMAIL:
            if self.mailer is None:
                raise DeliveryFailed("e-mail is not configured on this node")
            message = email_message(notice, self.mailer.sender, self.queue_url, now)
            await self.mailer.send(message, notice.recipient)
        else:
            if self.webhook is None:
                raise DeliveryFailed("the webhook is not configured on this node")
            await self.webhook.post(webhook_body(notice, self.queue_url, now))
        await self.outbox.done(notice.id, SENT)
        return SENT
