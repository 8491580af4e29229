"""Baseline for the media benchmark: aiortc's MediaRelay, which decodes and re-encodes.

The operator's offer publishes; each expert's offer gets `relay.subscribe()` of the
operator's video and audio, so every subscriber's sender encodes its own copy (the
stock aiortc way to fan out). No voice back (that would need renegotiation here):
the baseline does less work than probelink, so the ratio is conservative.

    python load_tests/mediarelay_server.py --port 8092
"""

from __future__ import annotations

import argparse
from typing import Any

from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay

ROOMS: dict[str, dict[str, Any]] = {}
RELAY = MediaRelay()
PEERS: set[RTCPeerConnection] = set()


async def offer(request: web.Request) -> web.Response:
    body = await request.json()
    room = ROOMS.setdefault(body["room"], {})
    pc = RTCPeerConnection()
    PEERS.add(pc)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="offer"))
    if body["role"] == "operator":
        for transceiver in pc.getTransceivers():
            if transceiver.receiver.track is not None:
                room[transceiver.kind] = transceiver.receiver.track
    else:
        for kind in ("video", "audio"):
            if kind in room:
                pc.addTrack(RELAY.subscribe(room[kind]))
    await pc.setLocalDescription(await pc.createAnswer())
    return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})


async def close_all(_app: web.Application) -> None:
    for pc in list(PEERS):
        await pc.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_post("/offer", offer)
    app.on_shutdown.append(close_all)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
