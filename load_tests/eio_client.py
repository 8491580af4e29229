"""A minimal Socket.IO v5 / Engine.IO v4 client over one aiohttp WebSocket.

The load generator runs hundreds of participants in one process; python-socketio's
client costs too much CPU per connection for that, so this speaks the few packet
types the benchmark needs: connect to a namespace, emit, emit with ack, ping/pong.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from typing import Any

import aiohttp

OnEvent = Callable[[str, Any], None]


class LiveConnection:
    """One participant's connection to a namespace."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, namespace: str, on_event: OnEvent):
        self.ws = ws
        self.prefix = f"42{namespace},"
        self.ack_prefix = f"43{namespace},"
        self.on_event = on_event
        self.acks: dict[int, asyncio.Future[Any]] = {}
        self.ids = itertools.count(1)
        self.reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        session: aiohttp.ClientSession,
        base_url: str,
        namespace: str,
        auth: dict[str, Any],
        on_event: OnEvent,
    ) -> LiveConnection:
        ws_url = base_url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        ws = await session.ws_connect(ws_url, max_msg_size=0)
        opened = await ws.receive_str()
        if not opened.startswith("0"):
            raise RuntimeError(f"unexpected Engine.IO open packet: {opened[:80]}")
        await ws.send_str(f"40{namespace}," + json.dumps(auth))
        while True:
            reply = await ws.receive_str()
            if reply == "2":
                await ws.send_str("3")
                continue
            if reply.startswith(f"40{namespace},"):
                break
            if reply.startswith(f"42{namespace},"):
                continue  # an event that raced the connect acknowledgement
            raise RuntimeError(f"namespace connect refused: {reply[:200]}")
        connection = cls(ws, namespace, on_event)
        connection.reader = asyncio.create_task(connection._read())
        return connection

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data: str = message.data
            if data == "2":
                await self.ws.send_str("3")
            elif data.startswith(self.prefix):
                event, *args = json.loads(data[len(self.prefix) :])
                self.on_event(event, args[0] if args else None)
            elif data.startswith(self.ack_prefix):
                rest = data[len(self.ack_prefix) :]
                bracket = rest.index("[")
                future = self.acks.pop(int(rest[:bracket]), None)
                if future is not None and not future.done():
                    payload = json.loads(rest[bracket:])
                    future.set_result(payload[0] if payload else None)

    async def emit(self, event: str, data: Any) -> None:
        await self.ws.send_str(self.prefix + json.dumps([event, data]))

    async def call(self, event: str, data: Any, timeout: float = 10) -> Any:  # noqa: ASYNC109
        ack_id = next(self.ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.acks[ack_id] = future
        await self.ws.send_str(f"{self.prefix}{ack_id}" + json.dumps([event, data]))
        return await asyncio.wait_for(future, timeout)

    async def close(self) -> None:
        await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()
