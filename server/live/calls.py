"""Calls between nodes over Redis: one node asks another to do something and waits for the answer.

Each node listens on its own channel (`PREFIX:calls:NODE`). A call is published there as
`{id, from, op, args}`; the node that gets it runs the handler registered for `op` and publishes
`{id, result}` or `{id, error}` on the caller's channel. A call nobody is listening to fails at
once (PUBLISH reached no subscriber); one that gets no answer in time fails with 503. Errors the
handler raises travel back as they are (status, code, message, field); anything else is logged
on the node that failed and answered as an internal error with a reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from server.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    ProbelinkError,
    RateLimited,
    Unauthorized,
    Unavailable,
)

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
ERRORS_BY_STATUS: dict[int, type[ProbelinkError]] = {
    e.status: e
    for e in (
        BadRequest,
        PayloadTooLarge,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        RateLimited,
        Unavailable,
    )
}


class NodeCalls:
    """This node's end of the calls between nodes."""

    def __init__(self, redis: aioredis.Redis, *, prefix: str, node: str):
        self.redis = redis
        self.prefix = prefix
        self.node = node
        self.handlers: dict[str, Handler] = {}
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.pubsub: Any = None
        self.tasks: set[asyncio.Task[None]] = set()

    def channel(self, node: str) -> str:
        return f"{self.prefix}:calls:{node}"

    def handle(self, op: str, handler: Handler) -> None:
        self.handlers[op] = handler

    async def start(self) -> None:
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await self.pubsub.subscribe(self.channel(self.node))
        self._spawn(self._listen())

    async def call(self, node: str, op: str, args: dict[str, Any], within: float) -> dict[str, Any]:
        """What `op` on `node` answers; its error raised here as it was raised there."""
        call_id = secrets.token_hex(8)
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[call_id] = answer
        message = json.dumps({"id": call_id, "from": self.node, "op": op, "args": args})
        try:
            try:
                listeners = await self.redis.publish(self.channel(node), message)
            except RedisError:
                raise _unavailable("Redis is unreachable") from None
            if not listeners:
                raise _unavailable("the node that carries it is gone")
            try:
                async with asyncio.timeout(within):
                    reply = await answer
            except TimeoutError:
                raise _unavailable("the node that carries it did not answer in time") from None
        finally:
            self.waiting.pop(call_id, None)
        if "error" in reply:
            body = reply["error"]
            error = ERRORS_BY_STATUS.get(int(body.get("status", 500)), ProbelinkError)
            raise error(str(body["message"]), code=body.get("code"), field=body.get("field"))
        return dict(reply["result"])

    async def _listen(self) -> None:
        async for message in self.pubsub.listen():
            try:
                data = json.loads(message["data"])
            except (TypeError, ValueError):
                continue
            if not isinstance(data, dict):
                continue
            if "op" in data:
                self._spawn(self._answer(data))
            else:
                waiting = self.waiting.get(str(data.get("id")))
                if waiting is not None and not waiting.done():
                    waiting.set_result(data)

    async def _answer(self, call: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"id": call.get("id")}
        handler = self.handlers.get(str(call.get("op")))
        try:
            if handler is None:
                raise BadRequest(f"no such call: {call.get('op')!r}", code="unknown_call")
            reply["result"] = await handler(dict(call.get("args") or {}))
        except ProbelinkError as exc:
            reply["error"] = {**exc.to_dict()["error"], "status": exc.status}
        except Exception:
            reference = secrets.token_hex(6)
            log.exception("a call from another node failed", extra={"reference": reference})
            reply["error"] = {
                "code": "internal_error",
                "message": f"internal error on the media node (reference {reference})",
                "field": None,
                "status": 500,
            }
        with contextlib.suppress(RedisError):
            await self.redis.publish(self.channel(str(call.get("from"))), json.dumps(reply))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self.pubsub.aclose()


def _unavailable(why: str) -> Unavailable:
    return Unavailable(
        f"this consultation's media cannot be reached: {why}; try again in a moment",
        code="media_node_unavailable",
    )


async def quietly(call: Awaitable[Any]) -> None:
    """A call whose failure changes nothing here (the other node cleans up after itself)."""
    with contextlib.suppress(ProbelinkError):
        await call
