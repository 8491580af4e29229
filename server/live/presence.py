"""Who is in which live room, on one node (memory) or across nodes (Redis, with a TTL per node).

Across nodes, each node keeps a heartbeat key alive (`PREFIX:node:ID`, TTL) and
writes its sockets into the room's hash (`PREFIX:presence:CONSULTATION`). When
a node dies its heartbeat expires: its attendees stop being listed at once and
are removed (and announced as gone) by the next reaper on a surviving node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attendee:
    """One connected socket in a room."""

    sid: str
    sub: str
    role: str
    name: str | None
    node: str


class Presence(Protocol):
    async def join(self, consultation_id: str, attendee: Attendee) -> None: ...
    async def leave(self, consultation_id: str, sid: str) -> Attendee | None: ...
    async def members(self, consultation_id: str) -> list[Attendee]: ...
    async def reap(self, consultation_id: str) -> list[Attendee]: ...
    async def close(self) -> None: ...


class MemoryPresence:
    """Presence for a single node."""

    def __init__(self) -> None:
        # consultation id -> sid -> attendee
        self.rooms: dict[str, dict[str, Attendee]] = {}

    async def join(self, consultation_id: str, attendee: Attendee) -> None:
        self.rooms.setdefault(consultation_id, {})[attendee.sid] = attendee

    async def leave(self, consultation_id: str, sid: str) -> Attendee | None:
        room = self.rooms.get(consultation_id, {})
        gone = room.pop(sid, None)
        if not room:
            self.rooms.pop(consultation_id, None)
        return gone

    async def members(self, consultation_id: str) -> list[Attendee]:
        return list(self.rooms.get(consultation_id, {}).values())

    async def reap(self, consultation_id: str) -> list[Attendee]:
        return []

    async def close(self) -> None:
        self.rooms.clear()


class RedisPresence:
    """Presence shared by every node through Redis."""

    def __init__(self, redis: aioredis.Redis, *, prefix: str, node: str, ttl_seconds: int):
        # Shared client (decode_responses=True).
        self.redis = redis
        # Key prefix, so several deployments (or test runs) can share one Redis.
        self.prefix = prefix
        # This node's id; its heartbeat key says it is alive.
        self.node = node
        self.ttl_seconds = ttl_seconds
        # Rooms with sockets on this node, and those sockets: removed on close.
        self.local: dict[str, set[str]] = {}
        # The heartbeat task, started by start().
        self.heartbeat: asyncio.Task[None] | None = None

    def _room_key(self, consultation_id: str) -> str:
        return f"{self.prefix}:presence:{consultation_id}"

    def _node_key(self, node: str) -> str:
        return f"{self.prefix}:node:{node}"

    async def start(self) -> None:
        await self.redis.set(self._node_key(self.node), "1", ex=self.ttl_seconds)
        self.heartbeat = asyncio.create_task(self._beat(), name=f"presence-heartbeat-{self.node}")

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_seconds / 3)
            try:
                await self.redis.set(self._node_key(self.node), "1", ex=self.ttl_seconds)
            except Exception:
                log.warning("presence heartbeat failed", extra={"node": self.node}, exc_info=True)

    async def join(self, consultation_id: str, attendee: Attendee) -> None:
        await self.redis.hset(
            self._room_key(consultation_id), attendee.sid, json.dumps(asdict(attendee))
        )
        self.local.setdefault(consultation_id, set()).add(attendee.sid)

    async def leave(self, consultation_id: str, sid: str) -> Attendee | None:
        local = self.local.get(consultation_id, set())
        local.discard(sid)
        if not local:
            self.local.pop(consultation_id, None)
        key = self._room_key(consultation_id)
        raw = await self.redis.hget(key, sid)
        if raw is None or not await self.redis.hdel(key, sid):
            return None
        return Attendee(**json.loads(raw))

    async def _all(self, consultation_id: str) -> tuple[list[Attendee], set[str]]:
        """Every stored attendee, and the nodes among theirs that are alive."""
        raw = await self.redis.hgetall(self._room_key(consultation_id))
        attendees = [Attendee(**json.loads(v)) for v in raw.values()]
        nodes = sorted({a.node for a in attendees})
        alive = await self.redis.mget([self._node_key(n) for n in nodes]) if nodes else []
        return attendees, {n for n, beat in zip(nodes, alive, strict=True) if beat}

    async def members(self, consultation_id: str) -> list[Attendee]:
        attendees, alive = await self._all(consultation_id)
        return [a for a in attendees if a.node in alive]

    async def reap(self, consultation_id: str) -> list[Attendee]:
        """Remove the attendees of dead nodes; return those this call removed."""
        attendees, alive = await self._all(consultation_id)
        removed = []
        for attendee in attendees:
            if attendee.node not in alive and await self.redis.hdel(
                self._room_key(consultation_id), attendee.sid
            ):
                removed.append(attendee)
        return removed

    async def close(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.heartbeat
        with contextlib.suppress(Exception):
            for consultation_id, sids in self.local.items():
                if sids:
                    await self.redis.hdel(self._room_key(consultation_id), *sids)
            await self.redis.delete(self._node_key(self.node))
        self.local.clear()


def participant_view(attendees: list[Attendee]) -> list[dict[str, Any]]:
    """Present participants, one entry per person however many tabs they have open."""
    seen: dict[str, dict[str, Any]] = {}
    for a in attendees:
        entry = seen.setdefault(
            a.sub, {"id": a.sub, "role": a.role, "name": a.name, "connections": 0}
        )
        entry["connections"] += 1
    return sorted(seen.values(), key=lambda p: (p["role"], p["id"]))
