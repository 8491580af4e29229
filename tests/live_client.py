"""A participant in a live room, as a test drives it: a real python-socketio client."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import socketio

LIVE = "/live"
SERVER_EVENTS = (
    "room_state",
    "presence",
    "pointer",
    "mark",
    "mark_clear",
    "guidance",
    "media_stats",
    "key_image",
    "publishing",
    "ended",
    "room_error",
    "revoked",
)


class Participant:
    """Connects with a token, records every server event, calls events and returns their acks."""

    def __init__(self, url: str, token: str):
        self.url = url
        self.token = token
        self.sio = socketio.AsyncClient(reconnection=False)
        # event name -> payloads received, in arrival order
        self.received: dict[str, list[Any]] = defaultdict(list)
        self._arrived = asyncio.Condition()
        for name in SERVER_EVENTS:
            self.sio.on(name, self._recorder(name), namespace=LIVE)
        # The reason python-socketio gives, each time the connection ends.
        self.sio.on("disconnect", self._recorder("disconnect"), namespace=LIVE)

    def _recorder(self, name: str) -> Any:
        async def record(data: Any = None) -> None:
            async with self._arrived:
                self.received[name].append(data)
                self._arrived.notify_all()

        return record

    async def connect(self) -> Participant:
        await self.sio.connect(
            self.url,
            namespaces=[LIVE],
            auth={"token": self.token},
            wait_timeout=10,
            transports=["websocket"],
        )
        await self.wait_for("room_state")
        return self

    async def call(self, event: str, data: Any = None) -> Any:
        return await self.sio.call(event, data, namespace=LIVE, timeout=10)

    async def wait_for(self, name: str, count: int = 1, within: float = 10) -> list[Any]:
        """Wait until `count` events called `name` have arrived; return them all."""

        async def enough() -> None:
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(self.received[name]) >= count)

        await asyncio.wait_for(enough(), within)
        return self.received[name]

    async def wait_until(self, predicate: Any, within: float = 10) -> None:
        async def holds() -> None:
            async with self._arrived:
                await self._arrived.wait_for(lambda: predicate(self.received))

        await asyncio.wait_for(holds(), within)

    async def close(self) -> None:
        await self.sio.disconnect()

    @property
    def state(self) -> dict[str, Any]:
        return self.received["room_state"][-1]  # type: ignore[no-any-return]
