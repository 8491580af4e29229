"""A token bucket per socket and kind of event (plain Python; time is passed in)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenBucket:
    """Allows `rate_per_second` on average and bursts of up to `burst` events."""

    rate_per_second: float
    burst: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate_per_second: float, burst: float, now: float) -> TokenBucket:
        return cls(rate_per_second, burst, burst, now)

    def allow(self, now: float) -> bool:
        """Take one token if there is one; refill by elapsed time first."""
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate_per_second)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
