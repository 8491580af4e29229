"""The records store behaves the same on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from server.audit import AuditFacts
from server.auth import Role
from server.consultations import ClinicalContext, State, Urgency
from server.errors import Conflict, NotFound
from server.store import ConsultationRow, ParticipantRow, Store, open_store
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


@pytest.mark.parametrize(
    "edit",
    [
        "UPDATE audit_log SET actor = 'coord-2' WHERE seq = 3",  # one byte: 1 -> 2
        "UPDATE audit_log SET outcome = 'ol' WHERE seq = 5",
        "DELETE FROM audit_log WHERE seq = 4",
        "UPDATE audit_log SET detail = '{\"x\": 1}' WHERE seq = 2",
    ],
)
async def test_audit_chain_detects_an_edited_or_removed_entry(store: Store, edit: str) -> None:
    for i in range(6):
        await store.record_audit(facts(f"step{i}"))
    assert (await store.verify_audit()).ok
    async with store.transaction() as conn:
        await conn.execute(text(edit))
    check = await store.verify_audit()
    assert not check.ok
    assert check.broken_seq in {2, 3, 5}
    assert check.reason


async def test_audit_chain_verifies_across_pages(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("server.store.records.AUDIT_PAGE_ROWS", 3)
    for i in range(10):
        await store.record_audit(facts(f"p{i}"))
    check = await store.verify_audit()
    assert check.ok and check.entries == 10
