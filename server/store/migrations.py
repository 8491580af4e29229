"""Versioned schema migrations, written in SQL that SQLite and PostgreSQL both accept.

Where the dialects differ (triggers), a migration adds statements for each.
A migration is applied once, in order, inside a transaction, and recorded in
`schema_migrations`. Never edit a migration that has shipped: add the next one.
Times are stored as ISO-8601 UTC text (they sort as they read); JSON as text.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    """One schema step."""

    version: int
    name: str
    # SQL both dialects accept, run first.
    statements: tuple[str, ...]
    # Then the statements of the store's dialect only.
    sqlite: tuple[str, ...] = ()
    postgresql: tuple[str, ...] = ()

    def statements_for(self, dialect: str) -> tuple[str, ...]:
        """Everything to run on a store of `dialect` ("sqlite" or "postgresql")."""
        only = {"sqlite": self.sqlite, "postgresql": self.postgresql}[dialect]
        return self.statements + only


APPEND_ONLY_MESSAGE = "audit_log is append-only"


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
    Migration(
        3,
        "audit log is append-only",
        (),
        # The hash chain detects tampering; these refuse it for anyone short of dropping them.
        sqlite=(
            f"""CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
            BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END""",
            f"""CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
            BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END""",
        ),
        postgresql=(
            f"""CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '{APPEND_ONLY_MESSAGE}';
            END
            $$""",
            """CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
            FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()""",
            """CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
            FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()""",
        ),
    ),
    Migration(
        4,
        "archived DICOM objects and the PACS outbox",
        (
            # What was on screen (guidance) and how the key image was made (size, frames, source).
            "ALTER TABLE key_images ADD COLUMN guidance TEXT NOT NULL DEFAULT 'null'",
            "ALTER TABLE key_images ADD COLUMN detail TEXT NOT NULL DEFAULT '{}'",
            # Every DICOM object in the archive: key images, their presentation states, the
            # key object selections, imported priors. The file's name is its SHA-256.
            """CREATE TABLE dicom_objects (
                sop_instance_uid TEXT PRIMARY KEY,
                consultation_id TEXT NOT NULL REFERENCES consultations (id),
                key_image_id TEXT REFERENCES key_images (id),
                kind TEXT NOT NULL,
                path TEXT NOT NULL,
                sha256 TEXT NOT NULL,
                size BIGINT NOT NULL,
                created_at TEXT NOT NULL
            )""",
            "CREATE INDEX dicom_objects_consultation ON dicom_objects (consultation_id)",
            # Objects to push to the PACS; a row leaves 'pending' only when the PACS has it.
            """CREATE TABLE pacs_outbox (
                sop_instance_uid TEXT PRIMARY KEY REFERENCES dicom_objects (sop_instance_uid),
                consultation_id TEXT NOT NULL REFERENCES consultations (id),
                state TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                next_attempt_at TEXT NOT NULL,
                claimed_until TEXT,
                last_error TEXT,
                updated_at TEXT NOT NULL
            )""",
            "CREATE INDEX pacs_outbox_due ON pacs_outbox (state, next_attempt_at)",
        ),
    ),
    Migration(
        5,
        "experts' credentials and consultation assignment",
        (
            # Subspecialties: a JSON list of application names (consultations.model.Application).
            """CREATE TABLE experts (
                sub TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                subspecialties TEXT NOT NULL,
                active BOOLEAN NOT NULL DEFAULT TRUE,
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL
            )""",
            # The expert (their sub) who has accepted or been assigned the consultation.
            "ALTER TABLE consultations ADD COLUMN assigned_expert TEXT REFERENCES experts (sub)",
            "CREATE INDEX consultations_assigned_expert ON consultations (assigned_expert)",
        ),
    ),
    Migration(
        6,
        "cancellation, and the expert a join link was accepted by",
        (
            "ALTER TABLE consultations ADD COLUMN cancelled_at TEXT",
            # A `CancelReason` value; the note is free text kept with the record only.
            "ALTER TABLE consultations ADD COLUMN cancel_reason TEXT",
            "ALTER TABLE consultations ADD COLUMN cancel_note TEXT",
            # The expert whose `accept` made this participant: the link lasts while they hold
            # the assignment (NULL for a coordinator's invite).
            "ALTER TABLE participants ADD COLUMN expert_sub TEXT",
            "CREATE INDEX participants_expert ON participants (expert_sub)",
            # Until now `accept` stored the expert as the inviter (a coordinator invites under
            # their own sub, which is not an expert's).
            """UPDATE participants SET expert_sub = invited_by
            WHERE role = 'expert' AND invited_by IN (SELECT sub FROM experts)""",
        ),
    ),
    Migration(
        7,
        "accession numbers: the short code a scanner's images are sent with",
        (
            "ALTER TABLE consultations ADD COLUMN accession_number TEXT",
            # Consultations made before: ten hex digits of their id (new codes have eight
            # characters of another alphabet, so the two never clash).
            """UPDATE consultations SET accession_number = upper(substr(id, 1, 10))
            WHERE accession_number IS NULL""",
            "CREATE UNIQUE INDEX consultations_accession ON consultations (accession_number)",
        ),
    ),
    Migration(
        8,
        "measurements on key images",
        (
            # JSON: the calipers with their lengths in mm, the calibration, the presentation
            # state that draws them, who saved them and when (server/imaging/measurements.py).
            "ALTER TABLE key_images ADD COLUMN measurements TEXT",
        ),
    ),
    Migration(
        9,
        "device profiles made over the API, versioned",
        (
            # One row per version; the newest version of a device_key (manufacturer and model
            # as compared, width, height) is in force. Rows are never changed or deleted.
            """CREATE TABLE device_profiles (
                id TEXT PRIMARY KEY,
                device_key TEXT NOT NULL,
                version INTEGER NOT NULL,
                manufacturer TEXT NOT NULL,
                model TEXT NOT NULL,
                width INTEGER NOT NULL,
                height INTEGER NOT NULL,
                mask TEXT NOT NULL,
                note TEXT,
                created_by TEXT NOT NULL,
                created_at TEXT NOT NULL,
                UNIQUE (device_key, version)
            )""",
        ),
    ),
    Migration(
        10,
        "a device profile's picture region",
        (
            # JSON [x, y, width, height]: the ultrasound picture, left out of the text check.
            "ALTER TABLE device_profiles ADD COLUMN picture TEXT",
        ),
    ),
    Migration(
        11,
        "notifications: experts' e-mail addresses and the notification outbox",
        (
            # Where notifications reach an expert (NULL: not told by e-mail).
            "ALTER TABLE experts ADD COLUMN email TEXT",
            # One row per notice, channel and recipient (an address; '' for the webhook); it
            # leaves 'pending' when sent, dropped (the request closed first) or refused.
            """CREATE TABLE notify_outbox (
                id TEXT PRIMARY KEY,
                consultation_id TEXT NOT NULL REFERENCES consultations (id),
                event TEXT NOT NULL,
                channel TEXT NOT NULL,
                recipient TEXT NOT NULL,
                state TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                next_attempt_at TEXT NOT NULL,
                claimed_until TEXT,
                last_error TEXT,
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL,
                UNIQUE (consultation_id, event, channel, recipient)
            )""",
            "CREATE INDEX notify_outbox_due ON notify_outbox (state, next_attempt_at)",
        ),
    ),
    Migration(
        12,
        "outcomes: what happened after a second opinion, versioned",
        (
            # One row per recording (server/outcomes/): the newest version is in force; rows are
            # never changed or deleted. body: JSON, the outcome as posted.
            """CREATE TABLE outcomes (
                id TEXT PRIMARY KEY,
                consultation_id TEXT NOT NULL REFERENCES consultations (id),
                version INTEGER NOT NULL,
                body TEXT NOT NULL,
                recorded_by TEXT NOT NULL,
                recorded_at TEXT NOT NULL,
                UNIQUE (consultation_id, version)
            )""",
            # The ledger counts signed reports over a period.
            "CREATE INDEX consultations_signed ON consultations (signed_at)",
        ),
    ),
)
