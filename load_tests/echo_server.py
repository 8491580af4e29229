"""Baseline for the signaling benchmark: a bare python-socketio server that relays pointers.

No tokens, no parsing, no rate limits, no presence: it accepts any connection into the room
named in `auth`, and relays `pointer` and `mark` to the rest of the room. What probelink adds on
top of python-socketio is measured against this.

    python load_tests/echo_server.py --port 8091
"""

from __future__ import annotations

import argparse
from typing import Any

import socketio
from aiohttp import web

NAMESPACE = "/live"


def build() -> web.Application:
    sio = socketio.AsyncServer(async_mode="aiohttp", logger=False, engineio_logger=False)
    app = web.Application()
    sio.attach(app)

    @sio.on("connect", namespace=NAMESPACE)  # type: ignore[misc]
    async def connect(sid: str, environ: dict[str, Any], auth: dict[str, Any]) -> None:
        await sio.enter_room(sid, auth["room"], namespace=NAMESPACE)
        await sio.save_session(sid, {"room": auth["room"]}, namespace=NAMESPACE)

    @sio.on("pointer", namespace=NAMESPACE)  # type: ignore[misc]
    async def pointer(sid: str, data: Any) -> dict[str, bool]:
        room = (await sio.get_session(sid, namespace=NAMESPACE))["room"]
        await sio.emit("pointer", data, room=room, skip_sid=sid, namespace=NAMESPACE)
        return {"ok": True}

    @sio.on("mark", namespace=NAMESPACE)  # type: ignore[misc]
    async def mark(sid: str, data: Any) -> dict[str, bool]:
        room = (await sio.get_session(sid, namespace=NAMESPACE))["room"]
        await sio.emit("mark", data, room=room, namespace=NAMESPACE)
        return {"ok": True}

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(build(), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
