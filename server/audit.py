"""The audit log's hash chain, as plain functions (no I/O).

Each entry's hash covers its own fields and the previous entry's hash, so
changing, removing or reordering an entry inside the chain breaks it there.
Removing the newest entries, or rewriting the whole chain, leaves a valid
shorter chain: only a head (`entries`, `head_hash`) exported earlier from
`GET /api/audit/verify` shows that. The store also refuses updates and deletes
with triggers (migration 3); the chain is for whoever drops them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

GENESIS_HASH = "0" * 64


@dataclass(frozen=True)
class AuditFacts:
    """What happened: who, in which role, did what to which object, with what outcome."""

    actor: str
    role: str
    action: str
    object_type: str
    object_id: str
    outcome: str
    source: str
    # Extra facts such as an error code; never patient data.
    detail: dict[str, Any]


@dataclass(frozen=True)
class AuditEntry:
    """One stored, chained entry."""

    seq: int
    at: str
    facts: AuditFacts
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class ChainCheck:
    """The result of walking the chain."""

    ok: bool
    entries: int
    head_hash: str
    # First entry whose hash or position does not fit, when not ok.
    broken_seq: int | None = None
    reason: str | None = None


def entry_hash(seq: int, at: str, facts: AuditFacts, prev_hash: str) -> str:
    """SHA-256 over a canonical JSON of the entry and the previous hash."""
    body = {"seq": seq, "at": at, "prev": prev_hash, **asdict(facts)}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def chain_next(seq: int, at: str, facts: AuditFacts, prev_hash: str) -> AuditEntry:
    """The entry that follows `prev_hash`."""
    return AuditEntry(seq, at, facts, prev_hash, entry_hash(seq, at, facts, prev_hash))


def verify_chain(entries: Iterable[AuditEntry], resume: ChainCheck | None = None) -> ChainCheck:
    """Walk entries in sequence order and report the first that does not fit.

    Pass the previous result as `resume` to verify a long chain page by page.
    """
    count = resume.entries if resume else 0
    expected_prev = resume.head_hash if resume else GENESIS_HASH
    expected_seq = count + 1
    for entry in entries:
        if entry.seq != expected_seq:
            return ChainCheck(False, count, expected_prev, entry.seq, "sequence gap or reorder")
        if entry.prev_hash != expected_prev:
            return ChainCheck(False, count, expected_prev, entry.seq, "previous hash mismatch")
        if entry_hash(entry.seq, entry.at, entry.facts, entry.prev_hash) != entry.hash:
            return ChainCheck(False, count, expected_prev, entry.seq, "entry altered")
        expected_prev = entry.hash
        expected_seq += 1
        count += 1
    return ChainCheck(True, count, expected_prev)
