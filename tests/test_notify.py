"""Experts and the coordinator are told of new and soon-due requests by e-mail and a signed
webhook; an outage delays the notices, never the request.

A real SMTP server (aiosmtpd) and a real HTTP receiver (aiohttp) run in the test on loopback;
the app sends to them through its durable outbox, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiosmtpd.smtp import SMTP, Envelope, Session
from servers import Server, cli_env
from sqlalchemy import text

from server.app import create_app
from server.config import Settings, load_settings
from server.consultations.lifecycle import State
from server.consultations.model import ClinicalContext, ConsultationRow, Kind, Urgency
from server.errors import ConfigError
from server.keyring import load_or_create
from server.notify.model import Event, Expert, Routing, deliveries, time_left
from server.web.keys import NOTIFIER, STORE

Client = TestClient[Any, Any]
Headers = dict[str, str]

both_backends = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)

SECRET = "webhook-secret-shared-with-the-pager-0123456789"
COORDINATOR = "coordinator@hospital.example"
SENDER = "probelink@hospital.example"
REFUSED = "gone@hospital.example"
WAIT_SECONDS = 60.0
POLL_SECONDS = 0.1

# Clinical text and identities of the request: none of it may leave in a notice.
PATIENT_REF = "PSEUDO-7731-QX"
QUESTION = "Irregular hypoechoic mass at two o'clock, suspicious margins?"
FIRST_READ = "Bedside read BI-RADS 4, spiculated"
OBJECTIVE = "Characterise the palpable lump in the upper outer quadrant"
REASON = "Bedside request sent before the transducer details were known"
DEVICE_MODEL = "Vivid-Q-Phantom"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Mailbox:
    """A real SMTP server on loopback keeping what it receives; stopped and started at will."""

    port: int
    # (recipients, the message's bytes as received)
    messages: list[tuple[list[str], bytes]] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address == REFUSED:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.messages.append((list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: SMTP(self, hostname="mail.test"), "127.0.0.1", self.port
        )

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    def to(self, address: str) -> list[bytes]:
        wanted = address.lower()
        return [m for rcpts, m in self.messages if wanted in (r.lower() for r in rcpts)]


@dataclass
class Receiver:
    """A real HTTP server on loopback that takes the webhook's POSTs."""

    port: int
    # (headers, body bytes as received)
    posts: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    runner: web.AppRunner | None = None

    async def _take(self, request: web.Request) -> web.Response:
        self.posts.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._take)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.posts]


@pytest.fixture
async def mailbox() -> AsyncIterator[Mailbox]:
    box = Mailbox(free_port())
    yield box
    await box.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = Receiver(free_port())
    yield hook
    await hook.stop()


@pytest.fixture
def settings(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    backend: str,
    mailbox: Mailbox,
    receiver: Receiver,
) -> Settings:
    """Notifications to the test's mail server and receiver; routine requests due in 2 days,
    emergencies in 2 minutes, reminders 5 minutes before the due time."""
    load_or_create(tmp_path / "var")
    extra: dict[str, Any] = {}
    if backend == "postgresql":
        extra["database_url"] = request.getfixturevalue("postgres_url")
    return load_settings(
        data_dir=tmp_path / "var",
        smtp_host="127.0.0.1",
        smtp_port=mailbox.port,
        smtp_tls="none",
        smtp_from=SENDER,
        notify_coordinator_emails=COORDINATOR,
        notify_webhook_url=receiver.url,
        notify_webhook_secret=SECRET,
        notify_before_due_minutes=5,
        notify_scan_seconds=1,
        due_minutes_emergency=2,
        **extra,
    )


async def eventually(check: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    """Poll `check` until it holds (bounded; no timing is asserted)."""
    for _ in range(int(WAIT_SECONDS / POLL_SECONDS)):
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        await asyncio.sleep(POLL_SECONDS)
    raise AssertionError(f"not reached: {what}")


async def register(client: Client, coordinator: Headers, sub: str, **body: Any) -> None:
    response = await client.put(f"/api/experts/{sub}", json=body, headers=coordinator)
    assert response.status == 200, await response.text()


async def experts(client: Client, coordinator: Headers, tag: str) -> dict[str, str]:
    """Breast readers (one with an address, one who is also the coordinator, one refused by the
    mail server, one without an address), a DVT reader and an inactive breast reader."""
    people = {
        "breast": f"breast-{tag}@hospital.example",
        "dvt": f"dvt-{tag}@hospital.example",
        "inactive": f"inactive-{tag}@hospital.example",
    }
    await register(
        client,
        coordinator,
        f"dr-breast-{tag}",
        name="Dr Mammary",
        subspecialties=["breast"],
        email=people["breast"],
    )
    await register(
        client,
        coordinator,
        f"dr-both-{tag}",
        name="Dr Twofold",
        subspecialties=["dvt", "breast"],
        email=COORDINATOR.upper(),
    )
    await register(
        client,
        coordinator,
        f"dr-gone-{tag}",
        name="Dr Gone",
        subspecialties=["breast"],
        email=REFUSED,
    )
    await register(
        client, coordinator, f"dr-quiet-{tag}", name="Dr Quiet", subspecialties=["breast"]
    )
    await register(
        client,
        coordinator,
        f"dr-vein-{tag}",
        name="Dr Venous",
        subspecialties=["dvt"],
        email=people["dvt"],
    )
    await register(
        client,
        coordinator,
        f"dr-off-{tag}",
        name="Dr Offduty",
        subspecialties=["breast"],
        email=people["inactive"],
        active=False,
    )
    return people


async def send_request(
    client: Client, coordinator: Headers, urgency: str = "urgent"
) -> dict[str, Any]:
    body = {
        "clinical_question": QUESTION,
        "urgency": urgency,
        "application": "breast",
        "patient_ref": PATIENT_REF,
        "first_read": FIRST_READ,
        "exam_objective": OBJECTIVE,
        "incomplete_reason": REASON,
        "device": {"manufacturer": "Phantom Works", "model": DEVICE_MODEL},
    }
    response = await client.post("/api/consultations", json=body, headers=coordinator)
    assert response.status == 201, await response.text()
    created: dict[str, Any] = await response.json()
    return created


async def outbox(client: Client, consultation_id: str) -> list[dict[str, Any]]:
    async with client.app[STORE].engine.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT event, channel, recipient, state, attempts FROM notify_outbox"
                " WHERE consultation_id = :cid ORDER BY event, channel, recipient"
            ),
            {"cid": consultation_id},
        )
        return [dict(m) for m in result.mappings()]


async def settled(client: Client, consultation_id: str) -> bool:
    rows = await outbox(client, consultation_id)
    return bool(rows) and all(r["state"] != "pending" for r in rows)


def assert_no_clinical_text(data: bytes) -> None:
    for secret in (PATIENT_REF, QUESTION, FIRST_READ, OBJECTIVE, REASON, DEVICE_MODEL):
        assert secret.encode() not in data, secret
    for name in ("Mammary", "Twofold", "Venous", "Quiet", "Gone"):
        assert name.encode() not in data, name


def verify(headers: dict[str, str], body: bytes) -> None:
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Probelink-Signature"], expected)


@both_backends
async def test_a_request_tells_its_experts_and_the_coordinator_without_clinical_text(
    client: Client,
    coordinator: Headers,
    mailbox: Mailbox,
    receiver: Receiver,
    settings: Settings,
) -> None:
    await mailbox.start()
    await receiver.start()
    people = await experts(client, coordinator, "a")
    created = await send_request(client, coordinator)
    cid, accession = created["id"], created["accession_number"]

    await eventually(lambda: settled(client, cid), "every notice of the request settled")
    # The coordinator, also a breast reader, gets one e-mail.
    told = {people["breast"], COORDINATOR.upper()}
    for address in told:
        (message,) = mailbox.to(address)  # exactly one each
        assert accession.encode() in message
        assert f"{settings.base_url}/queue".encode() in message
        assert b"New request" in message and b"urgent" in message and b"breast" in message
        assert b"token" not in message.lower()
        assert_no_clinical_text(message)
    # Not credentialed, inactive, refused or without an address: not told.
    assert not mailbox.to(people["dvt"]) and not mailbox.to(people["inactive"])
    assert len(mailbox.messages) == len(told)
    rows = await outbox(client, cid)
    assert {r["recipient"]: r["state"] for r in rows if r["channel"] == "email"} == {
        **dict.fromkeys(told, "sent"),
        REFUSED: "refused",
    }

    ((headers, body),) = receiver.posts
    verify(headers, body)
    assert_no_clinical_text(body)
    event = json.loads(body)
    assert event["event"] == "consultation.requested"
    assert event["accession_number"] == accession
    assert (event["urgency"], event["application"]) == ("urgent", "breast")
    assert event["queue_url"] == f"{settings.base_url}/queue"
    assert event["due_at"] == created["due_at"]
    assert 0 < event["seconds_left"] <= 240 * 60
    # A forged body does not verify with the secret.
    with pytest.raises(AssertionError):
        verify(headers, body.replace(b"urgent", b"routine"))

    metrics = await (await client.get("/metrics")).text()
    assert 'probelink_notifications_total{channel="webhook",outcome="sent"} 1.0' in metrics
    assert 'probelink_notifications_total{channel="email",outcome="refused"} 1.0' in metrics


@both_backends
async def test_a_request_close_to_its_due_time_gets_one_due_soon_notice(
    client: Client,
    coordinator: Headers,
    mailbox: Mailbox,
    receiver: Receiver,
) -> None:
    await mailbox.start()
    await receiver.start()
    people = await experts(client, coordinator, "b")
    emergency = await send_request(client, coordinator, urgency="emergency")  # due in 2 min
    routine = await send_request(client, coordinator, urgency="routine")  # due in 2 days

    def due_soon() -> list[dict[str, Any]]:
        return [e for e in receiver.events() if e["event"] == "consultation.due_soon"]

    await eventually(lambda: len(due_soon()) == 1, "the due-soon webhook")
    await eventually(lambda: settled(client, emergency["id"]), "the due-soon notices settled")
    # However often any node looks again, it is not staged twice (nodes race on the same rows).
    notifier = client.app[NOTIFIER]
    assert await asyncio.gather(notifier.scan(), notifier.scan(), notifier.scan()) == [0, 0, 0]
    await eventually(lambda: settled(client, routine["id"]), "the routine request's notices")

    (event,) = due_soon()
    assert event["accession_number"] == emergency["accession_number"]
    assert event["urgency"] == "emergency"
    assert 0 < event["seconds_left"] <= 120
    for address in (people["breast"], COORDINATOR):
        reminders = [m for m in mailbox.to(address) if b"Request due soon" in m]
        assert len(reminders) == 1
        assert emergency["accession_number"].encode() in reminders[0]
        assert_no_clinical_text(reminders[0])
    rows = await outbox(client, routine["id"])
    assert {r["event"] for r in rows} == {"consultation.requested"}


@both_backends
async def test_an_outage_delays_notices_never_the_request(
    client: Client,
    coordinator: Headers,
    mailbox: Mailbox,
    receiver: Receiver,
) -> None:
    # Neither the mail server nor the receiver is listening.
    await register(
        client,
        coordinator,
        "dr-outage",
        name="Dr Mammary",
        subspecialties=["breast"],
        email="outage@hospital.example",
    )
    created = await send_request(client, coordinator)
    cancelled = await send_request(client, coordinator)
    cid = created["id"]

    async def tried_and_failed() -> bool:
        rows = await outbox(client, cid) + await outbox(client, cancelled["id"])
        return len(rows) == 6 and all(r["state"] == "pending" and r["attempts"] >= 1 for r in rows)

    await eventually(tried_and_failed, "every delivery tried and kept for a retry")
    assert mailbox.messages == [] and receiver.posts == []
    assert "probelink_notifications_pending 6.0" in await (await client.get("/metrics")).text()
    response = await client.post(
        f"/api/consultations/{cancelled['id']}/cancel",
        json={"reason": "duplicate"},
        headers=coordinator,
    )
    assert response.status == 200

    await mailbox.start()
    await receiver.start()
    await eventually(lambda: settled(client, cid), "the request's notices sent once back")
    await eventually(lambda: settled(client, cancelled["id"]), "the cancelled one's settled")
    assert [json.loads(b)["accession_number"] for _, b in receiver.posts] == [
        created["accession_number"]
    ]
    assert len(mailbox.to("outage@hospital.example")) == 1
    assert len(mailbox.to(COORDINATOR)) == 1
    assert {r["state"] for r in await outbox(client, cid)} == {"sent"}
    assert {r["state"] for r in await outbox(client, cancelled["id"])} == {"dropped"}
    verify(*receiver.posts[0])
    assert "probelink_notifications_pending 0.0" in await (await client.get("/metrics")).text()


@pytest.mark.parametrize(
    ("settings_given", "named"),
    [
        ({"notify_webhook_url": "https://pager.example/hook"}, "PROBELINK_NOTIFY_WEBHOOK_SECRET"),
        ({"notify_webhook_secret": SECRET}, "PROBELINK_NOTIFY_WEBHOOK_URL"),
        (
            {"notify_webhook_url": "ftp://pager.example/hook", "notify_webhook_secret": SECRET},
            "PROBELINK_NOTIFY_WEBHOOK_URL",
        ),
        (
            {"notify_webhook_url": "https://pager.example/hook", "notify_webhook_secret": "short"},
            "PROBELINK_NOTIFY_WEBHOOK_SECRET",
        ),
        ({"smtp_host": "mail.example"}, "PROBELINK_SMTP_FROM"),
        ({"notify_coordinator_emails": COORDINATOR}, "PROBELINK_SMTP_HOST"),
        (
            {"smtp_host": "mail.example", "smtp_from": SENDER, "notify_coordinator_emails": "x, y"},
            "PROBELINK_NOTIFY_COORDINATOR_EMAILS",
        ),
        (
            {"smtp_host": "mail.example", "smtp_from": "Probelink <p@hospital.example>"},
            "PROBELINK_SMTP_FROM",
        ),
        (
            {"smtp_host": "mail.example", "smtp_from": SENDER, "smtp_username": "probelink"},
            "PROBELINK_SMTP_PASSWORD",
        ),
        (
            {
                "smtp_host": "mail.example",
                "smtp_from": SENDER,
                "smtp_tls": "none",
                "smtp_username": "probelink",
                "smtp_password": "pw",
            },
            "PROBELINK_SMTP_TLS",
        ),
        (
            {"smtp_host": "mail.example", "smtp_from": SENDER, "smtp_tls": "ssl"},
            "PROBELINK_SMTP_TLS",
        ),
        ({"notify_before_due_minutes": 0}, "PROBELINK_NOTIFY_BEFORE_DUE_MINUTES"),
    ],
)
def test_bad_notification_settings_stop_start_up_naming_the_variable(
    tmp_path: Path, settings_given: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(data_dir=tmp_path / "var", **settings_given)
    assert named in str(refused.value)
    assert SECRET not in str(refused.value) and "pw" not in str(refused.value).split()


def test_settings_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROBELINK_NOTIFY_WEBHOOK_URL", "https://pager.example/hook")
    with pytest.raises(ConfigError, match="PROBELINK_NOTIFY_WEBHOOK_SECRET is not"):
        load_settings(data_dir=tmp_path / "var")
    monkeypatch.setenv("PROBELINK_NOTIFY_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("PROBELINK_SMTP_HOST", "mail.example")
    monkeypatch.setenv("PROBELINK_SMTP_FROM", SENDER)
    monkeypatch.setenv("PROBELINK_NOTIFY_COORDINATOR_EMAILS", f"{COORDINATOR}, B@hospital.example")
    loaded = load_settings(data_dir=tmp_path / "var")
    assert loaded.notify_enabled
    assert loaded.coordinator_emails == (COORDINATOR, "B@hospital.example")
    assert loaded.smtp_port_in_use == 587


async def test_nothing_configured_is_off(
    aiohttp_client: Callable[..., Any], tmp_path: Path, coordinator: Headers
) -> None:
    """The embedded default starts without notifications and stages nothing."""
    load_or_create(tmp_path / "var")
    plain = load_settings(data_dir=tmp_path / "var")
    assert not plain.notify_enabled
    client = await aiohttp_client(create_app(plain))
    assert NOTIFIER not in client.app
    created = await send_request(client, coordinator)
    assert await outbox(client, created["id"]) == []


async def test_an_expert_address_is_checked(
    aiohttp_client: Callable[..., Any], tmp_path: Path, coordinator: Headers
) -> None:
    load_or_create(tmp_path / "var")
    client = await aiohttp_client(create_app(load_settings(data_dir=tmp_path / "var")))
    for bad in ("Dr Lee <lee@hospital.example>", "lee@localhost", "lee@hospital.example\r\nBcc: x"):
        response = await client.put(
            "/api/experts/dr-lee",
            json={"name": "Dr Lee", "subspecialties": ["breast"], "email": bad},
            headers=coordinator,
        )
        assert response.status == 400, bad
        error = (await response.json())["error"]
        assert error["field"] == "email"
    response = await client.get("/api/experts", headers=coordinator)
    assert (await response.json())["experts"] == []
    await register(
        client,
        coordinator,
        "dr-lee",
        name="Dr Lee",
        subspecialties=["breast"],
        email=" lee@hospital.example ",
    )
    (expert,) = (await (await client.get("/api/experts", headers=coordinator)).json())["experts"]
    assert expert["email"] == "lee@hospital.example"


def test_time_left_reads_as_a_person_would() -> None:
    due = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert time_left(due, due - timedelta(minutes=125, seconds=30)) == "2 h 5 min left"
    assert time_left(due, due - timedelta(seconds=59)) == "0 min left"
    assert time_left(due, due + timedelta(minutes=3)) == "overdue by 3 min"
    assert time_left(due, due - timedelta(days=2, hours=3, minutes=7)) == "2 d 3 h left"


def test_the_command_line_registers_an_experts_address(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "var")
    with Server(env):
        pass  # creates the data directory and its records
    add = [sys.executable, "-m", "server", "expert", "add", "--sub", "dr-lee", "--name", "Dr Lee"]
    add += ["--subspecialty", "breast", "--email"]
    refused = subprocess.run([*add, "lee"], env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "email" in refused.stderr
    assert "Traceback" not in refused.stderr
    added = subprocess.run(
        [*add, "lee@hospital.example"], env=env, capture_output=True, text=True, timeout=60
    )
    assert added.returncode == 0, added.stderr
    with Server(env) as server:
        token = subprocess.run(
            [sys.executable, "-m", "server", "token", "--role", "coordinator", "--sub", "desk"],
            env=env, capture_output=True, text=True, timeout=60, check=True,
        ).stdout.strip()  # fmt: skip
        request = urllib.request.Request(
            f"{server.url}/api/experts", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            (expert,) = json.load(response)["experts"]
    assert expert["email"] == "lee@hospital.example"


async def test_a_stop_in_the_middle_of_a_delivery_gives_its_lease_back(
    client: Client, coordinator: Headers, mailbox: Mailbox, receiver: Receiver
) -> None:
    """A mail server and a receiver that take the connection and never answer: the stop cuts
    the deliveries short, and the notices are free for any node at once, not after the lease."""
    held: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    servers = [
        await asyncio.start_server(silent, "127.0.0.1", port)
        for port in (mailbox.port, receiver.port)
    ]
    try:
        created = await send_request(client, coordinator)

        async def claimed() -> bool:
            async with client.app[STORE].engine.connect() as conn:
                leased = await conn.scalar(
                    text(
                        "SELECT COUNT(*) FROM notify_outbox WHERE consultation_id = :cid"
                        " AND claimed_until IS NOT NULL"
                    ),
                    {"cid": created["id"]},
                )
            return leased == 2 and len(held) == 2

        await eventually(claimed, "both deliveries claimed and waiting on a silent server")
        await client.app[NOTIFIER].stop()
        rows = await outbox(client, created["id"])
        assert [(r["state"], r["attempts"]) for r in rows] == [("pending", 0)] * 2
        async with client.app[STORE].engine.connect() as conn:
            leased = await conn.scalar(
                text("SELECT COUNT(*) FROM notify_outbox WHERE claimed_until IS NOT NULL")
            )
        assert leased == 0
    finally:
        for writer in held:
            writer.close()
        for server in servers:
            server.close()
            await server.wait_closed()


def test_who_is_told_follows_credentials_assignment_and_kind() -> None:
    """The routing rule alone: no server."""
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    context = ClinicalContext(clinical_question="q", urgency=Urgency.URGENT, application="dvt")
    row = ConsultationRow("c1", State.LIVE, context, "desk", now, now + timedelta(hours=4), now)
    people = [
        Expert("vein", "vein@hospital.example", ("dvt",), True),
        Expert("both", "Desk@Hospital.example", ("dvt", "breast"), True),
        Expert("breast", "breast@hospital.example", ("breast",), True),
        Expert("off", "off@hospital.example", ("dvt",), False),
        Expert("silent", None, ("dvt",), True),
    ]
    routing = Routing(email=True, webhook=True, coordinators=("desk@hospital.example",))

    def told(event: Event, row: ConsultationRow, routing: Routing = routing) -> list[str]:
        return sorted(f"{d.channel}:{d.recipient}" for d in deliveries(event, row, people, routing))

    everyone = ["email:Desk@Hospital.example", "email:vein@hospital.example", "webhook:"]
    assert told(Event.REQUESTED, row) == everyone
    assert told(Event.DUE_SOON, row) == everyone
    held = replace(row, assigned_expert="vein")
    # Once an expert holds it, the reminder is theirs (and the coordinators').
    assert told(Event.REQUESTED, held) == everyone
    assert told(Event.DUE_SOON, held) == [
        "email:desk@hospital.example",
        "email:vein@hospital.example",
        "webhook:",
    ]
    assert told(Event.REQUESTED, row, Routing(False, True, ())) == ["webhook:"]
    setup = replace(row, context=context.model_copy(update={"kind": Kind.DEVICE_SETUP}))
    assert told(Event.REQUESTED, setup) == []


@both_backends
async def test_two_nodes_on_one_database_send_each_notice_once(
    aiohttp_client: Callable[..., Any],
    client: Client,
    coordinator: Headers,
    mailbox: Mailbox,
    receiver: Receiver,
    settings: Settings,
) -> None:
    nodes = (client, await aiohttp_client(create_app(settings)))  # a second node, same records
    await register(
        client, coordinator, "dr-nodes", name="Dr Mammary", subspecialties=["breast"],
        email="nodes@hospital.example",
    )  # fmt: skip
    # Staged while nothing listens: the senders of both nodes find them due, again and again.
    created = [await send_request(node, coordinator) for node in nodes + nodes]
    await mailbox.start()
    await receiver.start()
    for c in created:
        await eventually(lambda c=c: settled(client, c["id"]), "every notice settled")

    accessions = sorted(c["accession_number"] for c in created)
    assert sorted(e["accession_number"] for e in receiver.events()) == accessions
    for address in ("nodes@hospital.example", COORDINATOR):
        assert len(mailbox.to(address)) == len(created)
    # Between them, the nodes sent each delivery once.
    sent = 0.0
    for node in nodes:
        for line in (await (await node.get("/metrics")).text()).splitlines():
            if line.startswith("probelink_notifications_total{") and 'outcome="sent"' in line:
                sent += float(line.rsplit(" ", 1)[1])
    assert sent == len(created) * 3  # two e-mails and the webhook each
