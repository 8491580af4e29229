"""Ordered delivery of a room's persistent events, on one node or across nodes.

An event is sequenced, stored and published while its room's lock is held, so
events are published in sequence order. On one node the lock is an asyncio lock
and publishing delivers at once. Across nodes the lock lives in Redis and every
node, the publishing one included, delivers from one Redis channel: each node
sees one stream per room in sequence order. (python-socketio's own Redis
manager delivers locally first and remotely later, which could reorder two
events from two nodes; hence this bus for sequenced events.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from server.errors import Unavailable
from server.live.room import RoomEvent

log = logging.getLogger(__name__)

Deliver = Callable[[str, RoomEvent], Awaitable[None]]
# fetch(room, after_seq) -> the stored events after it, in order (the room log).
Fetch = Callable[[str, int], Awaitable[list[RoomEvent]]]

ROOM_LOCK_TIMEOUT_SECONDS = 10.0
ROOM_LOCK_WAIT_SECONDS = 5.0
ROOM_LOCK_POLL_SECONDS = 0.005
LISTEN_RETRY_MAX_SECONDS = 5.0
ROOMS_TRACKED_MAX = 10_000


class RoomBus(Protocol):
    def sequenced(self, consultation_id: str) -> contextlib.AbstractAsyncContextManager[None]: ...
    async def publish(self, consultation_id: str, event: RoomEvent) -> None: ...
    async def close(self) -> None: ...


class RoomLocks:
    """An asyncio lock per room, kept only while someone holds or waits for it."""

    def __init__(self) -> None:
        # room -> [lock, holders and waiters]
        self.locks: dict[str, list[Any]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, consultation_id: str) -> AsyncIterator[None]:
        entry = self.locks.setdefault(consultation_id, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self.locks[consultation_id]


class LocalRoomBus:
    """One node: an asyncio lock per room; publishing delivers directly."""

    def __init__(self, deliver: Deliver):
        self.deliver = deliver
        self.locks = RoomLocks()

    def sequenced(self, consultation_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        return self.locks.hold(consultation_id)

    async def publish(self, consultation_id: str, event: RoomEvent) -> None:
        await self.deliver(consultation_id, event)

    async def close(self) -> None:
        pass


class RedisRoomBus:
    """Many nodes: a Redis lock per room and one Redis channel that every node listens to."""

    def __init__(self, redis: aioredis.Redis, *, prefix: str, deliver: Deliver, fetch: Fetch):
        self.redis = redis
        self.prefix = prefix
        self.deliver = deliver
        self.fetch = fetch
        # room -> last seq delivered on this node; a gap (a message lost while Redis or the
        # subscription was down) is filled from the room log before delivering what follows.
        self.delivered: OrderedDict[str, int] = OrderedDict()
        self.channel = f"{prefix}:room-events"
        # The listener task, started by start().
        self.listener: asyncio.Task[None] | None = None
        # Set once the subscription is in place, so nothing published after start() is missed.
        self.subscribed = asyncio.Event()
        # This node's writers queue here first, so only one per room polls the Redis lock.
        self.local = RoomLocks()

    async def start(self) -> None:
        self.listener = asyncio.create_task(self._listen(), name="room-bus-listener")
        await asyncio.wait_for(self.subscribed.wait(), timeout=10)

    @contextlib.asynccontextmanager
    async def sequenced(self, consultation_id: str) -> AsyncIterator[None]:
        async with self.local.hold(consultation_id), self._shared_lock(consultation_id):
            yield

    @contextlib.asynccontextmanager
    async def _shared_lock(self, consultation_id: str) -> AsyncIterator[None]:
        lock = self.redis.lock(
            f"{self.prefix}:room-lock:{consultation_id}",
            timeout=ROOM_LOCK_TIMEOUT_SECONDS,
            blocking_timeout=ROOM_LOCK_WAIT_SECONDS,
            sleep=ROOM_LOCK_POLL_SECONDS,
        )
        try:
            acquired = await lock.acquire()
        except RedisError:
            raise Unavailable(
                "the room's message bus (Redis) is unreachable; nothing was stored, try again",
                code="bus_unavailable",
            ) from None
        if not acquired:
            raise Unavailable("the room is busy; nothing was stored, try again", code="room_busy")
        try:
            yield
        finally:
            with contextlib.suppress(RedisError):
                await lock.release()

    async def publish(self, consultation_id: str, event: RoomEvent) -> None:
        message = {
            "room": consultation_id,
            "seq": event.seq,
            "type": event.type,
            "body": event.body,
        }
        await self.redis.publish(self.channel, json.dumps(message))

    async def _listen(self) -> None:
        retry = 0.1
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                if self.subscribed.is_set():
                    await self._catch_up()
                self.subscribed.set()
                retry = 0.1
                async for message in pubsub.listen():
                    await self._on_message(message)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("room bus: Redis subscription lost; retrying", exc_info=True)
                await asyncio.sleep(retry)
                retry = min(LISTEN_RETRY_MAX_SECONDS, retry * 2)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _on_message(self, message: dict[str, Any]) -> None:
        if message.get("type") != "message":
            return
        try:
            data = json.loads(message["data"])
            event = RoomEvent(int(data["seq"]), str(data["type"]), dict(data["body"]))
            await self._deliver_in_order(str(data["room"]), event)
        except Exception:
            log.exception("room bus: could not deliver a message")

    async def _deliver_in_order(self, room: str, event: RoomEvent) -> None:
        last = self.delivered.get(room)
        if last is not None and event.seq <= last:
            return  # already delivered (by a catch-up)
        if last is not None and event.seq > last + 1:
            for missed in await self.fetch(room, last):
                if missed.seq >= event.seq:
                    break
                await self.deliver(room, missed)
        await self.deliver(room, event)
        self._mark_delivered(room, event.seq)

    def _mark_delivered(self, room: str, seq: int) -> None:
        self.delivered[room] = seq
        self.delivered.move_to_end(room)
        while len(self.delivered) > ROOMS_TRACKED_MAX:
            self.delivered.popitem(last=False)

    async def _catch_up(self) -> None:
        """After the subscription was lost: deliver what every known room missed meanwhile."""
        for room, last in list(self.delivered.items()):
            for missed in await self.fetch(room, last):
                await self.deliver(room, missed)
                self._mark_delivered(room, missed.seq)

    async def close(self) -> None:
        if self.listener is not None:
            self.listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.listener
