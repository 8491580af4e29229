"""Versioned schema migrations, written in SQL that SQLite and PostgreSQL both accept.

A migration is applied once, in order, inside a transaction, and recorded in
`schema_migrations`. Never edit a migration that has shipped: add the next one.
Times are stored as ISO-8601 UTC text (they sort as they read); JSON as text.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "records and audit log",
        (
            """CREATE TABLE consultations (
                id TEXT PRIMARY KEY,
                state TEXT NOT NULL,
                urgency TEXT NOT NULL,
                application TEXT,
                context TEXT NOT NULL,
                created_by TEXT NOT NULL,
                requested_at TEXT NOT NULL,
                due_at TEXT NOT NULL,
                updated_at TEXT NOT NULL,
                first_joined_at TEXT,
                reported_at TEXT,
                signed_at TEXT
            )""",
            "CREATE INDEX consultations_queue ON consultations (state, due_at)",
            """CREATE TABLE participants (
                id TEXT PRIMARY KEY,
                consultation_id TEXT NOT NULL REFERENCES consultations (id),
                role TEXT NOT NULL,
                name TEXT NOT NULL,
                invited_by TEXT NOT NULL,
                invited_at TEXT NOT NULL,
                joined_at TEXT,
                left_at TEXT
            )""",
            "CREATE INDEX participants_consultation ON participants (consultation_id)",
            """CREATE TABLE marks (
                id TEXT PRIMARY KEY,
                consultation_id TEXT NOT NULL REFERENCES consultations (id),
                seq BIGINT NOT NULL,
                author TEXT NOT NULL,
                kind TEXT NOT NULL,
                body TEXT NOT NULL,
                media_ts BIGINT,
                created_at TEXT NOT NULL,
                cleared_at TEXT,
                UNIQUE (consultation_id, seq)
            )""",
            """CREATE TABLE key_images (
                id TEXT PRIMARY KEY,
                consultation_id TEXT NOT NULL REFERENCES consultations (id),
                kind TEXT NOT NULL,
                sop_instance_uid TEXT NOT NULL UNIQUE,
                path TEXT NOT NULL,
                sha256 TEXT NOT NULL,
                media_ts BIGINT,
                marks TEXT NOT NULL,
                created_by TEXT NOT NULL,
                created_at TEXT NOT NULL,
                pacs_state TEXT NOT NULL
            )""",
            "CREATE INDEX key_images_consultation ON key_images (consultation_id)",
            """CREATE TABLE reports (
                id TEXT PRIMARY KEY,
                consultation_id TEXT NOT NULL REFERENCES consultations (id),
                version INTEGER NOT NULL,
                author TEXT NOT NULL,
                body TEXT NOT NULL,
                created_at TEXT NOT NULL,
                signed_at TEXT,
                signed_by TEXT,
                UNIQUE (consultation_id, version)
            )""",
            """CREATE TABLE audit_log (
                seq BIGINT PRIMARY KEY,
                at TEXT NOT NULL,
                actor TEXT NOT NULL,
                role TEXT NOT NULL,
                action TEXT NOT NULL,
                object_type TEXT NOT NULL,
                object_id TEXT NOT NULL,
                outcome TEXT NOT NULL,
                source TEXT NOT NULL,
                detail TEXT NOT NULL,
                prev_hash TEXT NOT NULL,
                hash TEXT NOT NULL
            )""",
        ),
    ),
    Migration(
        2,
        "live room event log",
        (
            "ALTER TABLE consultations ADD COLUMN last_seq BIGINT NOT NULL DEFAULT 0",
            """CREATE TABLE room_events (
                consultation_id TEXT NOT NULL REFERENCES consultations (id),
                seq BIGINT NOT NULL,
                type TEXT NOT NULL,
                author TEXT NOT NULL,
                body TEXT NOT NULL,
                created_at TEXT NOT NULL,
                PRIMARY KEY (consultation_id, seq)
            )""",
        ),
    ),
)
