"""Refused requests audited in bursts (plain Python; time is passed in).

Each refusal used to be one fsynced audit row: a few clients sending garbage tokens made every
valid request wait behind their writes. Now the first refusal of a burst is audited at once (one
refusal is still seen at once), and the ones that follow from the same actor, address, action
(a route, or the live room's connect) and reason within `window_seconds` are counted and
audited as one row when the burst ends.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from server.audit import AuditFacts

# Bursts tracked at once; past this, new actors share one burst per reason.
BURSTS_MAX = 10_000


@dataclass
class Burst:
    first: AuditFacts  # the refusal that opened the burst (already audited)
    opened: float
    repeats: int = 0  # refusals since, not yet audited
    last: float = 0.0


class RefusalBursts:
    def __init__(self, window_seconds: float, bursts_max: int = BURSTS_MAX):
        self.window_seconds = window_seconds
        self.bursts_max = bursts_max
        self.bursts: dict[tuple[str, str, str, str, str], Burst] = {}

    def refuse(self, facts: AuditFacts, now: float) -> AuditFacts | None:
        """The audit entry to write now, or None when the refusal joins an open burst."""
        key = (facts.actor, facts.role, facts.source, facts.action, facts.outcome)
        if key not in self.bursts and len(self.bursts) >= self.bursts_max:
            key = ("*", "*", "*", "*", facts.outcome)
            facts = replace(facts, actor="*", role="*", source="*")
        burst = self.bursts.get(key)
        if burst is None:
            self.bursts[key] = Burst(facts, opened=now, last=now)
            return facts
        burst.repeats += 1
        burst.last = now
        return None

    def ended(self, now: float) -> list[AuditFacts]:
        """Summaries of the bursts whose window has passed (each burst is forgotten)."""
        done = [k for k, b in self.bursts.items() if now - b.opened >= self.window_seconds]
        return [s for s in (self._summary(self.bursts.pop(k)) for k in done) if s is not None]

    def drain(self) -> list[AuditFacts]:
        """Summaries of every open burst, at shutdown."""
        bursts, self.bursts = self.bursts, {}
        return [s for s in map(self._summary, bursts.values()) if s is not None]

    def _summary(self, burst: Burst) -> AuditFacts | None:
        if burst.repeats == 0:
            return None
        detail = {
            **burst.first.detail,
            "repeats": burst.repeats,
            "over_seconds": round(burst.last - burst.opened, 1),
        }
        return replace(burst.first, action="refusals repeated", detail=detail)
