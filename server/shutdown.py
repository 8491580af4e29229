"""Stopping with live clients connected: every step bounded in time and logged.

aiohttp stops listening, calls the app's on_shutdown (`server.app.close_live`: live
connections and media end first), waits up to `REQUEST_GRACE_SECONDS` for requests in
flight, then runs the cleanup contexts, whose steps go through `step`. A step that
overruns its bound is cancelled and logged as cut short, so Ctrl-C with a room live ends
in a few seconds and the log says what was lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable

log = logging.getLogger(__name__)

# How long requests in flight (an upload, a capture) may finish once listening stops.
REQUEST_GRACE_SECONDS = 1.0
# The bound on each step after that (closing sockets, peers, flushing queues).
STEP_SECONDS = 1.0


async def step(name: str, work: Awaitable[object], seconds: float = STEP_SECONDS) -> bool:
    """Run one shutdown step within `seconds`; log it done or cut short. True if it finished."""
    started = time.monotonic()
    try:
        await asyncio.wait_for(work, seconds)
    except TimeoutError:
        log.warning("shutdown step cut short", extra={"step": name, "bound_seconds": seconds})
        return False
    except Exception as exc:  # a failing step must not stop the others
        log.warning("shutdown step failed", extra={"step": name, "error": type(exc).__name__})
        return False
    elapsed = round(time.monotonic() - started, 3)
    log.info("shutdown step done", extra={"step": name, "seconds": elapsed})
    return True
