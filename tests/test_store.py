"""The records store behaves the same on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError

from server.audit import AuditFacts
from server.auth import Role
from server.consultations.lifecycle import State
from server.consultations.model import ClinicalContext, ConsultationRow, Urgency
from server.consultations.store import ParticipantRow, Store, open_store
from server.errors import Conflict, NotFound
from server.store.database import migrate
from server.store.migrations import MIGRATIONS


def facts(action: str = "test.action", actor: str = "coord-1") -> AuditFacts:
    return AuditFacts(actor, "coordinator", action, "consultation", "c1", "ok", "127.0.0.1", {})


def consultation(cid: str, urgency: str = "routine", due_in_minutes: int = 60) -> ConsultationRow:
    now = datetime.now(UTC)
    return ConsultationRow(
        id=cid,
        state=State.REQUESTED,
        context=ClinicalContext.model_validate(
            {"clinical_question": "Solid or cystic?", "urgency": urgency, "application": "breast"}
        ),
        created_by="coord-1",
        requested_at=now,
        due_at=now + timedelta(minutes=due_in_minutes),
        updated_at=now,
    )


@pytest.fixture
async def store(store_url: str) -> Store:
    opened = await open_store(store_url)
    yield opened
    await opened.close()


async def test_migrations_are_recorded_once_and_rerun_as_no_op(store: Store) -> None:
    assert await migrate(store.engine) == []
    async with store.engine.connect() as conn:
        versions = (await conn.execute(text("SELECT version FROM schema_migrations"))).scalars()
        assert sorted(versions) == [m.version for m in MIGRATIONS]


async def test_consultation_round_trips_with_its_context(store: Store) -> None:
    row = consultation("a" * 32, urgency="urgent")
    await store.create_consultation(row, facts("consultation.create"))
    loaded = await store.get_consultation(row.id)
    assert loaded is not None
    assert loaded.context == row.context
    assert loaded.urgency is Urgency.URGENT
    assert loaded.state is State.REQUESTED
    assert abs((loaded.due_at - row.due_at).total_seconds()) < 0.001
    assert await store.get_consultation("b" * 32) is None


async def test_list_filters_by_state_and_orders_by_due_time(store: Store) -> None:
    await store.create_consultation(consultation("1" * 32, due_in_minutes=90), facts())
    await store.create_consultation(consultation("2" * 32, due_in_minutes=10), facts())
    rows = await store.list_consultations({State.REQUESTED})
    assert [r.id for r in rows] == ["2" * 32, "1" * 32]
    assert await store.list_consultations({State.SIGNED}) == []
    assert await store.list_consultations(set()) == []


async def test_participant_needs_an_open_consultation(store: Store) -> None:
    row = consultation("c" * 32)
    await store.create_consultation(row, facts())
    person = ParticipantRow(
        "p" * 32, row.id, Role.EXPERT, "Dr Expert", "coord-1", datetime.now(UTC)
    )
    await store.add_participant(person, facts("invite.create"))
    assert [p.name for p in await store.participants(row.id)] == ["Dr Expert"]

    orphan = ParticipantRow("q" * 32, "d" * 32, Role.EXPERT, "X", "coord-1", datetime.now(UTC))
    with pytest.raises(NotFound):
        await store.add_participant(orphan, facts("invite.create"))

    async with store.transaction() as conn:
        await conn.execute(
            text("UPDATE consultations SET state = 'signed' WHERE id = :id"), {"id": row.id}
        )
    late = ParticipantRow("r" * 32, row.id, Role.OBSERVER, "Late", "coord-1", datetime.now(UTC))
    with pytest.raises(Conflict):
        await store.add_participant(late, facts("invite.create"))
    assert len(await store.participants(row.id)) == 1


async def test_an_accession_number_that_clashes_is_drawn_again(store: Store) -> None:
    first = replace(consultation("a1" * 16), accession_number="ZZZZZZZZ")
    assert (await store.create_consultation(first, facts())).accession_number == "ZZZZZZZZ"
    second = await store.create_consultation(
        replace(consultation("b2" * 16), accession_number="ZZZZZZZZ"), facts()
    )
    assert second.accession_number not in (None, "ZZZZZZZZ")
    found = await store.consultation_by_accession(second.accession_number or "")
    assert found is not None and found.id == second.id
    assert (await store.consultation_by_accession("ZZZZZZZZ")).id == first.id  # type: ignore[union-attr]


async def test_failed_write_leaves_neither_record_nor_audit_entry(store: Store) -> None:
    row = consultation("e" * 32)
    await store.create_consultation(row, facts())
    before = (await store.verify_audit()).entries
    with pytest.raises(IntegrityError):  # duplicate primary key
        await store.create_consultation(row, facts())
    check = await store.verify_audit()
    assert check.ok and check.entries == before


async def test_concurrent_audit_appends_keep_one_unbroken_chain(
    store: Store, store_url: str
) -> None:
    # A second engine on the same database, as a second node or process would have.
    other = await open_store(store_url)
    try:
        await asyncio.gather(
            *((store, other)[i % 2].record_audit(facts(f"a{i}")) for i in range(40))
        )
    finally:
        await other.close()
    check = await store.verify_audit()
    assert check.ok, check
    assert check.entries == 40
    actions = {e.facts.action for e in await store.audit_entries()}
    assert actions == {f"a{i}" for i in range(40)}


@asynccontextmanager
async def append_only_guard_dropped(store: Store) -> AsyncIterator[None]:
    """Tamper as someone with admin rights on the database would: drop the guard first."""
    drop = {
        "sqlite": ("DROP TRIGGER audit_log_no_update", "DROP TRIGGER audit_log_no_delete"),
        "postgresql": (
            "DROP TRIGGER audit_log_append_only ON audit_log",
            "DROP TRIGGER audit_log_no_truncate ON audit_log",
        ),
    }[store.dialect]
    async with store.transaction() as conn:
        for statement in drop:
            await conn.execute(text(statement))
    try:
        yield
    finally:  # the PostgreSQL database is shared by the whole run: put the guard back
        guard = next(m for m in MIGRATIONS if m.name == "audit log is append-only")
        async with store.transaction() as conn:
            for statement in guard.statements_for(store.dialect):
                await conn.execute(text(statement))


async def test_audit_log_refuses_updates_and_deletes(store: Store) -> None:
    for i in range(3):
        await store.record_audit(facts(f"step{i}"))
    tampering = [
        "UPDATE audit_log SET actor = 'mallory' WHERE seq = 2",
        "DELETE FROM audit_log WHERE seq = 3",
        "DELETE FROM audit_log",
    ]
    if store.dialect == "postgresql":
        tampering.append("TRUNCATE audit_log")
    for statement in tampering:
        with pytest.raises(DBAPIError, match="audit_log is append-only"):
            async with store.transaction() as conn:
                await conn.execute(text(statement))
    check = await store.verify_audit()
    assert check.ok and check.entries == 3
    assert [e.facts.actor for e in await store.audit_entries()] == ["coord-1"] * 3


@pytest.mark.parametrize(
    ("edit", "broken_seq", "reason"),
    [
        ("UPDATE audit_log SET actor = 'coord-2' WHERE seq = 3", 3, "entry altered"),  # 1 byte
        ("UPDATE audit_log SET outcome = 'ol' WHERE seq = 5", 5, "entry altered"),
        ("DELETE FROM audit_log WHERE seq = 4", 5, "sequence gap or reorder"),
        ("UPDATE audit_log SET detail = '{\"x\": 1}' WHERE seq = 2", 2, "entry altered"),
        ("DELETE FROM audit_log WHERE seq = 1", 2, "sequence gap or reorder"),
        (
            "UPDATE audit_log SET seq = seq + 100 WHERE seq IN (2, 3);"
            "UPDATE audit_log SET seq = 5 - (seq - 100) WHERE seq > 100",
            2,
            "previous hash mismatch",
        ),
    ],
)
async def test_audit_chain_detects_an_edited_or_removed_entry(
    store: Store, edit: str, broken_seq: int, reason: str
) -> None:
    for i in range(6):
        await store.record_audit(facts(f"step{i}"))
    assert (await store.verify_audit()).ok
    async with append_only_guard_dropped(store), store.transaction() as conn:
        for statement in edit.split(";"):
            await conn.execute(text(statement))
    check = await store.verify_audit()
    assert (check.ok, check.broken_seq, check.reason) == (False, broken_seq, reason)


async def test_removing_the_newest_entries_shows_only_against_an_exported_head(
    store: Store,
) -> None:
    for i in range(6):
        await store.record_audit(facts(f"step{i}"))
    exported = await store.verify_audit()  # what GET /api/audit/verify reports
    async with append_only_guard_dropped(store), store.transaction() as conn:
        await conn.execute(text("DELETE FROM audit_log WHERE seq > 4"))
    check = await store.verify_audit()
    # The rest of the chain is intact; only the exported head shows that the tail is gone.
    assert check.ok and check.entries == 4
    assert (check.entries, check.head_hash) != (exported.entries, exported.head_hash)


async def test_audit_chain_verifies_across_pages(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("server.consultations.store.AUDIT_PAGE_ROWS", 3)
    for i in range(10):
        await store.record_audit(facts(f"p{i}"))
    check = await store.verify_audit()
    assert check.ok and check.entries == 10
