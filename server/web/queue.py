"""Telling the queue pages of a change, from an HTTP handler (`server/live/queue_feed.py`)."""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web

from server.live.queue_feed import announce
from server.web.keys import SIO, STORE


async def queue_changed(
    app: web.Application, consultation_ids: Iterable[str] = (), experts: Iterable[str] = ()
) -> None:
    """`announce` with the application's Socket.IO server and store (for the HTTP handlers)."""
    await announce(app[SIO], app[STORE], consultation_ids, experts)
