"""The records store: one code path for SQLite (embedded) and PostgreSQL (shared)."""

from server.store.database import open_store
from server.store.experts import ExpertRow, Experts
from server.store.records import ParticipantRow, Store

__all__ = ["ExpertRow", "Experts", "ParticipantRow", "Store", "open_store"]
