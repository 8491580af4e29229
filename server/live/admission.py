"""Admission to `/live` on one node (plain Python; time is passed in).

Every socket costs memory, a presence entry and database writes, so a client cannot open
sockets without bound: connections are capped per client address and in all, connects from one
address are rate-limited, and a participant has one socket at a time; a new one replaces the
old, as reloading the page does.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from server.config_live import LiveSettings
from server.errors import ProbelinkError, RateLimited, Unavailable
from server.ratelimit import TokenBucket

# Idle addresses' connect buckets are forgotten past this many addresses.
BUCKETS_MAX = 10_000


@dataclass(frozen=True)
class Seat:
    address: str
    consultation_id: str
    participant: str


@dataclass
class Admission:
    per_address: int
    total: int
    connects_per_second: float
    connect_burst: float
    seats: dict[str, Seat] = field(default_factory=dict)  # by sid
    by_address: Counter[str] = field(default_factory=Counter)
    buckets: dict[str, TokenBucket] = field(default_factory=dict)

    @classmethod
    def of(cls, settings: LiveSettings) -> Admission:
        """The limits of PROBELINK_LIVE_SOCKETS_* and _LIVE_CONNECT*, on one namespace."""
        return cls(
            per_address=settings.live_sockets_per_address,
            total=settings.live_sockets_max,
            connects_per_second=settings.live_connects_per_second,
            connect_burst=settings.live_connect_burst,
        )

    def check(self, address: str, now: float) -> ProbelinkError | None:
        """Why a new connection from `address` is refused, or None to let it in."""
        bucket = self.buckets.get(address)
        if bucket is None:
            if len(self.buckets) >= BUCKETS_MAX:
                self._forget_idle(now)
            if len(self.buckets) >= BUCKETS_MAX:
                # Addresses sprayed faster than buckets refill: forget the oldest unseated one,
                # so memory stays bounded (its next connect starts with a full bucket).
                oldest = next((a for a in self.buckets if a not in self.by_address), None)
                if oldest is not None:
                    del self.buckets[oldest]
            bucket = self.buckets[address] = TokenBucket.full(
                self.connects_per_second, self.connect_burst, now
            )
        if not bucket.allow(now):
            return RateLimited(
                "too many connections from this address; wait a moment",
                code="connecting_too_fast",
            )
        if self.by_address[address] >= self.per_address:
            return RateLimited(
                f"this address already has {self.per_address} live connections",
                code="too_many_connections",
            )
        if len(self.seats) >= self.total:
            return Unavailable("this server is full; try again later", code="server_full")
        return None

    def seat(self, sid: str, seat: Seat) -> list[str]:
        """Admit `sid`; the sockets it replaces (the same participant's, in that consultation)."""
        replaced = [
            other
            for other, s in self.seats.items()
            if (s.consultation_id, s.participant) == (seat.consultation_id, seat.participant)
        ]
        self.seats[sid] = seat
        self.by_address[seat.address] += 1
        return replaced

    def leave(self, sid: str) -> None:
        seat = self.seats.pop(sid, None)
        if seat is None:
            return
        self.by_address[seat.address] -= 1
        if self.by_address[seat.address] <= 0:
            del self.by_address[seat.address]

    def _forget_idle(self, now: float) -> None:
        for address, bucket in list(self.buckets.items()):
            refilled = bucket.tokens + (now - bucket.updated) * bucket.rate_per_second
            if refilled >= bucket.burst and address not in self.by_address:
                del self.buckets[address]
