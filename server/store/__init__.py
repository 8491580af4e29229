"""The records store: one code path for SQLite (embedded) and PostgreSQL (shared)."""

from server.store.database import open_store
from server.store.records import ConsultationRow, ParticipantRow, Store

__all__ = ["ConsultationRow", "ParticipantRow", "Store", "open_store"]
