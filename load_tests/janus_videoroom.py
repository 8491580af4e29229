"""Janus (Debian's `janus` package) as a relay to measure probelink against: a configuration with
only the HTTP API (on loopback) and the VideoRoom plugin, and the VideoRoom's publish and
subscribe calls for aiortc peers. Janus runs as the user's own process from a temporary
configuration folder; nothing is installed or left behind.

Janus's VideoRoom forwards RTP packets (written in C): what it spends per forwarded stream is
the target probelink is measured against (load_tests/media_bench.py --relays).
"""

from __future__ import annotations

import asyncio
import glob
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription

JANUS = "/usr/bin/janus"
SUBSCRIBE_TRIES = 80  # every 0.25 s
KEPT = {"libjanus_videoroom.so", "libjanus_http.so"}


def ensure_installed() -> None:
    """Install Debian's janus package if it is missing (as root; otherwise say how)."""
    if Path(JANUS).exists():
        return
    if os.geteuid() != 0:
        raise SystemExit("Janus is not installed: sudo apt-get install janus")
    print("installing Debian's janus package", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "install", "-y", "-q", "janus"], check=True, env=env)


def janus_libraries() -> Path:
    """Where Debian's janus package keeps its plugins and transports."""
    found = glob.glob("/usr/lib/*/janus/plugins")
    if not found:
        raise SystemExit("Janus's plugins are not where Debian puts them (/usr/lib/*/janus)")
    return Path(found[0]).parent


def write_config(folder: Path, port: int) -> Path:
    """Janus's configuration in `folder`: HTTP API on 127.0.0.1:`port`, VideoRoom only, no
    session timeout, quiet logs. Returns the main configuration file."""
    folder.mkdir(parents=True, exist_ok=True)
    lib = janus_libraries()

    def unused(kind: str) -> str:
        names = sorted(p.name for p in (lib / kind).glob("*.so") if p.name not in KEPT)
        return ",".join(names)

    (folder / "janus.jcfg").write_text(
        f"""general: {{
  configs_folder = "{folder}"
  plugins_folder = "{lib / "plugins"}"
  transports_folder = "{lib / "transports"}"
  events_folder = "{lib / "events"}"
  loggers_folder = "{lib / "loggers"}"
  debug_level = 2
  session_timeout = 0
}}
media: {{
  rtp_port_range = "20000-40000"
}}
plugins: {{
  disable = "{unused("plugins")}"
}}
transports: {{
  disable = "{unused("transports")}"
}}
events: {{
  broadcast = false
}}
loggers: {{
  disable = "{unused("loggers")}"
}}
"""
    )
    (folder / "janus.transport.http.jcfg").write_text(
        f"""general: {{
  json = "compact"
  base_path = "/janus"
  http = true
  port = {port}
  ip = "127.0.0.1"
  https = false
}}
admin: {{
  admin_http = false
}}
"""
    )
    (folder / "janus.plugin.videoroom.jcfg").write_text("general: {\n}\n")
    return folder / "janus.jcfg"


class JanusHandle:
    """One Janus session with one VideoRoom handle: one participant."""

    def __init__(self, http: aiohttp.ClientSession, base: str):
        self.http = http
        self.base = base
        self.session = 0
        self.handle = 0

    async def _post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.http.post(url, json={**body, "transaction": secrets.token_hex(6)}) as r:
            reply: dict[str, Any] = await r.json()
        if reply.get("janus") == "error":
            raise RuntimeError(f"Janus refused: {reply['error']}")
        return reply

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, base: str) -> JanusHandle:
        handle = cls(http, base)
        handle.session = (await handle._post(base, {"janus": "create"}))["data"]["id"]
        attached = await handle._post(
            f"{base}/{handle.session}", {"janus": "attach", "plugin": "janus.plugin.videoroom"}
        )
        handle.handle = attached["data"]["id"]
        return handle

    async def request(self, body: dict[str, Any], jsep: dict[str, str] | None = None) -> Any:
        """A VideoRoom request; its result (synchronous requests) or the event it leads to."""
        message: dict[str, Any] = {"janus": "message", "body": body}
        if jsep is not None:
            message["jsep"] = jsep
        reply = await self._post(f"{self.base}/{self.session}/{self.handle}", message)
        if reply.get("janus") == "success":
            return reply["plugindata"]["data"]
        while True:  # "ack": the answer comes as an event, long-polled
            async with self.http.get(f"{self.base}/{self.session}?maxev=1") as r:
                event = await r.json()
            if event.get("janus") == "event" and event.get("sender") == self.handle:
                data = event["plugindata"]["data"]
                if "error" in data:
                    raise RuntimeError(f"Janus VideoRoom: {data['error']}")
                return {**data, "jsep": event.get("jsep")}

    async def publish(self, room: int, pc: RTCPeerConnection) -> int:
        """Create `room` and publish `pc`'s offer in it; the publisher's id."""
        await self.request(
            {"request": "create", "room": room, "videocodec": "vp8", "audiocodec": "opus"}
        )
        await pc.setLocalDescription(await pc.createOffer())
        joined = await self.request(
            {"request": "joinandconfigure", "room": room, "ptype": "publisher"},
            {"type": "offer", "sdp": pc.localDescription.sdp},
        )
        await pc.setRemoteDescription(RTCSessionDescription(**joined["jsep"]))
        return int(joined["id"])

    async def subscribe(self, room: int, feed: int, pc: RTCPeerConnection) -> None:
        """Subscribe `pc` to the publisher `feed`: Janus offers, `pc` answers."""
        # The feed exists once the publisher's connection is up and its media flows.
        for attempt in range(SUBSCRIBE_TRIES):
            try:
                joined = await self.request(
                    {
                        "request": "join",
                        "room": room,
                        "ptype": "subscriber",
                        "streams": [{"feed": feed}],
                    }
                )
                break
            except RuntimeError as refused:
                if "No such feed" not in str(refused) or attempt == SUBSCRIBE_TRIES - 1:
                    raise
                await asyncio.sleep(0.25)
        await pc.setRemoteDescription(RTCSessionDescription(**joined["jsep"]))
        await pc.setLocalDescription(await pc.createAnswer())
        await self.request(
            {"request": "start", "room": room},
            {"type": "answer", "sdp": pc.localDescription.sdp},
        )
