"""The live rooms' shared machinery: presence, the ordered room bus, background tasks.

One `Live` per application, opened by `open_live` (in `app.py`'s cleanup context): in-memory
on one node, Redis-backed when `PROBELINK_REDIS_URL` is set. It is handed what it uses (the
settings, the Socket.IO server, the store) and reads nothing from the application. The Socket.IO
handlers in `signaling.py` use it; nothing else in them changes between one node and many.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis.asyncio as aioredis
import socketio
from redis.exceptions import RedisError

from server.auth import Role
from server.config import Settings
from server.consultations.access import access_ended
from server.consultations.store import Store
from server.errors import ConfigError, Forbidden, Unavailable
from server.live.bus import LocalRoomBus, RedisRoomBus, RoomBus
from server.live.calls import NodeCalls
from server.live.log import RoomLog
from server.live.presence import MemoryPresence, Presence, RedisPresence
from server.live.queue_feed import announce
from server.live.room import RoomEvent
from server.shutdown import step

log = logging.getLogger(__name__)

NAMESPACE = "/live"
# A pin outlives a crashed node by this much; live rooms refresh it every few seconds.
MEDIA_PIN_TTL_SECONDS = 30
# Atomic: only the node that holds a pin refreshes or releases it.
_REFRESH_IF_MINE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('expire', KEYS[1], ARGV[2]) end return 0"
)
_DELETE_IF_MINE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)
# Atomic: a pin held by a node that is gone (no heartbeat) passes to this one.
_TAKE_OVER = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[3]) end return false"
)
CATCH_UP_EVENTS_MAX = 1000


def room_of(consultation_id: str) -> str:
    return f"consultation:{consultation_id}"


async def let_go(sio: socketio.AsyncServer, sid: str, refusal: Forbidden) -> None:
    """Tell a socket, on whichever node, why its access has ended (`revoked`), then disconnect
    it: both go through the Socket.IO manager, in this order, to the node that holds it."""
    revoked = {"code": refusal.code, "message": refusal.message}
    await sio.emit("revoked", revoked, to=sid, namespace=NAMESPACE)
    await sio.disconnect(sid, namespace=NAMESPACE)


class Reaper(Protocol):
    async def reap(self) -> None: ...


@dataclass
class Live:
    """Presence and ordered delivery for this node's live rooms."""

    # This node's id in presence entries.
    node: str
    presence: Presence
    bus: RoomBus
    # The Socket.IO server (its manager reaches sockets on every node) and the records store.
    sio: socketio.AsyncServer
    store: Store
    # Background tasks this node owns; cancelled and awaited on close.
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    # With many nodes: Redis, where each consultation's media is pinned to one node.
    redis: aioredis.Redis | None = None
    # Key prefix in Redis.
    prefix: str = "probelink"
    # Calls to and from the other nodes (an offer or a capture for media carried elsewhere).
    calls: NodeCalls | None = None

    async def claim_media(self, consultation_id: str) -> str | None:
        """Pin the consultation's media to this node, unless a live node carries it already:
        then that node's id. A pin left by a node that is gone passes to this one."""
        if self.redis is None:
            return None
        key = f"{self.prefix}:media:{consultation_id}"
        try:
            if await self.redis.set(key, self.node, nx=True, ex=MEDIA_PIN_TTL_SECONDS):
                return None
            found = await self.redis.get(key)
            owner = None if found is None else str(found)
            if owner is None or owner == self.node:
                return None
            if await self.redis.exists(f"{self.prefix}:node:{owner}"):
                return str(owner)
            taken = await self.redis.eval(
                _TAKE_OVER, 1, key, owner, self.node, str(MEDIA_PIN_TTL_SECONDS)
            )
        except RedisError:
            raise Unavailable(
                "cannot tell which node carries this consultation's media (Redis is unreachable)",
                code="bus_unavailable",
            ) from None
        if taken:
            log.info("media room re-homed from a node that is gone", extra={"node": self.node})
            return None
        return await self.claim_media(consultation_id)  # another node took it over first

    async def media_node(self, consultation_id: str) -> str | None:
        """The other node that carries the consultation's media, if one does."""
        if self.redis is None:
            return None
        with contextlib.suppress(RedisError):
            owner = await self.redis.get(f"{self.prefix}:media:{consultation_id}")
            if owner is not None and owner != self.node:
                return str(owner)
        return None

    async def keep_media(self, consultation_ids: list[str]) -> None:
        """Refresh the pins of the consultations whose media this node carries."""
        if self.redis is None:
            return
        for consultation_id in consultation_ids:
            with contextlib.suppress(RedisError):
                key = f"{self.prefix}:media:{consultation_id}"
                await self.redis.eval(
                    _REFRESH_IF_MINE, 1, key, self.node, str(MEDIA_PIN_TTL_SECONDS)
                )

    async def release_media(self, consultation_id: str) -> None:
        if self.redis is None:
            return
        with contextlib.suppress(RedisError):
            await self.redis.eval(
                _DELETE_IF_MINE, 1, f"{self.prefix}:media:{consultation_id}", self.node
            )

    async def ended_for(self, consultation_id: str, sub: str, role: Role) -> Forbidden | None:
        """Why the token of `sub` (as `role`) no longer opens the consultation, or None."""
        standing = await self.store.standing(consultation_id, sub)
        return None if standing is None else access_ended(role, standing)

    async def end_access(self, consultation_ids: Iterable[str]) -> None:
        """Let go, on every node, of these consultations' live sockets whose access has ended.

        Called once the change that ended it is committed. Should this fail (Redis down), the
        change stands: the sockets' next HTTP request and their reconnection are refused anyway.
        """
        try:
            for consultation_id in consultation_ids:
                for attendee in await self.presence.members(consultation_id):
                    refusal = await self.ended_for(
                        consultation_id, attendee.sub, Role(attendee.role)
                    )
                    if refusal is not None:
                        await let_go(self.sio, attendee.sid, refusal)
        except Exception:
            log.exception("could not end the live sessions whose access has ended")

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` in the background, owned by this node; failures are logged."""
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("live background task failed", exc_info=task.exception())

    async def publish(self, consultation_id: str, event: RoomEvent) -> None:
        """Publish a stored event; if that fails, clients still get it by `sync`."""
        try:
            await self.bus.publish(consultation_id, event)
        except Exception:
            log.exception(
                "room event stored but not published",
                extra={"consultation": consultation_id, "seq": event.seq},
            )
        if event.type == "key_image":
            # What the request holds for review changed: the queue pages read it again.
            self.spawn(announce(self.sio, self.store, [consultation_id]))

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.calls is not None:
            await self.calls.close()
        await self.bus.close()
        await self.presence.close()


@contextlib.asynccontextmanager
async def open_live(
    settings: Settings,
    sio: socketio.AsyncServer,
    store: Store,
    room_log: RoomLog,
    reaper: Reaper,
) -> AsyncIterator[Live]:
    """Presence and the room bus of this node, open until the block ends."""
    node = settings.node_id or secrets.token_hex(6)

    async def deliver(consultation_id: str, event: RoomEvent) -> None:
        await sio.emit(
            event.type,
            event.body,
            room=room_of(consultation_id),
            namespace=NAMESPACE,
            ignore_queue=True,
        )

    async def fetch_after(consultation_id: str, after_seq: int) -> list[RoomEvent]:
        return await room_log.events_after(consultation_id, after_seq, CATCH_UP_EVENTS_MAX)

    redis: aioredis.Redis | None = None
    if settings.redis_url:
        redis = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
        presence = RedisPresence(
            redis,
            prefix=settings.redis_prefix,
            node=node,
            ttl_seconds=settings.presence_ttl_seconds,
        )
        bus = RedisRoomBus(redis, prefix=settings.redis_prefix, deliver=deliver, fetch=fetch_after)
        calls = NodeCalls(redis, prefix=settings.redis_prefix, node=node)
        try:
            await presence.start()
            await bus.start()
            await calls.start()
        except (RedisError, OSError, TimeoutError) as exc:
            await calls.close()
            await bus.close()
            await presence.close()
            await redis.aclose()
            raise ConfigError(f"cannot reach Redis ({type(exc).__name__})") from None
        live = Live(
            node,
            presence,
            bus,
            sio,
            store,
            redis=redis,
            prefix=settings.redis_prefix,
            calls=calls,
        )
        live.spawn(_reap_forever(reaper, settings.presence_ttl_seconds / 3))
    else:
        live = Live(node, MemoryPresence(), LocalRoomBus(deliver), sio, store)
    log.info("live rooms ready", extra={"node": node, "shared": redis is not None})
    try:
        yield live
    finally:
        await step("live rooms closed", live.close())
        if redis is not None:
            await step("Redis connection closed", redis.aclose())


async def _reap_forever(reaper: Reaper, interval_seconds: float) -> None:
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            await reaper.reap()
        except Exception:
            log.warning("presence reaper failed", exc_info=True)
