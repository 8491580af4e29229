"""The records store's engine: one code path for SQLite (embedded) and PostgreSQL (shared).

Each feature's queries live in its own package (`server/consultations/store.py`, ...).
"""
