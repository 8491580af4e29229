"""python-socketio's server for `/live`, hardened: only `/live`, no binary packets, bounded.

A binary event or ack announces attachments the server would buffer until they all arrive; a
malformed packet would be logged with its traceback. Both close their connection here, before
anything is buffered, with one log line per address and minute (never the packet's text).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import socketio

from server.config import Settings
from server.live.hub import NAMESPACE
from server.live.queue_feed import QUEUE_NAMESPACE

log = logging.getLogger(__name__)

# Socket.IO packet types /live never uses: a binary event or ack announces attachments that the
# server would buffer until they all arrived.
BINARY_PACKET_TYPES = ("5", "6")
# A client's bad packets are logged once per this many seconds per address, with their count.
REFUSED_PACKETS_LOG_SECONDS = 60.0
REFUSED_LOG_SOURCES_MAX = 10_000


class RefusedPacket(ValueError):
    """A Socket.IO packet /live does not accept: binary, or not a packet at all."""


class LivePacket(socketio.packet.Packet):
    """python-socketio's packet, refusing binary packets and attachments when decoding."""

    def decode(self, encoded_packet: Any) -> int:
        if not isinstance(encoded_packet, str) or encoded_packet[:1] in BINARY_PACKET_TYPES:
            raise RefusedPacket("binary packets are not accepted")
        try:
            count: int = super().decode(encoded_packet)
        except (ValueError, TypeError, RecursionError):
            raise RefusedPacket("malformed packet") from None
        return count


class LiveServer(socketio.AsyncServer):
    """The Socket.IO server of `/live`: a refused packet closes its connection.

    python-socketio decodes a packet in `_handle_eio_message` (pinned by the hook test in
    tests/test_hardening.py); a packet that fails there would be logged with its traceback
    and, for a binary packet, its attachments buffered.
    """

    def __init__(self, **kwargs: Any):
        super().__init__(serializer=LivePacket, **kwargs)
        self.refused_log: dict[str, tuple[float, int]] = {}

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        try:
            await super()._handle_eio_message(eio_sid, data)
        except RefusedPacket as exc:
            self._log_refusal(eio_sid, str(exc))
            await self.eio.disconnect(eio_sid)

    def _log_refusal(self, eio_sid: str, reason: str) -> None:
        """One line per address and minute, with the count: never the packet itself."""
        request = self.environ.get(eio_sid, {}).get("aiohttp.request")
        source = getattr(request, "remote", None) or "unknown"
        now = time.monotonic()
        since, count = self.refused_log.get(source, (now - REFUSED_PACKETS_LOG_SECONDS, 0))
        if now - since < REFUSED_PACKETS_LOG_SECONDS:
            self.refused_log[source] = (since, count + 1)
            return
        if len(self.refused_log) > REFUSED_LOG_SOURCES_MAX:
            self.refused_log.clear()
        self.refused_log[source] = (now, 0)
        log.warning(
            "refused Socket.IO packets; connection closed",
            extra={"source": source, "reason": reason, "since_last_line": count},
        )


def create_sio(settings: Settings) -> socketio.AsyncServer:
    """The Socket.IO server; with a Redis URL it fans out across nodes."""
    manager = (
        RedisManager(settings.redis_url, channel=f"{settings.redis_prefix}:socketio")
        if settings.redis_url
        else None
    )
    return LiveServer(
        async_mode="aiohttp",
        client_manager=manager,
        # Only /live and the queue pages' /queue: a client asking for another namespace (the
        # default "/") is refused.
        namespaces=[NAMESPACE, QUEUE_NAMESPACE],
        logger=False,
        engineio_logger=False,
        # Up to this size a bad event gets an error ack; a bigger packet closes the connection.
        max_http_buffer_size=settings.max_body_bytes,
        # One socket's events are handled one after the other, in arrival order, without a
        # task per event (measured: cheaper under pointer load); sockets still run concurrently.
        async_handlers=False,
    )


class RedisManager(socketio.AsyncRedisManager):
    """python-socketio's Redis manager, with its clients closed.

    Its publisher and its listener each connect when they first need Redis, and the second
    replaces the first's client without closing it; nothing closes the last one either. Each
    replaced client is kept here and all are closed with the listener at shutdown (`close`).
    """

    def __init__(self, url: str, channel: str):
        super().__init__(url, channel=channel)
        self.replaced: list[Any] = []

    def _redis_connect(self) -> None:
        if self.redis is not None:
            self.replaced.append(self.redis)
        super()._redis_connect()

    async def close(self) -> None:
        listener = getattr(self, "thread", None)
        if isinstance(listener, asyncio.Task):
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener
        clients = [self.pubsub, *self.replaced, self.redis]
        self.replaced, self.connected = [], False
        for client in clients:
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()


async def close_manager(sio: socketio.AsyncServer) -> None:
    """At shutdown: the Redis manager's listener and connections (none without Redis)."""
    if isinstance(sio.manager, RedisManager):
        await sio.manager.close()
